"""CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED with TFLM's int8 semantics.

The numpy references follow tflite/kernels/internal/reference/integer_ops/
{conv,depthwise_conv,fully_connected}.h and the multipliers computed in TFLM's
Prepare functions (PopulateConvolutionQuantizationParams for the convolutions,
CalculateOpDataFullyConnected for FC). Multipliers and shifts are computed here on
the host, so the C kernels (firmware/kernels/mt_{conv,depthwise_conv,fully_connected}.c)
only do integer work. Shifts use TFLite's sign convention (positive = left).

The helpers at the top (padding, activation range, multipliers) are shared with
pool.py.
"""
from __future__ import annotations

import functools

import numpy as np

from microtile.importer.ir import Graph, Operator, Tensor
from microtile.importer.quant import multiply_by_quantized_multiplier, quantize_multiplier, wrap_int32
from microtile.ops import EmitContext, OpKernel, fused_activation_range, register

PADDINGS = ("SAME", "VALID")


# ---------------------------------------------------------------- shared helpers

def out_size_and_padding(in_size: int, filter_size: int, stride: int, padding: str) -> tuple[int, int]:
    """ComputeOutSize + ComputePaddingWithOffset (dilation 1): (output size, padding
    before). TFLM's reference kernels ignore the odd extra padding after."""
    if padding == "SAME":
        out = (in_size + stride - 1) // stride
    else:
        out = (in_size + stride - filter_size) // stride
    total = max(0, (out - 1) * stride + filter_size - in_size)
    return out, total // 2


def per_channel_multipliers(input_scale: float, filter_scales: np.ndarray, output_scale: float,
                            channels: int) -> tuple[np.ndarray, np.ndarray]:
    """PopulateConvolutionQuantizationParams: one (multiplier, shift) per output
    channel, effective scale computed in double from the float32 scales; a
    per-tensor filter scale is broadcast."""
    scales = np.asarray(filter_scales, dtype=np.float32).reshape(-1)
    mult, shift = _multipliers_cached(float(np.float32(input_scale)), scales.tobytes(),
                                      float(np.float32(output_scale)), channels)
    return mult.copy(), shift.copy()


@functools.lru_cache(maxsize=1024)
def _multipliers_cached(in_s: float, scales_raw: bytes, out_s: float,
                        channels: int) -> tuple[np.ndarray, np.ndarray]:
    # The reference executor runs every layer once per input: compute once per layer.
    scales = np.frombuffer(scales_raw, dtype=np.float32)
    if scales.size == 1:
        scales = np.repeat(scales, channels)
    mult = np.zeros(channels, dtype=np.int32)
    shift = np.zeros(channels, dtype=np.int32)
    for c in range(channels):
        mult[c], shift[c] = quantize_multiplier(in_s * float(scales[c]) / out_s)
    return mult, shift


def _int8_activation(kernel: OpKernel, op: Operator, t: Tensor | None, role: str) -> None:
    if t is None:
        raise kernel.unsupported(op, f"{role} is missing")
    if t.dtype != "int8":
        raise kernel.unsupported(op, f"{role} {t.name} is {t.dtype}", "int8 activations")
    if t.quant is None or t.quant.scale.size != 1:
        raise kernel.unsupported(op, f"{role} {t.name} needs per-tensor int8 quantization")


def _check_common_options(kernel: OpKernel, op: Operator, out: Tensor, *, with_padding: bool = True) -> None:
    o = op.options
    kernel.check_fused_activation(op, out)
    if with_padding:
        if o.get("padding") not in PADDINGS:
            raise kernel.unsupported(op, f"padding {o.get('padding')}", "SAME, VALID")
        if o.get("stride_h", 1) < 1 or o.get("stride_w", 1) < 1:
            raise kernel.unsupported(op, "stride < 1")


def _check_dilation(kernel: OpKernel, op: Operator) -> None:
    dh, dw = op.options.get("dilation_h_factor", 1), op.options.get("dilation_w_factor", 1)
    if dh != 1 or dw != 1:
        raise kernel.unsupported(op, f"dilation {dh}x{dw}", "dilation 1 only")


