"""The PPK2 driver on byte streams built from its documented protocol: 4-byte samples
(ADC, range, counter, logic port), the metadata text, the commands, over a real tty."""
import time

import numpy as np
import pytest

from microtile.measure.power import PowerProbeError, ProbeStoppedError, energy_report, make_probe
from microtile.measure.power.ppk2 import (AVERAGE_START, AVERAGE_STOP, GET_META_DATA, SAMPLE_RATE_HZ,
                                          SET_POWER_MODE, Ppk2Decoder, capture_from_decoder, encode_sample,
                                          parse_metadata, to_current)
from microtile.targets.boards import load_board
from power_device import PtyDevice, capture_session, pty_devices  # noqa: F401 (a fixture)

# A PPK2's GET_META_DATA answer, in its format (values of a calibrated unit)
METADATA = ("Calibrated: 0\nR0: 1003.3087\nR1: 101.5060\nR2: 10.0712\nR3: 0.9860\nR4: 0.0460\n"
            "GS0: 0.0000\nGS1: 0.0000\nGS2: 0.0000\nGS3: 0.0000\nGS4: 0.0000\n"
            "GI0: 1.0000\nGI1: 1.0000\nGI2: 1.0000\nGI3: 1.0000\nGI4: 1.0000\n"
            "O0: 112.7\nO1: 75.3\nO2: 61.6\nO3: 57.2\nO4: 62.1\n"
            "S0: 0.0000\nS1: 0.0000\nS2: 0.0000\nS3: 0.0000\nS4: 0.0000\n"
            "I0: 0.0000\nI1: 0.0000\nI2: 0.0000\nI3: 0.0000\nI4: 0.0000\n"
            "UG0: 1.00\nUG1: 1.00\nUG2: 1.00\nUG3: 1.00\nUG4: 1.00\n"
            "HW: 9173\nmode: 2\nIA: 56\nVDD: 3300\nEND\n")
META = parse_metadata(METADATA)
V = 3.3
ACTIVE, IDLE, RANGE = 2000, 300, 2  # ADC codes inside / outside a window, range 2 (10 ohm shunt)


def current_of(code: int, rng: int = RANGE) -> float:
    """The documented conversion, written out: w = (4 ADC - O) x 1.8 / 163840 / R."""
    cal = META["cal"]
    w = (4 * code - cal["o"][rng]) * (1.8 / 163840) / cal["r"][rng]
    return cal["ug"][rng] * (w * (cal["gs"][rng] * w + cal["gi"][rng]) + cal["s"][rng] * 3.3 + cal["i"][rng])


def ppk2_stream(windows=8, length=400, gap=250, channel=0, counter0=17) -> bytes:
    """Idle, then ``windows`` windows of ``length`` samples with logic D<channel> high."""
    words = []
    for _ in range(windows):
        words += [(IDLE, 0)] * gap + [(ACTIVE, 1 << channel)] * length
    words += [(IDLE, 0)] * gap
    out = bytearray()
    for k, (code, logic) in enumerate(words):
        out += encode_sample(code, RANGE, counter0 + k, logic | 0x80).to_bytes(4, "little")  # D7 busy: ignored
    return bytes(out)


def window_uj(length=400) -> float:
    return current_of(ACTIVE) * V * length / SAMPLE_RATE_HZ * 1e6


def decode(data: bytes, chunk: int | None = None, channel: int = 0):
    dec = Ppk2Decoder(META["cal"], META["vdd_mv"])
    step = chunk or len(data)
    for i in range(0, len(data), step):
        dec.feed(data[i:i + step])
    dec.finish()
    return dec, capture_from_decoder(dec, "ppk2:test", channel, V, "given")


def test_metadata_and_conversion():
    assert META["vdd_mv"] == 3300 and META["cal"]["r"][2] == pytest.approx(10.0712)
    word = np.array([encode_sample(ACTIVE, RANGE, 5, 0)], dtype=np.uint32)
    # 4 x 2000 - 61.6 = 7938.4 -> x 1.8/163840 / 10.0712 = 8.6596 mA
    assert to_current(word, META["cal"], 3300)[0] == pytest.approx(7938.4 * 1.8 / 163840 / 10.0712)
    assert to_current(word, META["cal"], 3300)[0] == pytest.approx(8.6596e-3, rel=1e-4)


