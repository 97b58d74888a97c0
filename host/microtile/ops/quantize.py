"""QUANTIZE and DEQUANTIZE (TFLM reference semantics).

float32 -> int8 QUANTIZE and int8 -> float32 DEQUANTIZE sit at a model's float
boundaries; the compiler strips them and the host runner applies
``quantize_array`` / ``dequantize_array`` (bit-exact with TFLM's AffineQuantize and
Dequantize). int8 -> int8 QUANTIZE (TFLM's Requantize) runs on the device.
"""
from __future__ import annotations

import numpy as np

from microtile.importer import quant as q
from microtile.importer.ir import Graph, Operator, Tensor
from microtile.ops import EmitContext, OpKernel, register

_INT_RANGES = {"int8": (-128, 127), "int16": (-32768, 32767), "uint8": (0, 255)}


def quantize_array(x: np.ndarray, scale: float, zp: int, dtype: str = "int8") -> np.ndarray:
    """TFLM AffineQuantize: round(x / scale) in float32 (half away from zero) + zp, clamped."""
    if dtype not in _INT_RANGES:
        raise ValueError(f"quantize_array: dtype {dtype} is not one of {sorted(_INT_RANGES)}")
    lo, hi = _INT_RANGES[dtype]
    ratio = np.asarray(x, dtype=np.float32) / np.float32(scale)  # float32 division, as in C++
    r = ratio.astype(np.float64)  # exact; round there so 0.49999997f + 0.5 does not round up
    rounded = np.sign(r) * np.floor(np.abs(r) + 0.5)
    # float -> int32 conversion of NaN/out-of-range values: x86 (and TFLM on it) yields INT32_MIN
    bad = ~np.isfinite(rounded) | (rounded >= 2.0 ** 31) | (rounded < -(2.0 ** 31))
    as_int = np.where(bad, q.INT32_MIN, np.where(bad, 0.0, rounded).astype(np.int64))
    val = q.wrap_int32(as_int + int(zp))
    return np.clip(val, lo, hi).astype(dtype)


def dequantize_array(qv: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """TFLM Dequantize: float(double(scale) * (q - zp))."""
    diff = np.asarray(qv, dtype=np.int64) - int(zp)
    return (float(np.float32(scale)) * diff.astype(np.float64)).astype(np.float32)


def requantize_params(t_in: Tensor, t_out: Tensor) -> dict[str, int]:
    """PrepareQuantizeReference for int8 -> int8: QuantizeMultiplier(s_in / s_out)."""
    m, sh = q.quantize_multiplier(float(t_in.scale) / float(t_out.scale))
    return dict(input_zero_point=t_in.zero_point, output_zero_point=t_out.zero_point,
                multiplier=m, shift=sh, size=int(np.prod(t_in.shape, dtype=np.int64)))


def requantize_array(x: np.ndarray, p: dict[str, int]) -> np.ndarray:
    """TFLM reference_ops::Requantize for int8 -> int8."""
    v = np.asarray(x, dtype=np.int64) - p["input_zero_point"]
    r = q.multiply_by_quantized_multiplier(v, p["multiplier"], p["shift"]) + p["output_zero_point"]
    return np.clip(r, -128, 127).astype(np.int8)


def _check_per_tensor(kernel: OpKernel, op: Operator, t: Tensor) -> None:
    if t.quant is None or t.quant.scale.size != 1:
        raise kernel.unsupported(op, f"tensor {t.name} is not per-tensor quantized",
                                 "per-tensor quantization (per-channel QUANTIZE is not implemented)")
    if not 0 < t.scale < np.inf:
        raise kernel.unsupported(op, f"tensor {t.name} has scale {t.scale}", "positive finite scales")


def _check_unary(kernel: OpKernel, op: Operator, graph: Graph) -> tuple[Tensor, Tensor]:
    if len(op.inputs) != 1 or len(op.outputs) != 1 or op.inputs[0] < 0:
        raise kernel.unsupported(op, f"{len(op.inputs)} inputs / {len(op.outputs)} outputs", "1 input and 1 output")
    (x,) = graph.op_inputs(op)
    (y,) = graph.op_outputs(op)
    if int(np.prod(x.shape, dtype=np.int64)) != int(np.prod(y.shape, dtype=np.int64)):
        raise kernel.unsupported(op, f"input shape {x.shape} and output shape {y.shape} differ")
    return x, y


@register
class Quantize(OpKernel):
    opcode = "QUANTIZE"
    SUPPORTED = "float32 -> int8 (host side), int8 -> int8 (requantize)"

    @staticmethod
    def runs_on_host(op: Operator, graph: Graph) -> bool:
        """float -> int8 QUANTIZE belongs to the host; int8 -> int8 runs on the device."""
        return graph.op_inputs(op)[0].dtype != "int8"

    def check(self, op: Operator, graph: Graph) -> None:
        x, y = _check_unary(self, op, graph)
        if (x.dtype, y.dtype) not in (("float32", "int8"), ("int8", "int8")):
            raise self.unsupported(op, f"{x.dtype} -> {y.dtype}", self.SUPPORTED)
        _check_per_tensor(self, op, y)
        if x.dtype == "int8":
            _check_per_tensor(self, op, x)

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        x, y = graph.op_inputs(op)[0], graph.op_outputs(op)[0]
        if x.dtype == "float32":
            out = quantize_array(np.asarray(inputs[0]), y.scale, y.zero_point, y.dtype)
        else:
            out = requantize_array(inputs[0], requantize_params(x, y))
        return [out.reshape(y.shape)]

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        x, y = graph.op_inputs(op)[0], graph.op_outputs(op)[0]
        if x.dtype != "int8":
            raise self.unsupported(op, f"{x.dtype} -> {y.dtype} runs on the host, not in firmware; "
                                   "the compiler must strip boundary QUANTIZE ops before codegen",
                                   "int8 -> int8 on the device")
        ctx.include("mt_quantize.h")
        p = requantize_params(x, y)
        init = "{ " + ", ".join(f".{k} = {v}" for k, v in p.items()) + " }"
        name = ctx.static_struct("mt_requantize_params", f"requant{op.index}", init)
        return f"mt_requantize_s8_ref(&{name}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"


@register
class Dequantize(OpKernel):
    opcode = "DEQUANTIZE"
    host_side = True

    @staticmethod
    def runs_on_host(op: Operator, graph: Graph) -> bool:
        return True

    def check(self, op: Operator, graph: Graph) -> None:
        x, y = _check_unary(self, op, graph)
        if (x.dtype, y.dtype) != ("int8", "float32"):
            raise self.unsupported(op, f"{x.dtype} -> {y.dtype}", "int8 -> float32 (host side)")
        _check_per_tensor(self, op, x)

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        x, y = graph.op_inputs(op)[0], graph.op_outputs(op)[0]
        return [dequantize_array(inputs[0], x.scale, x.zero_point).reshape(y.shape)]

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        raise self.unsupported(op, "int8 -> float32 runs on the host, not in firmware; the compiler must strip "
                               "boundary DEQUANTIZE ops before codegen", "none on the device")
