"""Import of TFLite flatbuffers: round trips, and a clear error for every kind of bad input."""
from __future__ import annotations

import numpy as np
import pytest

from microtile.codegen import compile_model, validate
from microtile.errors import ModelFormatError, UnsupportedOperatorError
from microtile.ir import Graph, Operator, Quant, Tensor
from microtile.oracle import run_tflm
from microtile.tflite_format import load_tflite, write_tflite

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
