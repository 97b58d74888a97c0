"""AVERAGE_POOL_2D, MAX_POOL_2D, MEAN: numpy reference and C kernel vs TFLM."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microtile.errors import UnsupportedOperatorError
from microtile.ops import kernel_for
from microtile.ops.conv import out_size_and_padding

from op_harness import check_against_tflm, log_uniform, one_op_graph, quant, random_int8, tensor

ACTS = st.sampled_from(["NONE", "RELU", "RELU6", "RELU_N1_TO_1"])
SETTINGS = settings(max_examples=int(os.environ.get("MT_OPS_EXAMPLES", 25)), deadline=None,
                    derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def pool_graph(rng, opcode, *, n=1, h, w, c, kh, kw, sh=1, sw=1, padding="SAME", act="NONE"):
    q = quant(float(log_uniform(rng, 1e-3, 0.5)), int(rng.integers(-128, 128)))
    oh, _ = out_size_and_padding(h, kh, sh, padding)
    ow, _ = out_size_and_padding(w, kw, sw, padding)
    tensors = [tensor(0, "input", (n, h, w, c), q=q), tensor(1, "output", (n, oh, ow, c), q=q)]
    options = {"padding": padding, "stride_w": sw, "stride_h": sh, "filter_width": kw, "filter_height": kh,
               "fused_activation_function": act}
    return one_op_graph(opcode, tensors, [0], [1], options)


pool_geometry = st.fixed_dictionaries({
    "h": st.integers(1, 12), "w": st.integers(1, 12), "c": st.integers(1, 5), "kh": st.integers(1, 5),
    "kw": st.integers(1, 5), "sh": st.integers(1, 3), "sw": st.integers(1, 3),
    "padding": st.sampled_from(["SAME", "VALID"]),
})


def _fit(g: dict) -> dict:
    if g["padding"] == "VALID":
        g = dict(g, kh=min(g["kh"], g["h"]), kw=min(g["kw"], g["w"]))
    return g


@SETTINGS
@given(g=pool_geometry, act=ACTS, opcode=st.sampled_from(["AVERAGE_POOL_2D", "MAX_POOL_2D"]),
       seed=st.integers(0, 2**32 - 1))
def test_pool_matches_tflm(g, act, opcode, seed):
    rng = np.random.default_rng(seed)
    graph = pool_graph(rng, opcode, act=act, **_fit(g))
    check_against_tflm(graph, [random_int8(rng, graph.tensor(0).shape)])


@pytest.mark.parametrize("opcode", ["AVERAGE_POOL_2D", "MAX_POOL_2D"])
def test_global_pool_like_mlperf(opcode):
    """The MLPerf Tiny tails: global 25x5 (kws) and 8x8 (resnet) average pooling."""
    rng = np.random.default_rng(7)
    for h, w, c in ((25, 5, 64), (8, 8, 64)):
        graph = pool_graph(rng, opcode, h=h, w=w, c=c, kh=h, kw=w, padding="VALID")
        (out,) = check_against_tflm(graph, [random_int8(rng, (1, h, w, c))])
        assert out.shape == (1, 1, 1, c)


def test_average_pool_rounds_half_away_from_zero():
    """Hand-made windows whose sums sit exactly on .5 after division."""
    q = quant(0.1, 0)
    graph = one_op_graph("AVERAGE_POOL_2D", [tensor(0, "input", (1, 1, 4, 1), q=q), tensor(1, "output", (1, 1, 2, 1), q=q)],
                         [0], [1], {"padding": "VALID", "stride_w": 2, "stride_h": 1, "filter_width": 2,
                                    "filter_height": 1, "fused_activation_function": "NONE"})
    (out,) = check_against_tflm(graph, [np.array([1, 2, -1, -2], dtype=np.int8).reshape(1, 1, 4, 1)])
    assert out.reshape(-1).tolist() == [2, -2]  # 1.5 -> 2, -1.5 -> -2


def test_pool_batch2_reference():
    rng = np.random.default_rng(8)
    graph = pool_graph(rng, "AVERAGE_POOL_2D", n=2, h=6, w=5, c=3, kh=3, kw=2, sh=2, sw=2)
    check_against_tflm(graph, [random_int8(rng, (2, 6, 5, 3))])


def test_pool_rejects_requantisation():
    graph = pool_graph(np.random.default_rng(0), "AVERAGE_POOL_2D", h=4, w=4, c=2, kh=2, kw=2)
    graph.tensors[1].quant = quant(0.5, 3)
    with pytest.raises(UnsupportedOperatorError, match="input and output quantization differ"):
        kernel_for(graph.operators[0]).check(graph.operators[0], graph)


def test_pool_rejects_int16_and_tanh():
    graph = pool_graph(np.random.default_rng(0), "MAX_POOL_2D", h=4, w=4, c=2, kh=2, kw=2)
    graph.operators[0].options["fused_activation_function"] = "TANH"
    with pytest.raises(UnsupportedOperatorError, match="fused activation TANH"):
        kernel_for(graph.operators[0]).check(graph.operators[0], graph)
    graph.operators[0].options["fused_activation_function"] = "NONE"
    graph.tensors[0].dtype = graph.tensors[1].dtype = "int16"
    with pytest.raises(UnsupportedOperatorError, match="is int16"):
        kernel_for(graph.operators[0]).check(graph.operators[0], graph)


# ---------------------------------------------------------------- MEAN

def mean_graph(rng, shape, axes, keep_dims, same_quant):
    s_in, zp_in = float(log_uniform(rng, 1e-3, 0.5)), int(rng.integers(-128, 128))
    if same_quant:
        s_out, zp_out = s_in, zp_in
    else:
        # Centre the output on the mean of uniform int8 data (about 0), so the
        # requantised values spread instead of saturating.
        s_out = s_in * float(2.0 ** rng.uniform(-2, 2))
        zp_out = int(np.clip(round(zp_in * s_in / s_out) + int(rng.integers(-10, 11)), -128, 127))
    rank = len(shape)
    resolved = sorted({a % rank for a in axes})
    out_shape = tuple(1 if i in resolved else s for i, s in enumerate(shape)) if keep_dims else \
        tuple(s for i, s in enumerate(shape) if i not in resolved)
    tensors = [
        tensor(0, "input", shape, q=quant(s_in, zp_in)),
        tensor(1, "axes", (len(axes),), "int32", data=np.asarray(axes)),
        tensor(2, "output", out_shape, q=quant(s_out, zp_out)),
    ]
    return one_op_graph("MEAN", tensors, [0, 1], [2], {"keep_dims": keep_dims})


@SETTINGS
@given(dims=st.lists(st.integers(1, 7), min_size=1, max_size=4), keep_dims=st.booleans(),
       same_quant=st.booleans(), lead1=st.booleans(), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_mean_matches_tflm(dims, keep_dims, same_quant, lead1, data, seed):
    # A leading 1 makes the graph batch 1, so the C kernel runs too (codegen is batch 1).
    rank = len(dims)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=4))
    rng = np.random.default_rng(seed)
    shape = tuple([1] + dims[1:]) if (lead1 or rank == 4) and rank > 1 else tuple(dims)
    graph = mean_graph(rng, shape, axes, keep_dims, same_quant)
    check_against_tflm(graph, [random_int8(rng, graph.tensor(0).shape)])


@pytest.mark.parametrize("keep_dims", [True, False])
@pytest.mark.parametrize("same_quant", [True, False])
def test_mean_global_average_pooling(keep_dims, same_quant):
    """The common Keras GlobalAveragePooling2D lowering: MEAN over H, W of NHWC."""
    rng = np.random.default_rng(9)
    graph = mean_graph(rng, (1, 7, 5, 24), [1, 2], keep_dims, same_quant)
    (out,) = check_against_tflm(graph, [random_int8(rng, (1, 7, 5, 24))])
    assert out.size == 24
    assert len(np.unique(out)) > 3  # not saturated: the comparison means something


def test_mean_all_axes_to_a_scalar():
    rng = np.random.default_rng(12)
    graph = mean_graph(rng, (1, 4, 3, 5), [0, 1, 2, 3], False, False)
    assert check_against_tflm(graph, [random_int8(rng, (1, 4, 3, 5))])[0].shape == ()


def test_mean_rejects_bad_variants():
    graph = mean_graph(np.random.default_rng(0), (1, 3, 3, 4), [1, 4], True, True)
    with pytest.raises(UnsupportedOperatorError, match=r"axes \[1, 4\] out of range"):
        kernel_for(graph.operators[0]).check(graph.operators[0], graph)
    graph = mean_graph(np.random.default_rng(0), (1, 2, 3, 3, 4), [1, 2], True, True)
    with pytest.raises(UnsupportedOperatorError, match="input rank 5"):
        kernel_for(graph.operators[0]).check(graph.operators[0], graph)
    graph = mean_graph(np.random.default_rng(0), (1, 3, 3, 4), [1, 2], True, True)
    graph.tensors[1].data = None
    with pytest.raises(UnsupportedOperatorError, match="axes are not a constant tensor"):
        kernel_for(graph.operators[0]).check(graph.operators[0], graph)
