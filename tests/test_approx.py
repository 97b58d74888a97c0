"""Issue 10: approximate kernels that skip insignificant k-blocks. Significance, the
pruned weight stream, the pruned kernels natively (against the numpy reference of the
pruned network and TFLM on the pruned .tflite) and on QEMU, the split, CLI errors."""
from __future__ import annotations

import numpy as np
import pytest

from microtile.check.oracle import TflmOracle
from microtile.check.reference import run_reference
from microtile.cli import main
from microtile.errors import MicrotileError
from microtile.importer.tflite_format import write_tflite
from microtile.measure.approx_search import check_budget, split_samples
from microtile.passes import approx
from microtile_models.zoo import build


def _layer(w2d, mr=4, nr=1):
    return approx.Layer(op=None, w2d=np.asarray(w2d, dtype=np.int8), mr=mr, nr=nr, m=8, wide=False)


def test_significance_is_each_channels_share_of_its_contribution():
    # channel 0: block 1 carries the large weights; channel 1: block 0 the large input
    w = np.array([[1, 1, 1, 1, 9, 9, 9, 9], [2, 2, 2, 2, 2, 2, 2, 2]])
    x = np.array([1, 1, 1, 1, 1, 1, 1, 1.0])
    x[:4] = 3.0
    sig = approx.block_significance(_layer(w), x)
    assert sig.shape == (2, 2)
    np.testing.assert_allclose(sig.sum(axis=1), 1.0)
    np.testing.assert_allclose(sig[0], [12 / 48, 36 / 48])
    np.testing.assert_allclose(sig[1], [0.75, 0.25])
    keep = approx.keep_mask(sig, 0.5)  # drop the 2 least significant of 4 units
    assert keep.tolist() == [[False, True], [True, False]]
    # a 1x4 tile: one pattern for the 4 channels, the mean of their shares
    sig4 = approx.block_significance(_layer(np.vstack([w, w]), mr=1, nr=4), x)
    np.testing.assert_allclose(sig4, [[0.5, 0.5]])


def test_pruned_stream_holds_only_kept_blocks_with_panel_deltas():
    w = np.zeros((2, 12), dtype=np.int8)
    w[0, 4:8] = [1, 2, 3, 4]        # channel 0 keeps block 1
    w[1, 0:4] = [-1, 0, 0, 0]       # channel 1 keeps blocks 0 and 2
    w[1, 8:12] = [5, 6, 7, -8]
    stream, kept = approx.pruned_stream(w, mr=4, nr=1)
    word = lambda b: int(np.frombuffer(np.array(b, dtype=np.int8).tobytes(), "<i4")[0])
    # delta = skipped blocks * 4 rows * 8 bytes
    assert stream.tolist() == [32, word([1, 2, 3, 4]), 0, word([-1, 0, 0, 0]), 32, word([5, 6, 7, -8])]
    assert kept.tolist() == [1, 2]
    # 1x4 tile: a block is kept when any of the group's channels has a weight there
    stream4, kept4 = approx.pruned_stream(w, mr=1, nr=4)
    assert kept4.tolist() == [3] and stream4[0::5].tolist() == [0, 0, 0]
    # int16 pairs (w0, w2), (w1, w3) per channel: two words after the delta
    wide, _ = approx.pruned_stream(w, mr=4, nr=1, wide=True)
    pair = lambda lo, hi: (lo & 0xFFFF) | ((hi & 0xFFFF) << 16)
    assert wide[:3].view(np.uint32).tolist() == [32, pair(1, 3), pair(2, 4)]
    # 3x2 (the exact kernel's tile): per kept block (delta, w_ch0, w_ch1), a skipped
    # block is 3 rows * 8 bytes of panel
    stream32, kept32 = approx.pruned_stream(w, mr=3, nr=2)
    assert kept32.tolist() == [3] and stream32[0::3].tolist() == [0, 0, 0]
    w[1, 0] = 0                     # block 0 now empty in both channels: skipped
    stream32, kept32 = approx.pruned_stream(w, mr=3, nr=2)
    assert kept32.tolist() == [2] and stream32.tolist() == [24, word([1, 2, 3, 4]), 0,
                                                            0, 0, word([5, 6, 7, -8])]


