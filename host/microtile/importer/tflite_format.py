"""TFLite flatbuffers <-> graph IR.

``load_tflite`` imports a .tflite file into the IR and ``write_tflite`` writes an IR
graph back out as a real TFLite flatbuffer (the model zoo and the per-operator tests
build their models that way). Both use the schema classes of the ``tflite`` package;
builtin options are converted generically: every field of the options table becomes
a snake_case key, enum fields become their schema names.
"""
from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import flatbuffers
import numpy as np
import tflite
from tflite.utils import BUILTIN_OPCODE2NAME

from microtile.errors import ModelFormatError, UnsupportedOperatorError
from microtile.importer.ir import Graph, Operator, Quant, Tensor

_DTYPES = {
    tflite.TensorType.FLOAT32: "float32",
    tflite.TensorType.FLOAT16: "float16",
    tflite.TensorType.INT32: "int32",
    tflite.TensorType.UINT8: "uint8",
    tflite.TensorType.INT64: "int64",
    tflite.TensorType.BOOL: "bool",
    tflite.TensorType.INT16: "int16",
    tflite.TensorType.INT8: "int8",
}
_TYPE_CODES = {name: code for code, name in _DTYPES.items()}
_OPCODES = {name: code for code, name in BUILTIN_OPCODE2NAME.items()}

# Option fields whose values are schema enums, by CamelCase field name.
_ENUM_FIELDS = {
    "Padding": tflite.Padding,
    "FusedActivationFunction": tflite.ActivationFunctionType,
    "WeightsFormat": tflite.FullyConnectedOptionsWeightsFormat,
    "QuantizedBiasType": tflite.TensorType,
}

# Options table name for each operator whose options we read and write.
OPTIONS_TABLE = {
    "CONV_2D": "Conv2DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "MAX_POOL_2D": "Pool2DOptions",
    "ADD": "AddOptions",
    "MUL": "MulOptions",
    "RESHAPE": "ReshapeOptions",
    "SOFTMAX": "SoftmaxOptions",
    "LOG_SOFTMAX": "LogSoftmaxOptions",
    "PAD": "PadOptions",
    "PADV2": "PadV2Options",
    "MEAN": "ReducerOptions",
    "CONCATENATION": "ConcatenationOptions",
    "TRANSPOSE": "TransposeOptions",
    "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighborOptions",
    "HARD_SWISH": "HardSwishOptions",
    "QUANTIZE": "QuantizeOptions",
    "DEQUANTIZE": "DequantizeOptions",
}
_SKIP_METHODS = {"Init"}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _schema(table: str):
    """The flatc-generated module of a schema table (builder functions live there;
    ``tflite.X`` itself is shadowed by the class of the same name)."""
    return importlib.import_module(f"tflite.{table}")


def _options_class(table: str):
    return getattr(_schema(table), table)


def _read_options(op_fb, table: str) -> dict:
    raw = op_fb.BuiltinOptions()
    if raw is None:
        return {}
    cls = _options_class(table)
    obj = cls()
    obj.Init(raw.Bytes, raw.Pos)
    options = {}
    for name in dir(cls):
        if (name.startswith("_") or name in _SKIP_METHODS or name.startswith("GetRootAs")
                or name.endswith(("Length", "IsNone", "AsNumpy", "BufferHasIdentifier"))):
            continue
        if hasattr(cls, name + "AsNumpy"):
            values = getattr(obj, name + "AsNumpy")()
            value = [int(v) for v in values] if isinstance(values, np.ndarray) else []
        else:
            value = getattr(obj, name)()
            if name in _ENUM_FIELDS:
                value = _enum_names(_ENUM_FIELDS[name]).get(value, value)
        options[_snake(name)] = value
    return options


