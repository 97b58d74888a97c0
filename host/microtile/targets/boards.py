"""Board descriptions: one YAML per board in ``boards/``, the single source of truth
for memory sizes, clock tree, VCP UART, trigger pin, counter, pyOCD target and
emulator. CMake gets the numbers from here (``firmware_cmake_args``), never from a
second hand-written copy; the board ports read them as ``MT_*`` macros."""
from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from microtile.errors import MicrotileError
from microtile.paths import REPO_ROOT

# boards/ at the repository root; MT_BOARDS_DIR overrides it (e.g. out-of-tree boards).
BOARDS_DIR = Path(os.environ.get("MT_BOARDS_DIR", REPO_ROOT / "boards"))

COUNTER_UNITS = ("instructions", "cycles")
COUNTER_SOURCES = ("systick-icount", "dwt")
CLOCK_SOURCES = ("none", "hsi", "hse-bypass")
PORTS = ("stm32f4", "stm32l4", "stm32h7")
# UART instances each port knows (firmware/ports/<port>/family.c)
PORT_UARTS = {"stm32f4": ("USART2", "USART3"), "stm32l4": ("LPUART1",), "stm32h7": ("USART3",)}
GPIO_PORTS = "ABCDEFGHIJK"


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
class Pin:
    """A GPIO pin, e.g. PA2 = Pin("A", 2)."""
    port: str
    pin: int

    @property
    def port_index(self) -> int:
        return GPIO_PORTS.index(self.port)

    def __str__(self) -> str:
        return f"P{self.port}{self.pin}"


@dataclass(frozen=True)
class Uart:
    """The UART wired to the ST-LINK virtual COM port (or QEMU's -serial)."""
    name: str
    baudrate: int = 115200
    tx: Pin | None = None
    rx: Pin | None = None
    af: int | None = None  # GPIO alternate function of tx and rx


@dataclass(frozen=True)
class Pll:
    input_hz: int  # after the input divider (M)
    n: int  # VCO multiplier
    div: int  # VCO -> system clock (P on F4/H7, R on L4)
    q: int = 2


@dataclass(frozen=True)
class ClockTree:
    """How the port brings the core to clock_hz. source "none": leave the clock as it
    is (emulators); otherwise PLL from HSI or from HSE in bypass (8 MHz from the
    ST-LINK), falling back to the reset clock (reset_hz) when a wait times out."""
    source: str = "none"
    hse_hz: int = 0
    hsi_hz: int = 0
    reset_hz: int = 0
    pll: Pll | None = None
    flash_wait_states: int = 0
    ahb_div: int = 1
    apb1_div: int = 1
    apb2_div: int = 1
    vos: int = 0
    overdrive: bool = False
    boost: bool = False
    caches: bool = False

    def pll_source_hz(self, use_hse: bool | None = None) -> int:
        hse = self.source == "hse-bypass" if use_hse is None else use_hse
        return self.hse_hz if hse else self.hsi_hz

    @property
    def sysclk_hz(self) -> int:
        """System clock with the PLL running (0 without a PLL)."""
        return self.pll.input_hz * self.pll.n // self.pll.div if self.pll else 0

    @property
    def hclk_hz(self) -> int:
        return self.sysclk_hz // self.ahb_div

    @property
    def apb1_hz(self) -> int:
        return self.hclk_hz // self.apb1_div

    @property
    def apb2_hz(self) -> int:
        return self.hclk_hz // self.apb2_div


@dataclass(frozen=True)
class Pyocd:
    target: str
    pack: bool = False  # needs `pyocd pack install <target>`


@dataclass(frozen=True)
class Emulator:
    """The QEMU machine that runs this board's image. For a real board it is the
    stand-in's (``emulator: {board: netduinoplus2}``): then ``faithful`` is false and
    ``notes`` says what differs (clock, counters)."""
    program: str
    machine: str
    icount_shift: int = 8
    serial_index: int = 1  # which -serial the firmware's UART is
    board: str | None = None  # the emulated board standing in, None: this board itself
    faithful: bool = True
    notes: str = ""


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
    fpu: str = ""
    dsp: bool = False
    clock: ClockTree = field(default_factory=ClockTree)
    trigger: Pin | None = None
    pyocd: Pyocd | None = None
    board_id: str | None = None  # ST-LINK (mbed) board id, e.g. "0777"
    emulator_notes: str = ""  # why there is no emulator, or what the stand-in misses
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
        """True for a board that only exists in an emulator (no probe to flash)."""
        return self.emulator is not None and self.pyocd is None

    @property
    def extra_ram(self) -> list[MemoryRegion]:
        """RAM regions besides flash and ram (CCM, DTCM), in YAML order."""
        return [r for n, r in self.memories.items() if n not in ("flash", "ram")]

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


