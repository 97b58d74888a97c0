"""Energy in `microtile run`: where --power is refused (one line, exit 2), the run JSON's
``energy`` beside the cycles from a probe on a real tty, a probe that stops answering
(exit 3, nothing measured lost), and estimated energy on an emulated run."""
import subprocess
import sys
import time

import pytest
from microtile_models import zoo

from microtile.build.firmware import build_firmware
from microtile.codegen.model_source import compile_model
from microtile.importer.tflite_format import load_tflite, write_tflite
from microtile.measure.power import PowerProbeError, finish_energy, make_probe, open_power
from microtile.measure.runner import EXIT_TARGET_FAILED, RunResult, exit_code, run_model
from microtile.targets.boards import load_board
from power_device import PtyDevice
from test_power_ppk2 import Ppk2Device, ppk2_stream, window_uj

pytest_plugins = ["pytester"]

L4 = load_board("nucleo_l4r5zi")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("power") / "ad.tflite"
    path.write_bytes(write_tflite(zoo.fc_autoencoder_ad()))
    return path


def test_power_is_refused_where_it_cannot_measure(model):
    with pytest.raises(PowerProbeError, match="emulated run has no current"):
        run_model(model, "qemu", random=5, power="ppk2:/dev/ttyACM2")
    with pytest.raises(PowerProbeError, match="median of at least 5"):
        run_model(model, "nucleo_f446re", random=3, power="ppk2:/dev/ttyACM2")
    with pytest.raises(PowerProbeError, match="unknown probe"):
        run_model(model, "nucleo_f446re", random=5, power="ppk9:/dev/ttyACM2")
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "run", str(model), "--board", "nucleo_l4r5zi",
                           "--emulate", "--random", "5", "--power", "lpm01a:/dev/ttyACM3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "emulated run has no current" in proc.stdout
    assert proc.stdout.strip().count("\n") == 0 and "Traceback" not in proc.stdout + proc.stderr


def board_result(model, cycles):
    """A RunResult as a board run leaves it: 8 samples, DWT cycles per layer."""
    compiled = compile_model(load_tflite(model), "optimized", L4)
    result = RunResult(compiled.graph.name, L4, "cycles", compiled, build_firmware(compiled, L4))
    result.samples, result.clock_hz = 8, L4.clock_hz
    result.count_sums = [8 * c for c in cycles]
    result.est_sums, result.est_samples = [2 * c for c in cycles], 1
    return result


def probe_on(device, timeout=1.0):
    dev = PtyDevice(device)
    probe = make_probe(f"ppk2:{dev.path},timeout={timeout}", L4)
    open_power(probe)
    probe.start()
    return dev, probe


def test_energy_beside_the_cycles_in_the_run_json(model):
    layers = len(compile_model(load_tflite(model), "optimized", L4).device_ops)
    cycles = [1000 * (i + 1) for i in range(layers)]
    result = board_result(model, cycles)
    dev, probe = probe_on(Ppk2Device(ppk2_stream(windows=8)))
    try:
        assert dev.drained()
        time.sleep(0.2)
        finish_energy(result, probe, started=True)
    finally:
        dev.close()
    data = result.to_json()
    assert data["exit_code"] == 0 and data["error"] is None
    energy = data["energy"]
    assert energy["windows"] == 8 and energy["inferences"] == 8 and energy["supply_v"] == pytest.approx(3.3)
    assert energy["per_inference"]["median_uj"] == pytest.approx(window_uj(), rel=1e-6)
    per_layer = [layer["median_uj"] for layer in energy["layers"]]
    assert sum(per_layer) == pytest.approx(window_uj(), rel=1e-6)
    assert per_layer[-1] / per_layer[0] == pytest.approx(layers, rel=1e-6)  # split by the measured cycles
    assert [layer["op"] for layer in energy["layers"]] == [layer["op"] for layer in data["layers"]]
    # the estimate stays beside it, labelled
    assert data["estimated_energy"]["label"] == "estimated energy"
    assert data["total"]["est_energy_uj"] == pytest.approx(2 * sum(cycles) / 120e6 * 13.2e-3 * 3.3 * 1e6, rel=1e-4)


def test_a_probe_that_stops_answering_fails_the_run_and_keeps_what_was_measured(model):
    result = board_result(model, [500] * len(compile_model(load_tflite(model), "optimized", L4).device_ops))
    dev, probe = probe_on(Ppk2Device(ppk2_stream(windows=8), stall_after=4 * (250 + 6 * 650)), timeout=0.3)
    try:
        time.sleep(0.8)
        finish_energy(result, probe, started=True)
    finally:
        dev.close()
    assert exit_code(result) == EXIT_TARGET_FAILED and "stopped answering" in result.error
    data = result.to_json()
    assert data["samples"] == 8 and data["total"]["cycles"] == 500 * len(data["layers"])
    assert data["energy"]["windows"] == 6 and data["energy"]["per_inference"] is not None


def test_estimated_energy_on_an_emulated_run(model):
    result = run_model(model, "nucleo_l4r5zi", random=1, target_options={"emulate": True})
    data = result.to_json()
    assert data["exit_code"] == 0 and data["energy"] is None
    info = data["estimated_energy"]
    assert info["label"] == "estimated energy" and info["run_ua_per_mhz"] == 110 and "DS12023" in info["source"]
    for entry in (*data["layers"], data["total"]):
        assert entry["est_energy_uj"] == pytest.approx(entry["est_cycles"] / 120e6 * 13.2e-3 * 3.3 * 1e6, rel=1e-4)
    assert data["total"]["est_energy_uj"] > 0
    assert load_board("qemu").name == "netduinoplus2"
    qemu_like = RunResult(result.model, load_board("qemu"), "instructions", result.compiled, result.firmware)
    assert "no datasheet run current" in qemu_like.to_json()["estimated_energy"]["error"]


PLUGIN_RUN = '''
def test_run(run_on_board):
    run_on_board({model!r}, random=5)
'''


def test_the_pytest_option_reaches_the_run(pytester, model):
    """`pytest --board ... --power SPEC`: run_on_board measures with that probe; on an
    emulator the run refuses it with the one-line reason."""
    pytester.makepyfile(test_run=PLUGIN_RUN.format(model=str(model)))
    result = pytester.runpytest_subprocess("--board", "qemu", "--power", "ppk2:/dev/ttyACM2", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*PowerProbeError: --power ppk2:/dev/ttyACM2: an emulated run has no current*"])
