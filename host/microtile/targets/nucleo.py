"""Run firmware on a Nucleo board: flash it through the on-board ST-LINK with pyOCD's
Python API, then talk to it over the ST-LINK's virtual COM port.

    with NucleoTarget("nucleo_f446re", firmware) as target:   # firmware: build.Firmware
        target.link.invoke(1)

Stale-image check: before flashing, the target opens the VCP and asks INFO; the
firmware reports the build id it was built with (``-DMT_BUILD_ID``, the content hash
of build.Firmware). Only a different (or silent) image is flashed, and after flashing
the build id is checked again. pyOCD connects normally first and, when that fails (a
sleeping core, SWD pins reused), retries with connect-under-reset.

A working cycle counter: pyOCD's session close (``resume_on_disconnect``) writes DEMCR = 0,
about 0.1 s after the reset that started the firmware; TRCENA goes with it and the DWT
cycle counter freezes. A system reset does not set DEMCR again, but the firmware's boot
code does. So once the pyOCD session is closed, and on every start (also when the image
was current, which may have been frozen by an earlier session), the target resets the
board over the link (RESET on the VCP), then checks that the counter advances. Holding
the session open instead would keep the ST-LINK busy and the core in debug mode
(C_DEBUGEN: a BKPT halts instead of faulting), and writing DEMCR over SWD takes another
session whose close clears it again. A counter that reads 0 is an error
(CounterFrozenError), never a 0-cycle measurement.
"""
from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microtile.targets.boards import Board, load_board
from microtile.targets.discovery import (AttachedProbe, DIALOUT_HELP, PackMissingError, ProbeNotFoundError,
                         ProbePermissionError, UDEV_HELP, is_permission_error, pyocd_config,
                         select_attached)
from microtile.errors import BoardNotFoundError, LinkError, LinkTimeoutError, MicrotileError
from microtile.link.protocol import DeviceError, DeviceInfo, DeviceLink

CONNECT_MODES = ("halt", "under-reset")  # the second is the retry
SWD_FREQUENCY_HZ = 4_000_000  # ST-LINK/V2-1 and V3 both run SWD at 4 MHz
COUNTER_CHECK_ITERATIONS = 10_000  # CALIBRATE loop run once per start: well under 1 ms
ERR_COUNTER = 11  # the firmware's MT_ERR_COUNTER (firmware/app/mt_proto.h): the counter is stuck

# Flashes done by this process: (probe unique id, build id, connect mode). Tests read it to
# check that one firmware build is flashed once.
FLASH_LOG: list[tuple[str, str | None, str]] = []


class FlashError(MicrotileError):
    """pyOCD could not program the board."""


class ConnectError(FlashError):
    """pyOCD reached the probe but not the MCU behind it (SWD)."""


class StaleImageError(MicrotileError):
    """The board runs another firmware than the one just flashed."""


class CounterFrozenError(LinkError):
    """The board's cycle counter does not advance (exit 3: the target failed)."""


# ---- decisions, separated from the hardware so the tests can check every branch ----

@dataclass(frozen=True)
class FlashDecision:
    flash: bool
    reason: str


def flash_decision(info: DeviceInfo | None, build_id: str | None, board: Board | str,
                   force: bool = False) -> FlashDecision:
    """Whether the board must be flashed, given what it answered to INFO (None: nothing)."""
    name = board if isinstance(board, str) else board.name
    if force:
        return FlashDecision(True, "flashing forced")
    if info is None:
        return FlashDecision(True, "the board does not answer INFO on its VCP (no microtile firmware, or a hung one)")
    if build_id is None:
        return FlashDecision(True, "the firmware's build id is unknown (an ELF path was given)")
    if info.board != name:
        return FlashDecision(True, f"the board runs a {info.board or '(unnamed)'} image, not {name}")
    if info.build_id.lower() != build_id.lower():
        return FlashDecision(True, f"the board runs build {info.build_id or '(none)'}, not {build_id}")
    return FlashDecision(False, f"the board already runs build {build_id}")


