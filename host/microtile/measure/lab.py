"""`microtile lab PLAN.yaml --out DIR`: a lab bench run over a matrix of models x boards
x kernel sets x settings x inputs, with reports (report.json, report.csv, report.html).

    models: [a.tflite, b.tflite]          # paths relative to the plan file
    boards: [qemu, {board: nucleo_l4r5zi, emulate: true}, {board: nucleo}]
    kernels: [reference, optimized]
    settings: [{name: exact}, {name: pruned, approx: chosen.json}]  # optional: approx, or run_model options
    inputs: {random: 2, seed: 0}          # or {labels: y_labels.csv, limit: N}, {inputs: DIR}; or a list

Every cell is written to DIR/cells/<key>.json as soon as it ends (atomically: a temporary
file renamed), the key being a hash of what the cell measures (model bytes, board,
kernels, setting, inputs and their bytes). A rerun keeps the cells already measured
and runs the rest, so an interrupted run resumes where it stopped. A failed cell is
recorded with its error and exit code, the others still run, and a rerun tries it again.
Cells on real boards are spread over every attached board of that kind, one thread per
board, each holding its board's lock (targets/farm.py); emulated cells run one at a time.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from microtile.codegen.model_source import KERNEL_SETS
from microtile.errors import MicrotileError
from microtile.measure.inputs import DEFAULT_SEED
from microtile.measure.provenance import file_sha256
from microtile.measure.runner import RunResult, exit_code, run_model, worst_exit_code

PLAN_KEYS = ("models", "boards", "kernels", "settings", "inputs")
INPUT_KINDS = ("random", "inputs", "labels")
# run_model's arguments that the plan's own axes set; a setting may give any other one
CELL_ARGS = {"model_path", "board_name", "inputs", "random", "labels", "limit", "progress", "probe",
             "kernels", "target_options", "seed", "samples", "graph_hook", "power"}
SETTING_KEYS = {"approx",        # `microtile approx --json` output: the pruned model (README "approx")
                "ram_budget",    # run --ram-budget: the arena the RAM search may take (bytes)
                "flash_budget"}  # run --flash-budget: flash for int16 weight copies (bytes)
BUDGET_KEYS = ("ram_budget", "flash_budget")
CELL_FORMAT = 1  # version of the cell files; a different one is measured again


class PlanError(MicrotileError):
    """The plan file is unreadable or says something microtile cannot run (exit 2)."""


@dataclass(frozen=True)
class BoardSpec:
    board: str
    emulate: bool = False
    probe: str | None = None
    power: str | None = None  # the power probe, as `microtile run --power` takes it

    @property
    def label(self) -> str:
        return self.board + (" (emulated)" if self.emulate else "") + (f" probe {self.probe}" if self.probe else "")

    def to_json(self) -> dict:
        return {"board": self.board, "emulate": self.emulate, "probe": self.probe, "power": self.power}


@dataclass(frozen=True)
class Cell:
    model: Path
    board: BoardSpec
    kernels: str
    setting: str  # the setting's name
    options: tuple  # the setting's run_model options, as sorted (key, value) pairs
    inputs: tuple  # the input spec, as sorted (key, value) pairs

    @property
    def label(self) -> str:
        inputs = ", ".join(f"{k} {v}" for k, v in self.inputs)
        setting = "" if self.setting == "default" else f" [{self.setting}]"
        return f"{self.model.name} on {self.board.label}, {self.kernels}{setting}, {inputs}"

    def to_json(self) -> dict:
        return {"model": str(self.model), "board": self.board.to_json(), "kernels": self.kernels,
                "setting": self.setting, "options": dict(self.options), "inputs": dict(self.inputs)}

    def key(self) -> str:
        """What the cell measures, hashed: the model's and the inputs' bytes, not their paths."""
        data = self.to_json()
        data["model"] = file_sha256(self.model) if self.model.is_file() else f"missing:{self.model}"
        for k in ("inputs", "labels"):
            if k in data["inputs"]:
                data["inputs"][k] = _path_digest(Path(data["inputs"][k]))
        if "approx" in data["options"]:
            data["options"]["approx"] = _path_digest(Path(data["options"]["approx"]))
        data["format"] = CELL_FORMAT
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _path_digest(path: Path) -> str:
    """Content hash of an input file, or of a directory's files (labels: the CSV and the
    inputs beside it)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.parent.iterdir() if p.is_file()) if path.suffix == ".csv" else \
        sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest() if f.is_file() else b"missing")
    return h.hexdigest()


