"""The `microtile` command line."""
from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from microtile.errors import MicrotileError

# Piped output (logs, CI) gets room for the full tables instead of rich's 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=160)


def _count(value, fmt: str = ",") -> str:
    """A measured number, or n/a when it was not measured (never a silent 0)."""
    return "n/a" if value is None else format(value, fmt)


def _print_run(result) -> None:
    data = result.to_json()
    unit = data["counter_unit"]
    timed = "clock_hz" in data
    clock = f" at {data['clock_hz'] / 1e6:g} MHz" if timed else ""
    what = unit if unit in ("instructions", "cycles") else "no counter"
    table = Table(title=f"{data['model']} on {data['board']}, {data['kernels']} kernels ({what}{clock}; mean of {data['samples']} runs)")
    table.add_column("#", justify="right")
    table.add_column("op")
    table.add_column("MACs", justify="right")
    counted = unit in ("instructions", "cycles")  # "none": the target has no counter (board image on QEMU)
    label = unit if counted else "counts"
    table.add_column(label, justify="right")
    table.add_column(f"{label}/MAC", justify="right")
    if timed:
        table.add_column("time µs", justify="right")
    est_timed = "est_time_us" in data["total"]
    table.add_column("est. cycles", justify="right")
    table.add_column("est. cycles/MAC", justify="right")
    if est_timed:
        table.add_column("est. µs", justify="right")

    def cells(entry: dict) -> list[str]:
        count = entry.get(unit)
        if count is None:  # no counter, or no sample measured
            out = ["n/a", "-", *(["n/a"] if timed else [])]
        else:
            per_mac = f"{count / entry['macs']:.2f}" if entry["macs"] else "-"
            out = [f"{count:,}", per_mac, *([f"{entry['time_us']:,.1f}"] if timed else [])]
        est = entry["est_cycles"]
        out += [_count(est), f"{est / entry['macs']:.2f}" if est is not None and entry["macs"] else "-"]
        if est_timed:
            out.append("n/a" if est is None else f"{entry['est_time_us']:,.1f}")
        return out

    for layer in data["layers"]:
        table.add_row(str(layer["index"]), layer["op"], f"{layer['macs']:,}", *cells(layer))
    total = data["total"]
    table.add_row("", "total", f"{total['macs']:,}", *cells(total), style="bold")
    console.print(table)
    ram, rom = data["ram"], data["rom"]
    console.print(
        f"RAM {_count(ram['total_bytes'])} B (static {ram['static_bytes']:,} B with the {ram['arena_bytes']:,} B arena, "
        f"stack used {_count(ram['stack_bytes'])} of {ram['stack_reserved_bytes']:,} B reserved)   "
        f"ROM {rom['total_bytes']:,} B"
    )
    if "layer_bound_bytes" in ram:
        from microtile.measure.ram_bench import ram_line

        console.print(ram_line(ram), highlight=False)
    console.print(f"Samples {data['samples']}: {_verdict(data)}")
    if data["top1"] is not None:
        console.print(f"Top-1 {100 * data['top1']:.1f}% (TFLM reference kernels: {100 * data['tflm_top1']:.1f}%)")
    console.print(_timing_note(data))
    _print_energy(data)
    if data["timing_model"]["target"]:
        console.print("[dim]Emulated on the timing model (unicorn): counts are executed instructions.[/dim]")
    elif unit == "instructions":
        console.print("[dim]Emulated run: counts are executed instructions (QEMU -icount), not cycles.[/dim]")
    elif timed:
        console.print(f"[dim]Counts are core clock cycles (DWT CYCCNT) on the board; time = cycles / "
                      f"{data['clock_hz']:,} Hz.[/dim]")
    elif not counted:
        console.print("[dim]This target has no cycle counter (a board image on QEMU: no DWT); "
                      "counts are unavailable, not zero.[/dim]")


