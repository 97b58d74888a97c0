"""Differential fuzzer of every operator in the registry, for both kernel sets.

    python -m microtile.check.fuzz_ops [--cases N] [--seed S] [--op NAME ...] [--kernels both|reference|optimized]
                                 [--tflm-every K]

Per operator, N seeded one-operator models drawn from the operator's legal TFLite
parameter space (depth multipliers above 1, filters as large as the input,
non-square filters and strides, 1-channel and odd channel counts, tiny and large
spatial sizes, SAME/VALID with asymmetric padding, per-channel quantisation
extremes, every fused activation, broadcasts, ranks). Each case runs

  - the numpy reference (bit-exact with TFLM by design), and every K-th case the real
    TFLM oracle, which the numpy reference must equal bit for bit;
  - the C kernels of each kernel set, natively, built with ASan + UBSan and linked
    many cases to an executable (native.build_case_runner) that runs in a
    subprocess: a crash, a sanitizer report, a hang or an unbounded stack frame is
    a FAULT of that case, and the run goes on with the next one. The optimised set
    is run when it has its own kernel for the case (else it emits the same
    reference call, and the case counts once).

The summary prints per operator the cases, those the kernels refuse (an
UnsupportedOperatorError from the operator's check: not run), the native runs per
kernel set, TFLM checks, mismatches and faults, then a reproducer for every failure
(``--op NAME --seed S --case I``). Exit status 0 when nothing failed, 1 otherwise,
2 for bad arguments.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from microtile.errors import MicrotileError, UnsupportedOperatorError
from microtile.importer.ir import Graph, Operator, Quant, Tensor
from microtile.ops import FUSED_ACTIVATIONS, REGISTRY, kernel_for, kernel_label, load_families
from microtile.ops.conv import out_size_and_padding

MAX_MACS = 400_000          # keeps one case (numpy, TFLM, ASan) in milliseconds
BATCH = 48                  # cases per native executable
RUN_TIMEOUT = 300           # seconds per executable run; a hang is a fault


# ---------------------------------------------------------------- graph building (shared with tests/op_harness.py)

def quant(scale, zero_point, axis: int = 0) -> Quant:
    """Per-tensor (scalars) or per-channel (arrays) quantisation."""
    return Quant(np.atleast_1d(np.asarray(scale, dtype=np.float32)),
                 np.atleast_1d(np.asarray(zero_point, dtype=np.int64)), axis)


def tensor(index: int, name: str, shape, dtype: str = "int8", q: Quant | None = None,
           data: np.ndarray | None = None) -> Tensor:
    if data is not None:
        data = np.asarray(data, dtype=dtype).reshape(shape)
    return Tensor(index, name, tuple(int(s) for s in shape), dtype, q, data)


def qtensor(index: int, shape, scale: float, zero_point: int, dtype: str = "int8") -> Tensor:
    """A per-tensor quantised activation named t<index>."""
    return tensor(index, f"t{index}", shape, dtype, quant(scale, zero_point))


def one_op_graph(opcode: str, tensors: list[Tensor], inputs: list[int], outputs: list[int],
                 options: dict | None = None) -> Graph:
    graph_inputs = [i for i in inputs if i >= 0 and not tensors[i].is_constant]
    return Graph(opcode.lower(), tensors, [Operator(0, opcode, inputs, outputs, options or {})],
                 graph_inputs, outputs)


def log_uniform(rng: np.random.Generator, lo: float, hi: float, size=None) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def random_int8(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


# ---------------------------------------------------------------- parameter space

def _pick(rng, values):
    return values[int(rng.integers(len(values)))]


def _size(rng, hi: int = 48) -> int:
    """Spatial sizes: tiny (1-3) as often as medium, sometimes large."""
    return int(_pick(rng, [rng.integers(1, 4), rng.integers(1, 13), rng.integers(1, hi + 1)]))


def _channels(rng, hi: int = 40) -> int:
    return int(_pick(rng, [1, 1, 2, 3, 4, 5, 7, 8, 16, rng.integers(1, hi + 1)]))


def _zp(rng) -> int:
    return int(_pick(rng, [-128, 127, 0, rng.integers(-128, 128), rng.integers(-128, 128)]))


def _in_scale(rng) -> float:
    return float(log_uniform(rng, 1e-3, 1.0))


def _window(rng, h: int, w: int) -> dict:
    """Filter/window and strides: non-square, as large as the input (or larger with
    SAME), strides up to 4; SAME padding is asymmetric whenever the total is odd."""
    padding = _pick(rng, ["SAME", "VALID"])
    full = rng.random() < 0.15
    kh = h if full else int(rng.integers(1, min(h, 10) + 1 + (padding == "SAME")))
    kw = w if full else int(rng.integers(1, min(w, 10) + 1 + (padding == "SAME")))
    if padding == "VALID":
        kh, kw = min(kh, h), min(kw, w)
    return dict(kh=kh, kw=kw, sh=int(rng.integers(1, 5)), sw=int(rng.integers(1, 5)), padding=padding)


def _out_hw(h: int, w: int, g: dict) -> tuple[int, int]:
    return (out_size_and_padding(h, g["kh"], g["sh"], g["padding"])[0],
            out_size_and_padding(w, g["kw"], g["sw"], g["padding"])[0])


def _filter_scales(rng, n: int, per_channel: bool) -> np.ndarray:
    """Typical scales, or per-channel extremes: a spread of 2^-24 .. 2^2 across channels."""
    if per_channel and rng.random() < 0.3:
        return (2.0 ** rng.uniform(-24, 2, n)).astype(np.float32)
    return log_uniform(rng, 1e-4, 5e-2, n if per_channel else 1).astype(np.float32)


def _output_scale(rng, typical: float) -> float:
    """Near the typical scale (outputs spread), or far from it (multipliers far above
    or below 1: large shifts both ways)."""
    if rng.random() < 0.25:
        return float(typical * 2.0 ** rng.uniform(-14, 10))
    return float(typical * 2.0 ** rng.uniform(-3, 3))


def _gen_conv(rng, depthwise: bool) -> tuple[Graph, dict]:
    h, w = _size(rng, 64), _size(rng, 64)
    g = _window(rng, h, w)
    c = _channels(rng, 24 if depthwise else 40)
    dm = int(_pick(rng, [1, 1, 2, 3, 4, 8, rng.integers(1, 11)])) if depthwise else 1
    oc = c * dm if depthwise else _channels(rng, 40)
    oh, ow = _out_hw(h, w, g)
    while oh * ow * oc * g["kh"] * g["kw"] * (1 if depthwise else c) > MAX_MACS:
        if c > 1 and not depthwise:
            c = max(1, c // 2)
        elif oc > 1 and not depthwise:
            oc = max(1, oc // 2)
        elif depthwise and c > 1:
            c, oc = max(1, c // 2), max(1, c // 2) * dm
        else:
            h, w = max(1, h // 2), max(1, w // 2)
            g = dict(g, kh=min(g["kh"], h + 1), kw=min(g["kw"], w + 1))
            if g["padding"] == "VALID":
                g = dict(g, kh=min(g["kh"], h), kw=min(g["kw"], w))
            oh, ow = _out_hw(h, w, g)
    per_channel = rng.random() < 0.7
    act = _pick(rng, list(FUSED_ACTIVATIONS))
    s_in, zp_in = _in_scale(rng), _zp(rng)
    f_scales = _filter_scales(rng, oc, per_channel)
    depth = g["kh"] * g["kw"] * (1 if depthwise else c)
    s_out = _output_scale(rng, s_in * float(np.mean(f_scales)) * np.sqrt(depth) * 40.0)
    f_shape = (1, g["kh"], g["kw"], oc) if depthwise else (oc, g["kh"], g["kw"], c)
    weights = random_int8(rng, f_shape)
    if rng.random() < 0.1:  # extreme weights: every tap at -128 / 127
        weights = np.where(weights < 0, -128, 127).astype(np.int8)
    bias = depthwise or rng.random() < 0.8  # TFLM's depthwise Prepare needs a bias
    b_scales = (np.float32(s_in) * f_scales).astype(np.float32)
    b_range = 1 << int(_pick(rng, [8, 16, 24]))
    tensors = [
        tensor(0, "input", (1, h, w, c), q=quant(s_in, zp_in)),
        tensor(1, "filter", f_shape, q=quant(f_scales, np.zeros(f_scales.size), 3 if depthwise else 0),
               data=weights),
        tensor(2, "bias", (oc,), "int32", q=quant(b_scales, np.zeros(b_scales.size)),
               data=rng.integers(-b_range, b_range, size=oc)),
        tensor(3, "output", (1, oh, ow, oc), q=quant(s_out, _zp(rng))),
    ]
    options = {"padding": g["padding"], "stride_w": g["sw"], "stride_h": g["sh"], "fused_activation_function": act,
               "dilation_w_factor": 1, "dilation_h_factor": 1}
    if depthwise:
        options["depth_multiplier"] = dm
    opcode = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"
    params = dict(h=h, w=w, c=c, oc=oc, dm=dm, act=act, per_channel=per_channel, bias=bias, **g)
    return one_op_graph(opcode, tensors, [0, 1, 2] if bias else [0, 1, -1], [3], options), params


def _gen_fc(rng) -> tuple[Graph, dict]:
    depth = int(_pick(rng, [rng.integers(1, 17), rng.integers(1, 300), rng.integers(1, 1200), 4000]))
    oc = _channels(rng, 40)
    batches = int(_pick(rng, [1, 1, 1, 2, 3]))
    while batches * depth * oc > MAX_MACS:
        oc = max(1, oc // 2)
    per_channel = rng.random() < 0.4
    w_zp = 0 if per_channel or rng.random() < 0.7 else int(rng.integers(-20, 21))
    act = _pick(rng, list(FUSED_ACTIVATIONS))
    s_in, zp_in = _in_scale(rng), _zp(rng)
    f_scales = _filter_scales(rng, oc, per_channel)
    s_out = _output_scale(rng, s_in * float(np.mean(f_scales)) * np.sqrt(depth) * 40.0)
    in_shape = _pick(rng, [(batches, depth), (batches, depth), (1, 1, 1, depth) if batches == 1 else (batches, depth)])
    bias = rng.random() < 0.8
    graph = fc_graph_of(rng, in_shape, (batches, oc), (s_in, zp_in), f_scales, w_zp, (s_out, _zp(rng)), act, bias)
    params = dict(batches=batches, depth=depth, oc=oc, in_shape=in_shape, per_channel=per_channel, w_zp=w_zp,
                  act=act, bias=bias)
    return graph, params


def fc_graph_of(rng, in_shape, out_shape, q_in: tuple[float, int], f_scales: np.ndarray, w_zp: int,
                q_out: tuple[float, int], act: str, bias: bool, keep_num_dims: bool = False) -> Graph:
    """A FULLY_CONNECTED graph with random int8 weights and int32 bias drawn from rng."""
    oc, depth = out_shape[-1], in_shape[-1]
    b_scales = (np.float32(q_in[0]) * f_scales).astype(np.float32)
    tensors = [
        tensor(0, "input", in_shape, q=quant(*q_in)),
        tensor(1, "weights", (oc, depth), q=quant(f_scales, np.full(f_scales.size, w_zp)),
               data=random_int8(rng, (oc, depth))),
        tensor(2, "bias", (oc,), "int32", q=quant(b_scales, np.zeros(b_scales.size)),
               data=rng.integers(-(1 << 16), 1 << 16, size=oc)),
        tensor(3, "output", out_shape, q=quant(*q_out)),
    ]
    options = {"fused_activation_function": act, "weights_format": "DEFAULT", "keep_num_dims": keep_num_dims,
               "asymmetric_quantize_inputs": False}
    return one_op_graph("FULLY_CONNECTED", tensors, [0, 1, 2] if bias else [0, 1, -1], [3], options)


def _gen_pool(rng, opcode: str) -> tuple[Graph, dict]:
    h, w = _size(rng, 40), _size(rng, 40)
    g = _window(rng, h, w)
    if opcode == "AVERAGE_POOL_2D" and rng.random() < 0.1:  # windows over 256 pixels
        h, w = int(rng.integers(17, 30)), int(rng.integers(17, 30))
        g = dict(g, kh=h, kw=w)
    c = _channels(rng, 24)
    oh, ow = _out_hw(h, w, g)
    while oh * ow * c * g["kh"] * g["kw"] > MAX_MACS and c > 1:
        c = max(1, c // 2)
    q = quant(float(log_uniform(rng, 1e-3, 0.5)), _zp(rng))
    act = _pick(rng, list(FUSED_ACTIVATIONS))
    tensors = [tensor(0, "input", (1, h, w, c), q=q), tensor(1, "output", (1, oh, ow, c), q=q)]
    options = {"padding": g["padding"], "stride_w": g["sw"], "stride_h": g["sh"], "filter_width": g["kw"],
               "filter_height": g["kh"], "fused_activation_function": act}
    return one_op_graph(opcode, tensors, [0], [1], options), dict(h=h, w=w, c=c, act=act, **g)


def _shape(rng, rank: int, hi: int = 8) -> tuple[int, ...]:
    """A shape; rank-4 (NHWC) shapes have batch 1, as microtile runs them."""
    dims = tuple(int(_pick(rng, [1, rng.integers(1, hi + 1), rng.integers(1, hi + 1)])) for _ in range(rank))
    return (1,) + dims[1:] if rank == 4 else dims


def _gen_binary(rng, opcode: str) -> tuple[Graph, dict]:
    rank = int(rng.integers(1, 5))
    out = _shape(rng, rank)
    s1 = tuple(d if rng.random() < 0.7 else 1 for d in out)
    s2 = tuple(d if rng.random() < 0.7 else 1 for d in out)
    if rng.random() < 0.4:
        s1 = s2 = out  # same shapes: the optimised ADD
    if rng.random() < 0.1:
        s2 = (1,) * int(rng.integers(0, rank + 1))  # a scalar-like operand of lower rank
    out = tuple(int(d) for d in np.broadcast_shapes(s1, s2))
    a, b = _in_scale(rng), _in_scale(rng)
    typical = max(a, b) * 2 if opcode == "ADD" else a * b * 64
    qo = (_output_scale(rng, typical), _zp(rng))
    act = _pick(rng, list(FUSED_ACTIVATIONS))
    tensors = [qtensor(0, s1, a, _zp(rng)), qtensor(1, s2, b, _zp(rng)), qtensor(2, out, *qo)]
    graph = one_op_graph(opcode, tensors, [0, 1], [2], {"fused_activation_function": act})
    return graph, dict(s1=s1, s2=s2, out=out, act=act)


def _gen_unary(rng, opcode: str) -> tuple[Graph, dict]:
    shape = _shape(rng, int(rng.integers(1, 5)), 12)
    s_in, z_in = float(log_uniform(rng, 1e-4, 2.0)), _zp(rng)
    if opcode == "LOGISTIC":
        s_in = float(10.0 ** rng.uniform(-4.0, 0.9))
        qo = (1.0 / 256.0, -128)
    elif opcode == "RELU6":
        qo = (s_in, z_in)
    elif opcode == "HARD_SWISH":
        qo = (s_in * float(10.0 ** rng.uniform(-1.5, 2.0)), _zp(rng))
    else:
        qo = (s_in * float(2.0 ** rng.uniform(-2, 2)), _zp(rng))
    tensors = [qtensor(0, shape, s_in, z_in), qtensor(1, shape, *qo)]
    return one_op_graph(opcode, tensors, [0], [1]), dict(shape=shape, qin=(s_in, z_in), qout=qo)


def _gen_softmax(rng, opcode: str) -> tuple[Graph, dict]:
    depth = int(_pick(rng, [1, 2, rng.integers(1, 12), rng.integers(1, 600)]))
    shape = _pick(rng, [(depth,), (1, depth), (1, int(rng.integers(1, 6)), depth),
                        (1, int(rng.integers(1, 4)), int(rng.integers(1, 4)), depth)])
    s_in, z_in = float(10.0 ** rng.uniform(-4.0, 1.5)), _zp(rng)
    out, dtype, options = (16.0 / 256.0, 127), "int8", {}
    if opcode == "SOFTMAX":
        options = {"beta": float(_pick(rng, [1.0, 1.0, 0.5, 2.0, float(rng.uniform(0.1, 4))]))}
        out, dtype = ((1.0 / 65536.0, -32768), "int16") if rng.random() < 0.2 else ((1.0 / 256.0, -128), "int8")
    tensors = [Tensor(0, "x", tuple(shape), "int8", quant(s_in, z_in)),
               Tensor(1, "y", tuple(shape), dtype, quant(*out))]
    return one_op_graph(opcode, tensors, [0], [1], options), dict(shape=shape, s_in=s_in, z_in=z_in, **options,
                                                                 out_dtype=dtype)


def _gen_pad(rng, opcode: str) -> tuple[Graph, dict]:
    rank = int(rng.integers(1, 5))
    shape = (1,) + _shape(rng, rank - 1, 10) if rank > 1 else _shape(rng, 1, 10)
    paddings = rng.integers(0, 4, size=(rank, 2)) * (rng.random((rank, 2)) < 0.7)
    if rank > 1:
        paddings[0] = 0  # the batch stays 1
    q = quant(float(log_uniform(rng, 1e-3, 0.5)), _zp(rng))
    out_shape = tuple(int(s + a + b) for s, (a, b) in zip(shape, paddings))
    tensors = [tensor(0, "input", shape, q=q), tensor(1, "paddings", paddings.shape, "int32", data=paddings),
               tensor(2, "output", out_shape, q=q)]
    inputs = [0, 1]
    value = None
    if opcode == "PADV2":
        value = int(rng.integers(-128, 128))
        tensors.append(tensor(3, "constant_values", (1,), q=q, data=np.array([value])))
        inputs.append(3)
    return one_op_graph(opcode, tensors, inputs, [2], {}), dict(shape=shape, paddings=paddings.tolist(), value=value)


def _gen_mean(rng) -> tuple[Graph, dict]:
    rank = int(rng.integers(1, 5))
    shape = _shape(rng, rank, 12)
    axes = sorted({int(a) for a in rng.integers(0, rank, size=int(rng.integers(1, rank + 1)))})
    if rank == 4 and rng.random() < 0.4:
        axes = [1, 2]  # global average pooling
    if rng.random() < 0.2:
        axes = [a - rank for a in axes]  # negative axes
    keep = bool(rng.random() < 0.5)
    s_in, zp_in = float(log_uniform(rng, 1e-3, 0.5)), _zp(rng)
    if rng.random() < 0.5:
        s_out, zp_out = s_in, zp_in
    else:
        s_out = s_in * float(2.0 ** rng.uniform(-2, 2))
        zp_out = int(np.clip(round(zp_in * s_in / s_out) + int(rng.integers(-10, 11)), -128, 127))
    resolved = {a % rank for a in axes}
    out_shape = tuple(1 if i in resolved else s for i, s in enumerate(shape)) if keep else \
        tuple(s for i, s in enumerate(shape) if i not in resolved)
    tensors = [tensor(0, "input", shape, q=quant(s_in, zp_in)),
               tensor(1, "axes", (len(axes),), "int32", data=np.asarray(axes)),
               tensor(2, "output", out_shape, q=quant(s_out, zp_out))]
    return one_op_graph("MEAN", tensors, [0, 1], [2], {"keep_dims": keep}), dict(shape=shape, axes=axes, keep=keep)


def _gen_concat(rng) -> tuple[Graph, dict]:
    rank = int(rng.integers(1, 5))
    base = list((1,) + _shape(rng, rank - 1, 6)) if rank > 1 else [int(rng.integers(1, 7))]
    axis = int(rng.integers(0 if rank == 1 else 1, rank))
    n = int(rng.integers(1, 5))
    shapes = []
    for _ in range(n):
        s = list(base)
        s[axis] = int(rng.integers(1, 7))
        shapes.append(tuple(s))
    out = list(base)
    out[axis] = sum(s[axis] for s in shapes)
    same = rng.random() < 0.9  # the kernels copy bytes: different quantisation is refused
    q0 = (float(log_uniform(rng, 1e-3, 0.5)), _zp(rng))
    qs = [q0 if same else (float(log_uniform(rng, 1e-3, 0.5)), _zp(rng)) for _ in range(n + 1)]
    tensors = [qtensor(i, s, *qs[i]) for i, s in enumerate(shapes)] + [qtensor(n, tuple(out), *qs[n])]
    if rng.random() < 0.2:
        axis -= rank  # negative axis
    graph = one_op_graph("CONCATENATION", tensors, list(range(n)), [n], {"axis": axis, "fused_activation_function": "NONE"})
    return graph, dict(shapes=shapes, axis=axis, same_quant=same)


def _gen_reshape(rng) -> tuple[Graph, dict]:
    shape = (1,) + _shape(rng, int(rng.integers(0, 4)), 8)
    size = int(np.prod(shape))
    out = _pick(rng, [(1, size), (size,), (1, 1, 1, size), shape[::-1]])
    new_shape = list(out)
    if rng.random() < 0.3:
        new_shape[int(rng.integers(len(new_shape)))] = -1
    q = quant(0.05, _zp(rng))
    tensors = [tensor(0, "x", shape, q=q), tensor(1, "y", out, q=q),
               tensor(2, "shape", (len(new_shape),), "int32", data=new_shape)]
    return one_op_graph("RESHAPE", tensors, [0, 2], [1], {}), dict(shape=shape, new_shape=new_shape)


def _gen_transpose(rng) -> tuple[Graph, dict]:
    rank = int(rng.integers(1, 6))
    shape = (1,) + _shape(rng, rank - 1, 6) if rank > 1 else (int(rng.integers(1, 8)),)
    perm = [int(p) for p in rng.permutation(rank)]
    q = quant(0.05, _zp(rng))
    tensors = [tensor(0, "x", shape, q=q), tensor(1, "y", tuple(shape[p] for p in perm), q=q),
               tensor(2, "perm", (rank,), "int32", data=perm)]
    return one_op_graph("TRANSPOSE", tensors, [0, 2], [1], {}), dict(shape=shape, perm=perm)


def _gen_resize(rng) -> tuple[Graph, dict]:
    shape = (1, _size(rng, 12), _size(rng, 12), _channels(rng, 8))
    size = (int(rng.integers(1, 25)), int(rng.integers(1, 25)))
    align, half = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    q = quant(0.05, _zp(rng))
    tensors = [tensor(0, "x", shape, q=q), tensor(1, "y", (1, size[0], size[1], shape[3]), q=q),
               tensor(2, "size", (2,), "int32", data=list(size))]
    graph = one_op_graph("RESIZE_NEAREST_NEIGHBOR", tensors, [0, 2], [1],
                         {"align_corners": align, "half_pixel_centers": half})
    return graph, dict(shape=shape, size=size, align_corners=align, half_pixel_centers=half)


def _gen_quantize(rng) -> tuple[Graph, dict]:
    shape = _shape(rng, int(rng.integers(1, 5)), 10)
    s_in, z_in = _in_scale(rng), _zp(rng)
    qo = (s_in * float(2.0 ** rng.uniform(-3, 3)), _zp(rng))
    tensors = [qtensor(0, shape, s_in, z_in), qtensor(1, shape, *qo)]  # int8 -> int8 requantisation
    return one_op_graph("QUANTIZE", tensors, [0], [1]), dict(shape=shape, qin=(s_in, z_in), qout=qo)


def _gen_dequantize(rng) -> tuple[Graph, dict]:
    shape = _shape(rng, int(rng.integers(1, 5)), 10)
    q = (_in_scale(rng), _zp(rng))
    tensors = [qtensor(0, shape, *q), Tensor(1, "y", tuple(shape), "float32")]
    return one_op_graph("DEQUANTIZE", tensors, [0], [1]), dict(shape=shape, qin=q)


GENERATORS: dict[str, Callable[[np.random.Generator], tuple[Graph, dict]]] = {
    "CONV_2D": lambda r: _gen_conv(r, False),
    "DEPTHWISE_CONV_2D": lambda r: _gen_conv(r, True),
    "FULLY_CONNECTED": _gen_fc,
    "AVERAGE_POOL_2D": lambda r: _gen_pool(r, "AVERAGE_POOL_2D"),
    "MAX_POOL_2D": lambda r: _gen_pool(r, "MAX_POOL_2D"),
    "ADD": lambda r: _gen_binary(r, "ADD"),
    "MUL": lambda r: _gen_binary(r, "MUL"),
    "RELU": lambda r: _gen_unary(r, "RELU"),
    "RELU6": lambda r: _gen_unary(r, "RELU6"),
    "LOGISTIC": lambda r: _gen_unary(r, "LOGISTIC"),
    "HARD_SWISH": lambda r: _gen_unary(r, "HARD_SWISH"),
    "SOFTMAX": lambda r: _gen_softmax(r, "SOFTMAX"),
    "LOG_SOFTMAX": lambda r: _gen_softmax(r, "LOG_SOFTMAX"),
    "PAD": lambda r: _gen_pad(r, "PAD"),
    "PADV2": lambda r: _gen_pad(r, "PADV2"),
    "MEAN": _gen_mean,
    "CONCATENATION": _gen_concat,
    "RESHAPE": _gen_reshape,
    "TRANSPOSE": _gen_transpose,
    "RESIZE_NEAREST_NEIGHBOR": _gen_resize,
    "QUANTIZE": _gen_quantize,
    "DEQUANTIZE": _gen_dequantize,
}


def case_rng(seed: int, op: str, case: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(op.encode()), case])


def make_case(op: str, seed: int, case: int) -> tuple[Graph, list[np.ndarray], dict]:
    """The case's one-operator graph, its inputs and the parameters drawn."""
    rng = case_rng(seed, op, case)
    graph, params = GENERATORS[op](rng)
    graph.name = f"{op.lower()}_s{seed}_c{case}"
    inputs = []
    for i in graph.inputs:
        t = graph.tensor(i)
        x = random_int8(rng, t.shape)
        if rng.random() < 0.2:  # a narrow band of values: many equal inputs, small diffs
            lo = int(rng.integers(-128, 121))
            x = rng.integers(lo, lo + int(rng.integers(1, 8)), size=t.shape).astype(np.int8)
        inputs.append(x)
    return graph, inputs, params