def test_windows_from_the_logic_port_give_energy_per_inference():
    dec, capture = decode(ppk2_stream(), chunk=1000)
    assert dec.lost == 0 and dec.skipped == 0 and len(capture.current_a) == 8 * 650 + 250
    report = energy_report(capture, "ppk2:test", inferences=8)
    assert report["windows"] == 8 and report["error"] is None
    per = report["per_inference"]
    assert per["median_uj"] == pytest.approx(window_uj(), rel=1e-6)
    assert per["min_uj"] == pytest.approx(per["max_uj"])
    assert per["mean_power_mw"] == pytest.approx(current_of(ACTIVE) * V * 1e3, rel=1e-6)
    assert per["time_us"] == pytest.approx(4000.0)
    assert report["supply_v"] == pytest.approx(V)


def test_the_trigger_channel_is_the_one_asked_for():
    _, capture = decode(ppk2_stream(channel=3), channel=3)
    assert len(capture.windows()) == 8
    _, capture = decode(ppk2_stream(channel=3), channel=0)
    assert capture.windows() == []


def test_per_layer_energy_splits_each_window_by_the_measured_cycles():
    _, capture = decode(ppk2_stream())
    report = energy_report(capture, "ppk2:test", 8, layer_cycles=[300, 100], layer_ops=["CONV_2D", "ADD"])
    layers = report["layers"]
    assert [layer["op"] for layer in layers] == ["CONV_2D", "ADD"]
    assert layers[0]["median_uj"] == pytest.approx(0.75 * window_uj(), rel=1e-6)
    assert layers[1]["median_uj"] == pytest.approx(0.25 * window_uj(), rel=1e-6)


