"""`microtile approx`: a design-space exploration of per-layer pruning (issue 10).

1. The first N labelled inputs are the calibration split, the rest the held-out split;
   the search reads only the calibration split. The calibration split is cut into two
   interleaved halves for cross-fitting: everything fitted (removal orders, refit
   weights, masks, bias corrections) is fitted on one half and judged on the other, and
   the reverse. A step is kept while the fraction of calibration inputs that the exact
   network gets right and the cross-fitted one gets wrong ("newly wrong") is within the
   budget. (Judged in-sample by net Top-1, KWS kept 0.5 pp of calibration Top-1 and lost
   2.4 pp held out: docs/approx.md.)
   The network built and reported is fitted on the whole calibration split.
2. Structured channel pruning (passes/channel_prune.py, ChannelSearch): greedy
   channel-count steps of 4 per channel group, each consumer refit by least squares;
   the smaller network runs on the normal kernels. Steps 3-6 then run on that network.
3. Significance of every (channel tile, k-block) unit from the calibration activations,
   and the bias correction of the dropped units (passes/approx.py).
4. Cost: the exact optimised build and two pruned probe builds are measured on the
   target (instructions) and the timing model (estimated cycles); per layer, the pruned
   kernel's count is linear in its kept k-blocks, fitted through the two probes (a
   layer the RAM techniques fused into the next takes its share of the fused count).
5. Sensitivity: each layer alone pruned at each fraction, its out-of-fold output change
   with the numpy reference executor (all inputs in one batched pass, the layers before
   the pruned one taken from a cache).
6. Greedy search: repeatedly take the step (one layer one fraction further) with the
   most predicted cycles saved per unit of sensitivity, evaluate the combined network
   out of fold, keep it while within the budget, else freeze that layer. Every
   evaluated point is kept: the Pareto front of predicted cycles against out-of-fold
   calibration Top-1.
7. The fastest point within the budget is the chosen one; exact and chosen are then
   reported on the held-out split (reference executor), and the chosen pruned build runs
   on the target over the held-out inputs, checked against TFLM running the pruned
   .tflite (and the numpy reference of the pruned network checked against TFLM too).
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from microtile.errors import MicrotileError
from microtile.importer.ir import Graph
from microtile.importer.tflite_format import load_tflite, write_tflite
from microtile.passes import approx, channel_prune

# per layer: 0.05 steps up to 0.5 (a pointwise conv already loses calibration Top-1 at
# 0.2 on KWS, and breaks even in cycles at ~0.12), then 0.1 steps to 0.9
FRACTIONS = tuple(round(0.05 * i, 2) for i in range(10)) + tuple(round(0.1 * i, 1) for i in range(5, 10))
PROBES = (0.2, 0.8)  # two grid fractions: the cost line of each layer


# ---------------------------------------------------------------- batched reference

def batched(graph: Graph, batch: int) -> Graph:
    """The graph with every activation's leading (batch) dimension of 1 set to `batch`:
    the reference kernels then run all inputs in one call."""
    out = copy.copy(graph)
    out.tensors = []
    for t in graph.tensors:
        if t.data is None and len(t.shape) > 0 and t.shape[0] == 1:
            t = copy.copy(t)
            t.shape = (batch, *t.shape[1:])
        out.tensors.append(t)
    return out


def all_values(graph: Graph, x: np.ndarray, start: int = 0, base: dict | None = None) -> dict:
    """Tensor values of the batched graph on inputs x [B, ...] (the one model input),
    running operators from position `start` on, the earlier ones read from `base`."""
    from microtile.check.reference import run_operators

    g = batched(graph, x.shape[0])
    values = dict(base) if base is not None else {g.inputs[0]: x.reshape(g.tensor(g.inputs[0]).shape)}
    return run_operators(g, g.operators[start:], values)


def check_batchable(graph: Graph, x: np.ndarray) -> None:
    """The batched pass must equal the one-input reference (it does for NHWC models
    whose reshapes keep the batch axis); refuse the model otherwise."""
    from microtile.check.reference import run_reference

    b = all_values(graph, x[:2])[graph.outputs[0]]
    for i in range(min(2, x.shape[0])):
        one = run_reference(graph, [x[i:i + 1].reshape(graph.tensor(graph.inputs[0]).shape)])[0]
        if not np.array_equal(b[i].reshape(-1), one.reshape(-1)):
            raise MicrotileError(f"model {graph.name}: its operators do not run batched in the reference "
                                 "executor; approx needs a batch-1 NHWC model with one input")


def top1(values: dict, graph: Graph, labels: np.ndarray) -> float:
    out = values[graph.outputs[0]]
    return float(np.mean(out.reshape(out.shape[0], -1).argmax(axis=1) == labels))


# ---------------------------------------------------------------- the search

def halves(count: int) -> list[np.ndarray]:
    """The two folds of the calibration split, interleaved so that a label-sorted split
    stays balanced."""
    return [np.arange(0, count, 2), np.arange(1, count, 2)]


def _rows(values: dict, idx: np.ndarray) -> dict:
    """The values of the inputs idx (every activation is batched on axis 0)."""
    return {k: v[idx] for k, v in values.items()}


def out_of_fold(x: np.ndarray, y: np.ndarray, exact_out: np.ndarray, exact_right: np.ndarray, pos: dict,
                folds: list, levels: dict, changed: int | None = None, bases: list | None = None) -> dict:
    """A point judged out of fold. folds: (inputs idx, build(levels) -> the network fitted
    on the other inputs, values of the unchanged network on idx). Returns Top-1, the
    newly wrong fraction (inputs the exact network gets right and this one wrong, which
    ignores lucky fixes) and the mean squared output change over all the inputs, and
    each fold's values; with `changed` and per-fold values of a point that differs only
    there, each fold runs from that layer on."""
    pred = np.empty(x.shape[0], dtype=np.int64)
    out_all = np.empty_like(exact_out)
    values = []
    for k, (idx, build, base) in enumerate(folds):
        g = build(levels)
        v = all_values(g, x[idx]) if changed is None else \
            all_values(g, x[idx], pos[changed], base if bases is None else bases[k])
        out = v[g.outputs[0]]
        out_all[idx] = out
        pred[idx] = out.reshape(len(idx), -1).argmax(axis=1)
        values.append(v)
    return {"top1": float(np.mean(pred == y)), "newly_wrong": float(np.mean(exact_right & (pred != y))),
            "mse": float(np.mean((out_all - exact_out) ** 2)), "values": values}


def _accept(result: dict, budget_pp: float) -> bool:
    return result["newly_wrong"] * 100 <= budget_pp + 1e-9


def _point(cost: dict, result: dict, accepted: bool, fractions: dict | None = None,
           channels: dict | None = None) -> dict:
    """One evaluated point of the front, as the JSON's `pareto` list holds it."""
    return {"channels": channels or {}, "fractions": fractions or {}, "oof_top1": result["top1"],
            "oof_newly_wrong": result["newly_wrong"], "output_mse": result["mse"],
            "instructions": round(cost["instructions"]), "est_cycles": round(cost["est_cycles"]),
            "within_budget": accepted}