# ---------------------------------------------------------------- running

@dataclass
class OpStats:
    cases: int = 0
    refused: int = 0
    native: dict = field(default_factory=lambda: {"reference": 0, "optimized": 0})
    tflm: int = 0
    mismatches: int = 0
    faults: int = 0


@dataclass
class Failure:
    op: str
    seed: int
    case: int
    kind: str      # "mismatch" or "fault"
    what: str      # which comparison / the sanitizer or crash report
    params: dict

    def reproducer(self) -> str:
        return f"python -m microtile.check.fuzz_ops --op {self.op} --seed {self.seed} --case {self.case}  # {self.params}"


@dataclass
class _NativeJob:
    op: str
    case: int
    params: dict
    compiled: object
    inputs: list[np.ndarray]   # device inputs
    expected: list[np.ndarray]  # numpy reference device outputs


def _differs(expected: np.ndarray, got: np.ndarray) -> str | None:
    expected, got = np.asarray(expected), np.asarray(got)
    if expected.shape != got.shape or expected.dtype != got.dtype:
        return f"shape/dtype {got.shape} {got.dtype}, expected {expected.shape} {expected.dtype}"
    if expected.dtype.kind == "f":
        bad = np.flatnonzero(expected.view(np.uint32) != got.view(np.uint32))
    else:
        bad = np.flatnonzero(expected.astype(np.int64) != got.astype(np.int64))
    if bad.size == 0:
        return None
    return (f"{bad.size} of {expected.size} values differ, first at {bad[:4].tolist()}: "
            f"expected {expected.reshape(-1)[bad[:4]].tolist()} got {got.reshape(-1)[bad[:4]].tolist()}")