def _timing_note(run: dict) -> str:
    """What the estimated cycles are: the timing model, its board and clock (docs/timing.md)."""
    tm = run["timing_model"]
    if tm["error"]:
        return f"[yellow]estimated cycles n/a: {tm['error']}[/yellow]"
    return (f"[dim]Estimated cycles: {tm['name']} {tm['version']} ({tm['core']}, {tm['board']} memory map, "
            f"{tm['flash_wait_states']} flash wait states at {tm['clock_hz'] / 1e6:g} MHz), "
            f"{'every sample' if tm['target'] else 'first sample'}; docs/timing.md.[/dim]")


def _print_energy(run: dict) -> None:
    """The measured energy (a power probe) and the estimated energy (timing model x datasheet)."""
    energy = run.get("energy")
    if energy:
        where = f"{energy['spec']}, {energy['supply_v']:.3f} V {energy['voltage_source']}"
        per = energy["per_inference"]
        if per:
            console.print(f"Energy ({where}): {per['median_uj']:,.2f} µJ per inference, median of "
                          f"{energy['windows']} windows (min {per['min_uj']:,.2f}, max {per['max_uj']:,.2f}); "
                          f"average power {per['mean_power_mw']:,.2f} mW over {per['time_us']:,.1f} µs")
            for layer in energy["layers"] or []:
                console.print(f"  layer {layer['index']} {layer['op']}: {layer['median_uj']:,.3f} µJ", highlight=False)
        if energy["error"]:
            console.print(f"[yellow]energy n/a: {energy['error']}[/yellow]")
    est, info = run["total"].get("est_energy_uj"), run.get("estimated_energy") or {}
    if est is not None:
        console.print(f"[dim]Estimated energy {est:,.1f} µJ per inference (estimated cycles x the datasheet's "
                      f"{info['run_current_ma']:g} mA at {info['clock_hz'] / 1e6:g} MHz, {info['supply_v']:g} V; "
                      f"{info['source']}): an estimate, not a measurement.[/dim]")


def _verdict(run: dict) -> str:
    """One run's verdict: FAILED whenever the run failed, bit-exact only when it did not."""
    differ = f"{run['mismatches']} of {run['samples']} samples differ from TFLM"
    if run["mismatched_samples"]:
        differ += f" (first: {', '.join(run['mismatched_samples'][:5])})"
    if run["error"]:
        before = f"; {differ}" if run["mismatches"] else \
            f"; the {run['samples']} sample(s) before it matched TFLM" if run["samples"] else ""
        return f"[red]FAILED[/red] ({run['error']}){before}"
    return f"[red]{differ}[/red]" if run["mismatches"] else "[green]bit-exact with TFLM[/green]"


def _target_options(args) -> dict:
    """open_target options from --emulate / --port / --baud."""
    return {"emulate": bool(getattr(args, "emulate", False)), "port": getattr(args, "port", None),
            "baudrate": getattr(args, "baud", None)}


def _resolve_board(args) -> str:
    """--board nucleo -> the attached Nucleo's board name (and its probe into args.probe)."""
    from microtile.targets.discovery import resolve_board

    if getattr(args, "emulate", False):
        from microtile.targets.boards import load_board

        return load_board(args.board).name  # no QEMU machine: the timing model runs it (runner)
    name, device = resolve_board(args.board, args.probe)
    if device is not None:
        args.probe = device.unique_id
        console.print(f"[dim]{name}: probe {device.unique_id} ({device.board_info_name or device.description}), "
                      f"VCP {getattr(args, 'port', None) or device.port}[/dim]")
    return name


def _check_outputs(args) -> None:
    """Fail before any build or run on what would only fail at the end."""
    from microtile.measure.runner import check_writable

    if args.json:
        check_writable(args.json)
    plot = getattr(args, "plot", None)
    if plot:
        from pathlib import Path

        if Path(plot).suffix.lower() not in (".png", ".svg"):
            raise MicrotileError(f"--plot {plot}: give a .png or .svg file name")
        check_writable(plot, "--plot")


