"""Probe and port discovery on real data structures: pyserial ListPortInfo objects as
list_ports_linux builds them for ST-LINK virtual COM ports, and pyOCD's own StlinkProbe
and STLinkUSBInterface classes.

The only stand-in is below pyOCD: ``UsbDevice`` plays the pyusb ``usb.core.Device`` that
libusb would hand to STLinkUSBInterface (the attributes pyOCD reads: idVendor,
idProduct, serial_number, manufacturer, product, and the context ``dispose`` that
``usb.util.dispose_resources`` calls). Opening it fails with a real ``usb.core.USBError``
like a probe held by another program, so pyOCD falls back to the board id an ST-LINK
announces on its mass-storage drive (``StlinkProbe._mbed_board_id_cache``, filled here
as pyOCD's MSD detector does).
"""
from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import usb.core
from pyocd.probe.stlink.usb import STLinkUSBInterface
from pyocd.probe.stlink_probe import StlinkProbe
from serial.tools.list_ports_common import ListPortInfo

import microtile.targets.boards as boards_mod
from microtile.targets.boards import load_board
from microtile.targets.discovery import (
    AmbiguousProbeError,
    AttachedProbe,
    ProbeNotFoundError,
    ProbePermissionError,
    inaccessible_stlinks,
    is_permission_error,
    list_attached,
    match_board,
    pair_ports,
    pyocd_config,
    resolve_board,
    select_attached,
    stlink_ports,
    udev_rules,
)

REPO = Path(__file__).resolve().parents[1]

# USB serial numbers as ST-LINK/V2-1 (24 hex digits) and V3 report them.
SER_F446 = "0671FF485550755187121723"
SER_F401 = "066DFF575251717867114355"
SER_V3 = "004A00253232510B37333439"

# Boards in the shape boards/*.yaml gives them (pyocd: {target, pack}), written to a
# temporary boards/ so the real loader reads them.
NUCLEO_YAML = """\
name: {name}
description: {desc}
mcu: {mcu}
core: {core}
cpu_flags: [-mcpu={core}, -mthumb]
clock_hz: {clock}
port: stm32f4
memories:
  flash: {{origin: 0x08000000, size: 0x80000}}
  ram:   {{origin: 0x20000000, size: 0x20000}}
stack_size: 0x2000
uart: {{name: USART2, baudrate: 115200}}
counter: {{unit: cycles, source: dwt}}
pyocd: {{target: {target}, pack: {pack}}}
probe: {{board_id: "{board_id}"}}
"""
BOARDS = {
    "nucleo_f446re": dict(desc="NUCLEO-F446RE", mcu="STM32F446RE", core="cortex-m4", clock=180000000,
                          target="stm32f446retx", pack="true", board_id="0777"),
    "nucleo_f401re": dict(desc="NUCLEO-F401RE", mcu="STM32F401RE", core="cortex-m4", clock=84000000,
                          target="stm32f401retx", pack="true", board_id="0720"),
    "nucleo_f429zi": dict(desc="NUCLEO-F429ZI", mcu="STM32F429ZI", core="cortex-m4", clock=180000000,
                          target="stm32f429xi", pack="false", board_id="0796"),
    "nucleo_h743zi": dict(desc="NUCLEO-H743ZI", mcu="STM32H743ZI", core="cortex-m7", clock=480000000,
                          target="stm32h743xx", pack="false", board_id="0813"),
    "nucleo_h743zi2": dict(desc="NUCLEO-H743ZI2", mcu="STM32H743ZI", core="cortex-m7", clock=480000000,
                           target="stm32h743xx", pack="false", board_id="0836"),
}


@pytest.fixture
def board_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "boards"
    d.mkdir()
    (d / "netduinoplus2.yaml").write_text((REPO / "boards" / "netduinoplus2.yaml").read_text())
    for name, fields in BOARDS.items():
        (d / f"{name}.yaml").write_text(NUCLEO_YAML.format(name=name, **fields))
    monkeypatch.setattr(boards_mod, "BOARDS_DIR", d)
    return d


