"""Shared helpers for the softmax / shape operator tests: one-operator IR graphs run
on TFLM (the oracle), the numpy reference and the native C build."""
from __future__ import annotations

import numpy as np

import importlib

import microtile.ops
from microtile.ir import Graph, Operator, Quant, Tensor
from microtile.native import NativeModel
from microtile.ops import kernel_for
from microtile.reference import run_reference
from microtile.tflite_format import write_tflite


# kernel_for() only loads the operator families while the registry is empty; a test
# module that imports one family directly would hide the others. Load them all.
for _family in microtile.ops._FAMILIES:
    try:
        importlib.import_module(f"microtile.ops.{_family}")
    except ModuleNotFoundError as exc:
        if exc.name != f"microtile.ops.{_family}":
            raise


def quant(scale: float, zero_point: int) -> Quant:
    return Quant(np.array([scale], dtype=np.float32), np.array([zero_point], dtype=np.int64))


def tflm(model: bytes, inputs: list[np.ndarray], num_outputs: int = 1) -> list[np.ndarray]:
    """Run TFLM with an arena large enough for tiny one-operator models (the
    package's default of 10x the model size is too small for them)."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(bytes(model), arena_size=max(1 << 17, 10 * len(model)))
    for i, x in enumerate(inputs):
        interp.set_input(np.ascontiguousarray(x), i)
    interp.invoke()
    return [np.array(interp.get_output(i)) for i in range(num_outputs)]


def one_op_graph(opcode: str, tensors: list[Tensor], inputs: list[int], outputs: list[int],
                 options: dict) -> Graph:
    graph_inputs = [i for i in inputs if i >= 0 and not tensors[i].is_constant]
    return Graph(opcode.lower(), tensors, [Operator(0, opcode, inputs, outputs, options)],
                 graph_inputs, outputs)


def random_int8(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


def _assert_same(what: str, expected: np.ndarray, got: np.ndarray) -> None:
    assert expected.shape == got.shape, (what, expected.shape, got.shape)
    assert expected.dtype == got.dtype, (what, expected.dtype, got.dtype)
    diff = np.flatnonzero(expected.astype(np.int64) != got.astype(np.int64))
    assert diff.size == 0, (
        f"{what} differs from TFLM at {diff.size} of {expected.size} values, first {diff[:5]}: "
        f"tflm {expected.reshape(-1)[diff[:5]]} got {got.reshape(-1)[diff[:5]]}")


def check_against_tflm(graph: Graph, inputs: list[np.ndarray], native: bool = True) -> list[np.ndarray]:
    """Require the numpy reference and (optionally) the C kernel to equal TFLM bit
    for bit; returns TFLM's outputs."""
    op = graph.operators[0]
    kernel_for(op).check(op, graph)
    expected = tflm(write_tflite(graph), inputs, len(graph.outputs))
    for e, g in zip(expected, run_reference(graph, inputs)):
        _assert_same("numpy reference", e, g)
    if native:
        for e, g in zip(expected, NativeModel.build(graph).run(inputs)):
            _assert_same("C kernel", e, g)
    return expected
