"""Flashing through pyOCD and the stale-image check, without a board attached.

* Error paths raise the real exception types pyOCD (and libusb under it) raise. The
  pyOCD session is a stand-in (``FakeSession``: a context manager whose ``open`` raises
  what a real Session.open raises), because a real one needs a probe on USB.
* The real ``ConnectHelper.session_with_chosen_probe`` and pyOCD's pack lookup run as
  they are: no probe here, no CMSIS pack installed.
* The stale-image check runs over a real link: real firmware on QEMU answers INFO with
  its real build id, and NucleoTarget decides from that whether to flash.
"""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import usb.core
from pyocd.core import exceptions as px

from microtile.targets.boards import load_board
from microtile.build.firmware import build_firmware
from microtile.codegen.model_source import compile_model
from microtile.targets.discovery import AttachedProbe, PackMissingError, ProbeNotFoundError, ProbePermissionError
from microtile.errors import LinkError, LinkTimeoutError
from microtile.link.protocol import DeviceInfo
from microtile.targets import open_target
from microtile.targets.nucleo import (
    FLASH_LOG,
    ConnectError,
    FlashError,
    NucleoTarget,
    StaleImageError,
    _open_session,
    ensure_target_support,
    flash_decision,
    flash_elf,
    open_serial,
    target_available,
    translate_pyocd_error,
)
from microtile.targets.qemu import QemuTarget
from microtile.importer.tflite_format import load_tflite
from microtile_models.build import zoo_model_bytes

from test_discovery import board_dir  # noqa: F401  (fixture: boards/ with Nucleo YAMLs)

UID = "0671FF485550755187121723"


def info(build_id: str = "abc123", board: str = "nucleo_f446re") -> DeviceInfo:
    return DeviceInfo(proto_version=1, counter_unit="cycles", max_payload=512, clock_hz=180_000_000,
                      model_hash=0x1234, arena_size=4096, stack_size=8192, num_layers=3, max_layers=64,
                      model_arena_size=4000, input_sizes=[490], output_sizes=[12], build_id=build_id,
                      model_name="kws", board=board)


# ---- the stale-image decision ----

def test_flash_decision():
    assert not flash_decision(info("abc123"), "abc123", "nucleo_f446re").flash
    assert not flash_decision(info("ABC123"), "abc123", "nucleo_f446re").flash  # hex case does not matter
    d = flash_decision(info("abc123"), "def456", "nucleo_f446re")
    assert d.flash and "abc123" in d.reason and "def456" in d.reason
    assert flash_decision(None, "abc123", "nucleo_f446re").flash  # silent board (blank, hung, other app)
    assert flash_decision(info("abc123", board="nucleo_f401re"), "abc123", "nucleo_f446re").flash
    assert flash_decision(info("abc123"), None, "nucleo_f446re").flash  # bare ELF: build id unknown
    assert flash_decision(info("abc123"), "abc123", "nucleo_f446re", force=True).flash


# ---- pyOCD errors -> messages with the command that fixes them ----

class FakeSession:
    """Stand-in for pyocd.core.session.Session used as ``with session:``."""

    def __init__(self, error: BaseException | None = None):
        self.error = error
        self.closed = False

    def __enter__(self):
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc):
        self.closed = True


@pytest.fixture
def elf(tmp_path) -> Path:
    path = tmp_path / "microtile.elf"
    path.write_bytes(b"\x7fELF")  # never parsed: program() is a stand-in in these tests
    return path


def _flash(board_name: str, elf: Path, errors: dict[str, BaseException | None], programmed: list):
    calls: list[str] = []

    def open_session(uid: str, target: str, mode: str):
        calls.append(mode)
        assert uid == UID
        return FakeSession(errors.get(mode))

    result = flash_elf(elf, load_board(board_name), UID, open_session=open_session,
                       program=lambda session, path: programmed.append((session, path)))
    return result, calls


