"""The model zoo: every model is a real .tflite that TFLM runs, its quantisation
is honest (the int8 model tracks the float network), and the MLPerf-like models
have the architecture they claim."""
from __future__ import annotations

import numpy as np
import pytest
import tflite

from microtile.importer.ir import Graph
from microtile.check.oracle import TflmOracle
from microtile.importer.tflite_format import load_tflite
from microtile_models import zoo
from microtile_models.build import main as build_main
from microtile_models.build import model_bytes, zoo_model_bytes
from microtile_models.float_graph import FloatNet

ALL = zoo.names()
MLPERF = list(zoo.MLPERF_MODELS)
SINGLE = list(zoo.SINGLE_OP_MODELS) + list(zoo.UNSUPPORTED_MODELS)


def _quantise(x: np.ndarray, graph: Graph, index: int) -> np.ndarray:
    t = graph.tensors[index]
    if t.dtype == "float32":
        return x.astype(np.float32)
    return np.clip(np.floor(x / t.scale + 0.5) + t.zero_point, -128, 127).astype(np.int8)


def _dequantise(q: np.ndarray, graph: Graph, index: int) -> np.ndarray:
    t = graph.tensors[index]
    if t.dtype == "float32":
        return q.astype(np.float32)
    return (q.astype(np.float32) - t.zero_point) * t.scale


def _run(name: str, count: int, seed: int = 100) -> tuple[FloatNet, Graph, np.ndarray, np.ndarray, np.ndarray]:
    """(net, graph, float outputs, dequantised TFLM outputs, output clip mask) of output 0.

    The float net runs on the dequantised int8 input, so input rounding is not
    counted as quantisation error (it is, for float-boundary models).
    """
    net = zoo.float_net(name)
    graph = net.to_graph(net.float_io_default)
    oracle = TflmOracle(zoo_model_bytes(name))
    xs = [net.random_inputs(count, tid, seed=seed + i) for i, tid in enumerate(net.inputs)]
    ref, got = [], []
    for n in range(count):
        q_in = [_quantise(x[n:n + 1], graph, gi) for x, gi in zip(xs, graph.inputs)]
        f_in = [_dequantise(q, graph, gi) for q, gi in zip(q_in, graph.inputs)]
        got.append(_dequantise(oracle(q_in)[0], graph, graph.outputs[0]))
        ref.append(net.forward(f_in)[0])
    ref_a, got_a = np.concatenate(ref), np.concatenate(got)
    # The int8 output tensor (before any DEQUANTIZE) bounds what the model can represent.
    out_q = graph.outputs[0]
    if graph.tensors[out_q].dtype == "float32":
        out_q = next(op.inputs[0] for op in graph.operators if op.outputs == [out_q])
    t = graph.tensors[out_q]
    lo, hi = (-128 - t.zero_point) * t.scale, (127 - t.zero_point) * t.scale
    in_range = (ref_a >= lo - t.scale / 2) & (ref_a <= hi + t.scale / 2)
    return net, graph, ref_a, got_a, in_range


@pytest.mark.parametrize("name", ALL)
def test_model_is_a_tflite_that_tflm_runs(name: str) -> None:
    data = zoo_model_bytes(name)
    assert data[4:8] == b"TFL3"
    model = tflite.Model.GetRootAs(data, 0)
    assert model.Version() == 3 and model.SubgraphsLength() == 1
    graph = zoo.build(name)
    assert model.Subgraphs(0).OperatorsLength() == len(graph.operators)

    oracle = TflmOracle(data)
    rng = np.random.default_rng(1)
    inputs = []
    for gi in graph.inputs:
        t = graph.tensors[gi]
        if t.dtype == "int8":
            inputs.append(rng.integers(-128, 128, size=t.shape, dtype=np.int8))
        else:
            inputs.append(rng.uniform(-1, 1, size=t.shape).astype(np.float32))
    outs = oracle(inputs)
    assert len(outs) == len(graph.outputs)
    for out, go in zip(outs, graph.outputs):
        assert out.shape == graph.tensors[go].shape
        assert out.dtype == np.dtype(graph.tensors[go].dtype)


