"""Elementwise binary operators: ADD and MUL (int8, TFLM reference semantics).

ADD follows TFLM's CalculateOpDataAdd + reference_integer_ops::AddFunc: both inputs
are shifted left by 20 bits, rescaled to twice the larger input scale, summed and
rescaled to the output (three MultiplyByQuantizedMultiplierSmallerThanOneExp).
MUL follows CalculateOpDataMul + MulElementwise: one multiplier s1*s2/so applied
with MultiplyByQuantizedMultiplier to the product of the offset inputs.
Broadcasting is numpy's (which is TFLite's) up to MAX_BROADCAST_DIMS dimensions;
the C kernels walk a compressed stride description computed here.
"""
from __future__ import annotations

import numpy as np

from microtile.importer import quant as q
from microtile.importer.ir import Graph, Operator
from microtile.ops import EmitContext, OpKernel, fused_activation_range, register

# TFLM's broadcast kernels (BroadcastBinaryFunction6DSlow / BroadcastMul6DSlow) stop at 6.
MAX_BROADCAST_DIMS = 6
ADD_LEFT_SHIFT = 20  # TFLM's left_shift for int8 ADD


def broadcast_strides(shape1: tuple[int, ...], shape2: tuple[int, ...],
                      out_shape: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    """Describe a broadcast as (dims, strides1, strides2), MAX_BROADCAST_DIMS long,
    outermost first, with stride 0 where an input is broadcast. Adjacent dimensions
    that both inputs traverse the same way are merged so the innermost loop is long."""
    rank = len(out_shape)

    def strides_of(shape: tuple[int, ...]) -> list[int]:
        full = (1,) * (rank - len(shape)) + tuple(shape)
        strides, step = [0] * rank, 1
        for d in range(rank - 1, -1, -1):
            strides[d] = step if full[d] != 1 else 0
            step *= full[d]
        return strides

    s1, s2 = strides_of(shape1), strides_of(shape2)
    dims: list[int] = []
    st1: list[int] = []
    st2: list[int] = []
    for d in range(rank):
        if out_shape[d] == 1:
            continue  # size-1 output dims contribute nothing
        if dims and all(
            prev == cur * out_shape[d] if cur else prev == 0
            for prev, cur in ((st1[-1], s1[d]), (st2[-1], s2[d]))
        ):
            # mergeable with the previous (outer) dimension
            dims[-1] *= out_shape[d]
            st1[-1], st2[-1] = s1[d], s2[d]
            continue
        dims.append(out_shape[d])
        st1.append(s1[d])
        st2.append(s2[d])
    if not dims:
        dims, st1, st2 = [1], [0], [0]
    assert len(dims) <= MAX_BROADCAST_DIMS
    pad = MAX_BROADCAST_DIMS - len(dims)
    return [1] * pad + dims, [0] * pad + st1, [0] * pad + st2


def _c_list(values: list[int]) -> str:
    return "{" + ", ".join(str(int(v)) for v in values) + "}"


class _BinaryInt8(OpKernel):
    """Shared checks and broadcast handling of the int8 binary operators."""

    def check(self, op: Operator, graph: Graph) -> None:
        if len(op.inputs) != 2 or len(op.outputs) != 1 or min(op.inputs) < 0:
            raise self.unsupported(op, f"{len(op.inputs)} inputs / {len(op.outputs)} outputs",
                                   "exactly 2 inputs and 1 output")
        a, b = graph.op_inputs(op)
        (out,) = graph.op_outputs(op)
        self.require_int8_per_tensor(op, (a, b, out))
        self.check_fused_activation(op, out)
        if op.options.get("pot_scale_int16", False) not in (False, True):
            raise self.unsupported(op, "unknown pot_scale_int16 option")
        try:
            shape = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise self.unsupported(op, f"shapes {a.shape} and {b.shape} do not broadcast",
                                   "numpy/TFLite broadcasting") from None
        if tuple(shape) != tuple(out.shape):
            raise self.unsupported(op, f"output shape {out.shape} is not the broadcast shape {tuple(shape)}")
        if len(out.shape) > MAX_BROADCAST_DIMS:
            raise self.unsupported(op, f"rank {len(out.shape)}", f"up to {MAX_BROADCAST_DIMS}-D tensors")

    def _broadcast_init(self, graph: Graph, op: Operator) -> str:
        a, b = graph.op_inputs(op)
        (out,) = graph.op_outputs(op)
        size = int(np.prod(out.shape, dtype=np.int64))
        if tuple(a.shape) == tuple(b.shape):
            # same shapes: flat loop (TFLM's non-broadcast path), no stride walk
            return f".size = {size}, .bcast = {{0}}"
        dims, s1, s2 = broadcast_strides(a.shape, b.shape, out.shape)
        return (f".size = {size}, .bcast = {{ .ndims = {MAX_BROADCAST_DIMS}, .dims = {_c_list(dims)}, "
                f".strides1 = {_c_list(s1)}, .strides2 = {_c_list(s2)} }}")


@register
class Add(_BinaryInt8):
    opcode = "ADD"

    def params(self, op: Operator, graph: Graph) -> dict[str, int]:
        """CalculateOpDataAdd for int8 output."""
        a, b = graph.op_inputs(op)
        (out,) = graph.op_outputs(op)
        s1, s2, so = float(a.scale), float(b.scale), float(out.scale)
        twice_max = 2.0 * max(s1, s2)
        m1, sh1 = q.quantize_multiplier(s1 / twice_max)
        m2, sh2 = q.quantize_multiplier(s2 / twice_max)
        mo, sho = q.quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * so))
        lo, hi = fused_activation_range(op, out)
        return dict(input1_offset=-a.zero_point, input2_offset=-b.zero_point, output_offset=out.zero_point,
                    left_shift=ADD_LEFT_SHIFT, input1_multiplier=m1, input1_shift=sh1,
                    input2_multiplier=m2, input2_shift=sh2, output_multiplier=mo, output_shift=sho,
                    act_min=lo, act_max=hi)

    def check(self, op: Operator, graph: Graph) -> None:
        super().check(op, graph)
        a, b = graph.op_inputs(op)
        (out,) = graph.op_outputs(op)
        real_out = 2.0 * max(a.scale, b.scale) / ((1 << ADD_LEFT_SHIFT) * out.scale)
        if real_out >= 1.0:
            # TFLM's QuantizeMultiplierSmallerThanOneExp aborts on this
            raise self.unsupported(op, f"output scale {out.scale} is too small for the input scales "
                                   f"({a.scale}, {b.scale}): 2*max(in)/(2^20*out) = {real_out:g} >= 1",
                                   "output scale > 2*max(input scales)/2^20")
        lo, hi = fused_activation_range(op, out)
        if lo > hi:
            raise self.unsupported(op, "fused activation range is empty for the output quantization")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        (out,) = graph.op_outputs(op)
        x1 = np.asarray(inputs[0], dtype=np.int64) + p["input1_offset"]
        x2 = np.asarray(inputs[1], dtype=np.int64) + p["input2_offset"]
        x1 = x1 * (1 << p["left_shift"])
        x2 = x2 * (1 << p["left_shift"])
        y1 = q.multiply_by_quantized_multiplier_smaller_than_one_exp(x1, p["input1_multiplier"], p["input1_shift"])
        y2 = q.multiply_by_quantized_multiplier_smaller_than_one_exp(x2, p["input2_multiplier"], p["input2_shift"])
        raw = q.wrap_int32(y1 + y2)  # broadcasting happens here, as numpy does it
        res = q.multiply_by_quantized_multiplier_smaller_than_one_exp(
            raw, p["output_multiplier"], p["output_shift"]) + p["output_offset"]
        res = np.clip(res, p["act_min"], p["act_max"])
        return [np.broadcast_to(res, out.shape).astype(np.int8)]

    def macs(self, op: Operator, graph: Graph) -> int:
        # one arithmetic op per output element, counted like MUL's
        (out,) = graph.op_outputs(op)
        return int(np.prod(out.shape, dtype=np.int64))

    def input_tables(self, p: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """Each input's rescaled value s_i for all 256 int8 inputs, indexed by the byte
        read as unsigned (u -> (int8)u), exactly as reference() computes it."""
        x = np.arange(256, dtype=np.int64).astype(np.uint8).view(np.int8).astype(np.int64)
        tables = []
        for i in (1, 2):
            shifted = (x + p[f"input{i}_offset"]) * (1 << p["left_shift"])
            tables.append(q.multiply_by_quantized_multiplier_smaller_than_one_exp(
                shifted, p[f"input{i}_multiplier"], p[f"input{i}_shift"]))
        return tables[0], tables[1]

    def _fast(self, p: dict[str, int]) -> tuple[str | None, tuple]:
        """(why mt_requant_fast cannot take the output, the input tables and fast constants)."""
        from microtile.ops.requant_opt import fast_requant, fast_requant_problem

        t1, t2 = self.input_tables(p)
        bound = np.array([int(np.abs(t1).max() + np.abs(t2).max())])
        shift = np.array([p["output_shift"]])
        problem = fast_requant_problem(shift, p["output_offset"], bound)
        fast = None if problem else fast_requant(np.array([p["output_multiplier"]]), shift, p["output_offset"], bound)
        return problem, (t1, t2, fast)

    def opt_fallback(self, op: Operator, graph: Graph) -> str | None:
        a, b = graph.op_inputs(op)
        if tuple(a.shape) != tuple(b.shape):  # broadcasting keeps the reference kernel's odometer walk
            return "broadcast inputs (the optimised kernel takes two inputs of the same shape)"
        return self._fast(self.params(op, graph))[0]

    def _emit_opt(self, op: Operator, graph: Graph, ctx: EmitContext, p: dict[str, int]) -> str | None:
        """mt_add_s8_opt (mt_add_opt.h), or None (reference kernel, opt_fallback says why)."""
        if self.opt_fallback(op, graph) is not None:
            return None
        _, (t1, t2, fast) = self._fast(p)
        k, right = int(fast[0][0]), int(fast[1][0])
        ctx.include("mt_add_opt.h")
        table1 = ctx.const_array("add_table1", (2 * t1).astype(np.int32))
        table2 = ctx.const_array("add_table2", (2 * t2).astype(np.int32))
        (out,) = graph.op_outputs(op)
        size = int(np.prod(out.shape, dtype=np.int64))
        name = ctx.static_struct("mt_add_opt_params", f"add_opt{op.index}",
                                 f"{{{size}, {p['output_multiplier']}, {k}, {right}, {p['act_min']}, "
                                 f"{p['act_max']}, {table1}, {table2}}}")
        return (f"mt_add_s8_opt(&{name}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.inputs[1])}, "
                f"{ctx.ptr(op.outputs[0])});")

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        p = self.params(op, graph)
        if ctx.kernels == "optimized":
            call = self._emit_opt(op, graph, ctx, p)
            if call is not None:
                return call
        ctx.include("mt_elementwise.h")
        fields = ", ".join(f".{k} = {v}" for k, v in p.items())
        name = ctx.static_struct("mt_add_params", f"add{op.index}",
                                 f"{{ {fields}, {self._broadcast_init(graph, op)} }}")
        return f"mt_add_s8_ref(&{name}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.inputs[1])}, {ctx.ptr(op.outputs[0])});"


@register
class Mul(_BinaryInt8):
    opcode = "MUL"

    def params(self, op: Operator, graph: Graph) -> dict[str, int]:
        """CalculateOpDataMul for int8 output."""
        a, b = graph.op_inputs(op)
        (out,) = graph.op_outputs(op)
        m, sh = q.quantize_multiplier(float(a.scale) * float(b.scale) / float(out.scale))
        lo, hi = fused_activation_range(op, out)
        return dict(input1_offset=-a.zero_point, input2_offset=-b.zero_point, output_offset=out.zero_point,
                    output_multiplier=m, output_shift=sh, act_min=lo, act_max=hi)

    def check(self, op: Operator, graph: Graph) -> None:
        super().check(op, graph)
        (out,) = graph.op_outputs(op)
        lo, hi = fused_activation_range(op, out)
        if lo > hi:
            raise self.unsupported(op, "fused activation range is empty for the output quantization")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        (out,) = graph.op_outputs(op)
        x1 = np.asarray(inputs[0], dtype=np.int64) + p["input1_offset"]
        x2 = np.asarray(inputs[1], dtype=np.int64) + p["input2_offset"]
        res = q.multiply_by_quantized_multiplier(x1 * x2, p["output_multiplier"], p["output_shift"])
        res = np.clip(res + p["output_offset"], p["act_min"], p["act_max"])
        return [np.broadcast_to(res, out.shape).astype(np.int8)]

    def macs(self, op: Operator, graph: Graph) -> int:
        (out,) = graph.op_outputs(op)
        return int(np.prod(out.shape, dtype=np.int64))

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        ctx.include("mt_elementwise.h")
        p = self.params(op, graph)
        fields = ", ".join(f".{k} = {v}" for k, v in p.items())
        name = ctx.static_struct("mt_mul_params", f"mul{op.index}",
                                 f"{{ {fields}, {self._broadcast_init(graph, op)} }}")
        return f"mt_mul_s8_ref(&{name}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.inputs[1])}, {ctx.ptr(op.outputs[0])});"