def test_plain_connect_flashes(board_dir, elf):
    programmed: list = []
    mode, calls = _flash("nucleo_f429zi", elf, {}, programmed)  # stm32f429xi is built into pyOCD
    assert mode == "halt" and calls == ["halt"] and programmed[0][1] == elf


def test_connect_under_reset_is_the_retry(board_dir, elf):
    programmed: list = []
    mode, calls = _flash("nucleo_f429zi", elf, {"halt": px.TransferTimeoutError("SWD timeout")}, programmed)
    assert (mode, calls) == ("under-reset", ["halt", "under-reset"]) and len(programmed) == 1


def test_board_that_never_answers_on_swd(board_dir, elf):
    fault = px.TransferFaultError("AP read", fault_address=0xE000EDF0)
    with pytest.raises(ConnectError) as exc:
        _flash("nucleo_f429zi", elf, {"halt": px.TransferTimeoutError("no ACK"), "under-reset": fault}, [])
    msg = str(exc.value)
    assert "connect_mode=halt" in msg and "connect_mode=under-reset" in msg and "0xe000edf0" in msg
    assert f"pyocd erase --chip -t stm32f429xi -u {UID} -O connect_mode=under-reset" in msg


def test_missing_pack_from_pyocd_session(board_dir, elf, monkeypatch):
    """pyOCD's Board raises TargetSupportError for a target it does not know."""
    monkeypatch.setattr("microtile.targets.nucleo.target_available", lambda target: True)
    err = px.TargetSupportError("Target type stm32f446retx not recognized. Use 'pyocd list --targets' ...")
    with pytest.raises(PackMissingError, match="pyocd pack install stm32f446retx"):
        _flash("nucleo_f446re", elf, {"halt": err}, [])


def test_missing_pack_detected_before_touching_the_probe(board_dir, elf):
    """The real pyOCD pack lookup: the F446 needs ST's pack, which is not installed here."""
    if target_available("stm32f446retx"):
        pytest.skip("the STM32F4 pack is installed on this machine")
    with pytest.raises(PackMissingError) as exc:
        _flash("nucleo_f446re", elf, {}, [])
    assert "`pyocd pack install stm32f446retx`" in str(exc.value)
    assert ensure_target_support(load_board("nucleo_f429zi")) == "stm32f429xi"  # built in: no pack needed


def test_usb_permission_error_names_the_udev_fix(board_dir, elf):
    denied = usb.core.USBError("Access denied (insufficient permissions)", errno=errno.EACCES)
    wrapped = px.ProbeError(f"USB Error: {denied}")
    wrapped.__cause__ = denied
    with pytest.raises(ProbePermissionError) as exc:
        _flash("nucleo_f429zi", elf, {"halt": wrapped}, [])
    assert "udevadm control --reload" in str(exc.value) and UID in str(exc.value)


def test_probe_unplugged_while_flashing(board_dir, elf):
    with pytest.raises(ProbeNotFoundError, match="check the USB cable"):
        _flash("nucleo_f429zi", elf, {"halt": px.ProbeDisconnected("device disconnected")}, [])


def test_flash_algorithm_failure(board_dir, elf):
    err = px.FlashProgramFailure("flash program page failure", address=0x08004000, result_code=1)
    with pytest.raises(FlashError, match="pyocd erase --chip") as exc:
        _flash("nucleo_f429zi", elf, {"halt": err}, [])
    assert "0x08004000" in str(exc.value) and not isinstance(exc.value, ConnectError)


def test_unexpected_errors_are_not_swallowed(board_dir):
    with pytest.raises(KeyError):
        translate_pyocd_error(KeyError("bug"), load_board("nucleo_f429zi"), UID)


def test_missing_elf(board_dir, tmp_path):
    with pytest.raises(FlashError, match="not found"):
        flash_elf(tmp_path / "nope.elf", load_board("nucleo_f429zi"), UID)