def _check_filter_and_bias(kernel: OpKernel, op: Operator, graph: Graph, channels: int, axis: int) -> None:
    f = graph.tensor(op.inputs[1])
    if not f.is_constant:
        raise kernel.unsupported(op, "filter is not a constant tensor", "constant weights")
    if f.dtype != "int8":
        raise kernel.unsupported(op, f"filter {f.name} is {f.dtype}", "int8 weights")
    if f.quant is None:
        raise kernel.unsupported(op, f"filter {f.name} is not quantized")
    n = f.quant.scale.size
    if n != 1 and (n != channels or f.quant.axis != axis):
        raise kernel.unsupported(
            op, f"filter has {n} scales on axis {f.quant.axis}",
            f"per-tensor or {channels} per-channel scales on axis {axis}")
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        b = graph.tensor(op.inputs[2])
        if not b.is_constant or b.dtype != "int32":
            raise kernel.unsupported(op, f"bias {b.name} is {b.dtype}{'' if b.is_constant else ' (not constant)'}",
                                     "constant int32 bias")
        if b.data.size != channels:
            raise kernel.unsupported(op, f"bias has {b.data.size} values for {channels} output channels")


def _bias(op: Operator, inputs: list, channels: int) -> np.ndarray:
    if len(inputs) > 2 and inputs[2] is not None:
        return np.asarray(inputs[2], dtype=np.int64).reshape(-1)
    return np.zeros(channels, dtype=np.int64)


def _requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, out_zp: int,
                act: tuple[int, int]) -> np.ndarray:
    """acc (..., C) int32 accumulators -> int8, per-channel multipliers on the last axis."""
    y = multiply_by_quantized_multiplier(wrap_int32(acc), mult.astype(np.int64), shift.astype(np.int64))
    y = y + out_zp
    return np.clip(y, act[0], act[1]).astype(np.int8)


def _patches(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
             oh: int, ow: int) -> np.ndarray:
    """x (N, H, W, C) zero-centred int64 -> windows (N, OH, OW, KH, KW, C); the
    padding area is 0, which is what skipping out-of-image taps amounts to."""
    n, h, w, c = x.shape
    need_h = (oh - 1) * sh + kh
    need_w = (ow - 1) * sw + kw
    xp = np.zeros((n, max(need_h, ph + h), max(need_w, pw + w), c), dtype=np.int64)
    xp[:, ph:ph + h, pw:pw + w, :] = x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))  # N, H', W', C, KH, KW
    win = win[:, 0:(oh - 1) * sh + 1:sh, 0:(ow - 1) * sw + 1:sw]
    return np.moveaxis(win, 3, 5)  # N, OH, OW, KH, KW, C