def test_pruned_format_follows_the_exact_schedules_tile():
    from microtile.passes.schedule import schedule_for

    g = build("op_conv_3x3_same_relu")
    (layer,) = approx.prunable_layers(g)
    assert schedule_for(layer.op, g).tile == "3x2"
    assert (layer.mr, layer.nr, layer.wide) == (3, 2, False)


def _pruned(name, fraction, seed=0):
    g = build(name)
    layers = approx.prunable_layers(g)
    rng = np.random.default_rng(seed)
    masks = {L.op.index: approx.keep_mask(approx.block_significance(L, rng.random(L.w2d.shape[1])), fraction)
             for L in layers}
    return g, layers, masks


@pytest.mark.parametrize("name", ["op_conv_3x3_same_relu", "op_conv_5x3_same_s2", "op_conv_1x1", "op_fc_relu"])
@pytest.mark.parametrize("weights,tile", [("int8", None), ("int16", (4, 1))])
def test_pruned_kernels_native_bit_exact_with_the_pruned_reference_and_tflm(name, weights, tile, tmp_path,
                                                                           monkeypatch):
    """int8: the exact schedule's own tile (3x2 for the convs, 1x4 for the FC); int16
    on a forced 4x1 exact tile: the 4x1 int16 stream."""
    from microtile.passes import schedule

    monkeypatch.setattr(schedule, "FORCE_WEIGHTS", weights)
    monkeypatch.setattr(schedule, "FORCE_TILE", tile)
    g, layers, masks = _pruned(name, 0.5)
    if name != "op_fc_relu":
        assert {(L.mr, L.nr) for L in layers} == {tile or (3, 2)}
    native, pruned, x, ref = _native_bit_exact(g, layers, masks, tmp_path)
    assert all(f"l{L.op.index}_pruned" in native.compiled.model_c for L in layers)
    exact = run_reference(g, [x])[0]
    assert not np.array_equal(exact, ref) or name == "op_fc_relu"  # pruning changed the network


def _native_bit_exact(g, layers, masks, tmp_path, **prune):
    """The pruned network built natively (optimised kernels) equals its numpy reference
    and TFLM on the pruned .tflite on 3 random inputs; (native, pruned, last x, its output).
    prune: prune_graph's bias_delta and weights."""
    from microtile.build.native import NativeModel

    pruned = approx.prune_graph(g, layers, masks, **prune)
    native = NativeModel.build(pruned, "optimized")
    path = tmp_path / "pruned.tflite"
    path.write_bytes(write_tflite(approx.prune_graph(g, layers, masks, mark=False, **prune)))
    oracle = TflmOracle(path)
    rng = np.random.default_rng(1)
    t = g.tensor(g.inputs[0])
    for _ in range(3):
        x = rng.integers(-128, 128, t.shape).astype(np.int8)
        got, ref, tflm = native.run([x])[0], run_reference(pruned, [x])[0], oracle([x])[0]
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(ref, tflm)
    return native, pruned, x, ref


def test_first_layer_pruned_blocks_are_zero_in_the_weights():
    g, layers, masks = _pruned("ds_cnn_kws", 0.4)
    pruned = approx.prune_graph(g, layers, masks)
    first = layers[0]
    w = approx.weight_matrix(next(o for o in pruned.operators if o.index == first.op.index), pruned)
    kept = approx.kept_blocks(first, w)
    assert kept == int(masks[first.op.index].sum()) and kept < first.n_tiles * first.k_blocks
    assert not np.array_equal(w, first.w2d)


