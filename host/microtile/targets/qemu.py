"""Run firmware on qemu-system-arm: the board's UART becomes a TCP socket that
``DeviceLink`` opens as ``socket://127.0.0.1:PORT``.

    with QemuTarget("qemu", "build/microtile.elf") as target:
        target.link.write_input(0, data)
        target.link.invoke(1)

The QEMU process group is always stopped: on leaving the ``with``, on errors, on Ctrl-C
(and SIGTERM / SIGHUP, which the command line raises like Ctrl-C) and at interpreter exit."""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from microtile.targets.boards import Board, load_board
from microtile.errors import BoardNotFoundError, LinkError, ToolMissingError
from microtile.link.protocol import DeviceLink

# Strong references: a target dropped without stop() is still ended at exit.
_LIVE: "set[QemuTarget]" = set()


@atexit.register
def _stop_all() -> None:
    for target in list(_LIVE):
        target.stop()


def find_qemu(program: str = "qemu-system-arm") -> str:
    path = shutil.which(program)
    if path is None:
        raise ToolMissingError(
            f"{program} not found on PATH: install it with `sudo apt-get install qemu-system-arm` "
            "(or run `make setup`)")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QemuTarget:
    """Context manager running ``elf`` on the board's QEMU machine."""

    def __init__(self, board: Board | str, elf: str | Path, *, timeout: float = 10.0,
                 boot_timeout: float = 20.0, extra_args: list[str] | None = None,
                 qemu: str | None = None):
        self.board = load_board(board) if isinstance(board, str) else board
        if self.board.emulator is None:
            raise BoardNotFoundError(f"board {self.board.name} has no emulator; use a board with an "
                                     "'emulator:' section such as netduinoplus2 (alias qemu)")
        self.elf = Path(elf)
        self.timeout = timeout
        self.boot_timeout = boot_timeout
        self.extra_args = list(extra_args or [])
        self.qemu = qemu
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._link: DeviceLink | None = None
        self._log = None  # QEMU's stdout/stderr, for error messages

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    @property
    def link(self) -> DeviceLink:
        if self._link is None:
            raise LinkError("QEMU target is not running: use it as `with QemuTarget(...) as t:`")
        return self._link

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        emu = self.board.emulator
        assert emu is not None
        serials: list[str] = []
        for i in range(emu.serial_index):
            serials += ["-serial", "null"]
        serials += ["-serial", f"tcp:127.0.0.1:{self.port},server=on,wait=off,nodelay=on"]
        return [self.qemu or find_qemu(emu.program), "-M", emu.machine, "-nographic", "-monitor", "none",
                "-icount", f"shift={emu.icount_shift}", "-kernel", str(self.elf), *serials, *self.extra_args]

    def __enter__(self) -> "QemuTarget":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        assert self.board.emulator is not None
        self.qemu = self.qemu or find_qemu(self.board.emulator.program)
        if not self.elf.is_file():
            raise BoardNotFoundError(f"firmware {self.elf} not found; build it first")
        try:
            for attempt in range(3):  # the free port can be taken between probe and bind
                self.port = _free_port()
                cmd = self.command()
                self._log = tempfile.TemporaryFile()
                self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
                _LIVE.add(self)
                if self._connect():
                    break
                self._kill()
            else:
                raise BoardNotFoundError(f"QEMU did not open its UART socket: {self._qemu_output()}")
            assert self._link is not None
            try:
                self._link.wait_ready(self.boot_timeout)
            except LinkError as exc:
                raise BoardNotFoundError(f"firmware {self.elf} did not answer on QEMU: {exc}. "
                                         f"QEMU output: {self._qemu_output() or '(none)'}") from None
        except BaseException:
            self.stop()
            raise

    def _connect(self) -> bool:
        import serial

        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                out = self._qemu_output()
                if "Address already in use" in out or "Failed to bind" in out:
                    return False
                raise BoardNotFoundError(f"qemu-system-arm exited (code {self.process and self.process.returncode}): "
                                         f"{out or '(no output)'}; command: {' '.join(self.command())}")
            try:
                port = serial.serial_for_url(self.url, timeout=0.05, write_timeout=self.timeout)
            except (serial.SerialException, OSError):
                time.sleep(0.05)
                continue
            self._link = DeviceLink(port, timeout=self.timeout, name=f"QEMU {self.board.name} {self.url}")
            return True
        raise BoardNotFoundError(f"QEMU's UART socket {self.url} did not open within {self.boot_timeout:.0f} s")

    def _qemu_output(self) -> str:
        if self._log is None:
            return ""
        try:
            self._log.seek(0)
            return self._log.read().decode("utf-8", "replace").strip()[-2000:]
        except (OSError, ValueError):
            return ""

    def _kill(self) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            # QEMU leads its own session (start_new_session), so signals sent to the
            # microtile process never reach it: end its whole process group here.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                os.killpg(proc.pid, signal.SIGCONT)  # a stopped process only dies once it runs
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        self.process = None

    def stop(self) -> None:
        """Close the link and end QEMU; safe to call more than once."""
        if self._link is not None:
            self._link.close()
            self._link = None
        self._kill()
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass
            self._log = None
        _LIVE.discard(self)

    def output(self) -> str:
        """What QEMU printed so far (errors, guest_errors)."""
        return self._qemu_output()
