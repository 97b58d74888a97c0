"""Nordic Power Profiler Kit II over its USB CDC serial port.

Protocol (as Nordic's nRF Connect Power Profiler drives it): one-byte commands, some
with arguments, and no replies except two: GET_META_DATA (0x19) answers with
``name: value`` lines ending in ``END`` (the calibration of each of the 5 measurement
ranges: R, GS, GI, O, S, I, UG, plus VDD, HW, mode, ...), and AVERAGE_START (0x06)
starts a stream of 4-byte little-endian samples at 100 kS/s until AVERAGE_STOP (0x07):

    bits  0-13  ADC value (x 4 before conversion)
    bits 14-16  measurement range 0..4 (5..7 never appear in a good sample)
    bits 18-23  sample counter, +1 per sample, modulo 64
    bits 24-31  the logic port D0..D7

current (A) = UG[r] x (w x (GS[r] x w + GI[r]) + S[r] x VDD(V) + I[r]),
w = (4 x ADC - O[r]) x (1.8 / 163840) / R[r].

The counter is what resynchronises the stream: a dropped byte would otherwise shift
every later sample by a byte (a known complaint about PPK2 tools that read the stream
four bytes at a time). A sample whose counter is not the next one starts a search for
the first byte offset where SYNC_WORDS samples in a row have consecutive counters; the
samples in between are lost (NaN, counted), the ones after decode as sent.

ppk2-api 0.9.2 (PyPI) is not used: it reads the stream four bytes at a time with no
resynchronisation, and gives no sample counter check.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from microtile.measure.power.capture import Capture, PowerProbeError, ProbeStoppedError, edges_from_levels
from microtile.measure.power.serial_probe import SerialProbe

# commands (one byte, then arguments)
AVERAGE_START, AVERAGE_STOP = 0x06, 0x07
DEVICE_RUNNING_SET, REGULATOR_SET, SET_POWER_MODE = 0x0C, 0x0D, 0x11
GET_META_DATA, RESET = 0x19, 0x20
MODE_AMPERE, MODE_SOURCE = 1, 2

SAMPLE_RATE_HZ = 100_000
ADC_MULT = 1.8 / 163840
RANGES = 5
MAX_UNSYNCED = 1 << 16  # bytes searched for a sync before the oldest are dropped
SYNC_WORDS = 4  # consecutive counters that prove an alignment (a false one: 1 in 64**3)
# Nordic's defaults, used for any coefficient the metadata does not give
DEFAULT_CAL = {"r": [1031.64, 101.65, 10.15, 0.94, 0.043], "gs": [1.0] * 5, "gi": [1.0] * 5,
               "o": [0.0] * 5, "s": [0.0] * 5, "i": [0.0] * 5, "ug": [1.0] * 5}


def parse_metadata(text: str) -> dict:
    """``NAME: VALUE`` lines up to END -> {"cal": {coef: [5 floats]}, "vdd_mv", "raw"}."""
    raw: dict[str, str] = {}
    for line in text.replace("\r", "").split("\n"):
        line = line.strip()
        if line == "END":
            break
        if ":" in line:
            key, value = line.split(":", 1)
            raw[key.strip().lower()] = value.strip()
    cal = {k: list(v) for k, v in DEFAULT_CAL.items()}
    for coef in cal:
        for r in range(RANGES):
            value = raw.get(f"{coef}{r}")
            try:
                if value is not None and value.lower() not in ("nan", "-nan"):
                    cal[coef][r] = float(value)
            except ValueError:
                pass
    try:
        vdd = int(float(raw.get("vdd", "3300")))
    except ValueError:
        vdd = 3300
    return {"cal": cal, "vdd_mv": vdd, "raw": raw}


def encode_sample(adc: int, measurement_range: int, counter: int, logic: int) -> int:
    """One 4-byte sample word (the inverse of the bit fields above)."""
    return (adc & 0x3FFF) | (measurement_range & 7) << 14 | (counter & 0x3F) << 18 | (logic & 0xFF) << 24


def to_current(words: np.ndarray, cal: dict, vdd_mv: int) -> np.ndarray:
    """Sample words -> current in A (Nordic's conversion, without its spike filter)."""
    words = words.astype(np.uint32)
    rng = np.minimum((words >> 14) & 7, RANGES - 1)
    adc = ((words & 0x3FFF) * 4).astype(np.float64)
    coef = {k: np.asarray(v, dtype=np.float64)[rng] for k, v in cal.items()}
    w = (adc - coef["o"]) * (ADC_MULT / coef["r"])
    return coef["ug"] * (w * (coef["gs"] * w + coef["gi"]) + coef["s"] * (vdd_mv / 1000) + coef["i"])


class Ppk2Decoder:
    """Bytes of the sample stream -> current, logic byte per sample; resynchronises on
    the counter after dropped or inserted bytes (``lost`` samples, ``skipped`` bytes)."""

    def __init__(self, cal: dict, vdd_mv: int):
        self.cal, self.vdd_mv = cal, vdd_mv
        self.buf = bytearray()
        self.expected: int | None = None  # the next sample's counter; None: not in sync
        self._after_last = 0  # the counter the next sample should have had when sync was lost
        self.currents: list[np.ndarray] = []
        self.logic: list[np.ndarray] = []
        self.last_logic = 0
        self.lost = 0
        self.skipped = 0
        self.resyncs = 0

    def _emit(self, words: np.ndarray) -> None:
        if len(words):
            self.currents.append(to_current(words, self.cal, self.vdd_mv))
            levels = ((words >> 24) & 0xFF).astype(np.uint8)
            self.logic.append(levels)
            self.last_logic = int(levels[-1])

    def _emit_lost(self, count: int) -> None:
        if count:
            self.currents.append(np.full(count, np.nan))
            self.logic.append(np.full(count, self.last_logic, dtype=np.uint8))  # no edge invented
            self.lost += count

    def _find_sync(self) -> int | None:
        """The first byte offset where SYNC_WORDS good samples with consecutive counters
        start, or None when the buffer does not hold one yet."""
        best = None
        for align in range(4):
            n = (len(self.buf) - align) // 4
            if n < SYNC_WORDS:
                continue
            words = np.frombuffer(bytes(self.buf[align:align + 4 * n]), dtype="<u4")
            counter = (words >> 18) & 0x3F
            ok = ((words >> 14) & 7) < RANGES
            step = ((counter[1:] - counter[:-1]) & 0x3F) == 1
            run = ok[:-1] & ok[1:] & step  # run[j]: samples j, j+1 follow each other
            good = np.convolve(run.astype(np.int32), np.ones(SYNC_WORDS - 1, dtype=np.int32), "valid")
            hits = np.flatnonzero(good == SYNC_WORDS - 1)
            if hits.size:
                offset = align + 4 * int(hits[0])
                best = offset if best is None else min(best, offset)
        return best

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            if self.expected is None:
                offset = self._find_sync()
                if offset is None:
                    if len(self.buf) > MAX_UNSYNCED:  # garbage: keep only what could start a sync
                        drop = len(self.buf) - 4 * SYNC_WORDS
                        self.skipped += drop
                        del self.buf[:drop]
                    return  # wait for more bytes
                counter = (int.from_bytes(self.buf[offset:offset + 4], "little") >> 18) & 0x3F
                if self.currents or self.lost:  # samples went missing (not the stream's start)
                    self.resyncs += 1
                    self._emit_lost((counter - self._after_last) & 0x3F)
                self.skipped += offset
                del self.buf[:offset]
                self.expected = counter
            words = self._words()
            good = self._good_prefix(words)
            keep = max(good - 1, 0)  # the last good sample waits until the next one confirms it
            self._emit(words[:keep])
            del self.buf[:4 * keep]
            self.expected = (self.expected + keep) & 0x3F
            if good == len(words):
                return
            # out of step: the sample before may have lost its top byte (the logic port)
            # and taken the next sample's first byte, its counter intact: it is lost too
            if good:
                self._emit_lost(1)
                del self.buf[:4]
                self.expected = (self.expected + 1) & 0x3F
            self._after_last = self.expected
            self.expected = None  # search the next alignment

    def _words(self) -> np.ndarray:
        return np.frombuffer(bytes(self.buf[:4 * (len(self.buf) // 4)]), dtype="<u4")

    def _good_prefix(self, words: np.ndarray) -> int:
        """How many samples from the buffer's start have the expected counters."""
        counter = (words >> 18) & 0x3F
        want = (self.expected + np.arange(len(words))) & 0x3F
        bad = np.flatnonzero((counter != want) | (((words >> 14) & 7) >= RANGES))
        return int(bad[0]) if bad.size else len(words)

    def finish(self) -> None:
        """End of stream: the samples held back are emitted; bytes that never made a
        whole synchronised sample are skipped."""
        if self.expected is not None and len(self.buf) >= 4:
            words = self._words()
            good = self._good_prefix(words)
            self._emit(words[:good])
            del self.buf[:4 * good]
        if self.buf:
            self.skipped += len(self.buf)
            self.buf.clear()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        cur = np.concatenate(self.currents) if self.currents else np.zeros(0)
        logic = np.concatenate(self.logic) if self.logic else np.zeros(0, dtype=np.uint8)
        return cur, logic


def capture_from_decoder(dec: Ppk2Decoder, spec: str, channel: int, supply_v: float, voltage_source: str) -> Capture:
    current, logic = dec.arrays()
    levels = ((logic >> channel) & 1).astype(bool)
    notes = [f"resynchronised {dec.resyncs} time(s), skipping {dec.skipped} byte(s)"] if dec.resyncs else []
    return Capture("ppk2", SAMPLE_RATE_HZ, current, edges_from_levels(levels), supply_v, voltage_source,
                   lost_samples=dec.lost, garbage=dec.skipped, notes=notes)


def _channel(text: str, spec: str) -> int:
    t = text.upper().lstrip("D")
    if not t.isdigit() or not 0 <= int(t) <= 7:
        raise PowerProbeError(f"--power {spec}: trigger={text} is not a PPK2 logic input; use D0..D7")
    return int(t)


class Ppk2Probe(SerialProbe):
    """``ppk2:PORT[,trigger=D0][,mode=ampere|source][,voltage=3.3][,timeout=2]``.
    ampere: the PPK2 in series with the board's supply (the board's own voltage, given
    by ``voltage``); source: the PPK2 supplies the board at ``voltage``."""
    kind = "ppk2"

    def __init__(self, spec: str, address: str, options: dict[str, str], supply_v: float):
        super().__init__(spec, address, options)
        self.channel = _channel(options.pop("trigger", "D0"), spec)
        self.mode = options.pop("mode", "ampere")
        if self.mode not in ("ampere", "source"):
            raise PowerProbeError(f"--power {spec}: mode={self.mode}: ampere or source")
        self.supply_v = float(options.pop("voltage", supply_v))
        if self.mode == "source" and not 0.8 <= self.supply_v <= 5.0:
            raise PowerProbeError(f"--power {spec}: voltage={self.supply_v:g} V: the PPK2 supplies 0.8-5.0 V")
        self.decoder: Ppk2Decoder | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self.open_port()
        self.write(bytes([GET_META_DATA]))
        text, deadline = b"", time.monotonic() + self.stall_s
        while b"END" not in text:
            if time.monotonic() > deadline:
                raise ProbeStoppedError(f"power probe {self.spec}: no answer to GET_META_DATA within "
                                        f"{self.stall_s:g} s; is {self.address} a PPK2 (nRF Connect Power Profiler "
                                        f"firmware)? unplug and replug it")
            text += self.port.read(256)
        meta = parse_metadata(text.decode("ascii", "replace"))
        self.vdd_mv = int(round(self.supply_v * 1000)) if self.mode == "source" else meta["vdd_mv"]
        self.cal = meta["cal"]
        self.write(bytes([SET_POWER_MODE, MODE_SOURCE if self.mode == "source" else MODE_AMPERE]))
        if self.mode == "source":
            self.write(bytes([REGULATOR_SET, self.vdd_mv >> 8, self.vdd_mv & 0xFF]))
            self.write(bytes([DEVICE_RUNNING_SET, 1]))  # power the board

    def feed(self, data: bytes) -> None:
        with self._lock:
            self.decoder.feed(data)

    def start(self) -> None:
        self.decoder = Ppk2Decoder(self.cal, self.vdd_mv)
        self.port.reset_input_buffer()
        self.write(bytes([AVERAGE_START]))
        self.start_reader()

    def stop(self) -> Capture:
        stalled_before = self.stalled
        try:
            self.write(bytes([AVERAGE_STOP]))
        except ProbeStoppedError:
            stalled_before = True
        time.sleep(0.05)  # the samples still in flight
        self.stop_reader()
        with self._lock:
            self.decoder.finish()
        source = "set" if self.mode == "source" else "given"
        capture = capture_from_decoder(self.decoder, self.spec, self.channel, self.supply_v, source)
        if stalled_before or self.stalled:
            raise self.stopped_error(capture)
        return capture
