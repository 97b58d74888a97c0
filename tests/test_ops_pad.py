"""PAD and PADV2: numpy reference and C kernel vs TFLM."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microtile.errors import UnsupportedOperatorError
from microtile.ops import kernel_for

from op_harness import check_against_tflm, log_uniform, one_op_graph, quant, random_int8, tensor

SETTINGS = settings(max_examples=int(os.environ.get("MT_OPS_EXAMPLES", 30)), deadline=None,
                    derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def pad_graph(rng, shape, paddings, *, v2_value=None, opcode="PAD"):
    q = quant(float(log_uniform(rng, 1e-3, 0.5)), int(rng.integers(-128, 128)))
    paddings = np.asarray(paddings, dtype=np.int32).reshape(-1, 2)
    out_shape = tuple(int(s + a + b) for s, (a, b) in zip(shape, paddings))
    tensors = [
        tensor(0, "input", shape, q=q),
        tensor(1, "paddings", paddings.shape, "int32", data=paddings),
        tensor(2, "output", out_shape, q=q),
    ]
    inputs = [0, 1]
    if v2_value is not None:
        tensors.append(tensor(3, "constant_values", (1,), q=q, data=np.array([v2_value])))
        inputs.append(3)
    return one_op_graph(opcode if v2_value is None else "PADV2", tensors, inputs, [2], {})


@SETTINGS
@given(dims=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data(), v2=st.booleans(),
       lead1=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_pad_matches_tflm(dims, data, v2, lead1, seed):
    rng = np.random.default_rng(seed)
    if lead1 and len(dims) > 1:
        dims = [1] + dims[1:]  # batch 1 so the C kernel runs as well
    pads = data.draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=len(dims),
                              max_size=len(dims)))
    if lead1 and len(dims) > 1:
        pads[0] = (0, 0)
    graph = pad_graph(rng, tuple(dims), pads, v2_value=int(rng.integers(-128, 128)) if v2 else None)
    (out,) = check_against_tflm(graph, [random_int8(rng, tuple(dims))])
    assert out.shape == tuple(d + a + b for d, (a, b) in zip(dims, pads))


def test_pad_image_style_fills_with_output_zero_point():
    rng = np.random.default_rng(10)
    graph = pad_graph(rng, (1, 5, 4, 3), [(0, 0), (1, 2), (2, 1), (0, 0)])
    (out,) = check_against_tflm(graph, [random_int8(rng, (1, 5, 4, 3))])
    assert (out[:, 0] == graph.tensor(2).zero_point).all()


def test_padv2_without_constant_values_uses_zero_point():
    rng = np.random.default_rng(11)
    graph = pad_graph(rng, (1, 3, 3, 2), [(0, 0), (1, 1), (1, 1), (0, 0)], opcode="PADV2")
    check_against_tflm(graph, [random_int8(rng, (1, 3, 3, 2))])


def test_pad_rejects_bad_variants():
    rng = np.random.default_rng(0)
    graph = pad_graph(rng, (1, 3, 3, 2), [(0, 0), (1, 1), (1, 1), (0, 0)])
    op = graph.operators[0]
    graph.tensors[2].quant = quant(1.0, 0)
    with pytest.raises(UnsupportedOperatorError, match="quantization differ"):
        kernel_for(op).check(op, graph)
    graph = pad_graph(rng, (1, 3, 3, 2), [(0, 0), (1, 1), (1, 1), (0, 0)])
    graph.tensors[1].data = None
    with pytest.raises(UnsupportedOperatorError, match="paddings are not a constant tensor"):
        kernel_for(op).check(op, graph)
    graph = pad_graph(rng, (1, 1, 3, 3, 2), [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
    with pytest.raises(UnsupportedOperatorError, match="input rank 5"):
        kernel_for(op).check(op, graph)
    graph = pad_graph(rng, (1, 3, 3, 2), [(0, 0), (1, 1), (1, 1), (0, 0)], v2_value=3)
    graph.tensors[3].quant = quant(0.5, 1)
    with pytest.raises(UnsupportedOperatorError, match="constant_values quantization"):
        kernel_for(graph.operators[0]).check(graph.operators[0], graph)