@pytest.mark.parametrize("name", ALL)
def test_import_round_trip_matches_the_built_graph(name: str) -> None:
    built = zoo.build(name)
    loaded = load_tflite(zoo_model_bytes(name))
    assert [op.opcode for op in loaded.operators] == [op.opcode for op in built.operators]
    for a, b in zip(built.operators, loaded.operators):
        assert a.inputs == b.inputs and a.outputs == b.outputs
        for key, value in a.options.items():
            assert b.options[key] == (list(value) if isinstance(value, tuple) else value), (a.opcode, key)
    for a, b in zip(built.tensors, loaded.tensors):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
        if a.data is not None:
            assert np.array_equal(a.data, b.data)
        if a.quant is not None:
            assert np.array_equal(a.quant.scale, b.quant.scale)
            assert np.array_equal(a.quant.zero_point, b.quant.zero_point)
            assert a.quant.axis == b.quant.axis


@pytest.mark.parametrize("name", MLPERF)
def test_mlperf_model_tracks_its_float_network(name: str) -> None:
    _, _, ref, got, _ = _run(name, 12)
    err = got - ref
    # Signal: how much the float output moves between inputs; noise: int8 error.
    signal = ref.std(axis=0).mean()
    rmse = np.sqrt((err ** 2).mean())
    corr = np.corrcoef(ref.ravel(), got.ravel())[0, 1]
    # Random deep nets amplify rounding noise more than trained ones; 0.5 still
    # fails any real quantisation bug (wrong scale, zero point or bias: ratio >= 1).
    assert rmse < 0.5 * signal, f"int8 rmse {rmse:.4f} vs across-input std {signal:.4f}"
    assert corr > 0.9, corr


@pytest.mark.parametrize("name", SINGLE)
def test_single_op_model_is_within_a_few_steps_of_float(name: str) -> None:
    net, graph, ref, got, in_range = _run(name, 6)
    out = graph.outputs[0]
    if graph.tensors[out].dtype == "float32":
        out = graph.operators[-1].inputs[0]
    step = graph.tensors[out].scale
    # Saturation is legitimate for outliers beyond the calibration range, rare.
    assert in_range.mean() > 0.98
    err = np.abs(got - ref)[in_range]
    # Rounding of output, weights and bias leaves a few output steps at most.
    has_weights = any(op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") for op in graph.operators)
    limit = (6.0 if has_weights else 1.5) * step
    if graph.tensors[graph.inputs[0]].dtype == "float32":
        limit += graph.tensors[graph.operators[0].outputs[0]].scale  # input rounding counts here
    assert err.max() <= limit, f"max error {err.max():.5f} > {limit:.5f} ({err.max() / step:.2f} steps)"


@pytest.mark.parametrize("name", MLPERF)
def test_outputs_vary_with_the_input(name: str) -> None:
    graph = zoo.build(name)
    oracle = TflmOracle(zoo_model_bytes(name))
    rng = np.random.default_rng(3)
    t = graph.tensors[graph.inputs[0]]
    outs = np.stack([oracle([rng.integers(-128, 128, size=t.shape, dtype=np.int8)])[0].ravel()
                     for _ in range(8)])
    assert len({o.tobytes() for o in outs}) >= 6, "the model maps different inputs to the same output"
    assert (outs.std(axis=0) > 0).mean() > 0.5
    if graph.operators[-1].opcode == "SOFTMAX":
        # Not a saturated one-hot either: at least two classes get probability mass somewhere.
        assert ((outs > -128).sum(axis=1) >= 2).any()


def test_kws_softmax_is_not_constant_and_argmax_varies() -> None:
    _, _, ref, got, _ = _run("ds_cnn_kws", 16)
    assert got.std(axis=0).max() > 0.05
    assert len(set(got.argmax(axis=1).tolist())) >= 2
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).mean() >= 0.75


def test_bytes_are_deterministic_and_seeded() -> None:
    assert model_bytes("ds_cnn_kws") == model_bytes("ds_cnn_kws")
    assert model_bytes("ds_cnn_kws", seed=1) != model_bytes("ds_cnn_kws")
    assert model_bytes("op_conv_1x1") == zoo_model_bytes("op_conv_1x1")


def _ops(graph: Graph) -> list[str]:
    return [op.opcode for op in graph.operators]


