"""CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED: numpy reference and C kernel vs TFLM.

MT_OPS_EXAMPLES=<n> raises the number of random cases per property (default 25-30)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microtile.errors import UnsupportedOperatorError
from microtile.check.fuzz_ops import fc_graph_of
from microtile.build.native import NativeModel
from microtile.ops import kernel_for
from microtile.ops.conv import out_size_and_padding
from microtile.check.reference import run_reference

from op_harness import check_against_tflm, log_uniform, one_op_graph, quant, random_int8, tensor

ACTS = st.sampled_from(["NONE", "RELU", "RELU6", "RELU_N1_TO_1"])
SETTINGS = settings(max_examples=int(os.environ.get("MT_OPS_EXAMPLES", 25)), deadline=None,
                    derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _scales(rng, depth: int, extreme: bool):
    """(input scale, input zp, output scale factor) with the output scale chosen
    so outputs spread over the int8 range; `extreme` pushes the multiplier far
    above or below 1 (large left / right shifts)."""
    s_in = float(log_uniform(rng, 1e-3, 1.0))
    zp_in = int(rng.integers(-128, 128))
    spread = float(2.0 ** rng.uniform(-14, 10)) if extreme else float(2.0 ** rng.uniform(-3, 3))
    return s_in, zp_in, spread * np.sqrt(depth) * 40.0


def conv_graph(rng, *, n=1, h, w, c, oc, kh, kw, sh=1, sw=1, padding="SAME", act="NONE",
               per_channel=True, bias=True, depthwise=False, extreme=False, out_zp=None):
    dm = oc // c if depthwise else 1
    s_in, zp_in, spread = _scales(rng, kh * kw * (1 if depthwise else c), extreme)
    f_scales = log_uniform(rng, 1e-4, 5e-2, oc if per_channel else 1).astype(np.float32)
    f_shape = (1, kh, kw, oc) if depthwise else (oc, kh, kw, c)
    axis = 3 if depthwise else 0
    weights = random_int8(rng, f_shape)
    s_out = float(s_in * float(np.mean(f_scales)) * spread)
    oh, _ = out_size_and_padding(h, kh, sh, padding)
    ow, _ = out_size_and_padding(w, kw, sw, padding)
    zp_out = int(rng.integers(-128, 128)) if out_zp is None else out_zp
    b_scales = (np.float32(s_in) * f_scales).astype(np.float32)
    tensors = [
        tensor(0, "input", (n, h, w, c), q=quant(s_in, zp_in)),
        tensor(1, "filter", f_shape, q=quant(f_scales, np.zeros(f_scales.size), axis), data=weights),
        tensor(2, "bias", (oc,), "int32", q=quant(b_scales, np.zeros(b_scales.size)),
               data=rng.integers(-(1 << 16), 1 << 16, size=oc)),
        tensor(3, "output", (n, oh, ow, oc), q=quant(s_out, zp_out)),
    ]
    options = {"padding": padding, "stride_w": sw, "stride_h": sh, "fused_activation_function": act,
               "dilation_w_factor": 1, "dilation_h_factor": 1}
    if depthwise:
        options["depth_multiplier"] = dm
    inputs = [0, 1, 2] if bias else [0, 1, -1]
    return one_op_graph("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", tensors, inputs, [3], options)


geometry = st.fixed_dictionaries({
    "h": st.integers(1, 10), "w": st.integers(1, 10), "kh": st.integers(1, 5), "kw": st.integers(1, 5),
    "sh": st.integers(1, 3), "sw": st.integers(1, 3), "padding": st.sampled_from(["SAME", "VALID"]),
})


def _fix_valid(g: dict) -> dict:
    if g["padding"] == "VALID":  # VALID needs the filter to fit
        g = dict(g, kh=min(g["kh"], g["h"]), kw=min(g["kw"], g["w"]))
    return g


@SETTINGS
@given(g=geometry, c=st.integers(1, 6), oc=st.integers(1, 6), act=ACTS, per_channel=st.booleans(),
       bias=st.booleans(), extreme=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_conv2d_matches_tflm(g, c, oc, act, per_channel, bias, extreme, seed):
    rng = np.random.default_rng(seed)
    graph = conv_graph(rng, c=c, oc=oc, act=act, per_channel=per_channel, bias=bias, extreme=extreme,
                       **_fix_valid(g))
    check_against_tflm(graph, [random_int8(rng, graph.tensor(0).shape)])


@SETTINGS
@given(g=geometry, c=st.integers(1, 6), dm=st.integers(1, 3), act=ACTS, per_channel=st.booleans(),
       extreme=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_depthwise_conv2d_matches_tflm(g, c, dm, act, per_channel, extreme, seed):
    # Always with bias: TFLM's depthwise Prepare crashes (null deref) without one.
    rng = np.random.default_rng(seed)
    graph = conv_graph(rng, c=c, oc=c * dm, act=act, per_channel=per_channel, extreme=extreme,
                       depthwise=True, **_fix_valid(g))
    check_against_tflm(graph, [random_int8(rng, graph.tensor(0).shape)])


def test_conv2d_kws_first_layer():
    """The DS-CNN first layer: 49x10x1 MFCC input, 10x4 filter, stride 2, SAME."""
    rng = np.random.default_rng(1)
    graph = conv_graph(rng, h=49, w=10, c=1, oc=16, kh=10, kw=4, sh=2, sw=2, act="RELU")
    (out,) = check_against_tflm(graph, [random_int8(rng, (1, 49, 10, 1))])
    assert out.shape == (1, 25, 5, 16)
    assert len(np.unique(out)) > 10  # the scales give a spread of values, not a saturated block


def test_conv2d_batch2_and_larger_channels():
    rng = np.random.default_rng(2)
    graph = conv_graph(rng, n=2, h=7, w=6, c=19, oc=9, kh=3, kw=3, sh=2, sw=1, act="RELU6")
    check_against_tflm(graph, [random_int8(rng, (2, 7, 6, 19))])


def test_depthwise_mobilenet_like_stride2():
    rng = np.random.default_rng(3)
    graph = conv_graph(rng, h=12, w=12, c=32, oc=32, kh=3, kw=3, sh=2, sw=2, act="RELU6", depthwise=True)
    check_against_tflm(graph, [random_int8(rng, (1, 12, 12, 32))])


# ---------------------------------------------------------------- FULLY_CONNECTED

def fc_graph(rng, *, batches=1, depth, oc, act="NONE", per_channel=False, bias=True, extreme=False,
             keep_num_dims=False, in_shape=None, w_zp=0):
    s_in, zp_in, spread = _scales(rng, depth, extreme)
    f_scales = log_uniform(rng, 1e-4, 5e-2, oc if per_channel else 1).astype(np.float32)
    s_out = float(s_in * float(np.mean(f_scales)) * spread)
    in_shape = in_shape or (batches, depth)
    out_shape = tuple(in_shape[:-1]) + (oc,) if keep_num_dims else (batches, oc)
    return fc_graph_of(rng, in_shape, out_shape, (s_in, zp_in), f_scales, w_zp,
                       (s_out, int(rng.integers(-128, 128))), act, bias, keep_num_dims)


@SETTINGS
@given(batches=st.integers(1, 3), depth=st.integers(1, 64), oc=st.integers(1, 16), act=ACTS,
       per_channel=st.booleans(), bias=st.booleans(), extreme=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fully_connected_matches_tflm(batches, depth, oc, act, per_channel, bias, extreme, seed):
    rng = np.random.default_rng(seed)
    graph = fc_graph(rng, batches=batches, depth=depth, oc=oc, act=act, per_channel=per_channel, bias=bias,
                     extreme=extreme)
    check_against_tflm(graph, [random_int8(rng, graph.tensor(0).shape)])


def test_fully_connected_flattens_4d_input():
    rng = np.random.default_rng(4)
    graph = fc_graph(rng, depth=64, oc=12, in_shape=(1, 1, 1, 64))
    check_against_tflm(graph, [random_int8(rng, (1, 1, 1, 64))])


def test_fully_connected_keep_num_dims():
    rng = np.random.default_rng(5)
    graph = fc_graph(rng, depth=8, oc=5, in_shape=(1, 3, 8), keep_num_dims=True, act="RELU")
    (out,) = check_against_tflm(graph, [random_int8(rng, (1, 3, 8))])
    assert out.shape == (1, 3, 5)


@pytest.mark.parametrize("batches", [1, 2])  # batch 1 also runs the C kernel
def test_fully_connected_weights_zero_point(batches):
    """Per-tensor weights with a zero point: TFLM's kernel applies it (weights_offset)."""
    rng = np.random.default_rng(6)
    graph = fc_graph(rng, batches=batches, depth=20, oc=7, w_zp=3)
    check_against_tflm(graph, [random_int8(rng, (batches, 20))])


