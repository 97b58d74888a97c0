"""Firmware builds: generated model + kernels + board port -> ELF, with CMake and the
Arm GCC toolchain, cached by a content hash of everything that goes in. Also the
flash/RAM accounting (before the build from the plan, after it from the ELF)."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from microtile.targets.boards import Board, firmware_configure_command
from microtile.codegen.model_source import CompiledModel
from microtile.errors import BuildError, DoesNotFitError, ToolMissingError
from microtile.codegen.export import write_export
from microtile.paths import REPO_ROOT

# MICROTILE_BUILD_DIR moves the build cache (e.g. when the checkout is read-only).
BUILD_ROOT = Path(os.environ.get("MICROTILE_BUILD_DIR") or REPO_ROOT / "build" / "firmware")
# Budget for what is not the model, used by the fit check before building: the
# port + app + kernels code, and the app's stack and buffers (checked exactly after linking).
CODE_BUDGET = 48 * 1024
RAM_BUDGET = 12 * 1024
# Library name of the exported model inside microtile's own firmware (its app calls
# mt_model_def.run_layer directly, to count each layer).
FIRMWARE_LIBRARY = "microtile_model"


@dataclass
class Firmware:
    elf: Path
    build_id: str
    sizes: "ElfSizes"


@dataclass
class ElfSizes:
    rom_bytes: int  # everything the image puts in flash
    ram_static_bytes: int  # .data + .bss (the arena included)
    stack_reserved_bytes: int  # the stack region the linker script reserves


def _source_files() -> list[Path]:
    files = [REPO_ROOT / "CMakeLists.txt", REPO_ROOT / "host" / "microtile" / "codegen" / "export.py"]  # export.py writes the model folder
    for sub in ("firmware", "boards"):
        files += sorted(p for p in (REPO_ROOT / sub).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files


def build_key(compiled: CompiledModel, board: Board) -> str:
    h = hashlib.sha256(compiled.hash.encode() + board.name.encode())
    for path in _source_files():
        h.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def check_fits(compiled: CompiledModel, board: Board) -> None:
    """Refuse, before building, a model that cannot fit the board."""
    ram = board.ram_bytes
    if compiled.plan.arena_size + RAM_BUDGET > ram:
        raise DoesNotFitError(
            f"model {compiled.graph.name} needs a {compiled.plan.arena_size / 1024:.1f} KiB activation arena "
            f"(+ ~{RAM_BUDGET // 1024} KiB for stack and buffers), but {board.name} has {ram / 1024:.0f} KiB of RAM; "
            "use a board with more RAM or a smaller model (fewer channels or a smaller input)"
        )
    flash = board.flash_bytes
    if compiled.const_bytes + CODE_BUDGET > flash:
        raise DoesNotFitError(
            f"model {compiled.graph.name} has {compiled.const_bytes / 1024:.1f} KiB of weights and parameters "
            f"(+ ~{CODE_BUDGET // 1024} KiB of code), but {board.name} has {flash / 1024:.0f} KiB of flash; "
            "use a board with more flash or a smaller model"
        )


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(f"{name} not found: run `make setup` (or sudo apt-get install {package})")
    return path


def build_firmware(compiled: CompiledModel, board: Board, verbose: bool = False) -> Firmware:
    check_fits(compiled, board)
    _tool("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi")
    cmake = _tool("cmake", "cmake")
    _tool("ninja", "ninja-build")
    key = build_key(compiled, board)
    out = BUILD_ROOT / board.name / key
    if not (out / "microtile.elf").exists():
        _build_into(out, compiled, board, key, cmake, verbose)
    elf = out / "microtile.elf"
    sizes = elf_sizes(elf, board)
    if compiled.kernels == "optimized":  # --flash-budget bounds the measured ROM (issue 8)
        from microtile.passes.schedule import check_flash_budget
        check_flash_budget(compiled.graph, board, sizes.rom_bytes)
    return Firmware(elf, key, sizes)


SHARED_DW_KERNEL_BYTES = 4900  # mt_depthwise_s8_opt_shared's code (arm-none-eabi-nm, L4R5 build)
ROM_RETRIES = 4  # arena sizes after the RAM search's chosen one that the ROM rule builds (then the fastest)


def build_within_rom_rule(graph, compiled: CompiledModel, board: Board,
                          reference_graph=None) -> tuple[CompiledModel, Firmware]:
    """The firmware build `run`, `bench` and `compile` use. An optimised build without
    --flash-budget keeps the ROM rule of issue 8 on measured sizes: the reference
    build's ROM (built, or found in the cache) + ROM_MARGIN. The reference is that of
    `reference_graph` when given: a network `microtile approx` pruned is held to the
    rule of the model the user brought (its own reference is smaller by the weights
    pruning removed). The prediction in passes/schedule.py is too rough for this (KWS:
    39,320 B predicted for the reference build, 47,940 B measured). Over the rule:
    1. depthwise layer shapes leave their specialised functions for the shared
       run-time-geometry kernel, the most code per MAC first (a specialised shape is
       about 14 % faster), until the measured ROM fits (`_share_shapes`); if even all
       shared do not fit, the smaller of that build and the unshared one is kept (KWS
       94 B over is 2,192 B further over with its 4 shapes shared);
    2. still over, the RAM search's next choices are built unshared (`_ram_alternatives`)
       and the first that fits is kept: the search trades up to COST_SLACK of speed for
       a smaller arena, and its row bands add a depthwise function per band shape (the
       KWS of approx at 0.5 pp: 57,360 B banded with every shape shared, 51,240 B
       unbanded with none, the rule 52,734 B)."""
    from microtile.codegen.model_source import compile_model
    from microtile.ops import depthwise_opt
    from microtile.passes import schedule

    firmware = build_firmware(compiled, board)
    if compiled.kernels != "optimized" or schedule.FLASH_BUDGET is not None or depthwise_opt.SHARED is not None:
        return compiled, firmware
    reference = build_firmware(compile_model(graph if reference_graph is None else reference_graph,
                                             "reference", board), board)
    limit = int((1 + schedule.ROM_MARGIN) * reference.sizes.rom_bytes)
    search = compiled.search
    unshared = compiled, firmware
    compiled, firmware = _share_shapes(graph, compiled, firmware, board, limit)
    if firmware.sizes.rom_bytes > limit and firmware.sizes.rom_bytes >= unshared[1].sizes.rom_bytes:
        compiled, firmware = unshared  # the shared kernel's own code outweighed what sharing saved
    if firmware.sizes.rom_bytes <= limit or search is None:
        return compiled, firmware
    for candidate in _ram_alternatives(search):
        alternative = compile_model(graph, "optimized", board, ram=candidate.config)
        alternative_firmware = build_firmware(alternative, board)
        if alternative_firmware.sizes.rom_bytes <= limit:
            candidate.arena, candidate.method = alternative.plan.arena_size, alternative.plan.method  # as planned
            search.chosen, search.chosen_prepared = candidate, None  # what --explain and the run JSON show
            alternative.search = search
            return alternative, alternative_firmware
    return compiled, firmware


def _ram_alternatives(search) -> list:
    """The RAM search's next choices after its chosen one: ROM_RETRIES of them, one per
    arena size (equal arenas are, as a rule, the same plan), the smallest first; then
    the fastest, if it is not among them."""
    seen, out = {search.chosen.arena}, []
    for c in search.ranked():
        if c.arena not in seen and len(out) < ROM_RETRIES:
            seen.add(c.arena)
            out.append(c)
    fastest = search.fastest()
    return out if fastest.arena in seen else out + [fastest]


def _share_shapes(graph, compiled: CompiledModel, firmware: Firmware, board: Board,
                  limit: int) -> tuple[CompiledModel, Firmware]:
    """Send depthwise shapes to the shared kernel, the most code per MAC first, until
    the measured ROM is within `limit` or every shape is shared."""
    from microtile.codegen.model_source import compile_model
    from microtile.ops import depthwise_opt

    sizes = _shape_function_sizes(firmware.elf)
    if firmware.sizes.rom_bytes <= limit or not sizes:
        return compiled, firmware
    calls = {name: compiled.model_c.count(f"{name}(&") + compiled.model_c.count(f"{name}_planar(&") for name in sizes}
    order = sorted(sizes, key=lambda n: sizes[n] / max(1, calls[n] * depthwise_opt.shape_function_macs(n)),
                   reverse=True)
    shared: list[str] = []
    while firmware.sizes.rom_bytes > limit and len(shared) < len(order):
        # share shapes until their code covers the excess (the shared kernel's own code
        # comes in with the first), then measure again: the estimate misses alignment
        excess = firmware.sizes.rom_bytes - limit + (0 if shared else SHARED_DW_KERNEL_BYTES)
        for name in order[len(shared):]:
            shared.append(name)
            excess -= sizes[name]
            if excess <= 0:
                break
        depthwise_opt.SHARED_SHAPES = frozenset(shared)
        try:
            compiled = compile_model(graph, "optimized", board)
        finally:
            depthwise_opt.SHARED_SHAPES = frozenset()
        firmware = build_firmware(compiled, board)
    return compiled, firmware


def _shape_function_sizes(elf: Path) -> dict[str, int]:
    """Code bytes of each specialised depthwise function (mt_dw_shape_*) in the ELF, by
    shape: a planar shape's function (the _planar suffix) under the shape's name, which
    is what depthwise_opt.SHARED_SHAPES matches."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    sizes: dict[str, int] = {}
    with open(elf, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if isinstance(sec, SymbolTableSection):
                for sym in sec.iter_symbols():
                    name = sym.name.split(".")[0].removesuffix("_planar")  # gcc's .constprop.N clones
                    if name.startswith("mt_dw_shape_") and sym["st_info"]["type"] == "STT_FUNC":
                        sizes[name] = sizes.get(name, 0) + sym["st_size"]
    return sizes


def _build_into(out: Path, compiled: CompiledModel, board: Board, key: str, cmake: str, verbose: bool) -> None:
    """Build in a fresh temporary folder and rename it to ``out`` only on success, so a
    failed or interrupted build (a broken compiler caught in CMake's cache) leaves no
    cache entry behind."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.building-", dir=out.parent))
    except OSError as exc:
        raise BuildError(f"cannot write the build directory {out.parent} ({exc.strerror}); make it writable "
                         "or set MICROTILE_BUILD_DIR to a writable folder") from None
    try:
        write_export(compiled, tmp / "model", FIRMWARE_LIBRARY)  # the folder `microtile export` writes
        configure = firmware_configure_command(board, tmp / "model", key, tmp, cmake=cmake)
        for cmd in (configure, [cmake, "--build", str(tmp)]):
            proc = _run_group(cmd)
            if proc.returncode != 0:
                raise build_failure(proc, f"firmware build failed ({' '.join(cmd[:3])} ...)", compiled, board)
            if verbose:
                print(proc.stdout)
        if out.exists() and not (out / "microtile.elf").exists():
            shutil.rmtree(out)  # a half-built folder left by an older microtile
        try:
            tmp.rename(out)
        except OSError:
            if not (out / "microtile.elf").exists():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_group(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a build step in its own process group, so that an interrupted build (Ctrl-C,
    SIGTERM) ends CMake, Ninja and the compilers together, leaving none running."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def build_failure(proc: subprocess.CompletedProcess, what: str, compiled: CompiledModel,
                  board: Board) -> Exception:
    """The error for a failed build: DoesNotFitError when the linker ran out of a memory
    region (naming it), a one-line BuildError for a stack frame over the bound
    (CMakeLists.txt), BuildError with the end of the log otherwise."""
    frame = stack_frame_error(proc.stdout + proc.stderr)
    if frame:
        return BuildError(f"{what}: {frame}")
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    if "overflowed" in log or "will not fit in region" in log:
        return DoesNotFitError(
            f"model {compiled.graph.name} does not fit {board.name}: the linker says\n"
            + "\n".join(line for line in log.splitlines() if "overflow" in line or "fit in region" in line)
        )
    return BuildError(f"{what}:\n{log}")


_FUNCTION_LINE = re.compile(r"In function '([^']+)'")
_STACK_USAGE_LINE = re.compile(r"^(\S+?):\d+:\d+: error: stack usage (is|might be) (\d+) bytes|"
                               r"^(\S+?):\d+:\d+: error: stack usage (might be unbounded)", re.M)


def stack_frame_error(log: str) -> str | None:
    """The first `-Werror=stack-usage` error of a compiler log as one sentence (which
    function, how many bytes, where to put the memory), or None."""
    match = _STACK_USAGE_LINE.search(log)
    if match is None:
        return None
    functions = _FUNCTION_LINE.findall(log[:match.start()])
    function = functions[-1] if functions else "?"
    path = match.group(1) or match.group(4)
    size = f"{match.group(3)} bytes" if match.group(3) else "unbounded"
    limit = re.search(r"-Werror=stack-usage=(\d+)", log)
    bound = f" (the bound is {limit.group(1)} bytes, half the board's stack)" if limit else " (over the bound)"
    return (f"function {function} in {Path(path).name} uses {size} of stack{bound}; move large buffers "
            "into the arena (or a static buffer) instead of locals")


def elf_sizes(elf: Path, board: Board) -> ElfSizes:
    """Flash and static RAM from the ELF's allocated sections, placed by address."""
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    rom = ram = stack = 0
    with open(elf, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if not sec["sh_flags"] & SH_FLAGS.SHF_ALLOC or sec["sh_size"] == 0:
                continue
            size, addr = sec["sh_size"], sec["sh_addr"]
            in_ram = board.region_of(addr) != "flash"
            if sec.name.startswith(".stack"):
                stack += size
            elif in_ram:
                ram += size
            if not in_ram or sec["sh_type"] != "SHT_NOBITS":
                rom += size  # code, constants, and the initial values of .data
    return ElfSizes(rom, ram, stack)
