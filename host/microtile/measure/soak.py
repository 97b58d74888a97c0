"""Host memory soak: run one model for many inferences and report the host's memory
every 1,000 of them, to show that a long run does not grow.

    python -m microtile.measure.soak MODEL.tflite [--inferences 16000] [--board qemu]
                             [--labels y_labels.csv] [--every 1000] [--json OUT.json]

The inputs (seeded random ones, or the labelled set) are cycled until the count is
reached, so the inputs themselves take constant memory. Memory is the process's
resident set (RSS, from /proc), or with ``--tracemalloc`` the bytes Python has
allocated (exact, slower; the test suite's short sample uses it). The verdict compares
the last checkpoint with the first, which comes after the warm-up (TFLM's arena, QEMU's
socket, the allocator's first arenas)."""
from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from microtile.errors import MicrotileError
from microtile.measure.inputs import DEFAULT_SEED, Sample, load_samples
from microtile.measure.runner import RunResult, check_writable, exit_code, run_model, signals_as_interrupts
from microtile.importer.tflite_format import load_tflite

# Growth allowed between the first and the last checkpoint before it counts as growth:
# RSS moves in pages and allocator arenas; traced Python bytes are exact.
NOISE_BYTES = {"rss": 1 << 20, "tracemalloc": 16 << 10}
RANDOM_POOL = 100  # distinct random inputs cycled through


class Cycled(Sequence):
    """``count`` samples taken round-robin from ``pool``, without copying them."""

    def __init__(self, pool: list[Sample], count: int):
        self.pool, self.count = pool, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k):  # the runner only iterates; indexing serves Sequence
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.count))]
        if not -self.count <= k < self.count:
            raise IndexError(k)
        return self.pool[k % self.count % len(self.pool)]


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class SoakReport:
    model: str
    measure: str  # "rss" or "tracemalloc"
    inferences: int  # asked for
    checkpoints: list[dict] = field(default_factory=list)  # {"inferences", "bytes", "seconds"}
    result: RunResult | None = None

    @property
    def growth_bytes(self) -> int | None:
        if len(self.checkpoints) < 2:
            return None
        return self.checkpoints[-1]["bytes"] - self.checkpoints[0]["bytes"]

    @property
    def bytes_per_inference(self) -> float | None:
        """Least-squares slope of memory over inferences, first checkpoint to last."""
        pts = [(c["inferences"], c["bytes"]) for c in self.checkpoints]
        if len(pts) < 2:
            return None
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)

    @property
    def grew(self) -> bool | None:
        growth = self.growth_bytes
        return None if growth is None else growth > NOISE_BYTES[self.measure]

    def to_json(self) -> dict:
        run = self.result.to_json() if self.result is not None else None
        return {
            "model": self.model, "measure": self.measure, "inferences": self.inferences,
            "checkpoints": self.checkpoints, "growth_bytes": self.growth_bytes,
            "bytes_per_inference": self.bytes_per_inference, "noise_bytes": NOISE_BYTES[self.measure],
            "grew": self.grew,
            "run": None if run is None else {k: run[k] for k in (
                "board", "kernels", "verdict", "samples", "mismatches", "top1", "error", "provenance")},
        }


def soak(model: str | Path, inferences: int = 16000, board: str = "qemu", every: int = 1000,
         labels: str | None = None, measure: str = "rss", seed: int = DEFAULT_SEED,
         kernels: str = "optimized", on_checkpoint=None) -> SoakReport:
    if inferences < 1 or every < 1:
        raise MicrotileError("--inferences and --every must be at least 1")
    graph = load_tflite(model)
    if labels:
        pool = load_samples(graph, labels=labels)
    else:
        pool = load_samples(graph, random=min(RANDOM_POOL, inferences), seed=seed)
    report = SoakReport(graph.name, measure, inferences)
    start = time.monotonic()
    if measure == "tracemalloc":
        tracemalloc.start()

    def checkpoint(done: int, total: int) -> None:
        if done % every and done != total:
            return
        used = tracemalloc.get_traced_memory()[0] if measure == "tracemalloc" else rss_bytes()
        report.checkpoints.append({"inferences": done, "bytes": used,
                                   "seconds": round(time.monotonic() - start, 1)})
        if on_checkpoint:
            on_checkpoint(report)

    try:
        report.result = run_model(model, board, samples=Cycled(pool, inferences), progress=checkpoint,
                                  kernels=kernels, seed=None if labels else seed)
    finally:
        if measure == "tracemalloc":
            tracemalloc.stop()
    return report


def _print_row(report: SoakReport) -> None:
    if len(report.checkpoints) == 1:
        print(f"{'inferences':>10}  {'MiB':>9}  {'KiB since':>10}  {'seconds':>8}   "
              f"({report.measure}; the first row is the baseline)")
    c = report.checkpoints[-1]
    delta = c["bytes"] - report.checkpoints[0]["bytes"]
    print(f"{c['inferences']:>10,}  {c['bytes'] / 2**20:>9.2f}  {delta / 1024:>+10.1f}  {c['seconds']:>8.1f}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microtile.measure.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="int8 .tflite model")
    parser.add_argument("--inferences", type=int, default=16000)
    parser.add_argument("--board", default="qemu")
    parser.add_argument("--every", type=int, default=1000, help="inferences between memory readings")
    parser.add_argument("--labels", help="cycle through this energyrunner y_labels.csv instead of random inputs")
    parser.add_argument("--kernels", choices=("optimized", "reference"), default="optimized")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--tracemalloc", action="store_true",
                        help="measure Python's allocated bytes (exact, slower) instead of the RSS")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)
    measure = "tracemalloc" if args.tracemalloc else "rss"
    try:
        if args.json:
            check_writable(args.json)
        with signals_as_interrupts():
            report = soak(args.model, args.inferences, args.board, args.every, args.labels, measure,
                          args.seed, args.kernels, on_checkpoint=_print_row)
    except MicrotileError as exc:
        print(f"error: {exc}")
        return exit_code(exc)
    except KeyboardInterrupt as exc:
        print("interrupted")
        return exit_code(exc)
    result = report.result
    assert result is not None
    slope = report.bytes_per_inference
    print(f"{result.samples:,} inferences, {result.mismatch_count} mismatches"
          + (f", error: {result.error}" if result.error else ""))
    if report.grew is None:
        print("too few checkpoints to judge growth (raise --inferences or lower --every)")
    else:
        print(f"memory {'GREW' if report.grew else 'flat'}: {report.growth_bytes / 1024:+.1f} KiB from the first "
              f"checkpoint to the last ({slope:+.2f} B per inference; noise allowance "
              f"{NOISE_BYTES[measure] // 1024} KiB)")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    code = exit_code(result)
    return code if code else (1 if report.grew else 0)


if __name__ == "__main__":
    sys.exit(main())