def test_depthwise_without_bias_equals_zero_bias():
    """TFLM's depthwise Prepare dereferences a missing bias, so the no-bias variant
    is checked against TFLM running the same layer with an all-zero bias."""
    rng = np.random.default_rng(13)
    with_bias = conv_graph(rng, h=6, w=5, c=3, oc=6, kh=3, kw=3, depthwise=True, act="RELU")
    with_bias.tensors[2].data = np.zeros(6, dtype=np.int32)
    x = random_int8(rng, (1, 6, 5, 3))
    (expected,) = check_against_tflm(with_bias, [x])
    no_bias = conv_graph(np.random.default_rng(13), h=6, w=5, c=3, oc=6, kh=3, kw=3, depthwise=True,
                         act="RELU", bias=False)
    op = no_bias.operators[0]
    kernel_for(op).check(op, no_bias)
    np.testing.assert_array_equal(run_reference(no_bias, [x])[0], expected)
    np.testing.assert_array_equal(NativeModel.build(no_bias).run([x])[0], expected)


# ---------------------------------------------------------------- unsupported variants

def _expect_unsupported(graph, fragment: str):
    op = graph.operators[0]
    with pytest.raises(UnsupportedOperatorError, match=fragment):
        kernel_for(op).check(op, graph)


def test_conv_rejects_dilation():
    graph = conv_graph(np.random.default_rng(0), h=8, w=8, c=2, oc=2, kh=3, kw=3)
    graph.operators[0].options["dilation_h_factor"] = 2
    _expect_unsupported(graph, "dilation 2x1")


