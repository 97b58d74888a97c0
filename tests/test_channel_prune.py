"""Issue 10, structured channel pruning: the group finder, the smaller network against
the zeroed-consumer reference, the .tflite round trip and the least-squares refit."""
from __future__ import annotations

import numpy as np
import pytest

from microtile.check.reference import run_reference
from microtile.errors import MicrotileError
from microtile.importer.tflite_format import load_tflite, write_tflite
from microtile.measure.approx_search import all_values
from microtile.passes import approx, channel_prune
from microtile_models.zoo import build


@pytest.fixture(scope="module")
def dscnn():
    return build("ds_cnn_kws")


@pytest.fixture(scope="module")
def searched(dscnn):
    """One cross-fitted ChannelSearch on 12 random inputs labelled with the exact
    network's own Top-1 (its construction fits each group three times: the slow part)."""
    from microtile.measure.approx_search import ChannelSearch

    x = _inputs(dscnn, 12, seed=5)
    values = all_values(dscnn, x)
    y = values[dscnn.outputs[0]].reshape(12, -1).argmax(axis=1)
    chs = ChannelSearch(dscnn, x, y, values, log=lambda m: None)
    cost = {op.index: 1000.0 for op in dscnn.operators}
    chs.set_cost((cost, cost))
    return x, values, chs


def _inputs(g, n=4, seed=0):
    t = g.tensor(g.inputs[0])
    return np.random.default_rng(seed).integers(-128, 128, (n, *t.shape[1:])).astype(np.int8)


def test_groups_of_the_ds_cnn(dscnn):
    groups = channel_prune.find_groups(dscnn)
    ops = {o.index: o.opcode for o in dscnn.operators}
    # conv0 -> dw -> pw, three pw -> dw -> pw, the last pw -> pool -> reshape -> FC; not the FC (graph output path)
    assert [g.producer for g in groups] == [0, 2, 4, 6, 8]
    assert [g.consumers for g in groups] == [[2], [4], [6], [8], [11]]
    assert [[ops[i] for i in g.chain] for g in groups[:4]] == [["DEPTHWISE_CONV_2D"]] * 4
    assert [ops[i] for i in groups[4].chain] == ["AVERAGE_POOL_2D", "RESHAPE"]
    assert all(g.channels == 64 for g in groups)
    # a single conv has no consumer: no group
    assert channel_prune.find_groups(build("op_conv_1x1")) == []


def _zeroed(g, groups, removed):
    """The exact network with the removed channels' consumer weights zeroed."""
    weights = {}
    for grp in groups:
        r = removed.get(grp.producer)
        if r is None:
            continue
        for c in grp.consumers:
            op = next(o for o in g.operators if o.index == c)
            w = np.array(g.tensor(op.inputs[1]).data)
            w[..., r] = 0  # OHWI and FC [out, in]: the input channel is the last axis
            weights[c] = w
    return channel_prune.prune_channels(g, [], {}, weights=weights), weights


def test_removed_network_equals_the_zeroed_reference_and_round_trips(dscnn, tmp_path):
    groups = channel_prune.find_groups(dscnn)
    rng = np.random.default_rng(3)
    removed = {grp.producer: np.sort(rng.permutation(64)[:12]) for grp in groups}
    small = channel_prune.prune_channels(dscnn, groups, removed)
    assert small.tensor(small.operators[2].inputs[1]).shape == (52, 1, 1, 52)
    assert small.tensor(small.operators[1].inputs[1]).quant.scale.size == 52
    assert dscnn.tensor(dscnn.operators[2].inputs[1]).shape == (64, 1, 1, 64)  # the input graph is untouched
    zeroed, _ = _zeroed(dscnn, groups, removed)
    path = tmp_path / "small.tflite"
    path.write_bytes(write_tflite(small))
    loaded = load_tflite(path)
    x = _inputs(dscnn)
    a = all_values(small, x)[small.outputs[0]]
    b = all_values(zeroed, x)[zeroed.outputs[0]]
    c = all_values(loaded, x)[loaded.outputs[0]]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, all_values(dscnn, x)[dscnn.outputs[0]])  # the network did change
    one = run_reference(loaded, [x[:1]])[0]
    np.testing.assert_array_equal(one.reshape(-1), a[0].reshape(-1))


def test_bad_removed_channels_are_refused(dscnn):
    grp = channel_prune.find_groups(dscnn)[0]
    for bad in ([64], [-1], [1, 1], list(range(64)), [0.5]):
        with pytest.raises(MicrotileError, match="removed channels"):
            channel_prune.prune_channels(dscnn, [grp], {grp.producer: np.array(bad)})