@dataclass
class Plan:
    path: Path
    models: list[Path]
    boards: list[BoardSpec]
    kernels: list[str]
    settings: list[tuple[str, dict]]
    inputs: list[dict]
    raw: dict = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        return [Cell(m, b, k, name, tuple(sorted(opts.items())), tuple(sorted(i.items())))
                for m in self.models for b in self.boards for k in self.kernels
                for name, opts in self.settings for i in self.inputs]


def _as_list(value, what: str) -> list:
    if value is None:
        raise PlanError(f"plan: '{what}' is missing; give a list, e.g. {what}: [...]")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise PlanError(f"plan: '{what}' is empty; give at least one")
    return items


def _board_spec(item) -> BoardSpec:
    from microtile.targets.boards import load_board
    from microtile.targets.discovery import GENERIC_BOARD

    if isinstance(item, str):
        item = {"board": item}
    if not isinstance(item, dict) or not isinstance(item.get("board"), str):
        raise PlanError(f"plan: board entry {item!r}: give a name (qemu) or {{board: NAME, emulate: true}}")
    extra = set(item) - {"board", "emulate", "probe", "power"}
    if extra:
        raise PlanError(f"plan: board {item['board']}: unknown key(s) {', '.join(sorted(extra))} "
                        "(known: board, emulate, probe, power)")
    name = item["board"]
    if name != GENERIC_BOARD:
        try:
            name = load_board(name).name
        except MicrotileError as exc:
            raise PlanError(f"plan: {exc}") from None
    emulate = item.get("emulate", False)
    if not isinstance(emulate, bool):
        raise PlanError(f"plan: board {name}: emulate must be true or false, not {emulate!r}")
    if emulate and name == GENERIC_BOARD:
        raise PlanError("plan: board nucleo with emulate: name the board to emulate, e.g. nucleo_l4r5zi")
    probe, power = item.get("probe"), item.get("power")
    if power is not None:
        from microtile.measure.power import parse_spec

        if emulate:
            raise PlanError(f"plan: board {name}: power with emulate: an emulated board has no probe to read "
                            "(its cells carry estimated energy); drop one of them")
        try:
            parse_spec(str(power))
        except MicrotileError as exc:
            raise PlanError(f"plan: board {name}: {exc}") from None
    return BoardSpec(name, emulate, None if probe is None else str(probe), None if power is None else str(power))


def _input_spec(item, base: Path) -> dict:
    if not isinstance(item, dict):
        raise PlanError(f"plan: inputs entry {item!r}: give {{random: N}}, {{labels: CSV}} or {{inputs: DIR}}")
    kinds = [k for k in INPUT_KINDS if k in item]
    extra = set(item) - {*INPUT_KINDS, "seed", "limit"}
    if len(kinds) != 1 or extra:
        raise PlanError(f"plan: inputs entry {item!r}: give exactly one of random, labels, inputs "
                        "(with seed for random, limit for the others)")
    kind = kinds[0]
    spec: dict = {}
    if kind == "random":
        n, seed = item["random"], item.get("seed", DEFAULT_SEED)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise PlanError(f"plan: inputs random: {n!r}: give a count of at least 1")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise PlanError(f"plan: inputs seed: {seed!r}: give an integer of 0 or more")
        if "limit" in item:
            raise PlanError("plan: inputs: limit applies to labels or inputs; with random give the count")
        spec = {"random": n, "seed": seed}
    else:
        path = (base / str(item[kind])).resolve()
        if not path.exists():
            raise PlanError(f"plan: inputs {kind}: {path} does not exist")
        spec = {kind: str(path)}
        if "limit" in item:
            limit = item["limit"]
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise PlanError(f"plan: inputs limit: {limit!r}: give a count of at least 1")
            spec["limit"] = limit
    return spec


