"""The one harness of the operator tests: build one-operator IR graphs, run them on
TFLM (the oracle, from the written .tflite), the numpy reference and the native C
kernels, and require all three to agree bit for bit."""
from __future__ import annotations

import numpy as np

from microtile.check.fuzz_ops import log_uniform, one_op_graph, qtensor, quant, random_int8, tensor  # noqa: F401
from microtile.importer.ir import Graph
from microtile.build.native import NativeModel
from microtile.ops import kernel_for
from microtile.check.oracle import TflmOracle
from microtile.check.reference import run_reference
from microtile.importer.tflite_format import write_tflite


def all_int8(shape_prefix: tuple[int, ...] = ()) -> np.ndarray:
    """Every int8 value once (unary operators: exhaustive over the input)."""
    return np.arange(-128, 128, dtype=np.int64).astype(np.int8).reshape(shape_prefix + (256,))


def tflm(graph: Graph) -> TflmOracle:
    return TflmOracle(write_tflite(graph))


def assert_same(what: str, expected: np.ndarray, got: np.ndarray) -> None:
    """Bit-for-bit equality (floats compared by bit pattern), with the first differences."""
    assert expected.shape == got.shape, (what, expected.shape, got.shape)
    assert expected.dtype == got.dtype, (what, expected.dtype, got.dtype)
    if expected.dtype.kind == "f":
        bad = expected.view(np.uint32) != got.view(np.uint32)
    else:
        bad = expected.astype(np.int64) != got.astype(np.int64)
    diff = np.flatnonzero(bad)
    assert diff.size == 0, (
        f"{what} differs from TFLM at {diff.size} of {expected.size} values, first {diff[:5]}: "
        f"tflm {expected.reshape(-1)[diff[:5]]} got {got.reshape(-1)[diff[:5]]}")


def check_against_tflm(graph: Graph, inputs: list[np.ndarray], native: bool = True,
                       kernels: tuple[str, ...] = ("reference",)) -> list[np.ndarray]:
    """Require the numpy reference and (unless native=False) the C kernels of each
    kernel set to equal TFLM bit for bit; returns TFLM's outputs."""
    for op in graph.operators:
        kernel_for(op).check(op, graph)
    expected = tflm(graph)(inputs)
    for e, g in zip(expected, run_reference(graph, inputs)):
        assert_same("numpy reference", e, g)
    # codegen runs batch 1 only; batched graphs check the numpy reference alone
    batch1 = all(len(graph.tensor(i).shape) < 4 or graph.tensor(i).shape[0] == 1 for i in graph.inputs)
    if native and batch1:
        for k in kernels:
            for e, g in zip(expected, NativeModel.build(graph, kernels=k).run(inputs)):
                assert_same(f"C kernel ({k})", e, g)
    return expected
