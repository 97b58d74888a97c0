"""Joulescope (JS110 / JS220) through the ``joulescope`` package, and its capture files
(.jls, JLS v2) through ``pyjls``.

Live: the device streams current, voltage and the general-purpose input GPI0 (IN0 on
the JS110: the ``current_lsb`` field carries it); microtile copies the stream buffer
as it fills (a StreamProcessApi object, like joulescope's own JLS writer) and can save
it as a .jls file (``save=FILE.jls``) that the Joulescope UI opens.

Files: FSR signals named ``current`` (A), ``voltage`` (V) and the trigger input, a u1
signal named ``gpi[0]`` / ``gpi0`` / ``in0`` / ``0`` (any of these; ``trigger=N``
picks GPI N).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from microtile.measure.power.capture import Capture, PowerProbeError, ProbeStoppedError, edges_from_levels

SAMPLE_RATE_HZ = 100_000  # downsampled on the instrument: 400 kB/s of floats is what the host keeps up with


def _trigger_names(n: int) -> tuple[str, ...]:
    return (f"gpi[{n}]", f"gpi{n}", f"in{n}", str(n))


def _gpi(text: str, spec: str) -> int:
    t = text.lower().removeprefix("gpi").removeprefix("in").strip("[]")
    if not t.isdigit() or int(t) > 7:
        raise PowerProbeError(f"--power {spec}: trigger={text}: give the GPI input number, e.g. trigger=0")
    return int(t)


def read_jls(path: str | Path, trigger: int = 0, spec: str = "") -> Capture:
    """A .jls capture -> Capture (current, measured voltage, edges of GPI ``trigger``)."""
    from pyjls import Reader

    path = Path(path)
    if not path.is_file():
        raise PowerProbeError(f"{path}: no such capture file")
    try:
        reader = Reader(str(path))
    except Exception as exc:  # noqa: BLE001 - pyjls raises its own RuntimeError for a bad file
        raise PowerProbeError(f"{path}: not a readable JLS capture file ({exc})") from None
    try:
        by_name = {s.name.lower(): s for s in reader.signals.values() if s.signal_id != 0}
        missing = [n for n in ("current", "voltage") if n not in by_name]
        gpi = next((by_name[n] for n in _trigger_names(trigger) if n in by_name), None)
        if missing or gpi is None:
            raise PowerProbeError(f"{path}: no {', '.join(missing + ([] if gpi else [f'gpi[{trigger}]']))} signal "
                                  f"(has {', '.join(sorted(by_name)) or 'none'}); record current, voltage and the "
                                  f"trigger input")
        cur, volt = by_name["current"], by_name["voltage"]
        rate = float(cur.sample_rate)
        if float(volt.sample_rate) != rate or float(gpi.sample_rate) != rate:
            raise PowerProbeError(f"{path}: current, voltage and gpi are not at one sample rate")
        n = min(cur.length, volt.length, gpi.length)
        current = np.asarray(reader.fsr(cur.signal_id, 0, n), dtype=np.float64)
        voltage = np.asarray(reader.fsr(volt.signal_id, 0, n), dtype=np.float64)
        packed = np.asarray(reader.fsr(gpi.signal_id, 0, n))
        levels = np.unpackbits(packed.view(np.uint8), bitorder="little")[:n].astype(bool) \
            if packed.dtype == np.uint8 and len(packed) < n else packed.astype(bool)
    finally:
        reader.close()
    return Capture("joulescope", rate, current, edges_from_levels(levels), voltage, "measured",
                   lost_samples=int(np.isnan(current).sum()), notes=[f"file {path.name}"])


def write_jls(path: str | Path, capture_rate: float, current: np.ndarray, voltage: np.ndarray,
              levels: np.ndarray, trigger: int = 0, source: str = "microtile") -> None:
    """Save a capture as JLS v2: current and voltage (f32) and GPI ``trigger`` (u1)."""
    from pyjls import DataType, SignalType, Writer

    with Writer(str(path)) as w:
        w.source_def(source_id=1, name=source, vendor="Jetperch", model="Joulescope", version="",
                     serial_number="")
        for sid, name, units, dtype in ((1, "current", "A", DataType.F32), (2, "voltage", "V", DataType.F32),
                                        (3, f"gpi[{trigger}]", "", DataType.U1)):
            w.signal_def(signal_id=sid, source_id=1, signal_type=SignalType.FSR, data_type=dtype,
                         sample_rate=int(capture_rate), name=name, units=units)
        w.fsr(1, 0, np.ascontiguousarray(current, dtype=np.float32))
        w.fsr(2, 0, np.ascontiguousarray(voltage, dtype=np.float32))
        w.fsr(3, 0, np.packbits(np.asarray(levels, dtype=np.uint8), bitorder="little"))


class JoulescopeProbe:
    """``joulescope[:SERIAL][,trigger=0][,save=FILE.jls]``: the attached Joulescope (the
    one whose serial number contains SERIAL when several are attached)."""
    kind = "joulescope"

    def __init__(self, spec: str, address: str, options: dict[str, str], supply_v: float):
        self.spec, self.serial = spec, address
        self.trigger = _gpi(options.pop("trigger", "0"), spec)
        if self.trigger > 1:
            raise PowerProbeError(f"--power {spec}: trigger={self.trigger}: the live stream carries GPI 0 or 1")
        self.save = options.pop("save", None)
        self.device = None
        self._chunks: list[dict] = []
        self._next = 0
        self._lock = threading.Lock()
        self._stopped_by_device: str | None = None

    def open(self) -> None:
        try:
            import joulescope
        except ImportError:
            raise PowerProbeError("--power joulescope needs the joulescope package: "
                                  ".venv/bin/pip install -r requirements.txt") from None
        devices = [d for d in joulescope.scan(config="off") if self.serial in str(d)]
        if not devices:
            raise PowerProbeError(f"power probe {self.spec}: no Joulescope{' ' + self.serial if self.serial else ''} "
                                  f"attached; check the USB cable (and its udev rules)")
        if len(devices) > 1:
            raise PowerProbeError(f"power probe {self.spec}: several Joulescopes attached "
                                  f"({', '.join(map(str, devices))}); name one: joulescope:SERIAL")
        self.device = devices[0]
        try:
            self.device.open()
            self.device.parameter_set("sensor_power", "on")
            self.device.parameter_set("i_range", "auto")
            self.device.parameter_set("v_range", "15V")
            self.device.parameter_set("sampling_frequency", SAMPLE_RATE_HZ)
            # GPI 0 rides in the current's least significant bit, GPI 1 in the voltage's
            self.device.parameter_set("current_lsb" if self.trigger == 0 else "voltage_lsb", f"gpi{self.trigger}")
            self.device.stream_process_register(self)
        except Exception as exc:  # noqa: BLE001 - the driver's errors are many; say which device
            raise ProbeStoppedError(f"power probe {self.spec}: {self.device} does not answer ({exc})") from None

    # StreamProcessApi (called from the driver's thread)
    def stream_notify(self, stream_buffer) -> bool:
        start, end = stream_buffer.sample_id_range
        start = max(start, self._next)
        if start < end:
            field = "current_lsb" if self.trigger == 0 else "voltage_lsb"
            data = stream_buffer.samples_get(start, end, fields=["current", "voltage", field])
            with self._lock:
                self._chunks.append({k: np.array(data["signals"][k]["value"]) for k in ("current", "voltage", field)})
            self._next = end
        return False

    def _on_stop(self, event, message) -> None:
        if event:
            self._stopped_by_device = message or f"event {event}"

    def start(self) -> None:
        self._chunks, self._next = [], 0
        self.device.start(stop_fn=self._on_stop)

    def stop(self) -> Capture:
        self.device.stop()
        field = "current_lsb" if self.trigger == 0 else "voltage_lsb"
        with self._lock:
            chunks = list(self._chunks)
        cat = {k: np.concatenate([c[k] for c in chunks]) if chunks else np.zeros(0) for k in ("current", "voltage", field)}
        levels = cat[field].astype(bool)
        capture = Capture("joulescope", SAMPLE_RATE_HZ, cat["current"].astype(np.float64), edges_from_levels(levels),
                          cat["voltage"].astype(np.float64), "measured",
                          lost_samples=int(np.isnan(cat["current"]).sum()))
        if self.save:
            write_jls(self.save, SAMPLE_RATE_HZ, cat["current"], cat["voltage"], levels, self.trigger, str(self.device))
        if self._stopped_by_device:
            raise ProbeStoppedError(f"power probe {self.spec} stopped streaming: {self._stopped_by_device}", capture)
        return capture

    def close(self) -> None:
        if self.device is not None:
            try:
                self.device.stream_process_unregister(self)
                self.device.close()
            except Exception:  # noqa: BLE001 - closing a device that is gone
                pass
            self.device = None
