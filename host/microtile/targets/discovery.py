"""Find the Nucleo boards attached over USB: each ST-LINK debug probe (pyOCD) paired
with its virtual COM port (pyserial), and the microtile board it sits on.

    attached = list_attached()                 # every ST-LINK probe, with VCP and board
    dev = select_attached("nucleo", probe=None)  # the single attached Nucleo, or a clear error

Pairing: an ST-LINK is one USB device with a debug interface (what pyOCD opens) and a
CDC-ACM interface (``/dev/ttyACM*``). Both report the same USB serial number, which is
pyOCD's ``unique_id`` and pyserial's ``ListPortInfo.serial_number``; so with several
boards attached, each probe talks to its own port.

Board identity: the ST-LINK reports a 4-character board id (pyOCD maps it to e.g.
``BoardInfo("NUCLEO-F446RE", "stm32f446retx")``), matched against boards/*.yaml by name
("NUCLEO-F446RE" -> ``nucleo_f446re``), then by pyOCD target name.
"""
from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from microtile.targets.boards import Board, list_boards, load_board
from microtile.errors import BoardNotFoundError, MicrotileError, ToolMissingError

ST_VID = 0x0483
# ST-LINK USB product ids with a virtual COM port (V2-1 and V3; the bare V2 has none).
STLINK_VCP_PIDS = {0x374B: "V2-1", 0x3752: "V2-1", 0x374E: "V3", 0x374F: "V3", 0x3753: "V3",
                   0x3754: "V3", 0x3755: "V3", 0x3757: "V3"}
GENERIC_BOARD = "nucleo"  # --board nucleo: whichever single Nucleo is attached

UDEV_HELP = (
    "Linux denies access to the ST-LINK's USB device: install udev rules for it, e.g. "
    "`microtile udev-rules | sudo tee /etc/udev/rules.d/49-stlink.rules` (or copy pyOCD's "
    "udev/49-stlinkv2-1.rules and 49-stlinkv3.rules from https://github.com/pyocd/pyOCD/tree/main/udev), "
    "then `sudo udevadm control --reload && sudo udevadm trigger` and unplug/replug the board")
DIALOUT_HELP = (
    "add yourself to the group that owns the port (`sudo usermod -aG dialout $USER`, then log out "
    "and in again), or install the udev rules (`microtile udev-rules`), which also open the VCP")


class ProbeNotFoundError(BoardNotFoundError):
    """No ST-LINK probe is attached (or none matches --probe / --board)."""


class AmbiguousProbeError(BoardNotFoundError):
    """Several probes match and nothing says which one to use."""


class ProbePermissionError(BoardNotFoundError):
    """The probe or its serial port is there, but the OS denies access (udev rules)."""


class PackMissingError(ToolMissingError):
    """pyOCD has no support for the board's MCU: a CMSIS pack is missing."""


@dataclass(frozen=True)
class AttachedProbe:
    """One debug probe as discovered: pyOCD's view, its VCP, and the board it is on."""

    unique_id: str
    description: str  # pyOCD's probe description, e.g. "STM32 STLink"
    vendor_name: str
    product_name: str
    board_info_name: str | None  # from the ST-LINK's board id, e.g. "NUCLEO-F446RE"
    pyocd_target: str | None  # pyOCD target type for that board id, e.g. "stm32f446retx"
    port: str | None  # the VCP device, e.g. /dev/ttyACM0
    board: str | None  # the microtile board name it matched, e.g. nucleo_f446re
    board_id: str | None = None  # the ST-LINK's 4-character board id, e.g. "0777"

    def describe(self) -> str:
        what = self.board_info_name or "unknown board"
        port = self.port or "no VCP"
        mt = f" -> --board {self.board}" if self.board else " (no matching boards/*.yaml)"
        return f"{self.unique_id}  {self.description}  {what}  {port}{mt}"


# ---- board YAML helpers (fields written by boards/*.yaml: pyocd: {target, pack}) ----

def pyocd_config(board: Board) -> tuple[str | None, bool]:
    """(pyOCD target name, whether it needs a CMSIS pack) from the board's YAML."""
    cfg: Any = getattr(board, "pyocd", None)
    if cfg is None:
        cfg = board.raw.get("pyocd") or {}
    if isinstance(cfg, dict):
        target, pack = cfg.get("target"), cfg.get("pack", False)
    else:
        target, pack = getattr(cfg, "target", None), getattr(cfg, "pack", False)
    return (str(target) if target else None), bool(pack)


