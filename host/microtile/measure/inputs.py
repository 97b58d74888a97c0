"""Test inputs for a model: a directory of raw .bin / .npy files, one .npy file,
seeded random tensors, or an energyrunner-style ``y_labels.csv`` (file, classes,
label) whose raw .bin inputs sit beside it."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from microtile.errors import MicrotileError
from microtile.importer.ir import Graph, Tensor

DEFAULT_SEED = 0  # random inputs are reproducible: the same seed gives the same tensors


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


def _unreadable(path: Path, exc: OSError) -> MicrotileError:
    return MicrotileError(f"{path}: cannot read it ({exc.strerror}); check the file and its permissions")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _from_npy(t: Tensor, path: Path) -> list[np.ndarray]:
    try:
        arr = np.load(path, allow_pickle=False)  # never unpickle: a .npy from elsewhere could run code
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except (ValueError, EOFError) as exc:
        what = "holds pickled Python objects, which microtile never loads" if "pickle" in str(exc) \
            else f"is not a valid .npy file ({exc})"
        raise MicrotileError(f"{path}: {what}; save the inputs with numpy.save as a {t.dtype} array") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise MicrotileError(f"{path}: an .npz archive, not one .npy array; save each input with numpy.save")
    if arr.dtype != np.dtype(t.dtype):
        raise MicrotileError(f"{path}: dtype {arr.dtype}, but input {t.name!r} is {t.dtype}")
    size = int(np.prod(t.shape))
    if arr.size == size:
        return [arr.reshape(t.shape)]
    if arr.ndim and arr.size % size == 0 and arr.shape[0] * size == arr.size:
        return [a.reshape(t.shape) for a in arr]  # a stack of samples along axis 0
    raise MicrotileError(f"{path}: shape {arr.shape} is neither {t.shape} nor N x {t.shape}")


def load_labels(csv_path: Path) -> list[tuple[Path, int]]:
    if csv_path.is_dir():
        raise MicrotileError(f"--labels {csv_path}: is a directory; give its y_labels.csv file")
    try:
        text = csv_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MicrotileError(f"--labels {csv_path}: no such file") from None
    except OSError as exc:
        raise MicrotileError(f"--labels {csv_path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise MicrotileError(f"--labels {csv_path}: a binary file, not a CSV of 'file, classes, label' lines")
    rows = []
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not row[0].strip():
            continue
        if len(row) < 3:
            raise MicrotileError(f"{csv_path}:{n}: expected 'file, classes, label', got {row}")
        try:
            rows.append((csv_path.parent / row[0].strip(), int(row[2])))
        except ValueError:
            raise MicrotileError(f"{csv_path}:{n}: label {row[2]!r} is not an integer") from None
    return rows


def _num_classes(graph: Graph) -> int:
    """Top-1 is the argmax over the first output: its element count is the class count."""
    return int(np.prod(graph.tensor(graph.outputs[0]).shape))


def check_counts(inputs: str | None, random: int | None, labels: str | None, limit: int | None) -> None:
    """Refuse bad numbers instead of bending them (a negative --limit is not a slice)."""
    if random is not None and random < 1:
        raise MicrotileError(f"--random {random}: give at least 1 input")
    if limit is not None and limit < 1:
        raise MicrotileError(f"--limit {limit}: give at least 1 (or leave it out to run every input)")
    if limit is not None and not (inputs or labels):
        raise MicrotileError("--limit applies to --inputs or --labels; with --random N give the count as N")


def _float_input_range(graph: Graph, index: int) -> tuple[float, float]:
    """The float range the QUANTIZE reading a float input can represent (else [-1, 1])."""
    for op in graph.operators:
        if op.opcode == "QUANTIZE" and op.inputs[0] == index:
            out = graph.tensor(op.outputs[0])
            info = np.iinfo(out.dtype)
            return (info.min - out.zero_point) * out.scale, (info.max - out.zero_point) * out.scale
    return -1.0, 1.0


def load_samples(graph: Graph, inputs: str | None = None, random: int | None = None,
                 labels: str | None = None, limit: int | None = None, seed: int = DEFAULT_SEED) -> list[Sample]:
    check_counts(inputs, random, labels, limit)
    if seed < 0:
        raise MicrotileError(f"--seed {seed}: give a seed of 0 or more")
    samples: list[Sample] = []
    if labels:
        t = _input_tensor(graph)
        classes = _num_classes(graph)
        for path, label in load_labels(Path(labels))[:limit]:
            if not 0 <= label < classes:
                raise MicrotileError(f"{labels}: {path.name} has label {label}, but model {graph.name} has "
                                     f"{classes} classes (0..{classes - 1}); check the CSV is for this model")
            if not path.is_file():
                raise MicrotileError(f"{labels} names {path.name}, which is not beside it")
            samples.append(Sample(path.name, [_from_bytes(t, _read_bytes(path), str(path))], label))
    elif inputs:
        t = _input_tensor(graph)
        path = Path(inputs)
        if path.is_dir():
            try:
                files = sorted(p for p in path.iterdir() if p.suffix in (".bin", ".npy"))
            except OSError as exc:
                raise MicrotileError(f"{path}: cannot list this directory ({exc.strerror})") from None
            if not files:
                raise MicrotileError(f"{path}: no .bin or .npy inputs in this directory")
            for f in files:
                arrays = _from_npy(t, f) if f.suffix == ".npy" else [_from_bytes(t, _read_bytes(f), str(f))]
                samples += [Sample(f.name if len(arrays) == 1 else f"{f.name}[{k}]", [a]) for k, a in enumerate(arrays)]
        elif path.suffix == ".npy" and path.is_file():
            samples = [Sample(f"{path.name}[{k}]", [a]) for k, a in enumerate(_from_npy(t, path))]
        elif path.is_file():
            samples = [Sample(path.name, [_from_bytes(t, _read_bytes(path), str(path))])]
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
