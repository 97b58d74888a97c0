"""Estimated energy: the timing model's estimated cycles x the datasheet's run current
at the board's clock and supply voltage (``power:`` in boards/*.yaml).

    E (µJ) = cycles / clock (s) x I_run (A) x V x 1e6,  I_run = µA/MHz x clock (MHz)
             (or the datasheet's mA at that clock)

An estimate (labelled "estimated energy" everywhere), not a measurement: the datasheet
figure is a typical current for its stated code and conditions, not this model's.
"""
from __future__ import annotations

from microtile.measure.power.capture import significant
from microtile.targets.boards import Board


def datasheet_power(board: Board) -> dict | None:
    """The board YAML's ``power:`` block with the run current at the board's clock
    (A), or None when the YAML has none."""
    spec = (board.raw or {}).get("power")
    if not spec:
        return None
    mhz = board.clock_hz / 1e6
    if "run_ua_per_mhz" in spec:
        current_a = float(spec["run_ua_per_mhz"]) * mhz * 1e-6
    else:
        current_a = float(spec["run_ma"]) * 1e-3 * board.clock_hz / float(spec.get("at_hz", board.clock_hz))
    return {"supply_v": float(spec["supply_v"]), "run_current_ma": round(current_a * 1e3, 4),
            "run_ua_per_mhz": spec.get("run_ua_per_mhz"), "clock_hz": board.clock_hz,
            "source": str(spec.get("source", "")), "current_a": current_a}


def estimated_energy_uj(cycles: int | None, power: dict | None) -> float | None:
    if cycles is None or power is None:
        return None
    return significant(cycles / power["clock_hz"] * power["current_a"] * power["supply_v"] * 1e6)


def estimated_energy_info(board: Board) -> dict:
    """The run JSON's ``estimated_energy``: what the estimate is made of, or why there is none."""
    power = datasheet_power(board)
    if power is None:
        return {"label": "estimated energy", "error": f"no datasheet run current (power:) in boards/{board.name}.yaml"}
    return {"label": "estimated energy", **{k: v for k, v in power.items() if k != "current_a"}, "error": None}


def add_estimated_energy(data: dict, board: Board) -> None:
    """A run's JSON gets ``est_energy_uj`` beside ``est_cycles`` (each layer, total) and
    ``estimated_energy`` (the datasheet figures it rests on, or why there is none)."""
    power = datasheet_power(board)
    for entry in (*data["layers"], data["total"]):
        entry["est_energy_uj"] = estimated_energy_uj(entry.get("est_cycles"), power)
    data["estimated_energy"] = estimated_energy_info(board)
