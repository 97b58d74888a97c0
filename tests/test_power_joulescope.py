"""Joulescope: capture files written with pyjls (JLS v2, as the Joulescope UI and the
joulescope package record them: FSR current and voltage, the GPI as a u1 signal), read
back by the driver; the live driver without a device attached."""
import subprocess
import sys

import numpy as np
import pytest
from pyjls import DataType, SignalType, Writer

from microtile.measure.power import PowerProbeError, energy_report, make_probe
from microtile.measure.power.joulescope_probe import read_jls
from microtile.targets.boards import load_board

RATE = 100_000


def signal(levels_at, n):
    levels = np.zeros(n, dtype=bool)
    for s, e in levels_at:
        levels[s:e] = True
    return levels


def capture_file(path, n=60_000, windows=((1000, 5000), (9000, 13000), (17000, 21000), (25000, 29000),
                                          (33000, 37000), (41000, 45000), (49000, 53000)),
                 gpi_name="gpi[0]", leading=True, seed=0):
    """current: 2 mA idle, 15 mA +- noise in the windows; voltage 3.3 V +- ripple; GPI0
    high in the windows (and over the first 300 samples: a partial window)."""
    rng = np.random.default_rng(seed)
    levels = signal(windows, n)
    if leading:
        levels[:300] = True
    current = np.where(levels, 15e-3, 2e-3) + rng.normal(0, 2e-4, n)
    voltage = 3.3 + 0.01 * np.sin(np.arange(n) / 50.0)
    with Writer(str(path)) as w:
        w.source_def(source_id=1, name="JS220-001234", vendor="Jetperch", model="JS220", version="1.0",
                     serial_number="001234")
        signals = [(1, "current", "A", DataType.F32), (2, "voltage", "V", DataType.F32)]
        if gpi_name:
            signals.append((3, gpi_name, "", DataType.U1))
        for sid, name, units, dtype in signals:
            w.signal_def(signal_id=sid, source_id=1, signal_type=SignalType.FSR, data_type=dtype,
                         sample_rate=RATE, name=name, units=units)
        w.fsr(1, 0, current.astype(np.float32))
        w.fsr(2, 0, voltage.astype(np.float32))
        if gpi_name:
            w.fsr(3, 0, np.packbits(levels.astype(np.uint8), bitorder="little"))
    expected = [float(np.sum(current[s:e].astype(np.float32).astype(np.float64)
                             * voltage[s:e].astype(np.float32))) / RATE * 1e6 for s, e in windows]
    return expected


def test_a_capture_file_gives_energy_per_window(tmp_path):
    path = tmp_path / "run.jls"
    expected = capture_file(path)
    capture = read_jls(path)
    assert capture.sample_rate_hz == RATE and capture.voltage_source == "measured"
    assert len(capture.windows()) == 7  # the window open at the first sample is partial: left out
    report = energy_report(capture, "jls", 7)
    per = report["per_inference"]
    assert per["median_uj"] == pytest.approx(float(np.median(expected)), rel=1e-6)
    assert per["min_uj"] == pytest.approx(min(expected), rel=1e-6)
    assert per["max_uj"] == pytest.approx(max(expected), rel=1e-6)
    assert per["min_uj"] < per["max_uj"]  # the noise makes the windows differ
    assert report["supply_v"] == pytest.approx(3.3, abs=0.01)


@pytest.mark.parametrize("name", ["gpi0", "in0"])
def test_other_names_of_the_gpi_signal(tmp_path, name):
    capture_file(tmp_path / "a.jls", gpi_name=name)
    assert len(read_jls(tmp_path / "a.jls").windows()) == 7


def test_bad_capture_files_are_one_line_errors(tmp_path):
    capture_file(tmp_path / "nogpi.jls", gpi_name=None)
    with pytest.raises(PowerProbeError, match=r"no gpi\[0\] signal .*record current, voltage and the trigger"):
        read_jls(tmp_path / "nogpi.jls")
    (tmp_path / "junk.jls").write_bytes(b"\x00\x17garbage" * 100)
    with pytest.raises(PowerProbeError, match="not a readable JLS capture"):
        read_jls(tmp_path / "junk.jls")


def test_the_capture_command(tmp_path):
    capture_file(tmp_path / "run.jls")
    ok = subprocess.run([sys.executable, "-m", "microtile.measure.power", str(tmp_path / "run.jls")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "7 trigger window(s)" in ok.stdout and "median" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "microtile.measure.power", str(tmp_path / "none.jls")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_no_joulescope_attached():
    probe = make_probe("joulescope", load_board("nucleo_f446re"))
    with pytest.raises(PowerProbeError, match="no Joulescope attached"):
        probe.open()
    with pytest.raises(PowerProbeError, match="trigger=x"):
        make_probe("joulescope:123,trigger=x", load_board("nucleo_f446re"))
