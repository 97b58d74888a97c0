"""The zoo: int8 models microtile builds itself (MLPerf-Tiny-like nets, one model
per supported operator variant, and models microtile must refuse).

Every entry is a function ``(seed) -> FloatNet``; ``build(name)`` quantises it into
an IR Graph, ``float_net(name)`` gives the float network (the accuracy reference for
the quantised model). Names are stable: tests and the CLI refer to them.
"""
from __future__ import annotations

from typing import Callable

from microtile.errors import MicrotileError
from microtile.importer.ir import Graph

from .float_graph import FloatNet

NetBuilder = Callable[[int], FloatNet]


# ---- MLPerf-Tiny-like models ---------------------------------------------

def _ds_cnn_kws(seed: int) -> FloatNet:
    net = FloatNet("ds_cnn_kws", seed)
    x = net.input((1, 49, 10, 1), -1.0, 1.0)
    x = net.conv2d(x, 64, (10, 4), stride=2, padding="SAME", activation="RELU")
    for _ in range(4):
        x = net.depthwise_conv2d(x, (3, 3), stride=1, padding="SAME", activation="RELU")
        x = net.conv2d(x, 64, (1, 1), padding="SAME", activation="RELU")
    x = net.avg_pool(x, (25, 5))
    x = net.reshape(x, (1, 64))
    x = net.fully_connected(x, 12, activation="NONE", gain=2.0)
    net.output(net.softmax(x))
    return net


def _mobilenet_v1_vww(seed: int) -> FloatNet:
    net = FloatNet("mobilenet_v1_vww", seed)
    x = net.input((1, 96, 96, 3), -1.0, 1.0)
    x = net.conv2d(x, 8, (3, 3), stride=2, activation="RELU6")
    # (stride, pointwise channels) of MobileNetV1 at alpha 0.25.
    for stride, ch in ((1, 16), (2, 32), (1, 32), (2, 64), (1, 64), (2, 128), (1, 128), (1, 128),
                       (1, 128), (1, 128), (1, 128), (2, 256), (1, 256)):
        x = net.depthwise_conv2d(x, (3, 3), stride=stride, activation="RELU6")
        x = net.conv2d(x, ch, (1, 1), activation="RELU6")
    x = net.avg_pool(x, (3, 3))
    x = net.reshape(x, (1, 256))
    x = net.fully_connected(x, 2, activation="NONE", gain=2.0)
    net.output(net.softmax(x))
    return net


def _resnet8_ic(seed: int) -> FloatNet:
    net = FloatNet("resnet8_ic", seed)
    x = net.input((1, 32, 32, 3), -1.0, 1.0)
    x = net.conv2d(x, 16, (3, 3), activation="RELU")
    for ch, stride in ((16, 1), (32, 2), (64, 2)):
        y = net.conv2d(x, ch, (3, 3), stride=stride, activation="RELU")
        y = net.conv2d(y, ch, (3, 3), activation="NONE")
        if stride != 1:
            x = net.conv2d(x, ch, (1, 1), stride=stride, activation="NONE")
        x = net.add(x, y, activation="RELU")
    x = net.avg_pool(x, (8, 8))
    x = net.reshape(x, (1, 64))
    x = net.fully_connected(x, 10, activation="NONE", gain=2.0)
    net.output(net.softmax(x))
    return net


def _fc_autoencoder_ad(seed: int) -> FloatNet:
    net = FloatNet("fc_autoencoder_ad", seed)
    x = net.input((1, 640), -1.0, 1.0)
    for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = net.fully_connected(x, units, activation="RELU")
    net.output(net.fully_connected(x, 640, activation="NONE"))
    return net


def _lenet_300_100_mnist(seed: int) -> FloatNet:
    """LeNet-300-100 as in TinyEngine's MNIST example: an int8 MLP between a float
    QUANTIZE and a float DEQUANTIZE -> LOG_SOFTMAX head (which the host runs)."""
    net = FloatNet("lenet_300_100_mnist", seed, float_io_default=True)
    x = net.input((1, 784), 0.0, 1.0)
    x = net.fully_connected(x, 300, activation="RELU")
    x = net.fully_connected(x, 100, activation="RELU")
    x = net.fully_connected(x, 10, activation="NONE", gain=2.0)
    net.float_tail()
    net.output(net.log_softmax(x))
    return net


