"""The numpy reference executor: runs an IR graph operator by operator with each
OpKernel's bit-exact reference. It is the fast oracle for search loops and the
host side of the float edges (QUANTIZE / DEQUANTIZE and the float ops beyond them)."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from microtile.errors import MicrotileError
from microtile.importer.ir import Graph, Operator
from microtile.ops.float_edge import kernel_for_op


def check_input_arrays(graph: Graph, tensor_indices: list[int], arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Validate user inputs against the model's input tensors; returns them reshaped."""
    if len(arrays) != len(tensor_indices):
        raise MicrotileError(f"model {graph.name} takes {len(tensor_indices)} input(s), got {len(arrays)}")
    checked = []
    for idx, x in zip(tensor_indices, arrays):
        t = graph.tensor(idx)
        x = np.asarray(x)
        if x.dtype != np.dtype(t.dtype):
            raise MicrotileError(f"input {t.name!r} must be {t.dtype}, got {x.dtype}")
        if x.size != int(np.prod(t.shape, dtype=np.int64)):
            raise MicrotileError(
                f"input {t.name!r} has shape {tuple(x.shape)} ({x.size} values); the model expects "
                f"{t.shape} ({int(np.prod(t.shape))} values)"
            )
        checked.append(x.reshape(t.shape))
    return checked


def run_operators(graph: Graph, operators: Iterable[Operator], values: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Run operators in order, reading and adding tensor values (keyed by tensor index)."""
    for op in operators:
        ins = []
        for i in op.inputs:
            if i < 0:
                ins.append(None)
            elif i in values:
                ins.append(values[i])
            else:
                ins.append(graph.tensor(i).data)
        outs = kernel_for_op(op, graph).reference(op, graph, ins)
        for i, out in zip(op.outputs, outs):
            t = graph.tensor(i)
            values[i] = np.asarray(out, dtype=t.dtype).reshape(t.shape)
    return values


def run_reference(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run the whole graph on one set of inputs; returns the graph outputs."""
    values = dict(zip(graph.inputs, check_input_arrays(graph, graph.inputs, inputs)))
    run_operators(graph, graph.operators, values)
    return [values[i] for i in graph.outputs]