def test_split_keeps_the_first_n_for_calibration_and_refuses_no_holdout():
    cal, held = split_samples(list(range(10)), 6, "y.csv")
    assert cal == list(range(6)) and held == [6, 7, 8, 9]
    for n in (0, 10, 11):
        with pytest.raises(MicrotileError, match="held out"):
            split_samples(list(range(10)), n, "y.csv")
    assert check_budget("0.5") == 0.5
    for bad in ("abc", "-1", "nan", "inf", "101"):
        with pytest.raises(MicrotileError, match="--budget"):
            check_budget(bad)


@pytest.fixture
def labelled(tmp_path):
    g = build("op_conv_3x3_same_relu")  # one 3x3 conv, 9 k-blocks, the 4x1 SMLAD kernel
    t = g.tensor(g.inputs[0])
    rng = np.random.default_rng(0)
    lines = []
    for i in range(6):
        name = f"in{i}.bin"
        (tmp_path / name).write_bytes(rng.integers(-128, 128, t.shape).astype(np.int8).tobytes())
        lines.append(f"{name},{t.size},{i * 7}")
    (tmp_path / "y_labels.csv").write_text("\n".join(lines) + "\n")
    model = tmp_path / "conv.tflite"
    model.write_bytes(write_tflite(g))
    return model, tmp_path / "y_labels.csv"


@pytest.mark.parametrize("extra, expected", [
    (["--calibrate", "6", "--budget", "0.5"], "--calibrate 6"),
    (["--calibrate", "9", "--budget", "0.5"], "--calibrate 9"),
    (["--calibrate", "3", "--budget", "lots"], "--budget lots"),
    (["--calibrate", "3", "--budget", "-2"], "--budget -2"),
])
def test_cli_errors_are_one_line_exit_2(labelled, capsys, extra, expected):
    model, labels = labelled
    assert main(["approx", str(model), "--labels", str(labels), *extra]) == 2
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and expected in out and "Traceback" not in out


def test_run_approx_rejects_a_json_for_another_model(labelled, tmp_path, capsys):
    model, _ = labelled
    bad = tmp_path / "chosen.json"
    bad.write_text('{"chosen": {"layers": [{"index": 99, "keep": ["1"]}]}}')
    assert main(["run", str(model), "--approx", str(bad), "--random", "1"]) == 2
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "not a prunable layer" in out


@pytest.mark.qemu
def test_approx_end_to_end_on_qemu_bit_exact_with_the_pruned_reference(labelled, tmp_path):
    """Random inputs and labels: the split and the device check are real, the accuracy
    means nothing (random data measures no accuracy)."""
    import json

    model, labels = labelled
    out = tmp_path / "apx.json"
    code = main(["approx", str(model), "--labels", str(labels), "--calibrate", "4", "--budget", "100",
                 "--json", str(out), "--device-limit", "2"])
    data = json.loads(out.read_text())
    assert code == 0
    assert data["split"]["calibration"] == 4 and data["split"]["heldout"] == 2
    assert data["split"]["heldout_range"] == ["in4.bin", "in5.bin"]
    c, e = data["chosen"], data["exact"]
    assert c["device_mismatches"] == 0 and c["device_samples"] == 2 and c["reference_mismatches"] == 0
    assert c["layers"] and c["instructions"] < e["instructions"] and c["est_cycles"] < e["est_cycles"]
    assert len(data["pareto"]) > 1 and any(p["pareto"] for p in data["pareto"])
    assert out.with_suffix(".png").stat().st_size > 1000
    # the chosen point builds and runs like any model, bit-exact with TFLM on the pruned file
    assert main(["run", str(model), "--approx", str(out), "--random", "1"]) == 0


