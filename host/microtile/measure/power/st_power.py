"""ST's text-protocol power probes: the X-NUCLEO-LPM01A (PowerShield firmware, UM2269)
and the STLINK-V3PWR, which MLPerf Tiny's EnergyRunner drives with the same command
set over their virtual COM ports.

A session: ``htc`` (host takes control), then ``volt 3300m``, ``freq 5k``, ``acqtime 0``
(infinite), ``output current``, ``format ascii_dec``, ``trigsrc sw``, ``trigdelay 0``,
``eventsrc d7 fal`` (report the D7 input's edges in the stream, as EnergyRunner sets
it), ``pwr on``; each answered ``ack <command> ...`` (``error``/``err ...`` refuses it).
``start`` streams one line per sample, the current in ascii_dec, ``6409-07`` = 6409 x
10^-7 A, with ``event <n> ris`` / ``event <n> fal`` lines where the D7 input changes,
and ``TimeStamp: ...`` status lines; ``stop`` ends it (the LPM01A answers
``Acquisition completed``, the STLINK-V3PWR ``end`` after a ``summary beg`` ... ``summary
end`` block). An event marks the sample position it arrives at in the stream. Lines
that are none of these are garbage: skipped and counted; a damaged sample line is one
lost sample (NaN), so the samples after it keep their time.
"""
from __future__ import annotations

import re
import threading
import time

import numpy as np

from microtile.measure.power.capture import Capture, PowerProbeError, ProbeStoppedError
from microtile.measure.power.serial_probe import SerialProbe

VALUE = re.compile(r"(\d{4})([+-])(\d{2})")
PROMPT = re.compile(r"^(PowerShield|stlp)\s*>\s*")  # the probes' prompts, stripped from each line
EVENT = re.compile(r"event\s+(\d+)\s+(ris|fal)")
FREQS = {"100k": 100_000, "50k": 50_000, "20k": 20_000, "10k": 10_000, "5k": 5_000, "2k": 2_000, "1k": 1_000,
         "500": 500, "200": 200, "100": 100, "50": 50, "20": 20, "10": 10, "5": 5, "2": 2, "1": 1}
ASCII_MAX_HZ = 5_000  # ascii_dec streams without a time limit up to 5 kHz (UM2269's table)
STATUS_PREFIXES = ("TimeStamp", "ack", "summary", "Acquisition", "PowerShield", "Info", "Warning")


class StTextDecoder:
    """Lines of an acquisition -> samples (A), edges at sample positions, garbage count."""

    def __init__(self):
        self.pending = b""
        self.values: list[float] = []
        self.edges: list[tuple[int, bool]] = []
        self.garbage = 0
        self.lost = 0
        self.ended = False
        self.in_summary = False  # the STLINK-V3PWR's "summary beg" ... "summary end" block
        self.messages: list[str] = []

    def feed(self, data: bytes) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for raw in lines:
            self.line(raw.decode("ascii", "replace").strip())

    def line(self, text: str) -> None:
        text = PROMPT.sub("", text)
        if not text:
            return
        if text == "summary beg" or self.in_summary:
            self.in_summary = text != "summary end"
            self.messages.append(text)
            return
        values = VALUE.findall(text)
        event = EVENT.fullmatch(text)
        if event:
            self.edges.append((len(self.values), event.group(2) == "ris"))
        elif values:
            for mantissa, sign, exponent in values:
                self.values.append(int(mantissa) * 10.0 ** (int(exponent) * (1 if sign == "+" else -1)))
            if VALUE.sub("", text).strip():  # a sample line with damage in it: one sample's worth lost
                self.garbage += 1
                self.lost += 1
                self.values.append(float("nan"))
        elif text in ("end", "Acquisition completed") or text.startswith("Acquisition completed"):
            self.ended = True
        elif text.startswith(STATUS_PREFIXES) or text.startswith(("err", "error")):
            self.messages.append(text)
        elif any(c.isdigit() for c in text) and any(c in "+-" for c in text):
            self.garbage += 1  # looks like a sample line, too damaged to read: keep the time base
            self.lost += 1
            self.values.append(float("nan"))
        else:
            self.garbage += 1