class _UsbContext:
    def dispose(self, device) -> None:  # usb.util.dispose_resources(dev) -> dev._ctx.dispose(dev)
        pass


class UsbDevice:
    """Stand-in for the pyusb Device libusb enumerates (see the module docstring)."""

    def __init__(self, pid: int, serial: str, bus: int = 1, address: int = 5,
                 open_errno: int = errno.EBUSY):
        self.idVendor = 0x0483
        self.idProduct = pid
        self.serial_number = serial
        self.manufacturer = "STMicroelectronics"
        self.product = "STM32 STLink"
        self.bus = bus
        self.address = address
        self._ctx = _UsbContext()
        self._open_errno = open_errno

    def get_active_configuration(self):
        # What pyusb raises; EACCES is libusb's LIBUSB_ERROR_ACCESS without udev rules.
        msg = "Access denied (insufficient permissions)" if self._open_errno == errno.EACCES else "Resource busy"
        raise usb.core.USBError(msg, errno=self._open_errno)


def stlink_probe(monkeypatch, pid: int, serial: str, board_id: str | None) -> StlinkProbe:
    """A real pyOCD StlinkProbe; board_id as the ST-LINK's MSD drive reports it."""
    monkeypatch.setitem(StlinkProbe._mbed_board_id_cache, serial, board_id)
    return StlinkProbe(STLinkUSBInterface(UsbDevice(pid, serial)))


def vcp(device: str, serial: str, pid: int = 0x374B, vid: int = 0x0483, interface_no: int = 2,
        product: str = "STM32 STLink") -> ListPortInfo:
    """A ListPortInfo filled the way list_ports_linux.SysFS fills it for a CDC-ACM port."""
    port = ListPortInfo(device, skip_link_detection=True)
    port.vid, port.pid, port.serial_number = vid, pid, serial
    port.location = f"1-2:1.{interface_no}"  # multi-interface device: the interface's sysfs name
    port.manufacturer = "STMicroelectronics"
    port.product = product
    port.apply_usb_info()
    return port


def test_real_pyocd_probe_reports_id_and_board(monkeypatch):
    probe = stlink_probe(monkeypatch, 0x374B, SER_F446, "0777")
    assert probe.unique_id == SER_F446
    assert probe.vendor_name == "STMicroelectronics" and probe.description == "STM32 STLink"
    info = probe.associated_board_info
    assert info.name == "NUCLEO-F446RE" and info.target == "stm32f446retx"


def test_pairs_each_probe_with_its_own_vcp(monkeypatch, board_dir):
    probes = [stlink_probe(monkeypatch, 0x374B, SER_F446, "0777"),
              stlink_probe(monkeypatch, 0x374B, SER_F401, "0720")]
    # Enumeration order of the ports is the opposite of the probes'; a non-ST USB serial
    # adapter with the same serial number must not be taken.
    ports = [vcp("/dev/ttyACM0", SER_F401), vcp("/dev/ttyUSB0", SER_F446, vid=0x0403, pid=0x6001, interface_no=0),
             vcp("/dev/ttyACM1", SER_F446), ListPortInfo("/dev/ttyS0", skip_link_detection=True)]
    attached = list_attached(probes=probes, ports=ports)
    by_id = {a.unique_id: a for a in attached}
    assert by_id[SER_F446].port == "/dev/ttyACM1" and by_id[SER_F446].board == "nucleo_f446re"
    assert by_id[SER_F401].port == "/dev/ttyACM0" and by_id[SER_F401].board == "nucleo_f401re"
    assert by_id[SER_F446].board_info_name == "NUCLEO-F446RE"
    assert by_id[SER_F446].pyocd_target == "stm32f446retx"


