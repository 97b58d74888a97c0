"""A failed run is said plainly: the verdict is FAILED (never "bit-exact", also with 0
samples), unmeasured counts are n/a in the table and null in the JSON, a device fault
names the layer, its operator, the fault and the registers, and `run` and `bench`
share one exit code."""
from __future__ import annotations

import os
import signal

import pytest

from microtile import cli
from microtile.targets.boards import load_board
from microtile.build.firmware import build_firmware
from microtile.codegen.model_source import compile_model
from microtile.link.protocol import FrameDecoder, parse_fault
from microtile.measure.runner import (EXIT_BAD_INPUT, EXIT_MISMATCH, EXIT_OK, EXIT_TARGET_FAILED, RunResult, exit_code,
                              run_model, worst_exit_code)
from microtile.errors import LinkError, ToolMissingError
from microtile.importer.tflite_format import load_tflite
from microtile_models.build import zoo_model_bytes

# A FAULT frame as the firmware sent it on QEMU (BusFault in layer 1; the same
# recording as tests/test_link.py), with its leading delimiter.
RECORDED_BUS_FAULT = bytes.fromhex(
    "00027f022a020904030105020103f21904080f0a02080282010101010101010101010101103001637075206661756c743daa34fc00")


@pytest.fixture(scope="module")
def kws_result_factory():
    board = load_board("qemu")
    compiled = compile_model(load_tflite(zoo_model_bytes("ds_cnn_kws")), "optimized", board)
    firmware = build_firmware(compiled, board)
    return lambda: RunResult(compiled.graph.name, board, "instructions", compiled, firmware)


def _printed(result, capsys) -> str:
    capsys.readouterr()
    cli._print_run(result)
    return capsys.readouterr().out


def test_device_fault_names_layer_operator_fault_and_registers(kws_result_factory, capsys):
    (frame,) = FrameDecoder().feed(RECORDED_BUS_FAULT)
    result = kws_result_factory()
    result.fail(parse_fault(frame.payload), planned=3)
    op = result.compiled.device_ops[1].opcode
    assert op == "DEPTHWISE_CONV_2D"
    assert f"in layer 1 ({op})" in result.error and "BusFault" in result.error
    assert "PC=0x080019f2" in result.error and "CFSR=0x00008200" in result.error and "BFAR=0x30000000" in result.error
    assert exit_code(result) == EXIT_TARGET_FAILED
    data = result.to_json()
    assert data["verdict"] == "failed" and data["exit_code"] == EXIT_TARGET_FAILED and data["samples"] == 0
    # nothing was measured: null, not 0
    assert all(layer["instructions"] is None for layer in data["layers"]) and data["total"]["instructions"] is None
    assert data["ram"]["stack_bytes"] is None and data["ram"]["total_bytes"] is None
    out = _printed(result, capsys)
    assert "FAILED" in out and "bit-exact" not in out and "n/a" in out
    assert f"in layer 1 ({op})" in out.replace("\n", "")


def test_failure_after_some_samples_is_still_failed(kws_result_factory, capsys):
    result = kws_result_factory()
    result.samples, result.count_sums = 2, [100] * len(result.compiled.device_ops)
    result.fail(LinkError("board stopped answering after 2.0 s"), planned=5)
    out = _printed(result, capsys)
    assert "FAILED" in out and "bit-exact" not in out and "the 2 sample(s) before it matched TFLM" in out
    assert result.to_json()["layers"][0]["instructions"] == 50  # the mean of what was measured
    assert exit_code(result) == EXIT_TARGET_FAILED


def test_exit_codes_are_one_mapping():
    assert exit_code(ToolMissingError("qemu-system-arm not found")) == EXIT_BAD_INPUT
    assert exit_code(LinkError("no answer")) == EXIT_TARGET_FAILED
    assert exit_code(KeyboardInterrupt()) == 130
    assert worst_exit_code([EXIT_OK, EXIT_MISMATCH]) == EXIT_MISMATCH
    assert worst_exit_code([EXIT_MISMATCH, EXIT_TARGET_FAILED, EXIT_BAD_INPUT]) == EXIT_TARGET_FAILED
    assert worst_exit_code([EXIT_TARGET_FAILED, 143]) == 143
    assert worst_exit_code([]) == EXIT_OK


@pytest.mark.qemu
def test_target_that_never_answers_is_failed_with_no_counts(tmp_path, monkeypatch, capsys):
    """QEMU frozen before the first sample: FAILED with 0 samples, counts n/a, exit 3,
    for `run` and for `bench` alike."""
    from microtile.targets import qemu

    original_enter = qemu.QemuTarget.__enter__

    def enter(self):
        target = original_enter(self)
        target.link.timeout = 1.0
        os.kill(target.pid, signal.SIGSTOP)
        return target

    monkeypatch.setattr(qemu.QemuTarget, "__enter__", enter)
    model = tmp_path / "add.tflite"
    model.write_bytes(zoo_model_bytes("op_add"))
    result = run_model(model, "qemu", random=2)
    assert result.samples == 0 and "answer" in result.error
    assert result.mean_counts() == [None]
    assert exit_code(result) == EXIT_TARGET_FAILED
    out = _printed(result, capsys)
    assert "FAILED" in out and "bit-exact" not in out and "n/a" in out
    assert cli.main(["bench", str(model), "--random", "1", "--kernels", "optimized"]) == EXIT_TARGET_FAILED
    out = capsys.readouterr().out
    assert "optimized: FAILED" in out and "bit-exact" not in out
