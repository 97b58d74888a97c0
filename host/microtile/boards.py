"""Board descriptions: one YAML per board in ``boards/``, the single source of truth
for memory sizes, clock, UART and emulator. CMake gets the numbers from here
(``firmware_cmake_args``), never from a second hand-written copy."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import MicrotileError

# boards/ at the repository root; MT_BOARDS_DIR overrides it (e.g. out-of-tree boards).
BOARDS_DIR = Path(os.environ.get("MT_BOARDS_DIR", Path(__file__).resolve().parents[2] / "boards"))
REPO_ROOT = Path(__file__).resolve().parents[2]

COUNTER_UNITS = ("instructions", "cycles")


class BoardError(MicrotileError):
    """A board name that does not exist or a board YAML that is malformed."""


@dataclass(frozen=True)
class MemoryRegion:
    name: str
    origin: int
    size: int

    @property
    def end(self) -> int:
        return self.origin + self.size


@dataclass(frozen=True)
class Uart:
    name: str
    baudrate: int = 115200


@dataclass(frozen=True)
class Emulator:
    program: str
    machine: str
    icount_shift: int = 8
    serial_index: int = 1  # which -serial the firmware's UART is


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    mcu: str
    core: str
    cpu_flags: tuple[str, ...]
    clock_hz: int
    port: str
    memories: dict[str, MemoryRegion]
    stack_size: int
    stack_region: str  # "ram" or "ccm": where the linker puts the stack
    uart: Uart
    counter_unit: str
    counter_source: str
    emulator: Emulator | None = None
    aliases: tuple[str, ...] = ()
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def flash(self) -> MemoryRegion:
        return self.memories["flash"]

    @property
    def ram(self) -> MemoryRegion:
        return self.memories["ram"]

    @property
    def ccm(self) -> MemoryRegion | None:
        return self.memories.get("ccm")

    @property
    def flash_bytes(self) -> int:
        return self.flash.size

    @property
    def ram_bytes(self) -> int:
        """SRAM for stack, .data, .bss and the arena (CCM not included)."""
        return self.ram.size

    def region_of(self, addr: int) -> str | None:
        """Name of the memory region ("flash", "ram", "ccm") holding addr, or None."""
        for region in self.memories.values():
            if region.origin <= addr < region.end:
                return region.name
        return None

    @property
    def is_emulated(self) -> bool:
        return self.emulator is not None

    def ram_for_data(self) -> int:
        """Bytes of SRAM left for .data/.bss/arena once the stack has its place."""
        return self.ram.size - (self.stack_size if self.stack_region == "ram" else 0)


def _board_files() -> dict[str, Path]:
    if not BOARDS_DIR.is_dir():
        raise BoardError(f"board directory {BOARDS_DIR} not found; set MT_BOARDS_DIR to the repo's boards/")
    return {p.stem: p for p in sorted(BOARDS_DIR.glob("*.yaml"))}


def _aliases() -> dict[str, str]:
    out: dict[str, str] = {}
    for stem, path in _board_files().items():
        data = yaml.safe_load(path.read_text()) or {}
        for alias in data.get("aliases", []) or []:
            out[str(alias)] = stem
    return out


def board_names() -> list[str]:
    """Names of the boards in boards/ (aliases not included)."""
    return list(_board_files())


def list_boards() -> list[Board]:
    """Every board in boards/, loaded, sorted by name."""
    return [load_board(name) for name in board_names()]


def _int(data: dict[str, Any], key: str, where: str) -> int:
    try:
        value = data[key]
    except KeyError:
        raise BoardError(f"{where}: missing '{key}'") from None
    if isinstance(value, str):
        value = int(value, 0)
    if not isinstance(value, int) or value < 0:
        raise BoardError(f"{where}: '{key}' must be a non-negative integer, got {value!r}")
    return value


def load_board(name: str) -> Board:
    """Load boards/<name>.yaml (or an alias such as "qemu")."""
    files = _board_files()
    stem = name if name in files else _aliases().get(name)
    if stem is None:
        aliases = ", ".join(f"{a} -> {b}" for a, b in sorted(_aliases().items()))
        raise BoardError(
            f"unknown board '{name}'; available boards: {', '.join(files) or '(none)'}"
            + (f" (aliases: {aliases})" if aliases else "")
        )
    path = files[stem]
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BoardError(f"{where}: not valid YAML: {exc}") from None

    memories: dict[str, MemoryRegion] = {}
    for region, spec in (data.get("memories") or {}).items():
        memories[region] = MemoryRegion(region, _int(spec, "origin", f"{where} memories.{region}"),
                                        _int(spec, "size", f"{where} memories.{region}"))
    for required in ("flash", "ram"):
        if required not in memories:
            raise BoardError(f"{where}: memories.{required} is required")

    counter = data.get("counter") or {}
    unit = counter.get("unit", "cycles")
    if unit not in COUNTER_UNITS:
        raise BoardError(f"{where}: counter.unit must be one of {COUNTER_UNITS}, got {unit!r}")
    emu = data.get("emulator")
    emulator = None
    if emu:
        emulator = Emulator(program=str(emu["program"]), machine=str(emu["machine"]),
                            icount_shift=int(emu.get("icount_shift", 8)),
                            serial_index=int(emu.get("serial_index", 1)))
    uart = data.get("uart") or {}
    board = Board(
        name=stem,
        description=str(data.get("description", "")),
        mcu=str(data.get("mcu", "")),
        core=str(data.get("core", "cortex-m4")),
        cpu_flags=tuple(str(f) for f in data.get("cpu_flags", [])),
        clock_hz=_int(data, "clock_hz", where),
        port=str(data.get("port", "stm32f4")),
        memories=memories,
        stack_size=_int(data, "stack_size", where) if "stack_size" in data else 0x2000,
        stack_region=str(data.get("stack_region", "ram")),
        uart=Uart(str(uart.get("name", "USART2")), int(uart.get("baudrate", 115200))),
        counter_unit=unit,
        counter_source=str(counter.get("source", "dwt")),
        emulator=emulator,
        aliases=tuple(str(a) for a in data.get("aliases", []) or []),
        path=path,
        raw=data,
    )
    if board.stack_region not in memories or board.stack_region == "flash":
        raise BoardError(f"{where}: stack_region must name a RAM region of memories, got {board.stack_region!r}")
    if board.stack_size >= memories[board.stack_region].size:
        raise BoardError(f"{where}: stack_size {board.stack_size} does not fit in {board.stack_region}")
    return board


def firmware_cmake_defines(board: Board | str, model_dir: str | Path, build_id: str,
                           stack_size: int | None = None) -> dict[str, str]:
    """The -D variables the top-level CMakeLists.txt needs, all derived from the YAML."""
    if isinstance(board, str):
        board = load_board(board)
    if not build_id or any(c not in "0123456789abcdefABCDEF" for c in build_id):
        raise BoardError(f"build id must be a non-empty hex string, got {build_id!r}")
    defs = {
        "MT_BOARD": board.name,
        "MT_PORT": board.port,
        "MT_MODEL_DIR": str(Path(model_dir).resolve()),
        "MT_BUILD_ID": build_id,
        "MT_CPU_FLAGS": " ".join(board.cpu_flags),
        "MT_CLOCK_HZ": str(board.clock_hz),
        "MT_FLASH_ORIGIN": hex(board.flash.origin),
        "MT_FLASH_SIZE": hex(board.flash.size),
        "MT_RAM_ORIGIN": hex(board.ram.origin),
        "MT_RAM_SIZE": hex(board.ram.size),
        "MT_CCM_ORIGIN": hex(board.ccm.origin) if board.ccm else "0",
        "MT_CCM_SIZE": hex(board.ccm.size) if board.ccm else "0",
        "MT_STACK_SIZE": hex(stack_size if stack_size is not None else board.stack_size),
        "MT_STACK_REGION": board.stack_region.upper(),
        "MT_COUNTER_SOURCE": board.counter_source,
        "MT_ICOUNT_SHIFT": str(board.emulator.icount_shift if board.emulator else 0),
    }
    return defs


def firmware_cmake_args(board: Board | str, model_dir: str | Path, build_id: str,
                        stack_size: int | None = None) -> list[str]:
    """``-DNAME=value`` arguments for ``cmake -S <repo> -B <build>`` (add -G Ninja and
    -DCMAKE_TOOLCHAIN_FILE=firmware/cmake/arm-none-eabi.cmake yourself, or use
    ``firmware_configure_command``)."""
    return [f"-D{k}={v}" for k, v in firmware_cmake_defines(board, model_dir, build_id, stack_size).items()]


def firmware_configure_command(board: Board | str, model_dir: str | Path, build_id: str,
                               build_dir: str | Path, stack_size: int | None = None,
                               cmake: str = "cmake") -> list[str]:
    """The full configure command; then ``cmake --build <build_dir>`` gives microtile.elf."""
    return [cmake, "-G", "Ninja", "-S", str(REPO_ROOT), "-B", str(build_dir),
            f"-DCMAKE_TOOLCHAIN_FILE={REPO_ROOT / 'firmware' / 'cmake' / 'arm-none-eabi.cmake'}",
            *firmware_cmake_args(board, model_dir, build_id, stack_size)]


def _main(argv: list[str]) -> int:
    """``python -m microtile.boards cmake NAME``: print set() lines for CMake when it was
    configured without the memory variables (a plain ``cmake -DMT_BOARD=...``)."""
    if len(argv) == 2 and argv[0] == "cmake":
        defs = firmware_cmake_defines(argv[1], ".", "0")
        for key in ("MT_MODEL_DIR", "MT_BUILD_ID"):  # MT_BOARD: the canonical name, not an alias
            defs.pop(key)
        for key, value in defs.items():
            print(f'set({key} "{value}")')
        return 0
    if len(argv) == 1 and argv[0] == "list":
        print("\n".join(board_names()))
        return 0
    print("usage: python -m microtile.boards cmake BOARD | list", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1:]))
    except MicrotileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
