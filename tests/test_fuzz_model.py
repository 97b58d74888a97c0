"""The model-mutant fuzzer (python -m microtile.check.fuzz_model): a short seeded sample, the
harness's own crash / hang detection, the CLI on mutants, and what the full runs found."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from microtile.codegen.model_source import compile_model
from microtile.errors import MicrotileError
from microtile.check.fuzz_model import KINDS, Worker, fuzz_one, make_mutant, model_layout, run_fuzz
from microtile.importer.ir import Graph, Operator, Quant, Tensor
from microtile.check.oracle import TflmOracle
from microtile.check.reference import run_reference
from microtile.importer.tflite_format import load_tflite, write_tflite
from microtile_models.build import zoo_model_bytes


def test_sample_of_ds_cnn_mutants_has_no_failure():
    counts, failures = run_fuzz(zoo_model_bytes("ds_cnn_kws"), mutants=80, seed=7)
    assert failures == []
    assert sum(counts.values()) == 80
    rejected = sum(n for k, n in counts.items() if k.startswith("rejected:"))
    assert rejected > 0 and counts["match"] > 0  # the sample reaches both sides of the import


def test_mutants_run_on_the_native_build_too():
    seen = []
    counts, failures = run_fuzz(zoo_model_bytes("op_conv_3x3_same_relu"), mutants=6, seed=1, native_every=1,
                                report=lambda n, kind, change, outcome, detail: seen.append((outcome, detail)))
    assert failures == [] and counts["match"] > 0
    assert all(detail == "reference, native" for outcome, detail in seen if outcome == "match")


def test_every_mutation_kind_changes_the_model():
    data = zoo_model_bytes("op_conv_3x3_same_relu")
    layout = model_layout(data)
    assert layout[0] and layout[1]  # weight ranges and fields found
    rng = np.random.default_rng(0)
    for kind in KINDS:
        mutant, change = make_mutant(data, layout, rng, kind)
        assert mutant != data, change


def test_a_model_that_crashes_tflm_is_refused_by_microtile_and_seen_as_a_signal(tmp_path):
    """Graph input index -2: TFLM segfaults on it, microtile refuses it at import, and
    the fuzzer's worker reports a signal instead of dying with it."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_import import _conv_graph, _patched

    data = _patched(_conv_graph(), "graph input", -2)
    with pytest.raises(MicrotileError, match="graph input index -2"):
        load_tflite(data)
    model = tmp_path / "m.tflite"
    model.write_bytes(data)
    np.savez(tmp_path / "in.npz", in0=np.zeros((1, 8, 8, 2), np.int8))
    worker = Worker("tflm", tmp_path / "tflm.log")
    try:
        answer = worker.ask({"model": str(model), "arrays": str(tmp_path / "in.npz"), "inputs": 1,
                             "result": str(tmp_path / "out.npz")}, timeout=60)
    finally:
        worker.stop()
    assert answer["outcome"] == "signal" and "SIGSEGV" in answer["message"]


def test_a_worker_that_does_not_answer_is_a_hang_and_is_stopped(tmp_path):
    import os

    data = zoo_model_bytes("ds_cnn_kws")
    worker = Worker("microtile", tmp_path / "mt.log")
    workers = {"microtile": worker, "tflm": Worker("tflm", tmp_path / "tflm.log")}
    try:
        assert fuzz_one(data, tmp_path, workers, 0, False, timeout=60)[0] == "match"
        pid = worker.proc.pid
        outcome, detail = fuzz_one(data, tmp_path, workers, 0, False, timeout=0.001)
    finally:
        for w in workers.values():
            w.stop()
    assert outcome == "hang" and "no answer" in detail
    with pytest.raises(ProcessLookupError):  # killed and reaped, not orphaned
        os.kill(pid, 0)