def test_refit_reduces_the_calibration_reconstruction_error(dscnn):
    groups = channel_prune.find_groups(dscnn)
    x = _inputs(dscnn, 6)
    values = all_values(dscnn, x)
    for grp in (groups[1], groups[4]):  # a pointwise and the FC consumer
        op = next(o for o in dscnn.operators if o.index == grp.consumers[0])
        fit = channel_prune.consumer_fit(dscnn, op, values[op.inputs[0]])
        order = channel_prune.elimination_order([fit], 64, 8)
        assert len(set(order)) == 8
        w, delta = channel_prune.refit(fit, order)
        assert not w[:, fit.positions[order].reshape(-1)].any()
        dw = fit.w2d.astype(np.float64)
        plain = dw.copy()
        plain[:, fit.positions[order].reshape(-1)] = 0
        err = lambda v: np.einsum("nk,kj,nj->", dw - v, fit.gram, dw - v)
        assert err(w.astype(np.float64)) < 0.9 * err(plain)
        # the greedy order is no worse than removing the first 8 channels
        assert channel_prune.reconstruction_error([fit], np.arange(64)[~np.isin(np.arange(64), order)]) <= \
            channel_prune.reconstruction_error([fit], np.arange(8, 64))


def test_channel_search_records_rebuild_the_same_network(dscnn, searched, tmp_path):
    """Greedy channel steps on a fake cost (each layer 1000 cycles); the JSON records
    rebuild, through `run --approx`'s path, exactly the network the search evaluated."""
    import json

    from microtile.measure.approx_search import channels_from_records, pruned_model_file

    x, values, chs = searched
    assert chs.predicted({2: 16})["est_cycles"] == pytest.approx(13000 - 3 * 1000 * 0.25)
    points, levels = chs.greedy(100.0)  # any loss allowed: every group to its last step
    assert levels == {0: 32, 2: 32, 4: 32, 6: 32, 8: 32} and all(p["within_budget"] for p in points)
    records = chs.records(levels)
    json.dumps(records)
    small = chs.build(levels)
    rebuilt = channels_from_records(dscnn, json.loads(json.dumps(records)))
    for a, b in zip(small.tensors, rebuilt.tensors):
        assert a.shape == b.shape and (a.data is None or np.array_equal(a.data, b.data))
    model = tmp_path / "m.tflite"
    model.write_bytes(write_tflite(dscnn))
    (tmp_path / "c.json").write_text(json.dumps({"chosen": {"layers": [], "channels": records}}))
    path, pruned = pruned_model_file(model, tmp_path / "c.json", tmp_path / "out")
    loaded = load_tflite(path)
    assert pruned == set() and loaded.tensor(loaded.operators[2].inputs[1]).shape == (32, 1, 1, 32)
    np.testing.assert_array_equal(all_values(loaded, x)[loaded.outputs[0]], all_values(small, x)[small.outputs[0]])
    bad = json.loads(json.dumps(records))
    bad[0]["consumers"][0]["weights"][records[0]["removed"][0]] = 5  # a removed input channel (1x1: k = c)
    with pytest.raises(MicrotileError, match="--approx: channel group 0"):
        channels_from_records(dscnn, bad)
    with pytest.raises(MicrotileError, match="not a channel group"):
        channels_from_records(dscnn, [{"producer": 11, "removed": [0]}])


def test_channel_search_judges_each_refit_on_the_half_it_was_not_fitted_on(dscnn, searched):
    """Cross-fitting: fold k is judged on one half of the calibration inputs with consumer
    refits fitted on the other half; the reported network is refit on all of them. The
    out-of-fold output error is what the in-sample error hides (the refit fits its noise)."""
    x, values, chs = searched
    (a, _, _), (b, _, _) = chs.folds
    fits_a, fits_b = chs.fold_fits
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(12)) and not set(a) & set(b)
    conv = next(op for op in dscnn.operators if op.index == 2)
    for idx, fits, other in ((a, fits_a, b), (b, fits_b, a)):
        want = channel_prune.consumer_fit(dscnn, conv, values[conv.inputs[0]][other])
        np.testing.assert_allclose(fits.fits[0][0].gram, want.gram)
        assert not np.allclose(fits.fits[0][0].gram, chs.full.fits[0][0].gram)
    levels = {0: 16, 2: 16}
    oof = chs.evaluate(levels)
    small = chs.build(levels)
    in_sample = np.mean((all_values(small, x)[small.outputs[0]].astype(np.float64) - chs.exact_out) ** 2)
    assert oof["mse"] > in_sample > 0
    # newly wrong counts the inputs the exact network gets right and the pruned one wrong
    assert oof["newly_wrong"] >= chs.exact_top1 - oof["top1"] - 1e-12 and oof["newly_wrong"] <= chs.exact_top1


def test_channel_search_keeps_a_step_only_within_the_newly_wrong_budget(searched):
    _, _, chs = searched
    points, levels = chs.greedy(0.0)
    assert all((p["oof_newly_wrong"] == 0) == p["within_budget"] for p in points)
    assert any(not p["within_budget"] for p in points)  # random data: some step breaks agreement
    kept = [p for p in points if p["within_budget"]][-1]
    assert kept["channels"] == {str(k): v for k, v in levels.items()}
