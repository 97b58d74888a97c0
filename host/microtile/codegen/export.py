"""``microtile export``: a compiled model as a self-contained C library folder.

The folder holds the generated model (src/model.c, include/model.h), exactly the
kernel sources and headers it uses (copied from firmware/), one API header NAME.h
with NAME_invoke() and the tensor macros, NAME.c (invoke, layer hook, quantise
helpers), a CMakeLists.txt (static library NAME, alias microtile::NAME), a Makefile
fragment NAME.mk and a Zephyr module (zephyr/). Building it needs only a C99
compiler. microtile's own firmware builds this same folder (build.py exports into
its build directory; the root CMakeLists.txt adds it with add_subdirectory).
"""
from __future__ import annotations

import json
import keyword
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from microtile.codegen.model_source import CompiledModel
from microtile.errors import MicrotileError
from microtile.paths import REPO_ROOT

FIRMWARE = REPO_ROOT / "firmware"
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_C_TYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "int32": "int32_t"}
# C keywords and names the library itself defines: not usable as NAME.
_RESERVED = {"auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
             "extern", "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return",
             "short", "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void",
             "volatile", "while", "model", "main"}


def default_name(model_path: str | Path) -> str:
    """The model file's stem made a C identifier: ``kws-ref model.tflite`` -> ``kws_ref_model``."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", Path(model_path).stem).strip("_") or "model"
    name = name.lower()[:38]
    if name[0].isdigit() or name in _RESERVED or keyword.iskeyword(name) or name.startswith("mt_"):
        name = "m_" + name  # model.tflite -> m_model: NAME must not clash with model.c or mt_*
    return name


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", name) or name in _RESERVED or keyword.iskeyword(name) \
            or name.lower().startswith("mt_"):
        raise MicrotileError(f"--name {name!r} is not usable as a C library name: give a C identifier "
                             "(letters, digits, _; not starting with a digit or mt_, not a C keyword), e.g. kws")
    return name


def used_files(compiled: CompiledModel) -> tuple[list[Path], list[Path]]:
    """(headers, sources) from firmware/ that the generated model needs: the headers its
    code includes, the kernel source beside each one, and what those include in turn."""
    headers: dict[str, Path] = {}
    sources: dict[str, Path] = {}
    todo = ["mt_model.h"] + _INCLUDE.findall(compiled.model_c)
    while todo:
        name = todo.pop()
        if name in headers or name == "model.h":
            continue
        header = FIRMWARE / "include" / name
        if not header.is_file():
            raise MicrotileError(f"export: the generated model includes {name}, which is not in firmware/include")
        headers[name] = header
        todo += _INCLUDE.findall(header.read_text())
        source = FIRMWARE / "kernels" / (Path(name).stem + ".c")
        if source.is_file() and source.name not in sources:
            sources[source.name] = source
            todo += _INCLUDE.findall(source.read_text())
    return sorted(headers.values()), sorted(sources.values())


def _c_float(value: float) -> str:
    """A float32 literal that parses back to the same float (9 significant digits)."""
    return f"{float(np.float32(value)):.9g}f"


@dataclass
class Port:
    """One tensor the library's caller passes in or gets back."""
    role: str  # INPUT or OUTPUT
    k: int
    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    scale: float | None
    zero_point: int | None


def _ports(compiled: CompiledModel) -> list[Port]:
    ports = []
    for role, indices in (("INPUT", compiled.device_inputs), ("OUTPUT", compiled.device_outputs)):
        for k, i in enumerate(indices):
            t = compiled.graph.tensor(i)
            q = t.quant is not None and t.quant.scale.size == 1
            ports.append(Port(role, k, t.name, t.dtype, [int(d) for d in t.shape], int(t.nbytes),
                              float(t.scale) if q else None, int(t.zero_point) if q else None))
    return ports


