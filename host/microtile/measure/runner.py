"""`microtile run`: compile, build, run every input on the target, check each output
against TFLM bit for bit, and collect per-layer counts, memory and accuracy.

Results accumulate sample by sample, so a target that fails half-way still leaves
everything measured until then in the report (``RunResult.error`` says what broke).
Only running sums are kept per layer, so memory stays flat however many inputs run.
"""
from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from microtile.importer.ir import Graph
from microtile.targets.boards import Board, load_board
from microtile.build.firmware import Firmware, build_within_rom_rule
from microtile.codegen.model_source import CompiledModel, compile_model
from microtile.errors import DeviceFaultError, LinkError, MicrotileError, ToolMissingError
from microtile.measure.inputs import DEFAULT_SEED, Sample, load_samples
from microtile.check.oracle import TflmOracle
from microtile.measure.ram_bench import ram_report, tflm_arena_bytes
from microtile.measure.provenance import file_sha256, provenance
from microtile.importer.tflite_format import load_tflite
from microtile.measure.timing import TimingTarget, estimate, timing_model_info
from microtile.measure.power import check_power_run, finish_energy, open_power
from microtile.measure.power.estimate import add_estimated_energy

# Exit codes of `microtile run` and `bench` (README, "The command line").
EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT, EXIT_TARGET_FAILED = 0, 1, 2, 3
MAX_MISMATCH_NAMES = 100  # sample names kept for the report; the count is exact


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so the same cleanup runs (QEMU stopped,
    what was measured written); the exit code is 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Turn the first SIGTERM / SIGHUP into an Interrupted exception in the main thread;
    later ones are ignored so the cleanup they interrupt can finish."""
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def signal_of(exc: BaseException) -> int:
    return getattr(exc, "signum", signal.SIGINT)


@dataclass
class RunResult:
    model: str
    board: Board
    counter_unit: str  # "instructions" (emulator), "cycles" (board) or "none" (no counter)
    compiled: CompiledModel
    firmware: Firmware
    count_sums: list[int] = field(default_factory=list)  # per layer, summed over the samples
    stack_bytes: int = 0
    samples: int = 0
    mismatch_count: int = 0
    mismatches: list[str] = field(default_factory=list)  # the first MAX_MISMATCH_NAMES samples that differ
    correct: int = 0  # Top-1 hits (labelled samples)
    tflm_correct: int = 0
    labelled: int = 0
    error: str | None = None
    error_code: int = EXIT_OK  # exit code of the error (EXIT_TARGET_FAILED, ...); 128+N for a signal
    clock_hz: int | None = None  # the clock the target reports (a board may fall back to its reset clock)
    port_status: str = "ok"  # the board port's own report (clock fallback, missing counter, ...)
    provenance: dict = field(default_factory=dict)  # what made the result (provenance.provenance)
    # the timing model (timing.py): estimated cycles per layer, summed over est_samples
    est_sums: list[int] = field(default_factory=list)
    est_samples: int = 0
    timing_model: dict | None = None  # name, version, board, core, clock_hz, flash_wait_states
    timing_error: str | None = None  # why there is no estimate (the run itself may be fine)
    timing_target: bool = False  # the timing model ran every sample (a board without a QEMU machine)
    energy: dict | None = None  # measured through a power probe (measure/power, README "Energy")
    tflm_arena_bytes: int | None = None  # TFLM's arena head for the same model (measure/ram_bench.py)

    @property
    def top1(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def tflm_top1(self) -> float | None:
        return self.tflm_correct / self.labelled if self.labelled else None

    @property
    def counted(self) -> bool:
        """Counts were measured: a counter on the target and at least one sample."""
        return self.samples > 0 and self.counter_unit in ("instructions", "cycles")

    def add_counts(self, layers: Sequence[int]) -> None:
        if not self.count_sums:
            self.count_sums = [0] * len(layers)
        for i, c in enumerate(layers):
            self.count_sums[i] += c

    def add_estimate(self, timing) -> None:
        """One sample's estimated cycles from the timing model (timing.TimingResult)."""
        if not self.est_sums:
            self.est_sums = [0] * len(timing.layers)
        for i, t in enumerate(timing.layers):
            self.est_sums[i] += t.cycles
        self.est_samples += 1
        self.timing_model = timing_model_info(self.board)

    def mean_estimates(self) -> list[int | None]:
        """Mean estimated cycles per layer; None for each layer without an estimate."""
        if not self.est_samples:
            return [None] * len(self.compiled.device_ops)
        return [int(round(s / self.est_samples)) for s in self.est_sums]

    def mean_counts(self) -> list[int | None]:
        """Mean count per layer; None (not 0) for each layer when nothing was measured."""
        if not self.counted or not self.count_sums:
            return [None] * len(self.compiled.device_ops)
        return [int(round(s / self.samples)) for s in self.count_sums]

    @property
    def failed(self) -> bool:
        return self.error is not None

    def fail(self, exc: MicrotileError | KeyboardInterrupt, planned: int | None = None) -> None:
        """Record why the run ended early (what was measured before stays)."""
        if isinstance(exc, KeyboardInterrupt):
            signum = signal_of(exc)
            how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self.error = f"interrupted ({how}) after {self.samples} of {planned} samples"
            self.error_code = 128 + signum
            return
        ops = self.compiled.device_ops
        if isinstance(exc, DeviceFaultError) and exc.layer is not None and 0 <= exc.layer < len(ops):
            exc.with_op(ops[exc.layer].opcode)  # the device knows the layer; the host its operator
        self.error = str(exc)
        self.error_code = EXIT_BAD_INPUT if isinstance(exc, ToolMissingError) else EXIT_TARGET_FAILED

    def to_json(self) -> dict:
        counts = self.mean_counts()
        estimates = self.mean_estimates()
        macs = self.compiled.macs
        unit = self.counter_unit
        layers = [
            {"index": op.index, "op": op.opcode, "macs": m, unit: c, "est_cycles": e}
            for op, m, c, e in zip(self.compiled.device_ops, macs, counts, estimates)
        ]
        measured = self.samples > 0
        arena = self.compiled.plan.arena_size
        static = self.firmware.sizes.ram_static_bytes
        data = {
            "model": self.model,
            "board": self.board.name,
            "kernels": self.compiled.kernels,
            "verdict": "failed" if self.failed else "mismatch" if self.mismatch_count else "bit-exact",
            "exit_code": exit_code(self),
            "samples": self.samples,
            "mismatches": self.mismatch_count,
            "mismatched_samples": self.mismatches,
            "top1": self.top1,
            "tflm_top1": self.tflm_top1,
            "counter_unit": unit,
            "layers": layers,
            "total": {"macs": sum(macs), unit: sum(counts) if None not in counts else None,
                      "est_cycles": sum(estimates) if None not in estimates else None},
            "ram": {
                "arena_bytes": arena,
                "stack_bytes": self.stack_bytes if measured else None,
                "static_bytes": static,
                "stack_reserved_bytes": self.firmware.sizes.stack_reserved_bytes,
                # what the model needs: static data (arena included) + the stack it used
                "total_bytes": static + self.stack_bytes if measured else None,
                **ram_report(self.compiled, self.tflm_arena_bytes),  # peak RAM vs bound and TFLM
            },
            "rom": {"total_bytes": self.firmware.sizes.rom_bytes},
            "error": self.error,
            "port_status": self.port_status,
            "timing_model": {**(self.timing_model or timing_model_info(self.board)), "samples": self.est_samples,
                             "target": self.timing_target, "error": self.timing_error},
            "provenance": self.provenance,
            "energy": self.energy,
        }
        add_estimated_energy(data, self.board)
        if unit == "cycles":  # also as time, at the clock the firmware reported
            clock = self.clock_hz or self.board.clock_hz
            data["clock_hz"] = clock
            for entry in (*layers, data["total"]):
                c = entry["cycles"]
                entry["time_us"] = None if c is None else round(c * 1e6 / clock, 3)
        if self.board.clock.source != "none":  # estimated time at the board's clock (not QEMU's)
            clock = data["timing_model"]["clock_hz"]
            for entry in (*layers, data["total"]):
                e = entry["est_cycles"]
                entry["est_time_us"] = None if e is None else round(e * 1e6 / clock, 3)
        return data