@pytest.mark.parametrize("seed", [11])
def test_cli_compile_refuses_mutants_in_one_line(tmp_path, seed):
    data = zoo_model_bytes("ds_cnn_kws")
    layout = model_layout(data)
    rng = np.random.default_rng(seed)
    refused = Counter()
    while sum(refused.values()) < 4:
        kind = ("truncate", "field", "flip_other")[sum(refused.values()) % 3]
        mutant, change = make_mutant(data, layout, rng, kind)
        try:
            compile_model(load_tflite(mutant))
            continue  # accepted: not what this test is about
        except MicrotileError:
            pass
        path = tmp_path / f"m{sum(refused.values())}.tflite"
        path.write_bytes(mutant)
        proc = subprocess.run([sys.executable, "-m", "microtile.cli", "compile", str(path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (change, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr, change
        assert proc.stdout.strip().startswith("error:") and proc.stdout.strip().count("\n") == 0, proc.stdout
        refused[kind] += 1
    assert len(refused) == 3


def test_fuzz_command_prints_counts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "microtile.check.fuzz_model", "--mutants", "12", "--seed", "2",
                           "--model", "op_conv_3x3_same_relu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "12 mutants (seed 2)" in proc.stdout and "failures: 0" in proc.stdout
    assert "rejected:" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "microtile.check.fuzz_model", "--model", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    garbage = tmp_path / "garbage.tflite"  # a base model that is not a model: one line, exit 2
    garbage.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\xff" * 64)
    bad = subprocess.run([sys.executable, "-m", "microtile.check.fuzz_model", "--model", str(garbage)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


def test_fully_connected_per_tensor_multiplier_matches_tflm():
    """Found by the fuzzer on the MLPerf AD model (its last layer): TFLM takes the input x
    weight scale product in double; a float32 product is one ulp off, and the two
    accumulators +-88337 then requantise to different outputs."""
    xs, ws, ys = (np.float32(float.fromhex(h)) for h in
                  ("0x1.962c88p-6", "0x1.406aacp-6", "0x1.753f16p-2"))  # ad01's last FC layer

    def q(scale, zp=0):
        return Quant(np.array([scale], np.float32), np.array([zp], np.int64))

    tensors = [Tensor(0, "x", (1, 1), "int8", q(xs)),
               Tensor(1, "w", (2, 1), "int8", q(ws), np.zeros((2, 1), np.int8)),
               Tensor(2, "b", (2,), "int32", q(xs * ws), np.array([-88337, 88337], np.int32)),
               Tensor(3, "y", (1, 2), "int8", q(ys, 96))]
    graph = Graph("fc", tensors, [Operator(0, "FULLY_CONNECTED", [0, 1, 2], [3],
                                           {"fused_activation_function": "NONE"})], [0], [3])
    data = write_tflite(graph)
    x = [np.zeros((1, 1), np.int8)]
    expected = TflmOracle(data)(x)[0]
    assert np.array_equal(run_reference(load_tflite(data), x)[0], expected), expected


@pytest.mark.shared
def test_scales_without_zero_points_are_refused_as_tflm_refuses_them(shared_dir):
    """ResNet-8 mutant 262 of seed 1: a weight tensor's zero-point vector emptied. TFLM
    then reads the weights as unquantised and its CONV_2D Prepare fails; microtile used
    to accept the file. Now the import refuses it, and the oracle's own failure is one
    MicrotileError line too (exit 2 in `run`), not a RuntimeError traceback."""
    from microtile.errors import ModelFormatError
    from microtile.check.oracle import TflmRefusedError

    data = (shared_dir / "models" / "mlperf_tiny" / "pretrainedResnet_quant.tflite").read_bytes()
    layout, rng = model_layout(data), np.random.default_rng(1)
    for _ in range(263):
        mutant, change = make_mutant(data, layout, rng, KINDS[int(rng.integers(len(KINDS)))])
    with pytest.raises(ModelFormatError, match="32 quantisation scales but 0 zero points"):
        load_tflite(mutant)
    with pytest.raises(TflmRefusedError) as err:
        TflmOracle(mutant)
    assert "TFLM cannot load this model" in str(err.value) and "\n" not in str(err.value)


def test_fully_connected_bias_scale_far_from_input_times_weight_is_refused():
    """Found on AD and DS-CNN mutants: TFLM's FULLY_CONNECTED Prepare refuses a bias
    scale that is not input x weight scale (within 2% of the output scale); microtile
    compiled it. Now both refuse it."""
    from microtile.errors import UnsupportedOperatorError
    from microtile.check.oracle import TflmRefusedError

    def q(scale, zp=0):
        return Quant(np.array([scale], np.float32), np.array([zp], np.int64))

    tensors = [Tensor(0, "x", (1, 4), "int8", q(0.1)),
               Tensor(1, "w", (2, 4), "int8", q(0.05), np.ones((2, 4), np.int8)),
               Tensor(2, "b", (2,), "int32", q(0.5), np.zeros(2, np.int32)),  # should be 0.005
               Tensor(3, "y", (1, 2), "int8", q(0.2))]
    graph = Graph("fc", tensors, [Operator(0, "FULLY_CONNECTED", [0, 1, 2], [3],
                                           {"fused_activation_function": "NONE"})], [0], [3])
    data = write_tflite(graph)
    with pytest.raises(UnsupportedOperatorError, match="#0 FULLY_CONNECTED: bias scale 0.5"):
        compile_model(load_tflite(data))
    with pytest.raises(TflmRefusedError):
        TflmOracle(data)
    tensors[2].quant = q(np.float32(0.1) * np.float32(0.05))
    compile_model(load_tflite(write_tflite(graph)))  # the right scale compiles
