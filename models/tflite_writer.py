"""Serialise a microtile IR Graph into a real TFLite flatbuffer (schema v3).

Options are written by reflection over the ``tflite`` package's generated builder
functions: an option key ``stride_w`` becomes ``<Table>AddStrideW``; enum-valued
keys (padding, fused activation, ...) hold the schema's enum names. The output is
deterministic: the same Graph always gives the same bytes.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import flatbuffers
import numpy as np
import tflite

from microtile.errors import ModelFormatError
from microtile.ir import Graph, Operator, Tensor

# opcode -> builtin options table (None: the operator has no options table).
OPTIONS_TABLE: dict[str, str | None] = {
    "CONV_2D": "Conv2DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "MAX_POOL_2D": "Pool2DOptions",
    "ADD": "AddOptions",
    "MUL": "MulOptions",
    "SUB": "SubOptions",
    "RESHAPE": "ReshapeOptions",
    "SOFTMAX": "SoftmaxOptions",
    "LOG_SOFTMAX": "LogSoftmaxOptions",
    "PAD": "PadOptions",
    "MEAN": "ReducerOptions",
    "CONCATENATION": "ConcatenationOptions",
    "TRANSPOSE": "TransposeOptions",
    "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighborOptions",
    "HARD_SWISH": "HardSwishOptions",
    "QUANTIZE": "QuantizeOptions",
    "DEQUANTIZE": "DequantizeOptions",
    "SQUARED_DIFFERENCE": "SquaredDifferenceOptions",
    "ARG_MAX": "ArgMaxOptions",
    "RELU": None,
    "RELU6": None,
    "LOGISTIC": None,
    "TANH": None,
}

# option key -> enum class whose member names the IR uses as values.
ENUM_FIELDS: dict[str, type] = {
    "padding": tflite.Padding,
    "fused_activation_function": tflite.ActivationFunctionType,
    "weights_format": tflite.FullyConnectedOptionsWeightsFormat,
    "output_type": tflite.TensorType,
}

TENSOR_TYPES: dict[str, int] = {
    "float32": tflite.TensorType.FLOAT32,
    "int8": tflite.TensorType.INT8,
    "uint8": tflite.TensorType.UINT8,
    "int16": tflite.TensorType.INT16,
    "int32": tflite.TensorType.INT32,
    "int64": tflite.TensorType.INT64,
    "bool": tflite.TensorType.BOOL,
}


def _module(name: str) -> ModuleType:
    # tflite/__init__ star-imports every module, shadowing module names with
    # classes, so fetch the generated module itself.
    return importlib.import_module(f"tflite.{name}")


def _camel(snake: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in snake.split("_"))


def _enum_value(enum_cls: type, name: str, what: str) -> int:
    value = getattr(enum_cls, str(name), None)
    if not isinstance(value, int):
        raise ModelFormatError(f"{what}: {name!r} is not a {enum_cls.__name__} name; "
                               f"use one of the schema's enum names")
    return value


def _byte_vector(b: flatbuffers.Builder, raw: bytes, alignment: int = 16) -> int:
    # Weights aligned to 16 bytes so kernels may read them with wide loads.
    b.StartVector(1, len(raw), alignment)
    b.head = b.head - len(raw)
    b.Bytes[b.head:b.head + len(raw)] = raw
    b.vectorNumElems = len(raw)
    return b.EndVector()


def _offset_vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _write_options(b: flatbuffers.Builder, op: Operator) -> tuple[int, int]:
    """Returns (builtin_options_type, offset) ((0, 0) if the op has no table)."""
    if op.opcode not in OPTIONS_TABLE:
        raise ModelFormatError(f"operator #{op.index} {op.opcode}: the zoo writer has no options "
                               f"mapping; add it to OPTIONS_TABLE in models/tflite_writer.py")
    table = OPTIONS_TABLE[op.opcode]
    if table is None:
        if op.options:
            raise ModelFormatError(f"operator #{op.index} {op.opcode} takes no options, got {op.options}")
        return 0, 0
    mod = _module(table)
    # Vectors must be built before the table is started.
    vectors: dict[str, int] = {}
    for key, value in sorted(op.options.items()):
        if isinstance(value, (list, tuple, np.ndarray)):
            vectors[key] = b.CreateNumpyVector(np.asarray(value, dtype=np.int32))
    getattr(mod, f"{table}Start")(b)
    for key, value in sorted(op.options.items()):
        adder = getattr(mod, f"{table}Add{_camel(key)}", None)
        if adder is None:
            raise ModelFormatError(f"operator #{op.index} {op.opcode}: option {key!r} is not a "
                                   f"field of {table}")
        if key in vectors:
            adder(b, vectors[key])
        elif key in ENUM_FIELDS:
            adder(b, _enum_value(ENUM_FIELDS[key], value, f"operator #{op.index} {op.opcode} {key}"))
        elif isinstance(value, (bool, np.bool_)):
            adder(b, bool(value))
        elif isinstance(value, (float, np.floating)):
            adder(b, float(value))
        else:
            adder(b, int(value))
    offset = getattr(mod, f"{table}End")(b)
    return _enum_value(tflite.BuiltinOptions, table, f"operator {op.opcode}"), offset


def _write_quant(b: flatbuffers.Builder, t: Tensor) -> int:
    Q = _module("QuantizationParameters")
    assert t.quant is not None
    scale = b.CreateNumpyVector(np.asarray(t.quant.scale, dtype=np.float32).reshape(-1))
    zp = b.CreateNumpyVector(np.asarray(t.quant.zero_point, dtype=np.int64).reshape(-1))
    Q.QuantizationParametersStart(b)
    Q.QuantizationParametersAddScale(b, scale)
    Q.QuantizationParametersAddZeroPoint(b, zp)
    Q.QuantizationParametersAddQuantizedDimension(b, int(t.quant.axis))
    return Q.QuantizationParametersEnd(b)


def write_tflite(graph: Graph, description: str = "microtile zoo") -> bytes:
    """IR Graph -> .tflite bytes that TFLM (and TFLite) load."""
    T, B, OC, OP, SG, M = (_module(n) for n in
                           ("Tensor", "Buffer", "OperatorCode", "Operator", "SubGraph", "Model"))
    b = flatbuffers.Builder(1 << 16)

    # Buffer 0 is the schema's empty sentinel; every constant gets its own buffer.
    buffer_offsets: list[int] = []
    B.BufferStart(b)
    buffer_offsets.append(B.BufferEnd(b))
    tensor_buffer: list[int] = []
    for t in graph.tensors:
        if t.data is None:
            tensor_buffer.append(0)
            continue
        arr = np.ascontiguousarray(np.asarray(t.data).astype(t.dtype, copy=False))
        if tuple(arr.shape) != tuple(t.shape) and arr.size != int(np.prod(t.shape, dtype=np.int64)):
            raise ModelFormatError(f"tensor {t.name}: data shape {arr.shape} does not match {t.shape}")
        vec = _byte_vector(b, arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
        B.BufferStart(b)
        B.BufferAddData(b, vec)
        tensor_buffer.append(len(buffer_offsets))
        buffer_offsets.append(B.BufferEnd(b))

    tensor_offsets = []
    for t, buf in zip(graph.tensors, tensor_buffer):
        if t.dtype not in TENSOR_TYPES:
            raise ModelFormatError(f"tensor {t.name}: dtype {t.dtype} has no TFLite type")
        name = b.CreateString(t.name)
        shape = b.CreateNumpyVector(np.asarray(t.shape, dtype=np.int32))
        quant = _write_quant(b, t) if t.quant is not None else None
        T.TensorStart(b)
        T.TensorAddShape(b, shape)
        T.TensorAddType(b, TENSOR_TYPES[t.dtype])
        T.TensorAddBuffer(b, buf)
        T.TensorAddName(b, name)
        if quant is not None:
            T.TensorAddQuantization(b, quant)
        tensor_offsets.append(T.TensorEnd(b))

    # Operator codes in first-use order.
    opcodes: list[str] = []
    for op in graph.operators:
        if op.opcode not in opcodes:
            opcodes.append(op.opcode)
    code_offsets = []
    for name in opcodes:
        code = _enum_value(tflite.BuiltinOperator, name, "operator code")
        OC.OperatorCodeStart(b)
        OC.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        OC.OperatorCodeAddBuiltinCode(b, code)
        OC.OperatorCodeAddVersion(b, 1)
        code_offsets.append(OC.OperatorCodeEnd(b))

    op_offsets = []
    for op in graph.operators:
        opt_type, opt_off = _write_options(b, op)
        ins = b.CreateNumpyVector(np.asarray(op.inputs, dtype=np.int32))
        outs = b.CreateNumpyVector(np.asarray(op.outputs, dtype=np.int32))
        OP.OperatorStart(b)
        OP.OperatorAddOpcodeIndex(b, opcodes.index(op.opcode))
        OP.OperatorAddInputs(b, ins)
        OP.OperatorAddOutputs(b, outs)
        if opt_type:
            OP.OperatorAddBuiltinOptionsType(b, opt_type)
            OP.OperatorAddBuiltinOptions(b, opt_off)
        op_offsets.append(OP.OperatorEnd(b))

    tensors_vec = _offset_vector(b, tensor_offsets)
    ops_vec = _offset_vector(b, op_offsets)
    in_vec = b.CreateNumpyVector(np.asarray(graph.inputs, dtype=np.int32))
    out_vec = b.CreateNumpyVector(np.asarray(graph.outputs, dtype=np.int32))
    sg_name = b.CreateString(graph.name)
    SG.SubGraphStart(b)
    SG.SubGraphAddTensors(b, tensors_vec)
    SG.SubGraphAddInputs(b, in_vec)
    SG.SubGraphAddOutputs(b, out_vec)
    SG.SubGraphAddOperators(b, ops_vec)
    SG.SubGraphAddName(b, sg_name)
    subgraph = SG.SubGraphEnd(b)

    codes_vec = _offset_vector(b, code_offsets)
    subgraphs_vec = _offset_vector(b, [subgraph])
    buffers_vec = _offset_vector(b, buffer_offsets)
    desc = b.CreateString(description)
    M.ModelStart(b)
    M.ModelAddVersion(b, 3)
    M.ModelAddOperatorCodes(b, codes_vec)
    M.ModelAddSubgraphs(b, subgraphs_vec)
    M.ModelAddDescription(b, desc)
    M.ModelAddBuffers(b, buffers_vec)
    model = M.ModelEnd(b)
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())
