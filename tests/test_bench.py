"""`microtile bench`: both kernel sets side by side, per layer, bit-exact checked."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from microtile_models.build import zoo_model_bytes

pytestmark = pytest.mark.qemu


def test_bench_prints_and_writes_both_kernel_sets(tmp_path):
    model = tmp_path / "kws.tflite"
    model.write_bytes(zoo_model_bytes("ds_cnn_kws"))
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "bench", str(model), "--random", "1",
                           "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reference: bit-exact with TFLM" in proc.stdout and "optimized: bit-exact with TFLM" in proc.stdout
    (data,) = json.loads(out.read_text())["models"]
    unit = data["counter_unit"]
    assert data["kernels"] == ["reference", "optimized"]
    assert [layer["op"] for layer in data["layers"]][:2] == ["CONV_2D", "DEPTHWISE_CONV_2D"]
    for kernels, run in data["runs"].items():
        assert run["kernels"] == kernels and run["mismatches"] == 0 and run["samples"] == 1
        # The per-layer table is the runs' own per-layer counts.
        assert [layer[unit][kernels] for layer in data["layers"]] == [layer[unit] for layer in run["layers"]]
    ref, opt = data["total"][unit]["reference"], data["total"][unit]["optimized"]
    assert data["total"]["speedup"] == pytest.approx(ref / opt, abs=1e-3)
    assert data["exit_code"] == 0
    # provenance: the shared part, each kernel set's own build
    prov = data["provenance"]
    assert prov["seed"] == 0 and len(prov["model_sha256"]) == 64 and prov["timestamp_utc"]
    assert prov["build_ids"] == {k: run["provenance"]["build_id"] for k, run in data["runs"].items()}
    assert prov["build_ids"]["reference"] != prov["build_ids"]["optimized"]


def test_compile_explain_shows_schedules_with_predicted_and_measured(tmp_path):
    model = tmp_path / "fc.tflite"
    model.write_bytes(zoo_model_bytes("op_fc_relu"))
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "compile", str(model), "--explain"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "FULLY_CONNECTED" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    predicted, measured, estimated = float(cells[-3]), float(cells[-2]), float(cells[-1])
    assert estimated >= measured * 0.5  # estimated cycles per MAC beside the instructions (dual issue aside)
    assert "k-first" in row or "m-first" in row or "n-first" in row
    # the cost model predicts the measured count within a stated tolerance (docs/schedules.md)
    assert abs(predicted - measured) / measured < 0.25, row


def test_bench_on_the_l4r5_timing_model_compares_with_x_cube_ai(tmp_path):
    """`bench --board nucleo_l4r5zi --emulate` runs on the timing model (no QEMU machine
    models the L4) and sets the estimated cycles beside X-CUBE-AI's measured ones for
    the MLPerf Tiny file names (here the project's own AD-shaped model under that name)."""
    from microtile.measure.bench import X_CUBE_AI

    model = tmp_path / "ad01_int8.tflite"
    model.write_bytes(zoo_model_bytes("fc_autoencoder_ad"))
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "bench", str(model), str(model), "--board",
                           "nucleo_l4r5zi", "--emulate", "--kernels", "optimized", "--random", "1",
                           "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "X-CUBE-AI" in proc.stdout and "summary: estimated cycles on nucleo_l4r5zi" in proc.stdout
    data = json.loads(out.read_text())["models"][0]
    est = data["total"]["est_cycles"]["optimized"]
    assert est == sum(layer["est_cycles"]["optimized"] for layer in data["layers"]) > 0
    assert data["x_cube_ai"]["cycles"] == X_CUBE_AI["ad01_int8"][1] == 575_000
    assert data["x_cube_ai"]["est_cycles_ratio"]["optimized"] == pytest.approx(est / 575_000, abs=1e-3)
    assert data["timing_model"]["flash_wait_states"] == 5 and data["timing_model"]["target"] is True


def test_bench_keeps_the_models_measured_before_a_bad_one(tmp_path):
    """A bad model later in the list is one line and exit 2, and the JSON still holds
    the models measured before it."""
    model = tmp_path / "softmax.tflite"
    model.write_bytes(zoo_model_bytes("op_softmax"))
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "bench", str(model), str(tmp_path / "missing.tflite"),
                           "--kernels", "optimized", "--random", "1", "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "missing.tflite" in proc.stdout
    (data,) = json.loads(out.read_text())["models"]
    assert data["exit_code"] == 0 and data["runs"]["optimized"]["samples"] == 1