def _pin(spec: Any, where: str) -> Pin | None:
    """"PA2" or {port: A, pin: 2} -> Pin; None/null -> None."""
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip().upper()
        if len(text) >= 3 and text[0] == "P" and text[1] in GPIO_PORTS and text[2:].isdigit():
            port, pin = text[1], int(text[2:])
        else:
            raise BoardError(f"{where}: pin {spec!r} must look like PA2")
    elif isinstance(spec, dict) and "port" in spec and "pin" in spec:
        port, pin = str(spec["port"]).upper(), int(spec["pin"])
    else:
        raise BoardError(f"{where}: pin must be like PA2 or {{port: A, pin: 2}}, got {spec!r}")
    if port not in GPIO_PORTS or not 0 <= pin <= 15:
        raise BoardError(f"{where}: no GPIO pin P{port}{pin} (ports {GPIO_PORTS[0]}..{GPIO_PORTS[-1]}, pins 0..15)")
    return Pin(port, pin)


def _clock(spec: dict[str, Any], where: str) -> ClockTree:
    source = str(spec.get("source", "none"))
    if source not in CLOCK_SOURCES:
        raise BoardError(f"{where}: clock.source must be one of {CLOCK_SOURCES}, got {source!r}")
    if source == "none":
        return ClockTree()
    w = f"{where} clock"
    pll = spec.get("pll") or {}
    tree = ClockTree(
        source=source,
        hse_hz=_int(spec, "hse_hz", w) if source == "hse-bypass" else int(spec.get("hse_hz", 0)),
        hsi_hz=_int(spec, "hsi_hz", w),
        reset_hz=_int(spec, "reset_hz", w),
        pll=Pll(_int(pll, "input_hz", f"{w}.pll"), _int(pll, "n", f"{w}.pll"), _int(pll, "div", f"{w}.pll"),
                int(pll.get("q", 2))),
        flash_wait_states=_int(spec, "flash_wait_states", w),
        ahb_div=int(spec.get("ahb_div", 1)), apb1_div=int(spec.get("apb1_div", 1)),
        apb2_div=int(spec.get("apb2_div", 1)), vos=int(spec.get("vos", 0)),
        overdrive=bool(spec.get("overdrive", False)), boost=bool(spec.get("boost", False)),
        caches=bool(spec.get("caches", False)),
    )
    assert tree.pll is not None
    for src in ("hsi_hz",) + (("hse_hz",) if source == "hse-bypass" else ()):
        hz = getattr(tree, src)
        if hz % tree.pll.input_hz:
            raise BoardError(f"{w}: {src} {hz} is not a multiple of pll.input_hz {tree.pll.input_hz}")
    for key in ("ahb_div", "apb1_div", "apb2_div"):
        if getattr(tree, key) not in (1, 2, 4, 8, 16):
            raise BoardError(f"{w}: {key} must be 1, 2, 4, 8 or 16")
    return tree


def _emulator(spec: Any, stem: str, where: str) -> tuple[Emulator | None, str]:
    """(the Emulator that runs this board's image, notes). ``{program, machine}``: the
    board is an emulated machine; ``{board: other}``: that emulated board stands in;
    ``{board: null, notes}``: nothing does."""
    if not spec:
        return None, ""
    notes = " ".join(str(spec.get("notes") or "").split())
    if "machine" in spec:
        return Emulator(program=str(spec["program"]), machine=str(spec["machine"]),
                        icount_shift=int(spec.get("icount_shift", 8)),
                        serial_index=int(spec.get("serial_index", 1)),
                        faithful=bool(spec.get("faithful", True)), notes=notes), notes
    other = spec.get("board")
    if other is None:
        return None, notes
    if str(other) == stem:
        raise BoardError(f"{where}: emulator.board names the board itself")
    stand_in = load_board(str(other)).emulator
    if stand_in is None or stand_in.board is not None:
        raise BoardError(f"{where}: emulator.board {other} is not an emulated machine")
    return Emulator(program=stand_in.program, machine=stand_in.machine, icount_shift=stand_in.icount_shift,
                    serial_index=int(spec.get("serial_index", stand_in.serial_index)),
                    board=str(other), faithful=bool(spec.get("faithful", False)), notes=notes), notes


