"""The internal operators of fused depthwise tiling (passes/fdt.py): no TFLite model
has them; the FDT pass writes them where it splits the last layer of a path by input
channel.

- MT_PARTIAL_CONV / MT_PARTIAL_FC: one partition's share of a CONV_2D / FULLY_CONNECTED
  over a slice of its input channels, added into an int32 accumulator:
  ``acc = base + sum over the slice of (x - zp_in) * (w - zp_w)``, where ``base`` is the
  layer's bias for the first partition (options ``first``) and the previous
  partition's accumulator after it. int32 sums wrap the same way in any order, so the
  last accumulator is exactly the layer's accumulator.
- MT_REQUANT_ACC: the accumulator requantised once, with the layer's per-channel
  multipliers (constant inputs 1 and 2, from the layer's own params()), output zero
  point and fused activation: the layer's output, bit-exact with TFLM.

C kernels: firmware/kernels/mt_partial.c (portable; the accumulator may be updated in
place, each element is read before it is written).
"""
from __future__ import annotations

import numpy as np

from microtile.importer.ir import Graph, Operator
from microtile.importer.quant import wrap_int32
from microtile.ops import EmitContext, OpKernel, register_internal
from microtile.ops.conv import _conv_geometry, _exact_matmul, _patches, _requantize


def _base(op: Operator, inputs: list, acc_shape: tuple[int, ...]) -> np.ndarray:
    """The first partition's bias (zeros without one) broadcast over the pixels, or the
    accumulator so far."""
    b = inputs[2] if len(inputs) > 2 else None
    if b is None:
        return np.zeros(acc_shape, dtype=np.int64)
    return np.broadcast_to(np.asarray(b, dtype=np.int64).reshape(-1 if op.options["first"] else acc_shape),
                           acc_shape)


class _Partial(OpKernel):
    def check(self, op: Operator, graph: Graph) -> None:
        x, w, acc = graph.tensor(op.inputs[0]), graph.tensor(op.inputs[1]), graph.tensor(op.outputs[0])
        if x.dtype != "int8" or w.dtype != "int8" or not w.is_constant or acc.dtype != "int32":
            raise self.unsupported(op, f"{x.dtype} input, {w.dtype} weights, {acc.dtype} accumulator",
                                   "int8 input, constant int8 weights, int32 accumulator")

    def _accumulate(self, op: Operator, graph: Graph, inputs: list, part: np.ndarray) -> list[np.ndarray]:
        """The partition's sums (any int shape with the accumulator's size) added to its base."""
        shape = graph.tensor(op.outputs[0]).shape
        return [wrap_int32(_base(op, inputs, shape) + wrap_int32(part).reshape(shape)).astype(np.int32)]

    def _emit(self, op: Operator, ctx: EmitContext, kind: str, fields: list[int]) -> str:
        """mt_partial_<kind>_s8(params, input, weights, acc_in, acc); params = fields, in order."""
        ctx.include("mt_partial.h")
        init = "{" + ", ".join(str(int(v)) for v in fields) + f", {int(op.options['first'])}}}"
        params = ctx.static_struct(f"mt_partial_{kind}_params", f"partial_{kind}", init)
        acc_in = ctx.ptr(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else "NULL"
        return (f"mt_partial_{kind}_s8(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.inputs[1])}, "
                f"{acc_in}, {ctx.ptr(op.outputs[0])});")


@register_internal
class PartialFullyConnected(_Partial):
    opcode = "MT_PARTIAL_FC"

    def params(self, op: Operator, graph: Graph) -> dict:
        out_c, depth = graph.tensor(op.inputs[1]).shape
        batches = graph.tensor(op.inputs[0]).size // depth
        return dict(batches=batches, depth=depth, oc=out_c, in_off=op.options["in_off"], w_off=op.options["w_off"])

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        x = np.asarray(inputs[0], dtype=np.int64).reshape(p["batches"], p["depth"]) + p["in_off"]
        w = np.asarray(inputs[1], dtype=np.int64) + p["w_off"]
        return self._accumulate(op, graph, inputs, _exact_matmul(x, w.T))

    def macs(self, op: Operator, graph: Graph) -> int:
        p = self.params(op, graph)
        return p["batches"] * p["depth"] * p["oc"]

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        p = self.params(op, graph)
        return self._emit(op, ctx, "fc", [p[k] for k in ("batches", "depth", "oc", "in_off", "w_off")])


@register_internal
class PartialConv2D(_Partial):
    opcode = "MT_PARTIAL_CONV"

    def params(self, op: Operator, graph: Graph) -> dict:
        g = _conv_geometry(op, graph)  # options are the CONV_2D's (strides, padding)
        return dict(g, oc=graph.tensor(op.inputs[1]).shape[0], in_zp=-op.options["in_off"])

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        x = np.asarray(inputs[0], dtype=np.int64).reshape(p["n"], p["h"], p["w"], p["c"]) - p["in_zp"]
        w = np.asarray(inputs[1], dtype=np.int64)
        win = _patches(x, p["kh"], p["kw"], p["sh"], p["sw"], p["ph"], p["pw"], p["oh"], p["ow"])
        return self._accumulate(op, graph, inputs, _exact_matmul(win.reshape(-1, p["kh"] * p["kw"] * p["c"]),
                                                               w.reshape(p["oc"], -1).T))

    def macs(self, op: Operator, graph: Graph) -> int:
        p = self.params(op, graph)
        return p["n"] * p["oh"] * p["ow"] * p["oc"] * p["kh"] * p["kw"] * p["c"]

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        p = self.params(op, graph)
        fields = [p[k] for k in ("n", "h", "w", "c", "oh", "ow", "oc", "kh", "kw", "sh", "sw", "ph", "pw")]
        return self._emit(op, ctx, "conv", fields + [-p["in_zp"]])


@register_internal
class RequantAccumulator(OpKernel):
    opcode = "MT_REQUANT_ACC"

    def check(self, op: Operator, graph: Graph) -> None:
        acc, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        if acc.dtype != "int32" or y.dtype != "int8" or acc.size != y.size:
            raise self.unsupported(op, f"{acc.dtype} {acc.shape} -> {y.dtype} {y.shape}",
                                   "an int32 accumulator -> int8 output of the same size")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        o = op.options
        mult, shift = (np.asarray(v, dtype=np.int64).reshape(-1) for v in inputs[1:3])
        y = _requantize(np.asarray(inputs[0], dtype=np.int64), mult, shift, o["out_zp"], (o["act_min"], o["act_max"]))
        return [y.reshape(graph.tensor(op.outputs[0]).shape)]

    def macs(self, op: Operator, graph: Graph) -> int:
        return graph.tensor(op.outputs[0]).size

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        o = op.options
        y = graph.tensor(op.outputs[0])
        ctx.include("mt_partial.h")
        init = (f"{{{y.size}, {y.shape[-1]}, {o['out_zp']}, {o['act_min']}, {o['act_max']}, "
                f"{ctx.ptr(op.inputs[1])}, {ctx.ptr(op.inputs[2])}}}")
        params = ctx.static_struct("mt_requant_acc_params", "requant_acc", init)
        return f"mt_requant_acc_s8(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"
