"""A tiny float network description, its numpy forward pass, and honest int8
post-training quantisation into a microtile IR Graph.

How a model is made:
- layers are added to a ``FloatNet``; weights come from a seeded generator with
  He-like init, then each conv / depthwise / dense layer is rescaled per output
  channel on the calibration batch so its pre-activation has zero mean and unit
  variance plus a random shift around +0.5 (batch-norm folding with batch
  statistics, i.e. LSUV-style data-dependent init). Random-weight nets otherwise
  collapse after pooling (every output near-constant) or amplify rounding noise;
- the calibration batch (seeded, uniform in the input's float range) flows through
  the net as layers are added, so every activation's min/max is known;
- ``to_graph`` quantises like the TFLite converter: asymmetric per-tensor int8
  activations whose range includes 0, symmetric per-channel int8 conv / depthwise
  weights, per-tensor (or per-channel) FC weights, int32 biases at
  in_scale * w_scale (with bias correction for the weight rounding), fixed output scales where TFLM demands them, and shared
  quantisation for ops that move bytes without rescaling (pooling, reshape, pad,
  concat, transpose, resize).

Arrays carry the batch on axis 0; graph shapes have batch 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from microtile.errors import MicrotileError
from microtile.importer.ir import Graph, Operator, Quant, Tensor

# Mean of the per-channel pre-activation shift after normalisation: a positive
# shift keeps random ReLU stacks out of the chaotic regime, where they would
# amplify int8 rounding noise layer after layer.
SHIFT_MEAN = 0.5
BIAS_CORRECTION = True
ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")

# Ops whose int8 kernels copy or compare values, so output quant = input quant.
# (TFLM's int8 RELU6 clamps in the input's scale without requantising.)
SAME_QUANT_OPS = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "PAD", "CONCATENATION",
                  "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR", "RELU6"}
# Output quantisation TFLite/TFLM require: (scale, zero_point).
FIXED_OUTPUT_QUANT = {
    "SOFTMAX": (1.0 / 256.0, -128),
    "LOGISTIC": (1.0 / 256.0, -128),
    "LOG_SOFTMAX": (16.0 / 256.0, 127),
    "TANH": (1.0 / 128.0, 0),
}


@dataclass
class FTensor:
    index: int
    name: str
    shape: tuple[int, ...]  # graph shape, batch 1
    kind: str  # "input", "act", or a constant kind: "conv_w", "dw_w", "fc_w", "bias", "int32"
    data: np.ndarray | None = None
    input_range: tuple[float, float] | None = None


@dataclass
class FOp:
    opcode: str
    inputs: list[int]
    outputs: list[int]
    options: dict
    fn: Callable[[list[np.ndarray | None]], np.ndarray]
    per_channel_fc: bool = False
    # conv / depthwise / dense without the fused activation (for bias correction).
    linear: Callable[[list[np.ndarray | None]], np.ndarray] | None = None


@dataclass
class FloatNet:
    name: str
    seed: int = 0
    calib_count: int = 32
    float_io_default: bool = False  # the QUANTIZE/DEQUANTIZE boundary model
    # Ops from this index on stay float32 after a DEQUANTIZE (a float head such as
    # LeNet's LOG_SOFTMAX); None: the whole net is quantised.
    float_tail_from: int | None = None
    tensors: list[FTensor] = field(default_factory=list)
    ops: list[FOp] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    calib: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    # ---- plumbing ---------------------------------------------------------
    def _tensor(self, name: str, shape: tuple[int, ...], kind: str,
                data: np.ndarray | None = None) -> int:
        t = FTensor(len(self.tensors), name, tuple(int(s) for s in shape), kind, data)
        self.tensors.append(t)
        return t.index

    def _const(self, name: str, kind: str, data: np.ndarray) -> int:
        return self._tensor(name, data.shape, kind, data)

    def _value(self, tid: int, values: dict[int, np.ndarray]) -> np.ndarray | None:
        if tid < 0:
            return None
        t = self.tensors[tid]
        return t.data if t.data is not None else values[tid]

    def _add(self, opcode: str, inputs: list[int], options: dict,
             fn: Callable[[list[np.ndarray | None]], np.ndarray], name: str,
             per_channel_fc: bool = False,
             linear: Callable[[list[np.ndarray | None]], np.ndarray] | None = None) -> int:
        out_val = fn([self._value(i, self.calib) for i in inputs])
        out = self._tensor(name, (1,) + out_val.shape[1:], "act")
        self.calib[out] = out_val
        self.ops.append(FOp(opcode, list(inputs), [out], dict(options), fn, per_channel_fc, linear))
        return out

    def _name(self, base: str) -> str:
        return f"{base}_{len(self.ops)}"

    def shape(self, x: int) -> tuple[int, ...]:
        return self.tensors[x].shape

    # ---- graph boundary ---------------------------------------------------
    def input(self, shape: tuple[int, ...], lo: float = -1.0, hi: float = 1.0, name: str = "input") -> int:
        tid = self._tensor(name, shape, "input")
        self.tensors[tid].input_range = (float(lo), float(hi))
        self.calib[tid] = self.random_inputs(self.calib_count, tid)
        self.inputs.append(tid)
        return tid

    def random_inputs(self, count: int, tid: int | None = None, seed: int | None = None) -> np.ndarray:
        """``count`` float inputs in the input's declared range.

        Images / spectrograms (rank 4) mix a per-input level, a smooth component (a
        coarse random grid, nearest-upsampled) and noise, so global features differ
        between inputs the way they do for real data; other inputs are uniform noise.
        """
        t = self.tensors[self.inputs[0] if tid is None else tid]
        assert t.input_range is not None
        rng = self.rng if seed is None else np.random.default_rng(seed)
        lo, hi = t.input_range
        shape = (count,) + t.shape[1:]
        u = rng.uniform(-1.0, 1.0, size=shape)
        if len(shape) == 4 and shape[1] * shape[2] >= 16:
            h, w = shape[1], shape[2]
            coarse = rng.uniform(-1.0, 1.0, size=(count, -(-h // 4), -(-w // 4), shape[3]))
            smooth = coarse.repeat(4, axis=1).repeat(4, axis=2)[:, :h, :w, :]
            level = rng.uniform(-1.0, 1.0, size=(count, 1, 1, shape[3]))
            u = 0.3 * level + 0.4 * smooth + 0.3 * u
        return (lo + (hi - lo) * (u + 1.0) / 2.0).astype(np.float32)

    def output(self, x: int) -> None:
        self.outputs.append(x)

    def float_tail(self) -> None:
        """Layers added from here on stay float32: the quantised graph DEQUANTIZEs
        into them (the float edge ops the host runs)."""
        self.float_tail_from = len(self.ops)

    def forward(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Float forward pass; arrays carry the batch on axis 0."""
        values: dict[int, np.ndarray] = {tid: np.asarray(x, np.float32) for tid, x in zip(self.inputs, inputs)}
        for op in self.ops:
            values[op.outputs[0]] = op.fn([self._value(i, values) for i in op.inputs])
        return [values[o] for o in self.outputs]

    # ---- weights ----------------------------------------------------------
    def _he(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        # He-uniform (Keras' he_uniform): bounded tails keep int8 weight steps small.
        limit = math.sqrt(6.0 / fan_in)
        return self.rng.uniform(-limit, limit, size=shape).astype(np.float32)

    def _normalise(self, z: np.ndarray, w: np.ndarray, b: np.ndarray, w_axis: int,
                   gain: float) -> tuple[np.ndarray, np.ndarray]:
        """Rescale weights/bias per output channel: z ~ (0, gain**2) on calibration data, plus a shift."""
        axes = tuple(range(z.ndim - 1))
        mean = z.mean(axis=axes)
        std = z.std(axis=axes) + 1e-6
        shift = self.rng.normal(SHIFT_MEAN, 0.25, size=mean.shape).astype(np.float32)
        k = (gain / std).astype(np.float32)
        bshape = [1] * w.ndim
        bshape[w_axis] = -1
        return w * k.reshape(bshape), ((b - mean) * k + shift * gain).astype(np.float32)

    # ---- layers -----------------------------------------------------------
    def conv2d(self, x: int, filters: int, kernel: tuple[int, int] = (3, 3), stride: int | tuple[int, int] = 1,
               padding: str = "SAME", activation: str = "RELU", dilation: int | tuple[int, int] = 1,
               gain: float = 1.0, normalise: bool = True) -> int:
        sh, sw = _pair(stride)
        dh, dw = _pair(dilation)
        kh, kw = kernel
        cin = self.shape(x)[3]
        w = self._he((filters, kh, kw, cin), kh * kw * cin)
        b = np.zeros(filters, np.float32)
        if normalise:
            z = _conv2d(self.calib[x], w, b, sh, sw, dh, dw, padding)
            w, b = self._normalise(z, w, b, 0, gain)
        wt = self._const(self._name("conv_w"), "conv_w", w)
        bt = self._const(self._name("conv_b"), "bias", b)
        opts = {"padding": padding, "stride_w": sw, "stride_h": sh, "fused_activation_function": activation,
                "dilation_w_factor": dw, "dilation_h_factor": dh}
        lin = lambda v: _conv2d(v[0], v[1], v[2], sh, sw, dh, dw, padding)  # noqa: E731
        return self._add("CONV_2D", [x, wt, bt], opts, lambda v: _act(lin(v), activation),
                         self._name("conv"), linear=lin)

    def depthwise_conv2d(self, x: int, kernel: tuple[int, int] = (3, 3), stride: int | tuple[int, int] = 1,
                         padding: str = "SAME", activation: str = "RELU", multiplier: int = 1,
                         dilation: int | tuple[int, int] = 1, gain: float = 1.0, normalise: bool = True) -> int:
        sh, sw = _pair(stride)
        dh, dw = _pair(dilation)
        kh, kw = kernel
        cout = self.shape(x)[3] * multiplier
        w = self._he((1, kh, kw, cout), kh * kw)
        b = np.zeros(cout, np.float32)
        if normalise:
            z = _depthwise(self.calib[x], w, b, sh, sw, dh, dw, padding, multiplier)
            w, b = self._normalise(z, w, b, 3, gain)
        wt = self._const(self._name("dw_w"), "dw_w", w)
        bt = self._const(self._name("dw_b"), "bias", b)
        opts = {"padding": padding, "stride_w": sw, "stride_h": sh, "depth_multiplier": multiplier,
                "fused_activation_function": activation, "dilation_w_factor": dw, "dilation_h_factor": dh}
        lin = lambda v: _depthwise(v[0], v[1], v[2], sh, sw, dh, dw, padding, multiplier)  # noqa: E731
        return self._add("DEPTHWISE_CONV_2D", [x, wt, bt], opts, lambda v: _act(lin(v), activation),
                         self._name("dwconv"), linear=lin)

    def fully_connected(self, x: int, units: int, activation: str = "RELU", per_channel: bool = False,
                        gain: float = 1.0, normalise: bool = True, bias: bool = True) -> int:
        # TFLite flattens every input dimension after the batch (keep_num_dims=False).
        cin = int(np.prod(self.shape(x)[1:]))
        w = self._he((units, cin), cin)
        b = np.zeros(units, np.float32)
        if normalise:
            z = _fc(self.calib[x], w, b)
            w, b = self._normalise(z, w, b, 0, gain)
        wt = self._const(self._name("fc_w"), "fc_w", w)
        if bias:
            bt = self._const(self._name("fc_b"), "bias", b)
        else:
            bt, b = -1, None  # absent optional input: the layer keeps only the rescaled weights
        opts = {"fused_activation_function": activation, "weights_format": "DEFAULT", "keep_num_dims": False}
        lin = lambda v: _fc(v[0], v[1], v[2])  # noqa: E731
        return self._add("FULLY_CONNECTED", [x, wt, bt], opts, lambda v: _act(lin(v), activation),
                         self._name("fc"), per_channel_fc=per_channel, linear=lin)

    def _pool(self, opcode: str, x: int, size: tuple[int, int], stride: int | tuple[int, int],
              padding: str, activation: str) -> int:
        sh, sw = _pair(stride)
        fh, fw = size
        opts = {"padding": padding, "stride_w": sw, "stride_h": sh, "filter_width": fw,
                "filter_height": fh, "fused_activation_function": activation}
        kind = "max" if opcode == "MAX_POOL_2D" else "avg"
        return self._add(opcode, [x], opts, lambda v: _act(_pool(v[0], fh, fw, sh, sw, padding, kind), activation),
                         self._name(kind + "pool"))

    def avg_pool(self, x: int, size: tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: str = "VALID", activation: str = "NONE") -> int:
        return self._pool("AVERAGE_POOL_2D", x, size, size if stride is None else stride, padding, activation)

    def max_pool(self, x: int, size: tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: str = "VALID", activation: str = "NONE") -> int:
        return self._pool("MAX_POOL_2D", x, size, size if stride is None else stride, padding, activation)

    def add(self, a: int, b: int, activation: str = "NONE") -> int:
        return self._add("ADD", [a, b], {"fused_activation_function": activation},
                         lambda v: _act(v[0] + v[1], activation), self._name("add"))

    def mul(self, a: int, b: int, activation: str = "NONE") -> int:
        return self._add("MUL", [a, b], {"fused_activation_function": activation},
                         lambda v: _act(v[0] * v[1], activation), self._name("mul"))

    def squared_difference(self, a: int, b: int) -> int:
        return self._add("SQUARED_DIFFERENCE", [a, b], {}, lambda v: (v[0] - v[1]) ** 2, self._name("sqdiff"))

    def reshape(self, x: int, shape: tuple[int, ...]) -> int:
        st = self._const(self._name("shape"), "int32", np.asarray(shape, np.int32))
        rest = tuple(shape[1:])
        return self._add("RESHAPE", [x, st], {"new_shape": [int(s) for s in shape]},
                         lambda v: v[0].reshape((v[0].shape[0],) + rest), self._name("reshape"))

    def softmax(self, x: int, beta: float = 1.0) -> int:
        return self._add("SOFTMAX", [x], {"beta": float(beta)}, lambda v: _softmax(v[0] * beta),
                         self._name("softmax"))

    def log_softmax(self, x: int) -> int:
        return self._add("LOG_SOFTMAX", [x], {}, lambda v: np.log(_softmax(v[0])), self._name("log_softmax"))

    def pad(self, x: int, paddings: list[tuple[int, int]]) -> int:
        pt = self._const(self._name("paddings"), "int32", np.asarray(paddings, np.int32))
        pads = [(0, 0)] + [tuple(p) for p in paddings[1:]]  # batch axis is the calibration batch
        return self._add("PAD", [x, pt], {}, lambda v: np.pad(v[0], pads), self._name("pad"))

    def mean(self, x: int, axes: tuple[int, ...], keep_dims: bool = True) -> int:
        if 0 in axes:
            raise MicrotileError("zoo MEAN over the batch axis is not modelled; reduce axes >= 1")
        at = self._const(self._name("axes"), "int32", np.asarray(axes, np.int32))
        return self._add("MEAN", [x, at], {"keep_dims": bool(keep_dims)},
                         lambda v: v[0].mean(axis=tuple(axes), keepdims=keep_dims), self._name("mean"))

    def concatenation(self, xs: list[int], axis: int) -> int:
        if axis == 0:
            raise MicrotileError("zoo CONCATENATION on the batch axis is not modelled; use axis >= 1")
        return self._add("CONCATENATION", list(xs), {"axis": axis, "fused_activation_function": "NONE"},
                         lambda v: np.concatenate(v, axis=axis), self._name("concat"))

    def transpose(self, x: int, perm: tuple[int, ...]) -> int:
        if perm[0] != 0:
            raise MicrotileError("zoo TRANSPOSE must keep the batch axis first (perm[0] == 0)")
        pt = self._const(self._name("perm"), "int32", np.asarray(perm, np.int32))
        return self._add("TRANSPOSE", [x, pt], {}, lambda v: np.transpose(v[0], perm), self._name("transpose"))

    def resize_nearest(self, x: int, size: tuple[int, int], align_corners: bool = False,
                       half_pixel_centers: bool = False) -> int:
        st = self._const(self._name("size"), "int32", np.asarray(size, np.int32))
        return self._add("RESIZE_NEAREST_NEIGHBOR", [x, st],
                         {"align_corners": align_corners, "half_pixel_centers": half_pixel_centers},
                         lambda v: _resize_nearest(v[0], size, align_corners, half_pixel_centers),
                         self._name("resize"))

    def unary(self, opcode: str, x: int) -> int:
        fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            "RELU": lambda a: np.maximum(a, 0.0),
            "RELU6": lambda a: np.clip(a, 0.0, 6.0),
            "LOGISTIC": lambda a: 1.0 / (1.0 + np.exp(-a)),
            "TANH": np.tanh,
            "HARD_SWISH": lambda a: a * np.clip(a + 3.0, 0.0, 6.0) / 6.0,
        }
        f = fns[opcode]
        return self._add(opcode, [x], {}, lambda v: f(v[0]).astype(np.float32), self._name(opcode.lower()))

    # ---- quantisation -----------------------------------------------------
    def to_graph(self, float_io: bool = False) -> Graph:
        return _Quantiser(self).run(float_io)


