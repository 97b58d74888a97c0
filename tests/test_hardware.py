"""`--board nucleo`: the pytest plugin, the CLI and, with a board attached, the real thing.

Tests marked ``hardware`` run only with ``pytest --board nucleo[_<name>] [--probe UID]``
and an attached Nucleo; the others check, on any machine, what happens without one and
how cycle counts are reported."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from microtile.targets.boards import load_board
from microtile.build.firmware import build_firmware
from microtile.codegen.model_source import compile_model
from microtile.targets.discovery import list_attached
from microtile.measure.runner import RunResult
from microtile.measure.timing_check import compare_estimate
from microtile.importer.tflite_format import load_tflite
from microtile_models.build import zoo_model_bytes

REPO = Path(__file__).resolve().parents[1]


def _model(tmp_path_factory, name: str = "op_conv_3x3_same_relu") -> Path:
    path = tmp_path_factory.mktemp("zoo") / f"{name}.tflite"
    path.write_bytes(zoo_model_bytes(name))
    return path


@pytest.fixture(scope="module")
def no_board_attached():
    if list_attached():
        pytest.skip("a debug probe is attached to this machine: the no-board behaviour cannot be checked")


# ---- without a board (every machine) ----

@pytest.mark.parametrize("board_option, allow", [("nucleo", False), ("nucleo_f446re", True)])
def test_pytest_board_nucleo_without_board(no_board_attached, board_option, allow):
    """The suite's own device tests and hardware test, asking for a board that is not
    attached: each fails (exit 1), or skips with the message under --allow-no-board."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--board", board_option,
         *(["--allow-no-board"] if allow else []),
         "tests/test_end_to_end.py::test_single_operator_models_bit_exact_on_target",
         "tests/test_end_to_end.py::test_model_too_big_for_ram_is_refused",
         "tests/test_hardware.py::test_runs_report_cycles_and_time_at_the_board_clock"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    from microtile_models.zoo import SINGLE_OP_MODELS

    # every single-operator model, the RAM check, the hardware test
    expected = len(SINGLE_OP_MODELS) + 2
    assert " passed" not in out and "Traceback" not in out
    assert "no debug probe found" in out and "pyocd list" in out
    if allow:
        assert proc.returncode == 0, out
        assert "needs a Nucleo board attached over its ST-LINK USB connector" in out
        assert f"{expected} skipped" in out and " error" not in out, out
    else:
        assert proc.returncode == 1, out
        assert f"{expected} errors" in out and "--allow-no-board" in out, out
        assert f"[{board_option}-op_add]" in out  # the board is in the test id


def test_pytest_unknown_board_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--board", "nucleo_x1",
                           "tests/test_end_to_end.py::test_model_too_big_for_ram_is_refused"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "unknown board 'nucleo_x1'" in proc.stdout + proc.stderr


def test_cli_run_board_nucleo_without_board(no_board_attached, tmp_path_factory):
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "run", str(_model(tmp_path_factory)),
                           "--board", "nucleo", "--random", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no debug probe found" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_cycles_are_also_reported_as_time_at_the_board_clock(tmp_path_factory):
    """The JSON adds clock_hz and time_us = cycles / clock_hz (a RunResult with cycle
    counts, as a board run produces it; the firmware is the real build for the board)."""
    board = load_board("nucleo_f446re")
    compiled = compile_model(load_tflite(_model(tmp_path_factory)))
    firmware = build_firmware(compiled, board)
    result = RunResult(compiled.graph.name, board, "cycles", compiled, firmware,
                       count_sums=[180_000 + 180_002], samples=2)
    data = result.to_json()
    assert data["counter_unit"] == "cycles" and data["clock_hz"] == 180_000_000
    assert data["layers"][0]["cycles"] == 180_001 and data["layers"][0]["time_us"] == pytest.approx(1000.006)
    assert data["total"]["time_us"] == pytest.approx(1000.006)
    # Emulated instruction counts have no time.
    qemu = RunResult(compiled.graph.name, load_board("qemu"), "instructions", compiled, firmware,
                     count_sums=[5000], samples=1)
    assert "clock_hz" not in qemu.to_json() and "time_us" not in qemu.to_json()["total"]
    # A board that fell back to its reset clock reports it; time follows the reported clock.
    result.clock_hz = 16_000_000
    assert result.to_json()["total"]["time_us"] == pytest.approx(180_001 / 16)


