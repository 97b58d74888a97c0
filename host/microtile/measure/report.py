"""The lab's reports: report.json (every cell with provenance), report.csv (one row per
cell), report.html (report_html.py), the per-model analysis (like X-CUBE-AI's analyze:
per layer MACs, weight ROM, code ROM, activation RAM, estimated and measured counts),
and the comparison of two report.json files with regressions flagged."""
from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from pathlib import Path

from microtile.errors import MicrotileError
from microtile.measure.provenance import file_sha256, tool_versions

# A change counts as a regression beyond this fraction (counts, cycles, RAM, ROM, energy)
REGRESSION_TOLERANCE = 0.01
TOP1_TOLERANCE = 0.005  # half a percentage point of Top-1


# ---- analysis (one run's per-layer costs) ----

def _elf_symbols(elf: Path) -> tuple[dict[str, int], dict[str, set[str]], dict[int, int], int]:
    """(function -> size, function -> the functions it calls, layer index -> weight
    bytes, code bytes) of a firmware ELF. Calls are the Thumb BL / B.W instructions whose
    target starts a function (capstone); weights are model.c's per-layer constants, named
    l<layer>_...; code is every executable section."""
    from capstone import CS_ARCH_ARM, CS_MODE_THUMB, Cs
    from elftools.elf.elffile import ELFFile

    funcs: dict[str, tuple[int, int]] = {}
    weights: dict[int, int] = defaultdict(int)
    code = 0
    sections = []
    with open(elf, "rb") as f:
        ef = ELFFile(f)
        for sec in ef.iter_sections():
            if sec["sh_flags"] & 2 and sec["sh_flags"] & 4:  # SHF_ALLOC | SHF_EXECINSTR
                code += sec["sh_size"]
                sections.append((sec["sh_addr"], sec.data()))
        symtab = ef.get_section_by_name(".symtab")
        if symtab is None:
            raise MicrotileError(f"{elf}: no symbol table, so no per-layer ROM")
        for sym in symtab.iter_symbols():
            kind = sym["st_info"]["type"]
            if kind == "STT_FUNC" and sym["st_size"]:
                funcs[sym.name] = (sym["st_value"] & ~1, sym["st_size"])
            elif kind == "STT_OBJECT" and (m := re.fullmatch(r"l(\d+)_\w+", sym.name)):
                weights[int(m.group(1))] += sym["st_size"]
    starts = {addr: name for name, (addr, _) in funcs.items()}
    md = Cs(CS_ARCH_ARM, CS_MODE_THUMB)
    calls: dict[str, set[str]] = {}
    for name, (addr, size) in funcs.items():
        body = next((data[addr - base:addr - base + size] for base, data in sections
                     if base <= addr < base + len(data)), b"")
        calls[name] = {starts[t] for insn in md.disasm(body, addr) if insn.mnemonic in ("bl", "b.w", "b")
                       and insn.op_str.startswith("#") and (t := int(insn.op_str[1:], 16)) in starts
                       and starts[t] != name}
    return {n: sz for n, (_, sz) in funcs.items()}, calls, dict(weights), code


