"""Peak RAM: the run report's RAM figures and the benchmark of the RAM techniques.

``python -m microtile.measure.ram_bench [MODEL.tflite ...] [--board qemu] [--json OUT.json]
[--measure]`` compiles each model (default: the four MLPerf Tiny models) with no
technique, with all, with each alone and with all but each, and prints the arena of
each beside the layer-by-layer bound and TFLM's arena (its greedy planner's
non-persistent head, read from the interpreter's allocation report), with the
estimated cycles each adds as the search predicts them. ``--measure`` also runs the
plain build and the chosen point on the target (one seeded random input, checked
bit-exact against TFLM) and reports the executed instructions and estimated cycles the
chosen point adds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

from microtile.errors import MicrotileError

MLPERF = ("kws_ref_model.tflite", "vww_96_int8.tflite", "pretrainedResnet_quant.tflite", "ad01_int8.tflite")
# TFLM's arena head for the four MLPerf Tiny models (issue 9), checked against the interpreter
TFLM_HEAD = {"kws_ref_model": 16000, "vww_96_int8": 73728, "pretrainedResnet_quant": 49152, "ad01_int8": 768}


def tflm_arena_bytes(interpreter) -> int | None:
    """TFLM's non-persistent arena (the 'Arena allocation head' its RecordingMicroAllocator
    prints): what its greedy planner gives the activations and scratch buffers."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}  # TFLM's MicroPrintf writes to one of them
    with tempfile.TemporaryFile() as tmp:
        for fd in saved:
            os.dup2(tmp.fileno(), fd)
        try:
            interpreter.print_allocations()
            libc.fflush(None)
        finally:
            for fd, old in saved.items():
                os.dup2(old, fd)
                os.close(old)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    m = re.search(r"Arena allocation head (\d+) bytes", text)
    return int(m.group(1)) if m else None


def tflm_arena_of(model_path: str | Path) -> int | None:
    from microtile.check.oracle import TflmOracle

    return tflm_arena_bytes(TflmOracle(model_path).interpreter)


def ram_report(compiled, tflm_arena: int | None) -> dict:
    """The run JSON's RAM figures beside ``arena_bytes``."""
    plan = compiled.plan
    search = compiled.search
    return {"layer_bound_bytes": plan.layer_bound, "tflm_arena_bytes": tflm_arena,
            "ram_config": compiled.ram.label(), "planner": plan.method,
            "ram_search": search.as_dict() if search is not None else None}


def ram_line(ram: dict) -> str:
    """One line of the run report: the arena against the layer-by-layer bound and TFLM."""
    def vs(other):
        return f"{ram['arena_bytes'] / other:.0%} of" if other else "n/a vs"
    tflm = ram.get("tflm_arena_bytes")
    return (f"Peak RAM (arena) {ram['arena_bytes']:,} B: {vs(ram['layer_bound_bytes'])} the layer-by-layer bound "
            f"{ram['layer_bound_bytes']:,} B, {vs(tflm)} TFLM's arena {tflm:,} B" if tflm else
            f"Peak RAM (arena) {ram['arena_bytes']:,} B: {vs(ram['layer_bound_bytes'])} the layer-by-layer bound "
            f"{ram['layer_bound_bytes']:,} B") + f"; RAM techniques {ram.get('ram_config')}, {ram.get('planner')} planner"


def pareto_rows(search) -> list[str]:
    rows = [f"{'arena B':>9}  {'predicted est. cycles':>22}  {'added':>8}  planner         config"]
    for c in search.pareto():
        mark = "  <- chosen" if search.chosen is not None and c.config == search.chosen.config else ""
        rows.append(f"{c.arena:>9,}  {round(c.cost):>22,}  {c.extra / search.baseline:>+8.2%}  {c.method:<15} "
                    f"{c.config.label()}{mark}")
    return rows


