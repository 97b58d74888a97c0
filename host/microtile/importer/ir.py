"""Graph IR: what the importer produces and every later stage reads.

Conventions (they follow the TFLite schema so nothing is lost in translation):
- layouts are TFLite's: activations NHWC, conv filters OHWI, depthwise filters
  1HW(I*M), fully-connected weights [out, in];
- ``Operator.options`` holds the builtin options with the schema's field names in
  snake_case, enums as their schema names (``{"padding": "SAME", "stride_w": 2,
  "fused_activation_function": "RELU6"}``);
- an absent optional input is ``-1`` in ``Operator.inputs``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from microtile.errors import ModelFormatError


@dataclass
class Quant:
    scale: np.ndarray  # float32, one per tensor or one per channel
    zero_point: np.ndarray  # int64, same length as scale
    axis: int = 0  # quantized dimension when per-channel

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "int8", "int32", "float32", ...
    quant: Quant | None = None
    data: np.ndarray | None = None  # constant tensors (weights, biases, shapes)

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        """Element count, in Python ints (no int64 overflow on a corrupted shape)."""
        return math.prod(int(d) for d in self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def scale(self) -> float:
        """The per-tensor scale (activations are always per-tensor)."""
        assert self.quant is not None, f"tensor {self.name} is not quantized"
        return float(self.quant.scale[0])

    @property
    def zero_point(self) -> int:
        assert self.quant is not None, f"tensor {self.name} is not quantized"
        return int(self.quant.zero_point[0])


@dataclass
class Operator:
    index: int
    opcode: str  # builtin operator name, e.g. "CONV_2D"
    inputs: list[int]
    outputs: list[int]
    options: dict = field(default_factory=dict)


@dataclass
class Graph:
    name: str
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]

    def tensor(self, index: int) -> Tensor:
        if not 0 <= index < len(self.tensors):  # no Python negative indexing into the weights
            raise ModelFormatError(f"{self.name}: tensor index {index} is out of range (0..{len(self.tensors) - 1})")
        return self.tensors[index]

    def op_inputs(self, op: Operator) -> list[Tensor | None]:
        return [self.tensor(i) if i != -1 else None for i in op.inputs]

    def op_outputs(self, op: Operator) -> list[Tensor]:
        return [self.tensor(i) for i in op.outputs]

    def check_structure(self) -> None:
        """The dataflow every later stage relies on (raises ModelFormatError naming the
        first offender): valid indices, every tensor read is a graph input, a constant
        or the output of an earlier operator, no tensor is written twice, and every
        graph output is produced."""
        n = len(self.tensors)

        def name(i: int) -> str:
            return f"tensor #{i} {self.tensors[i].name!r}"

        for kind, indices in (("input", self.inputs), ("output", self.outputs)):
            for i in indices:
                if not 0 <= i < n:
                    raise ModelFormatError(f"{self.name}: graph {kind} index {i} is out of range (0..{n - 1})")
            if len(set(indices)) != len(indices):
                raise ModelFormatError(f"{self.name}: graph {kind}s {list(indices)} list a tensor twice")
        written: set[int] = set()
        for i in self.inputs:
            if self.tensors[i].is_constant:
                raise ModelFormatError(f"{self.name}: graph input {name(i)} is a constant (it has weight data)")
            written.add(i)
        for op in self.operators:
            where = f"{self.name}: operator #{op.index} {op.opcode}"
            for i in op.inputs:
                if i == -1:
                    continue
                if not 0 <= i < n:
                    raise ModelFormatError(f"{where}: input tensor index {i} is out of range (0..{n - 1})")
                if not (self.tensors[i].is_constant or i in written):
                    raise ModelFormatError(f"{where} reads {name(i)}, which is not a graph input, a constant "
                                           "or the output of an earlier operator")
            for i in op.outputs:
                if not 0 <= i < n:
                    raise ModelFormatError(f"{where}: output tensor index {i} is out of range (0..{n - 1})")
                if self.tensors[i].is_constant:
                    raise ModelFormatError(f"{where} writes {name(i)}, which is a constant")
                if i in written:
                    raise ModelFormatError(f"{where} writes {name(i)} a second time")
                written.add(i)
        for i in self.outputs:
            if i not in written:
                raise ModelFormatError(f"{self.name}: graph output {name(i)} is never written "
                                       "(not a graph input nor any operator's output)")