def cmd_run(args) -> int:
    from microtile.measure.runner import exit_code, run_model, write_json

    _check_outputs(args)
    args.board = _resolve_board(args)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("running", total=None)
        hook, args.model = _approx_model(args)  # --approx: the pruned .tflite (measure/approx_search.py)
        result = run_model(args.model, args.board, inputs=args.inputs, random=args.random, graph_hook=hook,
                           labels=args.labels, limit=args.limit, probe=args.probe, os_name=args.os,
                           kernels=args.kernels, seed=args.seed, power=args.power,
                           target_options=_target_options(args),
                           progress=lambda done, total: progress.update(task, completed=done, total=total))
    _print_run(result)
    if args.json:
        write_json(result, args.json)
        console.print(f"wrote {args.json}")
    return exit_code(result)


def _print_bench(data: dict, inputs: int) -> None:
    kernels = list(data["runs"])
    unit = data["counter_unit"]
    table = Table(title=f"{data['model']} on {data['board']}: {unit}, mean of {inputs} inputs")
    for col in ("#", "op", "shape", "MACs"):
        table.add_column(col, justify="right" if col in ("#", "MACs") else "left")
    short = {"reference": "ref", "optimized": "opt"}
    for k in kernels:
        table.add_column(short[k], justify="right")
        table.add_column(f"{short[k]}/MAC", justify="right")
    if len(kernels) == 2:
        table.add_column("speed-up", justify="right")
    for k in kernels:
        table.add_column(f"{short[k]} est. cycles", justify="right")
        table.add_column(f"{short[k]} est./MAC", justify="right")

    def row(label, op, shape, macs, counts, speedup, estimates, style=None):
        cells = [label, op, shape, f"{macs:,}"]
        for k in kernels:
            c = counts[k]
            cells += [_count(c), f"{c / macs:.2f}" if macs and c is not None else "-"]
        if len(kernels) == 2:
            cells.append(f"{speedup:.2f}x" if speedup else "-")
        for k in kernels:
            e = estimates[k]
            cells += [_count(e), f"{e / macs:.2f}" if macs and e is not None else "-"]
        table.add_row(*cells, style=style)

    for layer in data["layers"]:
        row(str(layer["index"]), layer["op"], "x".join(map(str, layer["shape"][1:])), layer["macs"],
            layer[unit], layer.get("speedup"), layer["est_cycles"])
    total = data["total"]
    row("", "total", "", total["macs"], total[unit], total.get("speedup"), total["est_cycles"], style="bold")
    console.print(table)
    console.print(_timing_note(next(iter(data["runs"].values()))))
    if data["x_cube_ai"]:
        x = data["x_cube_ai"]
        for k in kernels:
            e, r = total["est_cycles"][k], x["est_cycles_ratio"][k]
            if e is not None:
                console.print(f"{k}: {e / 1e6:.2f} M estimated cycles ({e / 120e3:.1f} ms at 120 MHz) vs "
                              f"X-CUBE-AI 10.2 {x['cycles'] / 1e6:.3g} M measured: {r:.2f}x "
                              f"({'slower' if r > 1 else 'faster'})")
    for k, run in data["runs"].items():
        console.print(f"{k}: {_verdict(run)}")
    if unit == "instructions" and data["timing_model"]["target"]:
        console.print("[dim]Emulated on the timing model (unicorn): counts are executed instructions.[/dim]")
    elif unit == "instructions":
        console.print("[dim]Emulated: executed instructions (QEMU -icount), not cycles.[/dim]")


