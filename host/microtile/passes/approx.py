"""Approximate kernels (issue 10): skip insignificant k-blocks of the matmul-shaped layers.

The unit that is skipped is the unit the optimised kernels (mt_matmul_opt.c) really
execute: one k-block (4 consecutive reduction steps = 2 SMLAD per operand row) of one
register tile's channels (2 channels for the 3x2 tile of the exact schedule, 1 for the
4x1 tile, 4 for the 1x4 tile of an FC at batch 1; pruned_format). Its significance, from calibration activations, is

    sig[tile, block] = mean over the tile's channels of
                       sum_{k in block} |w[n, k]| * s_k  /  sum_k |w[n, k]| * s_k,
    s_k = mean |x_k - mean(x_k)|  (x_k - zp, the kernel's zero-centred input)

(each channel's share of its own absolute contribution, so per-channel weight scales do
not matter). Pruning a layer at fraction f zeroes the weights of its f * blocks least
significant (tile, block) units, and adds their mean contribution (calibration
mean of x - zp times the dropped weights) to the bias. The result is an ordinary int8 network with zeroed
weights (written as .tflite, so TFLM checks it too); a layer marked with
``options["microtile_prune"]`` is compiled to mt_pruned_s8_opt (mt_pruned_opt.h), whose
weight stream holds only the tile's non-zero blocks: no branch per MAC, every skipped
block removes its loads, SXTB16s and SMLADs from the hot loop.

DEPTHWISE_CONV_2D over many channels runs the optimised depthwise kernel's channel
groups instead (mt_depthwise_opt.h: 4 output channels, per tap one input word and 4
multiply-accumulates): its unit is one filter tap (ky, kx) of one group of 4 channels
(kstep = 1 reduction position, nr = 4), with the same significance (the x statistics
per channel and tap) and bias correction, compiled to mt_depthwise_pruned_s8_opt
(mt_depthwise_pruned_opt.h), whose stream holds each group's kept taps.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from microtile.importer.ir import Graph, Operator
from microtile.ops.requant_opt import pack16

PRUNE_KEY = "microtile_prune"  # Operator.options marker: compile with the pruned kernel

def pruned_format(s, board=None) -> tuple[int, int, bool]:
    """The pruned kernel's (mr, nr, wide) for a layer whose exact schedule is s: the
    exact kernel's 3x2 tile when it runs one (always with int8 weights + SXTB16: the
    stream's delta word fits one LDM with the two channels' weight words); otherwise
    4 pixels x 1 channel (the skip pattern per channel) when 4 rows exist and their
    panel fits the stack budget, else 1 x 4 (the pattern per group of 4 channels),
    with the exact schedule's weight format."""
    from microtile.passes.schedule import _board_limits, panel_bytes

    if (s.mr, s.nr) == (3, 2):
        return 3, 2, False
    if s.m >= 4 and panel_bytes(4, s.k_blocks) <= _board_limits(board)[0]:
        return 4, 1, s.wide
    return 1, 4, s.wide


