"""RESHAPE, CONCATENATION, TRANSPOSE, RESIZE_NEAREST_NEIGHBOR: numpy reference and
C kernels bit-exact with TFLM."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from microtile.errors import UnsupportedOperatorError
from microtile.importer.ir import Tensor
from microtile.ops import kernel_for
from microtile.ops.shape import nearest_neighbor_indices

from op_harness import check_against_tflm, one_op_graph, quant, random_int8

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def t(index, name, shape, dtype="int8", q=None, data=None):
    if data is not None:
        data = np.asarray(data, dtype=dtype).reshape(shape)
    if q is None and dtype == "int8":
        q = quant(0.05, -3)
    return Tensor(index, name, tuple(int(s) for s in shape), dtype, q, data)


def _expect_unsupported(graph, match):
    op = graph.operators[0]
    with pytest.raises(UnsupportedOperatorError, match=match):
        kernel_for(op).check(op, graph)


# ---------------------------------------------------------------- RESHAPE


def reshape_graph(in_shape, out_shape, new_shape=None, as_input=True, dtype="int8"):
    tensors = [t(0, "x", in_shape, dtype), t(1, "y", out_shape, dtype)]
    inputs, options = [0], {}
    if new_shape is not None and as_input:
        tensors.append(t(2, "shape", (len(new_shape),), "int32", data=new_shape))
        inputs.append(2)
    elif new_shape is not None:
        options = {"new_shape": list(new_shape)}
    return one_op_graph("RESHAPE", tensors, inputs, [1], options)


@pytest.mark.parametrize("in_shape,out_shape,new_shape,as_input", [
    ((1, 1, 1, 64), (1, 64), [-1, 64], True),      # the MLPerf Tiny classifier heads
    ((1, 4, 4, 8), (1, 128), [1, 128], True),
    ((1, 6, 10), (1, 3, 2, 10), [1, 3, -1, 10], True),
    ((1, 12), (1, 3, 4), [1, 3, 4], False),         # shape in ReshapeOptions
    ((1, 2, 3, 4), (1, 24), None, True),            # shape only from the output tensor
])
def test_reshape_matches_tflm(in_shape, out_shape, new_shape, as_input):
    rng = np.random.default_rng(0)
    check_against_tflm(reshape_graph(in_shape, out_shape, new_shape, as_input), [random_int8(rng, in_shape)])


def test_reshape_int16():
    rng = np.random.default_rng(1)
    x = rng.integers(-32768, 32768, size=(1, 3, 5), dtype=np.int64).astype(np.int16)
    g = reshape_graph((1, 3, 5), (1, 15), [1, 15], dtype="int16")
    g.tensors[0].quant = g.tensors[1].quant = quant(0.001, 0)
    check_against_tflm(g, [x])


def test_reshape_rejects_mismatches():
    _expect_unsupported(reshape_graph((1, 12), (1, 13), None), "differ in size")
    _expect_unsupported(reshape_graph((1, 12), (1, 3, 4), [1, 4, 3]), "does not give the output shape")
    g = reshape_graph((1, 12), (1, 12))
    g.tensors[1].dtype = "int16"
    _expect_unsupported(g, "inputs and output of the same type")
    g = reshape_graph((1, 12), (1, 12), [1, 12])
    g.tensors[2].data = None  # shape computed at run time
    _expect_unsupported(g, "computed at run time")
    g = reshape_graph((1, 12), (1, 12), dtype="float32")
    _expect_unsupported(g, "type float32")


# ---------------------------------------------------------------- CONCATENATION


def concat_graph(shapes, axis, out_shape, qs=None, activation="NONE"):
    qs = qs or [quant(0.05, -3)] * (len(shapes) + 1)
    tensors = [t(i, f"x{i}", s, q=qs[i]) for i, s in enumerate(shapes)]
    tensors.append(t(len(shapes), "y", out_shape, q=qs[-1]))
    return one_op_graph("CONCATENATION", tensors, list(range(len(shapes))), [len(shapes)],
                        {"axis": axis, "fused_activation_function": activation})


@seed(2024)
@settings(max_examples=30, **SETTINGS)
@given(data=st.data(), rank=st.integers(1, 4), n_inputs=st.integers(1, 5))
def test_concatenation_matches_tflm(data, rank, n_inputs):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    base = [1] + [data.draw(st.integers(1, 6)) for _ in range(rank - 1)] if rank > 1 else [1]
    axis = data.draw(st.integers(0 if rank == 1 else 1, rank - 1))
    shapes = []
    for _ in range(n_inputs):
        s = list(base)
        s[axis] = data.draw(st.integers(1, 5))
        shapes.append(tuple(s))
    out = list(base)
    out[axis] = sum(s[axis] for s in shapes)
    as_negative = data.draw(st.booleans())
    g = concat_graph(shapes, axis - rank if as_negative else axis, tuple(out))
    check_against_tflm(g, [random_int8(rng, s) for s in shapes])


def test_concatenation_copies_bytes():
    rng = np.random.default_rng(5)
    shapes = [(1, 2, 2, 3), (1, 2, 2, 5)]
    xs = [random_int8(rng, s) for s in shapes]
    y = check_against_tflm(concat_graph(shapes, 3, (1, 2, 2, 8)), xs)[0]
    assert np.array_equal(y[..., :3], xs[0]) and np.array_equal(y[..., 3:], xs[1])


def test_concatenation_rejects_mixed_quantisation():
    """TFLM's int8 CONCATENATION does not requantise: it refuses inputs quantised
    differently from the output (Prepare fails), and so do we, at import time."""
    _expect_unsupported(concat_graph([(1, 2), (1, 3)], 1, (1, 5), qs=[quant(0.1, 4), quant(0.05, 4), quant(0.05, 4)]),
                        "quantised differently")
    _expect_unsupported(concat_graph([(1, 2), (1, 3)], 1, (1, 5), qs=[quant(0.05, 4), quant(0.05, -7), quant(0.05, 4)]),
                        "requantise")


def test_concatenation_with_constant_input():
    rng = np.random.default_rng(6)
    g = concat_graph([(1, 3, 4), (1, 2, 4)], 1, (1, 5, 4))
    g.tensors[1].data = random_int8(rng, (1, 2, 4))
    g.inputs = [0]
    check_against_tflm(g, [random_int8(rng, (1, 3, 4))])


def test_concatenation_5d_6d():
    rng = np.random.default_rng(8)
    shapes = [(1, 2, 3, 2, 2), (1, 2, 3, 1, 2)]
    check_against_tflm(concat_graph(shapes, 3, (1, 2, 3, 3, 2)), [random_int8(rng, s) for s in shapes])
    shapes = [(1, 2, 1, 3, 2, 2), (1, 2, 1, 3, 2, 3)]
    check_against_tflm(concat_graph(shapes, -1, (1, 2, 1, 3, 2, 5)), [random_int8(rng, s) for s in shapes])


def test_concatenation_rejects():
    _expect_unsupported(concat_graph([(1, 2), (1, 2)], 1, (1, 4), activation="RELU"), "fused activation RELU")
    _expect_unsupported(concat_graph([(1, 2), (1, 3)], 0, (2, 2)), "does not fit")
    _expect_unsupported(concat_graph([(1, 2), (1, 2)], 1, (1, 5)), "add up to 4")
    _expect_unsupported(concat_graph([(1, 2), (1, 2)], 2, (1, 4)), "axis 2")
    g = concat_graph([(1, 2), (1, 2)], 1, (1, 4))
    g.tensors[1].dtype = "int32"
    _expect_unsupported(g, "same type")


# ---------------------------------------------------------------- TRANSPOSE


def transpose_graph(in_shape, perm, dtype="int8"):
    out_shape = tuple(in_shape[p] for p in perm)
    tensors = [t(0, "x", in_shape, dtype), t(1, "y", out_shape, dtype),
               t(2, "perm", (len(perm),), "int32", data=list(perm))]
    return one_op_graph("TRANSPOSE", tensors, [0, 2], [1], {})


@seed(77)
@settings(max_examples=30, **SETTINGS)
@given(data=st.data(), rank=st.integers(1, 5))
def test_transpose_matches_tflm(data, rank):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shape = tuple([1] + [data.draw(st.integers(1, 5)) for _ in range(rank - 1)]) if rank > 1 else (
        data.draw(st.integers(1, 7)),)
    perm = data.draw(st.permutations(range(rank)))
    check_against_tflm(transpose_graph(shape, perm), [random_int8(rng, shape)])


def test_transpose_int16_nhwc_to_nchw():
    rng = np.random.default_rng(9)
    g = transpose_graph((1, 3, 4, 5), (0, 3, 1, 2), dtype="int16")
    g.tensors[0].quant = g.tensors[1].quant = quant(0.001, 0)
    x = rng.integers(-32768, 32768, size=(1, 3, 4, 5)).astype(np.int16)
    check_against_tflm(g, [x])


def test_transpose_rejects():
    _expect_unsupported(transpose_graph((1, 2, 3), (0, 1, 1)), "not a permutation")
    g = transpose_graph((1, 2, 3), (0, 2, 1))
    g.tensors[1].shape = (1, 2, 3)
    _expect_unsupported(g, "not the input shape")
    g = transpose_graph((1, 2, 3), (0, 2, 1))
    g.tensors[2].data = None
    _expect_unsupported(g, "computed at run time")
    _expect_unsupported(transpose_graph((1, 1, 1, 1, 1, 2), (0, 1, 2, 3, 5, 4)), "rank 6")  # TFLM: 1D-5D


# ---------------------------------------------------------------- RESIZE_NEAREST_NEIGHBOR


def resize_graph(in_shape, size, align=False, half=False):
    out_shape = (in_shape[0], size[0], size[1], in_shape[3])
    tensors = [t(0, "x", in_shape), t(1, "y", out_shape), t(2, "size", (2,), "int32", data=list(size))]
    return one_op_graph("RESIZE_NEAREST_NEIGHBOR", tensors, [0, 2], [1],
                        {"align_corners": align, "half_pixel_centers": half})


@seed(31)
@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), in_h=st.integers(1, 9), in_w=st.integers(1, 9), out_h=st.integers(1, 20),
       out_w=st.integers(1, 20), channels=st.integers(1, 5), align=st.booleans(), half=st.booleans())
def test_resize_nearest_matches_tflm(data, in_h, in_w, out_h, out_w, channels, align, half):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shape = (1, in_h, in_w, channels)
    check_against_tflm(resize_graph(shape, (out_h, out_w), align, half), [random_int8(rng, shape)])


def test_resize_nearest_upsample_2x_is_pixel_repeat():
    rng = np.random.default_rng(12)
    x = random_int8(rng, (1, 3, 4, 2))
    y = check_against_tflm(resize_graph((1, 3, 4, 2), (6, 8)), [x])[0]
    assert np.array_equal(y, x.repeat(2, axis=1).repeat(2, axis=2))


def test_nearest_indices_round_half_like_std_round():
    """The float32 position 0.5 * 1 rounds away from zero with align_corners."""
    idx = nearest_neighbor_indices(2, 3, align_corners=True, half_pixel_centers=False)
    assert idx.tolist() == [0, 1, 1]


def test_resize_rejects():
    g = resize_graph((1, 2, 2, 1), (4, 4))
    g.tensors[1].shape = (1, 4, 5, 1)
    _expect_unsupported(g, "size gives")
    g = resize_graph((1, 2, 2, 1), (4, 4))
    g.tensors[0].shape = (2, 2, 1)
    _expect_unsupported(g, "4-D")
    g = resize_graph((1, 2, 2, 1), (4, 4))
    g.tensors[2].data = None
    _expect_unsupported(g, "computed at run time")
