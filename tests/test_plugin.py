"""The pytest plugin (microtile.pytest_plugin), run as pytest runs it: real inner test
sessions through pytest's own ``pytester``, each in its own process as on a CI runner
(in-process runs leave importlib.metadata unable to find packages afterwards), with the
plugin loaded from its entry point.

* ``--board nucleo`` with no board attached fails the device tests (a CI runner whose
  board fell off USB must not pass); ``--allow-no-board`` skips them.
* ``--junitxml``: every run_on_board run leaves its figures as properties, the board is
  in the test id, and pytest-embedded's xunit2 warning does not appear.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from microtile.targets.discovery import list_attached

pytest_plugins = ["pytester"]

DEVICE_TESTS = """
import pytest

def test_device(board):
    assert board.name

@pytest.mark.hardware
def test_needs_a_real_board(board, attached_probe):
    assert attached_probe is not None

def test_host_only():
    pass
"""


@pytest.fixture
def no_board_attached():
    if list_attached():
        pytest.skip("a debug probe is attached to this machine: the no-board behaviour cannot be checked")


@pytest.mark.parametrize("board_option", ["nucleo", "nucleo_f446re"])
def test_missing_board_fails_the_device_tests(pytester, no_board_attached, board_option):
    pytester.makepyfile(test_devices=DEVICE_TESTS)
    result = pytester.runpytest_subprocess("--board", board_option, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=2)  # the board fixture fails both device tests
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "no debug probe found" in out and "--allow-no-board" in out and "Traceback" not in out
    assert f"microtile: --board {board_option}: no board attached; device tests FAIL" in out
    assert f"test_device[{board_option}]" in out  # the board asked for is in the test id


def test_allow_no_board_skips_them(pytester, no_board_attached):
    pytester.makepyfile(test_devices=DEVICE_TESTS)
    result = pytester.runpytest_subprocess("--board", "nucleo", "--allow-no-board", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    assert "needs a Nucleo board attached over its ST-LINK USB connector" in result.stdout.str()


def test_emulator_run_skips_hardware_tests_without_failing(pytester):
    """The default target (QEMU) never asks for a board: hardware tests skip, the rest run."""
    pytester.makepyfile(test_devices=DEVICE_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, skipped=1)


RUN_TEST = """
def test_softmax_runs(run_on_board, board):
    result = run_on_board({model!r}, labels={labels!r})
    assert result.error is None and result.mismatches == []
    assert result.top1 == 1.0
"""


@pytest.mark.qemu
def test_junit_xml_has_the_run_figures_as_properties(pytester, tmp_path):
    """One tiny model (SOFTMAX over 10 values, 2 labelled inputs) on QEMU; the JUnit report
    carries instructions, Top-1, RAM and ROM for the test, whose id names the board."""
    from microtile_models.build import zoo_model_bytes

    model = tmp_path / "op_softmax.tflite"
    model.write_bytes(zoo_model_bytes("op_softmax"))
    rows = []
    for i, top in enumerate((3, 8)):  # distinct, spread values: the argmax is the label
        values = np.array([-100 + 20 * ((k - top) % 10) for k in range(10)], dtype=np.int8)
        values[top] = 120
        (tmp_path / f"s{i}.bin").write_bytes(values.tobytes())
        rows.append(f"s{i}.bin, 10, {top}")
    labels = tmp_path / "y_labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    pytester.makepyfile(test_run=RUN_TEST.format(model=str(model), labels=str(labels)))
    xml_path = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess("--board", "qemu", f"--junitxml={xml_path}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "is incompatible with junit_family" not in result.stdout.str()  # the xunit2 warnings, silenced
    assert "warning" not in result.stdout.str().lower()
    [case] = ET.parse(xml_path).getroot().iter("testcase")
    assert case.get("name") == "test_softmax_runs[netduinoplus2]"
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["board"] == "netduinoplus2" and props["model"] and props["counter_unit"] == "instructions"
    assert int(props["instructions"]) > 0 and "cycles" not in props
    assert float(props["top1"]) == 1.0 and props["samples"] == "2" and props["mismatches"] == "0"
    assert int(props["ram_bytes"]) > 0 and int(props["rom_bytes"]) > 0
    assert "error" not in props


def test_result_properties_without_a_counter(tmp_path):
    """A board image on QEMU has no counter: no count property at all (never 0), no top1
    without labels, and the error of a failed run."""
    from microtile.targets.boards import load_board
    from microtile.build.firmware import ElfSizes, Firmware
    from microtile.codegen.model_source import compile_model
    from microtile.pytest_plugin import result_properties
    from microtile.measure.runner import RunResult
    from microtile.importer.tflite_format import load_tflite
    from microtile_models.build import zoo_model_bytes

    compiled = compile_model(load_tflite(zoo_model_bytes("op_softmax")))
    firmware = Firmware(tmp_path / "microtile.elf", "b1", ElfSizes(rom_bytes=20000, ram_static_bytes=5000,
                                                                   stack_reserved_bytes=8192))
    result = RunResult(compiled.graph.name, load_board("nucleo_f446re"), "none", compiled, firmware, samples=1)
    result.error = "board stopped answering"
    props = dict(result_properties(result))
    assert props["counter_unit"] == "none" and "cycles" not in props and "instructions" not in props
    assert "top1" not in props and props["error"] == "board stopped answering"
    assert props["rom_bytes"] == 20000 and props["ram_bytes"] == 5000
