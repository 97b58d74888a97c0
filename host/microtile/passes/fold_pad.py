"""Graph pass: a PAD (or PADV2 with the zero point as its value) that only feeds a
VALID CONV_2D / DEPTHWISE_CONV_2D is folded into it as explicit padding, so the padded
tensor is never materialised. Bit-exact: the kernels skip out-of-image taps, which is
what multiplying a zero-point value (zero after the input offset) amounts to."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from microtile.importer.ir import Graph, Operator
from microtile.passes.pipeline import copy_graph

WINDOW_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def _foldable(pad: Operator, consumer: Operator, graph: Graph) -> tuple[int, int] | None:
    """(top, left) padding when the PAD can be folded into the consumer, else None."""
    if consumer.opcode not in WINDOW_OPS or consumer.options.get("padding") != "VALID" \
            or "explicit_padding" in consumer.options or consumer.inputs[0] != pad.outputs[0]:
        return None
    x, y = graph.tensor(pad.inputs[0]), graph.tensor(pad.outputs[0])
    if len(x.shape) != 4 or x.dtype != "int8" or y.quant is None:
        return None
    p = np.asarray(graph.tensor(pad.inputs[1]).data, dtype=np.int64).reshape(-1, 2)
    if p.shape != (4, 2) or p[0].any() or p[3].any() or (p < 0).any():
        return None  # batch or channel padding is not a window's border
    if pad.opcode == "PADV2" and len(pad.inputs) > 2 and pad.inputs[2] >= 0:
        if int(np.asarray(graph.tensor(pad.inputs[2]).data).reshape(-1)[0]) != y.zero_point:
            return None  # a pad value other than the zero point contributes to the sums
    if x.quant is None or x.scale != y.scale or x.zero_point != y.zero_point:
        return None
    return int(p[1, 0]), int(p[2, 0])


def fold_pad(graph: Graph) -> Graph:
    readers: dict[int, list[Operator]] = {}
    for op in graph.operators:
        for i in op.inputs:
            readers.setdefault(i, []).append(op)
    folded: dict[int, Operator] = {}  # consumer op index -> replacement
    dropped: set[int] = set()
    for op in graph.operators:
        if op.opcode not in ("PAD", "PADV2") or op.outputs[0] in graph.outputs:
            continue
        users = readers.get(op.outputs[0], [])
        if len(users) != 1 or users[0].index in folded:
            continue
        tl = _foldable(op, users[0], graph)
        if tl is None:
            continue
        c = users[0]
        folded[c.index] = replace(c, inputs=[op.inputs[0], *c.inputs[1:]],
                                  options={**c.options, "explicit_padding": tl})
        dropped.add(op.index)
    if not folded:
        return graph
    ops = [folded.get(op.index, op) for op in graph.operators if op.index not in dropped]
    return copy_graph(graph, operators=ops)
