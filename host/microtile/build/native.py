"""Run generated models natively: model.c + the firmware kernels compiled by the
host gcc into a shared library (with UBSan), loaded with ctypes. Tests use it to
check the C kernels bit-exactly against TFLM without an emulator.

``build_case_runner`` links many compiled models into one executable built with
ASan + UBSan (firmware/native/mt_fuzz_main.c): the differential fuzzer
(microtile.check.fuzz_ops) runs it in a subprocess, so a crash or a sanitizer report is a
reported failure of the case in flight, not a dead fuzzer."""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from microtile.codegen.model_source import CompiledModel, compile_model
from microtile.errors import BuildError, ToolMissingError
from microtile.importer.ir import Graph
from microtile.paths import REPO_ROOT

FIRMWARE = REPO_ROOT / "firmware"
CACHE = REPO_ROOT / "build" / "native"
BASE_CFLAGS = ["-std=c99", "-O1", "-g", "-fPIC", "-Wall", "-Wextra", "-Werror"]
# Every frame bounded (-Wstack-usage, an error with -Werror): working memory sized by
# a layer belongs in the arena; on the stack it overflowed the boards' 8 KB (a
# K = 4000 FC panel). ASan's redzones make frames ~2x larger, hence its own bound.
SANITIZERS = {
    "ubsan": ["-fsanitize=undefined", "-fno-sanitize-recover=undefined", "-Wstack-usage=2048"],
    "asan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
             "-Wstack-usage=4096"],
}
CFLAGS = BASE_CFLAGS + SANITIZERS["ubsan"]


def _gcc() -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ToolMissingError("no host C compiler: install gcc (sudo apt-get install gcc, or make setup)")
    return cc


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"native build failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")


def _kernel_sources() -> list[Path]:
    return sorted((FIRMWARE / "kernels").glob("*.c"))


def kernels_archive(sanitize: str = "ubsan") -> Path:
    """Compile firmware/kernels once per source content into a static archive."""
    cflags = BASE_CFLAGS + SANITIZERS[sanitize]
    h = hashlib.sha256(" ".join(cflags).encode())
    for path in _kernel_sources() + sorted((FIRMWARE / "include").glob("*.h")):
        h.update(path.name.encode() + path.read_bytes())
    out = CACHE / "kernels" / h.hexdigest()[:16]
    lib = out / "libmt_kernels.a"
    if lib.exists():
        return lib
    # a folder of its own per build, renamed into place: concurrent builds (pytest-xdist
    # workers) of the same sources neither share nor remove each other's objects
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".building-", dir=out.parent))
    try:
        objs = []
        for src in _kernel_sources():
            obj = tmp / (src.stem + ".o")
            _run([_gcc(), *cflags, "-I", str(FIRMWARE / "include"), "-c", str(src), "-o", str(obj)])
            objs.append(str(obj))
        _run(["ar", "rcs", str(tmp / "libmt_kernels.a"), *objs])
        if out.exists() and not lib.exists():
            shutil.rmtree(out, ignore_errors=True)  # a half-built folder
        try:
            tmp.rename(out)
        except OSError:
            if not lib.exists():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


class NativeModel:
    def __init__(self, compiled: CompiledModel, lib_path: Path):
        self.compiled = compiled
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.mt_native_arena.restype = ctypes.POINTER(ctypes.c_uint8)
        self.arena = self.lib.mt_native_arena()

    @classmethod
    def build(cls, graph: Graph, kernels: str = "reference", ram=None) -> "NativeModel":
        compiled = compile_model(graph, kernels, ram=ram)  # ram: a RamConfig (None: searched)
        archive = kernels_archive()
        key = hashlib.sha256((compiled.hash + str(archive)).encode()).hexdigest()[:16]
        out = CACHE / "models" / key
        lib = out / "libmodel.so"
        if not lib.exists():
            compiled.write(out)
            _run([_gcc(), *CFLAGS, "-shared", "-I", str(FIRMWARE / "include"), "-I", str(out),
                  str(out / "model.c"), str(FIRMWARE / "native" / "mt_native.c"), str(archive),
                  "-o", str(out / f"libmodel.so.{os.getpid()}")])
            (out / f"libmodel.so.{os.getpid()}").rename(lib)  # atomic: concurrent builders
        return cls(compiled, lib)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Model inputs -> model outputs, with float boundaries handled as on a board."""
        c = self.compiled
        for i, x in zip(c.device_inputs, c.to_device(inputs)):
            raw = np.ascontiguousarray(x).tobytes()
            ctypes.memmove(ctypes.addressof(self.arena.contents) + c.plan.offsets[i], raw, len(raw))
        self.lib.mt_native_run()
        outs = []
        for i in c.device_outputs:
            t = c.graph.tensor(i)
            raw = ctypes.string_at(ctypes.addressof(self.arena.contents) + c.plan.offsets[i], t.nbytes)
            outs.append(np.frombuffer(raw, dtype=t.dtype).reshape(t.shape).copy())
        return c.from_device(outs)


# The file-scope names model.c defines (codegen: l<layer>_<hint> constants, run_layer,
# the buffer tables, mt_model_def); prefixed per case so many models share one file.
_MODEL_NAMES = re.compile(r"\b(l\d+_\w+|run_layer|model_inputs|model_outputs|mt_model_def)\b")


def build_case_runner(models: list[CompiledModel], out: Path, sanitize: str = "asan") -> Path:
    """One executable running every model (firmware/native/mt_fuzz_main.c), built in
    ``out`` (the fuzzer's temporary directory: a full run makes a thousand of them)."""
    parts = ['#include <stdint.h>\n#include <string.h>\n#include "mt_model.h"\n']
    for i, compiled in enumerate(models):
        body = compiled.model_c.replace('#include "model.h"\n', "")
        parts.append(f"/* case {i}: {compiled.graph.name}, {compiled.kernels} */\n"
                     + _MODEL_NAMES.sub(lambda m: f"c{i}_{m.group(1)}", body))
    table = ", ".join(f"&c{i}_mt_model_def" for i in range(len(models)))
    parts.append(f"const mt_model *const mt_fuzz_cases[] = {{{table}}};\n"
                 f"const uint32_t mt_fuzz_num_cases = {len(models)}u;\n")
    source = "\n".join(parts)
    archive = kernels_archive(sanitize)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases.c").write_text(source)
    exe = out / "mt_fuzz"
    _run([_gcc(), *BASE_CFLAGS, *SANITIZERS[sanitize], "-I", str(FIRMWARE / "include"),
          str(out / "cases.c"), str(FIRMWARE / "native" / "mt_fuzz_main.c"), str(archive), "-o", str(exe)])
    return exe
