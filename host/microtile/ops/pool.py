"""AVERAGE_POOL_2D, MAX_POOL_2D and MEAN with TFLM's int8 semantics.

Pooling follows reference_integer_ops/pooling.h: windows are clipped to the image
(padding never counts), the average rounds half away from zero, and the result is
clamped to the fused activation range; input and output share quantisation.

MEAN follows TFLM's reduce kernel for int8, which requantises with integer
arithmetic only: QuantizeMultiplier(input_scale / output_scale) with 1/count folded
into the multiplier (reference_ops::QuantizedMeanOrSum).
"""
from __future__ import annotations

import numpy as np

from microtile.importer.ir import Graph, Operator
from microtile.importer.quant import multiply_by_quantized_multiplier, quantize_multiplier
from microtile.ops import EmitContext, OpKernel, register
from microtile.ops import fused_activation_range
from microtile.ops.conv import PADDINGS, out_size_and_padding

AVG_POOL_OPT_MAX_WINDOW = 256  # MT_AVG_POOL_OPT_MAX_WINDOW in mt_pool_opt.h


def check_int8_same_quant(kernel: OpKernel, op: Operator, graph: Graph) -> None:
    """Operators that move int8 values without rescaling (pooling, pad) need per-tensor
    int8 input and output with the same quantisation."""
    x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    kernel.require_int8_per_tensor(op, (x, y))
    if x.scale != y.scale or x.zero_point != y.zero_point:
        # TFLM copies values without requantising, so differing parameters mean a broken model.
        raise kernel.unsupported(op, "input and output quantization differ",
                                 "identical input and output scale / zero point")


