"""The X-NUCLEO-LPM01A and STLINK-V3PWR drivers on session transcripts built from their
text protocol (UM2269's commands, as MLPerf Tiny's EnergyRunner sends them), over a
real tty: configuration acks, ascii_dec samples, D7 event lines, status lines, stop."""
import time

import numpy as np
import pytest

from microtile.measure.power import PowerProbeError, ProbeStoppedError, energy_report, make_probe
from microtile.measure.power.st_power import StTextDecoder
from microtile.targets.boards import load_board
from power_device import capture_session, pty_devices  # noqa: F401 (a fixture)

IDLE, ACTIVE = "1500-06", "1234-05"  # 1.5 mA, 12.34 mA
RATE, LENGTH, GAP = 5000, 50, 30  # freq 5k; windows of 50 samples (10 ms)


def acquisition(windows=7, damaged_at=None, garbage_every=None, prompt="") -> list[str]:
    """The lines of one acquisition: samples, 'event <n> ris|fal' at the window edges,
    a TimeStamp status line every 100 samples."""
    lines, n = [], 0

    def sample(value):
        nonlocal n
        if damaged_at is not None and n == damaged_at:
            lines.append(value[:2] + "#" + value[3:])  # a damaged sample line
        else:
            lines.append(value)
        n += 1
        if n % 100 == 0:
            lines.append(f"TimeStamp: {n // RATE:03d}s {n * 1000 // RATE % 1000:03d}ms, buff 00%")
        if garbage_every and n % garbage_every == 0:
            lines.append("\x00%$#@!~")

    for k in range(windows):
        for _ in range(GAP):
            sample(IDLE)
        lines.append(f"event {2 * k} ris")
        for _ in range(LENGTH):
            sample(ACTIVE)
        lines.append(f"event {2 * k + 1} fal")
    for _ in range(GAP):
        sample(IDLE)
    return [prompt + line if line.startswith("ack") else line for line in lines]


WINDOW_UJ = 12.34e-3 * 3.3 * LENGTH / RATE * 1e6


def decode(lines, chunk=97):
    dec = StTextDecoder()
    data = ("\r\n".join(lines) + "\r\n").encode()
    for i in range(0, len(data), chunk):
        dec.feed(data[i:i + chunk])
    return dec


def test_ascii_dec_values_and_events():
    dec = decode(acquisition(windows=6))
    assert dec.values[0] == pytest.approx(1.5e-3) and dec.values[GAP] == pytest.approx(12.34e-3)
    assert dec.edges[:2] == [(GAP, True), (GAP + LENGTH, False)]
    assert dec.garbage == 0 and dec.lost == 0 and len(dec.values) == 6 * (GAP + LENGTH) + GAP


def test_garbage_lines_are_skipped_and_a_damaged_sample_keeps_the_time_base():
    clean = decode(acquisition())
    dec = decode(acquisition(damaged_at=GAP + 10, garbage_every=37))
    assert dec.lost == 1 and dec.garbage == 1 + (7 * (GAP + LENGTH) + GAP) // 37
    assert len(dec.values) == len(clean.values) and dec.edges == clean.edges
    assert np.isnan(dec.values[GAP + 10])


class StDevice:
    """The probe's side: ``ack <command>`` to each command line (``error`` to the ones
    in ``refuse``), the acquisition after ``start``, then ``end`` / ``Acquisition
    completed`` after ``stop``; ``stall_after`` lines of data, then silence."""

    def __init__(self, lines, v3pwr=False, refuse=(), stall_after=None):
        self.lines, self.v3pwr, self.refuse, self.stall_after = lines, v3pwr, refuse, stall_after
        self.commands: list[str] = []
        self.pending = b""

    def __call__(self, data, dev):
        self.pending += data
        *done, self.pending = self.pending.split(b"\n")
        prompt = "stlp > " if self.v3pwr else ""
        for raw in done:
            cmd = raw.decode().strip()
            self.commands.append(cmd)
            name = cmd.split()[0] if cmd else ""
            if name in self.refuse:
                dev.send(f"{prompt}error {cmd}: invalid argument\r\n".encode())
            elif cmd == "start":
                dev.send(f"{prompt}ack start\r\n".encode())
                body = self.lines if self.stall_after is None else self.lines[:self.stall_after]
                dev.send(("\r\n".join(body) + "\r\n").encode())
            elif cmd == "stop":
                if self.stall_after is not None:
                    continue  # gone: no answer
                if self.v3pwr:
                    dev.send(b"summary beg\r\nenergy 1234-06\r\nsummary end\r\nend\r\n")
                else:
                    dev.send(b"ack stop\r\nAcquisition completed\r\n")
            elif cmd:
                dev.send(f"{prompt}ack {cmd}\r\n".encode())