def _closure(roots: list[str], calls: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        fn = todo.pop()
        if fn not in seen:
            seen.add(fn)
            todo += calls.get(fn, ())
    return seen


def layer_kernels(model_c: str) -> list[list[str]]:
    """The kernel functions each layer's case of model.c's run_layer calls."""
    body = model_c.split("static void run_layer", 1)[-1]
    cases = re.split(r"\n    case \d+:", body)[1:]
    return [sorted(set(re.findall(r"\b(mt_\w+)\(", case.split("\n    default:")[0]))) for case in cases]


def live_activation_bytes(compiled) -> list[int]:
    """Per layer, the arena bytes in use while it runs: the union of the byte ranges of
    every activation tensor whose lifetime covers that step (the planner lets some share
    bytes, so this is not the sum of their sizes)."""
    plan = compiled.plan
    out = []
    for step in range(len(compiled.device_ops)):
        spans = sorted((plan.offsets[t], plan.offsets[t] + plan.sizes[t]) for t, (a, b) in plan.lifetimes.items()
                       if a <= step <= b and t in plan.offsets and t in plan.sizes)
        used, end = 0, 0
        for lo, hi in spans:
            lo = max(lo, end)
            if hi > lo:
                used += hi - lo
                end = hi
        out.append(used)
    return out


def analyze(result) -> dict:
    """Per layer: MACs, weight ROM, code ROM (the kernels it calls; a kernel shared by
    several layers is counted in each and marked shared), activation RAM, estimated cycles
    and the measured count. Totals: weights, all code in the image, arena."""
    compiled = result.compiled
    funcs, calls, weights, code_total = _elf_symbols(Path(result.firmware.elf))
    kernels = layer_kernels(compiled.model_c)
    users: dict[str, int] = defaultdict(int)
    closures = [_closure([k for k in ks if k in funcs], calls) for ks in kernels]
    for fns in closures:
        for k in fns:
            users[k] += 1
    live = live_activation_bytes(compiled)
    data = result.to_json()
    unit = data["counter_unit"]
    layers = []
    for i, (layer, op) in enumerate(zip(data["layers"], compiled.device_ops)):
        ks = kernels[i] if i < len(kernels) else []
        fns = closures[i] if i < len(closures) else set()
        inlined = [k for k in ks if k not in funcs]  # static inline kernels live in run_layer
        layers.append({
            "index": layer["index"], "op": layer["op"], "macs": layer["macs"],
            "shape": list(compiled.graph.tensor(op.outputs[0]).shape),
            "weight_bytes": weights.get(i, 0),
            "code_bytes": None if inlined else sum(funcs[k] for k in fns),
            "kernels": [{"name": k, "bytes": None if k in inlined else sum(funcs[f] for f in _closure([k], calls)),
                         "shared": users.get(k, 0) > 1, "inlined": k in inlined} for k in ks],
            "activation_bytes": live[i],
            "est_cycles": layer.get("est_cycles"),
            "measured": layer.get(unit) if unit in ("instructions", "cycles") else None,
        })
    return {"counter_unit": unit, "layers": layers,
            "total": {"macs": sum(x["macs"] for x in layers), "weight_bytes": sum(weights.values()),
                      "code_bytes": code_total, "arena_bytes": compiled.plan.arena_size,
                      "rom_bytes": result.firmware.sizes.rom_bytes, "run_layer_bytes": funcs.get("run_layer")},
            "code_note": "code ROM per layer: the sizes (ELF symbols) of the kernel functions the layer calls and "
                         "of the functions they call (BL targets); a kernel shared by several layers is counted in "
                         "each (marked shared); n/a where the kernel is inlined into model.c's run_layer (its code "
                         "is in run_layer's size, given in the total). The total is every executable section of the "
                         "image (startup, link protocol and libc included)."}


# ---- figures out of one cell ----

def energy_of(run: dict | None) -> tuple[float | None, str | None]:
    """(µJ per inference, "measured"/"estimated") when the run carries energy (a power
    probe's `energy` object, or the timing model's `est_energy_uj`)."""
    if not run:
        return None, None
    energy = run.get("energy") or {}
    for key in ("uj_per_inference", "median_uj", "energy_uj"):
        if isinstance(energy.get(key), (int, float)):
            return float(energy[key]), "measured"
    est = run.get("total", {}).get("est_energy_uj", run.get("est_energy_uj"))
    if isinstance(est, (int, float)):
        return float(est), "estimated"
    return None, None


def layer_energy(run: dict) -> list[float | None]:
    """µJ per layer: the power probe's per-layer median where measured, else the timing
    model's estimate (est_energy_uj)."""
    # the probe's layers are numbered by position among the device layers, like run["layers"]
    measured = {x.get("index"): x.get("median_uj") for x in (run.get("energy") or {}).get("layers") or []}
    out = []
    for pos, layer in enumerate(run["layers"]):
        value = measured.get(pos, layer.get("est_energy_uj"))
        out.append(float(value) if isinstance(value, (int, float)) else None)
    return out


def cell_row(record: dict) -> dict:
    """The figures of one cell as one flat row (report.csv, comparison)."""
    cell, res = record["cell"], record.get("result") or {}
    unit = res.get("counter_unit")
    total = res.get("total") or {}
    prov = res.get("provenance") or {}
    ana = (record.get("analysis") or {}).get("total") or {}
    energy, energy_kind = energy_of(res)
    return {
        "key": record["key"], "model": Path(cell["model"]).name, "board": cell["board"]["board"],
        "emulate": cell["board"]["emulate"], "probe": record.get("probe"), "kernels": cell["kernels"],
        "setting": cell["setting"], "inputs": ";".join(f"{k}={v}" for k, v in cell["inputs"].items()),
        "status": record["status"], "verdict": res.get("verdict"), "exit_code": record["exit_code"],
        "samples": res.get("samples"), "mismatches": res.get("mismatches"), "top1": res.get("top1"),
        "counter_unit": unit, "count": total.get(unit) if unit in ("instructions", "cycles") else None,
        "est_cycles": total.get("est_cycles"), "energy_uj": energy, "energy_kind": energy_kind,
        "macs": total.get("macs"), "ram_bytes": (res.get("ram") or {}).get("total_bytes"),
        "arena_bytes": (res.get("ram") or {}).get("arena_bytes"), "rom_bytes": (res.get("rom") or {}).get("total_bytes"),
        "weight_bytes": ana.get("weight_bytes"), "code_bytes": ana.get("code_bytes"),
        "build_id": prov.get("build_id"), "seed": prov.get("seed"), "seconds": record.get("seconds"),
        "error": record.get("error"),
    }


CSV_COLUMNS = list(cell_row({"key": "", "cell": {"model": "", "board": {"board": "", "emulate": False},
                                                  "kernels": "", "setting": "", "inputs": {}},
                             "status": "", "exit_code": 0}))


def report_data(plan, outcome) -> dict:
    """report.json: the plan, the tools that made it, and every cell."""
    return {
        "format": 1,
        "plan": {"path": str(plan.path), "sha256": file_sha256(plan.path), "content": plan.raw},
        "provenance": {**tool_versions(), "models": {m.name: file_sha256(m) for m in plan.models}},
        "exit_code": outcome.exit_code,
        "cells_planned": len(plan.cells()), "cells_reported": len(outcome.records), "cells_missing": outcome.missing,
        "labgrid": outcome.labgrid,
        "cells": outcome.records,
    }


def write_reports(plan, outcome, out: Path) -> list[Path]:
    from microtile.measure.lab import write_atomic
    from microtile.measure.report_html import report_html

    data = report_data(plan, outcome)
    paths = [out / "report.json", out / "report.csv", out / "report.html"]
    write_atomic(paths[0], json.dumps(data, indent=1) + "\n")
    write_atomic(paths[1], report_csv(data))
    write_atomic(paths[2], report_html(data))
    return paths


def report_csv(data: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rec in data["cells"]:
        writer.writerow({k: "" if v is None else v for k, v in cell_row(rec).items()})
    return buf.getvalue()


# ---- comparing two reports ----

def load_report(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise MicrotileError(f"--compare {path}: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise MicrotileError(f"--compare {path}: not JSON; give a lab report.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise MicrotileError(f"--compare {path}: not a lab report (no 'cells'); give DIR/report.json of `microtile lab`")
    for i, cell in enumerate(data["cells"]):
        try:
            cell_row(cell)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise MicrotileError(f"--compare {path}: cell {i} is not a lab cell ({type(exc).__name__}: {exc}); "
                                 "give DIR/report.json of `microtile lab`") from None
    return data


def _identity(row: dict) -> tuple:
    return (row["model"], row["board"], row["emulate"], row["kernels"], row["setting"], row["inputs"])


# (column, what it is, higher is worse)
COMPARED = (("count", "measured count", True), ("est_cycles", "estimated cycles", True),
            ("energy_uj", "energy µJ", True), ("ram_bytes", "RAM bytes", True), ("rom_bytes", "ROM bytes", True),
            ("top1", "Top-1", False))


def compare_reports(old: dict, new: dict, tolerance: float = REGRESSION_TOLERANCE) -> dict:
    """Cells matched by model file name, board, kernels, setting and inputs; per figure the
    old and new value, the ratio, and whether it regressed (worse by more than the
    tolerance; Top-1 lower by more than half a point; a verdict that is no longer bit-exact)."""
    old_rows = {_identity(r): r for r in map(cell_row, old["cells"])}
    rows = []
    for r in map(cell_row, new["cells"]):
        o = old_rows.pop(_identity(r), None)
        entry = {"model": r["model"], "board": r["board"] + (" (emulated)" if r["emulate"] else ""),
                 "kernels": r["kernels"], "setting": r["setting"], "inputs": r["inputs"],
                 "old_verdict": o["verdict"] if o else None, "new_verdict": r["verdict"], "figures": {},
                 "regressions": []}
        if o is None:
            entry["regressions"] = []
            entry["note"] = "new cell"
            rows.append(entry)
            continue
        if o["verdict"] == "bit-exact" and r["verdict"] != "bit-exact":
            entry["regressions"].append(f"verdict {o['verdict']} -> {r['verdict'] or r['status']}")
        for col, what, higher_worse in COMPARED:
            a, b = o[col], r[col]
            fig = {"old": a, "new": b, "ratio": round(b / a, 4) if a and b is not None else None}
            if a is not None and b is not None:
                if col == "top1":
                    worse = b < a - TOP1_TOLERANCE
                else:
                    worse = (b > a * (1 + tolerance)) if higher_worse else (b < a * (1 - tolerance))
                if worse:
                    entry["regressions"].append(f"{what} {a:,} -> {b:,}" if col != "top1"
                                                else f"{what} {100 * a:.1f}% -> {100 * b:.1f}%")
                fig["regressed"] = worse
            entry["figures"][col] = fig
        rows.append(entry)
    gone = [{"model": r["model"], "board": r["board"], "kernels": r["kernels"], "setting": r["setting"],
             "inputs": r["inputs"]} for r in old_rows.values()]
    return {"tolerance": tolerance, "rows": rows, "only_in_old": gone,
            "regressions": sum(len(r["regressions"]) for r in rows),
            "old_provenance": old.get("provenance"), "new_provenance": new.get("provenance")}


def compare_main(old_path: str, new_path: str, out: str | None) -> int:
    """`microtile lab --compare OLD NEW [--out DIR]`: print the regressions, write
    DIR/compare.json and compare.html; exit 1 when any figure regressed."""
    from microtile.measure.lab import write_atomic
    from microtile.measure.report_html import compare_html

    old, new = load_report(old_path), load_report(new_path)
    comparison = compare_reports(old, new)
    for row in comparison["rows"]:
        what = f"{row['model']} on {row['board']}, {row['kernels']}, {row['setting']}, {row['inputs']}"
        if row["regressions"]:
            print(f"REGRESSION {what}: {'; '.join(row['regressions'])}")
        else:
            fig = row["figures"].get("count") or {}
            print(f"ok {what}" + (f": count {fig['old']:,} -> {fig['new']:,}" if fig.get("old") is not None
                                  and fig.get("new") is not None else ""))
    if out:
        out_dir = Path(out)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MicrotileError(f"--out {out}: cannot create it ({exc.strerror})") from None
        write_atomic(out_dir / "compare.json", json.dumps(comparison, indent=1) + "\n")
        write_atomic(out_dir / "compare.html", compare_html(comparison, old, new))
        print(f"wrote {out_dir / 'compare.json'}, {out_dir / 'compare.html'}")
    print(f"{comparison['regressions']} regression(s) over {len(comparison['rows'])} cell(s)")
    return 1 if comparison["regressions"] else 0