def yaml_board_id(board: Board) -> str | None:
    """The ST-LINK board id the YAML declares (``probe: {board_id: "0777"}``)."""
    bid = getattr(board, "board_id", None)
    if bid is None:
        bid = (board.raw.get("probe") or {}).get("board_id")
    return str(bid) if bid else None


def is_probe_board(board: Board) -> bool:
    """True for boards flashed through a debug probe (they have a pyOCD target)."""
    return pyocd_config(board)[0] is not None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def match_board(board_info_name: str | None, target: str | None,
                boards: Sequence[Board] | None = None, board_id: str | None = None) -> Board | None:
    """The board in boards/ for a probe's reported board id, board name or pyOCD target."""
    candidates = [b for b in (boards if boards is not None else list_boards()) if is_probe_board(b)]
    if board_id:
        for b in candidates:
            if (yaml_board_id(b) or "").upper() == board_id.upper():
                return b
    if board_info_name:
        key = _norm(board_info_name)  # NUCLEO-F446RE -> nucleo_f446re
        for b in candidates:
            if key == b.name or key in b.aliases:
                return b
        # A board variant without a YAML of its own (NUCLEO-L4R5ZI-P) shares its base board's.
        # A variant wired differently has its own YAML, found above by its exact name or id
        # (NUCLEO-H743ZI2, MB1364: D7 on PG12, not PF13 as on the MB1137 NUCLEO-H743ZI).
        prefixed = [b for b in candidates if key.startswith(b.name)]
        if prefixed:
            return max(prefixed, key=lambda b: len(b.name))
    if target:
        same = [b for b in candidates if (pyocd_config(b)[0] or "").lower() == target.lower()]
        if len(same) == 1:
            return same[0]
    return None


# ---- USB ports and probes ----

def stlink_ports(ports: Iterable[Any] | None = None) -> list[Any]:
    """The ST-LINK virtual COM ports among pyserial's ``comports()`` (ListPortInfo)."""
    if ports is None:
        from serial.tools.list_ports import comports

        ports = comports()
    return sorted((p for p in ports if p.vid == ST_VID and p.pid in STLINK_VCP_PIDS),
                  key=lambda p: (str(p.serial_number), str(p.location or ""), p.device))


def pair_ports(unique_ids: Iterable[str], ports: Iterable[Any]) -> dict[str, Any]:
    """unique_id -> its VCP ListPortInfo. ST-LINK/V3 with two VCPs: the first interface
    (the one wired to the target's UART on Nucleo boards)."""
    by_serial: dict[str, Any] = {}
    for port in stlink_ports(ports):
        if port.serial_number:
            by_serial.setdefault(str(port.serial_number).upper(), port)
    return {uid: by_serial[uid.upper()] for uid in unique_ids if uid.upper() in by_serial}


def pyocd_probes() -> list[Any]:
    """Every debug probe pyOCD sees right now (never blocks, never prompts)."""
    from pyocd.core.helpers import ConnectHelper

    return list(ConnectHelper.get_all_connected_probes(blocking=False))


def _board_info(probe: Any) -> tuple[str | None, str | None, str | None]:
    """(board name, pyOCD target, board id) from the probe's board id; Nones if unreadable
    (an old ST-LINK firmware, or the probe is busy in another program)."""
    try:
        board_id = getattr(probe, "board_id", None)  # StlinkProbe; other probes have none
        info = probe.associated_board_info
    except Exception:  # pyOCD/libusb errors: the probe is still usable for flashing
        return None, None, None
    if info is None:
        return None, None, board_id
    return info.name, info.target, board_id


def list_attached(probes: Sequence[Any] | None = None, ports: Iterable[Any] | None = None,
                  boards: Sequence[Board] | None = None) -> list[AttachedProbe]:
    """Every attached debug probe with its VCP and matching microtile board.

    ``probes`` are pyOCD DebugProbe objects (default: ask pyOCD), ``ports`` pyserial
    ListPortInfo objects (default: ``comports()``)."""
    probes = pyocd_probes() if probes is None else list(probes)
    ports = list(stlink_ports(ports))
    paired = pair_ports([p.unique_id for p in probes], ports)
    out = []
    for probe in probes:
        name, target, board_id = _board_info(probe)
        board = match_board(name, target, boards, board_id)
        port = paired.get(probe.unique_id)
        out.append(AttachedProbe(
            unique_id=str(probe.unique_id), description=str(probe.description),
            vendor_name=str(probe.vendor_name or ""), product_name=str(probe.product_name or ""),
            board_info_name=name, pyocd_target=target, port=port.device if port is not None else None,
            board=board.name if board else None, board_id=board_id))
    return sorted(out, key=lambda a: a.unique_id)


