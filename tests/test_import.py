"""Import of TFLite flatbuffers: round trips, and a clear error for every kind of bad input."""
from __future__ import annotations

import numpy as np
import pytest

from microtile.codegen.model_source import compile_model, validate
from microtile.errors import ModelFormatError, UnsupportedOperatorError
from microtile.importer.ir import Graph, Operator, Quant, Tensor
from microtile.check.oracle import run_tflm
from microtile.importer.tflite_format import load_tflite, write_tflite

MLPERF = ["kws_ref_model", "vww_96_int8", "pretrainedResnet_quant", "ad01_int8"]


def _q(scale=0.05, zp=0):
    return Quant(np.array([scale], np.float32), np.array([zp], np.int64))


def _conv_graph(dilation=1, batch=1, opcode="CONV_2D") -> Graph:
    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (4, 3, 3, 2)).astype(np.int8)
    wq = Quant(np.full(4, 0.01, np.float32), np.zeros(4, np.int64), 0)
    tensors = [
        Tensor(0, "x", (batch, 8, 8, 2), "int8", _q(0.1, 3)),
        Tensor(1, "w", w.shape, "int8", wq, w),
        Tensor(2, "b", (4,), "int32", Quant(np.full(4, 0.001, np.float32), np.zeros(4, np.int64)),
               np.arange(4, dtype=np.int32)),
        Tensor(3, "y", (batch, 8, 8, 4), "int8", _q(0.2, -5)),
    ]
    options = {"padding": "SAME", "stride_w": 1, "stride_h": 1, "fused_activation_function": "NONE",
               "dilation_w_factor": dilation, "dilation_h_factor": dilation}
    return Graph("conv", tensors, [Operator(0, opcode, [0, 1, 2], [3], options)], [0], [3])


@pytest.mark.shared
@pytest.mark.parametrize("name", MLPERF)
def test_mlperf_models_round_trip(shared_dir, name):
    path = shared_dir / "models" / "mlperf_tiny" / f"{name}.tflite"
    graph = load_tflite(path)
    again = load_tflite(write_tflite(graph))
    assert [op.options for op in again.operators] == [op.options for op in graph.operators]
    assert [t.shape for t in again.tensors] == [t.shape for t in graph.tensors]
    x = np.random.default_rng(0).integers(-128, 128, graph.tensor(graph.inputs[0]).shape).astype(np.int8)
    assert np.array_equal(run_tflm(path, [x])[0], run_tflm(write_tflite(graph), [x])[0])
    validate(graph)


def test_written_model_runs_on_tflm():
    data = write_tflite(_conv_graph())
    out = run_tflm(data, [np.ones((1, 8, 8, 2), np.int8)])[0]
    assert out.shape == (1, 8, 8, 4)