def exit_code(outcome: RunResult | BaseException) -> int:
    """The exit code of `microtile run` and `bench` for a result or an exception:
    0 every output matches TFLM, 1 a mismatch, 2 bad input / missing tool, 3 the target
    failed (no answer, device fault), 128+N killed by signal N."""
    if isinstance(outcome, KeyboardInterrupt):
        return 128 + signal_of(outcome)
    if isinstance(outcome, BaseException):
        return EXIT_TARGET_FAILED if isinstance(outcome, LinkError) else EXIT_BAD_INPUT
    if outcome.error is not None:
        return outcome.error_code
    return EXIT_MISMATCH if outcome.mismatch_count else EXIT_OK


def worst_exit_code(codes: Sequence[int]) -> int:
    """One code for several runs (bench): a signal, then a failure, bad input, a mismatch."""
    return max(codes, key=lambda c: (c >= 128, c == EXIT_TARGET_FAILED, c == EXIT_BAD_INPUT, c), default=EXIT_OK)


def top1_of(output: np.ndarray) -> int:
    return int(np.argmax(np.asarray(output).reshape(-1)))


def run_model(model_path: str | Path, board_name: str = "qemu", inputs: str | None = None,
              random: int | None = None, labels: str | None = None, limit: int | None = None,
              progress: Callable[[int, int], None] | None = None, probe: str | None = None,
              kernels: str = "optimized", os_name: str = "baremetal",
              target_options: dict | None = None, seed: int | None = DEFAULT_SEED,
              samples: Sequence[Sample] | None = None,
              graph_hook: Callable | None = None, power: str | None = None,
              rom_reference: Graph | None = None) -> RunResult:
    """Run a model on a target. ``target_options`` go to ``targets.open_target``
    (``emulate``, ``port``, ``baudrate``); ``os_name`` is "baremetal" or "zephyr".
    ``samples`` replaces inputs/random/labels with a ready sequence (the soak's); then
    ``seed`` is only recorded, None when the samples are not random. ``graph_hook``
    transforms the imported graph before it is compiled (TFLM still runs the file);
    the ROM rule then holds it to the imported graph's reference build, or to
    ``rom_reference``'s (approx: the user's model, of which the file is a pruned copy)."""
    from microtile.targets import check_target_tools, open_target

    model_path = Path(model_path)
    graph = load_tflite(model_path)
    if rom_reference is None:
        rom_reference = graph
    if graph_hook is not None:  # e.g. approx: mark the pruned layers (passes/approx.py)
        graph = graph_hook(graph)
    board = load_board(board_name)
    compiled = compile_model(graph, kernels, board)
    if samples is None:
        samples = load_samples(graph, inputs, random, labels, limit,
                               seed=DEFAULT_SEED if seed is None else seed)
    options = dict(target_options or {})
    # a board no QEMU machine models runs, emulated, on the timing model alone
    on_timing_model = bool(options.get("emulate")) and board.emulator is None
    power_probe = check_power_run(power, board, bool(options.get("emulate")), len(samples)) if power else None
    if not on_timing_model:
        check_target_tools(board, **options)  # before a build that could not run
    if os_name == "zephyr":
        from microtile.build.zephyr import build_zephyr

        firmware = build_zephyr(compiled, board)
    elif os_name == "baremetal":
        compiled, firmware = build_within_rom_rule(graph, compiled, board, rom_reference)
    else:
        raise MicrotileError(f"unknown --os {os_name!r}: baremetal or zephyr")
    oracle = TflmOracle(model_path)

    result = RunResult(graph.name, board, board.counter_unit, compiled, firmware, timing_target=on_timing_model)
    result.tflm_arena_bytes = tflm_arena_bytes(oracle.interpreter)
    result.provenance = provenance(board=board.name, build_id=firmware.build_id,
                                   model_sha256=file_sha256(model_path),
                                   seed=seed if not (inputs or labels) else None, kernels=kernels)
    if power_probe is not None:
        open_power(power_probe)  # missing: exit 2; not answering: exit 3 (before the board is touched)
    started = False
    try:
        opened = TimingTarget(board, firmware) if on_timing_model else \
            open_target(board, firmware, probe=probe, **options)
        with opened as target:
            link = target.link
            info = link.info()
            if info.model_hash != int(compiled.hash[:8], 16):
                raise LinkError(
                    f"the target runs model hash {info.model_hash:08x}, not {compiled.hash[:8]}: stale image"
                )
            result.counter_unit = info.counter_unit
            result.clock_hz = info.clock_hz
            result.port_status = getattr(info, "port_status_text", "") or "ok"
            if power_probe is not None:
                power_probe.start()
                started = True
            for k, sample in enumerate(samples):
                for i, arr in enumerate(compiled.to_device(sample.arrays)):
                    link.write_input(i, np.ascontiguousarray(arr).tobytes())
                link.invoke(1)
                device_outs = []
                for i, t_index in enumerate(compiled.device_outputs):
                    t = graph.tensor(t_index)
                    device_outs.append(np.frombuffer(link.read_output(i), dtype=t.dtype).reshape(t.shape))
                counters = link.read_counters()
                outputs = compiled.from_device(device_outs)
                expected = oracle(sample.arrays)

                result.samples += 1
                result.add_counts(counters.layers)
                if on_timing_model:
                    result.add_estimate(link.last)
                result.stack_bytes = max(result.stack_bytes, counters.stack_bytes)
                if any(not np.array_equal(a, b) for a, b in zip(outputs, expected)):
                    result.mismatch_count += 1
                    if len(result.mismatches) < MAX_MISMATCH_NAMES:
                        result.mismatches.append(sample.name)
                if sample.label is not None:
                    result.labelled += 1
                    result.correct += top1_of(outputs[0]) == sample.label
                    result.tflm_correct += top1_of(expected[0]) == sample.label
                if progress:
                    progress(k + 1, len(samples))
    except (MicrotileError, KeyboardInterrupt) as exc:  # link failures included: keep what was measured
        result.fail(exc, len(samples))
    if power_probe is not None:
        finish_energy(result, power_probe, started)
    if not on_timing_model and result.samples:
        estimate_first_sample(result, samples[0])
    return result


def estimate_first_sample(result: RunResult, sample: Sample) -> None:
    """Estimated cycles of the first sample on the timing model (the kernels' control
    flow does not depend on the data, so one sample stands for all; docs/timing.md).
    A failure to estimate is recorded, never the run's failure."""
    compiled = result.compiled
    try:
        inputs = [np.ascontiguousarray(a).tobytes() for a in compiled.to_device(sample.arrays)]
        result.add_estimate(estimate(result.firmware.elf, result.board, inputs))
    except MicrotileError as exc:
        result.timing_error = str(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM while estimating: what was measured stays
        result.timing_error = "interrupted"
        result.fail(exc, result.samples)


def check_writable(path: str | Path, flag: str = "--json") -> None:
    """Refuse an output file that cannot be written, before a run is spent on it."""
    path = Path(path)
    if path.is_dir():
        raise MicrotileError(f"{flag} {path}: is a directory; give a file name such as {path / 'result.json'}")
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise MicrotileError(f"{flag} {path}: cannot write it ({exc.strerror}); choose a writable path") from None
    if not existed:
        path.unlink()


def write_json(result: RunResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result.to_json(), indent=2) + "\n")
