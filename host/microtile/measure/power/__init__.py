"""Power probes: ``--power KIND:ADDRESS[,option=value...]`` (README, "Energy").

    ppk2:/dev/ttyACM2[,trigger=D0][,mode=ampere|source][,voltage=3.3][,timeout=2]
    joulescope[:SERIAL][,trigger=0][,save=FILE.jls]
    lpm01a:/dev/ttyACM3[,voltage=3.3][,freq=5k][,timeout=2]
    stlinkv3pwr:/dev/ttyACM4[,voltage=3.3][,freq=5k][,timeout=2]

Each probe: ``open()`` (connect and configure; PowerProbeError, exit 2, when it is
missing or refuses; ProbeStoppedError, exit 3, when it does not answer), ``start()``
(capture in the background), ``stop() -> Capture`` (ProbeStoppedError with the partial
capture when it stopped answering), ``close()``.
"""
from __future__ import annotations

from microtile.measure.power.capture import (MIN_WINDOWS, Capture, PowerProbeError, ProbeStoppedError,
                                             energy_report)
from microtile.targets.boards import Board

DEFAULT_SUPPLY_V = 3.3  # a Nucleo's MCU supply (IDD jumper) when the YAML gives none


def _probe_classes() -> dict:
    from microtile.measure.power.joulescope_probe import JoulescopeProbe
    from microtile.measure.power.ppk2 import Ppk2Probe
    from microtile.measure.power.st_power import StlinkV3PwrProbe, StPowerProbe

    return {"ppk2": Ppk2Probe, "joulescope": JoulescopeProbe, "lpm01a": StPowerProbe, "stlinkv3pwr": StlinkV3PwrProbe}


KINDS = ("ppk2", "joulescope", "lpm01a", "stlinkv3pwr")


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``kind:address,key=value,...`` -> (kind, address, options); a bad one: PowerProbeError."""
    head, *rest = spec.split(",")
    kind, _, address = head.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise PowerProbeError(f"--power {spec}: unknown probe '{kind}'; use one of {', '.join(KINDS)} "
                              f"(e.g. --power ppk2:/dev/ttyACM2)")
    options = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise PowerProbeError(f"--power {spec}: '{item}' is not key=value")
        options[key.strip().lower()] = value.strip()
    return kind, address.strip(), options


def supply_voltage(board: Board) -> float:
    return float(((board.raw or {}).get("power") or {}).get("supply_v", DEFAULT_SUPPLY_V))


def make_probe(spec: str, board: Board):
    """The probe object for ``spec`` (not opened): every option checked first."""
    kind, address, options = parse_spec(spec)
    probe = _probe_classes()[kind](spec, address, options, supply_voltage(board))
    if options:
        raise PowerProbeError(f"--power {spec}: unknown option(s) {', '.join(options)} for {kind}")
    return probe


def open_power(probe) -> None:
    """Connect and configure the probe; closed again when that fails."""
    try:
        probe.open()
    except BaseException:
        probe.close()
        raise


__all__ = ["MIN_WINDOWS", "Capture", "PowerProbeError", "ProbeStoppedError", "energy_report", "make_probe",
           "open_power", "check_power_run", "finish_energy", "parse_spec", "KINDS"]


def check_power_run(spec: str, board: Board, emulated: bool, inferences: int):
    """Before anything is built: the probe spec is valid, the target is a board, and
    there are enough inferences for the median. Returns the (unopened) probe."""
    if emulated or board.is_emulated:
        raise PowerProbeError(f"--power {spec}: an emulated run has no current to measure; drop --power "
                              f"(emulated runs report estimated energy from the timing model)")
    if inferences < MIN_WINDOWS:
        raise PowerProbeError(f"--power {spec}: {inferences} input(s); the energy is the median of at least "
                              f"{MIN_WINDOWS} trigger windows (MLPerf Tiny): give --random {MIN_WINDOWS} or more")
    if board.trigger is None:
        raise PowerProbeError(f"--power {spec}: boards/{board.name}.yaml has no trigger pin")
    return make_probe(spec, board)


def finish_energy(result, probe, started: bool) -> None:
    """Stop the capture after the run (whatever ended it), integrate the windows into
    ``result.energy``; a probe that stopped answering fails the run (exit 3) but the
    windows it delivered and everything the run measured stay."""
    capture = None
    try:
        if started:
            capture = probe.stop()
    except ProbeStoppedError as exc:
        capture = exc.capture
        if not result.failed:
            result.fail(exc)
    finally:
        probe.close()
    if capture is None:
        return
    cycles = result.mean_counts() if result.counter_unit == "cycles" else None
    ops = [op.opcode for op in result.compiled.device_ops]
    result.energy = energy_report(capture, probe.spec, result.samples, cycles, ops)