def test_not_a_tflite_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"this is not a flatbuffer at all")
    with pytest.raises(ModelFormatError, match="not a TFLite flatbuffer"):
        load_tflite(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        load_tflite(tmp_path / "absent.tflite")


def test_corrupted_tflite_file():
    data = bytearray(write_tflite(_conv_graph()))
    # Keep the identifier but smash the table offsets: parsing must fail cleanly.
    for i in range(8, len(data), 7):
        data[i] = 0xFF
    with pytest.raises((ModelFormatError, UnsupportedOperatorError)):
        validate(load_tflite(bytes(data)))


def test_truncated_tflite_file():
    data = write_tflite(_conv_graph())
    with pytest.raises(ModelFormatError, match="corrupted"):
        load_tflite(data[: len(data) // 3])


def test_unsupported_operator_is_named():
    g = _conv_graph()
    g.operators[0] = Operator(0, "TANH", [0], [3], {})
    graph = load_tflite(write_tflite(g))
    with pytest.raises(UnsupportedOperatorError) as err:
        compile_model(graph)
    msg = str(err.value)
    assert "#0 TANH" in msg and "not implemented" in msg and "CONV_2D" in msg


def test_dilated_conv_is_rejected():
    with pytest.raises(UnsupportedOperatorError, match="dilation"):
        compile_model(load_tflite(write_tflite(_conv_graph(dilation=2))))


def test_batch_greater_than_one_is_rejected():
    with pytest.raises(UnsupportedOperatorError, match="batch"):
        compile_model(load_tflite(write_tflite(_conv_graph(batch=2))))


# ------------------------------------------------ validation at import (issue 7)
# Every index, shape and dataflow edge is checked when the file is read, so a corrupted
# model gets one line naming the tensor or operator and never reaches the compiler or TFLM.

from microtile.targets.boards import load_board  # noqa: E402
from microtile.errors import DoesNotFitError, MicrotileError  # noqa: E402
from microtile.check.fuzz_model import model_layout  # noqa: E402


def _patched(graph: Graph, what: str, value: int, which: int = 0) -> bytes:
    """The written model with the ``which``-th integer field named ``what`` set to ``value``."""
    data = bytearray(write_tflite(graph))
    field = [f for f in model_layout(bytes(data))[1] if f.what == what][which]
    data[field.pos:field.pos + field.size] = (value & (1 << 8 * field.size) - 1).to_bytes(field.size, "little")
    return bytes(data)


def _refused(data: bytes, *words: str) -> str:
    with pytest.raises(ModelFormatError) as err:
        load_tflite(data)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_negative_graph_input_index_does_not_wrap_to_a_weight_tensor():
    # -2 used to index tensors[-2], the bias: the model compiled with a constant as its input.
    _refused(_patched(_conv_graph(), "graph input", -2), "graph input index -2", "out of range")


@pytest.mark.parametrize("what, value, words", [
    ("graph output", 4, ("graph output index 4",)),
    ("operator 0 input", 99, ("operator #0 CONV_2D input index 99",)),
    ("operator 0 input", -1, ("operator #0 CONV_2D: input 0 is absent (-1), which CONV_2D does not accept",)),
    ("operator 0 output", -1, ("operator #0 CONV_2D output index -1",)),
    ("tensor 1 buffer", 77, ("tensor #1 'w'", "buffer index 77")),
])
def test_every_index_is_checked(what, value, words):
    _refused(_patched(_conv_graph(), what, value), *words)


def test_opcode_index_is_checked():
    g = _conv_graph()
    relu_q = Tensor(4, "z", (1, 8, 8, 4), "int8", _q(0.2, -5))
    g.tensors.append(relu_q)
    g.operators.append(Operator(1, "RELU", [3], [4]))
    g.outputs = [4]
    _refused(_patched(g, "operator 1 opcode index", 5), "operator #1", "opcode index 5")


def test_optional_bias_may_be_absent():
    g = _conv_graph()
    g.operators[0].inputs[2] = -1
    assert load_tflite(write_tflite(g)).operators[0].inputs == [0, 1, -1]


def test_depthwise_bias_marked_absent_is_refused():
    """TFLM segfaults on a DEPTHWISE_CONV_2D whose bias is -1 (it may only be left out)."""
    g = _conv_graph(opcode="DEPTHWISE_CONV_2D")
    g.operators[0].inputs[2] = -1
    _refused(write_tflite(g), "operator #0 DEPTHWISE_CONV_2D: input 2 is absent (-1)")
    g.operators[0].inputs = [0, 1]
    assert load_tflite(write_tflite(g)).operators[0].inputs == [0, 1]


def test_operator_input_count_is_checked():
    g = _conv_graph(opcode="FULLY_CONNECTED")
    g.operators[0].options = {"fused_activation_function": "NONE"}
    g.operators[0].inputs = [0]
    _refused(write_tflite(g), "operator #0 FULLY_CONNECTED has 1 inputs", "takes 2 to 3 inputs")


@pytest.mark.parametrize("dim, words", [
    (-3, ("tensor #3 'y'", "negative dimension")),
    (0, ("tensor #3 'y'", "zero dimension")),
])
def test_shape_dimensions_are_checked(dim, words):
    _refused(_patched(_conv_graph(), "tensor 3 shape", dim, which=1), *words)


def test_byte_count_does_not_overflow():
    # 2**31-1 in three dimensions: 2**93 bytes, which an int64 product wraps to a small number.
    g = _conv_graph()
    g.tensors[3].shape = (1, (1 << 31) - 1, (1 << 31) - 1, (1 << 31) - 1)
    _refused(write_tflite(g), "tensor #3 'y'", "more than a TFLite file can hold")


def test_buffer_size_must_match_the_shape():
    g = _conv_graph()
    g.tensors[2].data = np.arange(5, dtype=np.int32)  # 5 values for a (4,) bias
    _refused(write_tflite(g), "tensor #2 'b'", "20 bytes", "needs 16")


def test_activation_too_big_for_the_board_is_refused_before_planning():
    g = _conv_graph()
    g.tensors[3].shape = (1, 512, 512, 4)  # 1 MiB output: legal TFLite, not on the F405's 128 KiB
    g.tensors[0].shape = (1, 512, 512, 2)
    with pytest.raises(DoesNotFitError, match="tensor #0 'x'.*RAM"):
        compile_model(load_tflite(write_tflite(g)), board=load_board("qemu"))


def test_tensor_read_before_it_is_written():
    g = _conv_graph()
    g.tensors.append(Tensor(4, "z", (1, 8, 8, 4), "int8", _q(0.2, -5)))
    g.operators.insert(0, Operator(0, "RELU", [3], [4]))  # reads the conv output before the conv
    g.operators[1].index = 1
    g.outputs = [4]
    _refused(write_tflite(g), "operator #0 RELU reads tensor #3 'y'", "not a graph input, a constant")


def test_tensor_written_twice():
    g = _conv_graph()
    g.operators.append(Operator(1, "RELU", [3], [3]))
    _refused(write_tflite(g), "operator #1 RELU writes tensor #3 'y' a second time")


def test_graph_output_that_nothing_writes():
    g = _conv_graph()
    g.tensors.append(Tensor(4, "z", (1, 8, 8, 4), "int8", _q(0.2, -5)))
    g.outputs = [3, 4]
    _refused(write_tflite(g), "graph output tensor #4 'z' is never written")


def test_constant_graph_input():
    g = _conv_graph()
    g.inputs = [1]
    _refused(write_tflite(g), "graph input tensor #1 'w' is a constant")


def test_zero_point_outside_the_type_range():
    g = _conv_graph()
    g.tensors[3].quant = _q(0.2, -4503599627370624)  # a flipped bit of an int64 zero point
    _refused(write_tflite(g), "tensor #3 'y'", "zero point outside the int8 range")


def test_nan_scale():
    g = _conv_graph()
    g.tensors[0].quant = _q(float("nan"), 0)
    _refused(write_tflite(g), "tensor #0 'x'", "NaN")


def test_requantisation_scale_beyond_int32_arithmetic_is_refused():
    # A weight scale of 7e35 (a flipped exponent bit): TFLM shifts by 1 << 110 there.
    g = _conv_graph()
    g.tensors[1].quant.scale[2] = np.float32(7.3e35)
    with pytest.raises(UnsupportedOperatorError, match=r"#0 CONV_2D.*2\*\*31"):
        compile_model(load_tflite(write_tflite(g)), "optimized")


def test_corrupted_vector_length_fails_fast():
    # A tensor count of ~2**31 must not become a two-billion-step loop.
    data = bytearray(write_tflite(_conv_graph()))
    field = next(f for f in model_layout(bytes(data))[1] if f.what == "graph input")
    length_pos = field.pos - 4  # a vector's length precedes its first element
    data[length_pos:length_pos + 4] = (0x7FFFFFF0).to_bytes(4, "little")
    with pytest.raises(ModelFormatError, match="corrupted"):
        load_tflite(bytes(data))


def test_errors_are_microtile_errors_with_exit_2(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.tflite"
    path.write_bytes(_patched(_conv_graph(), "graph input", -2))
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "compile", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.strip().count("\n") == 0 and "graph input index -2" in proc.stdout
    assert issubclass(ModelFormatError, MicrotileError)


def test_unknown_enum_option_value_is_refused():
    """A FULLY_CONNECTED quantized_bias_type of 40 (found by the fuzzer): TFLM stops on
    'Unsupported data type 40'; the import names the option."""
    g = _conv_graph()
    g.operators[0].options["fused_activation_function"] = 9  # ActivationFunctionType ends at 5
    _refused(write_tflite(g), "operator #0 CONV_2D: option fused_activation_function has the unknown value 9")
