"""SOFTMAX / LOG_SOFTMAX: numpy reference and C kernel bit-exact with TFLM."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from microtile.errors import UnsupportedOperatorError
from microtile.importer.ir import Tensor
from microtile.build.native import CFLAGS, FIRMWARE
from microtile.ops import kernel_for

from op_harness import check_against_tflm, one_op_graph, quant, random_int8

SOFTMAX_OUT = (1.0 / 256, -128)
LOG_SOFTMAX_OUT = (16.0 / 256, 127)

# Rank 1 to 4; batch (first dim of rank >= 2) is 1 as on device, rows come from the others.
shapes = st.lists(st.integers(1, 5), min_size=0, max_size=2).flatmap(
    lambda outer: st.integers(1, 200).map(lambda depth: (1, *outer, depth)))
shapes = st.one_of(st.integers(1, 200).map(lambda d: (d,)), shapes)
scales = st.floats(-4.0, 1.5).map(lambda e: float(np.float32(10.0 ** e)))


def softmax_graph(shape, in_scale, in_zp, beta=1.0, out=SOFTMAX_OUT, out_dtype="int8", opcode="SOFTMAX"):
    options = {"beta": beta} if opcode == "SOFTMAX" else {}
    tensors = [Tensor(0, "x", tuple(shape), "int8", quant(in_scale, in_zp)),
               Tensor(1, "y", tuple(shape), out_dtype, quant(*out))]
    return one_op_graph(opcode, tensors, [0], [1], options)


def _input(data, shape, rng):
    """Random values, sometimes squeezed into a narrow band so many diffs are small."""
    x = random_int8(rng, shape)
    if data.draw(st.booleans()):
        lo = data.draw(st.integers(-128, 120))
        x = rng.integers(lo, min(lo + data.draw(st.integers(1, 8)), 128), size=shape).astype(np.int8)
    return x


@seed(1234)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), shape=shapes, in_scale=scales, in_zp=st.integers(-128, 127),
       beta=st.floats(-2.0, 2.0).map(lambda e: float(np.float32(10.0 ** e))))
def test_softmax_matches_tflm(data, shape, in_scale, in_zp, beta):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    graph = softmax_graph(shape, in_scale, in_zp, beta)
    check_against_tflm(graph, [_input(data, shape, rng)])


@seed(99)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), shape=shapes, in_scale=scales, beta=st.floats(-1.0, 1.0).map(lambda e: 10.0 ** e))
def test_softmax_int16_output_matches_tflm(data, shape, in_scale, beta):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    graph = softmax_graph(shape, in_scale, 0, float(np.float32(beta)), out=(1.0 / 65536, -32768), out_dtype="int16")
    check_against_tflm(graph, [_input(data, shape, rng)])


@seed(4321)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), shape=shapes, in_scale=scales, in_zp=st.integers(-128, 127))
def test_log_softmax_matches_tflm(data, shape, in_scale, in_zp):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    graph = softmax_graph(shape, in_scale, in_zp, out=LOG_SOFTMAX_OUT, opcode="LOG_SOFTMAX")
    check_against_tflm(graph, [_input(data, shape, rng)])


@pytest.mark.parametrize("opcode,out", [("SOFTMAX", SOFTMAX_OUT), ("LOG_SOFTMAX", LOG_SOFTMAX_OUT)])
@pytest.mark.parametrize("in_scale,beta", [
    (64.0, 1.0),          # multiplier saturates at 2**31 - 1: only the row max survives
    (20.0, 1.0),          # input shift of 31
    (2.0 ** -20, 1.0),    # tiny scale: every diff passes diff_min
    (0.1, 3.0e3),         # huge beta
])
def test_extreme_scalings(opcode, out, in_scale, beta):
    rng = np.random.default_rng(7)
    shape = (1, 3, 50)
    graph = softmax_graph(shape, in_scale, 3, beta if opcode == "SOFTMAX" else 1.0, out=out, opcode=opcode)
    x = random_int8(rng, shape)
    x[0, 0] = 5  # a row of ties
    x[0, 1, :] = -128
    x[0, 1, 7] = 127  # one far outlier
    check_against_tflm(graph, [x])


def test_softmax_sums_to_one():
    """Sanity check on TFLM's answer itself: probabilities sum to ~1."""
    rng = np.random.default_rng(3)
    graph = softmax_graph((1, 4, 10), 0.1, 0)
    y = check_against_tflm(graph, [random_int8(rng, (1, 4, 10))])[0]
    probs = (y.astype(np.float64) + 128) / 256
    assert np.allclose(probs.sum(axis=-1), 1.0, atol=0.05)