@pytest.mark.parametrize("kind", ["lpm01a", "stlinkv3pwr"])
def test_a_session_over_a_serial_port(kind, pty_devices):
    device = StDevice(acquisition(), v3pwr=kind == "stlinkv3pwr")
    dev = pty_devices(device)
    probe = make_probe(f"{kind}:{dev.path},freq=5k,timeout=1", load_board("nucleo_l4r5zi"))
    capture = capture_session(probe, dev, settle=0.1)
    for _ in range(100):  # the device thread reads the last line
        if device.commands[-1:] == ["hrc"]:
            break
        time.sleep(0.01)
    assert device.commands[0] == "htc" and "volt 3300m" in device.commands and "freq 5k" in device.commands
    assert "format ascii_dec" in device.commands and "eventsrc d7 fal" in device.commands
    assert ("acqtime inf" if kind == "stlinkv3pwr" else "acqtime 0") in device.commands
    assert device.commands[-2:] == ["stop", "hrc"]
    report = energy_report(capture, probe.spec, 7)
    assert report["windows"] == 7 and report["sample_rate_hz"] == RATE and report["voltage_source"] == "set"
    assert report["per_inference"]["median_uj"] == pytest.approx(WINDOW_UJ, rel=1e-9)
    assert report["per_inference"]["mean_power_mw"] == pytest.approx(12.34 * 3.3, rel=1e-9)


def test_a_refused_command_is_a_one_line_error(pty_devices):
    dev = pty_devices(StDevice([], refuse=("volt",)))
    probe = make_probe(f"lpm01a:{dev.path},timeout=1", load_board("nucleo_l4r5zi"))
    with pytest.raises(PowerProbeError, match="refused 'volt 3300m'") as err:
        try:
            probe.open()
        finally:
            probe.close()
    assert "\n" not in str(err.value)


def test_a_probe_that_stops_answering_keeps_the_windows_before(pty_devices):
    lines = acquisition(windows=8)
    cut = lines.index("event 11 fal") + 1  # 6 complete windows, then silence
    dev = pty_devices(StDevice(lines, stall_after=cut))
    probe = make_probe(f"lpm01a:{dev.path},timeout=0.4", load_board("nucleo_l4r5zi"))
    probe.open()
    try:
        probe.start()
        time.sleep(0.8)
        with pytest.raises(ProbeStoppedError, match="stopped answering") as err:
            probe.stop()
    finally:
        probe.close()
    report = energy_report(err.value.capture, probe.spec, 8)
    assert report["windows"] == 6 and report["per_inference"]["median_uj"] == pytest.approx(WINDOW_UJ, rel=1e-9)


def test_bad_options():
    board = load_board("nucleo_l4r5zi")
    for spec, words in (("lpm01a:/dev/x,freq=100k", "freq=100k"), ("lpm01a:/dev/x,voltage=3.6", "1.8-3.3 V"),
                        ("stlinkv3pwr:/dev/x,voltage=1.2", "1.6-3.6 V")):
        with pytest.raises(PowerProbeError, match=words):
            make_probe(spec, board)
    with pytest.raises(PowerProbeError, match="cannot open"):
        make_probe("lpm01a:/dev/ttyNOPE", board).open()