def translate_pyocd_error(exc: BaseException, board: Board, unique_id: str) -> MicrotileError:
    """A pyOCD (or libusb) exception as a microtile error that says what to do."""
    from pyocd.core import exceptions as px

    target, _ = pyocd_config(board)
    if isinstance(exc, MicrotileError):
        return exc
    if isinstance(exc, px.TargetSupportError):
        return PackMissingError(
            f"pyOCD has no support for {target} ({board.mcu or board.name}): {exc}. Install its CMSIS pack "
            f"once with `pyocd pack install {target}` (it downloads the pack index and the ST pack), "
            "check with `pyocd list --targets | grep -i " + (target or "stm32") + "`, then retry")
    if is_permission_error(exc):
        return ProbePermissionError(f"probe {unique_id}: {exc}. {UDEV_HELP}")
    if isinstance(exc, px.ProbeDisconnected):
        return ProbeNotFoundError(
            f"probe {unique_id} went away while flashing ({exc}): check the USB cable and hub, "
            "replug the board, check `pyocd list`, then retry")
    if isinstance(exc, px.FlashFailure):
        return FlashError(
            f"flashing {board.name} through probe {unique_id} failed: {exc}. Erase the chip "
            f"(`pyocd erase --chip -t {target} -u {unique_id}`) and retry; if it persists, check the "
            "board's flash option bytes (read/write protection) with STM32CubeProgrammer")
    if isinstance(exc, (px.TransferError, px.TimeoutError, px.DebugError, px.ProbeError, px.TargetError)):
        return ConnectError(
            f"pyOCD reached probe {unique_id} but not the {board.mcu or board.name} behind it: "
            f"{type(exc).__name__}: {exc}")
    if isinstance(exc, px.Error):
        return FlashError(f"pyOCD failed on probe {unique_id}: {type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        return FlashError(f"flashing through probe {unique_id} failed: {exc}")
    raise exc


def ensure_target_support(board: Board, available: Callable[[str], bool] | None = None) -> str:
    """The board's pyOCD target name; PackMissingError when it needs a CMSIS pack that is
    not installed (checked before touching the probe)."""
    target, pack = pyocd_config(board)
    if target is None:
        raise BoardNotFoundError(f"board {board.name} has no pyOCD target ('pyocd: {{target: ...}}' in "
                                 f"{board.path}): it cannot be flashed through a probe")
    if available is None:
        available = target_available
    if not available(target):
        hint = "needs a CMSIS pack" if pack else "is not built into this pyOCD"
        raise PackMissingError(
            f"pyOCD target {target} for {board.name} {hint}: run `pyocd pack install {target}` once "
            "(downloads ST's device family pack into pyOCD's cache), then retry")
    return target


def target_available(target: str) -> bool:
    """True if pyOCD can drive ``target`` (built in, or from an installed CMSIS pack)."""
    from pyocd.core.session import Session
    from pyocd.target import TARGET
    from pyocd.target.pack.pack_target import is_pack_target_available

    if target.lower() in TARGET:
        return True
    try:
        return is_pack_target_available(target, Session.get_current())
    except Exception:  # a broken pack cache is the same as no pack
        return False


# ---- flashing ----

def session_options(connect_mode: str) -> dict[str, Any]:
    """pyOCD session options for flashing. ``resume_on_disconnect`` lets the core run on
    after the session, and makes the session's close clear DEMCR (see the module docstring)."""
    return {"connect_mode": connect_mode, "frequency": SWD_FREQUENCY_HZ,
            "resume_on_disconnect": True, "hide_programming_progress": True}


def _open_session(unique_id: str, target: str, connect_mode: str) -> Any:
    from pyocd.core.helpers import ConnectHelper

    session = ConnectHelper.session_with_chosen_probe(
        blocking=False, return_first=True, unique_id=unique_id, auto_open=True,
        target_override=target, options=session_options(connect_mode))
    if session is None:
        raise ProbeNotFoundError(f"debug probe {unique_id} is no longer attached: replug the board and "
                                 "check `pyocd list`")
    return session


def _program(session: Any, elf: Path) -> None:
    from pyocd.flash.file_programmer import FileProgrammer

    FileProgrammer(session, smart_flash=True).program(str(elf), file_format="elf")
    session.target.reset()  # reset and run (no halt): the app boots and answers on the VCP


def flash_elf(elf: str | Path, board: Board, unique_id: str,
              open_session: Callable[[str, str, str], Any] = _open_session,
              program: Callable[[Any, Path], None] = _program) -> str:
    """Program ``elf`` into the board behind probe ``unique_id`` and start it; returns the
    connect mode that worked. A plain connect is tried first, then connect-under-reset."""
    elf = Path(elf)
    if not elf.is_file():
        raise FlashError(f"firmware {elf} not found; build it first (`microtile compile`)")
    target = ensure_target_support(board)
    failures: list[str] = []
    for mode in CONNECT_MODES:
        try:
            with open_session(unique_id, target, mode) as session:
                program(session, elf)
            return mode
        except Exception as exc:  # noqa: BLE001 - translated below, unknown ones re-raised
            err = translate_pyocd_error(exc, board, unique_id)
            if not isinstance(err, ConnectError):
                raise err from exc
            failures.append(f"connect_mode={mode}: {err}")
    raise ConnectError(
        f"the {board.name} behind probe {unique_id} does not answer on SWD, even connected under reset:\n  "
        + "\n  ".join(failures)
        + f"\nCheck the board is powered (LD3/PWR lit) and both CN2 jumpers are fitted, then try "
        f"`pyocd erase --chip -t {target} -u {unique_id} -O connect_mode=under-reset` and retry")


# ---- the target ----

def open_serial(port: str, baudrate: int, timeout: float) -> Any:
    """Open the VCP; a permission problem becomes a message with the fix."""
    import serial

    try:
        return serial.serial_for_url(port, baudrate=baudrate, timeout=0.05, write_timeout=timeout)
    except (serial.SerialException, OSError) as exc:
        if getattr(exc, "errno", None) == errno.EACCES or is_permission_error(exc):
            raise ProbePermissionError(f"cannot open the board's VCP {port}: {exc}; {DIALOUT_HELP}") from None
        if getattr(exc, "errno", None) in (errno.EBUSY,) or "busy" in str(exc).lower():
            raise LinkError(f"{port} is busy: another program holds the board's VCP (a serial terminal, "
                            "another test run?); close it and retry") from None
        raise LinkError(f"cannot open the board's VCP {port}: {exc}; check the board is still attached "
                        "(`microtile probes`)") from None


class BoardLink(DeviceLink):
    """The device link to a board: a cycle counter that reads 0 over a whole INVOKE or
    CALIBRATE, or that the firmware reports as stuck, raises CounterFrozenError."""

    board_name = "the board"

    def frozen_error(self, what: str) -> CounterFrozenError:
        return CounterFrozenError(
            f"the DWT cycle counter of {self.board_name} does not advance ({what}): a debugger cleared "
            "DEMCR.TRCENA. Close any other debugger attached to the probe (pyocd gdbserver, an IDE), "
            "then retry; if it persists, press the board's reset button or unplug and replug it")

    def _counting(self) -> bool:
        return self._ensure_info().counter_unit == "cycles"

    def invoke(self, n: int = 1, timeout: float | None = None) -> int:
        try:
            total = super().invoke(n, timeout)
        except DeviceError as exc:
            if exc.code == ERR_COUNTER:
                raise self.frozen_error(f"INVOKE: {exc.device_message}") from None
            raise
        if total == 0 and self._counting():
            raise self.frozen_error("INVOKE measured 0 cycles")
        return total

    def calibrate(self, iterations: int) -> int:
        try:
            cycles = super().calibrate(iterations)
        except DeviceError as exc:
            if exc.code == ERR_COUNTER:
                raise self.frozen_error(f"CALIBRATE: {exc.device_message}") from None
            raise
        if cycles == 0 and self._counting():
            raise self.frozen_error(f"a {2 * iterations}-instruction loop measured 0 cycles")
        return cycles


class NucleoTarget:
    """Context manager: the board flashed with ``elf`` (if needed) and ``.link`` over its VCP."""

    def __init__(self, board: Board | str, elf: str | Path, *, build_id: str | None = None,
                 probe: str | None = None, port: str | None = None, baudrate: int | None = None,
                 timeout: float = 10.0, boot_timeout: float = 5.0, force_flash: bool = False,
                 device: AttachedProbe | None = None,
                 flasher: Callable[[Path, Board, str], str] | None = None):
        self.board = load_board(board) if isinstance(board, str) else board
        self.elf = Path(elf)
        self.build_id = build_id
        self.probe = probe
        self.port = port
        self.baudrate = baudrate or self.board.uart.baudrate
        self.timeout = timeout
        self.boot_timeout = boot_timeout
        self.force_flash = force_flash
        self.device = device
        self.flasher = flasher or flash_elf
        self.flashed = False  # whether this target flashed the board
        self.connect_mode: str | None = None
        self.decision: FlashDecision | None = None
        self.info: DeviceInfo | None = None
        self._link: DeviceLink | None = None

    @property
    def link(self) -> DeviceLink:
        if self._link is None:
            raise LinkError("Nucleo target is not open: use it as `with NucleoTarget(...) as t:`")
        return self._link

    def __enter__(self) -> "NucleoTarget":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_link(self) -> DeviceLink:
        assert self.port is not None
        uid = self.device.unique_id if self.device else "?"
        link = BoardLink(open_serial(self.port, self.baudrate, self.timeout), timeout=self.timeout,
                         name=f"{self.board.name} {self.port} (probe {uid})")
        link.board_name = self.board.name
        return link

    def _query(self, timeout: float) -> DeviceInfo | None:
        try:
            return self.link.wait_ready(timeout)
        except LinkError:
            return None

    def start(self) -> None:
        if self.device is None:
            self.device = select_attached(self.board, self.probe)
        if self.port is None:
            self.port = self.device.port
        if self.port is None:
            raise BoardNotFoundError(
                f"probe {self.device.unique_id} has no virtual COM port: an ST-LINK/V2 without VCP, or the "
                "VCP is disabled in the ST-LINK firmware (update it with STM32CubeProgrammer); give the UART's "
                "port with --port /dev/ttyUSB0")
        try:
            self._link = self._open_link()
            self.info = self._query(min(self.boot_timeout, 1.5))
            self.decision = flash_decision(self.info, self.build_id, self.board, self.force_flash)
            if self.decision.flash:
                self._link.close()
                self._link = None
                self.connect_mode = self.flasher(self.elf, self.board, self.device.unique_id)
                self.flashed = True
                FLASH_LOG.append((self.device.unique_id, self.build_id, self.connect_mode))
                self._link = self._open_link()
                self.info = self._query(self.boot_timeout)
                if self.info is None:
                    raise LinkTimeoutError(
                        f"board stopped answering: {self.board.name} (probe {self.device.unique_id}) was flashed "
                        f"but sends no INFO on {self.port} at {self.baudrate} baud within {self.boot_timeout:.0f} s. "
                        "Press the black reset button, check the VCP wiring (Nucleo-64: SB13/SB14 closed for "
                        "USART2), and that --board names this board's MCU")
                if self.build_id is not None and self.info.build_id.lower() != self.build_id.lower():
                    raise StaleImageError(
                        f"after flashing, {self.board.name} still reports build {self.info.build_id}, expected "
                        f"{self.build_id}: flashing did not take. Erase it (`pyocd erase --chip -u "
                        f"{self.device.unique_id}`) and retry")
            self._restart_counter()
        except BaseException:
            self.stop()
            raise

    def _restart_counter(self) -> None:
        """Reset the board over the link, with no pyOCD session open, so its boot code
        enables the DWT again; then check that the counter advances."""
        self.info = self.link.reset(self.boot_timeout)
        if self.board.counter_unit != "cycles":
            return
        if self.info.counter_unit != "cycles":
            raise self.link.frozen_error(f"the firmware reports counter unit {self.info.counter_unit!r} "
                                    f"({self.info.port_status_text or 'no DWT cycle counter'})")
        self.link.calibrate(COUNTER_CHECK_ITERATIONS)

    def stop(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