def float_edge_net(opcode: str, seed: int = 0) -> FloatNet:
    """int8 FC -> DEQUANTIZE -> one float32 edge op (the host runs it)."""
    net = FloatNet(f"float_edge_{opcode.lower()}", seed, float_io_default=True)
    x = net.fully_connected(net.input((1, 24), -1.0, 1.0), 12, activation="NONE", gain=3.0)
    net.float_tail()
    if opcode == "SOFTMAX":
        y = net.softmax(x, beta=0.75)
    elif opcode == "LOG_SOFTMAX":
        y = net.log_softmax(x)
    elif opcode == "LOGISTIC":
        y = net.unary("LOGISTIC", x)
    elif opcode == "RESHAPE":
        y = net.softmax(net.reshape(x, (1, 3, 4)))
    else:
        raise MicrotileError(f"no float edge zoo model for {opcode}")
    net.output(y)
    return net


# ---- per-operator models ---------------------------------------------------

def single_op_net(opcode: str, seed: int = 0, **p) -> FloatNet:
    """A one-operator float net (two for the float-boundary QUANTIZE/DEQUANTIZE model).

    Parameters (all optional): ``shape`` (input NHWC or 2-D), ``activation``, and the
    operator's own: ``filters``, ``kernel``, ``stride``, ``padding``, ``dilation``,
    ``multiplier``, ``units``, ``per_channel``, ``bias``, ``size``, ``axes``,
    ``keep_dims``, ``axis``, ``perm``, ``paddings``, ``new_shape``, ``beta``,
    ``align_corners``, ``half_pixel_centers``, ``broadcast``.
    """
    name = p.pop("name", f"op_{opcode.lower()}")
    net = FloatNet(name, seed)
    act = p.pop("activation", "NONE")
    given_range = p.pop("range", None)
    lo, hi = given_range or (-1.0, 1.0)

    def inp(default: tuple[int, ...]) -> int:
        return net.input(tuple(p.pop("shape", default)), lo, hi)

    if opcode == "CONV_2D":
        y = net.conv2d(inp((1, 12, 12, 4)), p.pop("filters", 8), tuple(p.pop("kernel", (3, 3))),
                       p.pop("stride", 1), p.pop("padding", "SAME"), act, p.pop("dilation", 1))
    elif opcode == "DEPTHWISE_CONV_2D":
        y = net.depthwise_conv2d(inp((1, 12, 12, 8)), tuple(p.pop("kernel", (3, 3))), p.pop("stride", 1),
                                 p.pop("padding", "SAME"), act, p.pop("multiplier", 1), p.pop("dilation", 1))
    elif opcode == "FULLY_CONNECTED":
        y = net.fully_connected(inp((1, 64)), p.pop("units", 16), act, p.pop("per_channel", False),
                                bias=p.pop("bias", True))
    elif opcode in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        x = inp((1, 12, 12, 8))
        size = tuple(p.pop("size", (2, 2)))
        pool = net.avg_pool if opcode == "AVERAGE_POOL_2D" else net.max_pool
        y = pool(x, size, p.pop("stride", None), p.pop("padding", "VALID"), act)
    elif opcode in ("ADD", "MUL", "SQUARED_DIFFERENCE"):
        shape = tuple(p.pop("shape", (1, 8, 8, 8)))
        a = net.input(shape, lo, hi, name="input_a")
        # broadcast=True: second operand is one value per channel.
        b_shape = (1, 1, 1, shape[-1]) if p.pop("broadcast", False) else shape
        b = net.input(b_shape, lo, hi, name="input_b")
        if opcode == "SQUARED_DIFFERENCE":
            y = net.squared_difference(a, b)
        else:
            y = (net.add if opcode == "ADD" else net.mul)(a, b, act)
    elif opcode == "RESHAPE":
        y = net.reshape(inp((1, 4, 4, 8)), tuple(p.pop("new_shape", (1, 128))))
    elif opcode == "SOFTMAX":
        y = net.softmax(inp((1, 10)), p.pop("beta", 1.0))
    elif opcode == "LOG_SOFTMAX":
        y = net.log_softmax(inp((1, 10)))
    elif opcode == "PAD":
        y = net.pad(inp((1, 6, 6, 4)), p.pop("paddings", [(0, 0), (1, 2), (2, 1), (0, 0)]))
    elif opcode == "MEAN":
        y = net.mean(inp((1, 6, 6, 8)), tuple(p.pop("axes", (1, 2))), p.pop("keep_dims", True))
    elif opcode == "CONCATENATION":
        shape = tuple(p.pop("shape", (1, 4, 4, 4)))
        axis = p.pop("axis", 3)
        other = list(shape)
        other[axis] += 2  # inputs of different size along the axis
        a = net.input(shape, lo, hi, name="input_a")
        b = net.input(tuple(other), lo, hi, name="input_b")
        y = net.concatenation([a, b], axis)
    elif opcode == "TRANSPOSE":
        y = net.transpose(inp((1, 3, 4, 5)), tuple(p.pop("perm", (0, 2, 3, 1))))
    elif opcode == "RESIZE_NEAREST_NEIGHBOR":
        y = net.resize_nearest(inp((1, 4, 4, 3)), tuple(p.pop("size", (8, 8))),
                               p.pop("align_corners", False), p.pop("half_pixel_centers", False))
    elif opcode in ("RELU", "RELU6", "LOGISTIC", "HARD_SWISH", "TANH"):
        default_range = {"RELU6": (-2.0, 8.0), "HARD_SWISH": (-5.0, 5.0), "LOGISTIC": (-6.0, 6.0),
                         "TANH": (-3.0, 3.0)}.get(opcode, (lo, hi))
        lo, hi = given_range or default_range
        y = net.unary(opcode, inp((1, 8, 8, 4)))
    elif opcode in ("QUANTIZE", "DEQUANTIZE"):
        # The float-boundary model: float in -> QUANTIZE -> int8 op -> DEQUANTIZE -> float out.
        y = net.unary("RELU", inp((1, 8, 8, 4)))
        net.float_io_default = True
    else:
        raise MicrotileError(f"no single-op zoo model for {opcode}; see SINGLE_OP_MODELS in models/zoo.py")
    if p:
        raise MicrotileError(f"single_op({opcode}): unknown parameters {sorted(p)}")
    net.output(y)
    return net