@pytest.mark.qemu
def test_the_search_never_reads_the_held_out_split(labelled):
    """Other held-out inputs and labels: the same points and the same chosen network."""
    from microtile.measure.approx_search import run_approx

    model, labels = labelled
    quiet = lambda m: None  # noqa: E731
    first = run_approx(str(model), str(labels), 4, 100.0, device_limit=1, log=quiet)
    rng = np.random.default_rng(11)
    for name in ("in4.bin", "in5.bin"):
        f = labels.parent / name
        f.write_bytes(rng.integers(-128, 128, f.stat().st_size).astype(np.int8).tobytes())
    lines = labels.read_text().splitlines()
    lines[4:] = [",".join(line.split(",")[:2] + ["3"]) for line in lines[4:]]
    labels.write_text("\n".join(lines) + "\n")
    second = run_approx(str(model), str(labels), 4, 100.0, device_limit=1, log=quiet)
    assert first["pareto"] == second["pareto"]
    assert first["chosen"]["layers"] == second["chosen"]["layers"] and first["chosen"]["layers"]


@pytest.mark.qemu
@pytest.mark.parametrize("weights,tile", [("int16", (4, 1)), ("int8", (3, 2))])
def test_pruned_smlad_kernels_on_qemu_bit_exact_and_fewer_instructions(weights, tile, tmp_path, monkeypatch):
    """The hand-scheduled loops on the Cortex-M4: the 4x1 int16 stream (a forced 4x1
    exact schedule) and the 3x2 int8 stream (the exact schedule's own tile)."""
    from microtile.measure.runner import run_model
    from microtile.passes import schedule

    monkeypatch.setattr(schedule, "FORCE_WEIGHTS", weights)
    monkeypatch.setattr(schedule, "FORCE_TILE", tile)
    g, layers, masks = _pruned("op_conv_3x3_same_relu", 0.6)
    assert [(L.mr, L.nr) for L in layers] == [tile]
    exact, pruned = tmp_path / "exact.tflite", tmp_path / "pruned.tflite"
    exact.write_bytes(write_tflite(g))
    pruned.write_bytes(write_tflite(approx.prune_graph(g, layers, masks, mark=False)))
    indices = {L.op.index for L in layers}
    r = run_model(pruned, "qemu", random=2, graph_hook=lambda gr: approx.mark_pruned(gr, indices))
    assert f"{tile[0]}x{tile[1]} tile, {weights}" in r.compiled.model_c and "mt_pruned_s8_opt(" in r.compiled.model_c
    assert r.error is None and r.samples == 2 and r.mismatch_count == 0
    r0 = run_model(exact, "qemu", random=1)
    # 0.6 of the blocks skipped: about -12 % (panel and requantisation stay; 75,806 of
    # 85,805 for the int16 stream at 9cbde14, 74,270 of 87,284 at a55427a before the
    # exact kernel built its panels inline)
    assert sum(r.mean_counts()) < 0.90 * sum(r0.mean_counts())


@pytest.mark.qemu
def test_pruned_3x2_tile_loop_on_qemu_bit_exact_with_partial_tiles(tmp_path):
    """The int8-range 3x2 tiles run the exact kernel's asm tile loop with each tile's kept
    count read in the loop (mt_ptiles_3x2_m2); the last 1-row panel (25 pixels) and the
    odd 19th channel take the C loop."""
    from microtile.measure.runner import run_model
    from microtile_models.zoo import single_op

    g = single_op("CONV_2D", shape=(1, 5, 5, 64), filters=19, kernel=(1, 1), activation="NONE")
    layers = approx.prunable_layers(g)
    assert [(L.mr, L.nr) for L in layers] == [(3, 2)]
    L = layers[0]
    rng = np.random.default_rng(4)
    keep = np.zeros((10, 16), dtype=bool)  # 10 channel tiles (the 10th: channel 18 alone) x 16 k-blocks
    # every entry of the reduction (kept count mod 8), an empty tile (the skip entry)
    for tile, count in enumerate((16, 6, 0, 3, 9, 5, 2, 12, 7, 15)):
        keep[tile, rng.choice(16, count, replace=False)] = True
    masks = {L.op.index: keep}
    pruned = tmp_path / "pruned.tflite"
    pruned.write_bytes(write_tflite(approx.prune_graph(g, layers, masks, mark=False)))
    r = run_model(pruned, "qemu", random=3, graph_hook=lambda gr: approx.mark_pruned(gr, {L.op.index}))
    assert "3x2 tile, int8" in r.compiled.model_c
    assert r.error is None and r.samples == 3 and r.mismatch_count == 0


