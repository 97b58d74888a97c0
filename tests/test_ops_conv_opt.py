"""Optimised CONV_2D / FULLY_CONNECTED kernels (firmware/kernels/mt_matmul_opt.c)
against TFLM: natively (portable C of the same kernels) on random shapes that hit
every remainder - channel counts not a multiple of the tile, reduction lengths not a
multiple of 4, padding at every border, stride 2, per-channel quantisation with
extreme shifts, every tile kernel (3x2, 4x1, 1x4), both weight formats (int8, int16 copies) and both requantisation
paths (fast SMMULR, exact 64-bit) - and a sample on QEMU with the DSP loops.

MT_OPS_EXAMPLES=<n> scales the number of random cases."""
from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microtile.passes import schedule
from microtile.build.native import NativeModel
from microtile.ops import kernel_for
from microtile.ops.conv import constant_channels, folded_bias, pack_weights, requant_table

from op_harness import random_int8, tflm
from test_ops_conv import conv_graph, fc_graph

SETTINGS = settings(max_examples=int(os.environ.get("MT_OPS_EXAMPLES", 25)), deadline=None,
                    derandomize=True, suppress_health_check=[HealthCheck.too_slow])
ACTS = st.sampled_from(["NONE", "RELU", "RELU6"])
WEIGHTS = st.sampled_from(["int8", "int16"])


def _inputs(graph, rng):
    return [random_int8(rng, graph.tensor(i).shape) for i in graph.inputs]


# Each check forces the next tile in turn (None: the cost model's), so every tile kernel
# meets every shape family (a tile the rows do not allow falls back to the model's).
_TILES = itertools.cycle([None, *schedule.TILES])


def _check(graph, rng, weights: str, runs: int = 2) -> None:
    schedule.FORCE_WEIGHTS = weights
    schedule.FORCE_TILE = next(_TILES)
    try:
        model = NativeModel.build(graph, kernels="optimized")
    finally:
        schedule.FORCE_WEIGHTS = None
        schedule.FORCE_TILE = None
    assert "mt_matmul_opt.h" in model.compiled.model_c, "the optimised kernel was not emitted"
    oracle = tflm(graph)
    for _ in range(runs):
        x = _inputs(graph, rng)
        expected = oracle(x)[0]
        got = model.run(x)[0]
        diff = np.flatnonzero(expected.astype(np.int32) != got.astype(np.int32))
        assert diff.size == 0, (f"optimised kernel differs from TFLM at {diff.size} of {expected.size} values "
                                f"({weights} weights), first {diff[:5]}: tflm {expected.reshape(-1)[diff[:5]]} "
                                f"opt {got.reshape(-1)[diff[:5]]}")


@SETTINGS
@given(h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 9), oc=st.integers(1, 9),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 2), sw=st.integers(1, 2),
       padding=st.sampled_from(["SAME", "VALID"]), act=ACTS, per_channel=st.booleans(),
       extreme=st.booleans(), weights=WEIGHTS, seed=st.integers(0, 2**32 - 1))
def test_conv_opt_matches_tflm(h, w, c, oc, kh, kw, sh, sw, padding, act, per_channel, extreme, weights, seed):
    if padding == "VALID":
        kh, kw = min(kh, h), min(kw, w)
    rng = np.random.default_rng(seed)
    graph = conv_graph(rng, h=h, w=w, c=c, oc=oc, kh=kh, kw=kw, sh=sh, sw=sw, padding=padding, act=act,
                       per_channel=per_channel, extreme=extreme)
    _check(graph, rng, weights)


@SETTINGS
@given(depth=st.integers(1, 70), oc=st.integers(1, 13), batches=st.integers(1, 5), act=ACTS,
       per_channel=st.booleans(), bias=st.booleans(), extreme=st.booleans(), weights=WEIGHTS,
       seed=st.integers(0, 2**32 - 1))
def test_fully_connected_opt_matches_tflm(depth, oc, batches, act, per_channel, bias, extreme, weights, seed):
    rng = np.random.default_rng(seed)
    # batch 1 runs through codegen; 2-5 rows of a flattened 2-D input exercise the row tiles
    graph = fc_graph(rng, batches=batches, depth=depth, oc=oc, act=act, per_channel=per_channel, bias=bias,
                     extreme=extreme, in_shape=(1, batches, depth) if batches > 1 else None)
    _check(graph, rng, weights)