def api_header(compiled: CompiledModel, name: str) -> str:
    up = name.upper()
    lines = [f"/* {name}: {compiled.graph.name} compiled by microtile ({compiled.kernels} kernels). Generated: do not edit.",
             " *",
             f" *   static uint8_t arena[{up}_ARENA_BYTES] __attribute__((aligned({up}_ARENA_ALIGN)));",
             f" *   int rc = {name}_invoke(arena, inputs, outputs);   0 on success",
             " *",
             " * inputs[k] points at {up}_INPUTk_BYTES bytes of input k (quantised, row-major in its shape),",
             " * outputs[k] at {up}_OUTPUTk_BYTES writable bytes. Build with -D{up}_STATIC_ARENA=1 (CMake option",
             f" * {name}_STATIC_ARENA) to let arena == NULL use a static arena inside the library. */".replace("{up}", up),
             f"#ifndef {up}_H", f"#define {up}_H", "", "#include <stdint.h>", "",
             "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
             f"#define {up}_ARENA_BYTES {max(compiled.plan.arena_size, 8)}u",
             f"#define {up}_ARENA_ALIGN 16u",
             f"#define {up}_NUM_INPUTS {len(compiled.device_inputs)}u",
             f"#define {up}_NUM_OUTPUTS {len(compiled.device_outputs)}u",
             f"#define {up}_NUM_LAYERS {len(compiled.device_ops)}u",
             f"#define {up}_WEIGHT_BYTES {compiled.const_bytes}u",
             f"#define {up}_HASH 0x{compiled.hash[:8]}u", ""]
    for p in _ports(compiled):
        pre = f"{up}_{p.role}{p.k}"
        lines.append(f"/* {p.role.lower()} {p.k}: tensor {p.name!r}, {p.dtype} {p.shape} */".replace("*/*", "* /*"))
        lines += [f"#define {pre}_BYTES {p.nbytes}u",
                  f"#define {pre}_ELEMENTS {int(np.prod(p.shape, dtype=np.int64))}u",
                  f"#define {pre}_TYPE {_C_TYPES.get(p.dtype, 'int8_t')}",
                  f"#define {pre}_RANK {len(p.shape)}u",
                  f"#define {pre}_SHAPE {{{', '.join(map(str, p.shape)) or '1'}}}"]
        lines += [f"#define {pre}_DIM{d} {n}u" for d, n in enumerate(p.shape)]
        if p.scale is not None:
            lines += [f"#define {pre}_SCALE {_c_float(p.scale)}", f"#define {pre}_ZERO_POINT {p.zero_point}"]
        lines.append("")
    lines += [
        "/* Runs the model: copies the inputs into the arena, runs every layer, copies the outputs out.",
        f" * Returns 0, or 1 for a NULL pointer, 2 for an arena not aligned to {up}_ARENA_ALIGN. */",
        f"int {name}_invoke(void *arena, const void *const *inputs, void *const *outputs);",
        "",
        "/* Optional per-layer hook, for the caller's own profiling: called with end = 0 before and",
        f" * end = 1 after each layer (0 .. {up}_NUM_LAYERS-1) inside {name}_invoke. NULL removes it. */",
        f"typedef void (*{name}_layer_hook)(uint32_t layer, int end, void *user);",
        f"void {name}_set_layer_hook({name}_layer_hook hook, void *user);",
        "",
        f"/* One layer alone, on an arena {name}_invoke's inputs were copied into (microtile's firmware",
        " * measures layers so). Returns 0, or 1 for a layer out of range. */",
        f"int {name}_run_layer(uint32_t layer, void *arena);",
        "",
        "/* float <-> int8 with the tensor's scale and zero point, bit-exact with microtile's host and",
        " * TFLM (AffineQuantize: round half away from zero in float32 division; Dequantize). */",
        f"void {name}_quantize(const float *x, int8_t *q, uint32_t n, float scale, int32_t zero_point);",
        f"void {name}_dequantize(const int8_t *q, float *x, uint32_t n, float scale, int32_t zero_point);",
        "",
        "#ifdef __cplusplus", "}", "#endif", f"#endif /* {up}_H */", ""]
    return "\n".join(lines)