def load_board(name: str) -> Board:
    """Load boards/<name>.yaml (or an alias such as "qemu")."""
    files = _board_files()
    stem = name if name in files else _aliases().get(name)
    if stem is None:
        aliases = ", ".join(f"{a} -> {b}" for a, b in sorted(_aliases().items()))
        known = {**_aliases(), **{f: f for f in files}}  # name or alias -> board
        close, seen = [], set()
        for match in difflib.get_close_matches(name.lower(), known, n=6, cutoff=0.6):
            if known[match] not in seen:  # one suggestion per board, not per alias
                seen.add(known[match])
                close.append(match)
        raise BoardError(
            f"unknown board '{name}'"
            + (f" (did you mean {' or '.join(close[:3])}?)" if close else "")
            + f"; available boards: {', '.join(files) or '(none)'}"
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
    source = str(counter.get("source", "dwt"))
    if source not in COUNTER_SOURCES:
        raise BoardError(f"{where}: counter.source must be one of {COUNTER_SOURCES}, got {source!r}")
    emulator, emulator_notes = _emulator(data.get("emulator"), stem, where)
    uart = data.get("uart") or {}
    port = str(data.get("port", "stm32f4"))
    if port not in PORTS:
        raise BoardError(f"{where}: port must be one of {PORTS} (firmware/ports/<port>), got {port!r}")
    uart_name = str(uart.get("name", "USART2"))
    if uart_name not in PORT_UARTS[port]:
        raise BoardError(f"{where}: uart.name {uart_name} is not supported by port {port} "
                         f"(it knows {', '.join(PORT_UARTS[port])}); add it to firmware/ports/{port}/family.c")
    pyocd = data.get("pyocd")
    if pyocd is not None and not (isinstance(pyocd, dict) and pyocd.get("target")):
        raise BoardError(f"{where}: pyocd must be null or {{target: <pyocd target>, pack: true|false}}")
    clock = _clock(data.get("clock") or {}, where)
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
        uart=Uart(uart_name, int(uart.get("baudrate", 115200)),
                  _pin(uart.get("tx"), f"{where} uart.tx"), _pin(uart.get("rx"), f"{where} uart.rx"),
                  int(uart["af"]) if uart.get("af") is not None else None),
        counter_unit=unit,
        counter_source=source,
        emulator=emulator,
        aliases=tuple(str(a) for a in data.get("aliases", []) or []),
        fpu=str(data.get("fpu") or ""),
        dsp=bool(data.get("dsp", False)),
        clock=clock,
        trigger=_pin(data.get("trigger"), f"{where} trigger"),
        pyocd=Pyocd(str(pyocd["target"]), bool(pyocd.get("pack", False))) if pyocd else None,
        board_id=str((data.get("probe") or {}).get("board_id")) if (data.get("probe") or {}).get("board_id") else None,
        emulator_notes=emulator_notes,
        path=path,
        raw=data,
    )
    if clock.source != "none" and clock.sysclk_hz != board.clock_hz:
        raise BoardError(f"{where}: the PLL gives {clock.sysclk_hz} Hz (input_hz x n / div), "
                         f"but clock_hz is {board.clock_hz}")
    if clock.source != "none" and board.counter_source == "systick-icount":
        raise BoardError(f"{where}: counter.source systick-icount needs clock.source none (an emulator)")
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
        # further RAM regions (CCM, DTCM) as NAME:origin:size, ;-separated
        "MT_EXTRA_REGIONS": ";".join(f"{r.name.upper()}:{hex(r.origin)}:{hex(r.size)}" for r in board.extra_ram),
        "MT_STACK_SIZE": hex(stack_size if stack_size is not None else board.stack_size),
        "MT_STACK_REGION": board.stack_region.upper(),
        "MT_COUNTER_SOURCE": board.counter_source,
        "MT_ICOUNT_SHIFT": str(board.emulator.icount_shift
                               if board.emulator and board.counter_source == "systick-icount" else 0),
        "MT_PORT_DEFINES": ";".join(port_defines(board)),
    }
    return defs


def port_defines(board: Board) -> list[str]:
    """The C macros the board port (firmware/ports/) compiles with: clock tree, UART,
    trigger pin. Each ``NAME=value``; see firmware/ports/common/mt_port_common.h."""
    c = board.clock
    out = [f"MT_CLK_SOURCE_{c.source.upper().replace('-', '_')}=1"]
    if c.source != "none":
        assert c.pll is not None
        out += [f"MT_CLK_HSE_HZ={c.hse_hz}u", f"MT_CLK_HSI_HZ={c.hsi_hz}u", f"MT_CLK_RESET_HZ={c.reset_hz}u",
                f"MT_CLK_PLL_IN_HZ={c.pll.input_hz}u", f"MT_CLK_PLL_N={c.pll.n}u", f"MT_CLK_PLL_DIV={c.pll.div}u",
                f"MT_CLK_PLL_Q={c.pll.q}u", f"MT_CLK_FLASH_WS={c.flash_wait_states}u",
                f"MT_CLK_AHB_DIV={c.ahb_div}u", f"MT_CLK_APB1_DIV={c.apb1_div}u", f"MT_CLK_APB2_DIV={c.apb2_div}u",
                f"MT_CLK_VOS={c.vos}u", f"MT_CLK_OVERDRIVE={int(c.overdrive)}", f"MT_CLK_BOOST={int(c.boost)}",
                f"MT_CLK_CACHES={int(c.caches)}"]
    u = board.uart
    out += [f"MT_UART_{u.name}=1", f"MT_UART_BAUD={u.baudrate}u"]
    if u.tx and u.rx and u.af is not None:
        out += [f"MT_UART_TX_PORT={u.tx.port_index}u", f"MT_UART_TX_PIN={u.tx.pin}u",
                f"MT_UART_RX_PORT={u.rx.port_index}u", f"MT_UART_RX_PIN={u.rx.pin}u", f"MT_UART_AF={u.af}u"]
    if board.trigger:
        out += [f"MT_TRIGGER_PORT={board.trigger.port_index}u", f"MT_TRIGGER_PIN={board.trigger.pin}u"]
    return out


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
    """``python -m microtile.targets.boards cmake NAME``: print set() lines for CMake when it was
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
    print("usage: python -m microtile.targets.boards cmake BOARD | list", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1:]))
    except MicrotileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