# ---- permission checks ----

def is_permission_error(exc: BaseException | None) -> bool:
    """True when exc (or what caused it) is the OS refusing access: libusb's
    ``USBError: [Errno 13] Access denied (insufficient permissions)``, a PermissionError,
    or pyOCD's ProbeError wrapping either."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, PermissionError):
            return True
        if getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
            return True
        text = str(exc)
        if "Errno 13" in text or "Access denied" in text or "insufficient permissions" in text:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def inaccessible_stlinks(find: Callable[..., Iterable[Any]] | None = None) -> list[str]:
    """ST-LINK USB devices that are attached but that libusb may not open (missing udev
    rules). Each entry says bus/address and PID. ``find`` is pyusb's ``usb.core.find``
    signature (default: the libusb pyOCD uses)."""
    if find is None:
        try:
            import libusb_package

            find = libusb_package.find
        except ImportError:  # pragma: no cover - pinned in requirements
            import usb.core

            find = usb.core.find
    try:
        devices = list(find(find_all=True, idVendor=ST_VID) or [])
    except Exception:  # no libusb backend at all: nothing to say about permissions
        return []
    denied = []
    from pyocd.probe.stlink.usb import STLinkUSBInterface

    for dev in devices:
        if dev.idProduct not in STLinkUSBInterface.USB_PID_EP_MAP:
            continue
        try:
            dev.get_active_configuration()
        except Exception as exc:
            if is_permission_error(exc):
                denied.append(f"bus {getattr(dev, 'bus', '?')} device {getattr(dev, 'address', '?')} "
                              f"(ST-LINK PID {dev.idProduct:04x})")
    return denied


def udev_rules() -> str:
    """udev rules granting user access to every ST-LINK pyOCD drives (debug interface
    and VCP), for /etc/udev/rules.d/49-stlink.rules."""
    from pyocd.probe.stlink.usb import STLinkUSBInterface

    lines = ["# ST-LINK debug probes (Nucleo/Discovery boards): debug interface for pyOCD and the",
             "# virtual COM port, for every user. Install:",
             "#   microtile udev-rules | sudo tee /etc/udev/rules.d/49-stlink.rules",
             "#   sudo udevadm control --reload && sudo udevadm trigger",
             "# Replace MODE:=\"0666\" with GROUP:=\"plugdev\" to restrict access to a group."]
    for pid, info in sorted(STLinkUSBInterface.USB_PID_EP_MAP.items()):
        lines.append(f"# ST-LINK/{info.version_name}")  # udev has no comments after a rule
        lines.append(f'SUBSYSTEMS=="usb", ATTRS{{idVendor}}=="{ST_VID:04x}", ATTRS{{idProduct}}=="{pid:04x}", '
                     'MODE:="0666"')
    lines.append("# the virtual COM port (/dev/ttyACM*)")
    lines.append(f'KERNEL=="ttyACM*", ATTRS{{idVendor}}=="{ST_VID:04x}", MODE:="0666"')
    return "\n".join(lines) + "\n"


# ---- choosing the probe for a run ----

def _probe_list(attached: Sequence[AttachedProbe]) -> str:
    return "\n".join("  " + a.describe() for a in attached)


def select_attached(board: str | Board, probe: str | None = None,
                    attached: Sequence[AttachedProbe] | None = None,
                    stlink_vcps: Sequence[Any] | None = None,
                    denied_usb: Callable[[], list[str]] = inaccessible_stlinks) -> AttachedProbe:
    """The probe to use for ``--board BOARD [--probe UID]``.

    ``board`` is a board name from boards/, or "nucleo" for the single attached Nucleo.
    ``probe`` matches a unique id (full, or a unique part of it, like pyOCD's -u).
    Raises ProbeNotFoundError, AmbiguousProbeError or ProbePermissionError with what to do."""
    generic = isinstance(board, str) and board == GENERIC_BOARD
    wanted: Board | None = None
    if not generic:
        wanted = load_board(board) if isinstance(board, str) else board
        if not is_probe_board(wanted):
            raise BoardNotFoundError(
                f"board {wanted.name} is not flashed through a debug probe (no 'pyocd:' section in "
                f"{wanted.path}); use --board nucleo_<name> for a Nucleo")
    if attached is None:
        attached = list_attached()
    candidates = list(attached)
    if probe:
        exact = [a for a in candidates if a.unique_id.lower() == probe.lower()]
        candidates = exact or [a for a in candidates if probe.lower() in a.unique_id.lower()]
        if not candidates:
            raise ProbeNotFoundError(
                f"no attached debug probe has unique id {probe!r}"
                + (f"; attached:\n{_probe_list(attached)}" if attached else _no_probe_hint(stlink_vcps, denied_usb)))
        if len(candidates) > 1:
            raise AmbiguousProbeError(f"--probe {probe} matches {len(candidates)} probes; give more of the id:\n"
                                      f"{_probe_list(candidates)}")
    if not candidates:
        raise ProbeNotFoundError("no debug probe found" + _no_probe_hint(stlink_vcps, denied_usb))
    if wanted is not None:
        matching = [a for a in candidates if a.board == wanted.name]
        unknown = [a for a in candidates if a.board is None]
        if probe:  # the user named the probe: trust it unless it says it is another board
            chosen = candidates[0]
            if chosen.board is not None and chosen.board != wanted.name:
                raise ProbeNotFoundError(
                    f"probe {chosen.unique_id} is on a {chosen.board_info_name} (--board {chosen.board}), "
                    f"not a {wanted.name}: use --board {chosen.board}, or --probe with the id of the {wanted.name}")
            return chosen
        if len(matching) == 1:
            return matching[0]
        if len(matching) > 1:
            raise AmbiguousProbeError(
                f"{len(matching)} {wanted.name} boards are attached; choose one with --probe UID:\n"
                f"{_probe_list(matching)}")
        if len(unknown) == 1 and len(candidates) == 1:
            return unknown[0]  # an ST-LINK that does not report its board id: take the user's word
        raise ProbeNotFoundError(
            f"no attached board is a {wanted.name}; attached:\n{_probe_list(candidates)}\n"
            "use the --board shown, or --probe UID to use a specific probe anyway")
    # --board nucleo: exactly one Nucleo, or the user says which.
    if len(candidates) > 1:
        raise AmbiguousProbeError(
            f"{len(candidates)} debug probes are attached; choose one with --probe UID "
            f"(and --board NAME):\n{_probe_list(candidates)}")
    chosen = candidates[0]
    if chosen.board is None:
        raise ProbeNotFoundError(
            f"probe {chosen.unique_id} does not say which board it is on "
            f"({chosen.board_info_name or 'no board id'}); name it: --board nucleo_<name> --probe {chosen.unique_id} "
            "(see `microtile boards`)")
    return chosen


def _no_probe_hint(stlink_vcps: Sequence[Any] | None, denied_usb: Callable[[], list[str]]) -> str:
    """Why pyOCD may see no probe: no board, a charge-only cable, or udev permissions."""
    vcps = list(stlink_ports() if stlink_vcps is None else stlink_ports(stlink_vcps))
    denied = denied_usb()
    if denied:
        raise ProbePermissionError(
            f"an ST-LINK is attached ({'; '.join(denied)}) but pyOCD may not open it. {UDEV_HELP}")
    if vcps:
        serials = ", ".join(f"{p.device} (serial {p.serial_number})" for p in vcps)
        raise ProbePermissionError(
            f"the ST-LINK virtual COM port is there ({serials}) but pyOCD sees no probe: most likely a "
            f"USB permission problem. {UDEV_HELP}; `pyocd list` should then show the probe")
    return ("; plug the Nucleo's ST-LINK USB connector in with a data cable (not a charge-only one), "
            "check `pyocd list` shows it (and `lsusb` shows 0483:374b or 0483:374e), then retry")


def resolve_board(board: str, probe: str | None = None,
                  attached: Sequence[AttachedProbe] | None = None) -> tuple[str, AttachedProbe | None]:
    """Turn a --board value into (board name from boards/, attached probe or None).

    "nucleo" picks the single attached Nucleo; another probe board name finds its probe;
    emulated boards (qemu) need no probe."""
    if board == GENERIC_BOARD:
        dev = select_attached(board, probe, attached)
        assert dev.board is not None
        return dev.board, dev
    b = load_board(board)
    if not is_probe_board(b):
        return b.name, None
    return b.name, select_attached(b, probe, attached)


__all__ = [
    "AmbiguousProbeError", "AttachedProbe", "GENERIC_BOARD", "MicrotileError", "PackMissingError",
    "ProbeNotFoundError", "ProbePermissionError", "inaccessible_stlinks", "is_permission_error",
    "is_probe_board", "list_attached", "yaml_board_id", "match_board", "pair_ports", "pyocd_config", "pyocd_probes",
    "resolve_board", "select_attached", "stlink_ports", "udev_rules",
]
