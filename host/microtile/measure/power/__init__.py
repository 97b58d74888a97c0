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


def open_probe(spec: str, board: Board):
    probe = make_probe(spec, board)
    try:
        probe.open()
    except BaseException:
        probe.close()
        raise
    return probe


__all__ = ["MIN_WINDOWS", "Capture", "PowerProbeError", "ProbeStoppedError", "energy_report", "make_probe",
           "open_probe", "parse_spec", "KINDS"]