@pytest.mark.parametrize("where", [1, 2, 3])
def test_a_dropped_byte_does_not_shift_the_later_samples(where):
    stream = bytearray(ppk2_stream())
    cut = 4 * (250 + 400 + 250 + 100) + where  # inside the second window
    del stream[cut]
    dec, capture = decode(bytes(stream), chunk=777)
    assert dec.resyncs == 1 and 1 <= dec.lost <= 2
    assert len(capture.current_a) == 8 * 650 + 250  # the lost sample keeps its slot (NaN)
    report = energy_report(capture, "ppk2:test", 8)
    assert report["windows"] == 7 and report["windows_with_lost_samples"] == 1
    assert report["per_inference"]["min_uj"] == pytest.approx(window_uj(), rel=1e-6)
    assert report["per_inference"]["max_uj"] == pytest.approx(window_uj(), rel=1e-6)
    # read four bytes at a time without the counter, every later sample is garbage
    naive = np.frombuffer(bytes(stream[: (len(stream) // 4) * 4]), dtype="<u4")
    assert ((naive[cut // 4 + 1:] >> 14) & 7 != RANGE).any()


def test_a_garbage_burst_and_lost_samples_are_skipped_and_counted():
    stream = ppk2_stream()
    at = 4 * 2000
    lost_samples = 3
    burst = bytes([0xFF, 0x13, 0x00, 0xC4, 0x55, 0x07, 0x99])
    damaged = stream[:at] + burst + stream[at + 4 * lost_samples:]
    dec, capture = decode(damaged, chunk=333)
    # the sample before the burst is given up too: a lost top byte would leave its counter intact
    assert dec.lost == lost_samples + 1 and dec.skipped == len(burst)
    assert len(capture.current_a) == 8 * 650 + 250
    report = energy_report(capture, "ppk2:test", 8)
    assert report["windows"] + report["windows_with_lost_samples"] == 8
    assert report["per_inference"]["median_uj"] == pytest.approx(window_uj(), rel=1e-6)


def test_fewer_than_five_windows_is_an_error_not_a_median():
    _, capture = decode(ppk2_stream(windows=4))
    report = energy_report(capture, "ppk2:test", 4)
    assert report["per_inference"] is None and "at least 5" in report["error"]


class Ppk2Device:
    """The PPK2's side: metadata on 0x19, the sample stream after 0x06, silence after
    ``stall_after`` bytes of it (a probe that stops answering)."""

    def __init__(self, stream: bytes, stall_after: int | None = None, mute: bool = False):
        self.stream, self.stall_after, self.mute = stream, stall_after, mute
        self.commands = bytearray()

    def __call__(self, data: bytes, dev: PtyDevice) -> None:
        self.commands += data
        if self.mute:
            return
        for b in data:
            if b == GET_META_DATA:
                dev.send(METADATA.encode())
            elif b == AVERAGE_START:
                dev.send(self.stream if self.stall_after is None else self.stream[:self.stall_after])


def test_a_session_over_a_serial_port(pty_devices):
    device = Ppk2Device(ppk2_stream(windows=6))
    dev = pty_devices(device)
    probe = make_probe(f"ppk2:{dev.path},trigger=D0,timeout=1", load_board("nucleo_f446re"))
    capture = capture_session(probe, dev)
    assert bytes([GET_META_DATA]) in device.commands and bytes([SET_POWER_MODE, 1]) in device.commands
    assert device.commands.index(AVERAGE_START) < device.commands.index(AVERAGE_STOP)
    report = energy_report(capture, probe.spec, 6)
    assert report["windows"] == 6 and report["per_inference"]["median_uj"] == pytest.approx(window_uj(), rel=1e-6)


def test_a_probe_that_stops_answering_keeps_the_windows_before(pty_devices):
    stream = ppk2_stream(windows=8)
    dev = pty_devices(Ppk2Device(stream, stall_after=4 * (250 + 6 * 650)))
    probe = make_probe(f"ppk2:{dev.path},timeout=0.4", load_board("nucleo_f446re"))
    probe.open()
    try:
        probe.start()
        time.sleep(1.0)  # longer than the time-out, no more bytes
        with pytest.raises(ProbeStoppedError) as err:
            probe.stop()
    finally:
        probe.close()
    assert "stopped answering" in str(err.value) and "\n" not in str(err.value)
    report = energy_report(err.value.capture, probe.spec, 8)
    assert report["windows"] == 6 and report["per_inference"]["median_uj"] == pytest.approx(window_uj(), rel=1e-6)


def test_a_probe_that_never_answers_times_out(pty_devices):
    dev = pty_devices(Ppk2Device(b"", mute=True))
    probe = make_probe(f"ppk2:{dev.path},timeout=0.3", load_board("nucleo_f446re"))
    start = time.monotonic()
    with pytest.raises(ProbeStoppedError, match="no answer to GET_META_DATA"):
        try:
            probe.open()
        finally:
            probe.close()
    assert time.monotonic() - start < 2


def test_a_missing_port_and_bad_options_are_one_line_errors():
    board = load_board("nucleo_f446re")
    with pytest.raises(PowerProbeError, match="cannot open /dev/ttyNOPE"):
        make_probe("ppk2:/dev/ttyNOPE", board).open()
    for spec, words in (("ppk3:/dev/x", "unknown probe"), ("ppk2:/dev/x,trigger=D9", "D0..D7"),
                        ("ppk2:/dev/x,colour=red", "unknown option"), ("ppk2:", "serial port"),
                        ("ppk2:/dev/x,mode=source,voltage=7", "0.8-5.0 V")):
        with pytest.raises(PowerProbeError, match=words) as err:
            make_probe(spec, board)
        assert "\n" not in str(err.value)


def test_one_window_per_layer_gives_each_layer_its_own_windows():
    """Firmware that toggles the pin around each layer (the export's layer hook): 3
    windows per inference, each layer's energy from its own windows."""
    lengths, gap, inner = (100, 300, 50), 200, 20
    words, counter = [], 0
    for _ in range(6):
        words += [(IDLE, 0)] * gap
        for n in lengths:
            words += [(ACTIVE, 1)] * n + [(IDLE, 0)] * inner
    stream = b"".join(encode_sample(c, RANGE, k, lg).to_bytes(4, "little") for k, (c, lg) in enumerate(words))
    _, capture = decode(stream)
    report = energy_report(capture, "ppk2:test", 6, layer_ops=["CONV_2D", "DEPTHWISE_CONV_2D", "ADD"])
    assert report["windows"] == 6 and report["windows_per_inference"] == 3
    assert report["layer_split"] == "one trigger window per layer"
    assert [layer["median_uj"] for layer in report["layers"]] == pytest.approx([window_uj(n) for n in lengths], rel=1e-6)
    assert report["per_inference"]["median_uj"] == pytest.approx(window_uj(sum(lengths)), rel=1e-6)
    assert report["per_inference"]["time_us"] == pytest.approx(sum(lengths) * 10.0)
