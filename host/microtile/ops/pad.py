"""PAD and PADV2 with TFLM's int8 semantics (reference_ops::Pad).

Paddings come from a constant [rank, 2] int32 tensor; the pad value is
the output zero point for PAD and the constant_values scalar for PADV2. Values are
copied, not requantised, so input and output must share quantisation.
"""
from __future__ import annotations

import numpy as np

from microtile.importer.ir import Graph, Operator
from microtile.ops import EmitContext, OpKernel, register
from microtile.ops.pool import check_int8_same_quant

MAX_PAD_RANK = 4


class _Pad(OpKernel):
    def check(self, op: Operator, graph: Graph) -> None:
        check_int8_same_quant(self, op, graph)
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        if not 1 <= len(x.shape) <= MAX_PAD_RANK:
            raise self.unsupported(op, f"input rank {len(x.shape)}", f"rank 1..{MAX_PAD_RANK}")
        if len(op.inputs) < 2 or op.inputs[1] < 0 or not graph.tensor(op.inputs[1]).is_constant:
            raise self.unsupported(op, "paddings are not a constant tensor", "constant paddings")
        pads = graph.tensor(op.inputs[1])
        if pads.dtype != "int32":
            # TFLM reads the paddings buffer as int32 whatever its type.
            raise self.unsupported(op, f"paddings are {pads.dtype}", "int32 paddings")
        if pads.data.size != 2 * len(x.shape):
            raise self.unsupported(op, f"{pads.data.size} padding values for rank {len(x.shape)}")
        p = self.paddings(op, graph)
        if (p < 0).any():
            raise self.unsupported(op, "negative paddings")
        expected = tuple(int(s + a + b) for s, (a, b) in zip(x.shape, p))
        if tuple(y.shape) != expected:
            raise self.unsupported(op, f"output shape {tuple(y.shape)} does not match the computed {expected}")
        self.check_pad_value(op, graph)

    def check_pad_value(self, op: Operator, graph: Graph) -> None:
        pass

    def paddings(self, op: Operator, graph: Graph) -> np.ndarray:
        return np.asarray(graph.tensor(op.inputs[1]).data, dtype=np.int64).reshape(-1, 2)

    def pad_value(self, op: Operator, graph: Graph, inputs: list | None = None) -> int:
        return graph.tensor(op.outputs[0]).zero_point

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        x = np.asarray(inputs[0], dtype=np.int8).reshape(graph.tensor(op.inputs[0]).shape)
        p = self.paddings(op, graph)
        return [np.pad(x, [tuple(int(v) for v in r) for r in p], constant_values=self.pad_value(op, graph, inputs))]

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        x = graph.tensor(op.inputs[0])
        ext = MAX_PAD_RANK - len(x.shape)
        dims = (1,) * ext + tuple(x.shape)
        p = np.concatenate([np.zeros((ext, 2), dtype=np.int64), self.paddings(op, graph)])
        ctx.include("mt_pad.h")
        init = (f"{{{{{', '.join(str(d) for d in dims)}}}, {{{', '.join(str(int(v)) for v in p[:, 0])}}}, "
                f"{{{', '.join(str(int(v)) for v in p[:, 1])}}}, {self.pad_value(op, graph)}}}")
        params = ctx.static_struct("mt_pad_params", "pad_params", init)
        return f"mt_pad_s8_ref(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"


@register
class Pad(_Pad):
    opcode = "PAD"


@register
class PadV2(_Pad):
    opcode = "PADV2"

    def check_pad_value(self, op: Operator, graph: Graph) -> None:
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            return  # TFLM pads with the output zero point, as PAD does
        v, y = graph.tensor(op.inputs[2]), graph.tensor(op.outputs[0])
        if not v.is_constant or v.dtype != "int8" or v.data.size != 1:
            raise self.unsupported(op, "constant_values is not a constant int8 scalar", "constant int8 scalar")
        if v.quant is None or v.quant.scale.size != 1 or float(v.quant.scale[0]) != y.scale \
                or int(v.quant.zero_point[0]) != y.zero_point:
            raise self.unsupported(op, "constant_values quantization differs from the output's",
                                   "same scale and zero point as the output")

    def pad_value(self, op: Operator, graph: Graph, inputs: list | None = None) -> int:
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            return graph.tensor(op.outputs[0]).zero_point
        return int(np.asarray(graph.tensor(op.inputs[2]).data).reshape(-1)[0])