def test_ds_cnn_kws_architecture() -> None:
    g = zoo.ds_cnn_kws()
    assert _ops(g) == (["CONV_2D"] + ["DEPTHWISE_CONV_2D", "CONV_2D"] * 4
                       + ["AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"])
    assert g.tensors[g.inputs[0]].shape == (1, 49, 10, 1)
    assert g.tensors[g.outputs[0]].shape == (1, 12)
    first = g.operators[0]
    assert g.tensors[first.inputs[1]].shape == (64, 10, 4, 1)
    assert first.options["stride_w"] == first.options["stride_h"] == 2 and first.options["padding"] == "SAME"
    assert g.tensors[first.outputs[0]].shape == (1, 25, 5, 64)
    pool = g.operators[9]
    assert (pool.options["filter_height"], pool.options["filter_width"]) == (25, 5)
    assert all(op.options["fused_activation_function"] == "RELU" for op in g.operators[:9])


def test_mobilenet_v1_vww_architecture() -> None:
    g = zoo.mobilenet_v1_vww()
    assert _ops(g) == (["CONV_2D"] + ["DEPTHWISE_CONV_2D", "CONV_2D"] * 13
                       + ["AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"])
    assert g.tensors[g.inputs[0]].shape == (1, 96, 96, 3)
    assert g.tensors[g.outputs[0]].shape == (1, 2)
    pw_channels = [g.tensors[op.outputs[0]].shape[3] for op in g.operators if op.opcode == "CONV_2D"]
    assert pw_channels == [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256]
    assert g.tensors[g.operators[-5].outputs[0]].shape == (1, 3, 3, 256)
    assert all(op.options["fused_activation_function"] == "RELU6" for op in g.operators[:27])


def test_resnet8_ic_architecture() -> None:
    g = zoo.resnet8_ic()
    assert _ops(g) == (["CONV_2D"] + ["CONV_2D", "CONV_2D", "ADD"]
                       + ["CONV_2D", "CONV_2D", "CONV_2D", "ADD"] * 2
                       + ["AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"])
    assert g.tensors[g.inputs[0]].shape == (1, 32, 32, 3)
    assert g.tensors[g.outputs[0]].shape == (1, 10)
    adds = [op for op in g.operators if op.opcode == "ADD"]
    assert [g.tensors[op.outputs[0]].shape for op in adds] == [(1, 32, 32, 16), (1, 16, 16, 32), (1, 8, 8, 64)]
    shortcuts = [op for op in g.operators
                 if op.opcode == "CONV_2D" and g.tensors[op.inputs[1]].shape[1:3] == (1, 1)]
    assert len(shortcuts) == 2 and all(op.options["stride_w"] == 2 for op in shortcuts)


def test_fc_autoencoder_ad_architecture() -> None:
    g = zoo.fc_autoencoder_ad()
    assert _ops(g) == ["FULLY_CONNECTED"] * 10
    widths = [g.tensors[op.inputs[1]].shape for op in g.operators]
    assert widths == [(128, 640), (128, 128), (128, 128), (128, 128), (8, 128), (128, 8),
                      (128, 128), (128, 128), (128, 128), (640, 128)]
    assert g.tensors[g.inputs[0]].shape == (1, 640) and g.tensors[g.outputs[0]].shape == (1, 640)
    assert g.operators[-1].options["fused_activation_function"] == "NONE"


@pytest.mark.parametrize("name", MLPERF + ["op_fc_per_channel", "op_dwconv_valid_mult2"])
def test_quantisation_follows_tflite_rules(name: str) -> None:
    g = zoo.build(name)
    for t in g.tensors:
        if t.dtype == "int8" and t.data is None:
            assert t.quant is not None and t.quant.scale.size == 1 and -128 <= t.zero_point <= 127
    for op in g.operators:
        ins = g.op_inputs(op)
        out = g.op_outputs(op)[0]
        if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            x, w, b = ins
            assert w.dtype == "int8" and np.all(w.quant.zero_point == 0)
            assert np.abs(w.data.astype(int)).max() <= 127
            expected_axis = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3}.get(op.opcode, 0)
            if op.opcode != "FULLY_CONNECTED" or w.quant.per_channel:
                assert w.quant.axis == expected_axis
                assert w.quant.scale.size == w.shape[expected_axis]
            # Symmetric: the largest weight of every channel uses the full range.
            per = np.moveaxis(np.abs(w.data.astype(int)), w.quant.axis, 0).reshape(w.quant.scale.size, -1)
            assert np.all(per.max(axis=1) == 127)
            if b is not None:
                assert b.dtype == "int32" and np.all(b.quant.zero_point == 0)
                np.testing.assert_allclose(b.quant.scale, np.float32(x.scale) * w.quant.scale, rtol=1e-6)
            if op.options["fused_activation_function"] in ("RELU", "RELU6"):
                assert out.zero_point == -128  # calibrated ranges of ReLU outputs start at 0
        if op.opcode == "SOFTMAX":
            assert (out.scale, out.zero_point) == (1 / 256, -128)
        if op.opcode in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE"):
            assert (out.scale, out.zero_point) == (ins[0].scale, ins[0].zero_point)