def single_op(opcode: str, seed: int = 0, float_io: bool = False, **params) -> Graph:
    """IR Graph of a one-operator model, e.g. ``single_op("CONV_2D", stride=2, activation="RELU6")``."""
    net = single_op_net(opcode, seed, **params)
    return net.to_graph(float_io or net.float_io_default)


# name -> (opcode, params): every operator microtile supports, in its main variants.
SINGLE_OP_MODELS: dict[str, tuple[str, dict]] = {
    "op_conv_3x3_same_relu": ("CONV_2D", {"activation": "RELU"}),
    "op_conv_3x3_valid_s2_relu6": ("CONV_2D", {"padding": "VALID", "stride": 2, "activation": "RELU6"}),
    "op_conv_1x1": ("CONV_2D", {"kernel": (1, 1), "filters": 16}),
    "op_conv_5x3_same_s2": ("CONV_2D", {"kernel": (5, 3), "stride": (2, 1), "shape": (1, 11, 9, 3)}),
    "op_dwconv_3x3_same_relu": ("DEPTHWISE_CONV_2D", {"activation": "RELU"}),
    "op_dwconv_3x3_s2_relu6": ("DEPTHWISE_CONV_2D", {"stride": 2, "activation": "RELU6"}),
    "op_dwconv_valid_mult2": ("DEPTHWISE_CONV_2D", {"padding": "VALID", "multiplier": 2, "shape": (1, 9, 9, 4)}),
    "op_fc_relu": ("FULLY_CONNECTED", {"activation": "RELU"}),
    "op_fc_per_channel": ("FULLY_CONNECTED", {"per_channel": True, "units": 10}),
    "op_fc_no_bias_4d_input": ("FULLY_CONNECTED", {"bias": False, "shape": (1, 2, 2, 8), "units": 8}),
    "op_avgpool_2x2": ("AVERAGE_POOL_2D", {}),
    "op_avgpool_3x3_same_s2": ("AVERAGE_POOL_2D", {"size": (3, 3), "stride": 2, "padding": "SAME"}),
    "op_maxpool_2x2": ("MAX_POOL_2D", {}),
    "op_maxpool_3x3_same_s2_relu": ("MAX_POOL_2D", {"size": (3, 3), "stride": 2, "padding": "SAME",
                                                    "activation": "RELU"}),
    "op_add": ("ADD", {}),
    "op_add_relu_broadcast": ("ADD", {"activation": "RELU", "broadcast": True}),
    "op_mul": ("MUL", {}),
    "op_mul_broadcast": ("MUL", {"broadcast": True}),
    "op_reshape": ("RESHAPE", {}),
    "op_softmax": ("SOFTMAX", {}),
    "op_softmax_beta": ("SOFTMAX", {"beta": 0.5, "shape": (1, 4, 16)}),
    "op_log_softmax": ("LOG_SOFTMAX", {}),
    "op_pad": ("PAD", {}),
    "op_mean_hw": ("MEAN", {}),
    "op_mean_w_no_keep": ("MEAN", {"axes": (2,), "keep_dims": False}),
    "op_concat_channels": ("CONCATENATION", {}),
    "op_concat_height": ("CONCATENATION", {"axis": 1}),
    "op_transpose": ("TRANSPOSE", {}),
    "op_resize_nearest_2x": ("RESIZE_NEAREST_NEIGHBOR", {}),
    "op_resize_nearest_half_pixel": ("RESIZE_NEAREST_NEIGHBOR", {"size": (6, 10), "half_pixel_centers": True}),
    "op_relu": ("RELU", {}),
    "op_relu6": ("RELU6", {}),
    "op_logistic": ("LOGISTIC", {}),
    "op_hard_swish": ("HARD_SWISH", {}),
    "op_quantize_dequantize": ("QUANTIZE", {}),
}

