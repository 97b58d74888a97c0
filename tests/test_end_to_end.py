"""The whole path on the selected target (QEMU by default): .tflite -> firmware ->
run -> every output bit-exact with TFLM, with counts, RAM and ROM reported."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

import microtile
from microtile.targets.boards import load_board
from microtile.build.firmware import build_firmware, check_fits
from microtile.codegen.model_source import compile_model
from microtile.errors import DoesNotFitError
from microtile.importer.ir import Graph, Operator, Quant, Tensor
from microtile.importer.tflite_format import load_tflite, write_tflite
from microtile_models.build import zoo_model_bytes
from microtile_models.zoo import MLPERF_MODELS, SINGLE_OP_MODELS

pytestmark = pytest.mark.qemu


def _zoo_file(tmp_path_factory, name: str):
    path = tmp_path_factory.mktemp("zoo") / f"{name}.tflite"
    path.write_bytes(zoo_model_bytes(name))
    return path


@pytest.mark.parametrize("name", sorted(SINGLE_OP_MODELS))
def test_single_operator_models_bit_exact_on_target(run_on_board, tmp_path_factory, name):
    result = run_on_board(_zoo_file(tmp_path_factory, name), random=3)
    assert result.error is None
    assert result.samples == 3
    assert result.mismatches == []
    # a RESHAPE planned as an alias of its input (passes/inplace.py) runs no instruction
    aliased = {a.member for a in result.compiled.plan.aliases if a.kind == "reshape"}
    assert all(c > 0 for c, op in zip(result.mean_counts(), result.compiled.device_ops) if op.outputs[0] not in aliased)


@pytest.mark.parametrize("name", sorted(MLPERF_MODELS))
def test_mlperf_like_zoo_models_bit_exact_on_target(run_on_board, tmp_path_factory, name):
    result = run_on_board(_zoo_file(tmp_path_factory, name), random=2)
    assert result.error is None and result.samples == 2
    assert result.mismatches == []
    data = result.to_json()
    unit = data["counter_unit"]
    # One SMLAD does two MACs: no count can beat half an instruction per MAC.
    assert data["total"][unit] > data["total"]["macs"] / 2 > 0
    assert 0 < data["ram"]["arena_bytes"] <= data["ram"]["total_bytes"] <= result.board.ram_bytes
    assert result.compiled.const_bytes < data["rom"]["total_bytes"] <= result.board.flash_bytes


def test_cli_run_writes_json(tmp_path_factory, tmp_path, board):
    model = _zoo_file(tmp_path_factory, "op_conv_3x3_same_relu")
    out = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "run", str(model), "--board", board.name,
                           "--random", "2", "--seed", "7", "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bit-exact with TFLM" in proc.stdout and "CONV_2D" in proc.stdout
    data = json.loads(out.read_text())
    assert data["samples"] == 2 and data["mismatches"] == 0 and data["top1"] is None
    assert data["verdict"] == "bit-exact" and data["exit_code"] == 0
    # what made the result
    prov = data["provenance"]
    assert prov["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert prov["seed"] == 7 and prov["board"] == board.name and prov["kernels"] == "optimized"
    assert len(prov["build_id"]) == 16 and prov["microtile"] == microtile.__version__
    assert prov["arm_none_eabi_gcc"].startswith("arm-none-eabi-gcc") and "QEMU emulator" in prov["qemu"]
    assert prov["git_commit"] is None or len(prov["git_commit"].split("-")[0]) == 40
    assert abs(datetime.fromisoformat(prov["timestamp_utc"]) - datetime.now(timezone.utc)) < timedelta(hours=1)
    assert [layer["op"] for layer in data["layers"]] == ["CONV_2D"]
    unit = data["counter_unit"]
    graph = load_tflite(model)
    out_shape, w_shape = graph.tensor(graph.outputs[0]).shape, graph.tensor(graph.operators[0].inputs[1]).shape
    expected_macs = int(np.prod(out_shape)) * int(np.prod(w_shape[1:]))  # each output: kh*kw*cin MACs
    assert data["layers"][0]["macs"] == data["total"]["macs"] == expected_macs
    assert data["total"][unit] == sum(layer[unit] for layer in data["layers"])
    assert {"arena_bytes", "total_bytes"} <= set(data["ram"]) and data["rom"]["total_bytes"] > 0


def test_cli_reports_unsupported_operator(tmp_path_factory):
    model = _zoo_file(tmp_path_factory, "unsupported_tanh")
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "run", str(model)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "TANH" in proc.stdout and "supported" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def _dense_graph(n_in: int, n_out: int) -> Graph:
    q = Quant(np.array([0.05], np.float32), np.array([0], np.int64))
    w = np.ones((n_out, n_in), np.int8)
    tensors = [
        Tensor(0, "x", (1, n_in), "int8", q),
        Tensor(1, "w", (n_out, n_in), "int8", Quant(np.array([0.01], np.float32), np.array([0], np.int64)), w),
        Tensor(2, "y", (1, n_out), "int8", q),
    ]
    op = Operator(0, "FULLY_CONNECTED", [0, 1, -1], [2], {"fused_activation_function": "NONE"})
    return Graph("dense", tensors, [op], [0], [2])


def test_model_too_big_for_flash_is_refused(board):
    compiled = compile_model(load_tflite(write_tflite(_dense_graph(1024, 1100))))  # 1.1 MB of weights
    with pytest.raises(DoesNotFitError, match="flash"):
        build_firmware(compiled, board)


def test_model_too_big_for_ram_is_refused(board):
    compiled = compile_model(load_tflite(write_tflite(_dense_graph(200_000, 2))))  # 200 KB input
    with pytest.raises(DoesNotFitError, match="RAM"):
        check_fits(compiled, board)


def test_linker_overflow_is_reported_as_does_not_fit(monkeypatch):
    """The pre-build estimate can be fooled; the linker's verdict still becomes a clear error."""
    import microtile.build.firmware as build

    monkeypatch.setattr(build, "CODE_BUDGET", 0)
    monkeypatch.setattr(build, "RAM_BUDGET", 0)
    board = load_board("qemu")
    n_in = board.ram_bytes - 4096  # input + output fit the estimate, not the linker's RAM
    compiled = compile_model(load_tflite(write_tflite(_dense_graph(n_in, 2))))
    with pytest.raises(DoesNotFitError, match="does not fit"):
        build.build_firmware(compiled, board)