def api_source(compiled: CompiledModel, name: str) -> str:
    up = name.upper()
    return f"""/* {name}: the library API over the generated model (model.c). Generated: do not edit. */
#include <stdint.h>
#include <string.h>

#include "model.h"
#include "{name}.h"

#if defined({up}_STATIC_ARENA) && {up}_STATIC_ARENA
static uint8_t {name}_static_arena[{up}_ARENA_BYTES] __attribute__((aligned({up}_ARENA_ALIGN)));
#endif

static {name}_layer_hook {name}_hook;
static void *{name}_hook_user;

void {name}_set_layer_hook({name}_layer_hook hook, void *user)
{{
    {name}_hook = hook;
    {name}_hook_user = user;
}}

int {name}_run_layer(uint32_t layer, void *arena)
{{
    if (arena == NULL || layer >= mt_model_def.num_layers) {{
        return 1;
    }}
    mt_model_def.run_layer(layer, (uint8_t *)arena);
    return 0;
}}

int {name}_invoke(void *arena, const void *const *inputs, void *const *outputs)
{{
    uint8_t *a = (uint8_t *)arena;
#if defined({up}_STATIC_ARENA) && {up}_STATIC_ARENA
    if (a == NULL) {{
        a = {name}_static_arena;
    }}
#endif
    if (a == NULL || inputs == NULL || outputs == NULL) {{
        return 1;
    }}
    if ((uintptr_t)a % {up}_ARENA_ALIGN != 0u) {{
        return 2;
    }}
    for (uint32_t i = 0; i < mt_model_def.num_inputs; i++) {{
        if (inputs[i] == NULL) {{
            return 1;
        }}
        memcpy(a + mt_model_def.inputs[i].offset, inputs[i], mt_model_def.inputs[i].size);
    }}
    for (uint32_t layer = 0; layer < mt_model_def.num_layers; layer++) {{
        if ({name}_hook != NULL) {{
            {name}_hook(layer, 0, {name}_hook_user);
        }}
        mt_model_def.run_layer(layer, a);
        if ({name}_hook != NULL) {{
            {name}_hook(layer, 1, {name}_hook_user);
        }}
    }}
    for (uint32_t i = 0; i < mt_model_def.num_outputs; i++) {{
        if (outputs[i] == NULL) {{
            return 1;
        }}
        memcpy(outputs[i], a + mt_model_def.outputs[i].offset, mt_model_def.outputs[i].size);
    }}
    return 0;
}}

/* As host/microtile/ops/quantize.py quantize_array: the ratio in float32, rounded in double
 * (exact), half away from zero; NaN and out-of-int32 values become INT32_MIN (as float->int32
 * conversion on x86 gives, and TFLM there); + zero point wrapping in int32; clamped. */
void {name}_quantize(const float *x, int8_t *q, uint32_t n, float scale, int32_t zero_point)
{{
    for (uint32_t i = 0; i < n; i++) {{
        float ratio = x[i] / scale;
        double r = (double)ratio;
        int32_t v;
        if (!(r > -2147483648.5 && r < 2147483647.5)) {{
            v = INT32_MIN; /* NaN, infinities, out of range */
        }} else {{
            double a = r < 0.0 ? -r : r;
            int64_t rounded = (int64_t)(a + 0.5); /* a >= 0: truncation is floor */
            if (r < 0.0) {{
                rounded = -rounded;
            }}
            v = rounded >= 2147483648LL ? INT32_MIN : (int32_t)rounded;
        }}
        int32_t s = (int32_t)((uint32_t)v + (uint32_t)zero_point);
        q[i] = (int8_t)(s < -128 ? -128 : s > 127 ? 127 : s);
    }}
}}

/* As dequantize_array: float(double(scale) * (q - zero_point)). */
void {name}_dequantize(const int8_t *q, float *x, uint32_t n, float scale, int32_t zero_point)
{{
    for (uint32_t i = 0; i < n; i++) {{
        x[i] = (float)((double)scale * (double)((int64_t)q[i] - zero_point));
    }}
}}
"""


def cmake_lists(name: str, sources: list[str]) -> str:
    up = name.upper()
    srcs = "\n".join(f"  src/{s}" for s in sources)
    return f"""# {name}: a microtile-exported model as a static C library. Generated: do not edit.
#   add_subdirectory(path/to/{name})
#   target_link_libraries(app PRIVATE microtile::{name})
cmake_minimum_required(VERSION 3.13)
if(CMAKE_SOURCE_DIR STREQUAL CMAKE_CURRENT_SOURCE_DIR)
  project({name} C)
endif()
option({name}_STATIC_ARENA "let {name}_invoke(NULL, ...) use a static arena inside the library" OFF)

add_library({name} STATIC
{srcs})
add_library(microtile::{name} ALIAS {name})
target_include_directories({name} PUBLIC "${{CMAKE_CURRENT_LIST_DIR}}/include")
set_target_properties({name} PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
if({name}_STATIC_ARENA)
  target_compile_definitions({name} PRIVATE {up}_STATIC_ARENA=1)
endif()

# For microtile's own firmware build, which adds this folder and links the target it names.
get_directory_property(_{name}_parent PARENT_DIRECTORY)
if(_{name}_parent)
  set(MICROTILE_MODEL_LIBRARY {name} PARENT_SCOPE)
endif()
"""


