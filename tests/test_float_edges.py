"""Float32 operators at a model's edges run on the host side of the link, bit-exact with
TFLM's float kernels; float compute inside the model is refused with how to quantise."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from microtile.codegen.model_source import compile_model
from microtile.errors import MicrotileError
from microtile.importer.ir import Graph, Operator, Quant, Tensor
from microtile.build.native import NativeModel
from microtile.check.oracle import TflmOracle
from microtile.ops.float_edge import expf
from microtile.check.reference import run_reference
from microtile.importer.tflite_format import load_tflite, write_tflite
from microtile_models import zoo
from microtile_models.build import zoo_model_bytes


def _q(scale, zp=0):
    return Quant(np.array([scale], np.float32), np.array([zp], np.int64))


def _float_op_graph(opcode: str, shape: tuple[int, ...], options: dict) -> Graph:
    return Graph("f", [Tensor(0, "x", shape, "float32"), Tensor(1, "y", shape, "float32")],
                 [Operator(0, opcode, [0], [1], options)], [0], [1])


@pytest.mark.parametrize("opcode, options, shape", [
    ("SOFTMAX", {"beta": 1.0}, (1, 10)),
    ("SOFTMAX", {"beta": 0.3}, (1, 3, 37)),
    ("LOG_SOFTMAX", {}, (1, 10)),
    ("LOG_SOFTMAX", {}, (2, 5, 7)),
    ("LOGISTIC", {}, (1, 4, 4, 8)),
])
def test_float_kernels_are_bit_exact_with_tflm(opcode, options, shape):
    """Random float inputs from tiny to far beyond the logistic cut-offs."""
    graph = _float_op_graph(opcode, shape, options)
    data = write_tflite(graph)
    oracle = TflmOracle(data)
    graph = load_tflite(data)
    rng = np.random.default_rng(5)
    for k in range(120):
        x = (rng.standard_normal(shape) * (0.01, 1.0, 8.0, 40.0)[k % 4]).astype(np.float32)
        got, want = run_reference(graph, [x])[0], oracle([x])[0]
        assert got.dtype == want.dtype == np.float32
        assert np.array_equal(got, want), (opcode, k, np.abs(got - want).max())


def test_numpy_exp_is_not_tflm_expf():
    """Why the host calls libm: numpy's vectorised exp differs from expf in the last bit."""
    x = np.random.default_rng(0).uniform(-20, 5, 20000).astype(np.float32)
    assert (np.exp(x) != expf(x)).any()