def load_tflite(model: bytes | str | Path) -> Graph:
    """Import a TFLite flatbuffer. Raises ModelFormatError for anything unreadable."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.is_dir():
            raise ModelFormatError(f"{path}: is a directory; give the .tflite file itself")
        if not path.is_file():
            raise ModelFormatError(f"{path}: no such file")
        try:
            data, name = path.read_bytes(), path.stem
        except OSError as exc:
            raise ModelFormatError(f"{path}: cannot read it ({exc.strerror})") from None
    else:
        data, name = bytes(model), "model"
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFormatError(
            f"{name}: not a TFLite flatbuffer (no 'TFL3' identifier); "
            "give an int8 .tflite file as written by the TFLite converter"
        )
    try:
        return _parse(data, name)
    except (UnsupportedOperatorError, ModelFormatError):
        raise
    except Exception as exc:  # a corrupt buffer fails deep inside flatbuffers
        detail = " ".join(str(exc).split())  # one line, whatever the library said
        raise ModelFormatError(f"{name}: corrupted TFLite file ({type(exc).__name__}: {detail})") from exc


_INT_RANGES = {d: (int(np.iinfo(d).min), int(np.iinfo(d).max)) for d in ("int8", "uint8", "int16", "int32")}

# TFLite's flatbuffers hold less than 2 GiB; a larger tensor is a corrupted shape.
MAX_TENSOR_BYTES = (1 << 31) - 1

# For each operator microtile implements: how many inputs it takes (min, max; max None:
# any number) and which may be absent (index -1), as TFLM's Prepare functions check
# them; every one has one output. Operators outside this table are refused at compile
# time as not implemented, so their inputs are left to that message.
ARITY: dict[str, tuple[int, int | None, set[int]]] = {
    # DEPTHWISE_CONV_2D may omit its bias, but not mark it -1: TFLM then reads tensor -1
    # and segfaults (found by microtile.check.fuzz_model on the MLPerf KWS model).
    "CONV_2D": (2, 3, {2}), "DEPTHWISE_CONV_2D": (2, 3, set()), "FULLY_CONNECTED": (2, 3, {2}),
    "RESHAPE": (1, 2, {1}), "PADV2": (2, 3, {2}), "CONCATENATION": (1, None, set()),
    **{op: (2, 2, set()) for op in ("ADD", "MUL", "PAD", "MEAN", "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR")},
    **{op: (1, 1, set()) for op in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "SOFTMAX", "LOG_SOFTMAX", "RELU", "RELU6",
                                    "LOGISTIC", "HARD_SWISH", "QUANTIZE", "DEQUANTIZE")},
}


def _count(data: bytes, what: str, n: int, name: str) -> int:
    """A vector length read from the file: each element takes at least 4 bytes, so a
    longer vector is a corrupted length (and must not become a 4-billion-step loop)."""
    if n * 4 > len(data):
        raise ModelFormatError(f"{name}: corrupted TFLite file ({what}: {n} entries in a {len(data)}-byte file)")
    return n


def _index_list(values, what: str, n: int, name: str, allow_absent: bool = False) -> list[int]:
    out = [int(x) for x in values]
    for x in out:
        if not (0 <= x < n or (allow_absent and x == -1)):
            raise ModelFormatError(f"{name}: {what} index {x} is out of range (0..{n - 1})")
    return out


def _read_tensor(data: bytes, model, t, i: int, num_buffers: int, name: str) -> Tensor:
    tname = t.Name().decode("utf-8", "replace") if t.Name() else f"t{i}"
    where = f"{name}: tensor #{i} {tname!r}"
    type_code = t.Type()
    if type_code not in _DTYPES:
        raise ModelFormatError(f"{where} has unsupported type code {type_code}")
    dtype = _DTYPES[type_code]
    if t.IsVariable():
        raise ModelFormatError(f"{where} is a variable (stateful) tensor; microtile runs stateless models")
    if t.Sparsity() is not None:
        raise ModelFormatError(f"{where} is sparse; microtile reads dense weights (convert without sparsity)")
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if _count(data, "shape", t.ShapeLength(), name) else ()
    if any(d < 0 for d in shape):
        raise ModelFormatError(f"{where} has a negative dimension in shape {list(shape)}")
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise ModelFormatError(f"{where}: shape {list(shape)} needs {nbytes:,} bytes (more than a TFLite file can hold)")

    quant = None
    q = t.Quantization()
    if q is not None and q.ScaleLength() > 0:
        scales = q.ScaleAsNumpy().astype(np.float32)
        if q.ZeroPointLength() != scales.size:  # TFLite's rule; TFLM would read the tensor as unquantised
            raise ModelFormatError(f"{where} has {scales.size} quantisation scales but {q.ZeroPointLength()} zero points")
        zp = q.ZeroPointAsNumpy()
        axis = int(q.QuantizedDimension())
        if scales.size > 1 and not (0 <= axis < len(shape) and shape[axis] == scales.size):
            raise ModelFormatError(f"{where} has {scales.size} per-channel scales on dimension {axis} of shape "
                                   f"{list(shape)}")
        zp = np.asarray(zp, dtype=np.int64)
        if not np.all(np.isfinite(scales) & (scales >= 0)):
            raise ModelFormatError(f"{where} has a quantisation scale that is negative, NaN or infinite")
        if dtype in _INT_RANGES:
            lo, hi = _INT_RANGES[dtype]
            if zp.min() < lo or zp.max() > hi:
                raise ModelFormatError(f"{where} has a zero point outside the {dtype} range [{lo}, {hi}]")
        quant = Quant(scales, zp, axis)

    buffer = t.Buffer()
    if not 0 <= buffer < num_buffers:
        raise ModelFormatError(f"{where}: buffer index {buffer} is out of range (0..{num_buffers - 1})")
    tensor_data = None
    buf = model.Buffers(buffer)
    if buf is not None and buf.DataLength() > 0:
        raw = buf.DataAsNumpy().tobytes()
        if len(raw) != nbytes:
            raise ModelFormatError(f"{where}: its buffer holds {len(raw)} bytes, but shape {list(shape)} {dtype} "
                                   f"needs {nbytes}")
        tensor_data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
    elif buf is not None and buf.Offset() > 0:
        raise ModelFormatError(f"{where} uses external buffer offsets (>2 GB models)")
    if tensor_data is None and 0 in shape:
        raise ModelFormatError(f"{where} has a zero dimension in shape {list(shape)}; microtile runs tensors "
                               "with at least one element")
    return Tensor(i, tname, shape, dtype, quant, tensor_data)


def _read_every_field(data: bytes) -> None:
    """Read every table, vector and string of the file once, as the TFLM Python runtime
    does when it loads a model: an offset that points outside the file raises here.
    (TFLM's C++ side does not verify the flatbuffer; it would read out of bounds.)"""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))


def _parse(data: bytes, name: str) -> Graph:
    """Read the flatbuffer, checking every index and size against the file before it
    is used (a corrupted file must fail here, never later in the compiler or TFLM)."""
    _read_every_field(data)
    model = tflite.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() != 1:
        raise ModelFormatError(
            f"{name}: {model.SubgraphsLength()} subgraphs; microtile compiles single-subgraph models "
            "(no control flow)"
        )
    sub = model.Subgraphs(0)
    num_buffers = _count(data, "buffers", model.BuffersLength(), name)
    num_codes = _count(data, "operator codes", model.OperatorCodesLength(), name)
    num_tensors = _count(data, "tensors", sub.TensorsLength(), name)
    tensors = [_read_tensor(data, model, sub.Tensors(i), i, num_buffers, name) for i in range(num_tensors)]

    operators = []
    for i in range(_count(data, "operators", sub.OperatorsLength(), name)):
        op_fb = sub.Operators(i)
        code_index = op_fb.OpcodeIndex()
        if not 0 <= code_index < num_codes:
            raise ModelFormatError(f"{name}: operator #{i}: opcode index {code_index} is out of range "
                                   f"(0..{num_codes - 1})")
        code_fb = model.OperatorCodes(code_index)
        code = max(code_fb.BuiltinCode(), code_fb.DeprecatedBuiltinCode())
        if code == tflite.BuiltinOperator.CUSTOM:
            custom = code_fb.CustomCode().decode("utf-8", "replace") if code_fb.CustomCode() else "?"
            raise UnsupportedOperatorError(i, f"CUSTOM({custom})", "custom operators are not supported")
        opcode = BUILTIN_OPCODE2NAME.get(code, f"BUILTIN_{code}")
        where = f"{name}: operator #{i} {opcode}"
        if op_fb.CustomOptionsLength() > 0:  # TFLM refuses a builtin operator with custom options
            raise ModelFormatError(f"{where} carries custom options, which a builtin operator cannot have")
        table = OPTIONS_TABLE.get(opcode)
        options_type = op_fb.BuiltinOptionsType()
        if table and options_type not in (0, getattr(tflite.BuiltinOptions, table)):
            raise ModelFormatError(f"{where} carries options of type {options_type}, not {table}")
        options = _read_options(op_fb, table) if table else {}
        for field in map(_snake, _ENUM_FIELDS):
            if isinstance(options.get(field), int):  # not a name of the schema's enum
                raise ModelFormatError(f"{where}: option {field} has the unknown value {options[field]}")
        inputs = _index_list(op_fb.InputsAsNumpy() if _count(data, "inputs", op_fb.InputsLength(), name) else [],
                             f"operator #{i} {opcode} input", num_tensors, name, allow_absent=True)
        outputs = _index_list(op_fb.OutputsAsNumpy() if _count(data, "outputs", op_fb.OutputsLength(), name) else [],
                              f"operator #{i} {opcode} output", num_tensors, name)
        if opcode in ARITY:
            lo, hi, optional = ARITY[opcode]
            if not lo <= len(inputs) <= (hi or len(inputs)) or len(outputs) != 1:
                takes = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi else f"{lo} or more"
                raise ModelFormatError(f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; "
                                       f"{opcode} takes {takes} inputs and 1 output")
            for k, x in enumerate(inputs):
                if x == -1 and k not in optional:
                    raise ModelFormatError(f"{where}: input {k} is absent (-1), which {opcode} does not accept")
        operators.append(Operator(i, opcode, inputs, outputs, options))

    graph_inputs = _index_list(sub.InputsAsNumpy() if _count(data, "inputs", sub.InputsLength(), name) else [],
                               "graph input", num_tensors, name)
    graph_outputs = _index_list(sub.OutputsAsNumpy() if _count(data, "outputs", sub.OutputsLength(), name) else [],
                                "graph output", num_tensors, name)
    graph = Graph(name, tensors, operators, graph_inputs, graph_outputs)
    graph.check_structure()
    return graph


# ---------------------------------------------------------------- writing


def _write_options(builder: flatbuffers.Builder, op: Operator) -> tuple[int, int]:
    """Returns (BuiltinOptions type code, table offset)."""
    table = OPTIONS_TABLE.get(op.opcode)
    if not op.options:
        return 0, 0
    if table is None:
        raise ValueError(f"writer does not know the options of {op.opcode}")
    module = _schema(table)
    vectors = {}
    for key, value in op.options.items():  # vectors must be built before the table starts
        if isinstance(value, (list, tuple)):
            vectors[key] = builder.CreateNumpyVector(np.asarray(value, dtype=np.int32))
    getattr(module, f"{table}Start")(builder)
    for key, value in op.options.items():
        field = _camel(key)
        adder = getattr(module, f"{table}Add{field}", None)
        if adder is None:
            raise ValueError(f"{op.opcode}: {table} has no field {key!r}")
        if key in vectors:
            value = vectors[key]
        elif field in _ENUM_FIELDS and isinstance(value, str):
            value = getattr(_ENUM_FIELDS[field], value)
        adder(builder, value)
    return getattr(tflite.BuiltinOptions, table), getattr(module, f"{table}End")(builder)


def _aligned_bytes(builder: flatbuffers.Builder, raw: bytes) -> int:
    # 16-byte alignment as the TFLite converter does, so weights can be read in place.
    builder.StartVector(1, len(raw), 16)
    builder.head -= len(raw)
    builder.Bytes[builder.head:builder.head + len(raw)] = raw
    return builder.EndVector()


def write_tflite(graph: Graph, description: str = "microtile") -> bytes:
    """Write an IR graph as a TFLite flatbuffer (schema version 3)."""
    b = flatbuffers.Builder(1024)

    buffer_offsets = []  # buffer 0 is the empty sentinel, by convention
    tensor_buffer = {}
    for t in graph.tensors:
        if t.data is not None:
            raw = np.ascontiguousarray(t.data, dtype=np.dtype(t.dtype).newbyteorder("<")).tobytes()
            tensor_buffer[t.index] = len(buffer_offsets) + 1
            buffer_offsets.append(_aligned_bytes(b, raw))
    buffers = []
    for data_off in [None] + buffer_offsets:
        _schema("Buffer").BufferStart(b)
        if data_off is not None:
            _schema("Buffer").BufferAddData(b, data_off)
        buffers.append(_schema("Buffer").BufferEnd(b))

    tensor_offsets = []
    for t in graph.tensors:
        name = b.CreateString(t.name)
        shape = b.CreateNumpyVector(np.asarray(t.shape, dtype=np.int32))
        quant = None
        if t.quant is not None:
            scale = b.CreateNumpyVector(np.asarray(t.quant.scale, dtype=np.float32))
            zp = b.CreateNumpyVector(np.asarray(t.quant.zero_point, dtype=np.int64))
            _schema("QuantizationParameters").QuantizationParametersStart(b)
            _schema("QuantizationParameters").QuantizationParametersAddScale(b, scale)
            _schema("QuantizationParameters").QuantizationParametersAddZeroPoint(b, zp)
            _schema("QuantizationParameters").QuantizationParametersAddQuantizedDimension(b, t.quant.axis)
            quant = _schema("QuantizationParameters").QuantizationParametersEnd(b)
        _schema("Tensor").TensorStart(b)
        _schema("Tensor").TensorAddShape(b, shape)
        _schema("Tensor").TensorAddType(b, _TYPE_CODES[t.dtype])
        _schema("Tensor").TensorAddBuffer(b, tensor_buffer.get(t.index, 0))
        _schema("Tensor").TensorAddName(b, name)
        if quant is not None:
            _schema("Tensor").TensorAddQuantization(b, quant)
        tensor_offsets.append(_schema("Tensor").TensorEnd(b))

    opcodes = sorted({op.opcode for op in graph.operators}, key=lambda n: _OPCODES[n])
    opcode_index = {name: i for i, name in enumerate(opcodes)}
    code_offsets = []
    for name in opcodes:
        code = _OPCODES[name]
        _schema("OperatorCode").OperatorCodeStart(b)
        # Codes above 127 live only in builtin_code; the deprecated byte holds the placeholder.
        _schema("OperatorCode").OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        _schema("OperatorCode").OperatorCodeAddBuiltinCode(b, code)
        _schema("OperatorCode").OperatorCodeAddVersion(b, 1)
        code_offsets.append(_schema("OperatorCode").OperatorCodeEnd(b))

    op_offsets = []
    for op in graph.operators:
        inputs = b.CreateNumpyVector(np.asarray(op.inputs, dtype=np.int32))
        outputs = b.CreateNumpyVector(np.asarray(op.outputs, dtype=np.int32))
        opt_type, opt_off = _write_options(b, op)
        _schema("Operator").OperatorStart(b)
        _schema("Operator").OperatorAddOpcodeIndex(b, opcode_index[op.opcode])
        _schema("Operator").OperatorAddInputs(b, inputs)
        _schema("Operator").OperatorAddOutputs(b, outputs)
        if opt_type:
            _schema("Operator").OperatorAddBuiltinOptionsType(b, opt_type)
            _schema("Operator").OperatorAddBuiltinOptions(b, opt_off)
        op_offsets.append(_schema("Operator").OperatorEnd(b))

    def vector_of(offsets: list[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    sub_tensors = vector_of(tensor_offsets)
    sub_ops = vector_of(op_offsets)
    sub_in = b.CreateNumpyVector(np.asarray(graph.inputs, dtype=np.int32))
    sub_out = b.CreateNumpyVector(np.asarray(graph.outputs, dtype=np.int32))
    sub_name = b.CreateString(graph.name)
    _schema("SubGraph").SubGraphStart(b)
    _schema("SubGraph").SubGraphAddTensors(b, sub_tensors)
    _schema("SubGraph").SubGraphAddInputs(b, sub_in)
    _schema("SubGraph").SubGraphAddOutputs(b, sub_out)
    _schema("SubGraph").SubGraphAddOperators(b, sub_ops)
    _schema("SubGraph").SubGraphAddName(b, sub_name)
    subgraph = _schema("SubGraph").SubGraphEnd(b)

    codes_vec = vector_of(code_offsets)
    subs_vec = vector_of([subgraph])
    bufs_vec = vector_of(buffers)
    desc = b.CreateString(description)
    _schema("Model").ModelStart(b)
    _schema("Model").ModelAddVersion(b, 3)
    _schema("Model").ModelAddOperatorCodes(b, codes_vec)
    _schema("Model").ModelAddSubgraphs(b, subs_vec)
    _schema("Model").ModelAddDescription(b, desc)
    _schema("Model").ModelAddBuffers(b, bufs_vec)
    b.Finish(_schema("Model").ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())