def _print_bench_summary(results: list[dict]) -> None:
    """One line per model: instructions and estimated cycles of each kernel set, and
    the ratio to X-CUBE-AI where the board is its NUCLEO-L4R5ZI."""
    first = results[0]
    tm = first["timing_model"]
    table = Table(title=f"summary: estimated cycles on {tm['board']} ({tm['flash_wait_states']} flash wait states "
                        f"at {tm['clock_hz'] / 1e6:g} MHz)")
    kernels = first["kernels"]
    for col in ("model", "MACs", *[f"{k} {c}" for k in kernels for c in ("instructions", "est. cycles")],
                "X-CUBE-AI cycles", *[f"{k} / X-CUBE-AI" for k in kernels]):
        table.add_column(col, justify="left" if col == "model" else "right")
    for data in results:
        total, unit, x = data["total"], data["counter_unit"], data["x_cube_ai"]
        cells = [data["file"], f"{total['macs']:,}"]
        for k in kernels:
            cells += [_count(total[unit].get(k)), _count(total["est_cycles"].get(k))]
        cells.append(f"{x['cycles']:,}" if x else "-")
        cells += [f"{x['est_cycles_ratio'][k]:.2f}x" if x and x["est_cycles_ratio"].get(k) else "-" for k in kernels]
        table.add_row(*cells)
    console.print(table)


def _approx_model(args):
    """`run --approx CHOSEN.json`: (graph hook marking the pruned layers, pruned model path)."""
    if not getattr(args, "approx", None):
        return None, args.model
    from microtile.measure.approx_search import pruned_model_file
    from microtile.passes.approx import mark_pruned

    path, pruned = pruned_model_file(args.model, args.approx)
    return (lambda g: mark_pruned(g, pruned)), str(path)


def cmd_approx(args) -> int:
    from microtile.measure.approx_search import run_approx

    _check_outputs(args)
    r = run_approx(args.model, args.labels, args.calibrate, args.budget, args.board, args.json, args.plot,
                   args.device_limit, log=lambda m: console.print(m, highlight=False))
    e, c = r["exact"], r["chosen"]
    for name, d in (("exact", e), ("chosen", c)):
        console.print(f"{name}: held-out Top-1 {d['heldout_top1']:.4f}, {_count(d['instructions'])} instructions, "
                      f"{_count(d['est_cycles'])} est. cycles")
    def change(saved: float | None, unit: str) -> str:
        saved = saved or 0.0
        return f"{abs(saved):.1%} {'fewer' if saved >= 0 else 'more'} {unit}"

    console.print(f"chosen: {change(c.get('instructions_saved'), 'instructions')}, "
                  f"{change(c.get('est_cycles_saved'), 'est. cycles')}; device mismatches {c['device_mismatches']} of {c['device_samples']}, "
                  f"reference vs TFLM mismatches {c['reference_mismatches']}; {len(r['pareto'])} points")
    if args.json:
        console.print(f"wrote {args.json}" + (f" and {r['plot']}" if r.get("plot") else ""))
    if c["device_error"] or e.get("device_error"):
        return 3
    return 1 if c["device_mismatches"] or c["reference_mismatches"] or e["device_mismatches"] else 0


def cmd_bench(args) -> int:
    from microtile.measure.bench import bench_model, write_bench_json
    from microtile.measure.runner import exit_code, worst_exit_code

    _check_outputs(args)
    kernels = ("reference", "optimized") if args.kernels == "both" else (args.kernels,)
    results, codes = [], []
    try:
        for model in args.model:
            data = bench_model(model, args.board, kernels, random=args.random, seed=args.seed,
                               target_options=_target_options(args))
            results.append(data)
            codes.append(data["exit_code"])
            _print_bench(data, args.random)
            if data["exit_code"] >= 128:  # interrupted: stop, keep what was measured
                break
    except KeyboardInterrupt as exc:  # between runs (a build): the models done so far still count
        console.print("[red]interrupted[/red]")
        codes.append(exit_code(exc))
    except MicrotileError as exc:  # a later model is bad: the models measured so far are still written
        console.print(f"[red]error:[/red] {exc}")
        codes.append(exit_code(exc))
    if len(results) > 1:
        _print_bench_summary(results)
    if args.json and results:
        write_bench_json(results, args.json)
        console.print(f"wrote {args.json}")
    return worst_exit_code(codes)