def greedy_walk(search, levels: dict, start: dict, budget_pp: float, sens: dict,
                next_step: Callable[[dict, int], object], name: Callable[[int, object], str]) -> tuple[list, dict]:
    """The walk both searches take. From `levels` (out-of-fold figures `start`), take the
    step (one layer or group one level further, next_step; None: none left) with the
    most predicted est. cycles saved per unit of sensitivity, evaluate the combined
    network out of fold, keep it within the budget, else freeze that layer. Returns
    every evaluated point and the kept levels."""
    bases = start["values"]
    points = [search.point(levels, start, accepted=_accept(start, budget_pp))]
    frozen: set[int] = set()
    while True:
        best, best_score = None, -math.inf
        now = search.predicted(levels)["est_cycles"]
        for i, level in levels.items():
            nxt = None if i in frozen else next_step(levels, i)
            if nxt is None:
                continue
            saved = now - search.predicted({**levels, i: nxt})["est_cycles"]
            score = saved / (max(sens[i][nxt] - sens[i][level], 0.0) + 1e-6)
            if score > best_score:
                best, best_score = (i, nxt), score
        if best is None:
            return points, levels
        i, nxt = best
        trial = {**levels, i: nxt}
        res = search.evaluate(trial, i, bases)
        ok = _accept(res, budget_pp)
        points.append(search.point(trial, res, accepted=ok))
        search.log(f"{name(i, nxt)}: out-of-fold Top-1 {res['top1']:.4f}, newly wrong {res['newly_wrong']:.4f}, "
                   f"predicted {points[-1]['instructions']:,.0f} instructions "
                   f"{'kept' if ok else 'over budget: frozen'}")
        if ok:
            levels, bases = trial, res["values"]
        else:
            frozen.add(i)


class _MaskFits:
    """Each prunable layer's k-block significance, keep masks, refit kept weights and
    input means, from the activations of one set of calibration inputs."""

    def __init__(self, graph: Graph, layers: list, values: dict):
        self.graph, self.layers = graph, layers
        self.mean, self.masks, self.weights, self.kept = {}, {}, {}, {}
        for L in layers:
            i, x = L.op.index, values[L.op.inputs[0]]
            self.mean[i], spread = approx.input_statistics(L.op, graph, x)
            self.masks[i] = {f: approx.keep_mask(approx.block_significance(L, spread), f) for f in FRACTIONS}
            # the kept weights refit to the exact outputs on these inputs
            rows = approx.sample_rows(L, graph, x)
            self.weights[i] = {f: approx.compensated_weights(L, m, rows) for f, m in self.masks[i].items() if f > 0}
            self.kept[i] = {f: approx.kept_blocks(L, self.weights[i][f] if f > 0 else L.w2d) for f in FRACTIONS}

    def prune_at(self, levels: dict[int, float], mark: bool = True) -> Graph:
        levels = {i: f for i, f in levels.items() if f > 0}
        masks = {i: self.masks[i][f] for i, f in levels.items()}
        weights = {i: self.weights[i][f] for i, f in levels.items()}
        return approx.prune_graph(self.graph, self.layers, masks, mark=mark, bias_delta=self.bias_deltas(levels),
                                  weights=weights)

    def bias_deltas(self, levels: dict[int, float]) -> dict[int, np.ndarray]:
        by_index = {L.op.index: L for L in self.layers}
        return {i: approx.bias_correction(by_index[i], self.masks[i][f], self.mean[i], self.weights[i][f])
                for i, f in levels.items() if f > 0}