@dataclass
class Layer:
    """A layer the pruned kernels can run: its [N, K] weight matrix, the exact build's
    schedule and the pruned kernel's tile."""
    op: Operator
    w2d: np.ndarray  # int8 [N, K], as the optimised emitter sees it
    mr: int          # pruned kernel tile
    nr: int
    m: int           # rows of A (pixels or batches)
    wide: bool       # int16 weight pairs (pruned_format)
    kstep: int = 4   # reduction positions per unit: 4 (a k-block), 1 (a depthwise tap)

    @property
    def n_tiles(self) -> int:
        return -(-self.w2d.shape[0] // self.nr)

    @property
    def k_blocks(self) -> int:
        """Units per channel tile: k-blocks, or taps of a depthwise group."""
        return -(-self.w2d.shape[1] // self.kstep)

    @property
    def depthwise(self) -> bool:
        return self.kstep == 1

    @property
    def row_tiles(self) -> int:
        return -(-self.m // self.mr)


def weight_matrix(op: Operator, graph: Graph) -> np.ndarray:
    """The [N, K] int8 weights of a matmul-shaped layer (conv OHWI, FC [out, in],
    depthwise over one channel [1, KH, KW, M] -> [M, KH*KW])."""
    w = np.asarray(graph.tensor(op.inputs[1]).data, dtype=np.int8)
    if op.opcode == "DEPTHWISE_CONV_2D":
        return np.ascontiguousarray(w.reshape(-1, w.shape[-1]).T)
    return w.reshape(w.shape[0], -1)


def _set_weight_matrix(op: Operator, graph: Graph, w2d: np.ndarray) -> None:
    t = graph.tensor(op.inputs[1])
    if op.opcode == "DEPTHWISE_CONV_2D":
        t.data = np.ascontiguousarray(w2d.T).reshape(t.shape).astype(np.int8)
    else:
        t.data = w2d.reshape(t.shape).astype(np.int8)


def prunable_layers(graph: Graph, board=None) -> list[Layer]:
    """Layers the optimised matmul kernels run (FC, CONV_2D, depthwise over one channel)
    and the depthwise layers the optimised depthwise kernel runs in groups of 4."""
    from microtile.ops.conv import optimized_supported
    from microtile.passes.schedule import matmul_shape, schedule_for

    layers = []
    for op in graph.operators:
        if op.opcode == "DEPTHWISE_CONV_2D" and _depthwise_prunable(op, graph):
            g = graph.tensor(op.outputs[0]).shape
            layers.append(Layer(op, weight_matrix(op, graph), 1, 4, g[1] * g[2], False, kstep=1))
            continue
        if matmul_shape(op, graph) is None or not optimized_supported(op, graph):
            continue
        s = schedule_for(op, graph, board)
        mr, nr, wide = pruned_format(s, board)
        layers.append(Layer(op, weight_matrix(op, graph), mr, nr, s.m, wide))
    return layers


def _depthwise_prunable(op: Operator, graph: Graph) -> bool:
    """Many input channels, a multiple of 4 output channels (whole groups), and a
    layer the optimised depthwise kernel takes (its requantisation fast path)."""
    from microtile.ops import kernel_for
    from microtile.ops.depthwise_opt import depthwise_fallback

    p = kernel_for(op).params(op, graph)
    return p["c"] > 1 and p["oc"] % 4 == 0 and depthwise_fallback(op, graph, p) is None


# ---------------------------------------------------------------- significance

def input_statistics(op: Operator, graph: Graph, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per reduction position k of the layer, over batch and output pixels (taps in the
    padding count as x = zp: they cancel in the kernel): (mean of x - zp, mean |x - that
    mean|). x: the layer's input, batch first."""
    from microtile.ops.conv import _conv_geometry, _patches

    t = graph.tensor(op.inputs[0])
    d = np.asarray(x, dtype=np.int64) - t.zero_point
    if op.opcode == "DEPTHWISE_CONV_2D" and t.shape[-1] > 1:
        return _depthwise_statistics(op, graph, d)
    if op.opcode == "FULLY_CONNECTED":
        rows = d.reshape(-1, graph.tensor(op.inputs[1]).shape[1]).astype(np.float64)
    else:
        g = _conv_geometry(op, graph)
        d = d.reshape(-1, g["h"], g["w"], g["c"])
        win = _patches(d, g["kh"], g["kw"], g["sh"], g["sw"], g["ph"], g["pw"], g["oh"], g["ow"])
        rows = win.reshape(-1, g["kh"] * g["kw"] * g["c"]).astype(np.float64)
    mean = rows.mean(axis=0)
    return mean, np.abs(rows - mean).mean(axis=0)


def _depthwise_statistics(op: Operator, graph: Graph, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """input_statistics of a many-channel depthwise layer: [out channels, taps] arrays
    (output channel c reads input channel c // depth multiplier), one tap at a time."""
    from microtile.ops.conv import _conv_geometry, _patches

    g = _conv_geometry(op, graph)
    oc = graph.tensor(op.inputs[1]).shape[3]
    win = _patches(d.reshape(-1, g["h"], g["w"], g["c"]), g["kh"], g["kw"], g["sh"], g["sw"],
                   g["ph"], g["pw"], g["oh"], g["ow"])
    mean, spread = np.zeros((g["kh"] * g["kw"], g["c"])), np.zeros((g["kh"] * g["kw"], g["c"]))
    for ky in range(g["kh"]):
        for kx in range(g["kw"]):
            rows = win[:, :, :, ky, kx, :].reshape(-1, g["c"]).astype(np.float64)
            m = rows.mean(axis=0)
            mean[ky * g["kw"] + kx], spread[ky * g["kw"] + kx] = m, np.abs(rows - m).mean(axis=0)
    src = np.arange(oc) // (oc // g["c"])
    return np.ascontiguousarray(mean[:, src].T), np.ascontiguousarray(spread[:, src].T)


def sample_rows(layer: Layer, graph: Graph, x: np.ndarray, rows: int = 4096, seed: int = 0) -> np.ndarray:
    """The zero-centred inputs (x - zp, padding taps 0) the layer's kernel reduces, at
    up to `rows` seeded output pixels of the calibration batch x: [P, K] for the matmul
    layers, [P, taps, out channels] for a depthwise one."""
    from microtile.ops.conv import _conv_geometry, _patches

    op = layer.op
    d = np.asarray(x, dtype=np.int64) - graph.tensor(op.inputs[0]).zero_point
    rng = np.random.default_rng(seed)
    if op.opcode == "FULLY_CONNECTED":
        flat = d.reshape(-1, layer.w2d.shape[1])
        return flat[np.sort(rng.permutation(flat.shape[0])[:rows])].astype(np.float64)
    g = _conv_geometry(op, graph)
    win = _patches(d.reshape(-1, g["h"], g["w"], g["c"]), g["kh"], g["kw"], g["sh"], g["sw"], g["ph"], g["pw"],
                   g["oh"], g["ow"])  # a view: N, OH, OW, KH, KW, C
    pick = np.sort(rng.permutation(win.shape[0] * g["oh"] * g["ow"])[:rows])
    b, rest = np.divmod(pick, g["oh"] * g["ow"])
    sub = win[b, rest // g["ow"], rest % g["ow"]].astype(np.float64)  # P, KH, KW, C
    if not layer.depthwise:
        return sub.reshape(sub.shape[0], -1)
    n = layer.w2d.shape[0]
    return sub.reshape(sub.shape[0], g["kh"] * g["kw"], g["c"])[:, :, np.arange(n) // (n // g["c"])]


def compensated_weights(layer: Layer, keep: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The layer's int8 weights pruned to `keep`, the kept weights of each channel refit
    by least squares to the channel's exact output on the calibration rows (sample_rows,
    centred: the mean goes to the bias, bias_correction), rounded and clipped to the
    int8 weight range [-127, 127]. Dropped weights stay 0: the skip pattern is keep's."""
    n, k = layer.w2d.shape
    full = unit_mask(layer, keep)
    w = layer.w2d.astype(np.float64)
    dev = rows - rows.mean(axis=0)
    # normal equations: the input covariance once per layer (per channel for depthwise)
    gram = np.einsum("pkc,pjc->ckj", dev, dev) if layer.depthwise else dev.T @ dev
    out = np.zeros((n, k))
    for c in range(n):
        kept = np.flatnonzero(full[c])
        if kept.size == 0:
            continue
        g = gram[c] if layer.depthwise else gram
        out[c, kept] = np.linalg.lstsq(g[np.ix_(kept, kept)], g[kept] @ w[c], rcond=None)[0]
    out = np.clip(np.rint(out), -127, 127)
    plain = apply_mask(layer, keep).astype(np.float64)
    for c in range(n):  # rounding and clipping (an ill-conditioned fit) may lose: then the plain mask
        g = gram[c] if layer.depthwise else gram
        err = [(w[c] - v) @ g @ (w[c] - v) for v in (out[c], plain[c])]
        if err[0] > err[1]:
            out[c] = plain[c]
    return out.astype(np.int8)


def bias_correction(layer: Layer, keep: np.ndarray, mean: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """int32 per output channel: the mean contribution of the dropped weights,
    sum_k w[n, k] * mean(x_k - zp), folded into the bias, so pruning removes only the
    varying part of the input (significance is measured on that part); with `weights`
    (compensated_weights) the mean change sum_k (w - weights)[n, k] * mean(x_k - zp)."""
    dropped = layer.w2d.astype(np.float64) - (apply_mask(layer, keep) if weights is None else weights)
    # mean: [K] (one input for every channel) or [N, K] (depthwise: per channel)
    return np.rint((dropped * np.asarray(mean, dtype=np.float64)).sum(axis=1)).astype(np.int64)


def block_significance(layer: Layer, mean_abs: np.ndarray) -> np.ndarray:
    """[n_tiles, k_blocks] significance of each (channel tile, k-block) unit (module doc)."""
    n, k = layer.w2d.shape
    contrib = np.zeros((layer.n_tiles * layer.nr, layer.k_blocks * layer.kstep))
    contrib[:n, :k] = np.abs(layer.w2d.astype(np.float64)) * np.asarray(mean_abs, dtype=np.float64)
    total = contrib.sum(axis=1, keepdims=True)
    share = np.divide(contrib, total, out=np.zeros_like(contrib), where=total > 0)
    per_block = share.reshape(layer.n_tiles, layer.nr, layer.k_blocks, layer.kstep).sum(axis=3)
    return per_block.mean(axis=1)


def keep_mask(sig: np.ndarray, fraction: float) -> np.ndarray:
    """Keep all but the round(fraction * units) least significant units (stable order)."""
    drop = int(round(fraction * sig.size))
    keep = np.ones(sig.size, dtype=bool)
    keep[np.argsort(sig.reshape(-1), kind="stable")[:drop]] = False
    return keep.reshape(sig.shape)


def unit_mask(layer: Layer, keep: np.ndarray) -> np.ndarray:
    """[N, K] bool: the weight positions of the kept units."""
    n, k = layer.w2d.shape
    return np.repeat(np.repeat(keep, layer.nr, axis=0), layer.kstep, axis=1)[:n, :k]


def apply_mask(layer: Layer, keep: np.ndarray) -> np.ndarray:
    """The layer's weights with the dropped units zeroed."""
    return np.where(unit_mask(layer, keep), layer.w2d, 0).astype(np.int8)


def prune_graph(graph: Graph, layers: list[Layer], masks: dict[int, np.ndarray],
                mark: bool = True, bias_delta: dict[int, np.ndarray] | None = None,
                weights: dict[int, np.ndarray] | None = None) -> Graph:
    """A copy of the graph with the masked weights zeroed (or replaced by `weights`, the
    compensated [N, K] int8 weights) and bias_delta (bias_correction) added to the
    biases; pruned layers carry PRUNE_KEY (mark=False: the plain int8 network, for the
    .tflite writer)."""
    out = copy.copy(graph)
    out.tensors = list(graph.tensors)
    out.operators = list(graph.operators)
    for layer in layers:
        keep = masks.get(layer.op.index)
        if keep is None or keep.all():
            continue
        pos = next(i for i, o in enumerate(out.operators) if o.index == layer.op.index)
        op = copy.copy(layer.op)
        op.options = dict(op.options)
        if mark:
            op.options[PRUNE_KEY] = True
        out.operators[pos] = op
        idx = op.inputs[1]
        out.tensors[idx] = copy.copy(graph.tensor(idx))
        w_new = (weights or {}).get(op.index)
        _set_weight_matrix(op, out, apply_mask(layer, keep) if w_new is None else w_new)
        delta = (bias_delta or {}).get(op.index)
        if delta is not None and len(op.inputs) > 2 and op.inputs[2] >= 0:
            b = copy.copy(graph.tensor(op.inputs[2]))
            b.data = np.clip(b.data.astype(np.int64) + delta, -2 ** 31, 2 ** 31 - 1).astype(np.int32)
            out.tensors[op.inputs[2]] = b
    return out


def mark_pruned(graph: Graph, indices) -> Graph:
    """Mark the given operators (a pruned .tflite just loaded) for the pruned kernels."""
    for op in graph.operators:
        if op.index in indices:
            op.options[PRUNE_KEY] = True
    return graph


# ---------------------------------------------------------------- packing and emission

def pruned_stream(w2d: np.ndarray, mr: int, nr: int, wide: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """[N, K] int8 -> (int32 weight stream, kept blocks per tile) of mt_pruned_opt.h:
    per tile, per k-block with any non-zero weight, [delta bytes, w_0 .. w_{nr-1}]
    (wide: each w_j two words of int16 pairs (w0, w2), (w1, w3), as pack_weights)."""
    n, k = w2d.shape
    kb, tiles = -(-k // 4), -(-n // nr)
    full = np.zeros((tiles * nr, kb * 4), dtype=np.int8)
    full[:n, :k] = w2d
    nonzero = (full.reshape(tiles, nr, kb, 4) != 0).any(axis=(1, 3))  # [tiles, kb]
    if wide:
        pairs = full.reshape(tiles * nr, kb, 4)[..., [0, 2, 1, 3]].astype("<i2")
        words = np.ascontiguousarray(pairs).view("<i4").reshape(tiles, nr, kb, 2)
    else:
        words = np.ascontiguousarray(full).view("<i4").reshape(tiles, nr, kb, 1)
    stream: list[int] = []
    for t in range(tiles):
        prev_end = 0
        for b in np.flatnonzero(nonzero[t]):
            stream.append(int(b - prev_end) * mr * 8)  # panel block = mr rows of 8 bytes
            stream.extend(int(v) for v in words[t, :, b].reshape(-1))
            prev_end = int(b) + 1
    return np.asarray(stream, dtype=np.int32), nonzero.sum(axis=1).astype(np.int32)


def emit_pruned(op: Operator, graph: Graph, ctx, p: dict, w2d: np.ndarray) -> str:
    """The mt_pruned_s8_opt call of a pruned layer (conv.py's hook): conv geometry, or an
    FC as a 1 x batches x depth image under a 1x1 filter."""
    from microtile.ops.conv import folded_bias, requant_table
    from microtile.passes.schedule import schedule_for

    s = schedule_for(op, graph, ctx.board)
    mr, nr, wide = pruned_format(s, ctx.board)
    if op.opcode == "FULLY_CONNECTED":
        in_zp = -p["in_off"]
        geo = dict(n=1, h=1, w=p["batches"], c=p["depth"], oh=1, ow=p["batches"], kh=1, kw=1,
                   sh=1, sw=1, ph=0, pw=0)
    else:
        in_zp, geo = p["in_zp"], p
    n = w2d.shape[0]
    padded = -(-n // nr) * nr
    stream, kept = pruned_stream(w2d, mr, nr, wide)
    # weights in SRAM as the exact schedule planned, unless the stream (a delta word per
    # kept block) outgrows the exact packed weights the plan made room for
    exact_bytes = -(-n // s.nr) * s.nr * s.k_blocks * 4 * (2 if s.wide else 1)
    sram = s.sram and stream.nbytes <= exact_bytes
    bias_t = graph.tensor(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    bias_data = None if bias_t is None else bias_t.data
    bias = folded_bias(w2d, bias_data, in_zp, padded)
    table, fast = requant_table(w2d, bias_data, p["mult"], p["shift"], in_zp, p["out_zp"], padded)
    ctx.include("mt_pruned_opt.h")
    wname = ctx.const_array("pruned_w", stream if stream.size else np.zeros(1, np.int32), sram=sram)
    kname = ctx.const_array("pruned_kept", kept)
    bname = ctx.const_array("pruned_bias", bias, sram=sram)
    qname = ctx.const_array("pruned_requant", table, sram=sram)
    kb = -(-w2d.shape[1] // 4)
    act = p["act"]
    gemm = (f"{{{mr}, {nr}, {int(wide)}, {kb}, {n}, {padded // nr}, {p['out_zp']}, {act[0]}, {act[1]}, "
            f"{int(fast)}, {wname}, {bname}, {qname}, NULL}}")  # rows: unused, the pruned kernel dispatches
    init = (f"{{{{{gemm}, {geo['n']}, {geo['h']}, {geo['w']}, {geo['c']}, {geo['oh']}, {geo['ow']}, "
            f"{geo['kh']}, {geo['kw']}, {geo['sh']}, {geo['sw']}, {geo['ph']}, {geo['pw']}, {in_zp}}}, {kname}}}")
    params = ctx.static_struct("mt_pruned_opt_params", "pruned", init)
    scratch_bytes = 8 * (mr * kb + (kb + 1) // 2)  # MT_GEMM_SCRATCH_U64: panel + gather row
    scratch = ctx.scratch(scratch_bytes)
    kept_total, units = int(kept.sum()), padded // nr * kb
    return (f"mt_pruned_s8_opt(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])}, {scratch});"
            f" /* pruned: {kept_total} of {units} k-blocks kept, {mr}x{nr} tile, {'int16' if wide else 'int8'}{', SRAM' if sram else ''} */")


def column_classes(p: dict) -> tuple[list[tuple[int, int]], list[int]]:
    """The depthwise kernel's column classes: the distinct (kx0, kx1) ranges of filter
    columns inside the image over the output columns, and each column's class."""
    classes: list[tuple[int, int]] = []
    of_col = []
    for ox in range(p["ow"]):
        x0 = ox * p["sw"] - p["pw"]
        c = (max(0, -x0), min(p["kw"], p["w"] - x0))
        if c not in classes:
            classes.append(c)
        of_col.append(classes.index(c))
    return classes, of_col


def depthwise_pruned_stream(w2d: np.ndarray, bias: np.ndarray, mult: np.ndarray, k: np.ndarray,
                            right: np.ndarray, p: dict, px: int) -> tuple[np.ndarray, np.ndarray, int]:
    """[OC, taps] int8 weights and per-channel bias / fast requantisation -> (int32
    stream, col_rows [out_w], classes) of mt_depthwise_pruned_opt.h. A group keeps a tap
    when any of its 4 channels has a non-zero weight there; px = bytes per source pixel
    (the input's channels, or 4 in a gathered plane)."""
    kh, kw = p["kh"], p["kw"]
    classes, of_col = column_classes(p)
    rows_words = len(classes) * (kh + 1)
    w2 = 2 * np.asarray(w2d, dtype=np.int64)
    words: list[int] = []
    for c in range(0, w2.shape[0], 4):
        g = w2[c:c + 4]
        kept = [t for t in range(kh * kw) if g[:, t].any()]
        table, entries = [], []
        for kx0, kx1 in classes:
            taps = [t for t in kept if kx0 <= t % kw < kx1]  # sorted by (ky, kx)
            start = len(entries) // 3
            table += [start + sum(1 for t in taps if t // kw < ky) for ky in range(kh + 1)]
            for t in taps:
                entries += [(t // kw * p["w"] + t % kw) * px, int(pack16(g[0, t], g[2, t])[()]),
                            int(pack16(g[1, t], g[3, t])[()])]
        head = [17 + rows_words + len(entries)] + (2 * np.asarray(bias[c:c + 4], dtype=np.int64)).tolist()
        head += np.stack([mult[c:c + 4], k[c:c + 4], right[c:c + 4]], axis=1).reshape(-1).tolist()
        words += head + table + entries
    words.append(0)  # read ahead by the last tap (the next tap's offset)
    stream = (np.asarray(words, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    col_rows = np.asarray([17 + (kh + 1) * c for c in of_col], dtype=np.int32)
    return stream, col_rows, len(classes)


def emit_depthwise_pruned(op: Operator, graph: Graph, ctx, p: dict, in_place: bool) -> str:
    """The mt_depthwise_pruned_s8_opt call of a pruned depthwise layer (the hook in
    ops/depthwise_opt.py, after its checks: the optimised kernel takes the layer)."""
    from microtile.errors import MicrotileError
    from microtile.ops.depthwise_opt import _weights_bias_bound, params_init
    from microtile.ops.requant_opt import fast_requant

    if p["oc"] % 4 or p["c"] == 1:
        raise MicrotileError(f"operator {op.index} DEPTHWISE_CONV_2D: the pruned depthwise kernel needs a "
                             f"multiple of 4 output channels and more than one input channel")
    weights, bias, bound = _weights_bias_bound(op, graph, p)
    k, right = fast_requant(p["mult"], p["shift"], p["out_zp"], bound)
    gather = in_place or p["dm"] > 1
    stream, col_rows, classes = depthwise_pruned_stream(weights.T, bias, np.asarray(p["mult"], dtype=np.int64),
                                                        k, right, p, 4 if gather else p["c"])
    ctx.include("mt_depthwise_pruned_opt.h")
    data = ctx.const_array("dw_pruned_data", stream)
    cols = ctx.const_array("dw_pruned_cols", col_rows)
    init = f"{{{params_init(p, in_place, False, data)}, {cols}, {classes}}}"
    params = ctx.static_struct("mt_depthwise_pruned_params", "dw_pruned", init)
    scratch = f"(int8_t *){ctx.scratch(p['h'] * p['w'] * 4)}" if gather else "NULL"
    units = p["oc"] // 4 * p["kh"] * p["kw"]
    kept = int((weights.reshape(p["kh"] * p["kw"], -1, 4) != 0).any(axis=2).sum())
    return (f"mt_depthwise_pruned_s8_opt(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])}, {scratch});"
            f" /* pruned: {kept} of {units} taps x 4 channels kept */")


# ---------------------------------------------------------------- cost

def kept_blocks(layer: Layer, w2d: np.ndarray) -> int:
    """Non-zero (tile, k-block) or (group, tap) units of pruned weights: what the
    pruned kernel runs."""
    n, k = w2d.shape
    full = np.zeros((layer.n_tiles * layer.nr, layer.k_blocks * layer.kstep), dtype=np.int8)
    full[:n, :k] = w2d
    return int((full.reshape(layer.n_tiles, layer.nr, layer.k_blocks, layer.kstep) != 0).any(axis=(1, 3)).sum())
