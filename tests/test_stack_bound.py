"""The firmware build bounds every C stack frame (issue 7 follow-up): a layer's working
memory on the stack once overflowed the 8 KB device stack. CMakeLists.txt compiles with
-Werror=stack-usage=<half the board's stack>; build.py reports the error in one line."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from microtile.targets.boards import firmware_configure_command, load_board
from microtile.build.firmware import build_failure, stack_frame_error
from microtile.errors import BuildError

REPO = Path(__file__).resolve().parents[1]
BIG_FRAME = REPO / "tests" / "fixtures" / "big_frame_model"

# What arm-none-eabi-gcc 12 and Ninja print for such a frame (the build below makes it).
RECORDED_LOG = """FAILED: CMakeFiles/mt_model_plain.dir/model.c.obj
/usr/bin/arm-none-eabi-gcc  -mcpu=cortex-m4 -O2 -Werror=stack-usage=4096 -std=c99 -c /x/model/model.c
/x/model/model.c: In function 'big_frame_run_layer':
/x/model/model.c:41:13: error: stack usage is 6016 bytes [-Werror=stack-usage=]
   41 | static void big_frame_run_layer(uint32_t layer, uint8_t *arena)
cc1: some warnings being treated as errors
ninja: build stopped: subcommand failed.
"""


def test_stack_error_names_function_bytes_and_bound() -> None:
    line = stack_frame_error(RECORDED_LOG)
    assert line is not None and "\n" not in line
    assert "big_frame_run_layer" in line and "model.c" in line and "6016 bytes" in line and "4096" in line
    unbounded = RECORDED_LOG.replace("stack usage is 6016 bytes", "stack usage might be unbounded")
    assert "unbounded" in stack_frame_error(unbounded)
    assert stack_frame_error("model.c:3:1: error: expected ';' before '}' token") is None


def test_firmware_build_refuses_a_big_frame_in_one_line(tmp_path: Path) -> None:
    """A run_layer with a 6000-byte local fails the ARM build on the 8 KB-stack board,
    and the classifier says which function and how many bytes, in one line."""
    for tool in ("arm-none-eabi-gcc", "cmake", "ninja"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    board = load_board("nucleo_f446re")
    assert board.stack_size == 0x2000
    configure = firmware_configure_command(board.name, BIG_FRAME, "a1", tmp_path)
    proc = subprocess.run(configure, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run(["cmake", "--build", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert not (tmp_path / "microtile.elf").exists()
    error = build_failure(proc, "firmware build failed", compiled=None, board=board)
    assert isinstance(error, BuildError)
    message = str(error)
    assert "\n" not in message, message
    assert "big_frame_run_layer" in message and "4096" in message
    assert int(message.split(" uses ")[1].split(" bytes")[0]) >= 6000
