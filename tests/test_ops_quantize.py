"""QUANTIZE / DEQUANTIZE: float boundary conversions (host side) and int8 -> int8
requantisation (device side), bit-exact with TFLM."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from microtile.codegen.model_source import compile_model
from microtile.errors import UnsupportedOperatorError
from microtile.importer.ir import Graph, Operator, Tensor
from op_harness import assert_same, check_against_tflm, one_op_graph, qtensor

from microtile.ops import kernel_for
from microtile.ops.quantize import dequantize_array, quantize_array

scales = st.floats(-4.0, 1.0).map(lambda e: float(np.float32(10.0 ** e)))
zero_points = st.integers(-128, 127)


def quantize_graph(shape, qout, in_dtype="float32", qin=None, out_dtype="int8"):
    x = qtensor(0, shape, *qin, in_dtype) if qin else Tensor(0, "x", tuple(shape), in_dtype)
    return one_op_graph("QUANTIZE", [x, qtensor(1, shape, *qout, out_dtype)], [0], [1])


def dequantize_graph(shape, qin, in_dtype="int8"):
    return one_op_graph("DEQUANTIZE", [qtensor(0, shape, *qin, in_dtype), Tensor(1, "y", tuple(shape), "float32")],
                        [0], [1])


def _floats(rng, scale, n=300) -> np.ndarray:
    """Gaussian values over the int8 range, exact .5 ties, and a few out-of-range ones."""
    k = rng.integers(-140, 140, size=n // 3)
    ties = ((k + 0.5) * np.float64(scale)).astype(np.float32)
    spread = (rng.standard_normal(n - ties.size - 4) * 60 * scale).astype(np.float32)
    extremes = np.array([1e6 * scale, -1e6 * scale, 0.0, -0.0], dtype=np.float32)
    return np.concatenate([ties, spread, extremes]).reshape(1, -1)


@seed(10)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=scales, zp=zero_points, s=st.integers(0, 2**31))
def test_float_to_int8_matches_tflm(scale, zp, s):
    x = _floats(np.random.default_rng(s), scale)
    graph = quantize_graph(x.shape, (scale, zp))
    # no device operators: the whole graph is host side
    (expected,) = check_against_tflm(graph, [x], native=False)
    assert_same("quantize_array", expected, quantize_array(x, scale, zp, "int8"))


def test_float_to_int8_special_values():
    """Power-of-two scale makes x/scale exact, so ties are real ties; inf/huge
    values convert as TFLM does on this host."""
    x = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.49999997, 126.5, -128.5,
                   3e38, -3e38, np.inf, -np.inf, 2.0**31, -(2.0**31), 1e10]], dtype=np.float32) * np.float32(0.25)
    for zp in (-128, -5, 0, 7, 127):
        graph = quantize_graph(x.shape, (0.25, zp))
        (expected,) = check_against_tflm(graph, [x], native=False)
        assert_same("quantize_array", expected, quantize_array(x, 0.25, zp))


@seed(11)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=scales, zp=zero_points)
def test_int8_to_float_matches_tflm(scale, zp):
    q = np.arange(-128, 128, dtype=np.int64).astype(np.int8).reshape(1, 256)
    graph = dequantize_graph(q.shape, (scale, zp))
    (expected,) = check_against_tflm(graph, [q], native=False)
    assert_same("dequantize_array", expected, dequantize_array(q, scale, zp))


@seed(12)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s_in=scales, z_in=zero_points, ratio=st.floats(-3.0, 3.0), z_out=zero_points)
def test_int8_to_int8_matches_tflm(s_in, z_in, ratio, z_out):
    q = np.arange(-128, 128, dtype=np.int64).astype(np.int8).reshape(1, 256)
    s_out = float(np.float32(s_in * 10.0 ** ratio))
    graph = quantize_graph(q.shape, (s_out, z_out), "int8", (s_in, z_in))
    check_against_tflm(graph, [q])  # numpy and C (runs on the device)


@pytest.mark.parametrize("qin,qout", [((0.1, 3), (0.1, 3)), ((0.1, 0), (0.1, -128)), ((1.0, 0), (1e-6, 0)),
                                      ((1e-6, 0), (1.0, 0)), ((0.5, -128), (0.25, 127))])
def test_int8_to_int8_edges(qin, qout):
    q = np.arange(-128, 128, dtype=np.int64).astype(np.int8).reshape(1, 4, 8, 8)
    check_against_tflm(quantize_graph(q.shape, qout, "int8", qin), [q])


def test_float_model_boundaries_run_on_host():
    """float -> QUANTIZE -> RELU -> DEQUANTIZE -> float: the compiler keeps the
    boundary ops on the host (with quantize_array / dequantize_array) and the
    native build still equals TFLM bit for bit."""
    shape = (1, 6, 6, 4)
    tensors = [Tensor(0, "x", shape, "float32"), qtensor(1, shape, 0.05, 10), qtensor(2, shape, 0.03, -128),
               Tensor(3, "y", shape, "float32")]
    ops = [Operator(0, "QUANTIZE", [0], [1]), Operator(1, "RELU", [1], [2]), Operator(2, "DEQUANTIZE", [2], [3])]
    graph = Graph("boundaries", tensors, ops, [0], [3])
    compiled = compile_model(graph)
    assert [op.opcode for op in compiled.device_ops] == ["RELU"]
    x = (np.random.default_rng(3).standard_normal(shape) * 3).astype(np.float32)
    check_against_tflm(graph, [x])


# ------------------------------------------------------------ unsupported variants


def _expect_unsupported(graph, match):
    op = graph.operators[0]
    with pytest.raises(UnsupportedOperatorError, match=match):
        kernel_for(op).check(op, graph)


def test_rejects_other_type_pairs():
    _expect_unsupported(quantize_graph((1, 4), (0.1, 0), "int16", (0.1, 0)), "int16 -> int8")
    _expect_unsupported(quantize_graph((1, 4), (0.1, 0), "float32", None, "int16"), "float32 -> int16")
    _expect_unsupported(dequantize_graph((1, 4), (0.1, 0), "int16"), "int16 -> float32")


def test_rejects_per_channel_output():
    graph = quantize_graph((1, 2), (0.1, 0))
    graph.tensors[1].quant.scale = np.array([0.1, 0.2], np.float32)
    graph.tensors[1].quant.zero_point = np.array([0, 0], np.int64)
    _expect_unsupported(graph, "per-tensor")


def test_float_boundary_ops_do_not_emit_device_code():
    for graph in (quantize_graph((1, 4), (0.1, 0)), dequantize_graph((1, 4), (0.1, 0))):
        op = graph.operators[0]
        with pytest.raises(UnsupportedOperatorError, match="runs on the host"):
            kernel_for(op).emit(op, graph, None)  # type: ignore[arg-type]