def test_depthwise_rejects_dilation():
    graph = conv_graph(np.random.default_rng(0), h=8, w=8, c=2, oc=2, kh=3, kw=3, depthwise=True)
    graph.operators[0].options["dilation_w_factor"] = 2
    _expect_unsupported(graph, "dilation 1x2")


def test_conv_rejects_int16_activations():
    graph = conv_graph(np.random.default_rng(0), h=4, w=4, c=2, oc=2, kh=1, kw=1)
    graph.tensors[0].dtype = "int16"
    _expect_unsupported(graph, "input input is int16")


def test_conv_rejects_grouped_convolution():
    graph = conv_graph(np.random.default_rng(0), h=4, w=4, c=4, oc=2, kh=1, kw=1)
    graph.tensors[1].shape = (2, 1, 1, 2)
    graph.tensors[1].data = graph.tensors[1].data[..., :2]
    _expect_unsupported(graph, "grouped convolution")


def test_conv_rejects_unknown_activation():
    graph = conv_graph(np.random.default_rng(0), h=4, w=4, c=2, oc=2, kh=1, kw=1)
    graph.operators[0].options["fused_activation_function"] = "TANH"
    _expect_unsupported(graph, "fused activation TANH")


def test_depthwise_rejects_inconsistent_multiplier():
    graph = conv_graph(np.random.default_rng(0), h=4, w=4, c=2, oc=4, kh=3, kw=3, depthwise=True)
    graph.operators[0].options["depth_multiplier"] = 1
    _expect_unsupported(graph, "depth_multiplier option 1")


def test_fully_connected_rejects_shuffled_weights():
    graph = fc_graph(np.random.default_rng(0), depth=16, oc=4)
    graph.operators[0].options["weights_format"] = "SHUFFLED4x16INT8"
    _expect_unsupported(graph, "weights_format SHUFFLED4x16INT8")


def test_fully_connected_rejects_per_channel_keep_num_dims():
    graph = fc_graph(np.random.default_rng(0), depth=8, oc=4, in_shape=(1, 3, 8), keep_num_dims=True,
                     per_channel=True)
    _expect_unsupported(graph, "per-channel weights with a rank-3 output")


def test_fully_connected_rejects_float():
    graph = fc_graph(np.random.default_rng(0), depth=8, oc=4)
    for t in graph.tensors:
        if t.dtype == "int8":
            t.dtype = "float32"
    _expect_unsupported(graph, "is float32")


@pytest.mark.parametrize("opcode", ["CONV_2D", "DEPTHWISE_CONV_2D"])
def test_refuses_activation_bounds_tflm_cannot_quantise(opcode):
    """Found by microtile.check.fuzz_ops: RELU6 over an output scale of ~1e-9 makes 6 / scale
    overflow int32 in TFLM's CalculateActivationRangeQuantized (Prepare fails); the
    kernels must refuse the model as TFLM does, not run it."""
    from microtile.check.oracle import TflmOracle
    from microtile.importer.tflite_format import write_tflite

    graph = conv_graph(np.random.default_rng(0), h=4, w=4, c=2, oc=2, kh=3, kw=3, act="RELU6",
                       depthwise=opcode == "DEPTHWISE_CONV_2D")
    graph.tensors[3].quant = quant(1e-9, 0)
    _expect_unsupported(graph, "overflows int32")
    with pytest.raises(RuntimeError):
        TflmOracle(write_tflite(graph))([random_int8(np.random.default_rng(1), (1, 4, 4, 2))])
    graph.tensors[3].quant = quant(3e-9, 0)  # 6 / 3e-9 = 2e9 < 2^31: both accept
    op = graph.operators[0]
    kernel_for(op).check(op, graph)