@pytest.mark.parametrize("weights", ["int8", "int16"])
def test_kws_first_layer_and_pointwise(weights):
    rng = np.random.default_rng(7)
    _check(conv_graph(rng, h=49, w=10, c=1, oc=64, kh=10, kw=4, sh=2, sw=2), rng, weights)
    _check(conv_graph(rng, h=5, w=5, c=64, oc=30, kh=1, kw=1), rng, weights)
    _check(conv_graph(rng, h=7, w=6, c=5, oc=7, kh=3, kw=3, sh=2, sw=2), rng, weights)
    # one word per filter row at the borders (mt_conv_row's shifted words): the row as
    # wide as a word, odd widths, both sides clipped, stride 1
    _check(conv_graph(rng, h=6, w=2, c=2, oc=5, kh=3, kw=2), rng, weights)
    _check(conv_graph(rng, h=5, w=7, c=1, oc=3, kh=2, kw=4), rng, weights)
    _check(conv_graph(rng, h=4, w=3, c=4, oc=2, kh=1, kw=1, sh=2, sw=2, padding="VALID"), rng, weights)
    # the RGB 3x3 first layer (IC, VWW): 7 words of constant shifts, rows of zp above and below
    _check(conv_graph(rng, h=9, w=8, c=3, oc=5, kh=3, kw=3), rng, weights)
    _check(conv_graph(rng, h=10, w=7, c=3, oc=4, kh=3, kw=3, sh=2, sw=2), rng, weights)


def test_exact_requantisation_path_with_huge_bias():
    """A bias near 2^30 defeats the SMMULR bound: the exact 64-bit path must run and agree."""
    rng = np.random.default_rng(3)
    graph = conv_graph(rng, h=5, w=5, c=3, oc=5, kh=3, kw=3)
    b = graph.tensor(2)
    b.data = np.array([(1 << 30) + 5, -(1 << 30), 7, -(1 << 29), 1 << 28], dtype=np.int32)
    w2d = graph.tensor(1).data.reshape(5, -1)
    _, fast = requant_table(w2d, b.data, np.full(5, 1 << 30), np.full(5, -3), 0, 0, 8)
    assert not fast
    for weights in ("int8", "int16"):
        _check(graph, rng, weights, runs=3)