def test_softmax_in_place():
    """The int8 kernels may run with output aliasing input (planner in-place reuse)."""
    import ctypes
    import subprocess
    import tempfile
    from pathlib import Path

    from microtile.ops.softmax import log_softmax_int8, log_softmax_params, softmax_int8, softmax_params

    rng = np.random.default_rng(11)
    shape = (5, 33)
    x = random_int8(rng, shape)
    sm = softmax_graph(shape, 0.05, 0)
    ls = softmax_graph(shape, 0.05, 0, out=LOG_SOFTMAX_OUT, opcode="LOG_SOFTMAX")
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "libsm.so"
        # The kernel itself, compiled as the native build does (UBSan included).
        subprocess.run(["gcc", *CFLAGS, "-shared", "-I", str(FIRMWARE / "include"),
                        str(FIRMWARE / "kernels" / "mt_softmax.c"), "-o", str(lib)], check=True)
        c = ctypes.CDLL(str(lib))
        m, s, d = softmax_params(sm.operators[0], sm)
        params = (ctypes.c_int32 * 5)(5, 33, m, s, d)
        buf = (ctypes.c_int8 * x.size)(*x.reshape(-1).tolist())
        c.mt_softmax_s8_ref(params, buf, buf)
        assert np.array_equal(np.array(buf[:], np.int8).reshape(shape), softmax_int8(x, m, s, d))
        lp = log_softmax_params(ls.operators[0], ls)
        params = (ctypes.c_int32 * 7)(5, 33, *lp)
        buf = (ctypes.c_int8 * x.size)(*x.reshape(-1).tolist())
        c.mt_log_softmax_s8_ref(params, buf, buf)
        assert np.array_equal(np.array(buf[:], np.int8).reshape(shape), log_softmax_int8(x, *lp))


def _expect_unsupported(graph, match):
    op = graph.operators[0]
    with pytest.raises(UnsupportedOperatorError, match=match):
        kernel_for(op).check(op, graph)


def test_rejects_wrong_output_quantisation():
    _expect_unsupported(softmax_graph((1, 10), 0.1, 0, out=(1.0 / 128, -128)), "scale 1/256")
    _expect_unsupported(softmax_graph((1, 10), 0.1, 0, out=(1.0 / 256, 0)), "zero point -128")
    _expect_unsupported(softmax_graph((1, 10), 0.1, 0, out=(0.1, 127), opcode="LOG_SOFTMAX"), "16/256")


def test_rejects_non_int8():
    g = softmax_graph((1, 10), 0.1, 0)
    g.tensors[0].dtype = "int16"
    _expect_unsupported(g, "input type int16")
    g = softmax_graph((1, 10), 0.1, 0)
    g.tensors[0].quant = None
    g.tensors[0].dtype = "float32"
    g.tensors[1].dtype = "float32"
    _expect_unsupported(g, "int8")


def test_rejects_scales_tflm_aborts_on():
    _expect_unsupported(softmax_graph((1, 10), 1e-9, 0), "below 2\\*\\*-26")
    _expect_unsupported(softmax_graph((1, 10), 1e-9, 0, out=LOG_SOFTMAX_OUT, opcode="LOG_SOFTMAX"), "too small")


def test_rejects_very_long_rows():
    _expect_unsupported(softmax_graph((1, 5000), 0.1, 0), "at most 4095")