def test_pairing_ignores_case_and_takes_the_first_vcp_of_a_v3():
    ports = [vcp("/dev/ttyACM3", SER_V3, pid=0x3753, interface_no=3),
             vcp("/dev/ttyACM2", SER_V3, pid=0x3753, interface_no=1)]
    paired = pair_ports([SER_V3.lower()], ports)
    assert paired[SER_V3.lower()].device == "/dev/ttyACM2"
    assert pair_ports(["FFFF"], ports) == {}
    assert [p.device for p in stlink_ports(ports)] == ["/dev/ttyACM2", "/dev/ttyACM3"]


def test_stlink_v3_on_a_nucleo_144(monkeypatch, board_dir):
    probe = stlink_probe(monkeypatch, 0x374E, SER_V3, "0813")  # NUCLEO-H743ZI
    [a] = list_attached(probes=[probe], ports=[vcp("/dev/ttyACM0", SER_V3, pid=0x374E)])
    assert (a.board, a.port, a.board_info_name) == ("nucleo_h743zi", "/dev/ttyACM0", "NUCLEO-H743ZI")
    assert a.board_id == "0813"


def test_nucleo_h743zi2_is_found_as_its_own_board(monkeypatch):
    """The real boards/: a NUCLEO-H743ZI2's ST-LINK/V3 (board id 0836, from pyOCD's own
    table) leads to nucleo_h743zi2, whose trigger is PG12 and whose VCP is USART3."""
    probe = stlink_probe(monkeypatch, 0x374E, SER_V3, "0836")
    [a] = list_attached(probes=[probe], ports=[vcp("/dev/ttyACM0", SER_V3, pid=0x374E)])
    assert (a.board, a.board_info_name, a.port) == ("nucleo_h743zi2", "NUCLEO-H743ZI2", "/dev/ttyACM0")
    board = load_board(a.board)
    assert str(board.trigger) == "PG12" and board.uart.name == "USART3"
    assert select_attached("nucleo", attached=[a], denied_usb=no_denied).board == "nucleo_h743zi2"


def test_board_matching_by_id_name_revision_and_target(board_dir):
    assert match_board(None, None, board_id="0796").name == "nucleo_f429zi"  # the YAML's probe.board_id
    assert match_board("NUCLEO-F446RE", None, board_id="0796").name == "nucleo_f429zi"  # the id wins
    assert match_board("NUCLEO-F446RE", None).name == "nucleo_f446re"
    # MB1364 and MB1137 are different boards (D7 on PG12 vs PF13), each with its own YAML
    assert match_board("NUCLEO-H743ZI2", "stm32h743zitx").name == "nucleo_h743zi2"
    assert match_board(None, "stm32h743zitx", board_id="0836").name == "nucleo_h743zi2"
    assert match_board("NUCLEO-H743ZI", "stm32h743zitx").name == "nucleo_h743zi"
    assert match_board(None, "stm32h743xx") is None  # two boards share the target: no guess
    assert match_board(None, "stm32f429xi").name == "nucleo_f429zi"  # no name: the pyOCD target
    assert match_board("NUCLEO-L476RG", "stm32l476rgtx") is None  # not a microtile board
    assert match_board("Netduino Plus 2", None) is None  # emulated boards are never a probe's


def test_pyocd_config_reads_the_board_yaml(board_dir):
    assert pyocd_config(load_board("nucleo_f446re")) == ("stm32f446retx", True)
    assert pyocd_config(load_board("nucleo_f429zi")) == ("stm32f429xi", False)
    assert pyocd_config(load_board("qemu")) == (None, False)


def _attached(uid: str, board: str | None, name: str | None, port: str | None = "/dev/ttyACM0") -> AttachedProbe:
    return AttachedProbe(uid, "STM32 STLink", "STMicroelectronics", "STM32 STLink", name, None, port, board)


F446 = _attached(SER_F446, "nucleo_f446re", "NUCLEO-F446RE", "/dev/ttyACM1")
F401 = _attached(SER_F401, "nucleo_f401re", "NUCLEO-F401RE", "/dev/ttyACM0")


def no_denied() -> list[str]:
    return []


