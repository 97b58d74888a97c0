"""Model-mutant fuzzer: corrupted copies of a model must be refused cleanly or run right.

    python -m microtile.check.fuzz_model [--mutants N] [--seed S] [--model PATH|ZOO_NAME] [--native-every K]

Each mutant is the model's bytes with one seeded change: a truncation, bit flips
inside the weight buffers, bit flips elsewhere (tables, shapes, quantisation), or one
index/shape/type field set to an edge value (-2, -1, one past the end, 2**31-1 ...).
Per mutant, a microtile worker process imports and compiles it (qemu board). It must
answer with a MicrotileError of one line, or accept the model; an accepted model runs
on the numpy reference (and every K-th one on the native C build) while a separate
TFLM worker process runs the same inputs. Workers are processes so that a signal or a
hang is seen and counted instead of ending the run.

Outcomes: ``rejected:<ErrorClass>``, ``match``, and the failures: ``mismatch`` (TFLM
runs the mutant and an output differs), ``crash`` (a traceback or signal in microtile),
``hang``, ``bad_message`` (an error that is not one line), ``tflm_crash`` / ``tflm_hang``
(microtile accepted a model on which TFLM dies). ``tflm_error``, TFLM refusing with a
clean error a model microtile accepted, is counted apart: it is not a wrong answer,
but the run would then stop in the oracle.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FAILURES = ("mismatch", "crash", "hang", "bad_message", "tflm_crash", "tflm_hang")
KINDS = ("truncate", "flip_weights", "flip_other", "field")
EDGE_VALUES = (-2, -1, 0, 1, 2, 3, 255, 65535, (1 << 31) - 1, -(1 << 31))


# ---------------------------------------------------------------- mutants


@dataclass
class Field:
    """An integer field of the flatbuffer: where it is and how wide."""
    pos: int
    size: int  # bytes: 1 (tensor type) or 4
    what: str


def _vector(table, slot: int) -> tuple[int, int]:
    """(first element position, length) of a vector field, (0, 0) when absent."""
    o = table._tab.Offset(slot)
    if not o:
        return 0, 0
    return table._tab.Vector(o), table._tab.VectorLen(o)


def _scalar(table, slot: int) -> int:
    o = table._tab.Offset(slot)
    return table._tab.Pos + o if o else 0


def model_layout(data: bytes) -> tuple[list[tuple[int, int]], list[Field]]:
    """The weight byte ranges and the index/shape/type fields of a well-formed model."""
    import tflite

    model = tflite.Model.GetRootAs(data, 0)
    weights = []
    for b in range(model.BuffersLength()):
        start, n = _vector(model.Buffers(b), 4)  # Buffer.data
        if n:
            weights.append((start, start + n))
    fields: list[Field] = []
    sub = model.Subgraphs(0)
    for slot, what in ((6, "graph input"), (8, "graph output")):  # SubGraph.inputs / outputs
        start, n = _vector(sub, slot)
        fields += [Field(start + 4 * k, 4, what) for k in range(n)]
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        for slot, what in ((6, "input"), (8, "output")):  # Operator.inputs / outputs
            start, n = _vector(op, slot)
            fields += [Field(start + 4 * k, 4, f"operator {i} {what}") for k in range(n)]
        if _scalar(op, 4):  # Operator.opcode_index (absent when 0, the default)
            fields.append(Field(_scalar(op, 4), 4, f"operator {i} opcode index"))
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        start, n = _vector(t, 4)  # Tensor.shape
        fields += [Field(start + 4 * k, 4, f"tensor {i} shape") for k in range(n)]
        if _scalar(t, 8):
            fields.append(Field(_scalar(t, 8), 4, f"tensor {i} buffer"))
        if _scalar(t, 6):
            fields.append(Field(_scalar(t, 6), 1, f"tensor {i} type"))
    return weights, fields


def make_mutant(data: bytes, layout, rng: np.random.Generator, kind: str) -> tuple[bytes, str]:
    """One mutant of ``data`` and a description of the change."""
    weights, fields = layout
    out = bytearray(data)
    if kind == "truncate":
        n = int(rng.integers(0, len(data)))
        return bytes(out[:n]), f"truncated to {n} of {len(data)} bytes"
    if kind == "field" and fields:
        f = fields[int(rng.integers(len(fields)))]
        value = int(EDGE_VALUES[int(rng.integers(len(EDGE_VALUES)))]) if rng.random() < 0.7 \
            else int(rng.integers(-4, 64))
        if f.size == 1:
            value &= 0xFF
            out[f.pos] = value
        else:
            out[f.pos:f.pos + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        return bytes(out), f"{f.what} at byte {f.pos} set to {value}"
    in_weights = kind == "flip_weights" and weights
    flips = []
    for _ in range(int(rng.integers(1, 4))):
        if in_weights:
            lo, hi = weights[int(rng.integers(len(weights)))]
            pos = int(rng.integers(lo, hi))
        else:
            pos = int(rng.integers(8, len(data)))  # keep the 'TFL3' identifier: past the first check
            while any(lo <= pos < hi for lo, hi in weights):
                pos = int(rng.integers(8, len(data)))
        bit = int(rng.integers(8))
        out[pos] ^= 1 << bit
        flips.append(f"{pos}.{bit}")
    where = "weights" if in_weights else "outside the weights"
    return bytes(out), f"bit flips {where} at {', '.join(flips)}"


# ---------------------------------------------------------------- workers


def _inputs_for(graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for i in graph.inputs:
        t = graph.tensor(i)
        if t.dtype == "float32":
            arrays.append((rng.standard_normal(t.shape) * 2.0).astype(np.float32))
        else:
            info = np.iinfo(t.dtype)
            arrays.append(rng.integers(info.min, info.max + 1, size=t.shape).astype(t.dtype))
    return arrays


def _microtile_job(job: dict) -> dict:
    """Import + compile the mutant; if accepted, run the reference (and native) build."""
    from microtile.targets.boards import load_board
    from microtile.codegen.model_source import compile_model
    from microtile.errors import MicrotileError
    from microtile.check.reference import run_reference
    from microtile.importer.tflite_format import load_tflite

    try:
        graph = load_tflite(job["model"])
        compile_model(graph, "optimized", load_board("qemu"))
    except MicrotileError as exc:
        return {"outcome": "rejected", "error": type(exc).__name__, "message": str(exc)}
    inputs = _inputs_for(graph, job["seed"])
    outputs = {"reference": run_reference(graph, inputs)}
    if job["native"]:
        from microtile.build.native import NativeModel

        outputs["native"] = NativeModel.build(graph, "optimized").run(inputs)
    arrays = {f"in{k}": x for k, x in enumerate(inputs)}
    for build, outs in outputs.items():
        arrays.update({f"{build}{k}": y for k, y in enumerate(outs)})
    np.savez(job["result"], **arrays)
    return {"outcome": "accepted", "inputs": len(inputs), "builds": list(outputs)}


def _tflm_job(job: dict) -> dict:
    from microtile.check.oracle import TflmOracle

    with np.load(job["arrays"]) as f:
        inputs = [f[f"in{k}"] for k in range(job["inputs"])]
    try:
        outputs = TflmOracle(job["model"])(inputs)
    except Exception as exc:  # TFLM refusing the model is an answer, not a crash of ours
        return {"outcome": "tflm_error", "message": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}
    np.savez(job["result"], **{f"out{k}": y for k, y in enumerate(outputs)})
    return {"outcome": "ran", "outputs": len(outputs)}


def worker_main(kind: str) -> int:
    """Serve jobs: one JSON line in on stdin, one JSON line out. Native code (TFLM, the
    native build) may print; it goes to stderr so the reply channel stays clean."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job_fn = _microtile_job if kind == "microtile" else _tflm_job
    for line in sys.stdin:
        job = json.loads(line)
        try:
            answer = job_fn(job)
        except Exception:  # any Python error here is a microtile bug: report it whole
            answer = {"outcome": "crash", "message": traceback.format_exc()[-2000:]}
        reply.write(json.dumps(answer) + "\n")
    return 0