# ---- float kernels (NHWC, TFLite padding rules) ---------------------------

def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _act(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "NONE":
        return x
    if activation == "RELU":
        return np.maximum(x, 0.0)
    if activation == "RELU6":
        return np.clip(x, 0.0, 6.0)
    if activation == "RELU_N1_TO_1":
        return np.clip(x, -1.0, 1.0)
    raise MicrotileError(f"fused activation {activation} is not modelled ({', '.join(ACTIVATIONS)})")


def _out_and_pad(n: int, k: int, s: int, d: int, padding: str) -> tuple[int, int]:
    eff = (k - 1) * d + 1
    if padding == "SAME":
        out = (n + s - 1) // s
        total = max((out - 1) * s + eff - n, 0)
        return out, total // 2
    return (n - eff) // s + 1, 0


def _taps(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, padding: str):
    """Yields (i, j, strided input window) for each filter tap; zero padding as TFLite."""
    n, h, w, c = x.shape
    oh, ph = _out_and_pad(h, kh, sh, dh, padding)
    ow, pw = _out_and_pad(w, kw, sw, dw, padding)
    xp = np.zeros((n, h + (oh - 1) * sh + (kh - 1) * dh + 1, w + (ow - 1) * sw + (kw - 1) * dw + 1, c), x.dtype)
    xp[:, ph:ph + h, pw:pw + w, :] = x
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            yield i, j, xp[:, r0:r0 + (oh - 1) * sh + 1:sh, c0:c0 + (ow - 1) * sw + 1:sw, :]


def _conv2d(x, w, b, sh, sw, dh, dw, padding) -> np.ndarray:
    acc = None
    for i, j, win in _taps(x, w.shape[1], w.shape[2], sh, sw, dh, dw, padding):
        term = win @ w[:, i, j, :].T
        acc = term if acc is None else acc + term
    return (acc if b is None else acc + b).astype(np.float32)


def _depthwise(x, w, b, sh, sw, dh, dw, padding, multiplier) -> np.ndarray:
    if multiplier > 1:
        x = np.repeat(x, multiplier, axis=3)  # output channel c*M+m reads input channel c
    acc = None
    for i, j, win in _taps(x, w.shape[1], w.shape[2], sh, sw, dh, dw, padding):
        term = win * w[0, i, j, :]
        acc = term if acc is None else acc + term
    return (acc if b is None else acc + b).astype(np.float32)


def _fc(x, w, b) -> np.ndarray:
    flat = x.reshape(x.shape[0], -1)
    out = flat @ w.T
    return (out if b is None else out + b).astype(np.float32)


def _pool(x, fh, fw, sh, sw, padding, kind) -> np.ndarray:
    n, h, w, c = x.shape
    oh, ph = _out_and_pad(h, fh, sh, 1, padding)
    ow, pw = _out_and_pad(w, fw, sw, 1, padding)
    out = np.empty((n, oh, ow, c), np.float32)
    for r in range(oh):
        r0, r1 = max(r * sh - ph, 0), min(r * sh - ph + fh, h)
        for q in range(ow):
            c0, c1 = max(q * sw - pw, 0), min(q * sw - pw + fw, w)
            win = x[:, r0:r1, c0:c1, :]
            # TFLite averages over the in-bounds part of the window only.
            out[:, r, q, :] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _resize_nearest(x, size, align_corners, half_pixel_centers) -> np.ndarray:
    def src(out_n: int, in_n: int) -> np.ndarray:
        scale = (in_n - 1) / (out_n - 1) if align_corners and out_n > 1 else in_n / out_n
        pos = (np.arange(out_n) + (0.5 if half_pixel_centers else 0.0)) * scale
        idx = np.floor(pos + 0.5) if align_corners else np.floor(pos)
        return np.minimum(idx.astype(np.int64), in_n - 1)

    return x[:, src(size[0], x.shape[1])][:, :, src(size[1], x.shape[2])]


# ---- post-training quantisation --------------------------------------------

def _round(x: np.ndarray | float) -> np.ndarray:
    """Half away from zero, as TFLite's converter rounds."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def activation_quant(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 (scale, zero_point) for a float range; the range always holds 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    scale = (hi - lo) / 255.0
    zp = int(np.clip(_round(-128.0 - lo / scale), -128, 127))
    return scale, zp


def _sym_scales(w: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        m = np.array([np.abs(w).max()])
    else:
        m = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    return np.maximum(m, 1e-8) / 127.0


class _Quantiser:
    def __init__(self, net: FloatNet):
        self.net = net
        self.tensors: list[Tensor] = []
        self.ops: list[Operator] = []
        self.ir: dict[int, int] = {}  # float tensor -> IR tensor
        self.quant: dict[int, tuple[float, int]] = {}

    def _group_quant(self) -> None:
        net = self.net
        parent = {t.index: t.index for t in net.tensors if t.kind in ("input", "act")}

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        fixed: dict[int, tuple[float, int]] = {}
        for op in net.ops:
            if op.opcode in SAME_QUANT_OPS:
                for i in op.inputs:
                    if i >= 0 and net.tensors[i].kind in ("input", "act"):
                        parent[find(i)] = find(op.outputs[0])
            if op.opcode in FIXED_OUTPUT_QUANT:
                fixed[op.outputs[0]] = FIXED_OUTPUT_QUANT[op.opcode]
        lo: dict[int, float] = {}
        hi: dict[int, float] = {}
        fixed_root: dict[int, tuple[float, int]] = {}
        for tid in parent:
            r = find(tid)
            v = net.calib[tid]
            lo[r] = min(lo.get(r, 0.0), float(v.min()))
            hi[r] = max(hi.get(r, 0.0), float(v.max()))
            if tid in fixed:
                fixed_root[r] = fixed[tid]
        for tid in parent:
            r = find(tid)
            self.quant[tid] = fixed_root[r] if r in fixed_root else activation_quant(lo[r], hi[r])

    def _new(self, name: str, shape: tuple[int, ...], dtype: str, quant: Quant | None = None,
             data: np.ndarray | None = None) -> int:
        t = Tensor(len(self.tensors), name, tuple(shape), dtype, quant, data)
        self.tensors.append(t)
        return t.index

    def _act_tensor(self, tid: int) -> int:
        if tid not in self.ir:
            ft = self.net.tensors[tid]
            s, z = self.quant[tid]
            self.ir[tid] = self._new(ft.name, ft.shape, "int8",
                                     Quant(np.array([s], np.float32), np.array([z], np.int64)))
        return self.ir[tid]

    def _op(self, opcode: str, inputs: list[int], outputs: list[int], options: dict) -> None:
        self.ops.append(Operator(len(self.ops), opcode, inputs, outputs, options))

    def _weights(self, ft: FTensor, per_channel_fc: bool) -> tuple[int, np.ndarray, np.ndarray]:
        axis = {"conv_w": 0, "dw_w": 3, "fc_w": 0 if per_channel_fc else None}[ft.kind]
        scales = _sym_scales(ft.data, axis)
        bshape = [1] * ft.data.ndim
        if axis is not None:
            bshape[axis] = -1
        q = np.clip(_round(ft.data / scales.reshape(bshape)), -127, 127).astype(np.int8)
        quant = Quant(scales.astype(np.float32), np.zeros(scales.size, np.int64), axis or 0)
        deq = q.astype(np.float32) * scales.reshape(bshape).astype(np.float32)
        return self._new(ft.name, ft.shape, "int8", quant, q), scales, deq

    def _float_op(self, op: FOp, float_ir: dict[int, int]) -> None:
        """A float32 op of the tail: int8 inputs are DEQUANTIZEd into it once."""
        ins: list[int] = []
        for i in op.inputs:
            ft = self.net.tensors[i] if i >= 0 else None
            if ft is None:
                ins.append(-1)
            elif i in float_ir:
                ins.append(float_ir[i])
            elif ft.kind in ("input", "act"):
                f = self._new(ft.name + "_float", ft.shape, "float32")
                self._op("DEQUANTIZE", [self._act_tensor(i)], [f], {})
                float_ir[i] = f
                ins.append(f)
            elif ft.kind == "int32":
                ins.append(self._new(ft.name, ft.shape, "int32", None, ft.data.astype(np.int32)))
            else:
                raise MicrotileError(f"float tail op {op.opcode}: weights stay int8 (no float {ft.kind} layers)")
        outs = []
        for o in op.outputs:
            float_ir[o] = self._new(self.net.tensors[o].name, self.net.tensors[o].shape, "float32")
            outs.append(float_ir[o])
        self._op(op.opcode, ins, outs, dict(op.options))

    def run(self, float_io: bool) -> Graph:
        net = self.net
        self._group_quant()
        g_inputs: list[int] = []
        for tid in net.inputs:
            q = self._act_tensor(tid)
            if float_io:
                f = self._new(net.tensors[tid].name + "_float", net.tensors[tid].shape, "float32")
                self._op("QUANTIZE", [f], [q], {})
                g_inputs.append(f)
            else:
                g_inputs.append(q)
        float_ir: dict[int, int] = {}  # float net tensor -> float32 IR tensor (the float tail)
        for k, op in enumerate(net.ops):
            if net.float_tail_from is not None and k >= net.float_tail_from:
                self._float_op(op, float_ir)
                continue
            ins: list[int] = []
            w_scales: np.ndarray | None = None
            w_err: np.ndarray | None = None
            for i in op.inputs:
                if i < 0:
                    ins.append(-1)
                    continue
                ft = net.tensors[i]
                if ft.kind in ("input", "act"):
                    ins.append(self._act_tensor(i))
                elif ft.kind in ("conv_w", "dw_w", "fc_w"):
                    t, w_scales, w_deq = self._weights(ft, op.per_channel_fc)
                    w_err = w_deq - ft.data
                    ins.append(t)
                elif ft.kind == "bias":
                    assert w_scales is not None, "bias must follow its weights"
                    in_scale = self.quant[op.inputs[0]][0]
                    bs = (in_scale * w_scales).astype(np.float64)
                    b = ft.data.astype(np.float64)
                    if BIAS_CORRECTION and op.linear is not None and w_err is not None:
                        # Bias correction: cancel the mean output shift the rounded weights
                        # cause on calibration data (Nagel et al. 2019, "data-free" variant
                        # with measured input statistics).
                        shift = op.linear([self.net.calib[op.inputs[0]], w_err, None])
                        b = b - shift.reshape(-1, shift.shape[-1]).mean(axis=0)
                    q = np.clip(_round(b / bs), -(1 << 31), (1 << 31) - 1).astype(np.int32)
                    quant = Quant(bs.astype(np.float32), np.zeros(bs.size, np.int64), 0)
                    ins.append(self._new(ft.name, ft.shape, "int32", quant, q))
                elif ft.kind == "int32":
                    ins.append(self._new(ft.name, ft.shape, "int32", None, ft.data.astype(np.int32)))
                else:
                    raise MicrotileError(f"tensor {ft.name}: unknown kind {ft.kind}")
            outs = [self._act_tensor(o) for o in op.outputs]
            self._op(op.opcode, ins, outs, dict(op.options))
        g_outputs: list[int] = []
        for tid in net.outputs:
            if tid in float_ir:  # produced by the float tail: already float32
                g_outputs.append(float_ir[tid])
                continue
            q = self._act_tensor(tid)
            if float_io:
                f = self._new(net.tensors[tid].name + "_float", net.tensors[tid].shape, "float32")
                self._op("DEQUANTIZE", [q], [f], {})
                g_outputs.append(f)
            else:
                g_outputs.append(q)
        return Graph(net.name, self.tensors, self.ops, g_inputs, g_outputs)