def _tflm_worker(conn) -> None:
    """The TFLM oracle in its own process: (model bytes, inputs) -> ("ok", outputs) or
    ("error", message) when TFLM refuses the model."""
    from microtile.check.oracle import TflmOracle

    while True:
        msg = conn.recv()
        if msg is None:
            return
        model, inputs = msg
        try:
            conn.send(("ok", TflmOracle(model)(inputs)))
        except Exception as exc:  # TFLM's Prepare / Invoke failed: reported by the parent
            conn.send(("error", str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__))


class TflmProcess:
    """TFLM in a subprocess, so that an abort inside it (a TFLITE_CHECK) is a reported
    failure of the case, not the end of the fuzzer; restarted after a crash."""

    TIMEOUT = 120.0

    def __init__(self):
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_tflm_worker, args=(child,), daemon=True)
        self._proc.start()
        child.close()

    def __call__(self, model: bytes, inputs: list[np.ndarray]) -> tuple[str, object]:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        try:
            self._conn.send((model, inputs))
            if self._conn.poll(self.TIMEOUT):
                return self._conn.recv()
            self._proc.kill()
            what = f"no answer within {self.TIMEOUT:.0f} s"
        except (EOFError, OSError):
            what = "crashed"
        self._proc.join(5)
        code = self._proc.exitcode
        self._proc = None
        return "crash", f"TFLM {what} (exit {code})"

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(5)
        self._proc = None


