"""Write the zoo as .tflite files.

    python -m microtile_models.build OUTDIR [--only NAME ...] [--seed N] [--float-io] [--list]

``zoo_model_bytes(name)`` is the function tests use: it builds a model once and
caches the bytes under ``build/zoo/`` keyed by a hash of the zoo's sources and the
writer's, so editing any builder invalidates the cache.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path

from microtile.errors import MicrotileError
from microtile.importer.tflite_format import write_tflite

from . import zoo

_PKG_DIR = Path(__file__).resolve().parent
CACHE_DIR = Path(os.environ.get("MICROTILE_ZOO_CACHE", _PKG_DIR.parent / "build" / "zoo"))


@lru_cache(maxsize=1)
def _source_hash() -> str:
    import microtile.importer.tflite_format as writer

    h = hashlib.sha256()
    for path in sorted(_PKG_DIR.glob("*.py")) + [Path(writer.__file__)]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def model_bytes(name: str, seed: int = 0, float_io: bool = False) -> bytes:
    """Build a zoo model and serialise it (no cache)."""
    return write_tflite(zoo.build(name, seed, float_io))


def zoo_model_bytes(name: str, seed: int = 0, float_io: bool = False) -> bytes:
    """The .tflite bytes of a zoo model, from the on-disk cache when it is current."""
    if name not in zoo.ZOO:
        raise MicrotileError(f"no zoo model {name!r}; choose one of: {', '.join(zoo.ZOO)}")
    key = f"{name}-s{seed}{'-f' if float_io else ''}-{_source_hash()}.tflite"
    path = CACHE_DIR / key
    if path.is_file():
        return path.read_bytes()
    data = model_bytes(name, seed, float_io)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: parallel test workers never read half a file
    except OSError:
        pass  # a read-only tree still gets the bytes, just uncached
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m microtile_models.build",
                                 description="Write microtile's int8 model zoo as .tflite files.")
    ap.add_argument("outdir", nargs="?", type=Path, help="directory for NAME.tflite files")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="build only these models")
    ap.add_argument("--seed", type=int, default=0, help="weight / calibration seed (default 0)")
    ap.add_argument("--float-io", action="store_true",
                    help="float32 input/output with QUANTIZE/DEQUANTIZE at the boundaries")
    ap.add_argument("--list", action="store_true", help="print the model names and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(zoo.names()))
        return 0
    if args.outdir is None:
        ap.error("OUTDIR is required (or use --list)")
    names = args.only or zoo.names()
    unknown = [n for n in names if n not in zoo.ZOO]
    if unknown:
        print(f"error: unknown zoo model(s) {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        data = model_bytes(name, args.seed, args.float_io)
        out = args.outdir / f"{name}.tflite"
        out.write_bytes(data)
        print(f"{out}  {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