class StPowerProbe(SerialProbe):
    """``lpm01a:PORT[,voltage=3.3][,freq=5k][,timeout=2]`` (and ``stlinkv3pwr:PORT``)."""
    kind = "lpm01a"
    baudrate = 3_686_400  # the PowerShield's VCP (UM2269)
    volts = (1.8, 3.3)

    def __init__(self, spec: str, address: str, options: dict[str, str], supply_v: float):
        super().__init__(spec, address, options)
        self.supply_v = float(options.pop("voltage", supply_v))
        low, high = self.volts
        if not low <= self.supply_v <= high:
            raise PowerProbeError(f"--power {spec}: voltage={self.supply_v:g} V: the {self.kind.upper()} supplies "
                                  f"{low:g}-{high:g} V")
        freq = options.pop("freq", "5k")
        if freq not in FREQS or FREQS[freq] > ASCII_MAX_HZ:
            raise PowerProbeError(f"--power {spec}: freq={freq}: one of "
                                  f"{', '.join(k for k, v in FREQS.items() if v <= ASCII_MAX_HZ)}")
        self.freq = freq
        self.decoder: StTextDecoder | None = None
        self._lock = threading.Lock()
        self._replies: list[str] = []

    def configuration(self) -> list[str]:
        return ["htc", f"volt {int(round(self.supply_v * 1000))}m", f"freq {self.freq}", "acqtime 0",
                "output current", "format ascii_dec", "trigsrc sw", "trigdelay 0", "eventsrc d7 fal", "pwr on"]

    def command(self, command: str) -> str:
        """Send one command line and wait for its ``ack``; ``error``/``err`` -> PowerProbeError."""
        self.write(command.encode("ascii") + b"\n")
        deadline, pending = time.monotonic() + self.stall_s, b""
        name = command.split()[0]
        while time.monotonic() < deadline:
            pending += self.port.read(256)
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                text = raw.decode("ascii", "replace").strip()
                text = PROMPT.sub("", text)
                if text.startswith("ack") and name in text:
                    return text
                if text.startswith("err"):
                    raise PowerProbeError(f"power probe {self.spec} refused '{command}': {text}")
        raise ProbeStoppedError(f"power probe {self.spec}: no answer to '{command}' within {self.stall_s:g} s; "
                                f"is {self.address} an {self.kind.upper()} (its VCP, {self.baudrate} baud)?")

    def open(self) -> None:
        self.open_port()
        for cmd in self.configuration():
            self.command(cmd)

    def feed(self, data: bytes) -> None:
        with self._lock:
            self.decoder.feed(data)

    def start(self) -> None:
        self.decoder = StTextDecoder()
        self.write(b"start\n")
        self.start_reader()

    def stop(self) -> Capture:
        stalled = self.stalled
        try:
            self.write(b"stop\n")
        except ProbeStoppedError:
            stalled = True
        deadline = time.monotonic() + self.stall_s
        while not stalled and not self.decoder.ended and time.monotonic() < deadline and not self.stalled:
            time.sleep(0.02)
        self.stop_reader()
        dec = self.decoder
        capture = Capture(self.kind, float(FREQS[self.freq]), np.asarray(dec.values, dtype=np.float64),
                          list(dec.edges), self.supply_v, "set", lost_samples=dec.lost, garbage=dec.garbage)
        if stalled or self.stalled or not dec.ended:
            raise self.stopped_error(capture)
        return capture

    def close(self) -> None:
        if self.port is not None and self._thread is None:
            try:
                self.port.write(b"hrc\n")  # hand control back to the probe's own buttons
                self.port.flush()
            except Exception:  # noqa: BLE001 - closing a probe that is gone is not an error
                pass
        super().close()


class StlinkV3PwrProbe(StPowerProbe):
    """The STLINK-V3PWR's power VCP: the LPM01A's command set with its own prompt
    (``stlp >``), ``acqtime inf`` and ``end`` closing an acquisition (as EnergyRunner
    drives it); 1.6-3.6 V."""
    kind = "stlinkv3pwr"
    baudrate = 3_686_400  # a USB CDC port: the rate is not used by the probe
    volts = (1.6, 3.6)

    def configuration(self) -> list[str]:
        return ["htc", f"volt {int(round(self.supply_v * 1000))}m", f"freq {self.freq}", "acqtime inf",
                "output current", "format ascii_dec", "trigsrc sw", "trigdelay 0", "eventsrc d7 fal", "pwr on"]