def makefile_fragment(name: str, sources: list[str]) -> str:
    up = name.upper()
    srcs = " \\\n".join(f"  $({up}_DIR)src/{s}" for s in sources)
    return f"""# {name}: a microtile-exported model, for a Makefile project. Generated: do not edit.
#   include path/to/{name}/{name}.mk
#   SRCS   += $({up}_SRCS)
#   CFLAGS += $({up}_CFLAGS)
{up}_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
{up}_SRCS := \\
{srcs}
{up}_INCLUDES := -I$({up}_DIR)include
{up}_CFLAGS := -std=c99 $({up}_INCLUDES)
"""


def zephyr_files(name: str, sources: list[str]) -> dict[str, str]:
    up = name.upper()
    srcs = "\n".join(f"    ${{CMAKE_CURRENT_LIST_DIR}}/../src/{s}" for s in sources)
    return {
        "zephyr/module.yml": f"""# {name} as a Zephyr module: list this folder in ZEPHYR_EXTRA_MODULES (or west.yml)
# and set CONFIG_MICROTILE_MODEL_{up}=y. Generated: do not edit.
name: microtile_{name}
build:
  cmake: zephyr
  kconfig: zephyr/Kconfig
""",
        "zephyr/Kconfig": f"""config MICROTILE_MODEL_{up}
\tbool "{name}: model exported by microtile"
\thelp
\t  The static library {name}: {name}.h declares {name}_invoke().
""",
        "zephyr/CMakeLists.txt": f"""# {name} as a Zephyr library. Generated: do not edit.
if(CONFIG_MICROTILE_MODEL_{up})
  zephyr_library_named({name})
  zephyr_library_sources(
{srcs})
  zephyr_include_directories(${{CMAKE_CURRENT_LIST_DIR}}/../include)
endif()
""",
    }


def export_files(compiled: CompiledModel, name: str) -> dict[str, str]:
    """Relative path -> text of every file the export folder holds."""
    headers, kernels = used_files(compiled)
    sources = ["model.c", f"{name}.c"] + [p.name for p in kernels]
    files = {"include/model.h": compiled.model_h, "src/model.c": compiled.model_c,
             f"include/{name}.h": api_header(compiled, name), f"src/{name}.c": api_source(compiled, name),
             "CMakeLists.txt": cmake_lists(name, sources), f"{name}.mk": makefile_fragment(name, sources)}
    files.update(zephyr_files(name, sources))
    for p in headers:
        files[f"include/{p.name}"] = p.read_text()
    for p in kernels:
        files[f"src/{p.name}"] = p.read_text()
    return files


def write_export(compiled: CompiledModel, out: Path, name: str) -> list[str]:
    """Write the folder (only files whose text changed, so a rebuild recompiles nothing)."""
    check_name(name)
    files = export_files(compiled, name)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Kernels an earlier export into this folder used and this model does not: the folder
        # holds exactly the kernels the model uses.
        for stale in [*out.glob("src/mt_*.c"), *out.glob("include/mt_*.h")]:
            if stale.relative_to(out).as_posix() not in files:
                stale.unlink()
        for rel, text in files.items():
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
    except OSError as exc:
        raise MicrotileError(f"cannot write the export folder {out} ({exc.strerror}): choose a writable --out") \
            from None
    return sorted(files)