class Search:
    """Greedy per-layer k-block / tap fractions on the calibration split, cross-fitted
    like ChannelSearch: fold k's masks and refit weights come from the other half's
    activations, of fold k's own base network (`fold_graphs`: the channel search's
    fold networks, else this graph). A step is kept while the newly wrong fraction
    against the original exact network (`exact`: its outputs and correctness on the
    split, else this graph's) is within the budget. The network that is built and
    reported is fitted on the whole split."""

    def __init__(self, graph: Graph, board, x_cal: np.ndarray, y_cal: np.ndarray,
                 log: Callable[[str], None] = print, fold_graphs: list[Graph] | None = None,
                 exact: tuple[np.ndarray, np.ndarray] | None = None):
        self.graph, self.x, self.y, self.log = graph, x_cal, y_cal, log
        self.layers = approx.prunable_layers(graph, board)
        if not self.layers:
            raise MicrotileError(f"model {graph.name} has no layer the pruned kernels run "
                                 "(CONV_2D, FULLY_CONNECTED, DEPTHWISE_CONV_2D)")
        check_batchable(graph, x_cal)
        self.pos = {op.index: i for i, op in enumerate(graph.operators)}
        values = all_values(graph, x_cal)
        own = values[graph.outputs[0]].astype(np.float64)
        self.exact_out, self.exact_right = exact if exact is not None else \
            (own, own.reshape(own.shape[0], -1).argmax(axis=1) == y_cal)
        self.full = _MaskFits(graph, self.layers, values)
        self.kept = self.full.kept
        self.folds = []
        parts = halves(x_cal.shape[0])
        for k, g in enumerate(fold_graphs or [graph] * len(parts)):
            v = values if g is graph else all_values(g, x_cal)
            fits = _MaskFits(g, approx.prunable_layers(g, board), _rows(v, parts[1 - k]))
            self.folds.append((parts[k], fits.prune_at, _rows(v, parts[k])))
        self.cost = None

    # -- cost
    def calibrate_cost(self, measure: Callable[..., tuple[dict, dict]], exact=None) -> None:
        """measure(graph, pruned op indices, like=exact) -> (instructions, est_cycles) per
        device layer, by op index (_device_measure). The exact build (given, or measured)
        and two probes fix a line per layer and count."""
        exact = exact if exact is not None else measure(self.graph, set())
        probes = []
        for f in PROBES:
            g = self.prune_at({L.op.index: f for L in self.layers}, mark=False)
            probes.append((f, measure(g, {L.op.index for L in self.layers}, like=exact)))
        self.cost = {"exact": exact, "lines": {}}
        for L in self.layers:
            i = L.op.index
            (f1, (ins1, cyc1)), (f2, (ins2, cyc2)) = probes
            k1, k2 = self.kept[i][f1], self.kept[i][f2]
            dk = (k1 - k2) or 1
            self.cost["lines"][i] = {
                "instructions": ((ins1[i] - ins2[i]) / dk, ins2[i] - (ins1[i] - ins2[i]) / dk * k2),
                "est_cycles": ((cyc1[i] - cyc2[i]) / dk, cyc2[i] - (cyc1[i] - cyc2[i]) / dk * k2)}

    def predicted(self, levels: dict[int, float]) -> dict:
        """Instructions and estimated cycles of a point: measured exact layers, the
        fitted line for the pruned ones."""
        ins, cyc = self.cost["exact"]
        total = {"instructions": float(sum(ins.values())), "est_cycles": float(sum(cyc.values()))}
        for i, f in levels.items():
            if f > 0:
                for key, exact in (("instructions", ins), ("est_cycles", cyc)):
                    slope, base = self.cost["lines"][i][key]
                    total[key] += slope * self.kept[i][f] + base - exact[i]
        return total

    # -- accuracy
    def prune_at(self, levels: dict[int, float], mark: bool = True) -> Graph:
        """The pruned network, fitted on the whole calibration split."""
        return self.full.prune_at(levels, mark)

    def evaluate(self, levels: dict[int, float], changed: int | None = None, bases: list | None = None) -> dict:
        return out_of_fold(self.x, self.y, self.exact_out, self.exact_right, self.pos, self.folds, levels,
                           changed, bases)

    def sensitivity(self) -> dict[int, dict[float, float]]:
        sens = {}
        for L in self.layers:
            i = L.op.index
            sens[i] = {0.0: 0.0}
            for f in FRACTIONS[1:]:
                sens[i][f] = self.evaluate({i: f}, i)["mse"]
            self.log(f"sensitivity: layer {i} {L.op.opcode}: " +
                     " ".join(f"{f:g}:{sens[i][f]:.3g}" for f in FRACTIONS[1:]))
        return sens

    def greedy(self, budget_pp: float) -> list[dict]:
        """The evaluated points; a layer is frozen at its first step over the budget."""
        def next_step(levels: dict, i: int) -> float | None:
            # the next fraction that saves cycles: a lightly pruned layer can cost more
            # than the exact kernel (one ADD per kept block, int8 instead of int16 weights)
            now = self.predicted(levels)["est_cycles"]
            for nxt in FRACTIONS[FRACTIONS.index(levels[i]) + 1:]:
                if self.predicted({**levels, i: nxt})["est_cycles"] < now:
                    return nxt
            return None

        levels = {L.op.index: 0.0 for L in self.layers}
        return greedy_walk(self, levels, self.evaluate(levels), budget_pp, self.sensitivity(), next_step,
                           lambda i, f: f"layer {i} -> {f:g}")[0]

    def point(self, levels: dict[int, float], result: dict, accepted: bool) -> dict:
        return _point(self.predicted(levels), result, accepted, fractions={str(i): f for i, f in levels.items()})

    def layer_records(self, levels: dict[int, float]) -> list[dict]:
        """What `run --approx` needs to rebuild the pruned network: per pruned layer its
        keep mask, one '0'/'1' string per channel tile."""
        records = []
        for L in self.layers:
            f = levels.get(L.op.index, 0.0)
            if f <= 0:
                continue
            m = self.full.masks[L.op.index][f]
            tile = "tap x 4 channels" if L.depthwise else f"{L.mr}x{L.nr}"
            records.append({"index": L.op.index, "op": L.op.opcode, "fraction": f, "tile": tile,
                            "k_blocks": L.k_blocks, "kept_blocks": self.kept[L.op.index][f],
                            "blocks": int(m.size), "keep": ["".join("1" if v else "0" for v in row) for row in m],
                            "bias_delta": self.full.bias_deltas({L.op.index: f})[L.op.index].tolist(),
                            "weights": self.full.weights[L.op.index][f].reshape(-1).tolist()})
        return records


