"""report.html and compare.html: self-contained pages (no scripts, no links out), every
plot drawn by matplotlib and embedded as a base64 PNG data URI."""
from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path

from microtile.measure.report import cell_row, energy_of, layer_energy

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px}td.n{text-align:right}th{background:#eee}
.failed{background:#fdd}.interrupted{background:#ffd}.reg{background:#fcc;font-weight:bold}img{max-width:100%}
.note{color:#555;font-size:13px}h2{border-bottom:2px solid #ccc}"""


def _fig_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(uri: str, alt: str) -> str:
    return f'<p><img class="plot" src="{uri}" alt="{html.escape(alt)}"></p>'


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _n(v, fmt: str = ",") -> str:
    if v is None:
        return "n/a"
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else html.escape(str(v))


def _table(headers: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"]
    for k, row in enumerate(rows):
        cls = f' class="{classes[k]}"' if classes and classes[k] else ""
        cells = "".join(f'<td class="n">{_n(c)}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
                        else f"<td>{c if isinstance(c, _Raw) else _n(c)}</td>" for c in row)
        out.append(f"<tr{cls}>{cells}</tr>")
    return "\n".join(out) + "</table>"


class _Raw(str):
    """Already HTML."""


def _cell_name(rec: dict) -> str:
    c = rec["cell"]
    board = c["board"]["board"] + (" emu" if c["board"]["emulate"] else "")
    setting = "" if c["setting"] == "default" else f" {c['setting']}"
    inputs = "" if len(c["inputs"]) <= 2 and "random" in c["inputs"] else " " + ",".join(map(str, c["inputs"].values()))
    return f"{board} {c['kernels'][:3]}{setting}{inputs}"


def per_layer_plot(model: str, recs: list[dict]) -> str | None:
    """Grouped bars per layer: the measured count, estimated cycles and energy of each cell."""
    plt = _plt()
    metrics = []  # (title, [(cell name, values)])
    units = sorted({r["result"]["counter_unit"] for r in recs} & {"instructions", "cycles"})
    for unit in units:
        series = [(_cell_name(r), [layer.get(unit) for layer in r["result"]["layers"]]) for r in recs
                  if r["result"]["counter_unit"] == unit]
        metrics.append((f"{unit} (measured{', QEMU: executed instructions' if unit == 'instructions' else ''})", series))
    est = [(_cell_name(r), [layer.get("est_cycles") for layer in r["result"]["layers"]]) for r in recs]
    metrics.append(("estimated cycles (timing model)", est))
    energy = [(_cell_name(r), layer_energy(r["result"])) for r in recs]
    if any(v is not None for _, vals in energy for v in vals):
        metrics.append(("energy µJ per layer (measured median, else estimated)", energy))
    metrics = [(t, [(n, v) for n, v in s if any(x is not None for x in v)]) for t, s in metrics]
    metrics = [(t, s) for t, s in metrics if s]
    if not metrics:
        return None
    layers = recs[0]["result"]["layers"]
    labels = [f"{layer['index']} {layer['op'][:10]}" for layer in layers]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 0.5 * len(labels) + 2), 2.8 * len(metrics)), squeeze=False)
    for ax, (title, series) in zip(axes[:, 0], metrics):
        width = 0.8 / len(series)
        for k, (name, vals) in enumerate(series):
            xs = [i + k * width for i in range(len(vals))]
            ax.bar(xs, [v or 0 for v in vals], width, label=name)
        ax.set_title(f"{model}: {title}", fontsize=10)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _fig_uri(fig)


def memory_plot(model: str, analysis: dict, name: str) -> str:
    """Per layer: ROM (weights against the code of its kernels) and its live activation RAM."""
    plt = _plt()
    layers = analysis["layers"]
    labels = [f"{x['index']} {x['op'][:10]}" for x in layers]
    xs = range(len(layers))
    fig, (rom, ram) = plt.subplots(2, 1, figsize=(max(6, 0.5 * len(labels) + 2), 5.5))
    w = [x["weight_bytes"] for x in layers]
    c = [x["code_bytes"] or 0 for x in layers]  # n/a (inlined into run_layer) drawn as 0
    rom.bar(xs, w, label="weights + parameters")
    rom.bar(xs, c, bottom=w, label="code (its kernels; shared ones in each)")
    rom.set_title(f"{model} ({name}): ROM per layer, bytes", fontsize=10)
    rom.legend(fontsize=7)
    ram.bar(xs, [x["activation_bytes"] for x in layers], color="tab:green", label="live activations")
    ram.axhline(analysis["total"]["arena_bytes"], color="k", ls="--", lw=1, label="arena")
    ram.set_title(f"{model} ({name}): activation RAM per layer, bytes", fontsize=10)
    ram.legend(fontsize=7)
    for ax in (rom, ram):
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    return _fig_uri(fig)


def _pareto(points: list[tuple[float, float]], lower_y_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (x lower is better)."""
    front, best = [], None
    for x, y in sorted(points, key=lambda p: (p[0], p[1] if lower_y_better else -p[1])):
        if best is None or (y < best if lower_y_better else y > best):
            front.append((x, y))
            best = y
    return front


def pareto_plot(rows: list[dict], y: str, title: str, lower_y_better: bool) -> str | None:
    plt = _plt()
    pts = []
    for r in rows:
        x = r["est_cycles"]  # one unit on the axis: cells without an estimate are left out
        if x is not None and r[y] is not None:
            pts.append((x, r[y], f"{r['model']} {r['board']} {r['kernels'][:3]} {r['setting']}"))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for x, yy, name in pts:
        ax.scatter([x], [yy], s=30)
        ax.annotate(name, (x, yy), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = _pareto([(x, yy) for x, yy, _ in pts], lower_y_better)
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("estimated cycles per inference (timing model)")
    ax.set_ylabel(title)
    ax.set_title(f"{title} against estimated cycles", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _fig_uri(fig)


def analysis_table(analysis: dict) -> str:
    unit = analysis["counter_unit"]
    rows = []
    for x in analysis["layers"]:
        kernels = ", ".join(k["name"] + (" (inlined)" if k.get("inlined") else " (shared)" if k["shared"] else "")
                            for k in x["kernels"]) or "-"
        rows.append([x["index"], x["op"], "x".join(map(str, x["shape"][1:])), x["macs"], x["weight_bytes"],
                     x["code_bytes"], x["activation_bytes"], x["est_cycles"], x["measured"], kernels])
    t = analysis["total"]
    rows.append(["", "total", "", t["macs"], t["weight_bytes"], t["code_bytes"], t["arena_bytes"],
                 sum(x["est_cycles"] for x in analysis["layers"]) if all(x["est_cycles"] is not None for x in analysis["layers"]) else None,
                 sum(x["measured"] for x in analysis["layers"]) if all(x["measured"] is not None for x in analysis["layers"]) else None,
                 f"image ROM {t['rom_bytes']:,} B" + (f"; run_layer {t['run_layer_bytes']:,} B"
                                                      if t.get("run_layer_bytes") else "")])
    measured = unit if unit in ("instructions", "cycles") else "measured (no counter)"
    return _table(["#", "op", "output", "MACs", "weight ROM B", "code ROM B", "activation RAM B", "est. cycles",
                   measured, "kernels"], rows) + f'<p class="note">{html.escape(analysis["code_note"])} '\
        "Activation RAM: the arena bytes of every tensor live while the layer runs; the total row gives the arena.</p>"


def _provenance(prov: dict) -> str:
    rows = [[k, v if not isinstance(v, dict) else ", ".join(f"{a} {b[:12]}" for a, b in v.items())]
            for k, v in prov.items()]
    return _table(["what", "value"], rows)


def report_html(data: dict) -> str:
    recs = data["cells"]
    rows = [cell_row(r) for r in recs]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>microtile lab report</title>"
             f"<style>{STYLE}</style></head><body><h1>microtile lab report</h1>",
             f"<p>Plan {html.escape(data['plan']['path'])}: {data['cells_planned']} cells, {data['cells_reported']} "
             f"reported, {data['cells_missing']} not run; exit code {data['exit_code']}.</p>",
             "<p class='note'>On QEMU the counts are executed instructions, not cycles; estimated cycles come from the "
             "timing model (docs/timing.md); energy appears where a power probe measured it or the run estimated it.</p>",
             "<h2>Cells</h2>"]
    headers = ["model", "board", "kernels", "setting", "inputs", "status", "verdict", "exit", "samples", "unit",
               "count", "est. cycles", "energy µJ", "top-1", "RAM B", "ROM B", "weights B", "code B", "build id",
               "seed", "error"]
    parts.append(_table(headers, [[r["model"], r["board"] + (" (emulated)" if r["emulate"] else "")
                                   + (f" {r['probe']}" if r["probe"] else ""), r["kernels"], r["setting"], r["inputs"],
                                   r["status"], r["verdict"], r["exit_code"], r["samples"], r["counter_unit"], r["count"],
                                   r["est_cycles"], r["energy_uj"] if r["energy_uj"] is None else
                                   f"{r['energy_uj']:.3f} ({r['energy_kind']})",
                                   None if r["top1"] is None else f"{100 * r['top1']:.1f}%", r["ram_bytes"], r["rom_bytes"],
                                   r["weight_bytes"], r["code_bytes"], (r["build_id"] or "")[:12] or None, r["seed"],
                                   r["error"]] for r in rows],
                        [r["status"] if r["status"] != "done" else "" for r in rows]))
    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        if r.get("result") and r["result"].get("layers"):
            by_model[Path(r["cell"]["model"]).name].append(r)
    for model, mrecs in by_model.items():
        parts.append(f"<h2>{html.escape(model)}</h2>")
        uri = per_layer_plot(model, mrecs)
        if uri:
            parts.append(_img(uri, f"{model} per-layer counts"))
        seen = set()
        for r in mrecs:  # one analysis per kernel set and board (the code differs)
            ana = r.get("analysis")
            ident = (r["cell"]["kernels"], r["cell"]["board"]["board"], r["cell"]["setting"])
            if not ana or "layers" not in ana or ident in seen:
                continue
            seen.add(ident)
            name = f"{r['cell']['kernels']} kernels, {r['cell']['board']['board']}, {r['cell']['setting']}"
            parts.append(f"<h3>Analysis: {html.escape(name)}</h3>")
            parts.append(analysis_table(ana))
            parts.append(_img(memory_plot(model, ana, name), f"{model} ROM and RAM per layer"))
    parts.append("<h2>Pareto</h2>")
    for y, title, lower in (("ram_bytes", "RAM bytes", True), ("top1", "Top-1 accuracy", False)):
        uri = pareto_plot(rows, y, title, lower)
        parts.append(_img(uri, f"Pareto {title}") if uri else
                     f"<p class='note'>{title} against estimated cycles: no cell carries both figures.</p>")
    parts.append("<h2>Provenance</h2>" + _provenance(data["provenance"]))
    parts.append("<p class='note'>Each cell's own provenance (build id, seed, model hash, tool versions) is in "
                 "report.json under cells[].result.provenance.</p></body></html>")
    return "\n".join(parts)


def compare_html(comparison: dict, old: dict, new: dict) -> str:
    plt = _plt()
    rows, classes, ratios = [], [], []
    for r in comparison["rows"]:
        f = r["figures"]
        get = lambda col, k: (f.get(col) or {}).get(k)
        rows.append([r["model"], r["board"], r["kernels"], r["setting"], r["inputs"], r["old_verdict"], r["new_verdict"],
                     get("count", "old"), get("count", "new"), get("est_cycles", "old"), get("est_cycles", "new"),
                     get("ram_bytes", "old"), get("ram_bytes", "new"), get("rom_bytes", "old"), get("rom_bytes", "new"),
                     "; ".join(r["regressions"]) or r.get("note") or "ok"])
        classes.append("reg" if r["regressions"] else "")
        ratio = get("count", "ratio") or get("est_cycles", "ratio")
        if ratio:
            ratios.append((f"{r['model']} {r['board']} {r['kernels'][:3]} {r['setting']}", ratio, bool(r["regressions"])))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>microtile lab comparison</title>"
             f"<style>{STYLE}</style></head><body><h1>microtile lab comparison</h1>",
             f"<p>{comparison['regressions']} regression(s) over {len(comparison['rows'])} cell(s); a figure regresses "
             f"when it grows by more than {100 * comparison['tolerance']:g}% (Top-1: drops by more than half a point), "
             "or when a bit-exact cell no longer is.</p>"]
    if ratios:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(ratios) + 1.5))
        ax.barh([n for n, _, _ in ratios], [v for _, v, _ in ratios],
                color=["tab:red" if bad else "tab:blue" for _, _, bad in ratios])
        ax.axvline(1.0, color="k", lw=1)
        ax.set_xlabel("new / old count (lower is faster)")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        parts.append(_img(_fig_uri(fig), "count ratio new/old"))
    parts.append(_table(["model", "board", "kernels", "setting", "inputs", "old verdict", "new verdict", "old count",
                         "new count", "old est. cycles", "new est. cycles", "old RAM", "new RAM", "old ROM", "new ROM",
                         "regressions"], rows, classes))
    if comparison["only_in_old"]:
        parts.append("<p>Only in the old report: " + html.escape(", ".join(
            f"{g['model']} {g['board']} {g['kernels']}" for g in comparison["only_in_old"])) + "</p>")
    parts.append("<h2>Provenance</h2><h3>old</h3>" + _provenance(old.get("provenance") or {})
                 + "<h3>new</h3>" + _provenance(new.get("provenance") or {}) + "</body></html>")
    return "\n".join(parts)