def test_real_connect_helper_without_probe():
    """pyOCD's own ConnectHelper, asked for a probe that is not attached."""
    with pytest.raises(ProbeNotFoundError, match=f"{UID} is no longer attached"):
        _open_session(UID, "stm32f429xi", "halt")


def test_vcp_that_cannot_be_opened(tmp_path):
    with pytest.raises(LinkError, match="check the board is still attached"):
        open_serial(str(tmp_path / "ttyACM9"), 115200, 1.0)


# ---- open_target dispatch ----

def test_open_target_dispatch(board_dir, tmp_path):
    elf = tmp_path / "x.elf"
    assert isinstance(open_target("qemu", elf), QemuTarget)
    target = open_target("nucleo_f446re", elf, probe=UID, port="/dev/ttyACM7")
    assert isinstance(target, NucleoTarget) and target.probe == UID and target.port == "/dev/ttyACM7"
    assert target.baudrate == 115200 and target.build_id is None


# ---- the stale-image check over a real link (firmware on QEMU) ----

@pytest.fixture(scope="module")
def firmware(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo") / "op_relu.tflite"
    path.write_bytes(zoo_model_bytes("op_relu"))
    return build_firmware(compile_model(load_tflite(path)), load_board("qemu"))


@pytest.fixture
def qemu_vcp(firmware):
    """The firmware running on QEMU, its UART free for NucleoTarget to open as the VCP."""
    with QemuTarget("qemu", firmware.elf) as qemu:
        qemu.link.close()  # QEMU's socket takes one client: hand it over
        yield qemu


def _device(port: str) -> AttachedProbe:
    return AttachedProbe(UID, "STM32 STLink", "STMicroelectronics", "STM32 STLink", "NUCLEO-F446RE",
                         "stm32f446retx", port, "netduinoplus2")


@pytest.mark.qemu
def test_current_image_is_not_flashed(firmware, qemu_vcp):
    flashed: list = []
    before = len(FLASH_LOG)
    with NucleoTarget("qemu", firmware.elf, build_id=firmware.build_id, device=_device(qemu_vcp.url),
                      flasher=lambda *a: flashed.append(a) or "halt") as target:
        assert not target.decision.flash and "already runs build" in target.decision.reason
        assert target.info.build_id == firmware.build_id
        assert target.link.echo(b"still there") == b"still there"
    assert flashed == [] and len(FLASH_LOG) == before and not target.flashed


@pytest.mark.qemu
def test_other_image_is_flashed_and_verified(firmware, qemu_vcp):
    """The board runs another build: the target flashes, then checks the build id again.
    Here the stand-in flasher changes nothing, so the verification must catch it."""
    flashed: list = []
    target = NucleoTarget("qemu", firmware.elf, build_id="0123456789abcdef", device=_device(qemu_vcp.url),
                          flasher=lambda elf, board, uid: flashed.append((elf, board.name, uid)) or "under-reset")
    with pytest.raises(StaleImageError, match="still reports build " + firmware.build_id):
        target.start()
    assert flashed == [(firmware.elf, "netduinoplus2", UID)]
    assert target.decision.flash and "0123456789abcdef" in target.decision.reason
    assert FLASH_LOG[-1] == (UID, "0123456789abcdef", "under-reset")
    assert target._link is None  # closed on the error


@pytest.mark.qemu
def test_board_that_stops_answering_after_flashing(firmware, qemu_vcp):
    import os
    import signal

    def freeze(elf, board, uid):
        os.kill(qemu_vcp.pid, signal.SIGSTOP)  # the board hangs while being flashed
        return "halt"

    target = NucleoTarget("qemu", firmware.elf, build_id="fedcba9876543210", device=_device(qemu_vcp.url),
                          flasher=freeze, boot_timeout=1.5)
    try:
        with pytest.raises(LinkTimeoutError, match="board stopped answering") as exc:
            target.start()
        assert "Press the black reset button" in str(exc.value)
    finally:
        os.kill(qemu_vcp.pid, signal.SIGCONT)