# ---------------------------------------------------------------- depthwise (taps x 4 channels)

def test_depthwise_significance_is_per_tap_and_group_of_four_channels():
    g = build("op_dwconv_3x3_same_relu")  # 12x12x8, 3x3: 2 groups x 9 taps
    (layer,) = [L for L in approx.prunable_layers(g) if L.depthwise]
    assert (layer.n_tiles, layer.k_blocks, layer.kstep) == (2, 9, 1)
    x = np.random.default_rng(0).integers(-128, 128, (5, *g.tensor(g.inputs[0]).shape[1:]))
    mean, spread = approx.input_statistics(layer.op, g, x)
    assert mean.shape == spread.shape == (8, 9)
    # channel 3's centre tap sees every input pixel of channel 3, the corner taps miss the padding
    d = x[..., 3].astype(np.float64) - g.tensor(g.inputs[0]).zero_point
    np.testing.assert_allclose(mean[3, 4], d.mean())
    np.testing.assert_allclose(spread[3, 4], np.abs(d - d.mean()).mean())
    sig = approx.block_significance(layer, spread)
    assert sig.shape == (2, 9)
    np.testing.assert_allclose(sig.sum(axis=1), 1.0)
    keep = approx.keep_mask(sig, 0.5)
    w = approx.apply_mask(layer, keep)
    # a dropped unit zeroes one tap of all 4 channels of its group
    assert ((w.reshape(2, 4, 9) == 0).all(axis=1) == ~keep).all()
    assert approx.kept_blocks(layer, w) == int(keep.sum()) == 9
    delta = approx.bias_correction(layer, keep, mean)
    expected = ((layer.w2d.astype(np.float64) - w) * mean).sum(axis=1)
    np.testing.assert_array_equal(delta, np.rint(expected))


def test_depthwise_stream_holds_each_groups_kept_taps_per_column_class():
    # 4x4 input, 3x3 SAME stride 1: columns 0 | 1, 2 | 3 are 3 classes
    p = dict(h=4, w=4, kh=3, kw=3, sh=1, sw=1, ph=1, pw=1, oh=4, ow=4)
    assert approx.column_classes(p) == ([(1, 3), (0, 3), (0, 2)], [0, 1, 1, 2])
    w = np.zeros((4, 9), dtype=np.int8)
    w[0, 4], w[2, 0], w[3, 8] = 3, -5, 7           # kept taps: 0 (top-left), 4 (centre), 8
    ones = np.ones(4, dtype=np.int64)
    stream, cols, classes = approx.depthwise_pruned_stream(w, 10 * ones, 100 * ones, 200 * ones, 5 * ones, p, px=16)
    assert classes == 3 and cols.tolist() == [17, 21, 21, 25]
    s = stream.tolist()
    rows = 3 * 4
    assert s[0] == 17 + rows + 3 * (2 + 3 + 2) and s[1:5] == [20] * 4 and s[5:8] == [100, 200, 5]
    # class 0 (kx >= 1): taps 4, 8; class 1: 0, 4, 8; class 2 (kx <= 1): 0, 4;
    # per class the index of the first tap in row >= ky, ky = 0..3
    assert s[17:17 + rows] == [0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 7]
    taps = np.array(s[17 + rows:17 + rows + 21]).reshape(7, 3)
    assert taps[:, 0].tolist() == [(1 * 4 + 1) * 16, (2 * 4 + 2) * 16, 0, 80, 160, 0, 80]
    pair = lambda lo, hi: int(np.array([(lo & 0xFFFF) | ((hi & 0xFFFF) << 16)], np.uint32).view(np.int32)[0])
    assert taps[2, 1:].tolist() == [pair(0, -10), pair(0, 0)]       # tap 0: (2w[c0], 2w[c2]), (2w[c1], 2w[c3])
    assert taps[1, 1:].tolist() == [pair(0, 0), pair(0, 14)]        # tap 8
    assert len(s) == s[0] + 1 and s[-1] == 0                          # one read-ahead word


