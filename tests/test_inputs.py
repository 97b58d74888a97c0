"""Loading test inputs: raw .bin files, .npy stacks, labelled energyrunner CSVs, random."""
from __future__ import annotations

import numpy as np
import pytest

from microtile.errors import MicrotileError
from microtile.measure.inputs import load_samples
from microtile.importer.tflite_format import load_tflite
from microtile_models.build import zoo_model_bytes


@pytest.fixture(scope="module")
def kws():
    return load_tflite(zoo_model_bytes("ds_cnn_kws"))


def test_directory_of_bin_and_npy(kws, tmp_path):
    x = np.arange(490, dtype=np.int64).astype(np.int8).reshape(1, 49, 10, 1)
    (tmp_path / "a.bin").write_bytes(x.tobytes())
    np.save(tmp_path / "b.npy", np.stack([x[0], -x[0]]))  # two samples stacked on axis 0
    samples = load_samples(kws, inputs=str(tmp_path))
    assert [s.name for s in samples] == ["a.bin", "b.npy[0]", "b.npy[1]"]
    assert np.array_equal(samples[0].arrays[0], x) and np.array_equal(samples[2].arrays[0], -x)


def test_labels_csv_reads_the_bins_beside_it(kws, tmp_path):
    for k in range(3):
        (tmp_path / f"s{k}.bin").write_bytes(bytes([k]) * 490)
    (tmp_path / "y_labels.csv").write_text("s0.bin, 12, 4\ns1.bin,12,7\ns2.bin,12,0\n")
    samples = load_samples(kws, labels=str(tmp_path / "y_labels.csv"), limit=2)
    assert [(s.name, s.label) for s in samples] == [("s0.bin", 4), ("s1.bin", 7)]
    assert samples[1].arrays[0].shape == (1, 49, 10, 1) and samples[1].arrays[0].max() == 1


@pytest.mark.parametrize("content, message", [
    ("missing.bin,12,3\n", "not beside it"),
    ("s.bin,12\n", "expected 'file, classes, label'"),
    ("s.bin,12,yes\n", "not an integer"),
])
def test_bad_labels_csv(kws, tmp_path, content, message):
    (tmp_path / "s.bin").write_bytes(bytes(490))
    (tmp_path / "y.csv").write_text(content)
    with pytest.raises(MicrotileError, match=message):
        load_samples(kws, labels=str(tmp_path / "y.csv"))


def test_wrong_size_and_dtype_are_refused(kws, tmp_path):
    (tmp_path / "short.bin").write_bytes(bytes(100))
    with pytest.raises(MicrotileError, match="100 bytes.*needs 490"):
        load_samples(kws, inputs=str(tmp_path / "short.bin"))
    np.save(tmp_path / "f.npy", np.zeros((1, 49, 10, 1), np.float32))
    with pytest.raises(MicrotileError, match="dtype float32"):
        load_samples(kws, inputs=str(tmp_path / "f.npy"))


def test_random_inputs_are_seeded_and_span_a_float_quantize_range():
    graph = load_tflite(zoo_model_bytes("op_quantize_dequantize"))
    a, b = load_samples(graph, random=2), load_samples(graph, random=2)
    assert np.array_equal(a[1].arrays[0], b[1].arrays[0]) and not np.array_equal(a[0].arrays[0], a[1].arrays[0])
    q = next(graph.tensor(op.outputs[0]) for op in graph.operators if op.opcode == "QUANTIZE")
    x = a[0].arrays[0]
    assert x.dtype == np.float32
    assert x.min() >= (-128 - q.zero_point) * q.scale and x.max() <= (127 - q.zero_point) * q.scale
    assert x.max() - x.min() > 0.5 * 255 * q.scale  # covers the range, not a corner of it


def test_seed_picks_other_random_inputs_and_repeats(kws):
    a, b, c = load_samples(kws, random=1), load_samples(kws, random=1, seed=1), load_samples(kws, random=1, seed=1)
    assert np.array_equal(b[0].arrays[0], c[0].arrays[0]) and not np.array_equal(a[0].arrays[0], b[0].arrays[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"random": 0}, "--random 0"),
    ({"inputs": "x.npy", "limit": -2}, "--limit -2"),
    ({"random": 4, "limit": 2}, "--limit applies"),
    ({"random": 1, "seed": -1}, "--seed -1"),
])
def test_bad_counts_are_refused(kws, kwargs, message):
    with pytest.raises(MicrotileError, match=message):
        load_samples(kws, **kwargs)
