"""Optimised kernels (depthwise conv, pooling, add, softmax) vs TFLM, bit for bit.

Each property builds a one-operator graph, runs it through TFLM and through the native
build of the optimised kernel set (NativeModel.build(..., kernels="optimized")), and
also checks which kernel the code generator picked, so a silent fallback to the
reference kernel cannot make a test pass. A sample runs on QEMU.

MT_OPS_EXAMPLES=<n> raises the number of random cases per property."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microtile.importer.ir import Graph
from microtile.build.native import NativeModel
from microtile.ops import kernel_for
from microtile.ops.opt_schedules import explain_op
from microtile.ops.requant_opt import fast_requant, reference_fast_requant
from microtile.importer.quant import multiply_by_quantized_multiplier

from op_harness import one_op_graph, qtensor, quant, random_int8, tflm
from test_ops_conv import conv_graph
from test_ops_pool import pool_graph

ACTS = st.sampled_from(["NONE", "RELU", "RELU6", "RELU_N1_TO_1"])
SETTINGS = settings(max_examples=int(os.environ.get("MT_OPS_EXAMPLES", 30)), deadline=None,
                    derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def check_optimized(graph: Graph, inputs: list[np.ndarray], kernel: str | None) -> np.ndarray:
    """TFLM == native optimised build; `kernel` is the C function the optimised
    model.c must call (None: it must fall back to the reference kernel)."""
    for op in graph.operators:
        kernel_for(op).check(op, graph)
    expected = tflm(graph)(inputs)
    model = NativeModel.build(graph, kernels="optimized")
    if kernel is None:
        assert "_opt" not in model.compiled.model_c, "expected the reference kernel"
    else:
        assert f"{kernel}(" in model.compiled.model_c, f"expected a call to {kernel}"
    got = model.run(inputs)
    for e, g in zip(expected, got):
        assert e.shape == g.shape, (e.shape, g.shape)
        diff = np.flatnonzero(e.astype(np.int32) != g.astype(np.int32))
        assert diff.size == 0, (f"optimised kernel differs from TFLM at {diff.size} of {e.size} values, "
                                f"first {diff[:5]}: tflm {e.reshape(-1)[diff[:5]]} C {g.reshape(-1)[diff[:5]]}")
    return expected[0]


# ---------------------------------------------------------------- fast requantisation

def test_fast_requant_formula_matches_tflite():
    """SMMULR(2acc, m) + sign fix + folded zero point == MultiplyByQuantizedMultiplier + zp,
    over extreme multipliers, every shift, and accumulators at the bound."""
    rng = np.random.default_rng(0)
    for right in range(1, 32):
        mult = np.concatenate([[1 << 30, (1 << 31) - 1], rng.integers(1 << 30, 1 << 31, size=30)])
        zmax = min(127, (1 << (30 - right)) - 1) if right < 30 else 0  # keeps zp << right in int32
        zp = int(rng.integers(-zmax, zmax + 1))
        bound = min((1 << 30) - 1, (1 << 31) - 2 - abs((1 << (right - 1)) + (zp << right)))
        fast = fast_requant(mult, np.full(mult.size, -right), zp, np.full(mult.size, bound))
        assert fast is not None
        k, r = fast
        acc = np.concatenate([rng.integers(-bound, bound + 1, size=(2000, 1)),
                              [[bound], [-bound], [0], [1], [-1]],
                              # exact halves of both roundings
                              (np.arange(-8, 9) << max(right - 1, 0)).reshape(-1, 1)])
        acc = np.clip(acc, -bound, bound)
        want = multiply_by_quantized_multiplier(acc, mult[None, :], np.full(mult.size, -right)[None, :]) + zp
        got = reference_fast_requant(acc, mult[None, :], k[None, :], r[None, :])
        assert np.array_equal(want, got), right


def test_fast_requant_refuses_what_it_cannot_do():
    m = np.array([1 << 30])
    assert fast_requant(m, np.array([0]), 0, np.array([10])) is None  # no right shift
    assert fast_requant(m, np.array([3]), 0, np.array([10])) is None  # left shift
    assert fast_requant(m, np.array([-8]), 0, np.array([1 << 30])) is None  # 2acc overflows
    assert fast_requant(m, np.array([-30]), 100, np.array([1000])) is None  # zp << 30 overflows
    assert fast_requant(m, np.array([-8]), 5, np.array([1 << 20])) is not None


def test_fast_requant_serves_channels_with_multiplier_zero():
    """TFLM quantises a scale below 2^-32 to (multiplier 0, shift 0): that channel
    outputs its zero point for every accumulator, and so must the fast form (shift 0
    alone still refuses it)."""
    mult, shift, zp, bound = np.array([0, 1 << 30]), np.array([0, -7]), -5, np.array([1 << 24, 1 << 24])
    k, r = fast_requant(mult, shift, zp, bound)
    acc = np.array([[-(1 << 24)], [-3], [0], [1], [1 << 24]]) * np.ones((1, 2), dtype=np.int64)
    want = multiply_by_quantized_multiplier(acc, mult[None, :], shift[None, :]) + zp
    assert np.array_equal(reference_fast_requant(acc, mult[None, :], k[None, :], r[None, :]), want)
    assert np.all(want[:, 0] == zp)
    assert fast_requant(np.array([1 << 30]), np.array([0]), zp, bound[:1]) is None


# ---------------------------------------------------------------- DEPTHWISE_CONV_2D

dw_geometry = st.fixed_dictionaries({
    "h": st.integers(1, 9), "w": st.integers(1, 9), "kh": st.integers(1, 5), "kw": st.integers(1, 5),
    "sh": st.integers(1, 2), "sw": st.integers(1, 2), "padding": st.sampled_from(["SAME", "VALID"]),
})


def _fit(g: dict) -> dict:
    if g["padding"] == "VALID":
        g = dict(g, kh=min(g["kh"], g["h"]), kw=min(g["kw"], g["w"]))
    return g


@SETTINGS
@given(g=dw_geometry, c=st.integers(2, 13), act=ACTS, per_channel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_depthwise_opt_matches_tflm(g, c, act, per_channel, seed):
    """Any kernel size, stride 1 and 2, padding at every border, channels not a multiple of 4."""
    rng = np.random.default_rng(seed)
    graph = conv_graph(rng, c=c, oc=c, act=act, per_channel=per_channel, depthwise=True, **_fit(g))
    check_optimized(graph, [random_int8(rng, graph.tensor(0).shape)], "mt_depthwise_s8_opt")


@SETTINGS
@given(g=dw_geometry, dm=st.integers(1, 9), act=ACTS, per_channel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_depthwise_one_channel_runs_as_conv(g, dm, act, per_channel, seed):
    """One input channel, any depth multiplier (TFLM's micro_speech layer): the
    optimised set runs it as the CONV_2D it is (the implicit-GEMM kernel)."""
    rng = np.random.default_rng(seed)
    graph = conv_graph(rng, c=1, oc=dm, act=act, per_channel=per_channel, depthwise=True, **_fit(g))
    check_optimized(graph, [random_int8(rng, graph.tensor(0).shape)], "mt_conv_s8_opt")


@SETTINGS
@given(h=st.integers(3, 9), w=st.integers(3, 9), c=st.sampled_from([4, 8, 12, 16, 20]),
       stride=st.integers(1, 2), padding=st.sampled_from(["SAME", "VALID"]), act=ACTS,
       seed=st.integers(0, 2**32 - 1))
def test_depthwise_opt_3x3_fast_path(h, w, c, stride, padding, act, seed):
    """The unrolled 3x3 interior path (channels a multiple of 4) next to clipped borders,
    of the channel-group kernel (the planar one, which takes some of these layers, has
    its own tests: test_depthwise_planar.py)."""
    from microtile.ops import depthwise_opt

    rng = np.random.default_rng(seed)
    graph = conv_graph(rng, h=h, w=w, c=c, oc=c, kh=3, kw=3, sh=stride, sw=stride, padding=padding,
                       act=act, depthwise=True)
    depthwise_opt.PLANAR = False
    try:
        check_optimized(graph, [random_int8(rng, graph.tensor(0).shape)], "mt_depthwise_s8_opt")
    finally:
        depthwise_opt.PLANAR = None


@pytest.mark.parametrize("seed", range(6))
def test_depthwise_opt_extreme_shifts_and_fallbacks(seed):
    """Per-channel extreme multipliers: channels with a non-negative shift (or huge
    accumulators) make the layer keep the reference kernel; both stay bit-exact."""
    rng = np.random.default_rng(100 + seed)
    graph = conv_graph(rng, h=6, w=7, c=9, oc=9, kh=3, kw=3, act="RELU6", depthwise=True, extreme=True)
    op = graph.operators[0]
    p = kernel_for(op).params(op, graph)
    expect_opt = bool(np.all(p["shift"] < 0))  # the bias here is small: only the shift decides
    check_optimized(graph, [random_int8(rng, (1, 6, 7, 9))], "mt_depthwise_s8_opt" if expect_opt else None)


def test_depthwise_opt_depth_multiplier_over_channels():
    """Depth multiplier 2 over 3 channels runs the optimised kernel (it fell back before)."""
    rng = np.random.default_rng(5)
    graph = conv_graph(rng, h=5, w=5, c=3, oc=6, kh=3, kw=3, depthwise=True)
    check_optimized(graph, [random_int8(rng, (1, 5, 5, 3))], "mt_depthwise_s8_opt")


@pytest.mark.parametrize("planar", [False, True])
def test_depthwise_opt_extreme_values(planar, monkeypatch):
    """All-(-128) / all-127 inputs and weights: accumulators at their extremes, in both
    depthwise kernels."""
    from microtile.ops import depthwise_opt

    monkeypatch.setattr(depthwise_opt, "PLANAR", planar)
    rng = np.random.default_rng(9)
    graph = conv_graph(rng, h=5, w=6, c=8, oc=8, kh=3, kw=3, depthwise=True, out_zp=-128)
    w = graph.tensor(1)
    w.data = np.where(np.arange(w.data.size).reshape(w.data.shape) % 2 == 0, -128, 127).astype(np.int8)
    kernel = "mt_depthwise_planar_s8_opt" if planar else "mt_depthwise_s8_opt"
    for fill in (-128, 127):
        check_optimized(graph, [np.full((1, 5, 6, 8), fill, dtype=np.int8)], kernel)


# ---------------------------------------------------------------- pooling

pool_geometry = st.fixed_dictionaries({
    "h": st.integers(1, 12), "w": st.integers(1, 12), "c": st.integers(1, 13), "kh": st.integers(1, 5),
    "kw": st.integers(1, 5), "sh": st.integers(1, 3), "sw": st.integers(1, 3),
    "padding": st.sampled_from(["SAME", "VALID"]),
})


@SETTINGS
@given(g=pool_geometry, act=ACTS, opcode=st.sampled_from(["AVERAGE_POOL_2D", "MAX_POOL_2D"]),
       seed=st.integers(0, 2**32 - 1))
def test_pool_opt_matches_tflm(g, act, opcode, seed):
    rng = np.random.default_rng(seed)
    graph = pool_graph(rng, opcode, act=act, **_fit(g))
    fn = "mt_avg_pool_s8_opt" if opcode == "AVERAGE_POOL_2D" else "mt_max_pool_s8_opt"
    check_optimized(graph, [random_int8(rng, graph.tensor(0).shape)], fn)


@pytest.mark.parametrize("fill", [-128, 127, None])
def test_avg_pool_opt_largest_window_and_fallback(fill):
    """A 16x16 window (256 pixels) fills the halfword sums to +-32768; 17x16 falls back."""
    rng = np.random.default_rng(3)
    for h, fn in ((16, "mt_avg_pool_s8_opt"), (17, None)):
        graph = pool_graph(rng, "AVERAGE_POOL_2D", h=h, w=16, c=6, kh=h, kw=16, padding="VALID")
        x = random_int8(rng, (1, h, 16, 6)) if fill is None else np.full((1, h, 16, 6), fill, np.int8)
        check_optimized(graph, [x], fn)


# ---------------------------------------------------------------- ADD

add_scales = st.floats(-3.5, 0.5).map(lambda e: float(np.float32(10.0 ** e)))


def _add_graph(s1, s2, out, q1, q2, qo, act):
    tensors = [qtensor(0, s1, *q1), qtensor(1, s2, *q2), qtensor(2, out, *qo)]
    return one_op_graph("ADD", tensors, [0, 1], [2], {"fused_activation_function": act})


def _add_kernel(graph: Graph) -> str | None:
    """The kernel the optimised build must use: same shapes and an output scale the
    fast requantisation covers (checked independently of the emitter)."""
    a, b = graph.tensor(0), graph.tensor(1)
    if tuple(a.shape) != tuple(b.shape):
        return None
    p = kernel_for(graph.operators[0]).params(graph.operators[0], graph)
    return "mt_add_s8_opt" if p["output_shift"] < 0 else None


@SETTINGS
@given(shape=st.lists(st.integers(1, 9), min_size=0, max_size=3), q1=st.tuples(add_scales, st.integers(-128, 127)),
       q2=st.tuples(add_scales, st.integers(-128, 127)), out_ratio=st.floats(0.05, 4.0),
       out_zp=st.integers(-128, 127), act=ACTS, seed=st.integers(0, 2**32 - 1))
def test_add_opt_matches_tflm(shape, q1, q2, out_ratio, out_zp, act, seed):
    """Element counts not a multiple of 4, random scales and zero points, every activation."""
    shape = (1,) + tuple(shape)  # batch 1 (codegen runs batch 1)
    so = float(np.float32(max(q1[0], q2[0]) * out_ratio))
    graph = _add_graph(shape, shape, shape, q1, q2, (so, out_zp), act)
    rng = np.random.default_rng(seed)
    check_optimized(graph, [random_int8(rng, shape), random_int8(rng, shape)], _add_kernel(graph))


def test_add_opt_every_input_pair():
    """All 256 x 256 input pairs through the tables and the output requantisation."""
    a = np.repeat(np.arange(-128, 128), 256).astype(np.int8).reshape(1, 256, 256)
    b = np.tile(np.arange(-128, 128), 256).astype(np.int8).reshape(1, 256, 256)
    for q1, q2, qo, act in (((0.05, -3), (0.02, 10), (0.06, 5), "NONE"),
                            ((0.5, 127), (0.5, -128), (0.01, -128), "RELU"),
                            ((1e-3, 0), (0.3, 7), (0.25, -20), "RELU6")):
        graph = _add_graph((1, 256, 256), (1, 256, 256), (1, 256, 256), q1, q2, qo, act)
        check_optimized(graph, [a, b], "mt_add_s8_opt")


def test_add_opt_broadcast_falls_back():
    rng = np.random.default_rng(4)
    graph = _add_graph((1, 4, 4, 8), (1, 1, 1, 8), (1, 4, 4, 8), (0.1, 3), (0.05, -7), (0.12, 1), "RELU")
    check_optimized(graph, [random_int8(rng, (1, 4, 4, 8)), random_int8(rng, (1, 1, 1, 8))], None)


# ---------------------------------------------------------------- SOFTMAX

def _softmax_graph(shape, in_scale, in_zp, beta=1.0, out=(1.0 / 256, -128), out_dtype="int8"):
    from microtile.importer.ir import Tensor

    tensors = [Tensor(0, "x", tuple(shape), "int8", quant(in_scale, in_zp)),
               Tensor(1, "y", tuple(shape), out_dtype, quant(*out))]
    return one_op_graph("SOFTMAX", tensors, [0], [1], {"beta": beta})


def _every_diff_rows(rng) -> np.ndarray:
    """Rows that together produce every diff x - max in [-255, 0] for several maxima:
    a shuffled row of all 256 int8 values (max 127), and rows of [-128, m]."""
    rows = [rng.permutation(np.arange(-128, 128))]
    for m in (-128, -100, -1, 0, 63, 126):
        r = np.full(256, -128, dtype=np.int64)
        r[: m + 129] = np.arange(-128, m + 1)
        rows.append(rng.permutation(r))
    return np.stack(rows).astype(np.int8).reshape(1, len(rows), 256)


@pytest.mark.parametrize("in_scale,beta", [(1e-4, 1.0), (0.01, 1.0), (0.0625, 1.0), (0.1, 0.5), (0.3, 2.0),
                                           (1.0, 1.0), (8.0, 1.0)])
def test_softmax_opt_every_diff(in_scale, beta):
    """Every possible diff (the domain of the offline exp tables) through TFLM and the
    optimised kernel, for small, typical and saturating input scales."""
    rng = np.random.default_rng(int(in_scale * 1000))
    x = _every_diff_rows(rng)
    graph = _softmax_graph(x.shape, float(np.float32(in_scale)), 3, float(np.float32(beta)))
    check_optimized(graph, [x], "mt_softmax_s8_opt")


@SETTINGS
@given(outer=st.integers(1, 4), depth=st.integers(1, 300),
       in_scale=st.floats(-4.0, 1.0).map(lambda e: float(np.float32(10.0 ** e))),
       in_zp=st.integers(-128, 127), beta=st.sampled_from([0.5, 1.0, 2.0]), narrow=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_softmax_opt_matches_tflm(outer, depth, in_scale, in_zp, beta, narrow, seed):
    """Row lengths not a multiple of 4 (the byte-SIMD max), several rows, narrow value bands."""
    rng = np.random.default_rng(seed)
    shape = (1, outer, depth)
    x = random_int8(rng, shape)
    if narrow:
        lo = int(rng.integers(-128, 120))
        x = rng.integers(lo, lo + 6, size=shape).astype(np.int8)
    if depth > 256 and in_scale < 0.05:
        in_scale = 0.05  # keep the sum of exps under TFLM's abort limit (512)
    graph = _softmax_graph(shape, in_scale, in_zp, beta)
    check_optimized(graph, [x], "mt_softmax_s8_opt")


def test_softmax_opt_int16_output_falls_back():
    rng = np.random.default_rng(2)
    graph = _softmax_graph((1, 10), 0.1, 0, 1.0, out=(1.0 / 65536, -32768), out_dtype="int16")
    check_optimized(graph, [random_int8(rng, (1, 10))], None)


# ---------------------------------------------------------------- QEMU sample and the bar

# (opcode, single_op parameters, instructions per MAC (or per element) the layer must stay under
# on QEMU: CMSIS-NN's figure from issue 3 divided by 1.5)
QEMU_BAR = {
    "dw3x3_25x5x64": ("DEPTHWISE_CONV_2D", dict(shape=(1, 25, 5, 64), activation="RELU"), 7.79 / 1.5),
    "dw3x3_48x48x8": ("DEPTHWISE_CONV_2D", dict(shape=(1, 48, 48, 8), activation="RELU6"), 8.86 / 1.5),
    "dw3x3_24x24x32_s2": ("DEPTHWISE_CONV_2D", dict(shape=(1, 24, 24, 32), stride=2, activation="RELU6"),
                          8.16 / 1.5),
    "dw5x3_9x7x6_mixed": ("DEPTHWISE_CONV_2D", dict(shape=(1, 9, 7, 6), kernel=(5, 3), stride=(2, 1)), None),
    "dw3x3_9x9x4_mult2": ("DEPTHWISE_CONV_2D", dict(shape=(1, 9, 9, 4), multiplier=2, padding="VALID"), None),
    "avgpool_25x5x64": ("AVERAGE_POOL_2D", dict(shape=(1, 25, 5, 64), size=(25, 5)), 6.34 / 1.5),
    "maxpool_3x3_s2_13x11x7": ("MAX_POOL_2D", dict(shape=(1, 13, 11, 7), size=(3, 3), stride=2,
                                                   padding="SAME"), None),
    "add_32x32x16": ("ADD", dict(shape=(1, 32, 32, 16), activation="RELU"), 81 / 1.5),
    "add_3x5x7": ("ADD", dict(shape=(1, 3, 5, 7)), None),
    "softmax_2x12": ("SOFTMAX", dict(shape=(1, 2, 12)), None),
}


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(QEMU_BAR))
def test_optimized_on_qemu(name, tmp_path, monkeypatch):
    """Bit-exact with TFLM on QEMU, faster than the reference kernel, and under the
    issue's bar (CMSIS-NN / 1.5) where it states one. The specialised depthwise function
    is chosen explicitly: a one-layer model's reference ROM is too small for the ROM
    rule to leave it room (build_within_rom_rule would take the shared kernel)."""
    from microtile.measure.runner import run_model
    from microtile.importer.tflite_format import write_tflite
    from microtile.ops import depthwise_opt
    from microtile_models.zoo import single_op

    monkeypatch.setattr(depthwise_opt, "SHARED", lambda p, in_place: False)

    opcode, params, bar = QEMU_BAR[name]
    graph = single_op(opcode, **params)
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(write_tflite(graph))
    runs = {k: run_model(path, "qemu", random=2, kernels=k) for k in ("reference", "optimized")}
    for k, r in runs.items():
        assert not r.mismatches, f"{k} kernels differ from TFLM on {r.mismatches}"
    ref, opt = (runs[k].mean_counts()[0] for k in ("reference", "optimized"))
    assert opt * 1.5 < ref, (ref, opt)
    op = graph.operators[0]
    work = runs["optimized"].compiled.macs[0]
    if opcode == "MAX_POOL_2D":
        p = kernel_for(op).params(op, graph)
        work = p["oh"] * p["ow"] * p["c"] * p["kh"] * p["kw"]
    elif opcode == "SOFTMAX":
        work = int(np.prod(graph.tensor(op.outputs[0]).shape))
    if bar is not None:
        assert opt / work <= bar, f"{opt / work:.2f} instructions per MAC/element, bar {bar:.2f}"
    # the cost model behind --explain (docs/kernels_vector.md) stays within 20 % of QEMU
    predicted = explain_op(op, graph)["predicted_ipm"]
    assert abs(predicted - opt / work) <= 0.2 * opt / work, (predicted, opt / work)
