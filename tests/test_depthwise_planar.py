"""The planar DEPTHWISE_CONV_2D kernel (firmware/include/mt_depthwise_planar_opt.h):
3x3, stride 1, depth multiplier 1, int8 activation range. Natively (the portable C of
the same kernel) on random shapes and on QEMU with its SMLAD asm, both against TFLM;
its plane geometry and stream layout; and that the layers it does not take keep the
channel-group kernel."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microtile.ops import depthwise_opt, kernel_for
from microtile.ops.depthwise_opt import (inplace_scratch_bytes, planar_bytes, planar_choice, planar_geometry,
                                         planar_stream)

from op_harness import random_int8
from test_ops_conv import conv_graph
from test_ops_opt import check_optimized

FEW = settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _graph(rng, h, w, c, padding="SAME", act="NONE"):
    return conv_graph(rng, h=h, w=w, c=c, oc=c, kh=3, kw=3, padding=padding, act=act, depthwise=True)


def _geometry(graph):
    op = graph.operators[0]
    return planar_geometry(kernel_for(op).params(op, graph))


@FEW
@given(h=st.integers(3, 12), w=st.integers(3, 12), c=st.integers(2, 9),
       padding=st.sampled_from(["SAME", "VALID"]), seed=st.integers(0, 2**32 - 1))
def test_planar_matches_tflm_natively(h, w, c, padding, seed):
    """Odd and even sides both ways (an odd last output per plane row, the transposed
    plane when taller than wide), SAME and VALID."""
    rng = np.random.default_rng(seed)
    graph = _graph(rng, h, w, c, padding)
    assert _geometry(graph) is not None
    depthwise_opt.PLANAR = True  # small planes would take the channel-group kernel
    try:
        check_optimized(graph, [random_int8(rng, graph.tensor(0).shape)], "mt_depthwise_planar_s8_opt")
    finally:
        depthwise_opt.PLANAR = None


def test_cost_comparison_picks_the_cheaper_kernel():
    """Long lines take the planar kernel (KWS's 25 x 5 x 64, VWW's 48-wide rows); a
    1-row band (VWW's RAM techniques) and a 3 x 3 plane keep the channel-group
    kernel, whose cost does not grow with per-line and per-channel set-up."""
    rng = np.random.default_rng(5)

    def choice(h, w, c, oh=None):
        graph = _graph(rng, h, w, c, "SAME" if oh is None else "VALID")
        op = graph.operators[0]
        return planar_choice(kernel_for(op).params(op, graph))

    assert choice(25, 5, 64) is not None
    assert choice(8, 48, 8) is not None
    assert choice(3, 6, 128, oh=1) is None
    assert choice(3, 3, 256) is None


def test_plane_geometry():
    """Wide output: rows; tall output (KWS's 25 x 5): columns. Every pair's LDRD reads
    inside a row and the odd output's window too: plane_w >= outputs along + 2, even."""
    rng = np.random.default_rng(0)
    wide, tall = _geometry(_graph(rng, 6, 11, 4)), _geometry(_graph(rng, 25, 5, 4))
    assert wide == {"transposed": False, "plane_h": 8, "plane_w": 14, "quads": True}
    assert tall == {"transposed": True, "plane_h": 7, "plane_w": 28, "quads": True}
    valid = _geometry(_graph(rng, 7, 7, 4, "VALID"))
    assert valid == {"transposed": False, "plane_h": 7, "plane_w": 8, "quads": True}
    # two lines at a time only where MT_DWP_QUADS's immediates fit: 3 plane rows within
    # LDRD's 1,020 B, line + output step within STRB's 4,095 B; one line has no pair
    assert _geometry(_graph(rng, 4, 176, 2))["quads"] is False    # rows of 356 B
    assert _geometry(_graph(rng, 4, 32, 128))["quads"] is False   # output rows of 4,096 B
    assert _geometry(_graph(rng, 1, 8, 4))["quads"] is False      # one line


def test_stream_layout_and_transposition():
    """Per channel: (k00|k01<<16), (k10|k11<<16), (k20|k21<<16), (k02|k12<<16), k22, bias,
    mult, k, right; transposed, a plane row is a filter column."""
    w = np.arange(-9, 9, dtype=np.int64).reshape(9, 2)  # taps (ky*3 + kx) x 2 channels
    b, m, k, r = (np.array([10, 20]), np.array([1 << 30, 3 << 28]), np.array([5, 6]), np.array([7, 8]))
    s = planar_stream(w, b, m, k, r, transposed=False).view(np.uint32).reshape(2, 9).astype(np.int64)
    t = planar_stream(w, b, m, k, r, transposed=True).view(np.uint32).reshape(2, 9).astype(np.int64)

    def halves(word):
        return [int(np.int16(word & 0xFFFF)), int(np.int16(word >> 16))]

    taps = w.reshape(3, 3, 2)
    for ch in range(2):
        for row in range(3):
            assert halves(s[ch, row]) == [taps[row, 0, ch], taps[row, 1, ch]]
            assert halves(t[ch, row]) == [taps[0, row, ch], taps[1, row, ch]]
        assert halves(s[ch, 3]) == [taps[0, 2, ch], taps[1, 2, ch]]
        assert halves(t[ch, 3]) == [taps[2, 0, ch], taps[2, 1, ch]]
        assert halves(s[ch, 4])[0] == taps[2, 2, ch]
        assert list(s[ch, 5:]) == [b[ch], m[ch], k[ch], r[ch]]


def test_layers_it_does_not_take():
    """A clamping activation, stride 2, a 5x5 window, a plane row too long for the LDRD
    offsets: the channel-group kernel."""
    rng = np.random.default_rng(1)
    assert _geometry(_graph(rng, 8, 8, 4, act="RELU6")) is None
    assert _geometry(conv_graph(rng, h=8, w=8, c=4, oc=4, kh=3, kw=3, sh=2, sw=2, depthwise=True)) is None
    assert _geometry(conv_graph(rng, h=8, w=8, c=4, oc=4, kh=5, kw=5, depthwise=True)) is None
    assert _geometry(_graph(rng, 4, 300, 2)) is None
    graph = _graph(rng, 8, 8, 4, act="RELU6")
    check_optimized(graph, [random_int8(rng, graph.tensor(0).shape)], "mt_depthwise_s8_opt")


def test_in_place_scratch_is_one_plane():
    rng = np.random.default_rng(2)
    graph = _graph(rng, 25, 5, 64)
    assert inplace_scratch_bytes(graph.operators[0], graph) == planar_bytes(_geometry(graph)) == 2 * 7 * 28


@pytest.mark.qemu
@pytest.mark.parametrize("h,w,c,padding", [
    (25, 5, 64, "SAME"),   # KWS's depthwise: transposed, odd along
    (12, 12, 16, "SAME"),  # rows, even
    (7, 9, 6, "VALID"),    # rows, odd, no padding
    (4, 176, 2, "SAME"),   # plane rows of 356 B: 3 rows past the LDRD offsets, pairs only
    (4, 32, 128, "SAME"),  # 4,096 B between output rows: past the STRB offsets, pairs only
])
def test_planar_on_qemu_bit_exact(h, w, c, padding, monkeypatch):
    """The SMLAD/SMLADX asm (with its immediates) against TFLM on QEMU: two lines at a
    time (MT_DWP_QUADS) with a last single line (odd line counts) and an odd last
    output per line, and the shapes whose strides only the pair loop takes. (The ROM
    rule is not under test: it would share the 4 x 32 x 128 shape's function.)"""
    from microtile.importer.tflite_format import write_tflite
    from microtile.measure.runner import run_model
    from microtile.passes import schedule

    monkeypatch.setattr(schedule, "ROM_MARGIN", 1.0)

    graph = _graph(np.random.default_rng(h * 31 + c), h, w, c, padding)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dw.tflite"
        path.write_bytes(write_tflite(graph))
        depthwise_opt.PLANAR = True
        try:
            result = run_model(path, "qemu", random=3, kernels="optimized")
        finally:
            depthwise_opt.PLANAR = None
    assert "mt_depthwise_planar_s8_opt(" in result.compiled.model_c
    assert result.samples and not result.mismatches, result.mismatches