def cmd_lab(args) -> int:
    """`microtile lab PLAN --out DIR` (measure/lab.py), or `--compare OLD NEW` (measure/report.py)."""
    if args.compare:
        from microtile.measure.report import compare_main

        if args.plan:
            raise MicrotileError("lab --compare OLD NEW takes no PLAN; run the plan, then compare the reports")
        return compare_main(args.compare[0], args.compare[1], args.out)
    if not args.plan or not args.out:
        raise MicrotileError("lab: give PLAN.yaml --out DIR (or --compare OLD/report.json NEW/report.json)")
    from microtile.measure.lab import lab_main

    return lab_main(args.plan, args.out, console=console, labgrid=args.labgrid)


def cmd_compile(args) -> int:
    from pathlib import Path

    from microtile.targets.boards import load_board
    from microtile.build.firmware import build_within_rom_rule
    from microtile.codegen.model_source import compile_model
    from microtile.importer.tflite_format import load_tflite

    board = load_board(args.board)
    graph = load_tflite(args.model)
    compiled, fw = build_within_rom_rule(graph, compile_model(graph, args.kernels, board), board)
    if args.out:
        compiled.write(Path(args.out))
        console.print(f"wrote model.c and model.h to {args.out}")
    console.print(f"{fw.elf}\narena {compiled.plan.arena_size:,} B, weights {compiled.const_bytes:,} B, "
                  f"ROM {fw.sizes.rom_bytes:,} B, static RAM {fw.sizes.ram_static_bytes:,} B")
    if args.explain:
        if compiled.search is not None:  # the RAM search's Pareto front (passes/ram_search.py)
            from microtile.measure.ram_bench import pareto_rows

            console.print(f"RAM configurations (budget {compiled.search.budget:,} B, layer-by-layer bound "
                          f"{compiled.search.layer_bound:,} B), Pareto front:", highlight=False)
            for row in pareto_rows(compiled.search):
                console.print("  " + row, highlight=False)
        return _explain(args, compiled)
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from microtile.targets.boards import load_board
    from microtile.build.firmware import check_fits
    from microtile.codegen.model_source import compile_model
    from microtile.codegen.export import check_name, default_name, export_model
    from microtile.importer.tflite_format import load_tflite

    name = check_name(args.name or default_name(args.model))
    board = load_board(args.board)
    compiled = compile_model(load_tflite(args.model), args.kernels, board)
    check_fits(compiled, board)
    result = export_model(compiled, Path(args.out), name, board)
    console.print(f"wrote {len(result.files)} files to {args.out}: add_subdirectory({args.out}) and link "
                  f"microtile::{name}, or include {name}.mk; API in include/{name}.h")
    console.print(result.summary(), soft_wrap=True)
    return 0


