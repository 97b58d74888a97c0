"""`microtile bench`: the reference and the optimised kernel sets side by side, per
layer, on the same target and inputs, each checked bit for bit against TFLM."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from microtile.codegen.model_source import KERNEL_SETS
from microtile.measure.inputs import DEFAULT_SEED
from microtile.measure.runner import RunResult, exit_code, run_model, worst_exit_code

# ST X-CUBE-AI 10.2 on a real NUCLEO-L4R5ZI at 120 MHz (MLPerf Tiny v1.3, closed division,
# the same model files; issue 8): model file stem -> (task, cycles, ms). Compared with
# the timing model's estimate only on that board's model.
X_CUBE_AI_BOARD = "nucleo_l4r5zi"
X_CUBE_AI = {
    "kws_ref_model": ("KWS", 5_210_000, 43.4),
    "vww_96_int8": ("VWW", 10_730_000, 89.4),
    "pretrainedResnet_quant": ("IC", 19_880_000, 165.7),
    "ad01_int8": ("AD", 575_000, 4.79),
}


def _speedup(a: int | None, b: int | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def bench_model(model: str | Path, board: str = "qemu", kernels: tuple[str, ...] = KERNEL_SETS,
                random: int = 2, run: Callable[..., RunResult] = run_model, seed: int = DEFAULT_SEED,
                target_options: dict | None = None) -> dict:
    """Runs the model once per kernel set; returns the comparison as JSON-ready data,
    with the timing model's estimated cycles beside the counts (and, on the
    NUCLEO-L4R5ZI model, the ratio to X-CUBE-AI's measured cycles).
    A signal (Ctrl-C, SIGTERM) ends the bench after the run it interrupted."""
    runs: dict[str, RunResult] = {}
    for k in kernels:
        runs[k] = run(model, board, random=random, kernels=k, seed=seed, target_options=target_options)
        if exit_code(runs[k]) >= 128:
            break
    first = next(iter(runs.values()))
    unit = first.counter_unit
    layers = []
    counts = {k: r.mean_counts() for k, r in runs.items()}
    estimates = {k: r.mean_estimates() for k, r in runs.items()}
    pair = len(kernels) == 2 and len(runs) == 2
    for i, (op, macs) in enumerate(zip(first.compiled.device_ops, first.compiled.macs)):
        out_shape = list(first.compiled.graph.tensor(op.outputs[0]).shape)
        entry = {"index": op.index, "op": op.opcode, "shape": out_shape, "macs": macs,
                 unit: {k: counts[k][i] for k in runs}, "est_cycles": {k: estimates[k][i] for k in runs}}
        if pair and (s := _speedup(counts[kernels[0]][i], counts[kernels[1]][i])) is not None:
            entry["speedup"] = s
        layers.append(entry)
    sums = {k: None if None in c else sum(c) for k, c in counts.items()}
    est_sums = {k: None if None in e else sum(e) for k, e in estimates.items()}
    total = {"macs": sum(first.compiled.macs), unit: sums, "est_cycles": est_sums}
    if pair and (s := _speedup(sums[kernels[0]], sums[kernels[1]])) is not None:
        total["speedup"] = s
    timing = first.to_json()["timing_model"]
    x_cube_ai = None
    if (stem := Path(model).stem) in X_CUBE_AI and timing["board"] == X_CUBE_AI_BOARD:
        task, cycles, ms = X_CUBE_AI[stem]
        x_cube_ai = {"task": task, "cycles": cycles, "ms": ms, "board": X_CUBE_AI_BOARD, "clock_hz": 120_000_000,
                     "est_cycles_ratio": {k: None if e is None else round(e / cycles, 3) for k, e in est_sums.items()}}
    return {
        "model": first.model,
        "file": Path(model).name,
        "board": first.board.name,
        "counter_unit": unit,
        "kernels": list(kernels),
        "exit_code": worst_exit_code([exit_code(r) for r in runs.values()]),
        "layers": layers,
        "total": total,
        "timing_model": {key: v for key, v in timing.items() if key not in ("samples", "error")},
        "x_cube_ai": x_cube_ai,
        "runs": {k: r.to_json() for k, r in runs.items()},
        # Each run records its own provenance; here the shared part, with each set's build.
        "provenance": {**{key: v for key, v in first.provenance.items() if key not in ("kernels", "build_id")},
                       "build_ids": {k: r.provenance.get("build_id") for k, r in runs.items()}},
    }


def write_bench_json(results: list[dict], path: str | Path) -> None:
    Path(path).write_text(json.dumps({"models": results}, indent=2) + "\n")
