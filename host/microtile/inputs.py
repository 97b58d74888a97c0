"""Test inputs for a model: a directory of raw .bin / .npy files, one .npy file,
seeded random tensors, or an energyrunner-style ``y_labels.csv`` (file, classes,
label) whose raw .bin inputs sit beside it."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MicrotileError
from .ir import Graph, Tensor


@dataclass
class Sample:
    name: str
    arrays: list[np.ndarray]  # one per model input
    label: int | None = None


def _input_tensor(graph: Graph) -> Tensor:
    if len(graph.inputs) != 1:
        raise MicrotileError(
            f"model {graph.name} has {len(graph.inputs)} inputs; file inputs are supported for "
            "single-input models (use --random N for the others)"
        )
    return graph.tensor(graph.inputs[0])


def _from_bytes(t: Tensor, raw: bytes, source: str) -> np.ndarray:
    if len(raw) != t.nbytes:
        raise MicrotileError(
            f"{source}: {len(raw)} bytes, but input {t.name!r} {t.shape} {t.dtype} needs {t.nbytes} bytes"
        )
    return np.frombuffer(raw, dtype=t.dtype).reshape(t.shape).copy()


def _from_npy(t: Tensor, path: Path) -> list[np.ndarray]:
    arr = np.load(path)
    if arr.dtype != np.dtype(t.dtype):
        raise MicrotileError(f"{path}: dtype {arr.dtype}, but input {t.name!r} is {t.dtype}")
    size = int(np.prod(t.shape))
    if arr.size == size:
        return [arr.reshape(t.shape)]
    if arr.size % size == 0 and arr.shape[0] * size == arr.size:
        return [a.reshape(t.shape) for a in arr]  # a stack of samples along axis 0
    raise MicrotileError(f"{path}: shape {arr.shape} is neither {t.shape} nor N x {t.shape}")


def load_labels(csv_path: Path) -> list[tuple[Path, int]]:
    rows = []
    with open(csv_path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip():
                continue
            if len(row) < 3:
                raise MicrotileError(f"{csv_path}:{n}: expected 'file, classes, label', got {row}")
            try:
                rows.append((csv_path.parent / row[0].strip(), int(row[2])))
            except ValueError:
                raise MicrotileError(f"{csv_path}:{n}: label {row[2]!r} is not an integer") from None
    return rows


def _float_input_range(graph: Graph, index: int) -> tuple[float, float]:
    """The float range the QUANTIZE reading a float input can represent (else [-1, 1])."""
    for op in graph.operators:
        if op.opcode == "QUANTIZE" and op.inputs[0] == index:
            out = graph.tensor(op.outputs[0])
            info = np.iinfo(out.dtype)
            return (info.min - out.zero_point) * out.scale, (info.max - out.zero_point) * out.scale
    return -1.0, 1.0


def load_samples(graph: Graph, inputs: str | None = None, random: int | None = None,
                 labels: str | None = None, limit: int | None = None, seed: int = 0) -> list[Sample]:
    samples: list[Sample] = []
    if labels:
        t = _input_tensor(graph)
        for path, label in load_labels(Path(labels))[:limit]:
            if not path.is_file():
                raise MicrotileError(f"{labels} names {path.name}, which is not beside it")
            samples.append(Sample(path.name, [_from_bytes(t, path.read_bytes(), str(path))], label))
    elif inputs:
        t = _input_tensor(graph)
        path = Path(inputs)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".bin", ".npy"))
            if not files:
                raise MicrotileError(f"{path}: no .bin or .npy inputs in this directory")
            for f in files:
                arrays = _from_npy(t, f) if f.suffix == ".npy" else [_from_bytes(t, f.read_bytes(), str(f))]
                samples += [Sample(f.name if len(arrays) == 1 else f"{f.name}[{k}]", [a]) for k, a in enumerate(arrays)]
        elif path.suffix == ".npy" and path.is_file():
            samples = [Sample(f"{path.name}[{k}]", [a]) for k, a in enumerate(_from_npy(t, path))]
        elif path.is_file():
            samples = [Sample(path.name, [_from_bytes(t, path.read_bytes(), str(path))])]
        else:
            raise MicrotileError(f"{path}: no such input file or directory")
        samples = samples[:limit]
    else:
        rng = np.random.default_rng(seed)
        for k in range(random if random is not None else 1):
            arrays = []
            for i in graph.inputs:
                t = graph.tensor(i)
                if t.dtype == "float32":
                    lo, hi = _float_input_range(graph, i)
                    arrays.append(rng.uniform(lo, hi, t.shape).astype(np.float32))
                else:
                    info = np.iinfo(t.dtype)
                    arrays.append(rng.integers(info.min, info.max, t.shape, endpoint=True).astype(t.dtype))
            samples.append(Sample(f"random[{k}]", arrays))
    if not samples:
        raise MicrotileError("no inputs to run (check --inputs / --labels / --limit)")
    return samples
