"""`microtile bench`: the reference and the optimised kernel sets side by side, per
layer, on the same target and inputs, each checked bit for bit against TFLM."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .codegen import KERNEL_SETS
from .runner import RunResult, run_model


def bench_model(model: str | Path, board: str = "qemu", kernels: tuple[str, ...] = KERNEL_SETS,
                random: int = 2, run: Callable[..., RunResult] = run_model) -> dict:
    """Runs the model once per kernel set; returns the comparison as JSON-ready data."""
    runs = {k: run(model, board, random=random, kernels=k) for k in kernels}
    first = runs[kernels[0]]
    unit = first.counter_unit
    layers = []
    counts = {k: r.mean_counts() for k, r in runs.items()}
    for i, (op, macs) in enumerate(zip(first.compiled.device_ops, first.compiled.macs)):
        out_shape = list(first.compiled.graph.tensor(op.outputs[0]).shape)
        entry = {"index": op.index, "op": op.opcode, "shape": out_shape, "macs": macs,
                 unit: {k: counts[k][i] for k in kernels}}
        if len(kernels) == 2 and counts[kernels[1]][i]:
            entry["speedup"] = round(counts[kernels[0]][i] / counts[kernels[1]][i], 3)
        layers.append(entry)
    total = {"macs": sum(first.compiled.macs), unit: {k: sum(counts[k]) for k in kernels}}
    if len(kernels) == 2 and total[unit][kernels[1]]:
        total["speedup"] = round(total[unit][kernels[0]] / total[unit][kernels[1]], 3)
    return {
        "model": first.model,
        "board": first.board.name,
        "counter_unit": unit,
        "kernels": list(kernels),
        "layers": layers,
        "total": total,
        "runs": {k: r.to_json() for k, r in runs.items()},
    }


def write_bench_json(results: list[dict], path: str | Path) -> None:
    Path(path).write_text(json.dumps({"models": results}, indent=2) + "\n")
