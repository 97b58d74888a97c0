"""How close the timing model comes on a real board: a run's estimated cycles per layer
(`est_cycles`, host/microtile/measure/timing.py) against the DWT cycles the board counted
(`cycles`), as an error per layer and in total.

    microtile run MODEL.tflite --board nucleo_l4r5zi --random 3 --json run.json
    python -m microtile.measure.timing_check run.json

prints one line per layer and the total (exit 2 when the JSON has no board cycle counts
or no estimate). tests/test_hardware.py runs the same comparison on an attached board."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from microtile.errors import MicrotileError
from microtile.measure.runner import EXIT_BAD_INPUT


@dataclass
class LayerError:
    index: int
    op: str
    cycles: int  # measured (DWT)
    est_cycles: int  # the timing model's

    @property
    def error(self) -> float:
        """(estimate - measured) / measured: negative when the model reads low."""
        return (self.est_cycles - self.cycles) / self.cycles


@dataclass
class EstimateCheck:
    board: str
    model: str
    layers: list[LayerError]
    cycles: int
    est_cycles: int

    @property
    def error(self) -> float:
        return (self.est_cycles - self.cycles) / self.cycles

    @property
    def worst_layer(self) -> LayerError:
        return max(self.layers, key=lambda layer: abs(layer.error))

    def lines(self) -> list[str]:
        out = [f"{self.model} on {self.board}: estimated vs measured (DWT) cycles"]
        out += [f"  layer {e.index:3d} {e.op:<18} {e.cycles:>12,} {e.est_cycles:>12,} {e.error:+8.1%}"
                for e in self.layers]
        out.append(f"  total {'':<22} {self.cycles:>12,} {self.est_cycles:>12,} {self.error:+8.1%}"
                   f"   (worst layer {self.worst_layer.index}: {self.worst_layer.error:+.1%})")
        return out


def compare_estimate(run: dict) -> EstimateCheck:
    """The comparison for a run's JSON (RunResult.to_json(), or `microtile run --json`).
    MicrotileError when the run has no board cycles or no estimate for some layer."""
    if run.get("counter_unit") != "cycles":
        raise MicrotileError(f"the run counted {run.get('counter_unit')!r}, not board cycles: run it on a board "
                             "(`microtile run MODEL --board nucleo_<name> --json FILE`)")
    layers = []
    for layer in run["layers"]:
        cycles, est = layer.get("cycles"), layer.get("est_cycles")
        if est is None:
            why = (run.get("timing_model") or {}).get("error") or "no estimate in the run"
            raise MicrotileError(f"layer {layer['index']} has no est_cycles ({why})")
        if not cycles:
            raise MicrotileError(f"layer {layer['index']} has no measured cycles: the run measured no sample")
        layers.append(LayerError(layer["index"], layer["op"], int(cycles), int(est)))
    if not layers:
        raise MicrotileError("the run has no layers")
    return EstimateCheck(run.get("board", "?"), run.get("model", "?"), layers,
                         sum(e.cycles for e in layers), sum(e.est_cycles for e in layers))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m microtile.measure.timing_check RUN.json   (from `microtile run ... --board nucleo_<name> "
              "--json RUN.json`)")
        return EXIT_BAD_INPUT
    try:
        run = json.loads(Path(argv[0]).read_text())
        check = compare_estimate(run)
    except OSError as exc:
        print(f"error: cannot read {argv[0]} ({exc.strerror})")
        return EXIT_BAD_INPUT
    except (ValueError, KeyError, TypeError, AttributeError):
        print(f"error: {argv[0]} is not a `microtile run --json` result")
        return EXIT_BAD_INPUT
    except MicrotileError as exc:
        print(f"error: {exc}")
        return EXIT_BAD_INPUT
    print("\n".join(check.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