def test_generic_nucleo_picks_the_single_attached_board(board_dir):
    assert select_attached("nucleo", attached=[F446], denied_usb=no_denied) is F446
    assert resolve_board("nucleo", attached=[F446]) == ("nucleo_f446re", F446)


def test_two_probes_without_probe_option_lists_ids_and_boards(board_dir):
    with pytest.raises(AmbiguousProbeError) as exc:
        select_attached("nucleo", attached=[F446, F401], denied_usb=no_denied)
    msg = str(exc.value)
    assert "--probe" in msg and SER_F446 in msg and SER_F401 in msg
    assert "NUCLEO-F446RE" in msg and "NUCLEO-F401RE" in msg and "/dev/ttyACM1" in msg


def test_named_board_finds_its_probe_among_several(board_dir):
    assert select_attached("nucleo_f401re", attached=[F446, F401], denied_usb=no_denied) is F401
    with pytest.raises(ProbeNotFoundError, match="no attached board is a nucleo_f429zi"):
        select_attached("nucleo_f429zi", attached=[F446, F401], denied_usb=no_denied)
    twin = _attached("0672FF000000000000000001", "nucleo_f446re", "NUCLEO-F446RE", "/dev/ttyACM2")
    with pytest.raises(AmbiguousProbeError, match="2 nucleo_f446re boards"):
        select_attached("nucleo_f446re", attached=[F446, twin, F401], denied_usb=no_denied)


def test_probe_option_matches_full_or_partial_unique_id(board_dir):
    assert select_attached("nucleo", SER_F401, attached=[F446, F401], denied_usb=no_denied) is F401
    assert select_attached("nucleo", "0671ff48", attached=[F446, F401], denied_usb=no_denied) is F446
    with pytest.raises(AmbiguousProbeError, match="matches 2 probes"):
        select_attached("nucleo", "06", attached=[F446, F401], denied_usb=no_denied)
    with pytest.raises(ProbeNotFoundError, match="no attached debug probe has unique id 'DEADBEEF'") as exc:
        select_attached("nucleo", "DEADBEEF", attached=[F446, F401], denied_usb=no_denied)
    assert SER_F446 in str(exc.value)


def test_probe_on_another_board_than_asked_is_refused(board_dir):
    with pytest.raises(ProbeNotFoundError, match="use --board nucleo_f401re"):
        select_attached("nucleo_f446re", SER_F401, attached=[F446, F401], denied_usb=no_denied)


def test_probe_without_board_id(board_dir):
    unknown = _attached(SER_F446, None, None)
    # --board nucleo cannot guess the board...
    with pytest.raises(ProbeNotFoundError, match="--board nucleo_<name> --probe " + SER_F446):
        select_attached("nucleo", attached=[unknown], denied_usb=no_denied)
    # ...but a named board with the only probe attached is taken at the user's word.
    assert select_attached("nucleo_f446re", attached=[unknown], denied_usb=no_denied) is unknown


def test_no_probe_says_what_to_check(board_dir):
    with pytest.raises(ProbeNotFoundError, match="pyocd list") as exc:
        select_attached("nucleo", attached=[], stlink_vcps=[], denied_usb=no_denied)
    assert "cable" in str(exc.value)


def test_vcp_without_probe_is_a_udev_problem(board_dir):
    """The kernel made /dev/ttyACM0 for the ST-LINK but pyOCD (libusb) cannot see it."""
    with pytest.raises(ProbePermissionError) as exc:
        select_attached("nucleo", attached=[], stlink_vcps=[vcp("/dev/ttyACM0", SER_F446)], denied_usb=no_denied)
    msg = str(exc.value)
    assert "/dev/ttyACM0" in msg and SER_F446 in msg
    assert "udevadm control --reload" in msg and "/etc/udev/rules.d" in msg


