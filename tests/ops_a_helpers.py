"""Shared helpers for the conv / pool / pad operator tests: build one-operator IR
graphs and run them on TFLM (the oracle), the numpy reference and the native C
build."""
from __future__ import annotations

import importlib

import numpy as np

from microtile import ops
from microtile.ir import Graph, Operator, Quant, Tensor
from microtile.native import NativeModel
from microtile.oracle import TflmOracle
from microtile.ops import kernel_for
from microtile.reference import run_reference
from microtile.tflite_format import write_tflite

# kernel_for() fills the registry only while it is empty, so importing one family
# module directly would hide the others: load them all up front.
for _family in ops._FAMILIES:
    try:
        importlib.import_module(f"microtile.ops.{_family}")
    except ModuleNotFoundError as exc:
        if exc.name != f"microtile.ops.{_family}":
            raise


def quant(scale, zero_point, axis: int = 0) -> Quant:
    return Quant(np.atleast_1d(np.asarray(scale, dtype=np.float32)),
                 np.atleast_1d(np.asarray(zero_point, dtype=np.int64)), axis)


def tensor(index: int, name: str, shape, dtype: str = "int8", q: Quant | None = None,
           data: np.ndarray | None = None) -> Tensor:
    if data is not None:
        data = np.asarray(data, dtype=dtype).reshape(shape)
    return Tensor(index, name, tuple(int(s) for s in shape), dtype, q, data)


def one_op_graph(opcode: str, tensors: list[Tensor], inputs: list[int], outputs: list[int],
                 options: dict) -> Graph:
    graph_inputs = [i for i in inputs if i >= 0 and not tensors[i].is_constant]
    return Graph(opcode.lower(), tensors, [Operator(0, opcode, inputs, outputs, options)],
                 graph_inputs, outputs)


def log_uniform(rng: np.random.Generator, lo: float, hi: float, size=None) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def random_int8(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


def tflm(graph: Graph) -> TflmOracle:
    """TflmOracle for the graph, with an arena that fits its activations: the
    tflite-micro default (10x the model size) is too small for tiny-weight,
    large-activation graphs such as a lone pooling layer."""
    from tflite_micro.python.tflite_micro import runtime

    data = write_tflite(graph)
    activations = sum(t.nbytes for t in graph.tensors if not t.is_constant)
    oracle = TflmOracle.__new__(TflmOracle)
    oracle.num_outputs = len(graph.outputs)
    oracle.interpreter = runtime.Interpreter.from_bytes(data, arena_size=len(data) * 10 + activations * 4 + 16384)
    return oracle


def check_against_tflm(graph: Graph, inputs: list[np.ndarray], native: bool = True) -> np.ndarray:
    """Require the numpy reference and (optionally) the C kernel to equal TFLM
    bit for bit; returns TFLM's output for extra assertions."""
    op = graph.operators[0]
    kernel_for(op).check(op, graph)
    expected = tflm(graph)(inputs)
    got = run_reference(graph, inputs)
    for e, g in zip(expected, got):
        assert e.shape == g.shape, (e.shape, g.shape)
        diff = np.flatnonzero(e.astype(np.int32) != g.astype(np.int32))
        assert diff.size == 0, f"numpy reference differs from TFLM at {diff.size} of {e.size} values, first {diff[:5]}: " \
            f"tflm {e.reshape(-1)[diff[:5]]} ref {g.reshape(-1)[diff[:5]]}"
    # codegen runs batch 1 only; batched graphs check the numpy reference alone
    batch1 = all(len(graph.tensor(i).shape) < 2 or graph.tensor(i).shape[0] == 1 for i in graph.inputs)
    if native and batch1:
        got_c = NativeModel.build(graph).run(inputs)
        for e, g in zip(expected, got_c):
            assert e.shape == g.shape, (e.shape, g.shape)
            diff = np.flatnonzero(e.astype(np.int32) != g.astype(np.int32))
            assert diff.size == 0, f"C kernel differs from TFLM at {diff.size} of {e.size} values, first {diff[:5]}: " \
                f"tflm {e.reshape(-1)[diff[:5]]} C {g.reshape(-1)[diff[:5]]}"
    return expected[0]
