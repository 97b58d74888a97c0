"""RELU / RELU6 / LOGISTIC / HARD_SWISH int8: numpy reference and C kernel
bit-exact with TFLM. Inputs cover all 256 int8 values, so every quantisation
drawn is checked exhaustively."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from op_harness import all_int8, check_against_tflm, one_op_graph, qtensor, random_int8

from microtile.errors import UnsupportedOperatorError
from microtile.importer.ir import Tensor
from microtile.ops import kernel_for

scales = st.floats(-4.0, 1.0).map(lambda e: float(np.float32(10.0 ** e)))
zero_points = st.integers(-128, 127)
LOGISTIC_OUT = (1.0 / 256, -128)


def unary_graph(opcode, shape, qin, qout, out_shape=None):
    tensors = [qtensor(0, shape, *qin), qtensor(1, out_shape or shape, *qout)]
    return one_op_graph(opcode, tensors, [0], [1])


def _exhaustive_input(rng, extra: int = 0) -> tuple[tuple[int, ...], np.ndarray]:
    """All 256 int8 values (shuffled) plus `extra` random ones, as a 1xN tensor."""
    x = np.concatenate([all_int8().reshape(-1), random_int8(rng, (extra,))])
    rng.shuffle(x)
    return (1, x.size), x.reshape(1, -1)


def _check(opcode, qin, qout, seed_: int):
    rng = np.random.default_rng(seed_)
    shape, x = _exhaustive_input(rng, int(rng.integers(0, 64)))
    check_against_tflm(unary_graph(opcode, shape, qin, qout), [x])


@seed(1)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s_in=scales, z_in=zero_points, ratio=st.floats(-2.0, 2.0), z_out=zero_points, s=st.integers(0, 2**31))
def test_relu_matches_tflm(s_in, z_in, ratio, z_out, s):
    # input and output quantisation differ, as ReluQuantized allows
    _check("RELU", (s_in, z_in), (float(np.float32(s_in * 10.0 ** ratio)), z_out), s)


@seed(2)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s_in=scales, z_in=zero_points, s=st.integers(0, 2**31))
def test_relu6_matches_tflm(s_in, z_in, s):
    _check("RELU6", (s_in, z_in), (s_in, z_in), s)


@seed(3)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s_in=st.floats(-4.0, 0.9).map(lambda e: float(np.float32(10.0 ** e))), z_in=zero_points,
       s=st.integers(0, 2**31))
def test_logistic_matches_tflm(s_in, z_in, s):
    _check("LOGISTIC", (s_in, z_in), LOGISTIC_OUT, s)


@seed(4)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s_in=scales, z_in=zero_points, ratio=st.floats(-1.5, 2.0), z_out=zero_points, s=st.integers(0, 2**31))
def test_hard_swish_matches_tflm(s_in, z_in, ratio, z_out, s):
    # output scale from input/128 (the smallest TFLM accepts) up to 100x the input's
    s_out = float(np.float32(max(s_in * 10.0 ** ratio, s_in / 127.0)))
    _check("HARD_SWISH", (s_in, z_in), (s_out, z_out), s)


@pytest.mark.parametrize("opcode,qin,qout", [
    ("RELU", (0.05, -128), (0.05, -128)),        # converter's usual same-quant case
    ("RELU", (0.02, 10), (0.1, -128)),
    ("RELU", (1e-4, 127), (0.5, 0)),             # tiny ratio: everything rounds to zero
    ("RELU", (2.0, -128), (1e-3, -128)),         # huge ratio: positive shift, saturates
    ("RELU6", (6.0 / 255, -128), (6.0 / 255, -128)),
    ("RELU6", (0.01, 0), (0.01, 0)),             # 6.0 beyond int8: upper clamp at 127
    ("RELU6", (0.05, 3), (0.02, -7)),            # TFLM ignores the output quantisation here
    ("LOGISTIC", (0.1, 0), LOGISTIC_OUT),
    ("LOGISTIC", (8.0, 5), LOGISTIC_OUT),        # radius 0 < 1: saturating everywhere
    ("LOGISTIC", (1.0 / 16, -128), LOGISTIC_OUT),
    ("LOGISTIC", (2.0 ** -10, 77), LOGISTIC_OUT),
    ("HARD_SWISH", (0.05, 0), (0.03, -100)),
    ("HARD_SWISH", (0.1, -128), (0.1 / 127, 0)),  # output exponent 0: int16 wrap in TFLM
    ("HARD_SWISH", (3.0, 20), (0.5, -10)),       # large reluish multiplier: left shifts
    ("HARD_SWISH", (1e-4, 0), (1.0, 0)),         # tiny: large right shifts
])
def test_edge_quantisations(opcode, qin, qout):
    rng = np.random.default_rng(8)
    shape, x = _exhaustive_input(rng)
    check_against_tflm(unary_graph(opcode, shape, qin, qout), [x])


@pytest.mark.parametrize("opcode,qout", [("RELU", (0.02, -128)), ("RELU6", (0.03, -128)),
                                         ("LOGISTIC", LOGISTIC_OUT), ("HARD_SWISH", (0.04, -20))])
def test_4d_tensor(opcode, qout):
    rng = np.random.default_rng(9)
    shape = (1, 5, 7, 9)
    check_against_tflm(unary_graph(opcode, shape, (0.03, -128), qout), [random_int8(rng, shape)])


# ------------------------------------------------------------ unsupported variants


def _expect_unsupported(graph, match):
    op = graph.operators[0]
    with pytest.raises(UnsupportedOperatorError, match=match):
        kernel_for(op).check(op, graph)


@pytest.mark.parametrize("opcode", ["RELU", "RELU6", "LOGISTIC", "HARD_SWISH"])
def test_rejects_int16_and_float(opcode):
    tensors = [qtensor(0, (1, 8), 1 / 32768, 0, "int16"), qtensor(1, (1, 8), 1 / 32768, 0, "int16")]
    _expect_unsupported(one_op_graph(opcode, tensors, [0], [1]), "int16")
    tensors = [Tensor(0, "x", (1, 8), "float32"), Tensor(1, "y", (1, 8), "float32")]
    _expect_unsupported(one_op_graph(opcode, tensors, [0], [1]), "float32")


def test_rejects_logistic_output_zero_point():
    _expect_unsupported(unary_graph("LOGISTIC", (1, 8), (0.1, 0), (1 / 256, 0)), "output zero point 0")


def test_rejects_logistic_tiny_input_scale():
    _expect_unsupported(unary_graph("LOGISTIC", (1, 8), (1e-12, 0), LOGISTIC_OUT), "too small")


def test_rejects_hard_swish_tiny_output_scale():
    _expect_unsupported(unary_graph("HARD_SWISH", (1, 8), (0.1, 0), (0.1 / 1000, 0)), "not above input scale / 128")


def test_rejects_per_channel_and_size_mismatch():
    graph = unary_graph("RELU", (1, 2), (0.1, 0), (0.1, 0))
    graph.tensors[0].quant.scale = np.array([0.1, 0.2], np.float32)
    graph.tensors[0].quant.zero_point = np.array([0, 0], np.int64)
    _expect_unsupported(graph, "per-tensor")
    _expect_unsupported(unary_graph("RELU6", (1, 8), (0.1, 0), (0.1, 0), out_shape=(1, 4)), "differ")


def test_chain_of_operators():
    """ADD -> RELU -> LOGISTIC -> HARD_SWISH -> RELU6 -> QUANTIZE -> MUL in one
    compiled model (arena reuse between layers), bit-exact with TFLM."""
    from microtile.importer.ir import Graph, Operator

    s = (1, 4, 4, 8)
    ts = [qtensor(0, s, 0.05, 0), qtensor(1, (8,), 0.02, 3), qtensor(2, s, 0.1, -1), qtensor(3, s, 0.1, -128),
          qtensor(4, s, 1 / 256, -128), qtensor(5, s, 0.05, -10), qtensor(6, s, 0.05, -10),
          qtensor(7, s, 0.07, 3), qtensor(8, s, 0.07, 3)]
    ops = [Operator(0, "ADD", [0, 1], [2], {"fused_activation_function": "NONE"}), Operator(1, "RELU", [2], [3]),
           Operator(2, "LOGISTIC", [3], [4]), Operator(3, "HARD_SWISH", [4], [5]), Operator(4, "RELU6", [5], [6]),
           Operator(5, "QUANTIZE", [6], [7]), Operator(6, "MUL", [7, 2], [8], {"fused_activation_function": "RELU"})]
    rng = np.random.default_rng(0)
    check_against_tflm(Graph("chain", ts, ops, [0, 1], [8]), [random_int8(rng, s), random_int8(rng, (8,))])