def test_float_io_adds_quantize_and_dequantize() -> None:
    g = zoo.ds_cnn_kws(float_io=True)
    assert _ops(g)[0] == "QUANTIZE" and _ops(g)[-1] == "DEQUANTIZE"
    assert g.tensors[g.inputs[0]].dtype == "float32" and g.tensors[g.outputs[0]].dtype == "float32"
    g8 = zoo.ds_cnn_kws()
    assert _ops(g)[1:-1] == _ops(g8)
    assert g.tensors[g.operators[0].outputs[0]].scale == g8.tensors[g8.inputs[0]].scale


def test_single_op_builder_covers_every_supported_operator() -> None:
    supported = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD",
                 "MUL", "RESHAPE", "SOFTMAX", "LOG_SOFTMAX", "PAD", "MEAN", "CONCATENATION", "TRANSPOSE",
                 "RESIZE_NEAREST_NEIGHBOR", "RELU", "RELU6", "LOGISTIC", "HARD_SWISH", "QUANTIZE", "DEQUANTIZE"}
    covered = {op.opcode for name in zoo.SINGLE_OP_MODELS for op in zoo.build(name).operators}
    assert supported <= covered
    g = zoo.single_op("CONV_2D", stride=2, activation="RELU6", filters=4)
    assert _ops(g) == ["CONV_2D"] and g.tensors[g.outputs[0]].shape == (1, 6, 6, 4)
    with pytest.raises(Exception, match="unknown parameters"):
        zoo.single_op("ADD", filters=3)


def test_unsupported_models_contain_what_they_claim() -> None:
    assert _ops(zoo.build("unsupported_tanh")) == ["TANH"]
    assert _ops(zoo.build("unsupported_squared_difference")) == ["SQUARED_DIFFERENCE"]
    conv = zoo.build("unsupported_dilated_conv").operators[0]
    assert conv.options["dilation_w_factor"] == conv.options["dilation_h_factor"] == 2


def test_build_cli_writes_tflite_files(tmp_path, capsys) -> None:
    assert build_main([str(tmp_path), "--only", "op_relu", "op_softmax"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["op_relu.tflite", "op_softmax.tflite"]
    assert (tmp_path / "op_relu.tflite").read_bytes() == model_bytes("op_relu")
    assert build_main([str(tmp_path), "--only", "no_such_model"]) == 2
    assert build_main(["--list"]) == 0
    assert "ds_cnn_kws" in capsys.readouterr().out


def test_lenet_300_100_architecture() -> None:
    """TinyEngine's MNIST LeNet-300-100: int8 MLP, float LOG_SOFTMAX head after DEQUANTIZE."""
    g = zoo.build("lenet_300_100_mnist")
    assert _ops(g) == ["QUANTIZE", "FULLY_CONNECTED", "FULLY_CONNECTED", "FULLY_CONNECTED", "DEQUANTIZE",
                       "LOG_SOFTMAX"]
    assert [g.tensors[op.inputs[1]].shape for op in g.operators if op.opcode == "FULLY_CONNECTED"] == \
        [(300, 784), (100, 300), (10, 100)]
    head = g.operators[-1]
    assert g.tensors[head.inputs[0]].dtype == g.tensors[head.outputs[0]].dtype == "float32"
    assert g.tensors[head.outputs[0]].quant is None and g.outputs == head.outputs
    x = zoo.float_net("lenet_300_100_mnist").random_inputs(4)
    out = np.concatenate([TflmOracle(zoo_model_bytes("lenet_300_100_mnist"))([x[k:k + 1]])[0] for k in range(4)])
    np.testing.assert_allclose(np.exp(out.astype(np.float64)).sum(axis=1), 1.0, rtol=1e-5)  # log-probabilities