# ---------------------------------------------------------------- channel pruning moves

CHANNEL_STEP = 4           # whole depthwise groups of 4 channels, even pointwise tiles
MAX_CHANNEL_FRACTION = 0.5


class _GroupFits:
    """Each channel group's consumer fits, removal order and refits, from the exact
    network's activations on one set of calibration inputs."""

    def __init__(self, graph: Graph, groups, values: dict):
        ops = {op.index: op for op in graph.operators}
        self.graph, self.groups = graph, groups
        self.fits, self.order = {}, {}
        for g in groups:
            fits = [channel_prune.consumer_fit(graph, ops[c], values[ops[c].inputs[0]]) for c in g.consumers]
            self.fits[g.producer] = fits
            self.order[g.producer] = channel_prune.elimination_order(fits, g.channels, _channel_top(g))
        self._refit: dict = {}

    def removed(self, levels: dict[int, int]) -> dict[int, np.ndarray]:
        return {p: np.sort(np.asarray(self.order[p][:n], dtype=np.int64)) for p, n in levels.items() if n > 0}

    def refits(self, p: int, n: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        if (p, n) not in self._refit:
            r = np.sort(np.asarray(self.order[p][:n], dtype=np.int64))
            self._refit[p, n] = {f.op: channel_prune.refit(f, r) for f in self.fits[p]}
        return self._refit[p, n]

    def build(self, levels: dict[int, int]) -> Graph:
        if not any(levels.values()):  # the exact network itself (Search then reuses its values)
            return self.graph
        weights, deltas = {}, {}
        for p, n in levels.items():
            if n > 0:
                for c, (w, d) in self.refits(p, n).items():
                    weights[c], deltas[c] = w, d
        return channel_prune.prune_channels(self.graph, self.groups, self.removed(levels), weights, deltas)


def _channel_top(group) -> int:
    return int(group.channels * MAX_CHANNEL_FRACTION) // CHANNEL_STEP * CHANNEL_STEP


class ChannelSearch:
    """Greedy channel-count steps per group (passes/channel_prune.py) on the calibration
    split, cross-fitted: the consumers' least-squares refits fitted on one half of the
    split are judged on the other half, and the reverse, so a step is accepted on
    inputs its refit never saw. (Judged on the inputs it was fitted on, KWS kept 0.5 pp
    of calibration Top-1 and lost 2.4 pp held out.) A step is kept while the fraction of
    calibration inputs the exact network gets right and the cross-fitted one gets wrong
    ("newly wrong", which ignores lucky fixes) is within the budget. The network that is
    built and reported is refit on the whole split. Cost: the exact build's measured
    per-layer counts scaled by each layer's remaining MACs."""

    def __init__(self, graph: Graph, x_cal: np.ndarray, y_cal: np.ndarray, exact_values: dict,
                 log: Callable[[str], None] = print):
        self.graph, self.x, self.y, self.log = graph, x_cal, y_cal, log
        self.groups = channel_prune.find_groups(graph)
        self.pos = {op.index: i for i, op in enumerate(graph.operators)}
        self.exact_top1 = top1(exact_values, graph, y_cal)
        self.exact_out = exact_values[graph.outputs[0]].astype(np.float64)
        b = x_cal.shape[0]
        self.exact_right = self.exact_out.reshape(b, -1).argmax(axis=1) == y_cal
        # fold k is judged on inputs parts[k] with the refits of the other half
        parts = halves(b)
        self.fold_fits = [_GroupFits(graph, self.groups, _rows(exact_values, parts[1 - k])) for k in range(2)]
        self.folds = [(parts[k], self.fold_fits[k].build, _rows(exact_values, parts[k])) for k in range(2)]
        self.full = _GroupFits(graph, self.groups, exact_values)
        self.counts = {g.producer: list(range(0, _channel_top(g) + 1, CHANNEL_STEP)) for g in self.groups}
        for g in self.groups:
            log(f"channel group {g.producer} -> {g.consumers}: {g.channels} channels, removal order "
                f"{self.full.order[g.producer][:8]} ...")
        self.cost = None

    def removed(self, levels: dict[int, int]) -> dict[int, np.ndarray]:
        return self.full.removed(levels)

    def build(self, levels: dict[int, int]) -> Graph:
        """The channel-pruned network, refit on the whole calibration split."""
        return self.full.build(levels)

    def set_cost(self, exact: tuple[dict, dict]) -> None:
        self.cost = exact

    def predicted(self, levels: dict[int, int]) -> dict:
        ins, cyc = self.cost
        ratio = {i: 1.0 for i in ins}
        for g in self.groups:
            r = 1 - levels.get(g.producer, 0) / g.channels
            for i in g.ops:
                if i in ratio:
                    ratio[i] *= r
        return {"instructions": float(sum(ins[i] * ratio[i] for i in ins)),
                "est_cycles": float(sum(cyc[i] * ratio[i] for i in cyc))}

    def evaluate(self, levels: dict[int, int], changed: int | None = None, bases: list | None = None) -> dict:
        return out_of_fold(self.x, self.y, self.exact_out, self.exact_right, self.pos, self.folds, levels,
                           changed, bases)

    def fold_graphs(self, levels: dict[int, int]) -> list[Graph]:
        """Each fold's channel-pruned network (refit on the other half): the mask search's
        fold bases."""
        return [fits.build(levels) for fits in self.fold_fits]

    def point(self, levels: dict[int, int], result: dict, accepted: bool) -> dict:
        return _point(self.predicted(levels), result, accepted, channels={str(p): n for p, n in levels.items()})

    def greedy(self, budget_pp: float) -> tuple[list[dict], dict[int, int]]:
        """(evaluated points, the accepted channel levels)."""
        sens = {}
        for g in self.groups:
            p = g.producer
            sens[p] = {0: 0.0}
            for n in self.counts[p][1:]:
                sens[p][n] = self.evaluate({p: n}, p)["mse"]
            self.log(f"sensitivity: channel group {p}: " + " ".join(f"-{n}:{sens[p][n]:.3g}" for n in self.counts[p][1:]))

        def next_step(levels: dict, p: int) -> int | None:
            steps = self.counts[p]
            return None if levels[p] == steps[-1] else steps[steps.index(levels[p]) + 1]

        start = {"top1": self.exact_top1, "newly_wrong": 0.0, "mse": 0.0, "values": None}
        return greedy_walk(self, {g.producer: 0 for g in self.groups}, start, budget_pp, sens, next_step,
                           lambda p, n: f"channel group {p} -> -{n}")

    def records(self, levels: dict[int, int]) -> list[dict]:
        """What `run --approx` needs to rebuild the smaller network: per group the removed
        channels and each consumer's refit weights (original shape) and bias delta."""
        out = []
        for g in self.groups:
            n = levels.get(g.producer, 0)
            if n <= 0:
                continue
            out.append({"producer": g.producer, "channels": g.channels,
                        "removed": self.removed({g.producer: n})[g.producer].tolist(),
                        "consumers": [{"index": c, "weights": w.reshape(-1).tolist(), "bias_delta": d.tolist()}
                                      for c, (w, d) in self.full.refits(g.producer, n).items()]})
        return out


def channels_from_records(graph: Graph, records) -> Graph:
    """The smaller network of a JSON's `channels` records (ChannelSearch.records)."""
    groups = {g.producer: g for g in channel_prune.find_groups(graph)}
    ops = {op.index: op for op in graph.operators}
    hint = "use the JSON `microtile approx` wrote for this model"
    if not isinstance(records, list):
        raise MicrotileError(f"--approx: `channels` must be a list; {hint}")
    removed, weights, deltas = {}, {}, {}
    for r in records:
        g = groups.get(r.get("producer")) if isinstance(r, dict) else None
        if g is None:
            raise MicrotileError(f"--approx: channel record {r.get('producer') if isinstance(r, dict) else r!r} "
                                 f"is not a channel group of {graph.name}; {hint}")
        rem = r.get("removed")
        if not isinstance(rem, list) or not all(type(v) is int for v in rem):
            raise MicrotileError(f"--approx: channel group {g.producer} removed must be a list of integers; {hint}")
        removed[g.producer] = channel_prune.check_removed(g, np.asarray(rem, dtype=np.int64))
        cons = r.get("consumers", [])
        if not isinstance(cons, list):
            raise MicrotileError(f"--approx: channel group {g.producer} consumers must be a list; {hint}")
        for c in cons:
            i = c.get("index") if isinstance(c, dict) else None
            if i not in g.consumers:
                raise MicrotileError(f"--approx: channel group {g.producer}: {i!r} is not one of its consumers; {hint}")
            w0 = approx.weight_matrix(ops[i], graph)
            w, d = c.get("weights"), c.get("bias_delta")
            if not (isinstance(w, list) and len(w) == w0.size and all(type(v) is int and -128 <= v <= 127 for v in w)
                    and isinstance(d, list) and len(d) == w0.shape[0]
                    and all(type(v) is int and -2**31 <= v < 2**31 for v in d)):
                raise MicrotileError(f"--approx: channel group {g.producer} consumer {i}: weights must be "
                                     f"{w0.size} int8 and bias_delta {w0.shape[0]} int32 integers; {hint}")
            w = np.asarray(w, dtype=np.int64).reshape(w0.shape)
            c_in = int(graph.tensor(ops[i].inputs[0]).shape[-1])
            if np.any(w.reshape(w0.shape[0], -1, c_in)[:, :, removed[g.producer]]):
                raise MicrotileError(f"--approx: channel group {g.producer} consumer {i}: weights are not zero at "
                                     f"the removed channels; {hint}")
            weights[i], deltas[i] = w.astype(np.int8), np.asarray(d, dtype=np.int64)
    return channel_prune.prune_channels(graph, list(groups.values()), removed, weights, deltas)


def mark_pareto(points: list[dict]) -> None:
    """pareto = no other point is at least as fast and at least as accurate, and better in one."""
    for p in points:
        p["pareto"] = not any(
            q is not p and q["est_cycles"] <= p["est_cycles"] and q["oof_top1"] >= p["oof_top1"]
            and (q["est_cycles"] < p["est_cycles"] or q["oof_top1"] > p["oof_top1"])
            for q in points)


def masks_from_records(graph: Graph, records: list[dict], board=None) -> tuple[list, dict, dict, dict]:
    """(layers, keep masks, bias deltas, refit weights) of a JSON's layer records."""
    layers = approx.prunable_layers(graph, board)
    by_index = {L.op.index: L for L in layers}
    masks, deltas, weights = {}, {}, {}

    def ints(values, name: str, index, low: int, high: int) -> np.ndarray:
        """A flat list of Python ints in [low, high] (no floats, bools or nesting), as int64."""
        if not isinstance(values, list) or not all(type(v) is int and low <= v <= high for v in values):
            raise MicrotileError(f"--approx: layer {index} {name} must be a list of integers in [{low}, {high}]; "
                                 "use the JSON `microtile approx` wrote for this model")
        return np.asarray(values, dtype=np.int64)

    for r in records:
        L = by_index.get(r.get("index")) if isinstance(r, dict) else None
        keep = r.get("keep") if isinstance(r, dict) else None
        if L is None or not isinstance(keep, list):
            raise MicrotileError(f"--approx: layer {r.get('index') if isinstance(r, dict) else r!r} is not a prunable "
                                 f"layer of {graph.name}; use the JSON `microtile approx` wrote for this model")
        if not all(isinstance(row, str) and set(row) <= {"0", "1"} for row in keep):
            raise MicrotileError(f"--approx: layer {L.op.index} keep rows must be strings of 0 and 1; "
                                 "use the JSON `microtile approx` wrote for this model")
        m = np.array([[c == "1" for c in row] for row in keep], dtype=bool)
        if m.shape != (L.n_tiles, L.k_blocks):
            raise MicrotileError(f"--approx: layer {L.op.index} mask is {m.shape}, the model needs "
                                 f"{(L.n_tiles, L.k_blocks)}; use the JSON written for this model and board")
        masks[L.op.index] = m
        delta = ints(r.get("bias_delta", [0] * L.w2d.shape[0]), "bias_delta", L.op.index, -2**31, 2**31 - 1)
        if delta.shape != (L.w2d.shape[0],):
            raise MicrotileError(f"--approx: layer {L.op.index} bias_delta has {delta.size} values, the model "
                                 f"needs {L.w2d.shape[0]}; use the JSON written for this model")
        deltas[L.op.index] = delta
        if "weights" in r:  # the refit kept weights (compensated_weights), zero where the mask drops
            w = ints(r["weights"], "weights", L.op.index, -128, 127)
            ok = w.size == L.w2d.size
            if not ok or np.any(w.reshape(L.w2d.shape)[approx.unit_mask(L, m) == 0]):
                raise MicrotileError(f"--approx: layer {L.op.index} weights are not {L.w2d.size} int8 values zero "
                                     "outside its keep mask; use the JSON `microtile approx` wrote for this model")
            weights[L.op.index] = w.reshape(L.w2d.shape).astype(np.int8)
    return layers, masks, deltas, weights


def pruned_model_file(model: str | Path, approx_json: str | Path, out_dir: Path | None = None, board=None) -> tuple[Path, set[int]]:
    """Write the pruned int8 .tflite of an approx JSON (its `chosen` object, or a point with
    `layers`); returns the file and the pruned operator indices."""
    try:
        data = json.loads(Path(approx_json).read_text())
    except (OSError, ValueError) as exc:
        raise MicrotileError(f"--approx {approx_json}: cannot read it as JSON ({exc}); "
                             "give the file `microtile approx --json` wrote") from None
    chosen = data.get("chosen", data) if isinstance(data, dict) else None
    records = chosen.get("layers") if isinstance(chosen, dict) else None
    if not isinstance(records, list):
        raise MicrotileError(f"--approx {approx_json}: no `chosen.layers` in it; give the file `microtile approx --json` wrote")
    graph = load_tflite(model)
    if "channels" in chosen:  # the smaller network first: the layer records index its operators
        graph = channels_from_records(graph, chosen["channels"])
    layers, masks, deltas, weights = masks_from_records(graph, records, board)
    pruned = approx.prune_graph(graph, layers, masks, mark=False, bias_delta=deltas, weights=weights)
    if out_dir is None:  # a run's own folder, removed when the process ends
        import atexit
        import shutil
        import tempfile

        out_dir = Path(tempfile.mkdtemp(prefix="microtile-approx-"))
        atexit.register(shutil.rmtree, out_dir, True)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{Path(model).stem}.pruned.tflite"
    path.write_bytes(write_tflite(pruned, "microtile approx: pruned k-blocks"))
    return path, set(masks)


def plot_front(points: list[dict], chosen: dict, exact: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [p["est_cycles"] / 1e6 for p in points]
    ys = [100 * p["oof_top1"] for p in points]
    ax.scatter(xs, ys, s=14, c=["tab:blue" if p["within_budget"] else "tab:gray" for p in points],
               label="evaluated points (grey: over budget)")
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["est_cycles"])
    ax.plot([p["est_cycles"] / 1e6 for p in front], [100 * p["oof_top1"] for p in front],
            "-", color="tab:blue", label="Pareto front")
    ax.scatter([exact["est_cycles_predicted"] / 1e6], [100 * exact["calibration_top1"]], marker="s",
               s=50, color="black", label="exact")
    ax.scatter([chosen["est_cycles_predicted"] / 1e6], [100 * chosen["oof_top1"]], marker="*",
               s=160, color="tab:red", label="chosen")
    ax.set_xlabel("estimated cycles (millions, timing model, per inference)")
    ax.set_ylabel("calibration Top-1 (%, out of fold: 2-fold cross-fit)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- the command

def check_budget(budget) -> float:
    try:
        value = float(budget)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise MicrotileError(f"--budget {budget}: give the allowed held-out Top-1 loss in percentage "
                             "points, a number from 0 to 100 (e.g. 0.5)")
    return value


def split_samples(samples: list, calibrate: int, labels: str) -> tuple[list, list]:
    """The first `calibrate` labelled inputs for calibration and search, the rest held out."""
    if not 1 <= calibrate < len(samples):
        raise MicrotileError(f"--calibrate {calibrate}: {labels} has {len(samples)} labelled inputs; calibrate "
                             f"on 1 to {len(samples) - 1} of them so that the rest are held out")
    return list(samples[:calibrate]), list(samples[calibrate:])


def _stack(samples: list) -> tuple[np.ndarray, np.ndarray]:
    return (np.stack([s.arrays[0].reshape(s.arrays[0].shape[1:]) for s in samples]),
            np.array([s.label for s in samples]))


def fused_units(compiled) -> dict[int, list[int]]:
    """Device step -> the steps whose instructions it counts (itself, and the layers
    the RAM techniques fused into it)."""
    from microtile.codegen.model_source import fused_into

    units: dict[int, list[int]] = {}
    for step in range(len(compiled.device_ops)):
        host = step
        while fused_into(host, compiled.bands) is not None:
            host = fused_into(host, compiled.bands)
        units.setdefault(host, []).append(step)
    return units


def _per_layer(compiled, counts: list, like: dict | None) -> dict:
    """Counts by op index. A layer the build fused into a later one (the RAM techniques)
    is counted there; the fused unit's count is shared out in proportion to `like` (the
    members' counts in a build that ran them apart), else to their MACs, so that every
    layer has a cost line of its own."""
    ops, macs = compiled.device_ops, compiled.macs
    out = {op.index: float(c) for op, c in zip(ops, counts)}
    for host, steps in fused_units(compiled).items():
        if len(steps) > 1:
            members = [ops[s].index for s in steps]
            total = sum(out[i] for i in members)
            weight = {i: like[i] for i in members} if like and all(like.get(i, 0) > 0 for i in members) else \
                {ops[s].index: max(1, macs[s]) for s in steps}
            for i in members:
                out[i] = total * weight[i] / sum(weight.values())
    return out


def _device_measure(board_name: str, sample, work: Path, log, original: Graph) -> Callable[..., tuple[dict, dict]]:
    """measure(unmarked graph, pruned op indices, like=None) -> per-layer (instructions,
    est_cycles) of one input on the target, the build checked against TFLM and held to
    the ROM rule of `original` (the user's model); `like`: the (instructions, est_cycles)
    of a build whose layers ran apart, to share out fused units."""
    from microtile.measure.runner import run_model

    def measure(graph: Graph, pruned: set, like: tuple | None = None) -> tuple[dict, dict]:
        path = work / f"probe_{len(list(work.glob('probe_*')))}.tflite"
        path.write_bytes(write_tflite(graph))
        r = run_model(path, board_name, samples=[sample], seed=None,
                      graph_hook=lambda g: approx.mark_pruned(g, pruned), rom_reference=original)
        if r.failed or r.mismatch_count or not r.counted:
            raise MicrotileError(f"approx: the cost probe on {board_name} failed "
                                 f"({r.error or f'{r.mismatch_count} mismatches' if r.mismatch_count else r.error or 'no counter'})")
        est = r.mean_estimates()
        if None in est:
            raise MicrotileError(f"approx: no timing-model estimate on {board_name} ({r.timing_error})")
        log(f"measured {'exact' if not pruned else f'{len(pruned)} pruned layers'}: "
            f"{sum(r.mean_counts()):,} instructions, {sum(est):,} est. cycles")
        return (_per_layer(r.compiled, r.mean_counts(), like and like[0]),
                _per_layer(r.compiled, est, like and like[1]))

    return measure


def run_approx(model: str, labels: str, calibrate: int, budget: float, board_name: str = "qemu",
               json_out: str | None = None, plot: str | None = None, device_limit: int | None = None,
               log: Callable[[str], None] = print) -> dict:
    import tempfile

    from microtile.check.oracle import TflmOracle
    from microtile.measure.inputs import load_samples
    from microtile.measure.runner import run_model
    from microtile.targets.boards import load_board

    budget = check_budget(budget)
    if device_limit is not None and device_limit < 1:
        raise MicrotileError(f"--device-limit {device_limit}: give 1 or more held-out inputs to run on the target")
    graph = load_tflite(model)
    board = load_board(board_name)
    samples = load_samples(graph, labels=labels)
    cal, held = split_samples(samples, calibrate, labels)
    x_cal, y_cal = _stack(cal)
    x_held, y_held = _stack(held)
    log(f"split: {len(cal)} calibration inputs ({cal[0].name} .. {cal[-1].name}), {len(held)} held out")

    check_batchable(graph, x_cal)
    with tempfile.TemporaryDirectory(prefix="microtile-approx-") as tmp:
        work = Path(tmp)
        measure = _device_measure(board_name, cal[0], work, log, graph)
        exact_cost = measure(graph, set())
        # 1. channel-count steps per group: a smaller network on the normal kernels
        chs = ChannelSearch(graph, x_cal, y_cal, all_values(graph, x_cal), log)
        chs.set_cost(exact_cost)
        ch_points, ch_levels = chs.greedy(budget)
        # 2. the per-layer k-block / tap fractions on that network, cross-fitted on each
        #    fold's channel-pruned network, within the same budget of newly wrong inputs
        search = Search(chs.build(ch_levels), board, x_cal, y_cal, log, fold_graphs=chs.fold_graphs(ch_levels),
                        exact=(chs.exact_out, chs.exact_right))
        search.calibrate_cost(measure, exact=None if any(ch_levels.values()) else exact_cost)
        mask_points = search.greedy(budget)
        for p in mask_points:
            p["channels"] = {str(k): v for k, v in ch_levels.items()}
        points = ch_points + mask_points
        mark_pareto(points)
        fits = [p for p in points if p["within_budget"]]
        best = min(fits, key=lambda p: (p["est_cycles"], -p["oof_top1"]))
        from_masks = any(p is best for p in mask_points)
        levels = {int(i): f for i, f in best["fractions"].items()}
        best_ch = {int(i): n for i, n in best["channels"].items()}

        def chosen_at(mark: bool) -> Graph:
            return search.prune_at(levels, mark=mark) if from_masks else chs.build(best_ch)

        # held-out accuracy: the reference executor, exact and chosen, same inputs
        exact_held = top1(all_values(graph, x_held), graph, y_held)
        chosen_graph = chosen_at(True)
        chosen_values = all_values(chosen_graph, x_held)
        chosen_held = top1(chosen_values, chosen_graph, y_held)

        # the chosen network on the target, against TFLM running the pruned .tflite
        records = search.layer_records(levels) if from_masks else []
        channel_records = chs.records(best_ch)
        plain = chosen_at(False)
        pruned_path = work / f"{Path(model).stem}.pruned.tflite"
        pruned_path.write_bytes(write_tflite(plain, "microtile approx: pruned k-blocks"))
        on_device = held[:device_limit]
        log(f"running the chosen point on {board_name}: {len(on_device)} held-out inputs")
        pruned_ops = {r["index"] for r in records}
        dev = run_model(pruned_path, board_name, samples=on_device, seed=None,
                        graph_hook=lambda g: approx.mark_pruned(g, pruned_ops), rom_reference=graph)
        oracle = TflmOracle(pruned_path)
        out_t = chosen_values[graph.outputs[0]]
        ref_mismatches = sum(not np.array_equal(oracle(s.arrays)[0].reshape(-1), out_t[k].reshape(-1))
                             for k, s in enumerate(on_device))
        exact_dev = run_model(model, board_name, samples=held[:1], seed=None)

    def measured(r) -> tuple:
        c, e = r.mean_counts(), r.mean_estimates()
        return (sum(c) if r.counted and None not in c else None, sum(e) if None not in e else None)

    exact_ins, exact_cyc = measured(exact_dev)
    chosen_ins, chosen_cyc = measured(dev)
    exact_pred = chs.predicted({})
    result = {
        "model": str(model), "board": board_name, "budget_pp": budget,
        "split": {"labels": str(labels), "calibration": len(cal), "heldout": len(held),
                  "calibration_range": [cal[0].name, cal[-1].name], "heldout_range": [held[0].name, held[-1].name]},
        "exact": {"heldout_top1": exact_held, "calibration_top1": chs.exact_top1,
                  "instructions": exact_ins, "est_cycles": exact_cyc,
                  "instructions_predicted": round(exact_pred["instructions"]),
                  "est_cycles_predicted": round(exact_pred["est_cycles"]),
                  "device_mismatches": exact_dev.mismatch_count, "device_error": exact_dev.error},
        "chosen": {"heldout_top1": chosen_held, "oof_top1": best["oof_top1"], "oof_newly_wrong": best["oof_newly_wrong"],
                   "instructions": chosen_ins, "est_cycles": chosen_cyc,
                   "instructions_predicted": best["instructions"], "est_cycles_predicted": best["est_cycles"],
                   "device_samples": dev.samples, "device_mismatches": dev.mismatch_count if dev.samples else None,
                   "reference_mismatches": int(ref_mismatches), "device_error": dev.error,
                   "fractions": best["fractions"], "layers": records,
                   "channel_counts": best["channels"], "channels": channel_records},
        "pareto": points,
        "counter_unit": dev.counter_unit,
    }
    if exact_ins and chosen_ins:
        result["chosen"]["instructions_saved"] = round(1 - chosen_ins / exact_ins, 4)
    if exact_cyc and chosen_cyc:
        result["chosen"]["est_cycles_saved"] = round(1 - chosen_cyc / exact_cyc, 4)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    plot_path = Path(plot) if plot else (Path(json_out).with_suffix(".png") if json_out else None)
    if plot_path:
        plot_front(points, result["chosen"], {**result["exact"]}, plot_path,
                   f"{Path(model).name}: {len(points)} points, budget {budget} pp (calibration split)")
        result["plot"] = str(plot_path)
    return result


def write_random_labels(model: str | Path, out_dir: str | Path, count: int, seed: int = 0) -> Path:
    """Seeded random inputs and a y_labels.csv whose labels are the exact network's own
    Top-1: approx on them measures agreement with the exact network, not accuracy
    (random data measures no accuracy)."""
    from microtile.check.reference import run_reference

    graph = load_tflite(model)
    t = graph.tensor(graph.inputs[0])
    if t.dtype != "int8":
        raise MicrotileError(f"model {graph.name}: input {t.name} is {t.dtype}; random labels need an int8 input")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = int(np.prod(graph.tensor(graph.outputs[0]).shape))
    lines = []
    for i in range(count):
        x = rng.integers(-128, 128, t.shape).astype(np.int8)
        label = int(np.argmax(run_reference(graph, [x])[0].reshape(-1)))
        (out / f"rnd_{i:05d}.bin").write_bytes(x.tobytes())
        lines.append(f"rnd_{i:05d}.bin,{classes},{label}")
    path = out / "y_labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m microtile.measure.approx_search",
                                 description="write seeded random inputs labelled with the exact network's Top-1")
    ap.add_argument("model")
    ap.add_argument("out_dir")
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    try:
        print(write_random_labels(a.model, a.out_dir, a.count, a.seed))
    except MicrotileError as exc:
        print(f"error: {exc}")
        sys.exit(2)