def _explain(args, compiled) -> int:
    """Per layer: the kernel it runs ("opt", or "ref: <reason>" when the optimised set
    falls back), the schedule the cost model chose, its predicted and the measured
    count per MAC (one run on the target). When the measurement fails, the predicted
    schedule is still printed, measured "n/a", then the error; the exit code is the
    run's (3 when the target failed)."""
    import numpy as np

    from microtile.measure.runner import exit_code, run_model
    from microtile.passes.schedule import explain

    error, code, counts, unit = None, 0, [None] * len(compiled.device_ops), "instructions"
    estimates = list(counts)
    try:
        result = run_model(args.model, args.board, random=1, kernels=args.kernels,
                           target_options={"emulate": getattr(args, "emulate", False)})
    except MicrotileError as exc:
        error, code = exc, exit_code(exc)
    else:
        unit = result.counter_unit
        if result.error is not None:
            error, code = result.error, exit_code(result)
        else:
            counts = result.mean_counts()
            estimates = result.mean_estimates()
            code = exit_code(result)
    table = Table(title=f"{compiled.graph.name}: schedules ({args.kernels} kernels), {unit} per MAC "
                        "(per output element for layers without MACs)")
    numeric = ("#", "predicted", "measured", "est. cycles/MAC predicted", "est. cycles/MAC measured")
    for col in ("#", "op", "shape", "kernel", "M x N x K", "tile", "weights", "loop order", "k unroll",
                "predicted", "measured", "est. cycles/MAC predicted", "est. cycles/MAC measured"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for row, count, macs, est in zip(explain(compiled), counts, compiled.macs, estimates):
        mnk = f"{row['M']} x {row['N']} x {row['K']}" if "M" in row else "-"
        tile = str(row.get("tile", "-"))
        predicted = f"{row['predicted_ipm']:.2f}" if "predicted_ipm" in row else "-"
        predicted_cpm = f"{row['predicted_cpm']:.2f}" if "predicted_cpm" in row else "-"
        per = macs or int(np.prod(row["shape"]))  # data movement: per output element
        def per_unit(value) -> str:
            if value is None:
                return "n/a"
            return f"{value / per:.2f}" if "predicted_ipm" in row or macs else "-"

        table.add_row(str(row["index"]), row["op"], "x".join(map(str, row["shape"][1:])), row["kernel"], mnk,
                      tile, row.get("weights", "-"), row.get("loop_order", "-").split(":")[0],
                      str(row.get("k_unroll", "-")), predicted, per_unit(count), predicted_cpm, per_unit(est))
    console.print(table)
    if error is not None:
        console.print(f"[red]error:[/red] --explain could not measure: {error}", soft_wrap=True)
    elif result.mismatches:
        console.print(f"[red]{len(result.mismatches)} output(s) differ from TFLM[/red]")
    return code


def cmd_probes(args) -> int:
    from microtile.targets.discovery import list_attached

    attached = list_attached()
    if not attached:
        from microtile.targets.discovery import select_attached

        select_attached("nucleo", attached=[])  # raises with the reason (cable, udev rules)
    table = Table(title="attached debug probes")
    for col in ("unique id", "probe", "board (ST-LINK)", "pyOCD target", "VCP", "--board"):
        table.add_column(col)
    for a in attached:
        table.add_row(a.unique_id, a.description, a.board_info_name or "-", a.pyocd_target or "-",
                      a.port or "-", a.board or "-")
    console.print(table)
    return 0


def cmd_udev_rules(args) -> int:
    from microtile.targets.discovery import udev_rules

    sys.stdout.write(udev_rules())
    return 0


def cmd_boards(args) -> int:
    from microtile.targets.boards import list_boards

    table = Table(title="boards (boards/*.yaml)")
    for col in ("name", "MCU", "core", "clock", "flash", "RAM", "VCP UART", "counts", "pyOCD target", "emulator"):
        table.add_column(col)
    for b in list_boards():
        ram = b.ram_bytes + sum(r.size for r in b.extra_ram)
        uart = b.uart.name + (f" {b.uart.tx}/{b.uart.rx}" if b.uart.tx and b.uart.rx else "")
        if b.pyocd is None:
            pyocd = "-"
        else:
            pyocd = b.pyocd.target + (" (pack)" if b.pyocd.pack else "")
        if b.emulator is None:
            emulator = "timing model"  # --emulate runs the image on it (docs/timing.md)
        elif b.emulator.board is None:
            emulator = f"qemu {b.emulator.machine}"
        else:
            emulator = f"qemu {b.emulator.machine} (stand-in)"
        table.add_row(b.name, b.mcu, b.core + ("+fpu" if b.fpu else ""), f"{b.clock_hz / 1e6:.0f} MHz",
                      f"{b.flash_bytes // 1024} KiB", f"{ram // 1024} KiB", uart, b.counter_unit, pyocd, emulator)
    console.print(table)
    return 0


class _VersionAction(argparse.Action):
    """--version: microtile's version and commit, and the compiler and QEMU it would use."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from microtile.measure.provenance import version_text

        print(version_text())
        parser.exit()


def _seed_option(parser) -> None:
    from microtile.measure.inputs import DEFAULT_SEED

    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of the random inputs (default: {DEFAULT_SEED}, so runs repeat exactly)")


def _nbytes(text: str) -> int:
    """A positive byte count, decimal or 0x hex (the budgets)."""
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of bytes (e.g. 65536 or 0x10000)")
    return value


def _flash_budget_option(parser) -> None:
    parser.add_argument("--flash-budget", type=_nbytes, metavar="BYTES",
                        help="ROM the optimised build may take, int16 weight copies filling what its smallest "
                             "build leaves (default: the reference build's ROM + 10%%; below the smallest build: "
                             "exit 2; docs/schedules.md)")


def _ram_budget_option(parser) -> None:
    parser.add_argument("--ram-budget", type=_nbytes, metavar="BYTES",
                        help="activation arena the build may take: the fastest RAM configuration that fits is "
                             "chosen (default: the board's RAM minus stack and buffers; passes/ram_search.py)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microtile", description=__doc__)
    parser.add_argument("--version", action=_VersionAction,
                        help="print microtile's version and commit and the gcc and QEMU versions")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="compile, build, run on the target and check against TFLM")
    run.add_argument("model", help="int8 .tflite model")
    run.add_argument("--board", default="qemu",
                     help="target board (default: qemu; nucleo = the attached Nucleo; see `microtile boards`)")
    run.add_argument("--probe", help="debug probe unique id, when several boards are attached")
    run.add_argument("--port", help="board serial port (default: the probe's ST-LINK virtual COM port)")
    run.add_argument("--baud", type=int, help="board serial baud rate (default: the board YAML's uart.baudrate)")
    run.add_argument("--emulate", action="store_true",
                     help="run the board's image on its emulator (QEMU) instead of the attached board")
    run.add_argument("--kernels", choices=("optimized", "reference"), default="optimized",
                     help="optimised (default) or the portable reference kernels; both are bit-exact with TFLM")
    _flash_budget_option(run)
    _ram_budget_option(run)
    run.add_argument("--os", choices=("baremetal", "zephyr"), default="baremetal",
                     help="firmware: bare-metal image (default) or the Zephyr app (needs ZEPHYR_BASE; docs/zephyr.md)")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--inputs", help="directory of .bin/.npy inputs, or one .npy (N x input shape)")
    src.add_argument("--random", type=int, metavar="N", help="N seeded random inputs (default: 1)")
    src.add_argument("--labels", help="energyrunner y_labels.csv (file, classes, label); inputs beside it")
    run.add_argument("--limit", type=int, help="run at most N of the --inputs / --labels inputs")
    run.add_argument("--power", metavar="PROBE:PORT",
                     help="measure energy with a power probe: ppk2:/dev/ttyACM2, joulescope[:SERIAL], "
                          "lpm01a:/dev/ttyACM3 or stlinkv3pwr:/dev/ttyACM4 (README, Energy)")
    _seed_option(run)
    run.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    run.add_argument("--approx", metavar="CHOSEN.json", help="run the pruned network `microtile approx` chose")
    run.set_defaults(func=cmd_run)

    apx = sub.add_parser("approx", help="prune channels, then insignificant k-blocks / taps per layer, within a "
                                        "Top-1 budget (issue 10)")
    apx.add_argument("model")
    apx.add_argument("--labels", required=True, help="energyrunner y_labels.csv; inputs beside it")
    apx.add_argument("--calibrate", type=int, required=True, metavar="N",
                     help="the first N labelled inputs calibrate and search; the rest are held out")
    apx.add_argument("--budget", required=True, metavar="POINTS",
                     help="allowed Top-1 loss in percentage points: the search keeps a step while the "
                          "calibration inputs the exact network gets right and the pruned one (cross-fitted, "
                          "judged on the half it was not fitted on) gets wrong are within it")
    apx.add_argument("--board", default="qemu")
    apx.add_argument("--json", metavar="OUT.json", help="write exact, chosen, pareto and split as JSON")
    apx.add_argument("--plot", metavar="FRONT.png", help="the Pareto plot (PNG or SVG; default OUT.png beside --json)")
    apx.add_argument("--device-limit", type=int, metavar="N", help="run only the first N held-out inputs on the target")
    apx.set_defaults(func=cmd_approx)

    comp = sub.add_parser("compile", help="generate model.c/model.h and build the firmware")
    comp.add_argument("model")
    comp.add_argument("--board", default="qemu")
    comp.add_argument("--out", help="also copy the generated sources here")
    comp.add_argument("--kernels", choices=("reference", "optimized"), default="optimized")
    comp.add_argument("--explain", action="store_true",
                      help="print each layer's schedule with predicted and measured counts per MAC")
    comp.add_argument("--emulate", action="store_true",
                      help="--explain measures on the board's emulator (QEMU or the timing model), not the board")
    _flash_budget_option(comp)
    _ram_budget_option(comp)
    comp.set_defaults(func=cmd_compile)

    exp = sub.add_parser("export", help="write the model as a self-contained C library folder (CMake, Make, Zephyr)")
    exp.add_argument("model", help="int8 .tflite model")
    exp.add_argument("--board", default="qemu", help="board it must fit and whose compiler flags size the report")
    exp.add_argument("--out", required=True, help="folder to write (created)")
    exp.add_argument("--name", help="library and C prefix (default: the model file's stem as a C identifier)")
    exp.add_argument("--kernels", choices=("reference", "optimized"), default="optimized")
    _flash_budget_option(exp)
    exp.set_defaults(func=cmd_export)

    bench = sub.add_parser("bench", help="reference vs optimised kernels, per layer, bit-exact checked")
    bench.add_argument("model", nargs="+", help="int8 .tflite models")
    bench.add_argument("--board", default="qemu")
    bench.add_argument("--kernels", choices=("reference", "optimized", "both"), default="both")
    _flash_budget_option(bench)
    bench.add_argument("--emulate", action="store_true",
                       help="run the board's image emulated: on QEMU, or on the timing model where no QEMU "
                            "machine models the board (nucleo_l4r5zi: the X-CUBE-AI comparison)")
    bench.add_argument("--random", type=int, default=2, metavar="N", help="seeded random inputs per model")
    _seed_option(bench)
    bench.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    bench.set_defaults(func=cmd_bench)

    lab = sub.add_parser("lab", help="a lab bench run over models x boards x kernels x settings x inputs, "
                                     "with JSON, CSV and HTML reports (resumable)")
    lab.add_argument("plan", nargs="?", help="plan YAML (models, boards, kernels, settings, inputs)")
    lab.add_argument("--out", metavar="DIR", help="folder for the cells and report.json/.csv/.html")
    lab.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                     help="compare two report.json files and flag regressions (exit 1 if any)")
    lab.add_argument("--labgrid", metavar="PLACE",
                     help="acquire this labgrid place around the run (default: $LG_PLACE when set)")
    lab.set_defaults(func=cmd_lab)

    boards = sub.add_parser("boards", help="list the supported boards")
    boards.set_defaults(func=cmd_boards)

    probes = sub.add_parser("probes", help="list attached debug probes, their serial ports and boards")
    probes.set_defaults(func=cmd_probes)

    udev = sub.add_parser("udev-rules", help="print udev rules giving your user access to ST-LINK probes")
    udev.set_defaults(func=cmd_udev_rules)

    args = parser.parse_args(argv)
    from microtile.measure.runner import exit_code, signals_as_interrupts
    from microtile.passes.schedule import set_flash_budget

    set_flash_budget(getattr(args, "flash_budget", None))
    from microtile.passes.ram_search import set_ram_budget

    set_ram_budget(getattr(args, "ram_budget", None))

    try:
        with signals_as_interrupts():  # SIGTERM / SIGHUP clean up like Ctrl-C
            return args.func(args)
    except MicrotileError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)  # one line, however long
        return exit_code(exc)
    except KeyboardInterrupt as exc:
        console.print(f"[red]interrupted[/red] ({exc or 'Ctrl-C'})")
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