# Models microtile must reject with UnsupportedOperatorError.
UNSUPPORTED_MODELS: dict[str, tuple[str, dict]] = {
    "unsupported_tanh": ("TANH", {}),
    "unsupported_squared_difference": ("SQUARED_DIFFERENCE", {}),
    "unsupported_dilated_conv": ("CONV_2D", {"dilation": 2}),
}

# ---- models shaped to exercise the RAM techniques (issue 9) ----------------

def _mbv2_block(net: FloatNet, x: int, out_ch: int, stride: int, expansion: int = 6) -> int:
    """A MobileNetV2 inverted bottleneck: 1x1 expansion, 3x3 depthwise, 1x1 projection,
    with a residual ADD when the shape allows."""
    cin = net.shape(x)[3]
    y = net.conv2d(x, cin * expansion, (1, 1), activation="RELU6")
    y = net.depthwise_conv2d(y, (3, 3), stride=stride, activation="RELU6")
    y = net.conv2d(y, out_ch, (1, 1), activation="NONE")
    return net.add(x, y) if stride == 1 and cin == out_ch else y


def _ram_techniques(seed: int) -> FloatNet:
    """Small, but with every RAM technique's case: a PAD before a VALID conv, a residual
    MobileNetV2 block (expansion 6), a strided block, two branches joined by a
    CONCATENATION of contiguous slices, RESHAPEs."""
    net = FloatNet("ram_techniques", seed)
    x = net.input((1, 20, 20, 3), -1.0, 1.0)
    x = net.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    x = net.conv2d(x, 8, (3, 3), stride=2, padding="VALID", activation="RELU6")
    x = _mbv2_block(net, x, 8, 1)
    x = _mbv2_block(net, x, 16, 2)
    a = net.reshape(net.avg_pool(x, (5, 5)), (1, 16))
    b = net.reshape(net.max_pool(x, (5, 5)), (1, 16))
    x = net.concatenation([a, b], axis=1)
    x = net.fully_connected(x, 4, activation="NONE", gain=2.0)
    net.output(net.softmax(x))
    return net