class Worker:
    """A worker process, restarted after it dies or hangs."""

    def __init__(self, kind: str, log: Path):
        self.kind = kind
        self.log = log
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.log_file = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "microtile.check.fuzz_model", "--worker", self.kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log_file,
                                     start_new_session=True, text=True)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the worker and its children
                except ProcessLookupError:
                    pass
            self.proc.wait()
            self.log_file.close()
            self.proc = None

    def ask(self, job: dict, timeout: float) -> dict:
        """The worker's answer, or {"outcome": "signal"/"timeout"}."""
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self._start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        if not ready:
            self.stop()
            return {"outcome": "timeout", "message": f"no answer in {timeout:g} s"}
        code = self.proc.wait()
        self.stop()
        return {"outcome": "signal", "message": f"worker died with exit code {code}"
                + (f" ({signal.Signals(-code).name})" if code < 0 else "")}


# ---------------------------------------------------------------- one mutant


def _compare(mt_file: Path, tflm_file: Path, builds: list[str]) -> str | None:
    """None when every build's outputs equal TFLM's, else what differs."""
    with np.load(mt_file) as ours, np.load(tflm_file) as theirs:
        n = len(theirs.files)
        for build in builds:
            got = [ours[f"{build}{k}"] for k in range(n) if f"{build}{k}" in ours.files]
            if len(got) != n:
                return f"{build}: {len(got)} outputs, TFLM {n}"
            for k in range(n):
                a, b = got[k], theirs[f"out{k}"]
                if a.shape != b.shape and a.size == b.size:
                    a = a.reshape(b.shape)
                if a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                    return f"{build} output {k} differs from TFLM"
    return None