def _pruned_depthwise(name, fraction):
    g = build(name)
    layers = [L for L in approx.prunable_layers(g) if L.depthwise]
    rng = np.random.default_rng(2)
    masks = {L.op.index: approx.keep_mask(approx.block_significance(L, rng.random(L.w2d.shape)), fraction)
             for L in layers}
    return g, layers, masks


@pytest.mark.parametrize("name", ["op_dwconv_3x3_same_relu", "op_dwconv_3x3_s2_relu6", "op_dwconv_valid_mult2"])
def test_pruned_depthwise_native_bit_exact_with_the_pruned_reference_and_tflm(name, tmp_path):
    g, layers, masks = _pruned_depthwise(name, 0.45)
    assert len(layers) == 1
    native, pruned, x, ref = _native_bit_exact(g, layers, masks, tmp_path)
    assert "mt_depthwise_pruned_s8_opt(" in native.compiled.model_c
    assert not np.array_equal(run_reference(g, [x])[0], ref)  # pruning changed the network


@pytest.mark.qemu
def test_pruned_depthwise_on_qemu_bit_exact_and_fewer_instructions(tmp_path, monkeypatch):
    """The DSP tap loop (one asm block, TBB into 8 unrolled taps) on the Cortex-M4,
    against the channel-group kernel it skips taps of. (The planar int16 kernel the exact
    build picks for this 3x3 stride-1 layer is as fast as 3/4 of the taps skipped: 29,961
    against 29,885 instructions; the search's measured cost lines see that and leave
    such a layer exact.)"""
    from microtile.measure.runner import run_model
    from microtile.ops import depthwise_opt

    g, layers, masks = _pruned_depthwise("op_dwconv_3x3_same_relu", 0.75)
    exact, pruned = tmp_path / "exact.tflite", tmp_path / "pruned.tflite"
    exact.write_bytes(write_tflite(g))
    pruned.write_bytes(write_tflite(approx.prune_graph(g, layers, masks, mark=False)))
    indices = {L.op.index for L in layers}
    r = run_model(pruned, "qemu", random=2, graph_hook=lambda gr: approx.mark_pruned(gr, indices))
    assert "mt_depthwise_pruned_s8_opt(" in r.compiled.model_c
    assert r.error is None and r.samples == 2 and r.mismatch_count == 0
    monkeypatch.setattr(depthwise_opt, "PLANAR", False)
    r0 = run_model(exact, "qemu", random=1)
    # 3/4 of the taps skipped; the generic kernel's per-pixel work (requantisation, the
    # tap list's bounds) stays, and the exact kernel is specialised per shape
    assert sum(r.mean_counts()) < 0.9 * sum(r0.mean_counts())