class _Pool2D(OpKernel):
    c_function = ""

    def check(self, op: Operator, graph: Graph) -> None:
        check_int8_same_quant(self, op, graph)
        o = op.options
        self.check_fused_activation(op, graph.tensor(op.outputs[0]))
        if o.get("padding") not in PADDINGS:
            raise self.unsupported(op, f"padding {o.get('padding')}", "SAME, VALID")
        for key in ("stride_h", "stride_w", "filter_height", "filter_width"):
            if o.get(key, 1) < 1:
                raise self.unsupported(op, f"{key} {o.get(key)}", ">= 1")
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        if len(x.shape) != 4:
            raise self.unsupported(op, f"input rank {len(x.shape)}", "4-D NHWC input")
        p = self.params(op, graph)
        if p["oh"] < 1 or p["ow"] < 1:
            raise self.unsupported(op, "window larger than the input with VALID padding")
        expected = (p["n"], p["oh"], p["ow"], p["c"])
        if tuple(y.shape) != expected:
            raise self.unsupported(op, f"output shape {tuple(y.shape)} does not match the computed {expected}")

    def params(self, op: Operator, graph: Graph) -> dict:
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        o = op.options
        n, h, w, c = x.shape
        kh, kw = o.get("filter_height", 1), o.get("filter_width", 1)
        sh, sw = o.get("stride_h", 1), o.get("stride_w", 1)
        oh, ph = out_size_and_padding(h, kh, sh, o["padding"])
        ow, pw = out_size_and_padding(w, kw, sw, o["padding"])
        act = fused_activation_range(op, y)
        return dict(n=n, h=h, w=w, c=c, kh=kh, kw=kw, sh=sh, sw=sw, oh=oh, ow=ow, ph=ph, pw=pw, act=act)

    def _windows(self, p: dict, x: np.ndarray, fill: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, OH, OW, KH, KW, C) windows over x padded with `fill`, and a
        (OH, OW, KH, KW) mask of the taps inside the image."""
        n, h, w, c = x.shape
        need_h = max((p["oh"] - 1) * p["sh"] + p["kh"], p["ph"] + h)
        need_w = max((p["ow"] - 1) * p["sw"] + p["kw"], p["pw"] + w)
        xp = np.full((n, need_h, need_w, c), fill, dtype=np.int64)
        xp[:, p["ph"]:p["ph"] + h, p["pw"]:p["pw"] + w] = x
        inside = np.zeros((need_h, need_w), dtype=bool)
        inside[p["ph"]:p["ph"] + h, p["pw"]:p["pw"] + w] = True
        sl_h = slice(0, (p["oh"] - 1) * p["sh"] + 1, p["sh"])
        sl_w = slice(0, (p["ow"] - 1) * p["sw"] + 1, p["sw"])
        win = np.lib.stride_tricks.sliding_window_view(xp, (p["kh"], p["kw"]), axis=(1, 2))[:, sl_h, sl_w]
        mask = np.lib.stride_tricks.sliding_window_view(inside, (p["kh"], p["kw"]))[sl_h, sl_w]
        return np.moveaxis(win, 3, 5), mask

    def opt_function(self, p: dict) -> str | None:
        """The optimised kernel (mt_pool_opt.h) for these parameters, or None."""
        return None

    def opt_fallback(self, op: Operator, graph: Graph) -> str | None:
        p = self.params(op, graph)
        if self.opt_function(p) is None:  # only AVERAGE_POOL_2D has a limit
            return (f"window of {p['kh'] * p['kw']} pixels (the optimised kernel's halfword sums "
                    f"take up to {AVG_POOL_OPT_MAX_WINDOW})")
        return None

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        p = self.params(op, graph)
        function = self.opt_function(p) if ctx.kernels == "optimized" else None
        ctx.include("mt_pool.h" if function is None else "mt_pool_opt.h")
        init = (f"{{{p['n']}, {p['h']}, {p['w']}, {p['c']}, {p['oh']}, {p['ow']}, {p['kh']}, {p['kw']}, "
                f"{p['sh']}, {p['sw']}, {p['ph']}, {p['pw']}, {p['act'][0]}, {p['act'][1]}}}")
        params = ctx.static_struct("mt_pool_params", "pool_params", init)
        return f"{function or self.c_function}(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"


@register
class AveragePool2D(_Pool2D):
    opcode = "AVERAGE_POOL_2D"
    c_function = "mt_avg_pool_s8_ref"

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        x = np.asarray(inputs[0], dtype=np.int64).reshape(p["n"], p["h"], p["w"], p["c"])
        win, mask = self._windows(p, x, 0)
        total = win.sum(axis=(3, 4))  # padding was filled with 0
        count = mask.sum(axis=(2, 3))[None, :, :, None].astype(np.int64)
        # Round half away from zero with C's truncating division.
        half = count // 2
        num = np.where(total > 0, total + half, total - half)
        avg = np.sign(num) * (np.abs(num) // count)
        return [np.clip(avg, p["act"][0], p["act"][1]).astype(np.int8)]

    def macs(self, op: Operator, graph: Graph) -> int:
        p = self.params(op, graph)
        return p["n"] * p["oh"] * p["ow"] * p["c"] * p["kh"] * p["kw"]

    def opt_function(self, p: dict) -> str | None:
        # The halfword lane sums of the optimised kernel hold windows of up to 256 pixels.
        return "mt_avg_pool_s8_opt" if p["kh"] * p["kw"] <= AVG_POOL_OPT_MAX_WINDOW else None


@register
class MaxPool2D(_Pool2D):
    opcode = "MAX_POOL_2D"
    c_function = "mt_max_pool_s8_ref"

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        x = np.asarray(inputs[0], dtype=np.int64).reshape(p["n"], p["h"], p["w"], p["c"])
        win, _ = self._windows(p, x, -128)  # padding never wins against real values
        m = win.max(axis=(3, 4))
        return [np.clip(m, p["act"][0], p["act"][1]).astype(np.int8)]

    def opt_function(self, p: dict) -> str | None:
        return "mt_max_pool_s8_opt"


# ---------------------------------------------------------------- MEAN

MAX_MEAN_RANK = 4


@register
class Mean(OpKernel):
    opcode = "MEAN"

    def check(self, op: Operator, graph: Graph) -> None:
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        for role, t in (("input", x), ("output", y)):
            if t.dtype != "int8":
                raise self.unsupported(op, f"{role} {t.name} is {t.dtype}", "int8")
            if t.quant is None or t.quant.scale.size != 1:
                raise self.unsupported(op, f"{role} {t.name} needs per-tensor int8 quantization")
        if len(op.inputs) < 2 or op.inputs[1] < 0 or not graph.tensor(op.inputs[1]).is_constant:
            raise self.unsupported(op, "axes are not a constant tensor", "constant int32 axes input")
        a = graph.tensor(op.inputs[1])
        if a.dtype != "int32":
            raise self.unsupported(op, f"axes tensor is {a.dtype}", "int32 axes")
        if not 1 <= len(x.shape) <= MAX_MEAN_RANK:
            raise self.unsupported(op, f"input rank {len(x.shape)}", f"rank 1..{MAX_MEAN_RANK}")
        raw = [int(v) for v in np.asarray(a.data).reshape(-1)]
        if any(not -len(x.shape) <= v < len(x.shape) for v in raw):
            raise self.unsupported(op, f"axes {raw} out of range for rank {len(x.shape)}")
        expected = self.out_shape(op, graph)
        if int(np.prod(y.shape)) != int(np.prod(expected)):
            raise self.unsupported(op, f"output shape {tuple(y.shape)} does not match the computed {expected}")

    def axes(self, op: Operator, graph: Graph) -> list[int]:
        rank = len(graph.tensor(op.inputs[0]).shape)
        out: list[int] = []
        for v in np.asarray(graph.tensor(op.inputs[1]).data).reshape(-1):
            a = int(v) % rank
            if a not in out:
                out.append(a)
        return sorted(out)

    def out_shape(self, op: Operator, graph: Graph) -> tuple[int, ...]:
        shape = graph.tensor(op.inputs[0]).shape
        axes = self.axes(op, graph)
        if op.options.get("keep_dims", False):
            return tuple(1 if i in axes else s for i, s in enumerate(shape))
        return tuple(s for i, s in enumerate(shape) if i not in axes)

    def params(self, op: Operator, graph: Graph) -> dict:
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        axes = self.axes(op, graph)
        count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        mult, shift = quantize_multiplier(float(np.float32(x.scale)) / float(np.float32(y.scale)))
        # Fold 1/count into the multiplier as QuantizedMeanOrSum does.
        s = min(count.bit_length() - 1, 32, 31 + shift)
        mult = (mult << s) // count
        shift -= s
        dims = (1,) * (MAX_MEAN_RANK - len(x.shape)) + tuple(x.shape)
        reduce = [0] * (MAX_MEAN_RANK - len(x.shape)) + [1 if i in axes else 0 for i in range(len(x.shape))]
        return dict(dims=dims, reduce=reduce, count=count, mult=mult, shift=shift,
                    in_zp=x.zero_point, out_zp=y.zero_point)

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        x = np.asarray(inputs[0], dtype=np.int64).reshape(p["dims"])
        axes = tuple(i for i, r in enumerate(p["reduce"]) if r)
        total = x.sum(axis=axes) - p["in_zp"] * p["count"]
        y = multiply_by_quantized_multiplier(total, p["mult"], p["shift"]) + p["out_zp"]
        y = np.clip(y, -128, 127).astype(np.int8)
        return [y.reshape(graph.tensor(op.outputs[0]).shape)]

    def macs(self, op: Operator, graph: Graph) -> int:
        return int(np.prod(graph.tensor(op.inputs[0]).shape))

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        p = self.params(op, graph)
        ctx.include("mt_mean.h")
        dims = ", ".join(str(d) for d in p["dims"])
        red = ", ".join(str(r) for r in p["reduce"])
        init = (f"{{{{{dims}}}, {{{red}}}, {p['count']}, {-p['in_zp']}, {p['out_zp']}, "
                f"{p['mult']}, {p['shift']}}}")
        params = ctx.static_struct("mt_mean_params", "mean_params", init)
        return f"mt_mean_s8_ref(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"
