"""The board counter (firmware/ports/common/counter_dwt.c, the real file) compiled for
the host against a simulated DWT register file (tests/fixtures/dwt_sim): pyOCD's
session close clears DEMCR.TRCENA after the firmware booted, which freezes CYCCNT;
mt_port_counter_start (called by the app at each INVOKE and CALIBRATE) starts it
again, and the 64-bit count goes on from where it stopped."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIM = REPO / "tests" / "fixtures" / "dwt_sim"
UNIT_CYCLES = 1  # MT_COUNTER_UNIT_CYCLES (firmware/include/mt_port.h)


@pytest.fixture()
def dwt(tmp_path: Path) -> ctypes.CDLL:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no host C compiler (gcc)")
    lib = tmp_path / "libdwt.so"
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC",
                    "-DMT_HOST_TEST", "-DMT_CLOCK_HZ=180000000u", "-DMT_UART_USART2",
                    "-include", str(SIM / "dwt_sim.h"),
                    "-I", str(REPO / "firmware" / "include"), "-I", str(REPO / "firmware" / "ports" / "common"),
                    "-I", str(REPO / "firmware" / "ports" / "stm32f4"),
                    str(REPO / "firmware" / "ports" / "common" / "counter_dwt.c"), str(SIM / "dwt_sim.c"),
                    "-o", str(lib)], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.mt_counter_init.restype = ctypes.c_uint32
    dll.mt_counter_init.argtypes = [ctypes.c_uint32]
    dll.mt_port_counter_read.restype = ctypes.c_uint64
    dll.mt_port_counter_unit.restype = ctypes.c_uint32
    dll.mt_sim_peek_cyccnt.restype = ctypes.c_uint32
    return dll


def test_counter_started_again_after_the_debugger_stopped_it(dwt: ctypes.CDLL) -> None:
    assert dwt.mt_counter_init(180_000_000) == 0  # a DWT that counts: no MT_PORT_FAIL_COUNTER
    assert dwt.mt_port_counter_unit() == UNIT_CYCLES
    a, b = dwt.mt_port_counter_read(), dwt.mt_port_counter_read()
    assert b > a
    dwt.mt_sim_debugger_close()  # ~0.1 s after the reset that started the firmware
    frozen = dwt.mt_port_counter_read()
    assert dwt.mt_port_counter_read() == frozen  # the symptom: every layer would read 0 cycles
    dwt.mt_port_counter_start()
    c, d = dwt.mt_port_counter_read(), dwt.mt_port_counter_read()
    assert frozen < c < d  # counting again, on from the frozen value (no false wrap)
    assert d - c == b - a
