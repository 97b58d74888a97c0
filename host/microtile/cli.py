"""The `microtile` command line."""
from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from .errors import MicrotileError

console = Console()


def _print_run(result) -> None:
    data = result.to_json()
    unit = data["counter_unit"]
    table = Table(title=f"{data['model']} on {data['board']} ({unit}; mean of {data['samples']} runs)")
    table.add_column("#", justify="right")
    table.add_column("op")
    table.add_column("MACs", justify="right")
    table.add_column(unit, justify="right")
    table.add_column(f"{unit}/MAC", justify="right")
    for layer in data["layers"]:
        per_mac = f"{layer[unit] / layer['macs']:.2f}" if layer["macs"] else "-"
        table.add_row(str(layer["index"]), layer["op"], f"{layer['macs']:,}", f"{layer[unit]:,}", per_mac)
    total = data["total"]
    per_mac = f"{total[unit] / total['macs']:.2f}" if total["macs"] else "-"
    table.add_row("", "total", f"{total['macs']:,}", f"{total[unit]:,}", per_mac, style="bold")
    console.print(table)
    ram, rom = data["ram"], data["rom"]
    console.print(
        f"RAM {ram['total_bytes']:,} B (arena {ram['arena_bytes']:,} B, stack used {ram['stack_bytes']:,} B, "
        f"static {ram['static_bytes']:,} B)   ROM {rom['total_bytes']:,} B"
    )
    verdict = "[green]bit-exact with TFLM[/green]" if not data["mismatches"] else \
        f"[red]{data['mismatches']} of {data['samples']} samples differ from TFLM[/red] " \
        f"(first: {', '.join(data['mismatched_samples'][:5])})"
    console.print(f"Samples {data['samples']}: {verdict}")
    if data["top1"] is not None:
        console.print(f"Top-1 {100 * data['top1']:.1f}% (TFLM reference kernels: {100 * data['tflm_top1']:.1f}%)")
    if unit == "instructions":
        console.print("[dim]Emulated run: counts are executed instructions (QEMU -icount), not cycles.[/dim]")


def cmd_run(args) -> int:
    from .runner import run_model, write_json

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("running", total=None)
        result = run_model(args.model, args.board, inputs=args.inputs, random=args.random,
                           labels=args.labels, limit=args.limit, probe=args.probe,
                           progress=lambda done, total: progress.update(task, completed=done, total=total))
    _print_run(result)
    if args.json:
        write_json(result, args.json)
        console.print(f"wrote {args.json}")
    if result.error:
        console.print(f"[red]error after {result.samples} sample(s):[/red] {result.error}")
        return 3
    return 1 if result.mismatches else 0


def cmd_compile(args) -> int:
    from .boards import load_board
    from .build import build_firmware
    from .codegen import compile_model
    from .tflite_format import load_tflite

    compiled = compile_model(load_tflite(args.model))
    board = load_board(args.board)
    if args.out:
        compiled.write(__import__("pathlib").Path(args.out))
        console.print(f"wrote model.c and model.h to {args.out}")
    fw = build_firmware(compiled, board)
    console.print(f"{fw.elf}\narena {compiled.plan.arena_size:,} B, weights {compiled.const_bytes:,} B, "
                  f"ROM {fw.sizes.rom_bytes:,} B, static RAM {fw.sizes.ram_static_bytes:,} B")
    return 0


def cmd_boards(args) -> int:
    from .boards import list_boards

    table = Table(title="boards")
    for col in ("name", "core", "clock", "flash", "RAM", "counts"):
        table.add_column(col)
    for b in list_boards():
        table.add_row(b.name, b.core, f"{b.clock_hz / 1e6:.0f} MHz", f"{b.flash_bytes // 1024} KiB",
                      f"{b.ram_bytes // 1024} KiB", b.counter_unit)
    console.print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microtile", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="compile, build, run on the target and check against TFLM")
    run.add_argument("model", help="int8 .tflite model")
    run.add_argument("--board", default="qemu", help="target board (default: qemu; see `microtile boards`)")
    run.add_argument("--probe", help="debug probe unique id, when several boards are attached")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--inputs", help="directory of .bin/.npy inputs, or one .npy (N x input shape)")
    src.add_argument("--random", type=int, metavar="N", help="N seeded random inputs (default: 1)")
    src.add_argument("--labels", help="energyrunner y_labels.csv (file, classes, label); inputs beside it")
    run.add_argument("--limit", type=int, help="run at most N inputs")
    run.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    run.set_defaults(func=cmd_run)

    comp = sub.add_parser("compile", help="generate model.c/model.h and build the firmware")
    comp.add_argument("model")
    comp.add_argument("--board", default="qemu")
    comp.add_argument("--out", help="also copy the generated sources here")
    comp.set_defaults(func=cmd_compile)

    boards = sub.add_parser("boards", help="list the supported boards")
    boards.set_defaults(func=cmd_boards)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MicrotileError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