def fuzz_one(mutant: bytes, workdir: Path, workers: dict[str, Worker], seed: int, native: bool,
             timeout: float) -> tuple[str, str]:
    """(outcome, detail) of one mutant."""
    model = workdir / "mutant.tflite"
    model.write_bytes(mutant)
    mt_file, tflm_file = workdir / "microtile.npz", workdir / "tflm.npz"
    for f in (mt_file, tflm_file):
        f.unlink(missing_ok=True)
    answer = workers["microtile"].ask({"model": str(model), "seed": seed, "native": native,
                                       "result": str(mt_file)}, timeout * (4 if native else 1))
    outcome = answer["outcome"]
    if outcome == "rejected":
        message = answer["message"]
        if "\n" in message or not message.strip():
            return "bad_message", f"{answer['error']}: {message!r}"
        return f"rejected:{answer['error']}", message
    if outcome in ("signal", "crash"):
        return "crash", answer["message"]
    if outcome == "timeout":
        return "hang", answer["message"]
    tflm = workers["tflm"].ask({"model": str(model), "arrays": str(mt_file), "inputs": answer["inputs"],
                                "result": str(tflm_file)}, timeout)
    if tflm["outcome"] == "tflm_error":
        return "tflm_error", tflm["message"]
    if tflm["outcome"] in ("signal", "crash"):
        return "tflm_crash", tflm["message"]
    if tflm["outcome"] == "timeout":
        return "tflm_hang", tflm["message"]
    differs = _compare(mt_file, tflm_file, answer["builds"])
    return ("mismatch", differs) if differs else ("match", ", ".join(answer["builds"]))


def load_base_model(spec: str) -> tuple[bytes, str]:
    """A .tflite path, or the name of a zoo model."""
    from microtile.errors import MicrotileError

    path = Path(spec)
    if path.is_file():
        from microtile.importer.tflite_format import load_tflite

        data = path.read_bytes()
        load_tflite(data)  # the base model must be valid: a bad one is refused here, in one line
        return data, path.stem
    try:
        from microtile_models.build import zoo_model_bytes
    except ImportError:
        raise MicrotileError(f"{spec}: no such file (and the model zoo package is not installed)") from None
    return zoo_model_bytes(spec), spec


def run_fuzz(data: bytes, mutants: int, seed: int, native_every: int = 0, timeout: float = 30.0,
             report=None) -> tuple[Counter, list[tuple[int, str, str, str]]]:
    """Fuzz ``mutants`` mutants of ``data``; returns (counts per outcome, failures as
    (mutant number, mutation, outcome, detail))."""
    layout = model_layout(data)
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    failures = []
    accepted = 0
    with tempfile.TemporaryDirectory(prefix="microtile-fuzz-") as tmp:
        workdir = Path(tmp)
        workers = {k: Worker(k, workdir / f"{k}.log") for k in ("microtile", "tflm")}
        try:
            for n in range(mutants):
                kind = KINDS[int(rng.integers(len(KINDS)))]
                mutant, change = make_mutant(data, layout, rng, kind)
                native = bool(native_every) and accepted % native_every == 0
                outcome, detail = fuzz_one(mutant, workdir, workers, seed * 100003 + n, native, timeout)
                accepted += outcome in ("match", "mismatch", "tflm_error", "tflm_crash", "tflm_hang")
                counts[outcome] += 1
                if outcome in FAILURES:
                    failures.append((n, change, outcome, detail))
                if report:
                    report(n, kind, change, outcome, detail)
        finally:
            for w in workers.values():
                w.stop()
    return counts, failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m microtile.check.fuzz_model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=500, help="number of mutants (default 500)")
    ap.add_argument("--seed", type=int, default=0, help="mutation seed (default 0)")
    ap.add_argument("--model", default="ds_cnn_kws", help="a .tflite file or a zoo model name (default ds_cnn_kws)")
    ap.add_argument("--native-every", type=int, default=5, metavar="K",
                    help="also run every K-th accepted mutant on the native C build (default 5; 0: never)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per mutant and worker (default 30)")
    ap.add_argument("--verbose", action="store_true", help="print every mutant's outcome")
    ap.add_argument("--worker", choices=("microtile", "tflm"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.mutants < 1 or args.native_every < 0 or args.timeout <= 0:
        print("error: --mutants must be >= 1, --native-every >= 0 and --timeout > 0", file=sys.stderr)
        return 2
    from microtile.errors import MicrotileError

    try:
        data, name = load_base_model(args.model)
    except MicrotileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def report(n, kind, change, outcome, detail):
        if args.verbose or outcome in FAILURES or outcome == "tflm_error":
            print(f"#{n} {change}: {outcome}: {detail.splitlines()[-1] if detail else ''}", flush=True)

    start = time.monotonic()
    counts, failures = run_fuzz(data, args.mutants, args.seed, args.native_every, args.timeout, report)
    print(f"{name}: {args.mutants} mutants (seed {args.seed}) in {time.monotonic() - start:.0f} s")
    for outcome, n in sorted(counts.items(), key=lambda kv: (kv[0] in FAILURES, kv[0])):
        print(f"  {outcome:32s} {n}")
    print(f"failures: {len(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
