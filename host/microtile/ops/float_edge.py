"""float32 operators at a model's edges: after its last DEQUANTIZE (a float SOFTMAX or
LOG_SOFTMAX head, as in TinyEngine's LeNet-300-100) or before its first QUANTIZE.

They never run on the device: the compiler keeps them on the host side of the link,
like the boundary QUANTIZE / DEQUANTIZE, and the host computes them as TFLM's float
reference kernels do, operation by operation in float32. ``expf`` / ``logf`` come
from the C library TFLM itself calls (glibc's libm, through ctypes), not from numpy,
whose vectorised exp can differ in the last bit; so the outputs are bit-exact.

Supported: SOFTMAX, LOG_SOFTMAX, LOGISTIC, RESHAPE. Float layers with weights (a float
FULLY_CONNECTED or CONV_2D) are not edge ops: that is the model's compute, and it
belongs quantised on the device (the message says how to quantise the model).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np

from microtile.importer.ir import Graph, Operator
from microtile.ops import OpKernel, kernel_for

_libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
for _name in ("expf", "logf"):
    getattr(_libm, _name).restype = ctypes.c_float
    getattr(_libm, _name).argtypes = [ctypes.c_float]

# TFLM's float Logistic: 1 above this input, exp(x) below the lower cutoff.
LOGISTIC_CUTOFF_UPPER = np.float32(16.619047164916992188)
LOGISTIC_CUTOFF_LOWER = np.float32(-9.0)


def expf(x: np.ndarray) -> np.ndarray:
    """Element-wise libm expf on a float32 array."""
    flat = np.asarray(x, np.float32).reshape(-1)
    return np.array([_libm.expf(float(v)) for v in flat], np.float32).reshape(np.shape(x))


def logf(x: float) -> np.float32:
    return np.float32(_libm.logf(float(x)))


def _sum_in_order(values: np.ndarray) -> np.float32:
    """float32 sum left to right, as the C loop adds (numpy's sum is pairwise)."""
    return np.add.accumulate(np.asarray(values, np.float32), dtype=np.float32)[-1]


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x.reshape(-1, x.shape[-1] if x.ndim else 1)


def softmax_f32(x: np.ndarray, beta: float) -> np.ndarray:
    """reference_ops::Softmax (float): exp((x - max) * beta) / sum, all in float32."""
    beta32 = np.float32(beta)
    out = np.empty_like(_rows(x))
    for r, row in enumerate(_rows(x)):
        e = expf((row - row.max()) * beta32)
        out[r] = e / _sum_in_order(e)
    return out.reshape(np.shape(x))


def log_softmax_f32(x: np.ndarray) -> np.ndarray:
    """reference_ops::LogSoftmax (float): x - max - log(sum(exp(x - max)))."""
    out = np.empty_like(_rows(x))
    for r, row in enumerate(_rows(x)):
        m = row.max()
        log_sum = logf(_sum_in_order(expf(row - m)))
        out[r] = (row - m) - log_sum
    return out.reshape(np.shape(x))


def logistic_f32(x: np.ndarray) -> np.ndarray:
    """reference_ops::Logistic (float), with its cut-offs."""
    x = np.asarray(x, np.float32)
    body = np.float32(1.0) / (np.float32(1.0) + expf(-x))
    return np.where(x > LOGISTIC_CUTOFF_UPPER, np.float32(1.0),
                    np.where(x < LOGISTIC_CUTOFF_LOWER, expf(x), body)).astype(np.float32)


class FloatEdgeKernel(OpKernel):
    """A float32 operator run by the host; the device never sees it."""

    host_side = True

    def check(self, op: Operator, graph: Graph) -> None:
        if len(op.outputs) != 1 or not op.inputs or op.inputs[0] < 0:
            raise self.unsupported(op, f"{len(op.inputs)} inputs / {len(op.outputs)} outputs", "1 input, 1 output")
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        if (x.dtype, y.dtype) != ("float32", "float32"):
            raise self.unsupported(op, f"{x.dtype} -> {y.dtype}", "float32 -> float32 at the model's edges")
        if len(op.inputs) != 1 or x.shape != y.shape:
            raise self.unsupported(op, f"input shape {x.shape} and output shape {y.shape}",
                                   "one input, output of the same shape")

    def emit(self, op: Operator, graph: Graph, ctx) -> str:
        raise self.unsupported(op, "float32 runs on the host, not in firmware; the compiler keeps float edge "
                               "ops off the device", "none on the device")


class FloatSoftmax(FloatEdgeKernel):
    opcode = "SOFTMAX"

    def check(self, op: Operator, graph: Graph) -> None:
        super().check(op, graph)
        beta = float(op.options.get("beta", 1.0))
        if not math.isfinite(beta):
            raise self.unsupported(op, f"beta {beta}", "a finite beta")

    def reference(self, op, graph, inputs):
        return [softmax_f32(inputs[0], float(op.options.get("beta", 1.0)))]


class FloatLogSoftmax(FloatEdgeKernel):
    opcode = "LOG_SOFTMAX"

    def reference(self, op, graph, inputs):
        return [log_softmax_f32(inputs[0])]


class FloatLogistic(FloatEdgeKernel):
    opcode = "LOGISTIC"

    def reference(self, op, graph, inputs):
        return [logistic_f32(inputs[0])]


class FloatReshape(FloatEdgeKernel):
    opcode = "RESHAPE"

    def check(self, op: Operator, graph: Graph) -> None:
        # Only the element count matters to the host (TFLM's float RESHAPE copies bytes);
        # the shape input is a constant or absent.
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        if len(op.outputs) != 1 or (x.dtype, y.dtype) != ("float32", "float32") or x.size != y.size:
            raise self.unsupported(op, f"{x.dtype} {x.shape} -> {y.dtype} {y.shape}",
                                   "float32 -> float32 with the same number of elements")

    def reference(self, op, graph, inputs):
        return [np.asarray(inputs[0], np.float32).reshape(graph.tensor(op.outputs[0]).shape)]


FLOAT_EDGE_KERNELS: dict[str, FloatEdgeKernel] = {k.opcode: k() for k in
                                                  (FloatSoftmax, FloatLogSoftmax, FloatLogistic, FloatReshape)}


def is_float_edge_op(op: Operator, graph: Graph) -> bool:
    """A float32 -> float32 operator of a kind the host runs."""
    if op.opcode not in FLOAT_EDGE_KERNELS or not op.inputs or op.inputs[0] < 0 or len(op.outputs) != 1:
        return False
    return graph.tensor(op.inputs[0]).dtype == "float32" and graph.tensor(op.outputs[0]).dtype == "float32"


def kernel_for_op(op: Operator, graph: Graph) -> OpKernel:
    """The kernel of an operator given its tensor types: the float edge kernel for a
    float32 SOFTMAX / LOG_SOFTMAX / LOGISTIC / RESHAPE, else the registry's."""
    if is_float_edge_op(op, graph):
        return FLOAT_EDGE_KERNELS[op.opcode]
    return kernel_for(op)
