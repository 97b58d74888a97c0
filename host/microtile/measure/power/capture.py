"""What every power probe hands back (a Capture: current samples at a fixed rate, the
trigger's edges, the supply voltage) and the energy inside the triggered windows.

The board raises its trigger GPIO for the whole INVOKE (docs/protocol.md), so with one
INVOKE per input there is one window per inference. Energy = sum of V x I over the
window's samples / sample rate. Per layer, each window is split at the layer
boundaries given by the measured DWT cycles of each layer (the trigger does not move
between layers); MLPerf Tiny's rule is followed: the median over at least
MIN_WINDOWS windows, with min and max.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from microtile.errors import LinkError, MicrotileError

MIN_WINDOWS = 5  # MLPerf Tiny: the median of at least 5 windows


class PowerProbeError(MicrotileError):
    """A power probe that is missing, refuses its configuration or is misnamed (exit 2)."""


class ProbeStoppedError(LinkError):
    """The power probe stopped answering during a capture (exit 3). ``capture`` holds
    what arrived before, so the windows measured until then still count."""

    def __init__(self, message: str, capture: "Capture | None" = None):
        super().__init__(message)
        self.capture = capture


@dataclass
class Capture:
    """Current samples at ``sample_rate_hz`` (A; NaN where samples were lost), the
    trigger edges as (sample index, rising), and the supply voltage: one value (V) or
    one per sample (a Joulescope measures it)."""
    probe: str
    sample_rate_hz: float
    current_a: np.ndarray
    edges: list[tuple[int, bool]]
    supply_v: float | np.ndarray
    voltage_source: str  # "measured" (the probe reads it), "set" (the probe supplies it), "given" (option)
    lost_samples: int = 0  # samples the stream lost (resynchronised around them)
    garbage: int = 0  # bytes or lines that were not protocol and were skipped
    notes: list[str] = field(default_factory=list)

    def windows(self) -> list[tuple[int, int]]:
        """(start, end) sample indices of each complete window: a rising edge, then the
        next falling edge. A window already open at the first sample, or still open at
        the last, is partial and left out."""
        out, start = [], None
        for index, rising in self.edges:
            if rising:
                start = index
            elif start is not None:
                if index > start:
                    out.append((start, index))
                start = None
        return out

    def power_w(self, start: int, end: int) -> np.ndarray:
        v = self.supply_v
        seg = self.current_a[start:end]
        return seg * (v[start:end] if isinstance(v, np.ndarray) else v)

    def mean_voltage(self) -> float:
        v = self.supply_v
        return float(np.nanmean(v)) if isinstance(v, np.ndarray) else float(v)


def edges_from_levels(levels: np.ndarray) -> list[tuple[int, bool]]:
    """Edges of a sampled digital line (bool per sample): (index of the first sample
    at the new level, rising). The level of the first sample is not an edge."""
    levels = np.asarray(levels, dtype=bool)
    change = np.flatnonzero(levels[1:] != levels[:-1]) + 1
    return [(int(i), bool(levels[i])) for i in change]


def split_energy(power_w: np.ndarray, sample_rate_hz: float, fractions: list[float]) -> list[float]:
    """Energy (J) of consecutive parts of a window whose lengths are ``fractions`` of
    it; a boundary inside a sample takes that sample's share (cumulative energy is
    interpolated linearly)."""
    cumulative = np.concatenate(([0.0], np.cumsum(power_w))) / sample_rate_hz
    bounds = np.concatenate(([0.0], np.cumsum(fractions))) * len(power_w)
    at = np.interp(bounds, np.arange(len(cumulative)), cumulative)
    return [float(b - a) for a, b in zip(at[:-1], at[1:])]


def significant(x: float, digits: int = 7) -> float:
    """A measured figure rounded to the digits that mean something (µJ of a layer can be 0.001)."""
    return float(f"{x:.{digits}g}")


def _stats_uj(values_j: list[float]) -> dict:
    uj = [v * 1e6 for v in values_j]
    return {"median_uj": significant(statistics.median(uj)), "min_uj": significant(min(uj)),
            "max_uj": significant(max(uj))}


def energy_report(capture: Capture, spec: str, inferences: int, layer_cycles: list[int | None] | None = None,
                  layer_ops: list[str] | None = None) -> dict:
    """The run JSON's ``energy`` (README, "Energy"): per inference the median, min and
    max µJ over the windows, the median average power and window time, the supply
    voltage, and per layer. Per layer: when there is one window per layer (firmware
    that toggles the pin around each layer, e.g. through the export's layer hook),
    each layer's own windows; otherwise each inference's window split by the measured
    cycles per layer, when they are known. Inferences with lost samples are left out
    of the statistics (and counted)."""
    windows = capture.windows()
    n_layers = len(layer_ops or layer_cycles or [])
    per_layer_windows = n_layers > 1 and len(windows) == inferences * n_layers
    step = n_layers if per_layer_windows else 1
    groups = [windows[k:k + step] for k in range(0, len(windows), step)]  # the windows of one inference
    complete = [g for g in groups if not any(np.isnan(capture.current_a[s:e]).any() for s, e in g)]
    report = {
        "probe": capture.probe, "spec": spec, "sample_rate_hz": capture.sample_rate_hz,
        "supply_v": round(capture.mean_voltage(), 4), "voltage_source": capture.voltage_source,
        "windows": len(complete), "windows_per_inference": step,
        "windows_with_lost_samples": len(groups) - len(complete),
        "inferences": inferences, "lost_samples": capture.lost_samples, "garbage": capture.garbage,
        "per_inference": None, "layers": None, "layer_split": None, "notes": list(capture.notes), "error": None,
    }
    if len(complete) < MIN_WINDOWS:
        report["error"] = (f"{len(complete)} complete trigger window(s) captured for {inferences} inference(s); "
                           f"the median needs at least {MIN_WINDOWS}: check the trigger wire (board trigger pin "
                           f"to the probe's digital input) and the ground")
        return report
    fs = capture.sample_rate_hz
    window_j = [[float(np.sum(capture.power_w(s, e))) / fs for s, e in g] for g in complete]
    energies = [sum(w) for w in window_j]
    times = [sum(e - s for s, e in g) / fs for g in complete]
    powers_mw = [1e3 * en / t for en, t in zip(energies, times)]
    report["per_inference"] = {**_stats_uj(energies), "mean_power_mw": significant(statistics.median(powers_mw)),
                               "time_us": significant(1e6 * statistics.median(times))}
    if len(groups) != inferences:
        report["notes"].append(f"{len(groups) * step} windows for {inferences} inferences")
    ops = layer_ops or [None] * n_layers
    if per_layer_windows:
        per_layer = window_j
        report["layer_split"] = "one trigger window per layer"
    elif layer_cycles and None not in layer_cycles and sum(layer_cycles) > 0:
        fractions = [c / sum(layer_cycles) for c in layer_cycles]
        per_layer = [split_energy(capture.power_w(s, e), fs, fractions) for (s, e), in complete]
        report["layer_split"] = "each window split at the layer boundaries by the measured cycles per layer"
    else:
        return report
    report["layers"] = [{"index": i, "op": ops[i], **_stats_uj([w[i] for w in per_layer])} for i in range(n_layers)]
    return report
