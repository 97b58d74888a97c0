"""ADD / MUL int8: numpy reference and C kernel bit-exact with TFLM, including
broadcasting, random quantisation and fused activations."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from op_harness import check_against_tflm, one_op_graph, qtensor, quant, random_int8

from microtile.errors import UnsupportedOperatorError
from microtile.importer.ir import Tensor
from microtile.ops import kernel_for
from microtile.ops.elementwise import broadcast_strides

ACTIVATIONS = ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]
scales = st.floats(-3.5, 0.5).map(lambda e: float(np.float32(10.0 ** e)))
zero_points = st.integers(-128, 127)


@st.composite
def broadcast_shapes(draw, max_rank: int = 5):
    """(shape1, shape2, out_shape): same shapes, per-dimension broadcasting either
    way, and lower-rank operands."""
    rank = draw(st.integers(1, max_rank))
    out = tuple(draw(st.lists(st.integers(1, 7), min_size=rank, max_size=rank)))
    if rank >= 2:
        out = (1,) + out[1:]  # the compiler runs batch 1
    kind = draw(st.sampled_from(["same", "bcast", "bcast"]))
    if kind == "same":
        return out, out, out

    def operand():
        dims = tuple(d if draw(st.booleans()) else 1 for d in out)
        drop = draw(st.integers(0, rank - 1))
        if all(x == 1 for x in dims[:drop]):
            dims = dims[drop:]  # lower rank: leading dims broadcast implicitly
        return dims

    s1, s2 = operand(), operand()
    # the broadcast must reproduce `out`: each output dim comes from one operand
    full1 = (1,) * (rank - len(s1)) + s1
    full2 = (1,) * (rank - len(s2)) + s2
    s1 = tuple(out[i] if full1[i] == 1 and full2[i] == 1 and out[i] > 1 else full1[i]
               for i in range(rank))[rank - len(s1):] if len(s1) else s1
    full1 = (1,) * (rank - len(s1)) + s1
    fixed = tuple(out[i] if full1[i] == 1 and full2[i] == 1 and out[i] > 1 else full2[i] for i in range(rank))
    s2 = fixed[rank - len(s2):] if len(s2) else s2
    if tuple(np.broadcast_shapes(s1, s2)) != out:
        return out, out, out
    # a lower-rank operand with a leading dim > 1 would look like batch > 1
    s1, s2 = ((1,) + s if len(s) >= 2 and s[0] > 1 else s for s in (s1, s2))
    return s1, s2, out


def binary_graph(opcode, s1, s2, out, q1, q2, qo, act="NONE"):
    tensors = [qtensor(0, s1, *q1), qtensor(1, s2, *q2), qtensor(2, out, *qo)]
    return one_op_graph(opcode, tensors, [0, 1], [2], {"fused_activation_function": act})


def _inputs(rng, s1, s2):
    return [random_int8(rng, s1), random_int8(rng, s2)]


def _output_scale(data, typical: float) -> float:
    """Mostly near the typical output scale (so outputs do not all saturate), sometimes anywhere."""
    if data.draw(st.booleans()):
        return float(np.float32(typical * 10.0 ** data.draw(st.floats(-1.0, 1.0))))
    return data.draw(scales)


@seed(2024)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), shapes=broadcast_shapes(), s1=scales, s2=scales,
       z1=zero_points, z2=zero_points, zo=zero_points, act=st.sampled_from(ACTIVATIONS))
def test_add_matches_tflm(data, shapes, s1, s2, z1, z2, zo, act):
    a, b, out = shapes
    so = _output_scale(data, 2 * max(s1, s2))
    graph = binary_graph("ADD", a, b, out, (s1, z1), (s2, z2), (so, zo), act)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    check_against_tflm(graph, _inputs(rng, a, b))


@seed(77)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), shapes=broadcast_shapes(), s1=scales, s2=scales,
       z1=zero_points, z2=zero_points, zo=zero_points, act=st.sampled_from(ACTIVATIONS))
def test_mul_matches_tflm(data, shapes, s1, s2, z1, z2, zo, act):
    a, b, out = shapes
    so = _output_scale(data, s1 * s2 * 128 * 64)
    if data.draw(st.booleans()):
        so = float(np.float32(s1 * s2 * 10.0 ** data.draw(st.floats(-3.0, 0.0))))  # s1*s2/so > 1: left shifts
    graph = binary_graph("MUL", a, b, out, (s1, z1), (s2, z2), (so, zo), act)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    check_against_tflm(graph, _inputs(rng, a, b))


@pytest.mark.parametrize("opcode", ["ADD", "MUL"])
def test_random_sweep(opcode):
    """Seeded sweep with realistic tensor sizes and output scales that spread the
    outputs over the int8 range (hypothesis above favours tiny edge cases)."""
    rng = np.random.default_rng(314 if opcode == "ADD" else 271)
    for _ in range(25):
        rank = int(rng.integers(1, 6))
        out = tuple(int(d) for d in rng.integers(1, 7, size=rank - 1)) + (int(rng.integers(8, 33)),)
        out = (1,) + out[1:] if rank >= 2 else out
        s1 = tuple(d if rng.random() < 0.7 else 1 for d in out)
        s2 = tuple(d if rng.random() < 0.7 else 1 for d in out)
        s2 = s2[int(rng.integers(0, rank)):] if rng.random() < 0.3 else s2  # lower rank operand
        s2 = (1,) + s2 if len(s2) >= 2 and s2[0] > 1 else s2
        out = tuple(np.broadcast_shapes(s1, s2))
        sc1, sc2 = (float(np.float32(10.0 ** rng.uniform(-3, 0))) for _ in range(2))
        act = ["NONE", "NONE", "RELU", "RELU6", "RELU_N1_TO_1"][int(rng.integers(0, 5))]
        if act in ("RELU6", "RELU_N1_TO_1"):
            so = (6.0 if act == "RELU6" else 2.0) / 255 * 10.0 ** rng.uniform(-0.3, 0.3)
        else:
            so = (sc1 + sc2 if opcode == "ADD" else sc1 * sc2 * 64) * 10.0 ** rng.uniform(-0.3, 0.3)
        z1, z2, zo = (int(z) for z in rng.integers(-128, 128, size=3))
        if act != "NONE":
            zo = int(rng.integers(-128, -100))  # realistic for clamped outputs
        graph = binary_graph(opcode, s1, s2, out, (sc1, z1), (sc2, z2), (float(np.float32(so)), zo), act)
        check_against_tflm(graph, _inputs(rng, s1, s2))


@pytest.mark.parametrize("opcode", ["ADD", "MUL"])
@pytest.mark.parametrize("s1,s2,out", [
    ((1, 8, 8, 16), (16,), (1, 8, 8, 16)),          # per-channel vector
    ((1, 1, 1, 16), (1, 8, 8, 16), (1, 8, 8, 16)),  # squeeze-excite style
    ((1, 8, 1, 4), (1, 1, 6, 1), (1, 8, 6, 4)),     # both operands broadcast
    ((1, 3, 1, 5, 1), (1, 4, 1, 6), (1, 3, 4, 5, 6)),  # 5-D, mixed rank
    ((), (1, 3), (1, 3)),                           # scalar operand
    ((1, 1, 2, 1, 2, 1), (1, 2, 1, 2, 1, 2), (1, 2, 2, 2, 2, 2)),  # 6-D alternating
])
def test_broadcast_patterns(opcode, s1, s2, out):
    rng = np.random.default_rng(5)
    graph = binary_graph(opcode, s1, s2, out, (0.04, -3), (0.015, 9), (0.05 if opcode == "ADD" else 0.01, 4), "RELU")
    check_against_tflm(graph, _inputs(rng, s1, s2))


def test_extreme_quantisation():
    """Identical and very different input scales, zero points at the int8 ends."""
    rng = np.random.default_rng(11)
    shape = (1, 4, 4, 8)
    for q1, q2, qo in [((1.0, -128), (1.0, 127), (2.0, 0)), ((1e-4, 127), (0.9, -128), (0.01, -128)),
                       ((0.02, 0), (0.02, 0), (0.02, 0)), ((2.0**-10, 5), (2.0**-3, -5), (2.0**-2, 1))]:
        for opcode in ("ADD", "MUL"):
            graph = binary_graph(opcode, shape, shape, shape, q1, q2, qo, "NONE")
            check_against_tflm(graph, _inputs(rng, shape, shape))


def test_broadcast_strides_merges_contiguous_dims():
    dims, s1, s2 = broadcast_strides((1, 8, 8, 16), (16,), (1, 8, 8, 16))
    assert dims[-2:] == [64, 16] and s1[-2:] == [16, 1] and s2[-2:] == [0, 1]
    dims, s1, s2 = broadcast_strides((2, 3), (2, 3), (2, 3))
    assert dims[-1] == 6 and dims[:-1] == [1] * 5


# ------------------------------------------------------------ unsupported variants


def _expect_unsupported(graph, match):
    op = graph.operators[0]
    with pytest.raises(UnsupportedOperatorError, match=match):
        kernel_for(op).check(op, graph)


def test_rejects_int16():
    shape = (1, 4)
    tensors = [qtensor(0, shape, 0.1, 0, "int16"), qtensor(1, shape, 0.1, 0, "int16"),
               qtensor(2, shape, 0.1, 0, "int16")]
    _expect_unsupported(one_op_graph("ADD", tensors, [0, 1], [2], {"fused_activation_function": "NONE"}),
                        "int16.*int8 activations")


def test_rejects_float():
    shape = (1, 4)
    tensors = [Tensor(i, f"f{i}", shape, "float32") for i in range(3)]
    _expect_unsupported(one_op_graph("MUL", tensors, [0, 1], [2], {"fused_activation_function": "NONE"}),
                        "float32")


def test_rejects_unknown_activation():
    shape = (1, 4)
    _expect_unsupported(binary_graph("ADD", shape, shape, shape, (0.1, 0), (0.1, 0), (0.1, 0), "TANH"),
                        "fused activation TANH")


def test_rejects_bad_output_shape_and_rank():
    _expect_unsupported(binary_graph("ADD", (2, 3), (3,), (3, 3), (0.1, 0), (0.1, 0), (0.1, 0)),
                        "not the broadcast shape")
    _expect_unsupported(binary_graph("MUL", (2, 3), (4,), (2, 4), (0.1, 0), (0.1, 0), (0.1, 0)),
                        "do not broadcast")
    s7 = (1, 1, 1, 1, 1, 2, 2)
    _expect_unsupported(binary_graph("MUL", s7, s7, s7, (0.1, 0), (0.1, 0), (0.1, 0)), "rank 7")


def test_rejects_per_channel_quantisation():
    graph = binary_graph("ADD", (1, 2), (1, 2), (1, 2), (0.1, 0), (0.1, 0), (0.1, 0))
    graph.tensors[1].quant = quant(0.1, 0)
    graph.tensors[1].quant.scale = np.array([0.1, 0.2], np.float32)
    graph.tensors[1].quant.zero_point = np.array([0, 0], np.int64)
    _expect_unsupported(graph, "per-tensor")


def test_rejects_add_output_scale_tflm_cannot_represent():
    # 2*max(in)/(2^20*out) >= 1 aborts TFLM's QuantizeMultiplierSmallerThanOneExp
    _expect_unsupported(binary_graph("ADD", (4,), (4,), (4,), (1.0, 0), (1.0, 0), (1e-6, 0)),
                        "output scale .* too small")


def test_macs_count_output_elements():
    for opcode in ("ADD", "MUL"):
        graph = binary_graph(opcode, (1, 4, 4, 8), (8,), (1, 4, 4, 8), (0.1, 0), (0.1, 0), (0.1, 0))
        assert kernel_for(graph.operators[0]).macs(graph.operators[0], graph) == 128