def tflm_can_run(graph: Graph) -> bool:
    """False for the variant TFLM aborts on by design and microtile deliberately
    completes (README): int8 SOFTMAX rows of 512+ values, whose sum of exps can reach 512."""
    op = graph.operators[0]
    out = graph.tensor(op.outputs[0])
    return not (op.opcode == "SOFTMAX" and out.dtype == "int8" and out.shape[-1] >= 512)


class Fuzzer:
    def __init__(self, seed: int, kernel_sets: tuple[str, ...], tflm_every: int, log=print):
        self.seed = seed
        self.kernel_sets = kernel_sets
        self.tflm_every = tflm_every
        self.stats: dict[str, OpStats] = {}
        self.failures: list[Failure] = []
        self.log = log
        self.tflm = TflmProcess()

    def _fail(self, op: str, case: int, kind: str, what: str, params: dict) -> None:
        s = self.stats[op]
        if kind == "fault":
            s.faults += 1
        else:
            s.mismatches += 1
        self.failures.append(Failure(op, self.seed, case, kind, what, params))

    def host_part(self, op: str, case: int) -> list[_NativeJob]:
        """Generate, check, run numpy (and TFLM on the sample); return the native jobs."""
        from microtile.codegen.model_source import compile_model
        from microtile.check.reference import run_reference
        from microtile.importer.tflite_format import write_tflite

        stats = self.stats.setdefault(op, OpStats())
        stats.cases += 1
        params: dict = {}
        try:
            graph, inputs, params = make_case(op, self.seed, case)
            node = graph.operators[0]
            try:
                kernel_for(node).check(node, graph)
            except UnsupportedOperatorError:
                stats.refused += 1
                return []
            expected = run_reference(graph, inputs)
            if case % self.tflm_every == 0 and tflm_can_run(graph):
                stats.tflm += 1
                status, outs = self.tflm(write_tflite(graph), inputs)
                if status != "ok":
                    self._fail(op, case, "fault", f"microtile accepts a model TFLM does not run: {outs}", params)
                for e, g in zip(outs if status == "ok" else [], expected):
                    problem = _differs(e, g)
                    if problem:
                        self._fail(op, case, "mismatch", f"numpy reference vs TFLM: {problem}", params)
            if kernel_for(node).host_side:
                return []  # runs on the host side of the link: no C kernel
            jobs = []
            for kernels in self.kernel_sets:
                if kernels == "optimized" and kernel_label(node, graph, "optimized") != "opt":
                    continue  # the optimised set emits the same reference call
                compiled = compile_model(graph, kernels)
                device_in = compiled.to_device(inputs)
                values = dict(zip(graph.outputs, expected))
                device_out = [values[i] for i in compiled.device_outputs]  # single-op: device outputs = graph outputs
                jobs.append(_NativeJob(op, case, params, compiled, device_in, device_out))
            return jobs
        except Exception as exc:  # a Python-side crash is a failure of this case, not of the fuzzer
            what = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self._fail(op, case, "fault", f"host exception: {what}", params)
            return []

    def native_part(self, jobs: list[_NativeJob]) -> None:
        """Run the jobs' C kernels under ASan + UBSan, a batch per subprocess."""
        from pathlib import Path

        from microtile.build.native import build_case_runner

        with tempfile.TemporaryDirectory(prefix="mt_fuzz_") as tmp:
            try:
                exe = build_case_runner([j.compiled for j in jobs], Path(tmp))
            except MicrotileError as exc:
                if len(jobs) == 1:
                    self._fail(jobs[0].op, jobs[0].case, "fault", f"native build ({jobs[0].compiled.kernels}): "
                               f"{str(exc)[-1500:]}", jobs[0].params)
                    return
                for j in jobs:  # find the case(s) that do not build
                    self.native_part([j])
                return
            first = 0
            while first < len(jobs):
                in_path, out_path = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")
                with open(in_path, "wb") as f:
                    for j in jobs[first:]:
                        for x in j.inputs:
                            f.write(np.ascontiguousarray(x).tobytes())
                env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86",
                           UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87")
                try:
                    proc = subprocess.run([str(exe), in_path, out_path, str(first)], capture_output=True, text=True,
                                          timeout=RUN_TIMEOUT, env=env)
                    status, stderr, stdout = proc.returncode, proc.stderr, proc.stdout
                except subprocess.TimeoutExpired as exc:
                    status, stdout = "timeout", (exc.stdout or b"").decode(errors="replace")
                    stderr = f"no answer within {RUN_TIMEOUT} s (hang)"
                done = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("done ")]
                raw = open(out_path, "rb").read() if os.path.exists(out_path) else b""
                pos = 0
                for k in range(first, first + len(done)):
                    j = jobs[k]
                    self.stats[j.op].native[j.compiled.kernels] += 1
                    for t_index, e in zip(j.compiled.device_outputs, j.expected):
                        t = j.compiled.graph.tensor(t_index)
                        got = np.frombuffer(raw[pos:pos + t.nbytes], dtype=t.dtype).reshape(t.shape)
                        pos += t.nbytes
                        problem = _differs(e, got)
                        if problem:
                            self._fail(j.op, j.case, "mismatch", f"C kernel ({j.compiled.kernels}) vs numpy: {problem}",
                                       j.params)
                first += len(done)
                if first == len(jobs):
                    if status != 0:  # every case done, then a failure (at exit): the last case's
                        j = jobs[-1]
                        self._fail(j.op, j.case, "fault", f"C kernel runner exit {status} after the last case: "
                                   + "\n".join(stderr.strip().splitlines()[:12]), j.params)
                    break
                if first < len(jobs):  # the case in flight crashed, hung or tripped a sanitizer
                    j = jobs[first]
                    self.stats[j.op].native[j.compiled.kernels] += 1
                    report = "\n".join(stderr.strip().splitlines()[:12])
                    self._fail(j.op, j.case, "fault", f"C kernel ({j.compiled.kernels}) exit {status}: {report}",
                               j.params)
                    first += 1

    def run(self, ops: list[str], cases: int, only_case: int | None = None) -> None:
        pending: list[_NativeJob] = []
        t0 = time.monotonic()
        for op in ops:
            self.stats.setdefault(op, OpStats())
            for case in ([only_case] if only_case is not None else range(cases)):
                pending += self.host_part(op, case)
                if len(pending) >= BATCH:
                    self.native_part(pending)
                    pending = []
            self.log(f"  {op}: {self.stats[op].cases} cases generated ({time.monotonic() - t0:.0f} s)")
        if pending:
            self.native_part(pending)

    def summary(self) -> str:
        lines = [f"{'operator':<24} {'cases':>7} {'refused':>8} {'C ref':>7} {'C opt':>7} {'TFLM':>6} "
                 f"{'mismatch':>9} {'faults':>7}"]
        for op, s in self.stats.items():
            lines.append(f"{op:<24} {s.cases:>7} {s.refused:>8} {s.native['reference']:>7} "
                         f"{s.native['optimized']:>7} {s.tflm:>6} {s.mismatches:>9} {s.faults:>7}")
        total = OpStats()
        for s in self.stats.values():
            total.cases += s.cases
            total.mismatches += s.mismatches
            total.faults += s.faults
        lines.append(f"total: {total.cases} cases, {total.mismatches} mismatches, {total.faults} faults")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    load_families()
    parser = argparse.ArgumentParser(prog="python -m microtile.check.fuzz_ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per operator (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--op", action="append", help="operator(s) to fuzz (default: every registered one)")
    parser.add_argument("--case", type=int, help="run only this case number (a reproducer)")
    parser.add_argument("--kernels", choices=("both", "reference", "optimized"), default="both")
    parser.add_argument("--tflm-every", type=int, default=10, help="check the numpy reference against TFLM "
                        "on every K-th case (default 10)")
    args = parser.parse_args(argv)
    ops = [o.upper() for o in (args.op or sorted(REGISTRY))]
    unknown = [o for o in ops if o not in GENERATORS]
    if unknown or args.cases < 1 or args.tflm_every < 1 or (args.case is not None and args.case < 0):
        what = f"unknown operator(s) {', '.join(unknown)}; choose from {', '.join(sorted(GENERATORS))}" if unknown \
            else "--cases, --tflm-every must be >= 1 and --case >= 0"
        print(f"error: {what}", file=sys.stderr)
        return 2
    missing = sorted(set(REGISTRY) - set(GENERATORS))
    if missing:  # every registered operator must be fuzzed
        print(f"error: no fuzz generator for {', '.join(missing)} (add one in microtile/fuzz_ops.py)", file=sys.stderr)
        return 2
    kernel_sets = ("reference", "optimized") if args.kernels == "both" else (args.kernels,)
    tflm_every = 1 if args.case is not None else args.tflm_every  # a reproducer checks TFLM too
    fuzzer = Fuzzer(args.seed, kernel_sets, tflm_every, log=lambda m: print(m, flush=True))
    t0 = time.monotonic()
    print(f"fuzzing {len(ops)} operator(s), {1 if args.case is not None else args.cases} case(s) each, seed {args.seed}, "
          f"kernels {args.kernels}, TFLM on every {tflm_every}th case; C kernels under ASan + UBSan", flush=True)
    try:
        fuzzer.run(ops, args.cases, args.case)
    except KeyboardInterrupt:  # report the cases run so far
        print("interrupted")
    finally:
        fuzzer.tflm.close()
    print(fuzzer.summary())
    print(f"{time.monotonic() - t0:.0f} s")
    for f in fuzzer.failures:
        print(f"FAILED {f.kind}: {f.op} case {f.case}: {f.what}\n  reproduce: {f.reproducer()}")
    return 1 if fuzzer.failures else 0


if __name__ == "__main__":
    sys.exit(main())
