"""A short sample of the host memory soak (`python -m microtile.measure.soak`, 16,000
inferences in the full run): Python's allocations must not grow with the number of
inferences. The old per-sample count lists grew ~0.5 KB per KWS inference."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from microtile.measure.soak import NOISE_BYTES, soak
from microtile_models.build import zoo_model_bytes

pytestmark = pytest.mark.qemu


def test_host_memory_does_not_grow_per_inference(tmp_path):
    model = tmp_path / "kws.tflite"
    model.write_bytes(zoo_model_bytes("ds_cnn_kws"))  # 13 layers: per-sample storage shows at once
    report = soak(model, inferences=120, every=30, measure="tracemalloc")
    assert report.result.error is None and report.result.samples == 120
    assert report.result.mismatch_count == 0
    assert [c["inferences"] for c in report.checkpoints] == [30, 60, 90, 120]
    # 90 inferences after the first checkpoint; the old per-sample lists: ~47 KiB
    assert report.growth_bytes < NOISE_BYTES["tracemalloc"], report.checkpoints
    assert report.grew is False and report.bytes_per_inference < 64


def test_soak_command_prints_a_table_and_writes_json(tmp_path):
    model = tmp_path / "add.tflite"
    model.write_bytes(zoo_model_bytes("op_add"))
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "microtile.measure.soak", str(model), "--inferences", "40",
                           "--every", "20", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "memory flat" in proc.stdout and "40 inferences, 0 mismatches" in proc.stdout
    data = json.loads(out.read_text())
    assert data["measure"] == "rss" and [c["inferences"] for c in data["checkpoints"]] == [20, 40]
    assert all(c["bytes"] > 10 << 20 for c in data["checkpoints"])  # a real RSS, not a placeholder
    assert data["grew"] is False and data["run"]["verdict"] == "bit-exact"
    assert data["run"]["provenance"]["model_sha256"]
