"""The part every serial power probe shares: open the port (a missing one is a one-line
PowerProbeError, exit 2), a reader thread that hands each chunk to the protocol
decoder, and the stall watch: no byte for ``timeout`` seconds during a capture ends it
with ProbeStoppedError (exit 3), keeping what arrived before."""
from __future__ import annotations

import threading
import time

import serial

from microtile.measure.power.capture import Capture, PowerProbeError, ProbeStoppedError

DEFAULT_STALL_S = 2.0


class SerialProbe:
    kind = ""
    baudrate = 115200

    def __init__(self, spec: str, address: str, options: dict[str, str]):
        if not address:
            raise PowerProbeError(f"--power {spec}: give the probe's serial port, e.g. {self.kind}:/dev/ttyACM2")
        self.spec, self.address = spec, address
        self.stall_s = float(options.pop("timeout", DEFAULT_STALL_S))
        self.port: serial.Serial | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self.stalled = False
        self.port_error: str | None = None

    def open_port(self) -> None:
        try:
            self.port = serial.Serial(self.address, self.baudrate, timeout=0.05, write_timeout=self.stall_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PowerProbeError(f"power probe {self.spec}: cannot open {self.address} ({exc}); check the USB "
                                  f"cable and the port name (ls /dev/ttyACM*), and that no other program "
                                  f"holds it") from None
        self.port.reset_input_buffer()

    def write(self, data: bytes) -> None:
        try:
            self.port.write(data)
            self.port.flush()
        except (serial.SerialException, OSError) as exc:
            raise ProbeStoppedError(f"power probe {self.spec} stopped answering: write failed ({exc})") from None

    def feed(self, data: bytes) -> None:  # the protocol decoder
        raise NotImplementedError

    def _reader(self) -> None:
        last = time.monotonic()
        while self._running:
            try:
                data = self.port.read(max(1, min(self.port.in_waiting, 1 << 16)))
            except (serial.SerialException, OSError, TypeError) as exc:
                self.port_error = str(exc) or type(exc).__name__
                self.stalled = True
                return
            now = time.monotonic()
            if data:
                self.feed(data)
                last = now
            elif now - last > self.stall_s:
                self.stalled = True
                return

    def start_reader(self) -> None:
        self._running, self.stalled = True, False
        self._thread = threading.Thread(target=self._reader, name=f"{self.kind}-reader", daemon=True)
        self._thread.start()

    def stop_reader(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=self.stall_s + 1.0)
            self._thread = None

    def stopped_error(self, capture: Capture) -> ProbeStoppedError:
        why = f"port error: {self.port_error}" if self.port_error else f"no data for {self.stall_s:g} s"
        return ProbeStoppedError(f"power probe {self.spec} stopped answering during the capture ({why}); "
                                 f"check its USB cable and power", capture)

    def close(self) -> None:
        self.stop_reader()
        if self.port is not None:
            try:
                self.port.close()
            except (serial.SerialException, OSError):
                pass
            self.port = None
