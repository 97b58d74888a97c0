"""Offline preparation of the optimised DEPTHWISE_CONV_2D kernel (firmware/include/mt_depthwise_opt.h).

The kernel reads one stream of int32 words (see the header for the layout): per group
of 4 output channels the doubled bias (plain, and with the input offset folded in for
the interior), the doubled weights as halfword pairs (c0, c2) and (c1, c3) per tap,
and the fast-requantisation constants; then the channels left over when the output
channel count is not a multiple of 4. Any depth multiplier runs (above 1 the kernel
gathers each group's source channels into scratch first). Layers the fast path cannot
take (a non-negative shift, accumulators that could overflow) keep the reference
kernel, with the reason depthwise_fallback states; a layer with one input channel
(any depth multiplier) is a CONV_2D and runs as one. ``inplace_scratch_bytes`` tells
the memory planner when the output may overwrite the input.
"""
from __future__ import annotations

import numpy as np

from microtile.errors import MicrotileError
from microtile.importer.ir import Graph, Operator
from microtile.ops import EmitContext
from microtile.ops.requant_opt import fast_requant, fast_requant_problem, max_abs_input


def depthwise_stream(weights: np.ndarray, bias: np.ndarray, mult: np.ndarray, k: np.ndarray,
                     right: np.ndarray, input_offset: int) -> np.ndarray:
    """weights (KH*KW, OC) int, bias / mult / k / right (OC,) -> the kernel's int32 stream
    (layout in the header). A group's weights are one word per tap, its 4 channels'
    int8 weights in bytes 0..3; its interior bias folds the input offset in:
    bias + input_offset * sum of the channel's taps, modulo 2**32 (the kernel's
    accumulator wraps the same way; its final value is the exact sum). The channels
    left over keep doubled weights and bias (their accumulator is doubled throughout)."""
    taps, c_n = weights.shape
    w = weights.astype(np.int64)
    w2, b2 = 2 * w, 2 * bias.astype(np.int64)
    bf = bias.astype(np.int64) + input_offset * w.sum(axis=0)
    words: list[np.ndarray] = []
    for g in range(c_n // 4):
        c = 4 * g
        words += [bias[c:c + 4].astype(np.int64), bf[c:c + 4]]
        words.append(((w[:, c:c + 4] & 0xFF) << np.array([0, 8, 16, 24])).sum(axis=1))
        words.append(np.stack([mult[c:c + 4], k[c:c + 4], right[c:c + 4]], axis=1).reshape(-1))
    for c in range(c_n & ~3, c_n):
        words.append(np.array([b2[c], mult[c], k[c], right[c]], dtype=np.int64))
        words.append(w2[:, c])
    flat = np.concatenate([np.asarray(w, dtype=np.int64) for w in words]) if words else np.zeros(0, np.int64)
    return (flat & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def planar_geometry(p: dict) -> dict | None:
    """The planar kernel's plane (firmware/include/mt_depthwise_planar_opt.h) when it takes
    this layer, else None: 3x3, stride 1, depth multiplier 1, one batch, the int8
    activation range (its SSAT is the only clamp), and strides its asm takes as
    immediates (LDRD offsets up to 1020 B, byte-store offsets up to 4095 B). The plane
    runs along the longer output side (`transposed` when the output is taller than
    wide), plane_w even so that each output pair's row is one LDRD."""
    if (p["kh"], p["kw"], p["sh"], p["sw"], p["dm"], p["n"]) != (3, 3, 1, 1, 1, 1) or p["c"] < 2 \
            or tuple(p["act"]) != (-128, 127):
        return None
    transposed = p["oh"] > p["ow"]
    lines, along = (p["ow"], p["oh"]) if transposed else (p["oh"], p["ow"])
    in_lines, in_along = (p["w"] + p["pw"], p["h"] + p["ph"]) if transposed else (p["h"] + p["ph"], p["w"] + p["pw"])
    plane_w = max(in_along, along + 2)
    plane_w += plane_w & 1
    out_step = p["ow"] * p["c"] if transposed else p["c"]
    line_step = p["c"] if transposed else p["ow"] * p["c"]
    if 4 * plane_w > 1020 or 2 * out_step > 4095:
        return None
    # two lines at a time (MT_DWP_QUADS) where its immediates fit: MT_DWP_QUADS_FIT
    quads = lines >= 2 and 6 * plane_w <= 1020 and line_step + out_step <= 4095
    return {"transposed": transposed, "plane_h": max(in_lines, lines + 2), "plane_w": plane_w, "quads": quads}


# Est. cycles of the two depthwise kernels on the NUCLEO-L4R5ZI model (from per-function
# profiles of KWS's and VWW's layers, `microtile bench ... --board nucleo_l4r5zi
# --emulate`): the planar kernel per output pair, per odd last output of a line, per
# line, per copied input value and per channel (planar_channel_cost); the
# channel-group kernel per output value (31-41 measured, border share included).
PLANAR_CYCLES = {"pair": 47, "quad": 80, "odd": 49, "line": 15, "copy": 5, "channel": 60}
GROUP_OUTPUT = 35
# Tests force a kernel: True (planar wherever planar_geometry allows), False (never),
# None (the cost comparison of planar_choice).
PLANAR: bool | None = None


def planar_choice(p: dict) -> dict | None:
    """The planar geometry when the planar kernel takes the layer: it can, and it is
    predicted cheaper than the channel-group kernel. Small planes lose to its per
    channel and per line costs (VWW's 1-row bands of the RAM techniques: about 1.4x
    the channel-group kernel's cycles), long lines win (KWS's 25 x 5: 0.77x)."""
    planar = planar_geometry(p)
    if planar is None or PLANAR is False:
        return None
    if PLANAR:
        return planar
    return planar if planar_channel_cost(p, planar, PLANAR_CYCLES) < GROUP_OUTPUT * p["oh"] * p["ow"] else None


def planar_channel_cost(p: dict, planar: dict, unit: dict) -> float:
    """The planar kernel's cost per channel from the unit costs `unit` (per output pair,
    2x2 block of two lines, odd last output of a line, line, copied input value,
    channel): est. cycles (PLANAR_CYCLES) or instructions (opt_schedules.DWP_INSTRUCTIONS).
    Lines go two at a time where the quads fit, the last odd one alone."""
    lines, along = (p["ow"], p["oh"]) if planar["transposed"] else (p["oh"], p["ow"])
    twos = lines // 2 if planar.get("quads") else 0
    ones = lines - 2 * twos
    return (unit["channel"] + unit["copy"] * p["h"] * p["w"]
            + twos * (unit["line"] + unit["quad"] * (along // 2) + 2 * unit["odd"] * (along % 2))
            + ones * (unit["line"] + unit["pair"] * (along // 2) + unit["odd"] * (along % 2)))


def planar_stream(weights: np.ndarray, bias: np.ndarray, mult: np.ndarray, k: np.ndarray, right: np.ndarray,
                  transposed: bool) -> np.ndarray:
    """weights (9, C) int, bias / mult / k / right (C,) -> the planar kernel's int32
    stream (MT_DWP_WORDS per channel, layout in its header). A plane row is a filter
    row, or a filter column when transposed."""
    c_n = weights.shape[1]
    w = weights.astype(np.int64).reshape(3, 3, c_n)
    if transposed:
        w = w.transpose(1, 0, 2)
    half = w & 0xFFFF
    words = np.stack([half[0, 0] | half[0, 1] << 16, half[1, 0] | half[1, 1] << 16, half[2, 0] | half[2, 1] << 16,
                      half[0, 2] | half[1, 2] << 16, half[2, 2], bias.astype(np.int64), mult.astype(np.int64),
                      k.astype(np.int64), right.astype(np.int64)], axis=1)
    return (words.reshape(-1) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def _weights_bias_bound(op: Operator, graph: Graph, p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (KH*KW, C), bias (C,), per-channel bound on |accumulator|)."""
    c_n, kh, kw = p["oc"], p["kh"], p["kw"]
    weights = np.asarray(graph.tensor(op.inputs[1]).data, dtype=np.int64).reshape(kh * kw, c_n)
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        bias = np.asarray(graph.tensor(op.inputs[2]).data, dtype=np.int64).reshape(-1)
    else:
        bias = np.zeros(c_n, dtype=np.int64)
    bound = np.abs(bias) + max_abs_input(p["in_zp"]) * np.abs(weights).sum(axis=0)
    return weights, bias, bound


def depthwise_fallback(op: Operator, graph: Graph, p: dict) -> str | None:
    """Why the optimised depthwise kernel does not take this layer, or None."""
    if p["c"] == 1:
        return None  # one input channel: runs as the optimised CONV_2D (see conv.py)
    _, _, bound = _weights_bias_bound(op, graph, p)
    return fast_requant_problem(p["shift"], p["out_zp"], bound)


def depthwise_fast_path(op: Operator, graph: Graph, p: dict, planar: dict | None = None) -> np.ndarray | None:
    """The kernel's int32 stream when the optimised depthwise kernel applies, else None:
    the planar kernel's for its geometry `planar`, else the channel-group kernel's."""
    if p["c"] == 1 or depthwise_fallback(op, graph, p) is not None:
        return None
    weights, bias, bound = _weights_bias_bound(op, graph, p)
    k, right = fast_requant(p["mult"], p["shift"], p["out_zp"], bound)
    mult = np.asarray(p["mult"], dtype=np.int64)
    if planar is not None:
        return planar_stream(weights, bias, mult, k, right, planar["transposed"])
    return depthwise_stream(weights, bias, mult, k, right, -p["in_zp"])


def _params(op: Operator, graph: Graph) -> dict:
    from microtile.ops import kernel_for

    return kernel_for(op).params(op, graph)


def inplace_scratch_bytes(op: Operator, graph: Graph, kernels: str = "optimized") -> int | None:
    """Scratch bytes this DEPTHWISE_CONV_2D needs to write its output over its own
    input, or None when it cannot run in place.

    How to use it (the memory planner): when this returns n, the planner may give the
    op's output tensor the same arena offset as its input (the input's lifetime must
    end at this op) and then emits the op with ``options["in_place"] = True`` (on a
    copy of the Operator, as ``explicit_padding`` is passed to bands). The emitter then
    writes in place and takes the n bytes of layer scratch itself (``ctx.scratch``);
    an ``in_place`` op for which this returns None is refused at emit (MicrotileError).
    Without the option the output must not overlap the input.

    The kernel runs channel group by channel group (4 channels): it copies the
    group's input plane (in_h x in_w x 4 bytes, no padding: borders are clipped) into
    scratch and writes the group's
    outputs from there. That is safe whenever input and
    output have the same channel count (depth multiplier 1) and no more pixels
    (out_h * out_w <= in_h * in_w, true for every stride with SAME or VALID padding):
    a group then writes only its own channels' bytes, which it copied before its first
    write, and never another group's. A depth multiplier above 1 makes the output
    wider than the input (a group's writes land on other channels' bytes): None.
    None too for the reference kernel set (TFLM's loop structure, not in place), a
    layer the optimised kernel does not take (``depthwise_fallback``), and one input
    channel (it runs as a CONV_2D)."""
    if kernels != "optimized" or op.opcode != "DEPTHWISE_CONV_2D":
        return None
    p = _params(op, graph)
    if p["c"] == 1 or p["dm"] != 1 or depthwise_fallback(op, graph, p) is not None:
        return None
    if p["oh"] * p["ow"] > p["h"] * p["w"]:
        return None
    planar = planar_choice(p)
    return plane_bytes(p, True) if planar is None else planar_bytes(planar)


def planar_bytes(planar: dict) -> int:
    """The planar kernel's scratch: one channel's int16 plane."""
    return 2 * planar["plane_h"] * planar["plane_w"]


def _interior_pixels(p: dict) -> int:
    """Output pixels whose whole window lies inside the image (the kernel's fast path)."""
    def inside(out: int, size: int, k: int, s: int, pad: int) -> int:
        return sum(1 for o in range(out) if o * s - pad >= 0 and o * s - pad + k <= size)
    return (inside(p["oh"], p["h"], p["kh"], p["sh"], p["ph"])
            * inside(p["ow"], p["w"], p["kw"], p["sw"], p["pw"]))


def padded_plane(p: dict) -> bool:
    """Whether a 3x3 layer gathers each group into a plane with its padding filled in
    (every pixel then takes the unrolled interior path): only with a depth multiplier
    above 1, which gathers a plane anyway. Measured on the NUCLEO-L4R5ZI model, a
    padded copy for KWS's 25x5x64 (45% border pixels) cost more than it saved
    (3.77 instead of 3.50 instructions per MAC): the clipped border rows are
    unrolled too and cost about what interior pixels do."""
    return p["kh"] == 3 and p["kw"] == 3 and p["oc"] >= 4 and p["dm"] > 1


def plane_bytes(p: dict, in_place: bool) -> int:
    """Scratch the kernel takes: one group's gathered plane (padded, or in_h x in_w
    bytes per channel of the group), or 0 when it reads the input directly."""
    plain = p["h"] * p["w"] * min(4, p["oc"])
    if padded_plane(p):
        padded = ((p["oh"] - 1) * p["sh"] + p["kh"]) * ((p["ow"] - 1) * p["sw"] + p["kw"]) * 4
        return max(padded, plain if in_place else 0)
    return plain if in_place or p["dm"] > 1 else 0


def emit_depthwise_opt(op: Operator, graph: Graph, ctx: EmitContext, p: dict) -> str | None:
    """The optimised call for DepthwiseConv2D.emit, or None to keep the reference kernel.
    In place when op.options["in_place"] is set (see inplace_scratch_bytes)."""
    stream = depthwise_fast_path(op, graph, p)
    if stream is None:
        return None
    src, dst = ctx.ptr(op.inputs[0]), ctx.ptr(op.outputs[0])
    in_place = bool(op.options.get("in_place", False))
    if in_place and inplace_scratch_bytes(op, graph, ctx.kernels) is None:
        raise MicrotileError(f"operator {op.index} DEPTHWISE_CONV_2D: in_place asked for a layer that cannot "
                             "write over its input (inplace_scratch_bytes is None)")
    if op.options.get("microtile_prune"):  # issue 10: skipped taps (passes/approx.py)
        from microtile.passes.approx import emit_depthwise_pruned
        return emit_depthwise_pruned(op, graph, ctx, p, in_place)
    planar = planar_choice(p)
    shared = (SHARED is not None and SHARED(p, in_place)) or shape_function_name(p, in_place) in SHARED_SHAPES
    if planar is not None and not shared:
        return _emit_planar(op, graph, ctx, p, planar, src, dst)
    scratch_bytes = plane_bytes(p, in_place)
    ctx.include("mt_depthwise_opt.h")
    data = ctx.const_array("dw_opt_data", stream)
    init = params_init(p, in_place, padded_plane(p), data)
    params = ctx.static_struct("mt_depthwise_opt_params", "dw_opt_params", init)
    scratch = f"(int8_t *){ctx.scratch(scratch_bytes)}" if scratch_bytes else "NULL"
    if shared:
        return f"mt_depthwise_s8_opt_shared(&{params}, {src}, {dst}, {scratch});"
    return f"{_shape_function(ctx, p, in_place)}(&{params}, {src}, {dst}, {scratch});"


# Which calls take the shared, run-time-geometry kernel (mt_depthwise_opt.c) instead of a
# specialised function: None (all specialised) or a predicate (p, in_place) -> bool;
# and the shapes (function names) build/firmware.py's ROM rule sends there.
SHARED = None
SHARED_SHAPES: frozenset[str] = frozenset()


def params_init(p: dict, in_place: bool, padded: bool, data: str) -> str:
    """The C initializer of mt_depthwise_opt_params (also the pruned kernel's geometry)."""
    return (f"{{{p['n']}, {p['h']}, {p['w']}, {p['c']}, {p['oh']}, {p['ow']}, {p['kh']}, {p['kw']}, "
            f"{p['sh']}, {p['sw']}, {p['ph']}, {p['pw']}, {-p['in_zp']}, {p['act'][0]}, {p['act'][1]}, "
            f"{p['dm']}, {int(in_place)}, {int(padded)}, {data}}}")


def _shape(p: dict, in_place: bool) -> tuple:
    return (p["n"], p["h"], p["w"], p["c"], p["oh"], p["ow"], p["kh"], p["kw"], p["sh"], p["sw"],
            p["ph"], p["pw"], p["dm"], int(in_place), int(padded_plane(p)),
            -128 if p["act"][0] == -128 else -127, 127 if p["act"][1] == 127 else 126)


def shape_function_name(p: dict, in_place: bool) -> str:
    """The specialised function of this layer's shape (its name spells the geometry)."""
    return ("mt_dw_shape_" + "_".join(str(v) for v in _shape(p, in_place))).replace("-", "m")


def shape_function_macs(name: str) -> int:
    """MACs of one call of the shape function `name` (from the geometry it spells)."""
    n, _, _, c, oh, ow, kh, kw, _, _, _, _, dm = (int(v) for v in name[len("mt_dw_shape_"):].split("_")[:13])
    return n * oh * ow * c * dm * kh * kw


def _shape_function(ctx: EmitContext, p: dict, in_place: bool) -> str:
    """The name of a model.c function running the kernel specialised for this layer's
    shape (its geometry as constants), defined once and shared by every layer of that
    shape: KWS's four depthwise layers take one copy (~4.6 KB) instead of one inlined
    copy each. The run-time parameters (offset, activation range, data) come from the
    layer's struct."""
    name = shape_function_name(p, in_place)
    n, h, w, c, oh, ow, kh, kw, sh, sw, ph, pw, dm, inp, padded, lo, hi = _shape(p, in_place)
    ctx.define(
        f"static __attribute__((noinline)) void {name}(const mt_depthwise_opt_params *rt, const int8_t *in,\n"
        f"    int8_t *out, int8_t *scratch)\n{{\n"
        f"    /* the geometry as constants; offset, activation range and data from rt */\n"
        f"    static const mt_depthwise_opt_params shape = {{{n}, {h}, {w}, {c}, {oh}, {ow}, {kh}, {kw}, {sh}, "
        f"{sw}, {ph}, {pw},\n        0, {lo}, {hi}, {dm}, {inp}, {padded}, NULL}};\n"
        f"    mt_depthwise_s8_opt(&shape, rt, in, out, scratch);\n}}")
    return name


def _emit_planar(op: Operator, graph: Graph, ctx: EmitContext, p: dict, planar: dict, src: str, dst: str) -> str:
    """The call of the planar kernel through its shape's model.c function (the strides
    are the asm's immediates), named after the channel-group kernel's shape with a
    _planar suffix so that the ROM rule (build/firmware.py) can trade it the same way.
    In place needs nothing more: a channel's input is in the plane before its outputs
    are written (mt_depthwise_planar_opt.h)."""
    ctx.include("mt_depthwise_planar_opt.h")
    stream = depthwise_fast_path(op, graph, p, planar)
    data = ctx.const_array("dwp_data", stream)
    t, ph, pw = int(planar["transposed"]), planar["plane_h"], planar["plane_w"]
    geometry = f"{p['h']}, {p['w']}, {p['c']}, {p['oh']}, {p['ow']}, {p['ph']}, {p['pw']}, {t}, {ph}, {pw}"
    params = ctx.static_struct("mt_dw_planar_params", "dwp_params", f"{{{geometry}, {-p['in_zp']}, {data}}}")
    name = shape_function_name(p, bool(op.options.get("in_place", False))) + "_planar"
    ctx.define(
        f"static __attribute__((noinline)) void {name}(const mt_dw_planar_params *rt, const int8_t *in,\n"
        f"    int8_t *out, int16_t *plane)\n{{\n"
        f"    static const mt_dw_planar_params shape = {{{geometry}, 0, NULL}};\n"
        f"    mt_depthwise_planar_s8_opt(&shape, rt, in, out, plane);\n}}")
    return f"{name}(&{params}, {src}, {dst}, (int16_t *){ctx.scratch(planar_bytes(planar))});"