def test_target_that_stops_answering_keeps_what_was_measured(tmp_path_factory, monkeypatch):
    """QEMU frozen after two samples: the run ends with an error, not a hang, and the two
    measured samples stay in the result."""
    import os
    import signal

    from microtile.measure.runner import run_model
    from microtile.targets import qemu

    started = []
    original_enter = qemu.QemuTarget.__enter__

    def enter(self):
        target = original_enter(self)
        target.link.timeout = 2.0
        started.append(target)
        return target

    monkeypatch.setattr(qemu.QemuTarget, "__enter__", enter)

    def freeze_after_two(done, total):
        if done == 2:
            os.kill(started[0].pid, signal.SIGSTOP)

    model = _zoo_file(tmp_path_factory, "op_add")
    result = run_model(model, "qemu", random=5, progress=freeze_after_two)
    assert result.samples == 2 and all(c > 0 for c in result.mean_counts())
    assert result.error is not None and "answer" in result.error
    assert result.to_json()["error"] == result.error


def test_ctrl_c_keeps_what_was_measured_and_stops_qemu(tmp_path_factory, monkeypatch):
    import os

    from microtile.measure.runner import run_model
    from microtile.targets import qemu

    started = []
    original_enter = qemu.QemuTarget.__enter__

    def enter(self):
        started.append(original_enter(self))
        return started[-1]

    monkeypatch.setattr(qemu.QemuTarget, "__enter__", enter)

    pids = []

    def interrupt_after_two(done, total):
        if done == 2:
            pids.append(started[0].pid)
            raise KeyboardInterrupt

    result = run_model(_zoo_file(tmp_path_factory, "op_add"), "qemu", random=5, progress=interrupt_after_two)
    assert result.samples == 2 and result.error.startswith("interrupted")
    assert pids and pids[0] > 0
    with pytest.raises(ProcessLookupError):  # QEMU is gone, not left running
        os.kill(pids[0], 0)