@pytest.mark.parametrize("name", ["op_conv_3x3_same_relu", "op_dwconv_3x3_same_relu"])
def test_compensated_weights_cut_the_output_error_and_stay_in_the_pattern(name, tmp_path):
    """The kept weights refit by least squares on calibration rows: zero where the mask
    drops, int8, a smaller output error than the plain mask on those rows, and the
    network they make runs bit-exact natively (and is what `run --approx` rebuilds)."""
    from microtile.measure.approx_search import masks_from_records

    g = build(name)
    (layer,) = approx.prunable_layers(g)
    # correlated inputs (smooth in space, alike across channels), as real activations are:
    # on independent ones the exact weights are already the best fit
    rng = np.random.default_rng(0)
    _, h, w_, c = g.tensor(g.inputs[0]).shape
    smooth = np.repeat(np.repeat(rng.integers(-100, 100, (16, h // 2, w_ // 2, 1)), 2, axis=1), 2, axis=2)
    x = np.clip(smooth + rng.integers(-12, 12, (16, h, w_, c)), -128, 127)
    mean, spread = approx.input_statistics(layer.op, g, x)
    keep = approx.keep_mask(approx.block_significance(layer, spread), 0.4)
    rows = approx.sample_rows(layer, g, x)
    w = approx.compensated_weights(layer, keep, rows)
    assert w.dtype == np.int8 and not w[~approx.unit_mask(layer, keep)].any()
    dev = rows - rows.mean(axis=0)

    def error(wp):
        d = (layer.w2d.astype(np.float64) - wp).astype(np.float64)
        return np.einsum("pkc,ck->pc", dev, d) if layer.depthwise else dev @ d.T

    assert np.mean(error(w) ** 2) < 0.85 * np.mean(error(approx.apply_mask(layer, keep)) ** 2)
    i = layer.op.index
    delta = approx.bias_correction(layer, keep, mean, w)
    record = {"index": i, "keep": ["".join("1" if v else "0" for v in row) for row in keep],
              "bias_delta": delta.tolist(), "weights": w.reshape(-1).tolist()}
    _, masks, deltas, weights = masks_from_records(g, [record])
    assert np.array_equal(weights[i], w) and np.array_equal(masks[i], keep)
    native, pruned, _, _ = _native_bit_exact(g, [layer], masks, tmp_path, bias_delta=deltas, weights=weights)
    assert np.array_equal(approx.weight_matrix(next(o for o in pruned.operators if o.index == i), pruned), w)
    bad = dict(record, weights=(w.astype(np.int64) + (~approx.unit_mask(layer, keep))).reshape(-1).tolist())
    with pytest.raises(MicrotileError, match="zero outside its keep mask"):
        masks_from_records(g, [bad])
    weights_list = record["weights"]
    for broken in (dict(record, weights=["a"] * len(weights_list)), dict(record, weights=[0.9] * len(weights_list)),
                   dict(record, weights=None), dict(record, bias_delta="x"), dict(record, bias_delta=[2**40] * len(delta)),
                   dict(record, keep=[[1] * len(row) for row in record["keep"]]), 1):
        with pytest.raises(MicrotileError, match="--approx: layer"):  # one line, never a traceback
            masks_from_records(g, [broken])


def test_a_fused_units_count_is_shared_out_over_its_layers():
    """The RAM techniques run a 1x1 conv inside the depthwise after it, so the target
    counts both on the depthwise and ~5 instructions on the conv. The cost lines need
    each layer's share: by the counts of a build that ran them apart, else by MACs."""
    from microtile.codegen.model_source import compile_model
    from microtile.measure.approx_search import _per_layer, fused_units
    from microtile.passes.pipeline import RamConfig
    from microtile.targets.boards import load_board

    compiled = compile_model(build("ram_techniques"), "optimized", load_board("qemu"), ram=RamConfig(max_bands=32))
    ops, macs = compiled.device_ops, compiled.macs
    units = fused_units(compiled)
    assert sorted(s for m in units.values() for s in m) == list(range(len(ops)))
    assert any("fused into" in line for line in compiled.model_c.splitlines())
    fused = {h: m for h, m in units.items() if len(m) > 1}
    assert fused, "the ram_techniques model runs layers fused"
    counts = [1000.0 * (s + 1) if s in units else 5.0 for s in range(len(ops))]
    by_macs = _per_layer(compiled, counts, None)
    like = {op.index: 10.0 * (s + 1) for s, op in enumerate(ops)}
    by_like = _per_layer(compiled, counts, like)
    for h, members in fused.items():
        idx = [ops[s].index for s in members]
        for out in (by_macs, by_like):
            assert sum(out[i] for i in idx) == pytest.approx(sum(counts[s] for s in members))
        for s, i in zip(members, idx):
            assert by_macs[i] / by_macs[ops[h].index] == pytest.approx(max(1, macs[s]) / max(1, macs[h]))
            assert by_like[i] / by_like[ops[h].index] == pytest.approx(like[i] / like[ops[h].index])
    assert all(by_like[op.index] == counts[s] for s, op in enumerate(ops) if s in units and s not in fused)
