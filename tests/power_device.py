"""A power probe's side of a serial port, for the power driver tests: a pseudo-terminal
whose slave the driver opens with pyserial like the probe's /dev/ttyACM*, and a thread
on the master that answers the probe's commands with byte streams built from the
probe's documented protocol (the tests build the streams; nothing is mocked in the
driver: it reads and writes a real tty)."""
from __future__ import annotations

import os
import select
import threading
import time
import tty

import pytest


class PtyDevice:
    """``handler(command_bytes, device)`` is called with each chunk the driver writes;
    it answers with ``device.send(bytes)``. ``path`` is the port to give the driver."""

    def __init__(self, handler):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.handler = handler
        self.received = bytearray()
        self._running = True
        self._out = bytearray()
        self._lock = threading.Lock()
        self.silent = False  # True: stop writing anything (a probe that stops answering)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def send(self, data: bytes) -> None:
        with self._lock:
            self._out += data

    def _loop(self) -> None:
        while self._running:
            with self._lock:
                pending = bool(self._out) and not self.silent
            r, w, _ = select.select([self.master], [self.master] if pending else [], [], 0.01)
            if r:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    return
                self.received += data
                self.handler(bytes(data), self)
            if w:
                with self._lock:
                    chunk = bytes(self._out[:2048])
                try:
                    n = os.write(self.master, chunk)
                except OSError:
                    return
                with self._lock:
                    del self._out[:n]

    def drained(self, timeout: float = 10.0) -> bool:
        """Wait until everything sent has been written to the port."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._out:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def pty_devices():
    """``pty_devices(handler)`` -> a PtyDevice, closed after the test."""
    made: list[PtyDevice] = []
    yield lambda handler: made.append(PtyDevice(handler)) or made[-1]
    for dev in made:
        dev.close()


def capture_session(probe, dev: PtyDevice, settle: float = 0.2):
    """A whole capture: open and configure, start, let the device send all it has, stop,
    close. Returns the Capture (or raises what stop() raised)."""
    probe.open()
    try:
        probe.start()
        assert dev.drained()
        time.sleep(settle)
        return probe.stop()
    finally:
        probe.close()
