"""Shape and data-movement operators: RESHAPE, CONCATENATION, TRANSPOSE,
RESIZE_NEAREST_NEIGHBOR. No arithmetic, so they are exact by construction; what
must match TFLM is which element lands where (and, for nearest-neighbour resize,
TFLM's float32 index arithmetic, which we evaluate on the host into index tables).

The C kernels (firmware/kernels/mt_shape.c) move bytes, so they serve any element
type; the operators accept the integer types a microtile model carries on device.
"""
from __future__ import annotations

import numpy as np

from microtile.importer.ir import Graph, Operator
from microtile.ops import OpKernel, register

# Element types the byte-moving kernels handle on device.
_DEVICE_TYPES = ("int8", "int16", "int32")
MAX_RANK = 6  # TFLM's RuntimeShape limit (CONCATENATION); the C kernels' loop depth
MAX_TRANSPOSE_RANK = 5  # TFLM's TRANSPOSE Prepare refuses more


def _count(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def _check_io_type(kernel: OpKernel, op: Operator, graph: Graph, tensor_indices: list[int]) -> str:
    out = graph.tensor(op.outputs[0])
    if out.dtype not in _DEVICE_TYPES:
        raise kernel.unsupported(op, f"type {out.dtype}", ", ".join(_DEVICE_TYPES))
    for i in tensor_indices:
        t = graph.tensor(i)
        if t.dtype != out.dtype:
            raise kernel.unsupported(op, f"input {t.name!r} is {t.dtype} but the output is {out.dtype}",
                                     "inputs and output of the same type")
    return out.dtype


def _constant_input(kernel: OpKernel, op: Operator, graph: Graph, position: int, what: str) -> np.ndarray:
    if len(op.inputs) <= position or op.inputs[position] < 0:
        raise kernel.unsupported(op, f"missing {what} input")
    t = graph.tensor(op.inputs[position])
    if not t.is_constant:
        raise kernel.unsupported(op, f"{what} is computed at run time", f"a constant {what} tensor")
    if t.dtype not in ("int32", "int64"):
        raise kernel.unsupported(op, f"{what} tensor of type {t.dtype}", f"int32 {what}")
    return np.asarray(t.data).astype(np.int64).reshape(-1)


# ---------------------------------------------------------------- RESHAPE


def _resolve_shape(requested: list[int], count: int) -> tuple[int, ...] | None:
    """new_shape with at most one -1 filled in; None if it cannot hold count values."""
    requested = [int(v) for v in requested]
    if requested.count(-1) > 1 or any(v < -1 for v in requested):
        return None
    known = _count([v for v in requested if v != -1])
    if -1 in requested:
        if known == 0 or count % known:
            return None
        requested[requested.index(-1)] = count // known
    return tuple(requested) if _count(requested) == count else None


@register
class Reshape(OpKernel):
    opcode = "RESHAPE"

    def check(self, op: Operator, graph: Graph) -> None:
        if len(op.outputs) != 1 or not 1 <= len(op.inputs) <= 2:
            raise self.unsupported(op, f"{len(op.inputs)} inputs / {len(op.outputs)} outputs",
                                   "input (+ shape), 1 output")
        _check_io_type(self, op, graph, [op.inputs[0]])
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        if _count(x.shape) != _count(y.shape):
            raise self.unsupported(op, f"input shape {x.shape} and output shape {y.shape} differ in size")
        requested = None
        if len(op.inputs) == 2 and op.inputs[1] >= 0:
            requested = _constant_input(self, op, graph, 1, "shape").tolist()
        elif op.options.get("new_shape"):
            requested = list(op.options["new_shape"])
        if requested is not None and requested != [] and _resolve_shape(requested, _count(x.shape)) != tuple(y.shape):
            raise self.unsupported(op, f"new shape {requested} does not give the output shape {y.shape}",
                                   "a new shape that matches the output tensor")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        return [np.asarray(inputs[0]).reshape(graph.tensor(op.outputs[0]).shape)]

    def emit(self, op: Operator, graph: Graph, ctx) -> str:
        ctx.include("mt_shape.h")
        return (f"mt_reshape_ref({ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])}, "
                f"{graph.tensor(op.outputs[0]).nbytes}u);")


# ---------------------------------------------------------------- CONCATENATION


def _concat_axis(op: Operator, graph: Graph) -> int:
    rank = len(graph.tensor(op.outputs[0]).shape)
    axis = int(op.options.get("axis", 0))
    return axis + rank if axis < 0 else axis


@register
class Concatenation(OpKernel):
    opcode = "CONCATENATION"

    def check(self, op: Operator, graph: Graph) -> None:
        if len(op.outputs) != 1 or not op.inputs or any(i < 0 for i in op.inputs):
            raise self.unsupported(op, "bad inputs/outputs", "1 or more inputs, 1 output")
        _check_io_type(self, op, graph, op.inputs)
        act = op.options.get("fused_activation_function", "NONE")
        if act != "NONE":
            raise self.unsupported(op, f"fused activation {act}", "NONE (as TFLM)")
        y = graph.tensor(op.outputs[0])
        rank = len(y.shape)
        if not 1 <= rank <= MAX_RANK:
            raise self.unsupported(op, f"rank {rank}", f"rank 1 to {MAX_RANK}")
        axis = _concat_axis(op, graph)
        if not 0 <= axis < rank:
            raise self.unsupported(op, f"axis {op.options.get('axis')} for rank {rank}")
        total = 0
        for i in op.inputs:
            s = graph.tensor(i).shape
            if len(s) != rank or any(s[d] != y.shape[d] for d in range(rank) if d != axis):
                raise self.unsupported(op, f"input shape {s} does not fit output shape {y.shape} on axis {axis}")
            total += s[axis]
        if total != y.shape[axis]:
            raise self.unsupported(op, f"inputs add up to {total} on axis {axis}, output has {y.shape[axis]}")
        # TFLM copies bytes without requantising and so requires (in Prepare) every
        # input to share the output's scale and zero point.
        if y.quant is not None:
            for i in op.inputs:
                q = graph.tensor(i).quant
                if q is None or q.scale.size != 1 or y.quant.scale.size != 1 or (
                        np.float32(q.scale[0]) != np.float32(y.quant.scale[0])
                        or int(q.zero_point[0]) != int(y.quant.zero_point[0])):
                    raise self.unsupported(
                        op, f"input {graph.tensor(i).name!r} is quantised differently from the output",
                        "inputs with the output's scale and zero point, as TFLM requires "
                        "(requantise the input with a QUANTIZE operator first)")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        return [np.concatenate([np.asarray(x) for x in inputs], axis=_concat_axis(op, graph))]

    def emit(self, op: Operator, graph: Graph, ctx) -> str:
        y = graph.tensor(op.outputs[0])
        axis = _concat_axis(op, graph)
        outer = _count(y.shape[:axis])
        inner_bytes = _count(y.shape[axis + 1:]) * _itemsize(y.dtype)
        row_bytes = np.array([graph.tensor(i).shape[axis] * inner_bytes for i in op.inputs], dtype=np.int32)
        ctx.include("mt_shape.h")
        sizes = ctx.const_array(f"concat{op.index}_bytes", row_bytes)
        params = ctx.static_struct(
            "mt_concatenation_params", f"concat{op.index}",
            f"{{ {outer}, {len(op.inputs)}, {y.shape[axis] * inner_bytes}, {sizes} }}")
        ins = ", ".join(f"(const void *){ctx.ptr(i)}" for i in op.inputs)
        return (f"{{ const void *const ins[{len(op.inputs)}] = {{ {ins} }}; "
                f"mt_concatenation_ref(&{params}, ins, {ctx.ptr(op.outputs[0])}); }}")


# ---------------------------------------------------------------- TRANSPOSE


@register
class Transpose(OpKernel):
    opcode = "TRANSPOSE"

    def check(self, op: Operator, graph: Graph) -> None:
        if len(op.inputs) != 2 or len(op.outputs) != 1:
            raise self.unsupported(op, f"{len(op.inputs)} inputs / {len(op.outputs)} outputs",
                                   "input + perm, 1 output")
        _check_io_type(self, op, graph, [op.inputs[0]])
        perm = _constant_input(self, op, graph, 1, "perm")
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        rank = len(x.shape)
        if not 1 <= rank <= MAX_TRANSPOSE_RANK:
            raise self.unsupported(op, f"rank {rank}", f"rank 1 to {MAX_TRANSPOSE_RANK}, as TFLM")
        if sorted(perm.tolist()) != list(range(rank)):
            raise self.unsupported(op, f"perm {perm.tolist()} is not a permutation of 0..{rank - 1}")
        if tuple(x.shape[p] for p in perm) != tuple(y.shape):
            raise self.unsupported(op, f"output shape {y.shape} is not the input shape {x.shape} permuted by "
                                   f"{perm.tolist()}")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        perm = np.asarray(inputs[1]).astype(np.int64).reshape(-1)
        return [np.transpose(np.asarray(inputs[0]), perm)]

    def emit(self, op: Operator, graph: Graph, ctx) -> str:
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        perm = np.asarray(graph.tensor(op.inputs[1]).data).astype(np.int64).reshape(-1)
        # Fold the element size into a trailing byte dimension, then drop size-1 dims
        # so the kernel's loop nest is as shallow as possible.
        item = _itemsize(y.dtype)
        in_strides = [1] * len(x.shape)
        for d in range(len(x.shape) - 2, -1, -1):
            in_strides[d] = in_strides[d + 1] * x.shape[d + 1]
        dims = [(int(y.shape[i]), int(in_strides[p]) * item) for i, p in enumerate(perm) if y.shape[i] != 1]
        if not dims:
            dims = [(1, 0)]
        pad = MAX_RANK - len(dims)
        shape = [1] * pad + [d for d, _ in dims]
        strides = [0] * pad + [s for _, s in dims]
        ctx.include("mt_shape.h")
        params = ctx.static_struct(
            "mt_transpose_params", f"transpose{op.index}",
            f"{{ {item}, {{ {', '.join(map(str, shape))} }}, {{ {', '.join(map(str, strides))} }} }}")
        return f"mt_transpose_ref(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"


# ---------------------------------------------------------------- RESIZE_NEAREST_NEIGHBOR


def nearest_neighbor_indices(in_size: int, out_size: int, align_corners: bool, half_pixel_centers: bool) -> np.ndarray:
    """TFLM GetNearestNeighbor for every output coordinate, in its float32 arithmetic."""
    f32 = np.float32
    if align_corners and out_size > 1:
        scale = f32(in_size - 1) / f32(out_size - 1)
    else:
        scale = f32(in_size) / f32(out_size)
    offset = f32(0.5) if half_pixel_centers else f32(0.0)
    pos = (np.arange(out_size, dtype=np.float32) + offset) * scale  # float32 ops, as in C++
    if align_corners:
        # std::round(float) is exact; do the +0.5 in float64 so it cannot round up.
        pos64 = pos.astype(np.float64)
        idx = (np.floor(np.abs(pos64) + 0.5) * np.sign(pos64)).astype(np.int64)
    else:
        idx = np.floor(pos).astype(np.int64)
    idx = np.minimum(idx, in_size - 1)
    if half_pixel_centers:
        idx = np.maximum(idx, 0)
    return idx


def _resize_tables(op: Operator, graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    align = bool(op.options.get("align_corners", False))
    half = bool(op.options.get("half_pixel_centers", False))
    return (nearest_neighbor_indices(x.shape[1], y.shape[1], align, half),
            nearest_neighbor_indices(x.shape[2], y.shape[2], align, half))


@register
class ResizeNearestNeighbor(OpKernel):
    opcode = "RESIZE_NEAREST_NEIGHBOR"

    def check(self, op: Operator, graph: Graph) -> None:
        if len(op.inputs) != 2 or len(op.outputs) != 1:
            raise self.unsupported(op, f"{len(op.inputs)} inputs / {len(op.outputs)} outputs",
                                   "input + size, 1 output")
        _check_io_type(self, op, graph, [op.inputs[0]])
        size = _constant_input(self, op, graph, 1, "size")
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        if len(x.shape) != 4:
            raise self.unsupported(op, f"rank {len(x.shape)} input", "4-D NHWC input (as TFLM)")
        if size.size != 2 or np.any(size < 1):
            raise self.unsupported(op, f"size {size.tolist()}", "[new_height, new_width], both >= 1")
        expected = (x.shape[0], int(size[0]), int(size[1]), x.shape[3])
        if tuple(y.shape) != expected:
            raise self.unsupported(op, f"output shape {y.shape}, size gives {expected}")
        extra = set(op.options) - {"align_corners", "half_pixel_centers"}
        if extra:
            raise self.unsupported(op, f"unknown options {sorted(extra)}", "align_corners, half_pixel_centers")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        ys, xs = _resize_tables(op, graph)
        x = np.asarray(inputs[0])
        return [x[:, ys][:, :, xs]]

    def emit(self, op: Operator, graph: Graph, ctx) -> str:
        x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
        ys, xs = _resize_tables(op, graph)
        pixel = x.shape[3] * _itemsize(x.dtype)
        ctx.include("mt_shape.h")
        # Byte offsets into one input image, so the kernel does no multiplies.
        y_off = ctx.const_array(f"resize{op.index}_rows", (ys * x.shape[2] * pixel).astype(np.int32))
        x_off = ctx.const_array(f"resize{op.index}_cols", (xs * pixel).astype(np.int32))
        params = ctx.static_struct(
            "mt_resize_nearest_params", f"resize{op.index}",
            f"{{ {x.shape[0]}, {y.shape[1]}, {y.shape[2]}, {pixel}, "
            f"{x.shape[1] * x.shape[2] * pixel}, {y_off}, {x_off} }}")
        return f"mt_resize_nearest_ref(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"
