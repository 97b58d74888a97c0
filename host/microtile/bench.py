"""`microtile bench`: the reference and the optimised kernel sets side by side, per
layer, on the same target and inputs, each checked bit for bit against TFLM."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .codegen import KERNEL_SETS
from .inputs import DEFAULT_SEED
from .runner import RunResult, exit_code, run_model, worst_exit_code


def _speedup(a: int | None, b: int | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def bench_model(model: str | Path, board: str = "qemu", kernels: tuple[str, ...] = KERNEL_SETS,
                random: int = 2, run: Callable[..., RunResult] = run_model, seed: int = DEFAULT_SEED) -> dict:
    """Runs the model once per kernel set; returns the comparison as JSON-ready data.
    A signal (Ctrl-C, SIGTERM) ends the bench after the run it interrupted."""
    runs: dict[str, RunResult] = {}
    for k in kernels:
        runs[k] = run(model, board, random=random, kernels=k, seed=seed)
        if exit_code(runs[k]) >= 128:
            break
    first = next(iter(runs.values()))
    unit = first.counter_unit
    layers = []
    counts = {k: r.mean_counts() for k, r in runs.items()}
    pair = len(kernels) == 2 and len(runs) == 2
    for i, (op, macs) in enumerate(zip(first.compiled.device_ops, first.compiled.macs)):
        out_shape = list(first.compiled.graph.tensor(op.outputs[0]).shape)
        entry = {"index": op.index, "op": op.opcode, "shape": out_shape, "macs": macs,
                 unit: {k: counts[k][i] for k in runs}}
        if pair and (s := _speedup(counts[kernels[0]][i], counts[kernels[1]][i])) is not None:
            entry["speedup"] = s
        layers.append(entry)
    sums = {k: None if None in c else sum(c) for k, c in counts.items()}
    total = {"macs": sum(first.compiled.macs), unit: sums}
    if pair and (s := _speedup(sums[kernels[0]], sums[kernels[1]])) is not None:
        total["speedup"] = s
    return {
        "model": first.model,
        "board": first.board.name,
        "counter_unit": unit,
        "kernels": list(kernels),
        "exit_code": worst_exit_code([exit_code(r) for r in runs.values()]),
        "layers": layers,
        "total": total,
        "runs": {k: r.to_json() for k, r in runs.items()},
        # Each run records its own provenance; here the shared part, with each set's build.
        "provenance": {**{key: v for key, v in first.provenance.items() if key not in ("kernels", "build_id")},
                       "build_ids": {k: r.provenance.get("build_id") for k, r in runs.items()}},
    }


def write_bench_json(results: list[dict], path: str | Path) -> None:
    Path(path).write_text(json.dumps({"models": results}, indent=2) + "\n")