def _exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matrix product through float64 BLAS (numpy's integer matmul is
    slow); exact while every partial sum stays below 2**53."""
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * a.shape[-1]
    if bound >= 2.0 ** 53:
        return a.astype(np.int64) @ b.astype(np.int64)
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def _conv_geometry(op: Operator, graph: Graph) -> dict:
    x = graph.tensor(op.inputs[0])
    f = graph.tensor(op.inputs[1])
    o = op.options
    sh, sw = o.get("stride_h", 1), o.get("stride_w", 1)
    n, h, w, _ = x.shape
    kh, kw = f.shape[1], f.shape[2]
    oh, ph = out_size_and_padding(h, kh, sh, o["padding"])
    ow, pw = out_size_and_padding(w, kw, sw, o["padding"])
    if "explicit_padding" in o:  # (top, left) set by a graph pass (a folded PAD, a band of rows)
        (ph, pw), y = o["explicit_padding"], graph.tensor(op.outputs[0])
        oh, ow = y.shape[1], y.shape[2]
    return dict(n=n, h=h, w=w, c=x.shape[3], kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, oh=oh, ow=ow)


def _check_conv_shapes(kernel: OpKernel, op: Operator, graph: Graph, out_c: int) -> dict:
    x = graph.tensor(op.inputs[0])
    y = graph.tensor(op.outputs[0])
    if len(x.shape) != 4:
        raise kernel.unsupported(op, f"input rank {len(x.shape)}", "4-D NHWC input")
    g = _conv_geometry(op, graph)
    if g["oh"] < 1 or g["ow"] < 1:
        raise kernel.unsupported(op, "filter larger than the input with VALID padding")
    expected = (g["n"], g["oh"], g["ow"], out_c)
    if tuple(y.shape) != expected:
        raise kernel.unsupported(op, f"output shape {tuple(y.shape)} does not match the computed {expected}")
    return g


# ---------------------------------------------------------------- optimised (schedule-specialised) paths

def matmul_fallback(op: Operator, graph: Graph) -> str | None:
    """Why the optimised matmul kernels (mt_matmul_opt.c) do not run this layer, or
    None: FC needs a zero weights zero point (the int8 symmetric case); CONV_2D and
    DEPTHWISE_CONV_2D with one input channel (a CONV_2D) always run."""
    if op.opcode == "FULLY_CONNECTED":
        f = graph.tensor(op.inputs[1])
        if not f.quant.per_channel and f.zero_point != 0:
            return f"weights zero point {f.zero_point} (the optimised kernel takes symmetric weights)"
        return None
    if op.opcode == "CONV_2D" or depthwise_as_conv(op, graph):
        return None
    return "not matmul-shaped"


def optimized_supported(op: Operator, graph: Graph) -> bool:
    """Whether the optimised matmul kernels (mt_matmul_opt.c) run this layer."""
    return op.opcode in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D") and matmul_fallback(op, graph) is None


def depthwise_as_conv(op: Operator, graph: Graph) -> bool:
    """A DEPTHWISE_CONV_2D over one input channel is a CONV_2D with depth_multiplier
    output channels (same sums, same per-channel requantisation): it runs as one."""
    return op.opcode == "DEPTHWISE_CONV_2D" and graph.tensor(op.inputs[0]).shape[-1] == 1


def pack_weights(w: np.ndarray, nr: int, wide: bool) -> tuple[np.ndarray, int]:
    """[N, K] int8 weights -> (int64 array of the packed B layout, k_blocks).

    Channels in tiles of nr (zero rows past N), K padded to whole blocks of 4 with
    zeros; per tile, k-block b, channel j: the block's 4 int8 values as one word, or
    (wide) two words of int16 pairs (w0, w2), (w1, w3) - the pairing SXTB16 and
    SXTB16-ROR8 give the A panel."""
    n, k = w.shape
    kb = -(-k // 4)
    tiles = -(-n // nr)
    full = np.zeros((tiles * nr, kb * 4), dtype=np.int8)
    full[:n, :k] = w
    blocks = full.reshape(tiles, nr, kb, 4).transpose(0, 2, 1, 3)  # tile, block, channel, 4
    if wide:
        raw = blocks[..., [0, 2, 1, 3]].astype("<i2").tobytes()
    else:
        raw = np.ascontiguousarray(blocks).tobytes()
    raw += b"\0" * (-len(raw) % 8)
    return np.frombuffer(raw, dtype="<i8").copy(), kb


def folded_bias(w: np.ndarray, bias: np.ndarray | None, input_zero_point: int, padded: int) -> np.ndarray:
    """bias'[n] = bias[n] - zp_in * sum_k w[n, k], wrapped to int32 as the kernel's
    accumulator, padded with zeros to the tile multiple."""
    n = w.shape[0]
    b = np.zeros(n, dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64).reshape(-1)
    b = b - int(input_zero_point) * w.astype(np.int64).sum(axis=1)
    out = np.zeros(padded, dtype=np.int32)
    out[:n] = wrap_int32(b).astype(np.int32)
    return out


def constant_channels(w: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray, in_zp: int,
                      out_zp: int, act: tuple[int, int]) -> np.ndarray:
    """Per channel the one int8 value it outputs for every input, or a value outside
    int8 where it can output more than one. The accumulator's range over all int8
    inputs, bias + sum_k w_k (x_k - zp), is exact; the requantisation is monotonic in
    it, so equal clamped outputs at both ends mean a constant channel (a dead channel:
    weights ~0 and a bias far out, common in trained models)."""
    w = w.astype(np.int64)
    lo_x, hi_x = -128 - in_zp, 127 - in_zp
    lo = bias + np.minimum(w * lo_x, w * hi_x).sum(axis=1)
    hi = bias + np.maximum(w * lo_x, w * hi_x).sum(axis=1)
    inside = (lo >= -(1 << 31)) & (hi < (1 << 31))  # beyond int32 TFLM's sum wraps: not monotonic
    m, sh = np.asarray(mult, np.int64).reshape(-1), np.asarray(shift, np.int64).reshape(-1)
    ends = [np.clip(multiply_by_quantized_multiplier(np.clip(a, -(1 << 31), (1 << 31) - 1), m, sh) + out_zp,
                    act[0], act[1]) for a in (lo, hi)]
    return np.where(inside & (ends[0] == ends[1]), ends[0], 1 << 10)


def requant_table(w: np.ndarray, bias: np.ndarray | None, mult: np.ndarray, shift: np.ndarray,
                  in_zp: int, out_zp: int, padded: int, act: tuple[int, int] | None = None) -> tuple[np.ndarray, bool]:
    """Per channel 3 words for the optimised kernels and whether they are the fast
    form: (mult, k, right) for mt_requant_fast when every channel qualifies for every
    input (|acc| bounded from the weights and bias), else (mult, shift, 0). Given the
    activation range, a constant channel (constant_channels) takes the fast form
    (0, 2c + 1, 1), which outputs c whatever its accumulator: its huge bias no longer
    keeps the layer off the fast path."""
    from microtile.ops.requant_opt import fast_requant, max_abs_input

    n = w.shape[0]
    b = np.zeros(n, dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64).reshape(-1)
    bound = np.abs(b) + np.abs(w.astype(np.int64)).sum(axis=1) * max_abs_input(in_zp)
    const = np.full(n, 1 << 10) if act is None else constant_channels(w, b, mult, shift, in_zp, out_zp, act)
    fixed = const < (1 << 10)
    fast = fast_requant(np.where(fixed, 0, mult), shift, out_zp, np.where(fixed, 0, bound))
    table = np.zeros((padded, 3), dtype=np.int64)
    table[:n, 0] = mult
    if fast is not None:
        table[:n, 0] = np.where(fixed, 0, mult)
        table[:n, 1], table[:n, 2] = np.where(fixed, 2 * const + 1, fast[0]), np.where(fixed, 1, fast[1])
        table[n:, 2] = 1
    else:
        table[:n, 1] = shift
    return table.astype(np.int32).reshape(-1), fast is not None


def _emit_gemm(ctx: EmitContext, op: Operator, graph: Graph, w2d: np.ndarray, mult: np.ndarray,
               shift: np.ndarray, in_zp: int, out_zp: int, act: tuple[int, int]) -> tuple[str, object]:
    """The mt_gemm_opt initializer of a layer (weights packed by its schedule)."""
    from microtile.passes.schedule import schedule_for

    s = schedule_for(op, graph, ctx.board)
    n = w2d.shape[0]
    padded = -(-n // s.nr) * s.nr
    packed, kb = pack_weights(w2d, s.nr, s.wide)
    bias_t = graph.tensor(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    bias_data = None if bias_t is None else bias_t.data
    bias = folded_bias(w2d, bias_data, in_zp, padded)
    table, fast = requant_table(w2d, bias_data, mult, shift, in_zp, out_zp, padded, tuple(act))
    # weights and their tables in SRAM (.data) where the schedule's RAM budget placed them
    wname = ctx.const_array("gemm_w", packed, sram=s.sram)
    bname = ctx.const_array("gemm_bias", bias, sram=s.sram)
    qname = ctx.const_array("gemm_requant", table, sram=s.sram)
    mode = (2 if tuple(act) == (-128, 127) else 1) if fast else 0  # mt_gemm_rows_*_m<mode>
    rows = f"mt_gemm_rows_{s.mr}x{s.nr}{'d' if s.direct else ''}_w{int(s.wide)}_m{mode}"
    init = (f"{{{s.mr}, {s.nr}, {int(s.wide)}, {kb}, {n}, {padded // s.nr}, {out_zp}, {act[0]}, {act[1]}, "
            f"{int(fast)}, {wname}, {bname}, {qname}, {rows}}}")
    return init, s


def _emit_call(ctx: EmitContext, fn: str, params: str, inp: str, out: str, s) -> str:
    # The A panel lives in the arena's scratch region: a stack array sized by K
    # overflowed the board's stack (FC with K = 4000 needs 8 KB).
    scratch = ctx.scratch(s.scratch_bytes) if s.scratch_bytes else "NULL"  # NULL: a direct FC tile
    return f"{fn}(&{params}, {inp}, {out}, {scratch}); /* A panel: {s.tile} tile, K = {s.k}, {s.scratch_bytes} B */"



def _check_window_op(kernel: OpKernel, op: Operator, graph: Graph) -> None:
    """What conv and depthwise conv share: int8 activations, known options, no dilation."""
    _int8_activation(kernel, op, graph.tensor(op.inputs[0]), "input")
    _int8_activation(kernel, op, graph.tensor(op.outputs[0]), "output")
    _check_common_options(kernel, op, graph.tensor(op.outputs[0]))
    _check_dilation(kernel, op)


# ---------------------------------------------------------------- CONV_2D

@register
class Conv2D(OpKernel):
    opcode = "CONV_2D"

    def check(self, op: Operator, graph: Graph) -> None:
        x, f = graph.tensor(op.inputs[0]), graph.tensor(op.inputs[1])
        _check_window_op(self, op, graph)
        if len(f.shape) != 4:
            raise self.unsupported(op, f"filter rank {len(f.shape)}", "OHWI filter")
        if len(x.shape) == 4 and f.shape[3] != x.shape[3]:
            raise self.unsupported(op, f"grouped convolution (filter depth {f.shape[3]}, input depth {x.shape[3]})",
                                   "filter depth == input depth")
        _check_filter_and_bias(self, op, graph, f.shape[0], 0)
        _check_conv_shapes(self, op, graph, f.shape[0])

    def params(self, op: Operator, graph: Graph) -> dict:
        x, f, y = graph.tensor(op.inputs[0]), graph.tensor(op.inputs[1]), graph.tensor(op.outputs[0])
        g = _conv_geometry(op, graph)
        mult, shift = per_channel_multipliers(x.scale, f.quant.scale, y.scale, f.shape[0])
        act = fused_activation_range(op, y)
        return dict(g, oc=f.shape[0], mult=mult, shift=shift, act=act, in_zp=x.zero_point, out_zp=y.zero_point)

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        x = np.asarray(inputs[0], dtype=np.int64).reshape(p["n"], p["h"], p["w"], p["c"]) - p["in_zp"]
        w = np.asarray(inputs[1], dtype=np.int64)  # O, KH, KW, I
        win = _patches(x, p["kh"], p["kw"], p["sh"], p["sw"], p["ph"], p["pw"], p["oh"], p["ow"])
        acc = _exact_matmul(win.reshape(-1, p["kh"] * p["kw"] * p["c"]), w.reshape(p["oc"], -1).T)
        acc = acc.reshape(p["n"], p["oh"], p["ow"], p["oc"])
        acc = wrap_int32(wrap_int32(acc) + _bias(op, inputs, p["oc"]))
        return [_requantize(acc, p["mult"], p["shift"], p["out_zp"], p["act"])]

    def macs(self, op: Operator, graph: Graph) -> int:
        g = _conv_geometry(op, graph)
        oc = graph.tensor(op.inputs[1]).shape[0]
        return g["n"] * g["oh"] * g["ow"] * oc * g["kh"] * g["kw"] * g["c"]

    def opt_fallback(self, op: Operator, graph: Graph) -> str | None:
        return matmul_fallback(op, graph)

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        p = self.params(op, graph)
        if ctx.kernels == "optimized" and self.opt_fallback(op, graph) is None:
            w2d = np.asarray(graph.tensor(op.inputs[1]).data, dtype=np.int8).reshape(p["oc"], -1)
            return _emit_conv_opt(op, graph, ctx, p, w2d)
        return _emit_window_ref(op, ctx, p, "conv", p["oc"])


def _emit_conv_opt(op: Operator, graph: Graph, ctx: EmitContext, p: dict, w2d: np.ndarray) -> str:
    """The optimised implicit-GEMM conv call; w2d = [out channels, KH * KW * C] int8."""
    if op.options.get("microtile_prune"):  # issue 10: skipped k-blocks (passes/approx.py)
        from microtile.passes.approx import emit_pruned
        return emit_pruned(op, graph, ctx, p, w2d)
    ctx.include("mt_matmul_opt.h")
    gemm, s = _emit_gemm(ctx, op, graph, w2d, p["mult"], p["shift"], p["in_zp"], p["out_zp"], p["act"])
    init = (f"{{{gemm}, {p['n']}, {p['h']}, {p['w']}, {p['c']}, {p['oh']}, {p['ow']}, "
            f"{p['kh']}, {p['kw']}, {p['sh']}, {p['sw']}, {p['ph']}, {p['pw']}, {p['in_zp']}}}")
    params = ctx.static_struct("mt_conv_opt_params", "conv_opt", init)
    return _emit_call(ctx, "mt_conv_s8_opt", params, ctx.ptr(op.inputs[0]), ctx.ptr(op.outputs[0]), s)


def _emit_window_ref(op: Operator, ctx: EmitContext, p: dict, kernel: str, channels: int) -> str:
    """The reference conv / depthwise call: their params structs share one layout, with
    the output channels (conv) or the depth multiplier (depthwise) in the middle."""
    ctx.include(f"mt_{kernel}.h")
    mult = ctx.const_array(f"{kernel}_mult", p["mult"])
    shift = ctx.const_array(f"{kernel}_shift", p["shift"])
    init = (f"{{{p['n']}, {p['h']}, {p['w']}, {p['c']}, {p['oh']}, {p['ow']}, {channels}, "
            f"{p['kh']}, {p['kw']}, {p['sh']}, {p['sw']}, {p['ph']}, {p['pw']}, "
            f"{-p['in_zp']}, {p['out_zp']}, {p['act'][0]}, {p['act'][1]}, {mult}, {shift}}}")
    params = ctx.static_struct(f"mt_{kernel}_params", f"{kernel}_params", init)
    bias = ctx.ptr(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else "NULL"
    return (f"mt_{kernel}_s8_ref(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.inputs[1])}, "
            f"{bias}, {ctx.ptr(op.outputs[0])});")


# ---------------------------------------------------------------- DEPTHWISE_CONV_2D

@register
class DepthwiseConv2D(OpKernel):
    opcode = "DEPTHWISE_CONV_2D"

    def check(self, op: Operator, graph: Graph) -> None:
        x, f = graph.tensor(op.inputs[0]), graph.tensor(op.inputs[1])
        _check_window_op(self, op, graph)
        if len(f.shape) != 4 or f.shape[0] != 1:
            raise self.unsupported(op, f"filter shape {tuple(f.shape)}", "1HW(I*M) filter")
        if len(x.shape) != 4:
            raise self.unsupported(op, f"input rank {len(x.shape)}", "4-D NHWC input")
        oc, ic = f.shape[3], x.shape[3]
        if oc % ic != 0:
            raise self.unsupported(op, f"{oc} output channels for {ic} input channels",
                                   "output channels = input channels * depth multiplier")
        m = op.options.get("depth_multiplier", oc // ic)
        if m != oc // ic:
            raise self.unsupported(op, f"depth_multiplier option {m} but filter implies {oc // ic}")
        _check_filter_and_bias(self, op, graph, oc, 3)
        _check_conv_shapes(self, op, graph, oc)

    def params(self, op: Operator, graph: Graph) -> dict:
        x, f, y = graph.tensor(op.inputs[0]), graph.tensor(op.inputs[1]), graph.tensor(op.outputs[0])
        g = _conv_geometry(op, graph)
        oc = f.shape[3]
        mult, shift = per_channel_multipliers(x.scale, f.quant.scale, y.scale, oc)
        act = fused_activation_range(op, y)
        return dict(g, oc=oc, dm=oc // g["c"], mult=mult, shift=shift, act=act,
                    in_zp=x.zero_point, out_zp=y.zero_point)

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        x = np.asarray(inputs[0], dtype=np.int64).reshape(p["n"], p["h"], p["w"], p["c"]) - p["in_zp"]
        # Output channel oc reads input channel oc // M: repeat each input channel M times.
        x = np.repeat(x, p["dm"], axis=3)
        w = np.asarray(inputs[1], dtype=np.int64).reshape(p["kh"], p["kw"], p["oc"])
        win = _patches(x, p["kh"], p["kw"], p["sh"], p["sw"], p["ph"], p["pw"], p["oh"], p["ow"])
        # float64 is exact here: |sum| <= 255 * 128 * KH * KW, far below 2**53.
        acc = np.rint(np.einsum("nyxhwc,hwc->nyxc", win.astype(np.float64), w.astype(np.float64)))
        acc = acc.astype(np.int64)
        acc = wrap_int32(wrap_int32(acc) + _bias(op, inputs, p["oc"]))
        return [_requantize(acc, p["mult"], p["shift"], p["out_zp"], p["act"])]

    def macs(self, op: Operator, graph: Graph) -> int:
        g = _conv_geometry(op, graph)
        oc = graph.tensor(op.inputs[1]).shape[3]
        return g["n"] * g["oh"] * g["ow"] * oc * g["kh"] * g["kw"]

    def opt_fallback(self, op: Operator, graph: Graph) -> str | None:
        from microtile.ops.depthwise_opt import depthwise_fallback

        return depthwise_fallback(op, graph, self.params(op, graph))

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        p = self.params(op, graph)
        if ctx.kernels == "optimized" and self.opt_fallback(op, graph) is None:
            if depthwise_as_conv(op, graph):
                # filter [1, KH, KW, M] -> conv weights [M, KH * KW * 1]
                w = np.asarray(graph.tensor(op.inputs[1]).data, dtype=np.int8).reshape(p["kh"] * p["kw"], p["oc"])
                return _emit_conv_opt(op, graph, ctx, p, np.ascontiguousarray(w.T))
            from microtile.ops.depthwise_opt import emit_depthwise_opt

            return emit_depthwise_opt(op, graph, ctx, p)
        return _emit_window_ref(op, ctx, p, "depthwise_conv", p["dm"])


# ---------------------------------------------------------------- FULLY_CONNECTED

@register
class FullyConnected(OpKernel):
    opcode = "FULLY_CONNECTED"

    def check(self, op: Operator, graph: Graph) -> None:
        x, f, y = graph.tensor(op.inputs[0]), graph.tensor(op.inputs[1]), graph.tensor(op.outputs[0])
        _int8_activation(self, op, x, "input")
        _int8_activation(self, op, y, "output")
        _check_common_options(self, op, y, with_padding=False)
        fmt = op.options.get("weights_format", "DEFAULT")
        if fmt != "DEFAULT":
            raise self.unsupported(op, f"weights_format {fmt}", "DEFAULT")
        if op.options.get("asymmetric_quantize_inputs"):
            raise self.unsupported(op, "hybrid (asymmetric_quantize_inputs)", "int8 inputs and weights")
        if len(f.shape) != 2:
            raise self.unsupported(op, f"weights rank {len(f.shape)}", "[out, in] weights")
        out_c, depth = f.shape
        size = int(np.prod(x.shape))
        if size % depth != 0:
            raise self.unsupported(op, f"input of {size} values is not a multiple of the weights depth {depth}")
        _check_filter_and_bias(self, op, graph, out_c, 0)
        if f.quant.per_channel and len(y.shape) != 2:
            # TFLM's per-channel kernel reads batches and depth from output dims 0 and 1.
            raise self.unsupported(op, f"per-channel weights with a rank-{len(y.shape)} output",
                                   "per-channel weights with a 2-D output (keep_num_dims=False)")
        if int(np.prod(y.shape)) != size // depth * out_c or y.shape[-1] != out_c:
            raise self.unsupported(op, f"output shape {tuple(y.shape)} does not match {size // depth} x {out_c}")
        b = graph.op_inputs(op)[2] if len(op.inputs) > 2 else None
        if b is not None and not f.quant.per_channel:
            # TFLM's GetQuantizedConvolutionMultipler refuses a bias scale far from input x weight
            # scale (an unquantised bias has scale 0 there).
            b_scale = float(np.float32(b.quant.scale[0])) if b.quant is not None else 0.0
            diff = abs(float(np.float32(x.scale)) * float(np.float32(f.scale)) - b_scale)
            if diff / float(np.float32(y.scale)) > 0.02:
                raise self.unsupported(op, f"bias scale {b_scale:.3g} is not input x weight scale",
                                       "bias scale = input scale x weight scale (TFLite's quantisation spec)")

    def params(self, op: Operator, graph: Graph) -> dict:
        x, f, y = graph.tensor(op.inputs[0]), graph.tensor(op.inputs[1]), graph.tensor(op.outputs[0])
        out_c, depth = f.shape
        if f.quant.per_channel:
            mult, shift = per_channel_multipliers(x.scale, f.quant.scale, y.scale, out_c)
            w_off = 0  # TFLM's per-channel kernel ignores the weights zero point
        else:
            # TFLM (the oracle's build) takes the scale product in double, as for per-channel
            # weights: a float32 product is 1 ulp off for some scales (MLPerf AD, last layer).
            real = float(np.float32(x.scale)) * float(np.float32(f.scale)) / float(np.float32(y.scale))
            m, s = quantize_multiplier(real)
            mult = np.full(out_c, m, dtype=np.int32)
            shift = np.full(out_c, s, dtype=np.int32)
            w_off = -f.zero_point
        act = fused_activation_range(op, y)
        batches = int(np.prod(x.shape)) // depth
        return dict(batches=batches, depth=depth, oc=out_c, mult=mult, shift=shift, act=act,
                    in_off=-x.zero_point, w_off=w_off, out_zp=y.zero_point)

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        x = np.asarray(inputs[0], dtype=np.int64).reshape(p["batches"], p["depth"]) + p["in_off"]
        w = np.asarray(inputs[1], dtype=np.int64) + p["w_off"]
        acc = wrap_int32(wrap_int32(_exact_matmul(x, w.T)) + _bias(op, inputs, p["oc"]))
        y = _requantize(acc, p["mult"], p["shift"], p["out_zp"], p["act"])
        return [y.reshape(graph.tensor(op.outputs[0]).shape)]

    def macs(self, op: Operator, graph: Graph) -> int:
        out_c, depth = graph.tensor(op.inputs[1]).shape
        return int(np.prod(graph.tensor(op.inputs[0]).shape)) // depth * depth * out_c

    def opt_fallback(self, op: Operator, graph: Graph) -> str | None:
        return matmul_fallback(op, graph)

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        p = self.params(op, graph)
        if ctx.kernels == "optimized" and self.opt_fallback(op, graph) is None:
            w2d = np.asarray(graph.tensor(op.inputs[1]).data, dtype=np.int8)
            if op.options.get("microtile_prune"):  # issue 10: skipped k-blocks (passes/approx.py)
                from microtile.passes.approx import emit_pruned
                return emit_pruned(op, graph, ctx, p, w2d)
            ctx.include("mt_matmul_opt.h")
            gemm, s = _emit_gemm(ctx, op, graph, w2d, p["mult"], p["shift"], -p["in_off"], p["out_zp"], p["act"])
            params = ctx.static_struct("mt_fully_connected_opt_params", "fc_opt",
                                       f"{{{gemm}, {p['batches']}, {p['depth']}}}")
            return _emit_call(ctx, "mt_fully_connected_s8_opt", params, ctx.ptr(op.inputs[0]), ctx.ptr(op.outputs[0]), s)
        ctx.include("mt_fully_connected.h")
        mult = ctx.const_array("fc_mult", p["mult"])
        shift = ctx.const_array("fc_shift", p["shift"])
        init = (f"{{{p['batches']}, {p['depth']}, {p['oc']}, {p['in_off']}, {p['w_off']}, {p['out_zp']}, "
                f"{p['act'][0]}, {p['act'][1]}, {mult}, {shift}}}")
        params = ctx.static_struct("mt_fully_connected_params", "fc_params", init)
        bias = ctx.ptr(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else "NULL"
        return (f"mt_fully_connected_s8_ref(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.inputs[1])}, "
                f"{bias}, {ctx.ptr(op.outputs[0])});")


__all__ = ["Conv2D", "DepthwiseConv2D", "FullyConnected", "depthwise_as_conv", "folded_bias",
           "fused_activation_range", "matmul_fallback", "optimized_supported", "out_size_and_padding", "pack_weights", "per_channel_multipliers"]