def _settings(items, base: Path) -> list[tuple[str, dict]]:
    allowed = (set(inspect.signature(run_model).parameters) - CELL_ARGS) | SETTING_KEYS
    out, names = [], set()
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise PlanError(f"plan: settings entry {item!r}: give a mapping, e.g. {{name: default}}")
        opts = {key: v for key, v in item.items() if key != "name"}
        unknown = set(opts) - allowed
        if unknown:
            raise PlanError(f"plan: setting {item.get('name', k)}: unknown option(s) {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(allowed)) or 'none'})")
        for key in BUDGET_KEYS:
            if key in opts and (not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] <= 0):
                raise PlanError(f"plan: setting {item.get('name', k)}: {key} {opts[key]!r}: give a positive "
                                "number of bytes")
        if "approx" in opts:
            approx = (base / str(opts["approx"])).resolve()
            if not approx.is_file():
                raise PlanError(f"plan: setting {item.get('name', k)}: approx {opts['approx']}: no such file")
            opts["approx"] = str(approx)
        name = str(item.get("name") or ("default" if not opts else ",".join(f"{a}={b}" for a, b in opts.items())))
        if name in names:
            raise PlanError(f"plan: two settings are named {name}; give each its own name")
        names.add(name)
        out.append((name, opts))
    return out


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PlanError(f"plan {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise PlanError(f"plan {path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise PlanError(f"plan {path}: expected a mapping with {', '.join(PLAN_KEYS)}")
    unknown = set(raw) - set(PLAN_KEYS)
    if unknown:
        raise PlanError(f"plan {path}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                        f"(known: {', '.join(PLAN_KEYS)})")
    base = path.resolve().parent
    models = []
    for m in _as_list(raw.get("models"), "models"):
        model = (base / str(m)).resolve()
        if not model.is_file():
            raise PlanError(f"plan: model {m}: no such file ({model})")
        models.append(model)
    boards = [_board_spec(b) for b in _as_list(raw.get("boards", ["qemu"]), "boards")]
    kernels = [str(k) for k in _as_list(raw.get("kernels", ["optimized"]), "kernels")]
    for k in kernels:
        if k not in KERNEL_SETS:
            raise PlanError(f"plan: kernels {k}: use {' or '.join(KERNEL_SETS)}")
    settings = _settings(_as_list(raw.get("settings", [{"name": "default"}]), "settings"), base)
    inputs = [_input_spec(i, base) for i in _as_list(raw.get("inputs", {"random": 1}), "inputs")]
    for what, items in (("models", models), ("boards", boards), ("kernels", kernels), ("inputs", inputs)):
        if len(set(map(str, items))) != len(items):
            raise PlanError(f"plan: '{what}' lists the same entry twice")
    return Plan(path, models, boards, kernels, settings, inputs, raw)


# ---- running cells ----

def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a run killed mid-write leaves the old file (or none)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _BudgetGate:
    """The budgets are process-wide settings of the compiler (passes/ram_search.py,
    passes/schedule.py): a cell that sets them runs alone, cells without them run side by
    side (one per board) and always see the defaults."""

    def __init__(self):
        self.cond = threading.Condition()
        self.running = 0
        self.exclusive = False

    @contextlib.contextmanager
    def cell(self, budgets: dict):
        from microtile.passes.ram_search import set_ram_budget
        from microtile.passes.schedule import set_flash_budget

        with self.cond:
            self.cond.wait_for(lambda: not self.exclusive and not (budgets and self.running))
            self.running += 1
            self.exclusive = bool(budgets)
            if budgets:
                set_ram_budget(budgets.get("ram_budget"))
                set_flash_budget(budgets.get("flash_budget"))
        try:
            yield
        finally:
            with self.cond:
                if budgets:
                    set_ram_budget(None)
                    set_flash_budget(None)
                self.exclusive = False if budgets else self.exclusive
                self.running -= 1
                self.cond.notify_all()


BUDGETS = _BudgetGate()


def run_cell(cell: Cell, probe: str | None = None, run: Callable[..., RunResult] = run_model,
             progress: Callable[[int, int], None] | None = None, port: str | None = None) -> dict:
    """One cell: its run's JSON, its analysis, status (done, failed, interrupted), exit code.
    A Ctrl-C / SIGTERM outside the run (during a build) propagates."""
    from microtile.measure.report import analyze

    inputs = dict(cell.inputs)
    kind = next(k for k in INPUT_KINDS if k in inputs)
    kwargs = {kind: inputs[kind], "seed": inputs.get("seed", DEFAULT_SEED)}
    if "limit" in inputs:
        kwargs["limit"] = inputs["limit"]
    record = {"format": CELL_FORMAT, "key": cell.key(), "cell": cell.to_json(), "probe": probe,
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    start = time.monotonic()
    options = dict(cell.options)
    if cell.board.power:
        options["power"] = cell.board.power
    try:
        model = cell.model
        if "approx" in options:  # the pruned network of `microtile approx`, as `run --approx` runs it
            from microtile.measure.approx_search import pruned_model_file
            from microtile.passes.approx import mark_pruned

            model, pruned = pruned_model_file(cell.model, options.pop("approx"))
            options["graph_hook"] = lambda g: mark_pruned(g, pruned)
        budgets = {key: options.pop(key) for key in BUDGET_KEYS if key in options}
        with BUDGETS.cell(budgets):
            result = run(model, cell.board.board, probe=probe, kernels=cell.kernels, progress=progress,
                         target_options={"emulate": cell.board.emulate, **({"port": port} if port else {})},
                         **kwargs, **options)
    except MicrotileError as exc:  # refused before running (bad model, missing tool, no board)
        record.update(status="failed", exit_code=exit_code(exc), error=str(exc), result=None, analysis=None)
    else:
        code = exit_code(result)
        status = "interrupted" if code >= 128 else "failed" if result.error else "done"
        record.update(status=status, exit_code=code, error=result.error, result=result.to_json())
        try:
            record["analysis"] = analyze(result)
        except (MicrotileError, OSError) as exc:
            record["analysis"] = {"error": str(exc)}
    record["seconds"] = round(time.monotonic() - start, 2)
    return record


class PlainProgress:
    """One line per cell, for logs and CI (no TTY)."""

    def __init__(self, total: int, out=None):
        self.total, self.out, self.n = total, out or sys.stdout, 0
        self.lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def started(self, cell: Cell, where: str | None) -> Callable[[int, int], None] | None:
        return None

    def ended(self, cell: Cell, record: dict, kept: bool = False) -> None:
        with self.lock:
            self.n += 1
            print(f"[{self.n}/{self.total}] {cell.label}: {summary_line(record, kept)}", file=self.out, flush=True)


class RichProgress(PlainProgress):
    """A bar over the cells and one over the current cell's samples (a TTY)."""

    def __init__(self, total: int, console):
        super().__init__(total)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.console = console
        self.progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.cells_task = self.progress.add_task("cells", total=total)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def started(self, cell: Cell, where: str | None):
        task = self.progress.add_task(f"  {cell.label}" + (f" [{where}]" if where else ""), total=None)
        self._tasks = getattr(self, "_tasks", {})
        self._tasks[cell] = task
        return lambda done, total: self.progress.update(task, completed=done, total=total)

    def ended(self, cell: Cell, record: dict, kept: bool = False) -> None:
        with self.lock:
            self.n += 1
            task = getattr(self, "_tasks", {}).pop(cell, None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.cells_task)
            style = {"done": "green", "failed": "red", "interrupted": "yellow"}.get(record["status"], "")
            self.console.print(f"[{self.n}/{self.total}] {cell.label}: [{style}]{summary_line(record, kept)}[/{style}]",
                               soft_wrap=True, highlight=False)


def summary_line(record: dict, kept: bool = False) -> str:
    prefix = "kept from an earlier run; " if kept else ""
    res = record.get("result")
    if record["status"] == "failed" and res is None:
        return f"{prefix}FAILED (exit {record['exit_code']}): {record['error']}"
    unit = res["counter_unit"]
    count = res["total"].get(unit)
    parts = [res["verdict"], f"{res['samples']} samples"]
    if count is not None:
        parts.append(f"{count:,} {unit}")
    if res["total"].get("est_cycles") is not None:
        parts.append(f"{res['total']['est_cycles']:,} est. cycles")
    if res.get("top1") is not None:
        parts.append(f"top-1 {100 * res['top1']:.1f}%")
    if record["status"] != "done":
        parts.append(f"exit {record['exit_code']}: {record['error']}")
    return prefix + ", ".join(parts) + f" ({record.get('seconds', 0):.1f} s)"


@dataclass
class LabOutcome:
    records: list[dict]  # one per plan cell that has a result, in plan order
    exit_code: int
    ran: int
    kept: int
    missing: int  # cells not run (interrupted before them)
    labgrid: dict | None = None  # the place the run held: name, acquired resources, what it used


def _slots_without_discovery(boards: list[BoardSpec]) -> dict[BoardSpec, list[None] | None]:
    """[None] (one emulator slot) for emulated board entries, None for real boards."""
    from microtile.targets.boards import load_board
    from microtile.targets.discovery import GENERIC_BOARD, is_probe_board

    return {spec: None if not spec.emulate and (spec.board == GENERIC_BOARD or is_probe_board(load_board(spec.board)))
            else [None] for spec in boards}


def _slots(boards: list[BoardSpec]) -> dict[BoardSpec, list[str | None]]:
    """Where each board entry's cells run: emulated boards on one slot (None); real boards
    on every attached board of that kind (their probe ids)."""
    from microtile.targets.farm import farm_boards

    return {spec: ids if ids is not None else [a.unique_id for a in farm_boards(spec.board, spec.probe)]
            for spec, ids in _slots_without_discovery(boards).items()}


def run_lab(plan: Plan, out: Path, progress: PlainProgress | None = None,
            run: Callable[..., RunResult] = run_model, slots: dict | None = None,
            port: str | None = None) -> LabOutcome:
    """Run every cell of the plan not already measured in OUT/cells, writing each one as it ends.
    ``slots`` maps a board entry to the probe ids its cells may use (default: every
    attached board of that kind); ``port`` is the VCP of a labgrid place's board."""
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    cells = plan.cells()
    keys = {c: c.key() for c in cells}
    progress = progress or PlainProgress(len(cells))
    records: dict[Cell, dict] = {}
    todo: list[Cell] = []
    for c in cells:  # resume: a finished cell of the same plan and inputs is kept
        path = cells_dir / f"{keys[c]}.json"
        try:
            rec = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            rec = None  # unreadable: measure it again
        if rec and rec.get("format") == CELL_FORMAT and rec.get("status") == "done":
            records[c] = rec
        else:
            todo.append(c)
    slots = _slots(plan.boards) if slots is None else slots
    stop = threading.Event()
    interrupted: list[int] = []
    ran = 0
    lock = threading.Lock()

    def finish(cell: Cell, rec: dict) -> None:
        nonlocal ran
        if rec["status"] == "interrupted":
            interrupted.append(rec["exit_code"])
            stop.set()
        if rec["status"] != "interrupted":  # an interrupted cell is measured again next time
            write_atomic(cells_dir / f"{keys[cell]}.json", json.dumps(rec, indent=1) + "\n")
        with lock:
            records[cell] = rec
            ran += 1
        progress.ended(cell, rec)

    def no_board(cell: Cell) -> dict:
        from microtile.measure.runner import EXIT_BAD_INPUT

        return {"format": CELL_FORMAT, "key": keys[cell], "cell": cell.to_json(), "status": "failed",
                "exit_code": EXIT_BAD_INPUT, "result": None, "analysis": None, "seconds": 0,
                "error": f"no attached board for --board {cell.board.board}"
                         + (f" --probe {cell.board.probe}" if cell.board.probe else "")
                         + "; plug one in (`microtile probes`) or use emulate: true"}

    with progress:
        for c in cells:
            if c in records:
                progress.ended(c, records[c], kept=True)
        # real boards: one thread per attached board, each pulling its kind's cells
        threads = []
        for spec, ids in slots.items():
            mine = [c for c in todo if c.board == spec]
            if ids == [None] or not mine:
                continue
            if not ids:
                for c in mine:
                    finish(c, no_board(c))
                continue
            work: queue.Queue = queue.Queue()
            for c in mine:
                work.put(c)
            for uid in ids:
                t = threading.Thread(target=_board_worker, args=(uid, work, stop, run, progress, finish, port),
                                     daemon=True, name=f"board-{uid}")
                t.start()
                threads.append(t)
        try:
            for c in todo:  # emulated cells, one at a time, in this (the signal-handling) thread
                if slots.get(c.board) != [None]:
                    continue
                if stop.is_set():
                    break
                finish(c, run_cell(c, run=run, progress=progress.started(c, None)))
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt as exc:  # between runs (a build): stop, keep what is measured
            interrupted.append(exit_code(exc))
            stop.set()
            for t in threads:
                t.join()
    ordered = [records[c] for c in cells if c in records]
    codes = [r["exit_code"] for r in ordered] + interrupted
    kept = len(ordered) - ran
    return LabOutcome(ordered, worst_exit_code(codes), ran, kept, len(cells) - len(ordered))


def _board_worker(uid: str, work: queue.Queue, stop: threading.Event, run, progress, finish,
                  port: str | None = None) -> None:
    """Run cells on one board while there are any, holding the board's lock."""
    from microtile.targets.farm import ProbeLock

    lock = ProbeLock(uid)
    if not lock.acquire():
        return  # another run holds this board: the other boards take the cells
    try:
        while not stop.is_set():
            try:
                cell = work.get_nowait()
            except queue.Empty:
                return
            finish(cell, run_cell(cell, probe=uid, run=run, progress=progress.started(cell, uid), port=port))
    finally:
        lock.release()


def lab_main(plan_path: str, out: str, console=None, labgrid: str | None = None) -> int:
    """`microtile lab PLAN --out DIR`: run, then write report.json / .csv / .html."""
    from microtile.measure.report import write_reports

    plan = load_plan(plan_path)
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ".write-test").write_text("")
        (out_dir / ".write-test").unlink()
    except OSError as exc:
        raise PlanError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable folder") from None
    total = len(plan.cells())
    tty = console is not None and console.is_terminal
    progress = RichProgress(total, console) if tty else PlainProgress(total)
    place_name = labgrid or os.environ.get("LG_PLACE")
    if place_name:
        from microtile.targets.labgrid_place import LabgridPlace

        with LabgridPlace(place_name) as place:
            hardware = [spec for spec, ids in _slots_without_discovery(plan.boards).items() if ids is None]
            target = place.target() if hardware else {"probe": None, "port": None, "power": None}
            slots = {spec: [None] if spec not in hardware else [target["probe"]] for spec in plan.boards}
            outcome = run_lab(plan, out_dir, progress, slots=slots, port=target["port"])
            outcome.labgrid = {"place": place_name, "resources": place.resources, "target": target}
    else:
        outcome = run_lab(plan, out_dir, progress)
    paths = write_reports(plan, outcome, out_dir)
    print(f"{outcome.ran} cell(s) run, {outcome.kept} kept from an earlier run"
          + (f", {outcome.missing} not run (interrupted; rerun the same command to resume)" if outcome.missing else "")
          + f"; wrote {', '.join(str(p) for p in paths)}", flush=True)
    return outcome.exit_code