@pytest.mark.parametrize("name", sorted(zoo.FLOAT_EDGE_MODELS))
def test_float_edge_models_run_the_float_ops_on_the_host(name):
    data = zoo_model_bytes(name)
    graph = load_tflite(data)
    compiled = compile_model(graph, "optimized")
    assert all(op.opcode in ("FULLY_CONNECTED",) for op in compiled.device_ops)
    assert compiled.host_post[0].opcode == "DEQUANTIZE" and len(compiled.host_post) >= 2
    assert all(graph.tensor(i).dtype == "int8" for i in compiled.device_inputs + compiled.device_outputs)
    native = NativeModel.build(graph, "optimized")
    oracle = TflmOracle(data)
    rng = np.random.default_rng(2)
    t = graph.tensor(graph.inputs[0])
    for _ in range(10):
        x = [rng.uniform(-1.5, 1.5, t.shape).astype(np.float32)]
        want = oracle(x)[0]
        got = native.run(x)[0]
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_float_op_before_the_first_quantize_runs_on_the_host():
    """float (1, 4, 6) -> float RESHAPE -> QUANTIZE -> int8 FC -> DEQUANTIZE -> float SOFTMAX."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (5, 24)).astype(np.int8)
    tensors = [Tensor(0, "x", (1, 4, 6), "float32"), Tensor(1, "shape", (2,), "int32", None, np.array([1, 24], np.int32)),
               Tensor(2, "x_flat", (1, 24), "float32"), Tensor(3, "xq", (1, 24), "int8", _q(0.02, 3)),
               Tensor(4, "w", (5, 24), "int8", _q(0.01), w), Tensor(5, "yq", (1, 5), "int8", _q(0.08, -10)),
               Tensor(6, "y", (1, 5), "float32"), Tensor(7, "p", (1, 5), "float32")]
    ops = [Operator(0, "RESHAPE", [0, 1], [2], {"new_shape": [1, 24]}), Operator(1, "QUANTIZE", [2], [3]),
           Operator(2, "FULLY_CONNECTED", [3, 4, -1], [5], {"fused_activation_function": "NONE"}),
           Operator(3, "DEQUANTIZE", [5], [6]), Operator(4, "SOFTMAX", [6], [7], {"beta": 1.0})]
    data = write_tflite(Graph("pre", tensors, ops, [0], [7]))
    graph = load_tflite(data)
    compiled = compile_model(graph)
    assert [op.opcode for op in compiled.host_pre] == ["RESHAPE", "QUANTIZE"]
    assert [op.opcode for op in compiled.device_ops] == ["FULLY_CONNECTED"]
    native, oracle = NativeModel.build(graph), TflmOracle(data)
    for _ in range(5):
        x = [rng.uniform(-2, 2, (1, 4, 6)).astype(np.float32)]
        assert np.array_equal(native.run(x)[0], oracle(x)[0])


def test_a_float32_model_is_refused_with_how_to_quantise_it():
    w = np.ones((4, 3, 3, 2), np.float32)
    tensors = [Tensor(0, "x", (1, 8, 8, 2), "float32"), Tensor(1, "w", w.shape, "float32", None, w),
               Tensor(2, "y", (1, 8, 8, 4), "float32")]
    options = {"padding": "SAME", "stride_w": 1, "stride_h": 1, "fused_activation_function": "NONE",
               "dilation_w_factor": 1, "dilation_h_factor": 1}
    graph = Graph("float_conv", tensors, [Operator(0, "CONV_2D", [0, 1, -1], [2], options)], [0], [2])
    with pytest.raises(MicrotileError) as err:
        compile_model(load_tflite(write_tflite(graph)))
    msg = str(err.value)
    assert "float32 model" in msg and "full-integer post-training quantisation" in msg
    assert "representative_dataset" in msg and "\n" not in msg


def test_float_layer_with_weights_at_the_edge_is_refused():
    """DEQUANTIZE -> float FULLY_CONNECTED: compute, not an edge op."""
    w = np.ones((3, 4), np.float32)
    tensors = [Tensor(0, "x", (1, 4), "int8", _q(0.1)), Tensor(1, "xf", (1, 4), "float32"),
               Tensor(2, "w", (3, 4), "float32", None, w), Tensor(3, "y", (1, 3), "float32")]
    ops = [Operator(0, "DEQUANTIZE", [0], [1]),
           Operator(1, "FULLY_CONNECTED", [1, 2, -1], [3], {"fused_activation_function": "NONE"})]
    graph = load_tflite(write_tflite(Graph("float_fc", tensors, ops, [0], [3])))
    with pytest.raises(MicrotileError, match="#1 FULLY_CONNECTED reads float tensor 'xf'.*TFLITE_BUILTINS_INT8"):
        compile_model(graph)


@pytest.mark.qemu
def test_lenet_300_100_runs_on_qemu_through_microtile_run(tmp_path):
    model = tmp_path / "lenet.tflite"
    model.write_bytes(zoo_model_bytes("lenet_300_100_mnist"))
    out = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "run", str(model), "--random", "3",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["samples"] == 3 and data["mismatches"] == 0  # float LOG_SOFTMAX outputs equal TFLM's bit for bit
    assert [layer["op"] for layer in data["layers"]] == ["FULLY_CONNECTED"] * 3
    assert [layer["macs"] for layer in data["layers"]] == [784 * 300, 300 * 100, 100 * 10]