def _mcunet_vww(seed: int) -> FloatNet:
    """MCUNet-VWW class (TinyEngine's VWW examples): 80x80x3 input, MobileNetV2 blocks with
    expansion 6 and residual ADDs, a 2-class head."""
    net = FloatNet("mcunet_vww", seed)
    x = net.input((1, 80, 80, 3), -1.0, 1.0)
    x = net.conv2d(x, 16, (3, 3), stride=2, activation="RELU6")             # 40x40x16
    x = net.depthwise_conv2d(x, (3, 3), activation="RELU6")
    x = net.conv2d(x, 8, (1, 1), activation="NONE")                         # 40x40x8
    for out_ch, stride in ((8, 1), (16, 2), (16, 1), (24, 2), (24, 1), (40, 2), (40, 1), (48, 1), (96, 2), (96, 1)):
        x = _mbv2_block(net, x, out_ch, stride)
    x = net.avg_pool(x, (3, 3))
    x = net.reshape(x, (1, 96))
    x = net.fully_connected(x, 2, activation="NONE", gain=2.0)
    net.output(net.softmax(x))
    return net


def _fdt_head(seed: int) -> FloatNet:
    """Fused depthwise tiling's case (passes/fdt.py): a wide 1x1 expansion, a depthwise,
    a global average pool and an FC, so the middle tensors are large and the FC's
    accumulator small."""
    net = FloatNet("fdt_head", seed)
    x = net.input((1, 20, 20, 16), -1.0, 1.0)
    x = net.conv2d(x, 96, (1, 1), activation="RELU6")
    x = net.depthwise_conv2d(x, (3, 3), activation="RELU6")
    x = net.avg_pool(x, (20, 20))
    x = net.reshape(x, (1, 96))
    x = net.fully_connected(x, 10, activation="NONE", gain=2.0)
    net.output(net.softmax(x))
    return net


RAM_MODELS: dict[str, NetBuilder] = {"ram_techniques": _ram_techniques, "mcunet_vww": _mcunet_vww,
                                     "fdt_head": _fdt_head}

MLPERF_MODELS: dict[str, NetBuilder] = {
    "ds_cnn_kws": _ds_cnn_kws,
    "mobilenet_v1_vww": _mobilenet_v1_vww,
    "resnet8_ic": _resnet8_ic,
    "fc_autoencoder_ad": _fc_autoencoder_ad,
}


def _single(name: str, opcode: str, params: dict) -> NetBuilder:
    return lambda seed: single_op_net(opcode, seed, name=name, **params)


# Float heads after the int8 body (the host runs them): name -> builder.
FLOAT_EDGE_MODELS: dict[str, NetBuilder] = {
    "lenet_300_100_mnist": _lenet_300_100_mnist,
    **{f"float_edge_{op.lower()}": (lambda seed, op=op: float_edge_net(op, seed))
       for op in ("SOFTMAX", "LOG_SOFTMAX", "LOGISTIC", "RESHAPE")},
}

ZOO: dict[str, NetBuilder] = dict(MLPERF_MODELS)
ZOO.update(FLOAT_EDGE_MODELS)
ZOO.update(RAM_MODELS)
ZOO.update({n: _single(n, op, prm) for n, (op, prm) in SINGLE_OP_MODELS.items()})
ZOO.update({n: _single(n, op, prm) for n, (op, prm) in UNSUPPORTED_MODELS.items()})


def names() -> list[str]:
    return list(ZOO)


def float_net(name: str, seed: int = 0) -> FloatNet:
    try:
        return ZOO[name](seed)
    except KeyError:
        raise MicrotileError(f"no zoo model {name!r}; choose one of: {', '.join(ZOO)}") from None


def build(name: str, seed: int = 0, float_io: bool = False) -> Graph:
    """The quantised IR Graph of a zoo model."""
    net = float_net(name, seed)
    return net.to_graph(float_io or net.float_io_default)


def ds_cnn_kws(seed: int = 0, float_io: bool = False) -> Graph:
    return build("ds_cnn_kws", seed, float_io)


def mobilenet_v1_vww(seed: int = 0, float_io: bool = False) -> Graph:
    return build("mobilenet_v1_vww", seed, float_io)


def resnet8_ic(seed: int = 0, float_io: bool = False) -> Graph:
    return build("resnet8_ic", seed, float_io)


def fc_autoencoder_ad(seed: int = 0, float_io: bool = False) -> Graph:
    return build("fc_autoencoder_ad", seed, float_io)