def _board_run_json(tmp_path_factory, cycles: list[int], est: list[int] | None, samples: int = 2) -> dict:
    """The JSON of a RunResult as a board run makes it: DWT cycles summed over `samples`,
    the timing model's estimate of one sample (runner.estimate_first_sample)."""
    board = load_board("nucleo_f446re")
    compiled = compile_model(load_tflite(_model(tmp_path_factory)))
    result = RunResult(compiled.graph.name, board, "cycles", compiled, build_firmware(compiled, board),
                       count_sums=[c * samples for c in cycles], samples=samples)
    if est is not None:
        result.est_sums, result.est_samples = list(est), 1
    else:
        result.timing_error = "the timing model stopped: unmapped read at 0x0"
    return result.to_json()


def test_board_run_json_carries_cycles_and_estimate_per_layer(tmp_path_factory):
    data = _board_run_json(tmp_path_factory, [180_001], [171_000])
    layer = data["layers"][0]
    assert layer["cycles"] == 180_001 and layer["est_cycles"] == 171_000
    assert data["total"]["cycles"] == 180_001 and data["total"]["est_cycles"] == 171_000
    check = compare_estimate(data)
    assert check.board == "nucleo_f446re" and [e.index for e in check.layers] == [layer["index"]]
    assert check.error == pytest.approx((171_000 - 180_001) / 180_001)


def test_estimate_error_per_layer_and_in_total():
    """Recorded-shape per-layer figures: the error is (estimate - measured) / measured per
    layer, and the total is the summed figures' error (not the mean of the layers')."""
    run = {"board": "nucleo_l4r5zi", "model": "kws", "counter_unit": "cycles",
           "layers": [{"index": 0, "op": "CONV_2D", "cycles": 1_000_000, "est_cycles": 900_000},
                      {"index": 1, "op": "DEPTHWISE_CONV_2D", "cycles": 200_000, "est_cycles": 260_000},
                      {"index": 2, "op": "SOFTMAX", "cycles": 4_000, "est_cycles": 4_000}]}
    check = compare_estimate(run)
    assert [round(e.error, 4) for e in check.layers] == [-0.1, 0.3, 0.0]
    assert (check.cycles, check.est_cycles) == (1_204_000, 1_164_000)
    assert check.error == pytest.approx(-40_000 / 1_204_000)
    assert check.worst_layer.index == 1
    lines = check.lines()
    assert len(lines) == 5 and "-10.0%" in lines[1] and "+30.0%" in lines[2] and "-3.3%" in lines[4]