def test_constant_channels_from_the_exact_accumulator_range():
    """A dead channel (tiny weights, a bias far out) outputs one value for every input;
    a channel whose range crosses the clamp, or whose sum could wrap int32, does not."""
    w = np.array([[1, -1, 1, 0], [100, -100, 100, 100], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=np.int8)
    bias = np.array([-(1 << 30), -(1 << 30) + 1000, (1 << 31) - 2, 5], dtype=np.int64)
    m, sh = np.full(4, 1 << 30), np.full(4, -3)  # x 1/16
    c = constant_channels(w, bias, m, sh, in_zp=0, out_zp=0, act=(-128, 127))
    # 0: -2^26 at both ends -> -128; 1: ends about -2^26 -> still -128 (10^5 of range
    # is nothing next to the bias); 2: bias + sum may pass 2^31 (TFLM wraps): not
    # constant; 3: zero weights: the bias alone, 5 / 16 -> 0
    assert list(c[[0, 1, 3]]) == [-128, -128, 0] and not -128 <= c[2] <= 127
    # a RELU-style floor turns a channel of ordinary range constant only when its top end is under it
    w2 = np.array([[10, 10, 10, 10]], dtype=np.int8)
    assert constant_channels(w2, np.array([-40000]), m[:1], sh[:1], 0, 0, (0, 127))[0] == 0
    assert not 0 <= constant_channels(w2, np.array([0]), m[:1], sh[:1], 0, 0, (0, 127))[0] <= 127
    # the dead channels' huge bias kept the table off the fast path; with the range known it is fast
    _, fast = requant_table(w[[0, 3]], bias[[0, 3]], m[:2], sh[:2], 0, 0, 4)
    assert not fast
    table, fast = requant_table(w[[0, 3]], bias[[0, 3]], m[:2], sh[:2], 0, 0, 4, act=(-128, 127))
    assert fast and list(table[:3]) == [0, 2 * -128 + 1, 1]  # (mult, k, right) of channel 0


@pytest.mark.parametrize("act", ["NONE", "RELU"])
def test_dead_channel_runs_the_fast_path_bit_exact(act):
    rng = np.random.default_rng(11)
    graph = conv_graph(rng, h=6, w=5, c=8, oc=6, kh=1, kw=1, act=act)
    graph.tensor(1).data[2] = np.clip(graph.tensor(1).data[2], -1, 1)
    graph.tensor(2).data = graph.tensor(2).data.copy()
    graph.tensor(2).data[2] = -(1 << 30)  # channel 2: dead
    op = graph.operators[0]
    p = kernel_for(op).params(op, graph)
    w2d = graph.tensor(1).data.reshape(6, -1)
    const = constant_channels(w2d, graph.tensor(2).data.astype(np.int64), p["mult"], p["shift"], p["in_zp"],
                              p["out_zp"], tuple(p["act"]))
    assert const[2] == p["act"][0] and (np.abs(const[[0, 1, 3, 4, 5]]) > 127).all()
    assert not requant_table(w2d, graph.tensor(2).data, p["mult"], p["shift"], p["in_zp"], p["out_zp"], 8)[1]
    model = NativeModel.build(graph, kernels="optimized")
    assert "_m0" not in model.compiled.model_c  # the exact 64-bit path is no longer needed
    oracle = tflm(graph)
    for _ in range(3):
        x = _inputs(graph, rng)
        expected, got = oracle(x)[0], model.run(x)[0]
        np.testing.assert_array_equal(got, expected)
        assert (expected[..., 2] == const[2]).all()


def test_fast_requantisation_needs_negative_shifts():
    w = np.ones((2, 4), dtype=np.int8)
    _, fast = requant_table(w, None, np.full(2, 1 << 30), np.array([-1, -5]), 0, 0, 4)
    assert fast
    _, fast = requant_table(w, None, np.full(2, 1 << 30), np.array([0, -5]), 0, 0, 4)
    assert not fast  # shift 0 (right = 0) has no rounding term: exact path


def test_pack_weights_layout():
    w = np.arange(2 * 6, dtype=np.int8).reshape(2, 6)  # N = 2, K = 6 -> 2 blocks
    packed, kb = pack_weights(w, nr=4, wide=False)
    raw = packed.view(np.int8)
    assert kb == 2
    # tile 0, block 0: channels 0..3, 4 bytes each (channels 2, 3 are zero padding)
    assert list(raw[:16]) == [0, 1, 2, 3, 6, 7, 8, 9] + [0] * 8
    # block 1: the K tail is zero-padded
    assert list(raw[16:24]) == [4, 5, 0, 0, 10, 11, 0, 0]
    wide, _ = pack_weights(w, nr=1, wide=True)
    halves = wide.view("<i2")
    assert list(halves[:4]) == [0, 2, 1, 3]  # (w0, w2), (w1, w3): SXTB16 / SXTB16-ROR8 pairing


def test_folded_bias():
    w = np.array([[1, -2, 3], [4, 5, -6]], dtype=np.int8)
    b = folded_bias(w, np.array([10, -10]), input_zero_point=-3, padded=4)
    # bias - zp * sum(w): zp = -3 -> +3 * sum
    assert list(b) == [10 + 3 * 2, -10 + 3 * 3, 0, 0]


@pytest.mark.qemu
def test_qemu_sample_bit_exact_and_predicted():
    """Two layers on QEMU with the DSP loops: bit-exact with TFLM, measured
    instructions/MAC within 10% of the schedule model and below the issue's bar."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    from microtile_models.zoo import single_op

    from microtile.measure.runner import run_model
    from microtile.importer.tflite_format import write_tflite

    cases = [("CONV_2D", dict(shape=(1, 25, 5, 64), kernel=(1, 1), filters=64), 1.39),
             ("CONV_2D", dict(shape=(1, 49, 10, 1), kernel=(10, 4), stride=2, filters=64), 2.33),
             ("FULLY_CONNECTED", dict(shape=(1, 128), units=128), 1.51)]
    with tempfile.TemporaryDirectory() as tmp:
        for opcode, params, bar in cases:
            graph = single_op(opcode, **params)
            path = Path(tmp) / f"{opcode}.tflite"
            path.write_bytes(write_tflite(graph))
            schedule.FORCE_WEIGHTS = "int8"
            try:
                result = run_model(path, "qemu", random=2, kernels="optimized")
                macs = result.compiled.macs
                i = int(np.argmax(macs))
                s = schedule.schedule_for(result.compiled.device_ops[i], result.compiled.graph)
            finally:
                schedule.FORCE_WEIGHTS = None
            assert not result.mismatches
            ipm = result.mean_counts()[i] / macs[i]
            assert ipm <= bar, f"{opcode} {params}: {ipm:.3f} instructions/MAC above the bar {bar}"
            assert abs(ipm - s.predicted_ipm) <= 0.10 * ipm, (opcode, params, ipm, s.predicted_ipm)


def _run_3x2_on_qemu(graph, weights: str):
    """graph on QEMU (3 random inputs) with every matmul layer on the 3x2 tile and
    `weights` ("int8" / "int16")."""
    from microtile.importer.tflite_format import write_tflite
    from microtile.measure.runner import run_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(write_tflite(graph))
        schedule.FORCE_WEIGHTS, schedule.FORCE_TILE = weights, (3, 2)
        try:
            return run_model(path, "qemu", random=3, kernels="optimized")
        finally:
            schedule.FORCE_WEIGHTS, schedule.FORCE_TILE = None, None


@pytest.mark.qemu
@pytest.mark.parametrize("weights", ["int8", "int16"])
def test_qemu_3x2_int8_range_partial_tiles_bit_exact(weights):
    """The 3x2 asm tile loop with SSAT requantisation (MODE 2: no activation, so the
    range is int8's) also runs the partial tiles: 7 output channels (an odd last one)
    over 5x5 = 25 pixels (a last panel of 1 row), written through a scratch tile. Both
    weight formats, on QEMU with the DSP loops, against TFLM."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    from microtile_models.zoo import single_op

    result = _run_3x2_on_qemu(single_op("CONV_2D", shape=(1, 5, 5, 12), kernel=(1, 1), filters=7), weights)
    wide = int(weights == "int16")
    assert f"mt_gemm_rows_3x2_w{wide}_m2" in result.compiled.model_c, "the MODE 2 3x2 kernel was not chosen"
    assert not result.mismatches, result.mismatches


@pytest.mark.qemu
@pytest.mark.parametrize("weights", ["int8", "int16"])
def test_qemu_3x2_every_reduction_entry_bit_exact(weights):
    """The 3x2 reduction is entered by a table branch at kb % 8 (MT_ASM_REDUCE6, 8 blocks
    per iteration): a chain of 1x1 convs with K = 4 .. 36 (kb 1 .. 9: every entry, and a
    second iteration), 20 pixels (a partial last panel) and an odd last channel count,
    on QEMU against TFLM. Entering at the wrong block drops or repeats 1-7 blocks of
    every tile."""
    from microtile_models.float_graph import FloatNet

    net = FloatNet("reduction_entries", 3)
    x = net.input((1, 4, 5, 4), -1.0, 1.0)
    widths = (8, 12, 16, 20, 24, 28, 32, 36, 7)
    for ch in widths:
        x = net.conv2d(x, ch, (1, 1), activation="NONE")
    net.output(x)
    result = _run_3x2_on_qemu(net.to_graph(), weights)
    kb = sorted(schedule.schedule_for(op, result.compiled.graph).k_blocks for op in result.compiled.device_ops
                if op.opcode == "CONV_2D")
    assert kb == list(range(1, 10)), kb
    assert f"mt_gemm_rows_3x2_w{int(weights == 'int16')}_m2" in result.compiled.model_c
    assert result.error is None and result.samples == 3 and not result.mismatches, result.mismatches


@pytest.mark.qemu
@pytest.mark.parametrize("act", ["NONE", "RELU"])
def test_qemu_3x2_prediction_follows_the_activation_range(act):
    """The cost model costs the 3x2 asm tile loop only where the kernel runs it (the
    int8 activation range, MODE 2); a clamping activation (RELU with output zero point
    0: MODE 1) runs the C loop, and the prediction follows it within 10 % of QEMU (it
    read 15 % low when every 3x2 layer was costed as the asm loop)."""
    from microtile.importer.tflite_format import write_tflite
    from microtile.measure.runner import run_model

    graph = conv_graph(np.random.default_rng(1), h=25, w=5, c=64, oc=64, kh=1, kw=1, act=act, out_zp=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv.tflite"
        path.write_bytes(write_tflite(graph))
        schedule.FORCE_WEIGHTS = "int8"
        try:
            result = run_model(path, "qemu", random=2, kernels="optimized")
            s = schedule.schedule_for(result.compiled.device_ops[0], result.compiled.graph)
        finally:
            schedule.FORCE_WEIGHTS = None
    assert f"mt_gemm_rows_3x2_w0_m{2 if act == 'NONE' else 1}" in result.compiled.model_c
    assert not result.mismatches
    ipm = result.mean_counts()[0] / result.compiled.macs[0]
    assert abs(ipm - s.predicted_ipm) <= 0.10 * ipm, (act, ipm, s.predicted_ipm)
