"""In-place and zero-copy execution: the aliases codegen asks the planner for.

- RESHAPE: its output is its input's bytes (no copy);
- ADD: the output is written over an input of the same shape whose lifetime ends there
  (the kernel reads each word before it writes it);
- CONCATENATION along an axis with nothing but 1s before it (the slices are contiguous):
  every input is placed inside its slice of the output, so producers write there;
- CONV_2D (and DEPTHWISE_CONV_2D) in bands of rows over their own input: each band's
  input rows (halo included) are first copied into the layer's scratch, then the band's
  output rows are written; the output sits ``delta`` bytes from the input, the largest
  offset at which no band overwrites input rows a later band still reads. Without the
  copy ("direct"), a band's output must also miss the band's own input rows: no scratch,
  a larger delta. Bands run top-down (output at or before the input) or bottom-up
  (at or after it), whichever keeps the chain of in-place layers from drifting.
- a residual block, 2 or 3 window layers (conv -> conv, or MobileNetV2's 1x1 conv ->
  depthwise -> 1x1 conv) and the ADD of the block input (``ResidualPlan``, line-buffered
  fusion): per band of output rows, each layer but the last makes the rows the next one
  needs into its ring (rows the last band made stay), the last layer makes a band into
  scratch, and the ADD writes the band over the block input's own rows, which no later
  band reads. No layer output exists whole, no row is computed twice, and the block needs
  its input's bytes plus the rings.
- CONV_2D on the optimised kernel, whole, over its own input (``PanelPlan``): the kernel
  copies each group of output pixels' receptive fields into its im2col panel before it
  writes their outputs, so the output may sit where no group's writes reach bytes a later
  group still reads. No scratch and no call beyond the plain layer's: a 1x1 conv with no
  more output than input channels runs at the same offset.

Device inputs (and what aliases them) are written over only with ``input_inplace``:
microtile's host writes the inputs before every INVOKE 1, but an INVOKE N > 1 then
repeats the run on overwritten inputs (its counts are right, its outputs are not). The planner drops any alias that would make two live
buffers share bytes they may not share.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from microtile.importer.ir import Graph, Operator, Tensor
from microtile.passes.pipeline import RamConfig
from microtile.passes.planner import ALIGN, Alias, tensor_lifetimes

BAND_OPS = {"CONV_2D": "conv_inplace", "DEPTHWISE_CONV_2D": "depthwise_inplace"}
MAX_BANDS = 8  # bands per layer: more bands, less scratch, more calls


@dataclass(frozen=True)
class Band:
    out_rows: tuple[int, int]  # [first, end) output rows
    in_rows: tuple[int, int]   # [first, end) input rows copied to scratch
    pad_top: int               # the band's padding above its first input row


@dataclass(frozen=True)
class BandPlan:
    bands: tuple[Band, ...]
    pad_left: int
    in_row_bytes: int
    out_row_bytes: int
    delta: int                 # output offset - input offset (bytes, a multiple of ALIGN)
    reverse: bool = False      # bands run bottom-up (the output may then sit after the input)
    copy: bool = True          # each band's input rows are copied to scratch first (else read in place)

    @property
    def scratch_bytes(self) -> int:
        if not self.copy:
            return 0
        return max((b.in_rows[1] - b.in_rows[0]) * self.in_row_bytes for b in self.bands)

    @property
    def copied_bytes(self) -> int:
        if not self.copy:
            return 0
        return sum((b.in_rows[1] - b.in_rows[0]) * self.in_row_bytes for b in self.bands)


@dataclass(frozen=True)
class FusedPlan:
    """A 1x1 CONV_2D whose output only a DEPTHWISE_CONV_2D reads, run together with it
    (line-buffered fusion): per band of depthwise output rows, the conv computes the
    rows of its output the band needs that the ring does not hold yet, into a ring of
    rows in scratch (the rows the last band already made are moved to its front), then
    the depthwise band reads the ring. The conv's output is never materialised and no
    row is computed twice. The depthwise output sits ``delta`` bytes from the conv's input."""
    bands: tuple[Band, ...]    # depthwise bands (in_rows: rows of the conv output = rows of its input)
    pad_left: int
    x_row_bytes: int           # the conv's input
    t_row_bytes: int           # the conv's output (the ring's rows)
    out_row_bytes: int         # the depthwise output
    delta: int
    conv: Operator = field(compare=False, repr=False, default=None)
    reverse: bool = False      # bands bottom-up (the output may then sit after the conv input)

    @property
    def ring_rows(self) -> int:
        return max(b.in_rows[1] - b.in_rows[0] for b in self.bands)

    @property
    def scratch_bytes(self) -> int:
        return self.ring_rows * self.t_row_bytes


