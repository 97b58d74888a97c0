"""Operator registry: one OpKernel per TFLite builtin operator.

Each operator family lives in its own module (conv.py, pool.py, ...) and registers
its kernels with ``@register``. An OpKernel knows four things about its operator:
which variants are supported (``check``), the bit-exact numpy reference
(``reference``), its multiply-accumulate count (``macs``) and the C call that runs
it in the generated firmware (``emit``).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from microtile.errors import UnsupportedOperatorError
from microtile.importer.ir import Graph, Operator, Tensor
from microtile.importer.quant import activation_range


class EmitContext(Protocol):
    """What codegen offers an emitter while it writes one layer of model.c."""

    kernels: str  # "reference" or "optimized": which kernel set the user asked for
    board: object  # the target Board (core, DSP extension, flash size), or None for native builds

    def include(self, header: str) -> None:
        """#include "header" in model.c (headers live in firmware/include)."""

    def const_array(self, hint: str, values: np.ndarray, sram: bool = False) -> str:
        """Define ``static const <ctype> name[] = {...}`` in flash (sram: in .data, copied
        to SRAM by the startup); returns its name.

        The C type follows the numpy dtype (int8 -> int8_t, int32 -> int32_t, ...).
        """

    def static_struct(self, ctype: str, hint: str, initializer: str) -> str:
        """Define ``static const ctype name = initializer;``; returns its name."""

    def define(self, text: str) -> None:
        """Add a top-level C definition (e.g. a helper function shared by several
        layers) to model.c once; the same text again is not repeated."""

    def scratch(self, nbytes: int) -> str:
        """A ``uint64_t *`` C expression for ``nbytes`` of working memory valid during
        this layer only (in the arena, after the planned tensors; never on the stack)."""

    def ptr(self, tensor_index: int) -> str:
        """A C expression pointing at the tensor's data (arena slot or const array),
        typed by the tensor's dtype, e.g. ``((int8_t *)(arena + 1024))``."""


class OpKernel:
    opcode: str = ""
    # Runs on the host side of the link (QUANTIZE/DEQUANTIZE at float boundaries).
    host_side: bool = False

    def check(self, op: Operator, graph: Graph) -> None:
        """Raise UnsupportedOperatorError for any variant the kernels do not handle."""

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        """Bit-exact numpy reference: input arrays (None for absent optional inputs;
        constant inputs are passed too) -> output arrays."""
        raise NotImplementedError

    def macs(self, op: Operator, graph: Graph) -> int:
        return 0

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        """C statement(s) that run the operator; ``arena`` is a ``uint8_t *`` in scope."""
        raise NotImplementedError

    def opt_fallback(self, op: Operator, graph: Graph) -> str | None:
        """Why the optimised kernel set runs this layer with the reference kernel (one
        line, shown by ``compile --explain``), or None when an optimised kernel runs it.
        emit() takes the optimised path exactly when this is None."""
        return "no optimised kernel"

    def unsupported(self, op: Operator, problem: str, supported: str = "") -> UnsupportedOperatorError:
        return UnsupportedOperatorError(op.index, op.opcode, problem, supported)

    def check_fused_activation(self, op: Operator, out: Tensor) -> None:
        """A known fused activation whose bounds TFLM can quantise: its
        CalculateActivationRangeQuantized refuses a bound whose round(v / scale) overflows
        int32 (a tiny output scale with RELU6 / RELU_N1_TO_1), so microtile refuses it too."""
        act = op.options.get("fused_activation_function", "NONE")
        if act not in FUSED_ACTIVATIONS:
            raise self.unsupported(op, f"fused activation {act}", ", ".join(FUSED_ACTIVATIONS))
        for v in FUSED_ACTIVATIONS[act]:
            t = float(np.round(np.float32(v) / np.float32(out.scale)))
            if not -2.0 ** 31 <= t <= 2.0 ** 31:
                raise self.unsupported(op, f"fused {act}: bound {v} over output scale {out.scale} overflows int32",
                                       "an output scale TFLM can quantise the activation bounds with")

    def require_int8_per_tensor(self, op: Operator, tensors: Iterable[Tensor]) -> None:
        """Activations the int8 kernels accept: int8, one positive finite scale each."""
        for t in tensors:
            if t.dtype != "int8":
                raise self.unsupported(op, f"tensor {t.name} is {t.dtype}",
                                       "int8 activations (int16/float/int32 are not implemented)")
            if t.quant is None or t.quant.scale.size != 1:
                raise self.unsupported(op, f"tensor {t.name} is not per-tensor quantized",
                                       "per-tensor int8 quantization")
            if not 0 < t.scale < float("inf"):
                raise self.unsupported(op, f"tensor {t.name} has scale {t.scale}", "positive finite scales")


# Fused activations and the float bounds TFLM quantises for each.
FUSED_ACTIVATIONS = {"NONE": (), "RELU": (0.0,), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}


def kernel_label(op: Operator, graph: Graph, kernels: str) -> str:
    """The kernel a layer runs: "opt", "ref: <reason>" (optimised set, fallback) or "ref"."""
    if kernels != "optimized":
        return "ref"
    reason = kernel_for(op).opt_fallback(op, graph)
    return "opt" if reason is None else f"ref: {reason}"


def fused_activation_range(op: Operator, out: Tensor) -> tuple[int, int]:
    """The int8 clamp range of the operator's fused activation on its output."""
    return activation_range(op.options.get("fused_activation_function", "NONE"), out.scale, out.zero_point)


REGISTRY: dict[str, OpKernel] = {}

# Operator family modules; importing them fills REGISTRY.
_FAMILIES = ("conv", "pool", "pad", "elementwise", "activation", "softmax", "shape", "quantize",
             "partial")  # partial: the internal ops of fused depthwise tiling (passes/fdt.py)


def register(cls: type[OpKernel]) -> type[OpKernel]:
    REGISTRY[cls.opcode] = cls()
    return cls


# Operators only graph passes write (passes/fdt.py's partial sums), never a model: not
# TFLite builtins, so neither listed as supported nor fuzzed against TFLM.
INTERNAL: dict[str, OpKernel] = {}


def register_internal(cls: type[OpKernel]) -> type[OpKernel]:
    INTERNAL[cls.opcode] = cls()
    return cls


_loaded = False


def load_families() -> None:
    """Import every family module once (importing one directly must not hide the others)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for family in _FAMILIES:
            importlib.import_module(f"{__name__}.{family}")


def kernel_for(op: Operator) -> OpKernel:
    load_families()
    try:
        return REGISTRY[op.opcode] if op.opcode in REGISTRY else INTERNAL[op.opcode]
    except KeyError:
        raise UnsupportedOperatorError(
            op.index, op.opcode, "operator not implemented", ", ".join(sorted(REGISTRY))
        ) from None
