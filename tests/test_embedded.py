"""pytest-embedded on the device's serial line: its serial DUT (pyserial over QEMU's
socket://, the same code path as /dev/ttyACM* on a board) sees the boot banner that
the firmware sends in a LOG frame (COBS leaves text without zero bytes readable)."""
from __future__ import annotations

import pytest

from microtile.targets.boards import load_board
from microtile.build.firmware import build_firmware
from microtile.codegen.model_source import compile_model
from microtile.link.protocol import CMD_RESET, build_frame
from microtile.targets.qemu import QemuTarget
from microtile.importer.tflite_format import load_tflite
from microtile_models.build import zoo_model_bytes

pytestmark = pytest.mark.qemu


def test_embedded_serial_dut_expects_the_boot_banner():
    from pytest_embedded.dut_factory import DutFactory

    board = load_board("qemu")
    compiled = compile_model(load_tflite(zoo_model_bytes("op_add")), "optimized", board)
    firmware = build_firmware(compiled, board)
    with QemuTarget(board, firmware.elf) as target:
        target.link.close()  # one owner of the port: hand it to pytest-embedded
        dut = DutFactory.create(embedded_services="serial", port=target.url)
        try:
            # RESET reboots the device, which then announces itself again.
            dut.serial.proc.write(b"\x00" + build_frame(CMD_RESET, 1))
            match = dut.expect(rb"microtile ready, build ([0-9a-f]+), board (\w+), model ", timeout=10)
            build_id, board_name = (g.decode() for g in match.groups())
            assert build_id == firmware.build_id[: len(build_id)] and len(build_id) >= 8
            assert board_name == board.name
            dut.expect_exact(compiled.graph.name, timeout=5)
        finally:
            DutFactory.close()