@dataclass(frozen=True)
class PanelPlan:
    """A CONV_2D run whole by the optimised kernel (mt_conv_s8_opt) with its output
    ``delta`` bytes from its input: nothing beyond the plain layer (no band, no copy)."""
    delta: int
    scratch_bytes: int = 0  # none beyond the plain layer's panel


PANEL_ROWS = (1, 3, 4)  # the register tiles' pixel counts (passes/schedule.py): the plan holds for each


def panel_plan(op: Operator, graph: Graph, kernels: str,
               chain: tuple[int, int, int] | None = None) -> PanelPlan | None:
    """The largest output offset at which the optimised conv can write over its own
    input, or None (another kernel, or no byte saved). mt_conv_s8_opt builds the panel of
    pixels [a, b) before writing their outputs, so for every group boundary b the
    output's bytes up to b * C_out must end before the first input byte any pixel from b
    on reads; the bound is taken over every tile height the schedule may pick."""
    import numpy as np

    from microtile.ops import kernel_for
    from microtile.ops.conv import matmul_fallback

    if kernels != "optimized" or op.opcode != "CONV_2D" or op.options.get("microtile_prune")             or matmul_fallback(op, graph) is not None:
        return None
    x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    if len(x.shape) != 4 or x.shape[0] != 1 or x.dtype != "int8" or y.dtype != "int8":
        return None
    p = kernel_for(op).params(op, graph)
    pixels, out_c = p["oh"] * p["ow"], y.shape[3]
    if pixels < 2:
        return None
    q = np.arange(pixels)
    iy = np.maximum(0, (q // p["ow"]) * p["sh"] - p["ph"])
    ix = np.maximum(0, (q % p["ow"]) * p["sw"] - p["pw"])
    first_read = (iy * p["w"] + ix) * p["c"]
    later = np.minimum.accumulate(first_read[::-1])[::-1]  # the first byte read by pixel q or after
    bound = min(int(np.min(later[b] - b * out_c)) for mr in PANEL_ROWS for b in [np.arange(mr, pixels, mr)]
                if len(b))
    pos, low, high = chain or (0, 0, x.nbytes)
    ny = y.nbytes

    def extent(d: int) -> int:
        return max(high, pos + d + ny) - min(low, pos + d)

    options = [d // ALIGN * ALIGN for d in (bound, 0, low - pos, high - pos - ny)]
    delta = min((d for d in options if d <= bound), key=lambda d: (extent(d), abs(d)))
    if max(x.nbytes, delta + ny) - min(delta, 0) >= x.nbytes + ny:
        return None
    return PanelPlan(delta)


@dataclass(frozen=True)
class ChainStep:
    """One layer of a fused block in one band: the rows of its output it makes (into its
    ring), the rows of its input it reads, its padding above, and where its ring's window
    starts (the ring holds the rows [window, window + ring rows) of the layer's output)."""
    band: Band
    window: int


@dataclass(frozen=True)
class ResidualPlan:
    """A residual block, 2 or 3 window layers (x -> t1 [-> t2] -> u) and ADD(x, u) = z, run
    band by band (see the module docstring); z is written over x (delta 0). ``bands`` are
    rows of z (in_rows: the rows of the last layer's input it reads, from the last ring);
    ``steps[b][k]`` says what layer k (all but the last) does in band b."""
    bands: tuple[Band, ...]
    steps: tuple[tuple[ChainStep, ...], ...]
    ring_rows: tuple[int, ...]     # per intermediate tensor
    row_bytes: tuple[int, ...]     # x, the intermediates, u
    pad_left: tuple[int, ...]      # per layer
    layers: tuple[Operator, ...] = field(compare=False, repr=False, default=())

    def ring_offsets(self) -> list[int]:
        """Where each ring, then the band of u, start in the plan's scratch."""
        at, out = 0, []
        for rows, rb in zip(self.ring_rows, self.row_bytes[1:-1]):
            out.append(at)
            at += -(-rows * rb // ALIGN) * ALIGN
        return out + [at]

    @property
    def band_rows(self) -> int:
        return max(b.out_rows[1] - b.out_rows[0] for b in self.bands)

    @property
    def moved_bytes(self) -> int:
        """Bytes moved to the rings' fronts over the run (rows kept for the next band)."""
        moved, end = 0, [0] * len(self.ring_rows)
        for steps in self.steps:
            for k, st in enumerate(steps):
                if st.band.out_rows[0] < st.band.out_rows[1]:
                    moved += max(0, end[k] - st.window) * self.row_bytes[k + 1]
                    end[k] = st.band.out_rows[1]
        return moved

    @property
    def scratch_bytes(self) -> int:
        """The rings, then one band of u."""
        return self.ring_offsets()[-1] + self.band_rows * self.row_bytes[-1]


def _rows_read(p: dict, o0: int, o1: int) -> tuple[int, int, int]:
    """The input rows [i0, i1) a window layer reads for output rows [o0, o1), and the band's
    padding above."""
    i0 = max(0, o0 * p["sh"] - p["ph"])
    return i0, min(p["h"], (o1 - 1) * p["sh"] - p["ph"] + p["kh"]), max(0, p["ph"] - o0 * p["sh"])


def residual_plan(layers: list[Operator], add: Operator, graph: Graph, max_bands: int) -> ResidualPlan | None:
    """The fused plan of a residual block, or None: CONV_2D / DEPTHWISE_CONV_2D layers, each
    reading the last one's output, stride 1 with as many output rows and columns as input
    ones, the ADD of the block input and the last layer's output (same shape), and no band's
    first layer reading x rows an earlier band's ADD wrote."""
    from microtile.ops import kernel_for

    if add.opcode != "ADD" or len(add.inputs) != 2 or not 2 <= len(layers) <= 3 \
            or any(op.opcode not in BAND_OPS or "explicit_padding" in op.options for op in layers) \
            or any(b.inputs[0] != a.outputs[0] for a, b in zip(layers, layers[1:])):
        return None
    tensors = [graph.tensor(layers[0].inputs[0])] + [graph.tensor(op.outputs[0]) for op in layers]
    x, u, z = tensors[0], tensors[-1], graph.tensor(add.outputs[0])
    if sorted(add.inputs) != sorted([x.index, u.index]) or not (x.shape == u.shape == z.shape) \
            or len(x.shape) != 4 or x.shape[0] != 1 or any(t.dtype != "int8" for t in (*tensors, z)):
        return None
    params = [kernel_for(op).params(op, graph) for op in layers]
    for p in params:
        if (p["sh"], p["sw"]) != (1, 1) or p["oh"] != p["h"] or p["ow"] != p["w"]:
            return None
    h = params[-1]["oh"]
    if h < 2:
        return None
    rows = math.ceil(h / min(max_bands, h))
    n = len(layers)
    made = [0] * (n - 1)            # rows of each intermediate made so far
    window = [0] * (n - 1)          # first row each ring holds
    ring = [0] * (n - 1)
    bands, steps, written = [], [], 0
    for o0 in range(0, h, rows):
        o1 = min(h, o0 + rows)
        i0, i1, top = _rows_read(params[-1], o0, o1)
        bands.append(Band((o0, o1), (i0, i1), top))
        need = (i0, i1)             # rows of the last intermediate this band reads
        band_steps = [None] * (n - 1)
        for k in range(n - 2, -1, -1):  # backwards: what layer k makes, and so reads
            lo, hi = need
            window[k] = lo
            ring[k] = max(ring[k], hi - lo)
            new0 = max(lo, made[k])
            r0, r1, pad = _rows_read(params[k], new0, max(new0, hi)) if new0 < hi else (0, 0, 0)
            band_steps[k] = ChainStep(Band((new0, max(new0, hi)), (r0, r1), pad), lo)
            made[k] = max(made[k], hi)
            need = (r0, r1) if new0 < hi else (window[k - 1], window[k - 1]) if k else (0, 0)
        first = band_steps[0].band
        if first.out_rows[0] < first.out_rows[1] and first.in_rows[0] < written:
            return None  # the first layer would read x rows an earlier band's ADD wrote
        steps.append(tuple(band_steps))
        written = o1
    plan = ResidualPlan(tuple(bands), tuple(steps), tuple(ring),
                        tuple(t.shape[2] * t.shape[3] for t in tensors), tuple(p["pw"] for p in params), tuple(layers))
    if plan.scratch_bytes >= sum(t.nbytes for t in tensors[1:]):
        return None
    return plan


def residual_fusions(graph: Graph, ops: list[Operator], life: dict, protected: set[int],
                     config: RamConfig) -> dict[int, ResidualPlan]:
    """Step of the ADD -> ResidualPlan, for every block of 3 (else 2) window layers and the
    ADD of its input, run back to back, whose tensors only the block reads."""
    found: dict[int, ResidualPlan] = {}
    for step in range(2, len(ops)):
        for n in (3, 2):
            if step - n < 0 or set(range(step - n, step)) & {s - k for s in found for k in range(4)}:
                continue
            layers, add = ops[step - n:step], ops[step]
            if not all(op.outputs for op in layers):
                continue
            x = layers[0].inputs[0]
            middle = [op.outputs[0] for op in layers]
            if x in protected or set(middle) & protected or life.get(x, (0, -1))[1] != step \
                    or any(life.get(t) != (step - n + k, step - n + k + 1) for k, t in enumerate(middle)):
                continue
            readers = [i for i, op in enumerate(ops) if ({x} | set(middle)) & set(op.inputs)]
            if readers != list(range(step - n, step + 1)):
                continue
            plan = residual_plan(layers, add, graph, config.max_bands)
            if plan is not None:
                found[step] = plan
                break
    return found


def fused_plan(pw: Operator, dw: Operator, graph: Graph, max_bands: int,
               chain: tuple[int, int, int] | None = None) -> FusedPlan | None:
    """The fused plan of a 1x1 conv and the depthwise that alone reads its output, or None;
    top-down or bottom-up, at the offset that keeps ``chain`` (as band_plan's) smallest."""
    from microtile.ops import kernel_for

    x, t, y = graph.tensor(pw.inputs[0]), graph.tensor(pw.outputs[0]), graph.tensor(dw.outputs[0])
    if pw.opcode != "CONV_2D" or dw.opcode != "DEPTHWISE_CONV_2D" or dw.inputs[0] != pw.outputs[0] \
            or len(x.shape) != 4 or x.shape[0] != 1 or "explicit_padding" in pw.options:
        return None
    pp = kernel_for(pw).params(pw, graph)
    if (pp["kh"], pp["kw"], pp["sh"], pp["sw"]) != (1, 1, 1, 1) or pp["oh"] != pp["h"]:
        return None
    p = kernel_for(dw).params(dw, graph)
    rows = math.ceil(p["oh"] / min(max_bands, p["oh"]))
    bands = []
    for o0 in range(0, p["oh"], rows):
        o1 = min(p["oh"], o0 + rows)
        i0 = max(0, o0 * p["sh"] - p["ph"])
        i1 = min(p["h"], (o1 - 1) * p["sh"] - p["ph"] + p["kh"])
        bands.append(Band((o0, o1), (i0, i1), max(0, p["ph"] - o0 * p["sh"])))
    x_rb, t_rb, out_rb = x.shape[2] * x.shape[3], t.shape[2] * t.shape[3], p["ow"] * y.shape[3]
    # band b writes its output rows after reading the conv-input rows up to its last: later
    # bands read from there on
    # bands (top-down) or the first band (bottom-up) last run read no conv-input row after theirs
    most = min(b.in_rows[1] * x_rb - b.out_rows[1] * out_rb for b in bands[:-1]) if len(bands) > 1 else 0
    least = max(b.in_rows[0] * x_rb - b.out_rows[0] * out_rb for b in bands[1:]) if len(bands) > 1 else 0
    pos, low, high = chain or (0, 0, x.nbytes)
    ny = y.nbytes

    def extent(d: int) -> int:
        return max(high, pos + d + ny) - min(low, pos + d)

    options = []
    for reverse, ok in ((False, lambda d: d <= most), (True, lambda d: d >= least)):
        for d in (most, least, 0, low - pos, high - pos - ny):
            d = (d // ALIGN if not reverse else -(-d // ALIGN)) * ALIGN
            if ok(d):
                options.append((extent(d), reverse, abs(d), d))
    _, reverse, _, delta = min(options)
    plan = FusedPlan(tuple(bands), p["pw"], x_rb, t_rb, out_rb, delta, pw, reverse)
    if plan.scratch_bytes >= t.nbytes:
        return None
    return plan


def band_operator(op: Operator, band_graph: Graph, band: Band, bp: BandPlan) -> Operator:
    """The layer restricted to one band: new input / output tensors (appended to
    ``band_graph``, a copy of the graph's tensor list) of the band's rows, and the band's
    explicit padding."""
    x, y = band_graph.tensor(op.inputs[0]), band_graph.tensor(op.outputs[0])
    ti = Tensor(len(band_graph.tensors), f"{x.name}_rows{band.in_rows[0]}",
                (1, band.in_rows[1] - band.in_rows[0], *x.shape[2:]), x.dtype, x.quant)
    band_graph.tensors.append(ti)
    to = Tensor(len(band_graph.tensors), f"{y.name}_rows{band.out_rows[0]}",
                (1, band.out_rows[1] - band.out_rows[0], *y.shape[2:]), y.dtype, y.quant)
    band_graph.tensors.append(to)
    return Operator(op.index, op.opcode, [ti.index, *op.inputs[1:]], [to.index],
                    {**op.options, "explicit_padding": (band.pad_top, bp.pad_left)})


def band_plan(op: Operator, graph: Graph, max_bands: int = MAX_BANDS,
              chain: tuple[int, int, int] | None = None) -> BandPlan | None:
    """How a window op runs in bands over its own input, or None when it cannot (or
    when it would not save bytes). Top-down bands put the output at or before the
    input, bottom-up ones at or after it, with or without a copy of the band's input:
    the option that keeps the chain of in-place layers smallest wins. ``chain``: the
    input's offset in its chain and the chain's extent (position, low, high)."""
    from microtile.ops import kernel_for

    x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    if len(x.shape) != 4 or x.shape[0] != 1 or x.dtype != "int8" or y.dtype != "int8":
        return None
    p = kernel_for(op).params(op, graph)
    oh = p["oh"]
    if oh < 2:
        return None
    rows = math.ceil(oh / min(max_bands, oh))
    in_rb, out_rb = p["w"] * p["c"], p["ow"] * y.shape[3]
    bands = []
    for o0 in range(0, oh, rows):
        o1 = min(oh, o0 + rows)
        i0 = max(0, o0 * p["sh"] - p["ph"])
        i1 = min(p["h"], (o1 - 1) * p["sh"] - p["ph"] + p["kh"])
        bands.append(Band((o0, o1), (i0, i1), max(0, p["ph"] - o0 * p["sh"])))
    # Top-down: band b's output ends at o1 * out_rb (+ delta); band b+1 still reads from its
    # first input row. Bottom-up: band b's output starts at o0 * out_rb; band b-1 reads up to its last.
    # Without the copy, a band's output must also keep clear of the band's own input rows.
    down = min(nxt.in_rows[0] * in_rb - cur.out_rows[1] * out_rb for cur, nxt in zip(bands, bands[1:]))
    up = max(prev.in_rows[1] * in_rb - cur.out_rows[0] * out_rb for prev, cur in zip(bands, bands[1:]))
    down_direct = min(b.in_rows[0] * in_rb - b.out_rows[1] * out_rb for b in bands)
    up_direct = max(b.in_rows[1] * in_rb - b.out_rows[0] * out_rb for b in bands)
    t, pw = tuple(bands), p["pw"]
    options = [BandPlan(t, pw, in_rb, out_rb, min(down, 0) // ALIGN * ALIGN),
               BandPlan(t, pw, in_rb, out_rb, -(-max(up, 0) // ALIGN) * ALIGN, True),
               BandPlan(t, pw, in_rb, out_rb, min(down_direct, 0) // ALIGN * ALIGN, False, False),
               BandPlan(t, pw, in_rb, out_rb, -(-max(up_direct, 0) // ALIGN) * ALIGN, True, False)]

    def union(bp: BandPlan) -> int:
        return max(x.nbytes, bp.delta + y.nbytes) - min(bp.delta, 0)

    pos, low, high = chain or (0, 0, x.nbytes)

    def extent(bp: BandPlan) -> int:  # the chain's bytes once this output joins it
        return max(high, pos + bp.delta + y.nbytes) - min(low, pos + bp.delta)

    plan = min(options, key=lambda bp: (extent(bp) + bp.scratch_bytes, bp.copy, bp.reverse))
    if union(plan) + plan.scratch_bytes >= x.nbytes + y.nbytes:
        return None
    return plan


def fusions(graph: Graph, ops: list[Operator], life: dict, outputs: set[int], config: RamConfig) -> dict[int, FusedPlan]:
    """Step of the depthwise -> FusedPlan, for every 1x1 conv whose output only the next
    layer, a depthwise, reads."""
    found = {}
    for step in range(1, len(ops)):
        pw, dw = ops[step - 1], ops[step]
        t = pw.outputs[0] if pw.outputs else -1
        if step - 1 in found or t in outputs or life.get(t) != (step - 1, step):
            continue
        if sum(t in op.inputs for op in ops) != 1:
            continue
        plan = fused_plan(pw, dw, graph, config.max_bands)
        if plan is not None:
            found[step] = plan
    return found


def find_aliases(graph: Graph, ops: list[Operator], inputs: list[int], outputs: list[int],
                 config: RamConfig, kernels: str = "optimized", cut: bool = True) -> tuple[list[Alias], dict]:
    """The aliases to try, in order (cheapest first), and how each window op with an
    alias runs (by step): a BandPlan, a FusedPlan, or the scratch bytes of the optimised
    depthwise kernel's own in-place mode (ops/depthwise_opt.inplace_scratch_bytes: output
    on the input's bytes, one channel group's input plane in scratch), whichever keeps
    the chain smaller.

    Only where needed: aliased layers form one rigid chain whose offsets drift, so a
    layer whose live bytes, run plainly, stay within the peak the in-place layers reach
    anyway is left out, which cuts the chain there."""
    aliases, bands = _find(graph, ops, inputs, outputs, config, kernels, set())
    if not cut:
        return aliases, bands
    life = tensor_lifetimes(graph, ops, inputs, outputs)
    size = {i: graph.tensor(i).nbytes for i in life}
    live = [sum(size[i] for i, (a, b) in life.items() if a <= step <= b) for step in range(len(ops))]
    best = list(live)
    for step, how in bands.items():
        x, y = graph.tensor(ops[step].inputs[0]).nbytes, graph.tensor(ops[step].outputs[0]).nbytes
        if isinstance(how, ResidualPlan):  # the layers' outputs and z take no bytes of their own
            n = len(how.layers)
            for k in range(n + 1):
                gone = sum(graph.tensor(o.outputs[0]).nbytes for o in (*how.layers, ops[step])
                           if life[o.outputs[0]][0] <= step - n + k <= life[o.outputs[0]][1])
                best[step - n + k] = live[step - n + k] - gone + how.scratch_bytes
        elif isinstance(how, FusedPlan):
            t = graph.tensor(how.conv.outputs[0]).nbytes
            best[step - 1] = best[step] = live[step - 1] - t + y + how.scratch_bytes
        elif isinstance(how, (BandPlan, PanelPlan)):
            best[step] = live[step] - x - y + max(x, how.delta + y) - min(how.delta, 0) + how.scratch_bytes
        else:
            best[step] = live[step] - y + how
    for step, op in enumerate(ops):  # ADD / RESHAPE / CONCATENATION in place: the output costs nothing
        if any(a.member == op.outputs[0] and a.kind in ("add", "reshape") for a in aliases) or \
                any(a.base == op.outputs[0] and a.kind == "concat" for a in aliases):
            best[step] = live[step] - graph.tensor(op.outputs[0]).nbytes
    target = max(best, default=0)
    def steps_of(s: int, how) -> range:
        return range(s - len(how.layers), s + 1) if isinstance(how, ResidualPlan) else \
            range(s - 1, s + 1) if isinstance(how, FusedPlan) else range(s, s + 1)

    skip = {s for s, how in bands.items() if max(live[k] for k in steps_of(s, how)) <= target}
    return _find(graph, ops, inputs, outputs, config, kernels, skip) if skip else (aliases, bands)


def _find(graph: Graph, ops: list[Operator], inputs: list[int], outputs: list[int], config: RamConfig,
          kernels: str, skip: set[int]) -> tuple[list[Alias], dict]:
    from microtile.ops.depthwise_opt import inplace_scratch_bytes

    life = tensor_lifetimes(graph, ops, inputs, outputs)
    protected = set(outputs) | (set() if config.input_inplace else set(inputs))
    if config.reshape_alias:  # a RESHAPE of a device input is its bytes
        for op in ops:
            if op.opcode == "RESHAPE" and op.inputs[0] in protected:
                protected.add(op.outputs[0])

    def ends_here(i: int, step: int) -> bool:
        return i >= 0 and i in life and life[i][1] == step and i not in protected

    aliases: list[Alias] = []
    bands: dict[int, BandPlan | int | FusedPlan] = {}
    fused = fusions(graph, ops, life, set(outputs), config) if config.fuse else {}
    fused = {s: fp for s, fp in fused.items() if s not in skip}
    # the block's ADD writes over its input: an in-place ADD too
    residual = residual_fusions(graph, ops, life, protected, config) if config.fuse and config.add_inplace else {}
    residual = {s: rp for s, rp in residual.items() if s not in skip}
    fused = {s: fp for s, fp in fused.items()
             if not {s - 1, s} & {r - k for r, rp in residual.items() for k in range(len(rp.layers) + 1)}}
    # tensor -> (chain, offset in it); chain -> its extent (low, high), as the planner will group them
    where: dict[int, tuple[int, int]] = {}
    extent: dict[int, tuple[int, int]] = {}

    def chain_of(i: int) -> tuple[int, int, int, int]:
        if i not in where:
            where[i], extent[i] = (i, 0), (0, graph.tensor(i).nbytes)
        c, pos = where[i]
        return c, pos, *extent[c]

    def join(o: int, i: int, delta: int) -> None:
        c, pos, low, high = chain_of(i)
        where[o] = (c, pos + delta)
        extent[c] = (min(low, pos + delta), max(high, pos + delta + graph.tensor(o).nbytes))
    for step, op in enumerate(ops):
        outs = op.outputs
        if any(0 < r - step <= len(rp.layers) for r, rp in residual.items()):  # a layer of a fused block
            continue
        if step in residual:  # the ADD of the block: over the block input
            x = residual[step].layers[0].inputs[0]
            aliases.append(Alias(outs[0], x, 0, "add"))
            bands[step] = residual[step]
            join(outs[0], x, 0)
            continue
        if op.opcode == "RESHAPE" and config.reshape_alias:
            aliases.append(Alias(outs[0], op.inputs[0], 0, "reshape"))
        elif op.opcode in ("MT_PARTIAL_FC", "MT_PARTIAL_CONV") and len(op.inputs) > 2 \
                and ends_here(op.inputs[2], step):  # FDT: each element's sum is read before it is written
            aliases.append(Alias(outs[0], op.inputs[2], 0, "partial"))
            join(outs[0], op.inputs[2], 0)
        elif op.opcode == "CONCATENATION" and config.concat_place:
            y = graph.tensor(outs[0])
            axis = int(op.options.get("axis", 0)) % len(y.shape)
            if all(d == 1 for d in y.shape[:axis]) and len(set(op.inputs)) == len(op.inputs):
                offset = 0
                for i in op.inputs:
                    if i not in inputs:
                        aliases.append(Alias(i, outs[0], offset, "concat"))
                    offset += graph.tensor(i).nbytes
        elif op.opcode == "ADD" and config.add_inplace:
            y = graph.tensor(outs[0])
            for i in op.inputs[:2]:
                t = graph.tensor(i)
                if ends_here(i, step) and t.shape == y.shape and t.dtype == y.dtype:
                    aliases.append(Alias(outs[0], i, 0, "add"))
                    if outs[0] not in where:
                        join(outs[0], i, 0)
        elif step in fused or step + 1 in fused:
            x = ops[step - 1].inputs[0] if step in fused else -1
            if ends_here(x, step - 1):  # the depthwise of a fused pair over the conv's input, placed for its chain
                fp = fused_plan(ops[step - 1], op, graph, config.max_bands, chain_of(x)[1:])
                aliases.append(Alias(outs[0], x, fp.delta, "fused"))
                bands[step] = fp
                join(outs[0], x, fp.delta)
            elif step in fused:  # fused, its output placed on its own (the conv's input lives on)
                bands[step] = fused[step]
        elif op.opcode in BAND_OPS and getattr(config, BAND_OPS[op.opcode], False) and ends_here(op.inputs[0], step) \
                and step not in skip:
            chain = chain_of(op.inputs[0])[1:]
            plan = band_plan(op, graph, config.max_bands, chain)
            own = inplace_scratch_bytes(op, graph, kernels) if op.opcode == "DEPTHWISE_CONV_2D" else None
            panel = panel_plan(op, graph, kernels, chain)
            if panel is not None:  # no copy and no extra call: preferred unless bands keep the chain smaller
                pos, low, high = chain
                y = graph.tensor(outs[0]).nbytes
                if plan is None or max(high, pos + panel.delta + y) - min(low, pos + panel.delta) <= \
                        max(high, pos + plan.delta + y) - min(low, pos + plan.delta) + plan.scratch_bytes:
                    plan = panel
            if own is not None:
                pos, low, high = chain
                y = graph.tensor(outs[0]).nbytes
                own_extent = max(high, pos + y) - min(low, pos)
                if plan is None or own_extent + own <= max(high, pos + plan.delta + y) - min(low, pos + plan.delta) \
                        + plan.scratch_bytes:
                    aliases.append(Alias(outs[0], op.inputs[0], 0, "depthwise_conv_2d"))
                    bands[step] = own
                    join(outs[0], op.inputs[0], 0)
                    continue
            if plan is not None:
                aliases.append(Alias(outs[0], op.inputs[0], plan.delta, op.opcode.lower()))
                bands[step] = plan
                join(outs[0], op.inputs[0], plan.delta)
    return aliases, bands