def test_libusb_access_denied_is_reported_with_udev_fix(board_dir):
    devices = [UsbDevice(0x374B, SER_F446, bus=3, address=7, open_errno=errno.EACCES),
               UsbDevice(0x374B, SER_F401, open_errno=errno.EBUSY),  # busy is not a permission problem
               UsbDevice(0x5740, "123", open_errno=errno.EACCES)]  # an ST USB device that is no ST-LINK

    def find(find_all: bool, idVendor: int):  # pyusb's usb.core.find signature
        assert find_all and idVendor == 0x0483
        return iter(devices)

    denied = inaccessible_stlinks(find)
    assert denied == ["bus 3 device 7 (ST-LINK PID 374b)"]
    with pytest.raises(ProbePermissionError, match="udevadm control --reload") as exc:
        select_attached("nucleo", attached=[], stlink_vcps=[], denied_usb=lambda: inaccessible_stlinks(find))
    assert "bus 3 device 7" in str(exc.value)


def test_inaccessible_stlinks_without_libusb_backend():
    def find(**kwargs):
        raise usb.core.NoBackendError("No backend available")

    assert inaccessible_stlinks(find) == []


def test_permission_errors_are_recognised_through_pyocd_wrapping():
    from pyocd.core.exceptions import ProbeError, TransferError

    denied = usb.core.USBError("Access denied (insufficient permissions)", errno=errno.EACCES)
    assert is_permission_error(denied)
    try:
        try:
            raise denied
        except usb.core.USBError as inner:
            raise ProbeError(f"USB Error: {inner}") from inner
    except ProbeError as wrapped:
        assert is_permission_error(wrapped)
    assert is_permission_error(PermissionError(errno.EACCES, "Permission denied", "/dev/ttyACM0"))
    assert not is_permission_error(usb.core.USBError("Resource busy", errno=errno.EBUSY))
    assert not is_permission_error(TransferError("SWD ACK fault"))


def test_qemu_needs_no_probe():
    assert resolve_board("qemu") == ("netduinoplus2", None)


def test_pyocd_sees_no_probe_here_and_says_so():
    """The real discovery on this machine (no board attached): no probe, a clear error."""
    if list_attached():
        pytest.skip("a debug probe is attached to this machine")
    with pytest.raises(ProbeNotFoundError, match="no debug probe found"):
        select_attached("nucleo", denied_usb=no_denied)


def test_udev_rules_cover_every_stlink_pyocd_drives():
    text = udev_rules()
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    for pid in STLinkUSBInterface.USB_PID_EP_MAP:
        assert any(f'ATTRS{{idProduct}}=="{pid:04x}"' in r for r in rules), hex(pid)
    assert all('ATTRS{idVendor}=="0483"' in r and 'MODE:="0666"' in r for r in rules)
    assert all("#" not in r for r in rules)  # udev has no comments after a rule
    assert any(r.startswith('KERNEL=="ttyACM*"') for r in rules)


def test_cli_udev_rules_and_probes():
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "udev-rules"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == udev_rules()
    if list_attached():
        pytest.skip("a debug probe is attached to this machine")
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "probes"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no debug probe found" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_every_nucleo_yaml_is_found_from_its_stlink_board_id():
    """boards/*.yaml against pyOCD's board id table: the id an ST-LINK reports leads back
    to the same YAML, by id and by the board name alone."""
    from pyocd.board.board_ids import BOARD_ID_TO_INFO

    from microtile.targets.boards import list_boards
    from microtile.targets.discovery import is_probe_board, yaml_board_id

    nucleos = [b for b in list_boards() if is_probe_board(b)]
    if not nucleos:
        pytest.skip("no board YAML with a pyocd: section in boards/ yet")
    for b in nucleos:
        bid = yaml_board_id(b)
        assert bid in BOARD_ID_TO_INFO, f"{b.name}: probe.board_id {bid!r} is not an ST-LINK board id pyOCD knows"
        info = BOARD_ID_TO_INFO[bid]
        assert match_board(info.name, info.target, board_id=bid).name == b.name
        assert match_board(info.name, info.target).name == b.name, info.name