def bench_one(path: Path, board_name: str, measure: bool) -> dict:
    from dataclasses import replace

    from microtile.codegen.model_source import compile_model
    from microtile.importer.tflite_format import load_tflite
    from microtile.passes.pipeline import RamConfig
    from microtile.passes.ram_search import search_ram
    from microtile.targets.boards import load_board

    board = load_board(board_name)
    graph = load_tflite(path)
    compiled = compile_model(graph, "optimized", board)
    search = compiled.search
    names = RamConfig.techniques()
    full, none = RamConfig(), RamConfig.none()
    configs = [none, full] + [replace(none, **{n: True}) for n in names] + [replace(full, **{n: False}) for n in names]
    table = search_ram(graph, "optimized", board, budget=1 << 30, configs=list(dict.fromkeys(configs)), exact_all=True)
    by = {c.config: c for c in table.candidates}
    techniques = {n: {"alone_bytes": by[replace(none, **{n: True})].arena,
                      "all_but_bytes": by[replace(full, **{n: False})].arena,
                      "predicted_added_est_cycles_alone": round(by[replace(none, **{n: True})].extra)} for n in names}
    out = {"model": path.stem, "board": board.name, "tflm_arena_bytes": tflm_arena_of(path),
           "layer_bound_bytes": search.layer_bound, "none_bytes": by[none].arena, "all_bytes": by[full].arena,
           "chosen_bytes": compiled.plan.arena_size, "chosen_config": compiled.ram.label(),
           "chosen_planner": compiled.plan.method,
           "predicted_plain_est_cycles": round(search.baseline),
           "predicted_chosen_added_est_cycles": round(search.chosen.extra),
           "techniques": techniques, "pareto": [c.as_dict() for c in search.pareto()]}
    if measure:
        from microtile.measure.runner import run_model
        from microtile.passes import ram_search

        for key, config in (("plain", none), ("chosen", compiled.ram)):
            ram_search.force_config(config)
            try:
                r = run_model(path, board_name, random=1, kernels="optimized").to_json()
            finally:
                ram_search.force_config(None)
            out[f"{key}_measured"] = {"arena_bytes": r["ram"]["arena_bytes"], "verdict": r["verdict"],
                                      r["counter_unit"]: r["total"].get(r["counter_unit"]),
                                      "est_cycles": r["total"]["est_cycles"]}
        for unit, key in (("instructions", "measured_added_fraction"), ("est_cycles", "measured_added_est_cycles_fraction")):
            a, b = out["plain_measured"].get(unit), out["chosen_measured"].get(unit)
            out[key] = (b - a) / a if a and b else None
    return out


def print_table(results: list[dict]) -> None:
    from microtile.passes.pipeline import RamConfig

    print(f"{'model':<24}{'TFLM':>8}{'bound':>8}{'none':>8}{'all':>8}{'chosen':>8}{'vs TFLM':>9}  added")
    for r in results:
        added = r.get("measured_added_fraction")
        cycles = r.get("measured_added_est_cycles_fraction")
        added_text = (f"{added:+.2%} instructions, {cycles:+.2%} est. cycles (measured)" if added is not None
                      else f"{r['predicted_chosen_added_est_cycles'] / r['predicted_plain_est_cycles']:+.2%} est. cycles (predicted)")
        vs = f"{r['chosen_bytes'] / r['tflm_arena_bytes'] - 1:+.1%}" if r["tflm_arena_bytes"] else "n/a"
        print(f"{r['model']:<24}{format(r['tflm_arena_bytes'], ',') if r['tflm_arena_bytes'] else 'n/a':>8}{r['layer_bound_bytes']:>8,}{r['none_bytes']:>8,}"
              f"{r['all_bytes']:>8,}{r['chosen_bytes']:>8,}{vs:>9}  {added_text}")
    print("\narena bytes with one technique alone / with all but it (predicted added est. cycles alone):")
    names = RamConfig.techniques()
    print(f"{'technique':<20}" + "".join(f"{r['model'][:14]:>24}" for r in results))
    for n in names:
        cells = [f"{r['techniques'][n]['alone_bytes']:,}/{r['techniques'][n]['all_but_bytes']:,} "
                 f"({r['techniques'][n]['predicted_added_est_cycles_alone']:+,})" for r in results]
        print(f"{n:<20}" + "".join(f"{c:>24}" for c in cells))
    ratios = [r["chosen_bytes"] / r["tflm_arena_bytes"] for r in results if r["tflm_arena_bytes"]]
    if ratios:
        g = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        print(f"\ngeometric mean of chosen / TFLM arena: {g:.3f} ({1 - g:.1%} below TFLM)")


def main(argv: list[str] | None = None) -> int:
    from microtile.paths import REPO_ROOT

    ap = argparse.ArgumentParser(prog="python -m microtile.measure.ram_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="*", help="models (default: the MLPerf Tiny four beside the repository)")
    ap.add_argument("--board", default="qemu")
    ap.add_argument("--json", metavar="OUT.json")
    ap.add_argument("--measure", action="store_true", help="also run plain and chosen builds on the target")
    args = ap.parse_args(argv)
    try:
        if args.json:
            from microtile.measure.runner import check_writable  # runner imports this module

            check_writable(args.json)
        models = [Path(m) for m in args.model]
        if not models:
            shared = Path(os.environ.get("MICROTILE_SHARED", REPO_ROOT.parent / "shared"))
            models = [shared / "models" / "mlperf_tiny" / m for m in MLPERF]
        for m in models:
            if not m.is_file():
                raise MicrotileError(f"{m}: no such model file (give .tflite paths, or put the MLPerf Tiny data "
                                     "in ../shared or MICROTILE_SHARED)")
        results = [bench_one(m, args.board, args.measure) for m in models]
        print_table(results)
        if args.json:
            Path(args.json).write_text(json.dumps({"results": results}, indent=2) + "\n")
            print(f"wrote {args.json}")
    except MicrotileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
