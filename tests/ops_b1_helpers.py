"""Shared helpers for the elementwise / activation / quantize operator tests:
one-operator IR graphs run on TFLM (the oracle), the numpy reference and the
native C build, which must all agree bit for bit."""
from __future__ import annotations

import importlib

import numpy as np

from microtile import ops
from microtile.ir import Graph, Operator, Quant, Tensor
from microtile.native import NativeModel
from microtile.ops import kernel_for

# kernel_for() imports the operator families only while the registry is empty, so a
# test that imports one family module directly would hide all the others: load them all.
for _family in ops._FAMILIES:
    try:
        importlib.import_module(f"microtile.ops.{_family}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"microtile.ops.{_family}":
            raise
from microtile.reference import run_reference
from microtile.tflite_format import write_tflite


def quant(scale: float, zero_point: int) -> Quant:
    return Quant(np.array([scale], dtype=np.float32), np.array([zero_point], dtype=np.int64))


def qtensor(index: int, shape, scale: float, zero_point: int, dtype: str = "int8") -> Tensor:
    return Tensor(index, f"t{index}", tuple(shape), dtype, quant(scale, zero_point))


def tflm(model: bytes, inputs: list[np.ndarray], num_outputs: int = 1) -> list[np.ndarray]:
    """Run TFLM with an arena large enough for tiny one-operator models."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(bytes(model), arena_size=max(1 << 17, 10 * len(model)))
    for i, x in enumerate(inputs):
        interp.set_input(np.asarray(x, order="C"), i)  # keeps 0-d arrays 0-d
    interp.invoke()
    return [np.array(interp.get_output(i)) for i in range(num_outputs)]


def one_op_graph(opcode: str, tensors: list[Tensor], inputs: list[int], outputs: list[int],
                 options: dict | None = None) -> Graph:
    graph_inputs = [i for i in inputs if i >= 0 and not tensors[i].is_constant]
    return Graph(opcode.lower(), tensors, [Operator(0, opcode, inputs, outputs, options or {})],
                 graph_inputs, outputs)


def random_int8(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


def all_int8(shape_prefix: tuple[int, ...] = ()) -> np.ndarray:
    """Every int8 value once (for unary operators: exhaustive over the input)."""
    return np.arange(-128, 128, dtype=np.int64).astype(np.int8).reshape(shape_prefix + (256,))


def assert_same(what: str, expected: np.ndarray, got: np.ndarray) -> None:
    assert expected.shape == got.shape, (what, expected.shape, got.shape)
    assert expected.dtype == got.dtype, (what, expected.dtype, got.dtype)
    if expected.dtype.kind == "f":
        bad = expected.view(np.uint32) != got.view(np.uint32)  # bit pattern equality
    else:
        bad = expected.astype(np.int64) != got.astype(np.int64)
    diff = np.flatnonzero(bad)
    assert diff.size == 0, (
        f"{what} differs from TFLM at {diff.size} of {expected.size} values, first {diff[:5]}: "
        f"tflm {expected.reshape(-1)[diff[:5]]} got {got.reshape(-1)[diff[:5]]}")


def check_against_tflm(graph: Graph, inputs: list[np.ndarray], native: bool = True) -> list[np.ndarray]:
    """Require the numpy reference and (optionally) the C kernel to equal TFLM bit
    for bit; returns TFLM's outputs."""
    for op in graph.operators:
        kernel_for(op).check(op, graph)
    expected = tflm(write_tflite(graph), inputs, len(graph.outputs))
    for e, g in zip(expected, run_reference(graph, inputs)):
        assert_same("numpy reference", e, g)
    if native:
        for e, g in zip(expected, NativeModel.build(graph).run(inputs)):
            assert_same("C kernel", e, g)
    return expected