def test_estimate_check_refuses_what_it_cannot_compare(tmp_path_factory, tmp_path):
    from microtile.errors import MicrotileError

    qemu = {"counter_unit": "instructions", "layers": [{"index": 0, "op": "ADD", "instructions": 9,
                                                        "est_cycles": 9}]}
    with pytest.raises(MicrotileError, match="not board cycles"):
        compare_estimate(qemu)
    no_estimate = _board_run_json(tmp_path_factory, [180_001], None)
    with pytest.raises(MicrotileError, match="no est_cycles.*unmapped read"):
        compare_estimate(no_estimate)
    # the command: a board run's JSON prints the comparison; others exit 2 in one line
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_board_run_json(tmp_path_factory, [180_001], [171_000])))
    bad.write_text(json.dumps(no_estimate))
    for path, code in ((good, 0), (bad, 2), (tmp_path / "missing.json", 2)):
        proc = subprocess.run([sys.executable, "-m", "microtile.measure.timing_check", str(path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        if code == 0:
            assert "total" in proc.stdout and "-5.0%" in proc.stdout
        else:
            assert len(proc.stdout.strip().splitlines()) == 1 and proc.stdout.startswith("error:")


# ---- with a board (pytest --board nucleo) ----

@pytest.mark.hardware
def test_runs_report_cycles_and_time_at_the_board_clock(run_on_board, board, attached_probe, tmp_path_factory):
    from microtile.targets.nucleo import FLASH_LOG

    model = _model(tmp_path_factory)
    first = run_on_board(model, random=2)
    assert first.error is None and first.mismatches == []
    assert first.counter_unit == "cycles" and all(c > 0 for c in first.mean_counts())
    flashes = len(FLASH_LOG)
    again = run_on_board(model, random=2)  # same build: the board is not flashed again
    assert again.error is None and len(FLASH_LOG) == flashes
    # Cycle counts of the same code on the same inputs repeat closely (caches, flash wait states).
    a, b = first.mean_counts(), again.mean_counts()
    assert all(abs(x - y) <= max(50, x // 100) for x, y in zip(a, b)), (a, b)


# Cycles per iteration of the CALIBRATE loop (SUBS + taken BNE), per core. Lower bound:
# the Cortex-M4 issues one instruction a cycle and refills its pipeline on a taken branch
# (>= 2); the dual-issue Cortex-M7 issues both in one cycle with the branch predicted
# (about 1, never less: at most two instructions a cycle). Upper bound: loose (flash wait
# states, a cold cache).
CALIBRATION_CYCLES_PER_ITERATION = {"cortex-m4": (2, 20), "cortex-m7": (1, 20)}
CALIBRATION_SLACK = 256  # cycles: the overhead subtracted is itself measured


def calibration_bounds(core: str, iterations: int) -> tuple[int, int]:
    low, high = CALIBRATION_CYCLES_PER_ITERATION[core]
    return low * iterations - CALIBRATION_SLACK, high * iterations


def test_calibration_bounds_follow_the_core():
    """Every board's core has bounds; a Cortex-M7 at 1 cycle per iteration passes, an M4
    there does not (it cannot run the loop that fast)."""
    from microtile.targets.boards import list_boards
    from microtile.targets.discovery import is_probe_board

    n = 100_000
    for b in list_boards():
        if is_probe_board(b):
            assert b.core in CALIBRATION_CYCLES_PER_ITERATION, b.name
    low, high = calibration_bounds("cortex-m7", n)
    assert low <= n + 3 <= high  # what an H743 measures
    assert not calibration_bounds("cortex-m4", n)[0] <= n + 3


@pytest.mark.hardware
def test_calibration_loop_costs_cycles(board, attached_probe, tmp_path_factory):
    """The 2n-instruction CALIBRATE loop on the real core, within its core's bounds
    (CALIBRATION_CYCLES_PER_ITERATION)."""
    from microtile.targets import open_target

    compiled = compile_model(load_tflite(_model(tmp_path_factory)))
    firmware = build_firmware(compiled, board)
    with open_target(board, firmware, probe=attached_probe.unique_id) as target:
        info = target.link.info()
        assert info.counter_unit == "cycles" and info.board == board.name
        assert info.build_id == firmware.build_id
        n = 100_000
        cycles = target.link.calibrate(n)
        low, high = calibration_bounds(board.core, n)
        assert low <= cycles <= high, (board.core, cycles)
        assert target.link.calibrate(n) == pytest.approx(cycles, rel=0.01)
    with open_target(board, firmware, probe=attached_probe.unique_id) as again:
        assert not again.flashed and not again.decision.flash


@pytest.mark.hardware
def test_cli_run_on_the_board(board, attached_probe, tmp_path_factory, tmp_path):
    out = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "run", str(_model(tmp_path_factory)),
                           "--board", board.name, "--probe", attached_probe.unique_id, "--random", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bit-exact with TFLM" in proc.stdout and "time µs" in proc.stdout and "(cycles at" in proc.stdout
    data = json.loads(out.read_text())
    assert data["counter_unit"] == "cycles" and data["clock_hz"] > 0
    assert data["total"]["time_us"] == pytest.approx(data["total"]["cycles"] * 1e6 / data["clock_hz"], rel=1e-3)
    # both figures per layer: what `python -m microtile.measure.timing_check` compares (docs/timing.md)
    assert all(layer["cycles"] > 0 and layer["est_cycles"] > 0 for layer in data["layers"]), data["layers"]


# A loose sanity bound on the total, not an accuracy claim: wrong units (instructions
# for cycles), a wrong clock or wait-state table would miss it by far more.
ESTIMATE_TOTAL_BOUND = 0.5


@pytest.mark.hardware
@pytest.mark.parametrize("model_name", ["op_conv_3x3_same_relu", "op_conv_1x1", "op_dwconv_3x3_same_relu", "op_fc_relu"])
def test_timing_model_against_dwt_cycles(run_on_board, board, record_property, tmp_path_factory, model_name):
    """issue 8, a check on a real board: the timing model's estimate beside the DWT
    cycles per layer; the errors go into the JUnit report (est_error_*)."""
    result = run_on_board(_model(tmp_path_factory, model_name), random=2)
    assert result.error is None and result.mismatches == [], result.error
    assert result.timing_error is None, result.timing_error
    check = compare_estimate(result.to_json())
    for e in check.layers:
        record_property(f"est_error_layer{e.index}_{e.op}", round(e.error, 4))
    record_property("est_error_total", round(check.error, 4))
    record_property("est_error_worst_layer", f"{check.worst_layer.index} {check.worst_layer.error:+.4f}")
    print("\n".join(check.lines()))
    assert len(check.layers) == len(result.compiled.device_ops)
    assert abs(check.error) < ESTIMATE_TOTAL_BOUND, "\n".join(check.lines())


def test_target_args_select_the_same_target(target_args, board, attached_probe):
    assert target_args[:2] == ["--board", board.name]
    assert ("--probe" in target_args) == (attached_probe is not None)