def _shared_models():
    import os
    from pathlib import Path

    root = Path(os.environ.get("MICROTILE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
    return sorted((root / "models" / "mlperf_tiny").glob("*.tflite"))


@pytest.mark.shared
def test_mlperf_tiny_softmax_layers():
    """The final SOFTMAX of each MLPerf Tiny model, with its real quantisation, on
    many random logit vectors (the layer every classification result passes)."""
    from microtile.build.native import NativeModel
    from microtile.importer.tflite_format import load_tflite, write_tflite

    from microtile.check.oracle import TflmOracle

    models = _shared_models()
    if not models:
        pytest.skip("MLPerf Tiny models not found in ../shared (set MICROTILE_SHARED)")
    tested = 0
    for path in models:
        model = load_tflite(path)
        for op in model.operators:
            if op.opcode != "SOFTMAX":
                continue
            x, y = model.tensor(op.inputs[0]), model.tensor(op.outputs[0])
            graph = softmax_graph(x.shape, x.scale, x.zero_point, op.options.get("beta", 1.0))
            graph.tensors[1].quant = y.quant
            kernel = kernel_for(graph.operators[0])
            kernel.check(graph.operators[0], graph)
            native = NativeModel.build(graph)
            blob = write_tflite(graph)
            rng = np.random.default_rng(tested)
            for _ in range(100):
                inp = random_int8(rng, x.shape)
                expected = TflmOracle(blob)([inp])[0]
                assert np.array_equal(expected, kernel.reference(graph.operators[0], graph, [inp])[0]), path.name
                assert np.array_equal(expected, native.run([inp])[0]), path.name
            tested += 1
    assert tested >= 3


@pytest.mark.parametrize("opcode,out,out_dtype,depth", [
    ("SOFTMAX", SOFTMAX_OUT, "int8", 511),            # largest sum of exps TFLM's int8 path accepts
    ("SOFTMAX", (1.0 / 65536, -32768), "int16", 4000),
    ("LOG_SOFTMAX", LOG_SOFTMAX_OUT, "int8", 4000),   # Q12.19 sum of exps close to 2**31
])
def test_long_rows_near_accumulator_limit(opcode, out, out_dtype, depth):
    rng = np.random.default_rng(21)
    shape = (1, depth)
    x = rng.integers(126, 128, size=shape).astype(np.int8)
    x[0, 0] = 127
    graph = softmax_graph(shape, 2.0 ** -18, 0, out=out, out_dtype=out_dtype, opcode=opcode)
    check_against_tflm(graph, [x])


def test_int8_softmax_beyond_tflm_limit():
    """With 600 equal values the int8 sum of exps passes 512, where TFLM aborts
    (TFLITE_CHECK on the output exponent). We return the limit of its formula,
    probability 0 (-128), in numpy and C alike instead of shifting by >= 32 bits."""
    from microtile.build.native import NativeModel

    shape = (1, 600)
    graph = softmax_graph(shape, 0.1, 0)
    op = graph.operators[0]
    kernel_for(op).check(op, graph)
    x = np.full(shape, 7, dtype=np.int8)
    ref = kernel_for(op).reference(op, graph, [x])[0]
    assert np.all(ref == -128)
    assert np.array_equal(NativeModel.build(graph).run([x])[0], ref)


@pytest.mark.shared
def test_mlperf_tiny_classifier_tails():
    """RESHAPE -> FULLY_CONNECTED -> SOFTMAX, the tail of each MLPerf Tiny CNN, cut out
    of the real model and run end to end (needs the FULLY_CONNECTED kernel too)."""
    from microtile.importer.ir import Graph
    from microtile.build.native import NativeModel
    from microtile.check.reference import run_reference
    from microtile.importer.tflite_format import load_tflite, write_tflite

    from microtile.check.oracle import TflmOracle

    models = [p for p in _shared_models() if not p.name.startswith("ad01")]
    if not models:
        pytest.skip("MLPerf Tiny models not found in ../shared (set MICROTILE_SHARED)")
    for path in models:
        g = load_tflite(path)
        last_pool = max(i for i, op in enumerate(g.operators) if op.opcode == "AVERAGE_POOL_2D")
        ops = g.operators[last_pool + 1:]
        assert [op.opcode for op in ops] == ["RESHAPE", "FULLY_CONNECTED", "SOFTMAX"], path.name
        for k, op in enumerate(ops):
            op.index = k
        tail = Graph(path.stem + "_tail", g.tensors, ops, [g.operators[last_pool].outputs[0]], g.outputs)
        blob = write_tflite(tail)
        native = NativeModel.build(tail)
        rng = np.random.default_rng(1)
        for _ in range(30):
            xs = [random_int8(rng, g.tensor(i).shape) for i in tail.inputs]
            expected = TflmOracle(blob)(xs)[0]
            assert np.array_equal(expected, run_reference(tail, xs)[0]), path.name
            assert np.array_equal(expected, native.run(xs)[0]), path.name