def measure_cost(out: Path, name: str, compiled: CompiledModel, board) -> dict:
    """ROM (weights and parameters vs code) and RAM (arena, static, stack) of the exported
    library, compiled with the board's flags and linked alone (--gc-sections, entry
    NAME_invoke) so only what a firmware would keep is counted. The stack is gcc's static
    per-function frames (-fcallgraph-info=su) along the deepest call chain from NAME_invoke
    through the layers (the caller's own layer hook not included)."""
    from elftools.elf.elffile import ELFFile

    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        return {"measured": False, "reason": "arm-none-eabi-gcc not found (make setup)"}
    flags = [*board.cpu_flags, "-O2", "-std=c99", "-ffunction-sections", "-fdata-sections", "-fno-common",
             "-fcallgraph-info=su", "-I", str(out / "include")]
    with tempfile.TemporaryDirectory(prefix="mt-export-size-") as tmp:
        tmpd = Path(tmp)
        objs = []
        for src in sorted((out / "src").glob("*.c")):
            obj = tmpd / (src.stem + ".o")
            proc = subprocess.run([gcc, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True,
                                  cwd=tmp)
            if proc.returncode != 0:
                raise MicrotileError(f"export: {src.name} does not compile for {board.name}: {proc.stderr[-2000:]}")
            objs.append(str(obj))
        elf = tmpd / "lib.elf"
        proc = subprocess.run([gcc, *board.cpu_flags, "--specs=nano.specs", "-nostartfiles", "-Wl,--gc-sections",
                               f"-Wl,-e,{name}_invoke", f"-Wl,-u,{name}_quantize", f"-Wl,-u,{name}_dequantize",
                               f"-Wl,-u,{name}_set_layer_hook", f"-Wl,-u,{name}_run_layer", *objs, "-o", str(elf)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise MicrotileError(f"export: the library does not link alone for {board.name}: {proc.stderr[-2000:]}")
        code = consts = data = bss = 0
        per_layer: dict[int, int] = {}
        with open(elf, "rb") as f:
            ef = ELFFile(f)
            for sec in ef.iter_sections():
                if not sec["sh_flags"] & 2 or sec["sh_size"] == 0:  # SHF_ALLOC
                    continue
                if sec["sh_type"] == "SHT_NOBITS":
                    bss += sec["sh_size"]
                elif sec["sh_flags"] & 4:  # SHF_EXECINSTR
                    code += sec["sh_size"]
                elif sec["sh_flags"] & 1:  # SHF_WRITE
                    data += sec["sh_size"]
                else:
                    consts += sec["sh_size"]
            for sym in ef.get_section_by_name(".symtab").iter_symbols():
                m = re.fullmatch(r"l(\d+)_\w+", sym.name)
                if m and sym["st_info"]["type"] == "STT_OBJECT":
                    per_layer[int(m.group(1))] = per_layer.get(int(m.group(1)), 0) + sym["st_size"]
        weights = sum(per_layer.values())
        stack, layer_stack = _stack_depth(tmpd, name, compiled.model_c)
    layers = [{"index": i, "op": op.opcode, "weight_bytes": per_layer.get(i, 0), "stack_bytes": layer_stack[i]}
              for i, op in enumerate(compiled.device_ops)]
    return {"measured": True, "board": board.name, "cpu_flags": list(board.cpu_flags),
            "rom": {"weights_bytes": weights, "code_bytes": code, "other_const_bytes": consts - weights,
                    "data_init_bytes": data, "total_bytes": code + consts + data},
            "ram": {"arena_bytes": compiled.plan.arena_size, "static_bytes": data + bss, "stack_bytes": stack,
                    "total_bytes": compiled.plan.arena_size + data + bss + (stack or 0)},
            "layers": layers}


_CI_NODE = re.compile(r'node: \{ title: "([^"]+)" label: "[^"\\]*(?:\\n[^"\\]*)*?\\n(\d+) bytes')
_CI_EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')


def _stack_depth(tmpd: Path, name: str, model_c: str) -> tuple[int | None, list[int | None]]:
    """Deepest static stack from NAME_invoke, with model.c's run_layer (called through the
    model table's pointer, an edge gcc cannot see) added as its callee; and the same per
    layer, through the kernels that layer's case of run_layer calls."""
    frames: dict[str, int] = {}
    calls: dict[str, set[str]] = {}
    for ci in tmpd.glob("*.ci"):
        text = ci.read_text()
        for fn, size in _CI_NODE.findall(text):
            frames[fn] = int(size)
        for a, b in _CI_EDGE.findall(text):
            calls.setdefault(a, set()).add(b)
    invoke = f"{name}_invoke"
    run_layer = next((f for f in frames if f == "run_layer" or f.endswith(":run_layer")), None)
    cases = re.split(r"\n    case \d+:", model_c.split("static void run_layer", 1)[-1])[1:]
    if invoke not in frames or run_layer is None:
        return None, [None] * len(cases)
    calls.setdefault(invoke, set()).add(run_layer)
    seen: dict[str, int] = {}

    def depth(fn: str, path: frozenset) -> int:
        if fn in seen:
            return seen[fn]
        best = max((depth(c, path | {fn}) for c in calls.get(fn, ()) if c not in path), default=0)
        seen[fn] = frames.get(fn, 0) + best
        return seen[fn]

    total = depth(invoke, frozenset())
    base = frames[invoke] + frames[run_layer]
    per_layer = [base + max((depth(fn, frozenset()) for fn in set(re.findall(r"\b(mt_\w+)\(", case))), default=0)
                 for case in cases]
    return total, per_layer


def caller_side_ops(compiled: CompiledModel) -> list[str]:
    """The model's float edge ops other than QUANTIZE / DEQUANTIZE (a float SOFTMAX after
    the last DEQUANTIZE...): microtile's host runs them; the library does not."""
    return [f"#{op.index} {op.opcode}" for op in compiled.host_pre + compiled.host_post
            if op.opcode not in ("QUANTIZE", "DEQUANTIZE")]


def report_markdown(name: str, compiled: CompiledModel, cost: dict) -> str:
    lines = [f"# {name}: what the export costs", "",
             f"Model {compiled.graph.name}, {compiled.kernels} kernels, {len(compiled.device_ops)} layers."]
    if cost.get("caller_side_ops"):
        lines.append(f"Float edge ops left to the caller (not in the library): {', '.join(cost['caller_side_ops'])}.")
    if not cost.get("measured"):
        return "\n".join(lines + ["", f"Not measured: {cost['reason']}.", ""])
    rom, ram = cost["rom"], cost["ram"]
    lines += [f"Compiled for {cost['board']} ({' '.join(cost['cpu_flags'])}, -O2), linked alone with --gc-sections.",
              "", "| | bytes |", "|---|---:|",
              f"| ROM: weights and parameters | {rom['weights_bytes']:,} |",
              f"| ROM: code (kernels, model, API, libc memcpy) | {rom['code_bytes']:,} |",
              f"| ROM: other constants | {rom['other_const_bytes'] + rom['data_init_bytes']:,} |",
              f"| ROM total | {rom['total_bytes']:,} |",
              f"| RAM: arena (caller's or static) | {ram['arena_bytes']:,} |",
              f"| RAM: library statics | {ram['static_bytes']:,} |",
              f"| RAM: stack, deepest static chain from {name}_invoke | "
              f"{'n/a' if ram['stack_bytes'] is None else format(ram['stack_bytes'], ',')} |",
              "", "| layer | op | weights and parameters, bytes | stack, bytes |", "|---:|---|---:|---:|"]
    lines += [f"| {layer['index']} | {layer['op']} | {layer['weight_bytes']:,} | "
              f"{'n/a' if layer['stack_bytes'] is None else format(layer['stack_bytes'], ',')} |"
              for layer in cost["layers"]]
    return "\n".join(lines) + "\n"


@dataclass
class ExportResult:
    out: Path
    name: str
    files: list[str]
    cost: dict

    def summary(self) -> str:
        c = self.cost
        if not c.get("measured"):
            return f"cost not measured: {c['reason']}"
        rom, ram = c["rom"], c["ram"]
        stack = "n/a" if ram["stack_bytes"] is None else f"{ram['stack_bytes']:,}"
        edge = f"; float edge ops left to your code: {', '.join(c['caller_side_ops'])}" if c.get("caller_side_ops") \
            else ""
        return (f"ROM {rom['total_bytes']:,} B (weights {rom['weights_bytes']:,} B, code {rom['code_bytes']:,} B)   "
                f"RAM arena {ram['arena_bytes']:,} B + statics {ram['static_bytes']:,} B + stack {stack} B "
                f"on {c['board']}; report.md, report.json in {self.out}{edge}")


def export_model(compiled: CompiledModel, out: Path, name: str, board) -> ExportResult:
    """``microtile export``: the folder, then its cost measured and written beside it."""
    files = write_export(compiled, out, name)
    cost = measure_cost(out, name, compiled, board)
    cost["caller_side_ops"] = caller_side_ops(compiled)
    (out / "report.json").write_text(json.dumps({"name": name, "model": compiled.graph.name,
                                                 "kernels": compiled.kernels, **cost}, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(name, compiled, cost))
    return ExportResult(out, name, files + ["report.json", "report.md"], cost)
