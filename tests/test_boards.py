"""Boards and board ports: every boards/*.yaml loads and is consistent (clock tree,
bus limits, pins, pyOCD target, emulator), the firmware cross-compiles for every board
and each image fits that board (checked in the ELF with pyelftools), and the
NUCLEO-F446RE image serves the protocol on QEMU netduinoplus2, reporting its clock
fallback and its counters as unavailable."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from microtile.targets.boards import (
    BoardError,
    firmware_cmake_defines,
    list_boards,
    load_board,
    port_defines,
)

REPO = Path(__file__).resolve().parents[1]
NUCLEOS = ["nucleo_f401re", "nucleo_f411re", "nucleo_f446re", "nucleo_f429zi", "nucleo_l4r5zi", "nucleo_h743zi",
           "nucleo_h743zi2"]
ALL_BOARDS = ["netduinoplus2", *NUCLEOS]

# Datasheet limits (max core clock, max APB1 and APB2 clock) per MCU
LIMITS = {
    "STM32F401RE": (84e6, 42e6, 84e6),
    "STM32F411RE": (100e6, 50e6, 100e6),
    "STM32F446RE": (180e6, 45e6, 90e6),
    "STM32F429ZI": (180e6, 45e6, 90e6),
    "STM32L4R5ZI": (120e6, 120e6, 120e6),
    "STM32H743ZI": (480e6, 120e6, 120e6),
}
# (flash bytes, SRAM bytes for .data/.bss/arena) per MCU, from the datasheets
MEMORY = {
    "STM32F401RE": (512 << 10, 96 << 10),
    "STM32F411RE": (512 << 10, 128 << 10),
    "STM32F446RE": (512 << 10, 128 << 10),
    "STM32F429ZI": (2 << 20, 192 << 10),
    "STM32L4R5ZI": (2 << 20, 640 << 10),
    "STM32H743ZI": (2 << 20, 512 << 10),
}


# ---- the YAMLs ----

def test_every_board_is_there_and_loads() -> None:
    names = [b.name for b in list_boards()]
    assert sorted(names) == sorted(ALL_BOARDS)
    for alias, name in (("qemu", "netduinoplus2"), ("nucleo-f446re", "nucleo_f446re"),
                        ("nucleo-h743zi", "nucleo_h743zi"), ("nucleo-h743zi2", "nucleo_h743zi2")):
        assert load_board(alias).name == name


@pytest.mark.parametrize("name", NUCLEOS)
def test_nucleo_board_is_consistent(name: str) -> None:
    b = load_board(name)
    max_hz, apb1_max, apb2_max = LIMITS[b.mcu]
    c = b.clock
    assert c.source in ("hsi", "hse-bypass") and c.pll is not None
    assert c.sysclk_hz == b.clock_hz <= max_hz
    assert c.apb1_hz <= apb1_max and c.apb2_hz <= apb2_max
    assert c.pll_source_hz() % c.pll.input_hz == 0 and c.hsi_hz % c.pll.input_hz == 0
    assert c.reset_hz > 0 and c.flash_wait_states > 0
    if b.clock_hz > 168e6 and b.port == "stm32f4":
        assert c.overdrive, "F4 above 168 MHz needs over-drive"
    if b.port == "stm32l4":
        assert c.boost and c.flash_wait_states == 5
    if b.port == "stm32h7":
        assert b.core == "cortex-m7" and c.caches and "-mcpu=cortex-m7" in b.cpu_flags
    flash, sram = MEMORY[b.mcu]
    assert b.flash.origin == 0x08000000 and b.flash.size == flash
    assert b.ram.size == sram
    assert b.counter_unit == "cycles" and b.counter_source == "dwt"
    assert b.pyocd is not None and b.pyocd.target and b.board_id
    assert b.uart.tx and b.uart.rx and b.uart.af is not None and b.uart.baudrate == 115200
    assert b.trigger is not None
    assert b.fpu and b.dsp
    # emulator: a stand-in that is not faithful, or a note saying why there is none
    if b.emulator is not None:
        assert b.emulator.board == "netduinoplus2" and not b.emulator.faithful
        assert b.emulator.machine == "netduinoplus2"
    assert b.emulator_notes


def test_vcp_wiring_follows_the_board_manuals() -> None:
    """Nucleo-64: USART2 PA2/PA3; Nucleo-144: USART3 PD8/PD9, but the L4R5ZI's VCP is
    LPUART1 on PG7/PG8 (UM2179); trigger on Arduino D7 (PA8 / PF13; PG12 on the
    H743ZI2's MB1364, UM2407)."""
    for name in ("nucleo_f401re", "nucleo_f411re", "nucleo_f446re"):
        u = load_board(name).uart
        assert (u.name, str(u.tx), str(u.rx), u.af) == ("USART2", "PA2", "PA3", 7)
        assert str(load_board(name).trigger) == "PA8"
    for name in ("nucleo_f429zi", "nucleo_h743zi", "nucleo_h743zi2"):
        u = load_board(name).uart
        assert (u.name, str(u.tx), str(u.rx), u.af) == ("USART3", "PD8", "PD9", 7)
    u = load_board("nucleo_l4r5zi").uart
    assert (u.name, str(u.tx), str(u.rx), u.af) == ("LPUART1", "PG7", "PG8", 8)
    for name in ("nucleo_f429zi", "nucleo_l4r5zi", "nucleo_h743zi"):
        assert str(load_board(name).trigger) == "PF13"
    assert str(load_board("nucleo_h743zi2").trigger) == "PG12"


def test_h743zi_and_h743zi2_are_separate_boards() -> None:
    """Same MCU and clock tree, different board (MB1137 vs MB1364): each has its own
    ST-LINK board id and its own D7, so its trigger pin comes from its own YAML."""
    old, new = load_board("nucleo_h743zi"), load_board("nucleo_h743zi2")
    assert (old.board_id, new.board_id) == ("0813", "0836")
    assert old.clock == new.clock and old.memories == new.memories and old.uart == new.uart
    assert "MT_TRIGGER_PORT=6u" in port_defines(new) and "MT_TRIGGER_PIN=12u" in port_defines(new)
    assert "MT_TRIGGER_PORT=5u" in port_defines(old) and "MT_TRIGGER_PIN=13u" in port_defines(old)


def test_h7_port_addresses_gpiog() -> None:
    """The stm32h7 port's GPIO block and clock-enable bit for port G (index 6), checked by
    the cross-compiler against RM0433: GPIOG at 0x58021800, RCC_AHB4ENR.GPIOGEN = bit 6."""
    _need_tools()
    import subprocess

    check = ("#include <stdint.h>\n#include \"mt_family.h\"\n"
             "_Static_assert(MT_GPIO_BASE(6u) == 0x58021800u, \"GPIOG base\");\n"
             "_Static_assert(MT_GPIO_BASE(10u) == 0x58022800u, \"GPIOK base\");\n")
    proc = subprocess.run(["arm-none-eabi-gcc", "-fsyntax-only", "-DMT_UART_USART3=1",
                           f"-I{REPO / 'firmware' / 'ports' / 'stm32h7'}", "-x", "c", "-"],
                          input=check, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    family_c = (REPO / "firmware" / "ports" / "stm32h7" / "family.c").read_text()
    assert "MT_REG32(RCC_AHB4ENR) |= 1u << port;" in family_c and "RCC_AHB4ENR (RCC + 0xE0u)" in family_c


def test_pyocd_targets_exist_in_pyocd() -> None:
    """Targets without a pack are built into pyOCD 0.46; the others are what pyOCD's
    own board table names for the board, installed with `pyocd pack install`."""
    pytest.importorskip("pyocd")
    from pyocd.board.board_ids import BOARD_ID_TO_INFO
    from pyocd.target import TARGET

    for name in NUCLEOS:
        b = load_board(name)
        assert b.pyocd is not None
        if b.pyocd.pack:
            assert b.pyocd.target not in TARGET
            assert BOARD_ID_TO_INFO[b.board_id].target == b.pyocd.target
        else:
            assert b.pyocd.target in TARGET
        assert BOARD_ID_TO_INFO[b.board_id].name.lower().replace("-", "_").startswith(name)


def test_port_defines_carry_the_yaml() -> None:
    d = port_defines(load_board("nucleo_f446re"))
    for want in ("MT_CLK_SOURCE_HSE_BYPASS=1", "MT_CLK_PLL_N=180u", "MT_CLK_OVERDRIVE=1", "MT_UART_USART2=1",
                 "MT_UART_TX_PORT=0u", "MT_UART_TX_PIN=2u", "MT_UART_AF=7u", "MT_TRIGGER_PIN=8u"):
        assert want in d
    assert port_defines(load_board("qemu"))[0] == "MT_CLK_SOURCE_NONE=1"
    assert not any(x.startswith("MT_TRIGGER") for x in port_defines(load_board("qemu")))
    h7 = firmware_cmake_defines("nucleo_h743zi", ".", "1")
    assert h7["MT_EXTRA_REGIONS"] == "DTCM:0x20000000:0x20000" and h7["MT_STACK_REGION"] == "DTCM"
    assert firmware_cmake_defines("nucleo_f446re", ".", "1")["MT_ICOUNT_SHIFT"] == "0"


def _write_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes) -> None:
    data = yaml.safe_load((REPO / "boards" / "nucleo_f446re.yaml").read_text())
    for key, value in changes.items():
        node = data
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    shutil.copy(REPO / "boards" / "netduinoplus2.yaml", tmp_path / "netduinoplus2.yaml")
    (tmp_path / "nucleo_f446re.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr("microtile.targets.boards.BOARDS_DIR", tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"clock.pll.n": 170}, "the PLL gives 170000000 Hz"),
    ({"uart.name": "UART7"}, "not supported by port stm32f4"),
    ({"uart.tx": "PZ2"}, "must look like PA2"),
    ({"trigger": {"port": "A", "pin": 16}}, "no GPIO pin PA16"),
    ({"clock.source": "pll"}, "clock.source must be one of"),
    ({"clock.apb1_div": 3}, "apb1_div must be 1, 2, 4, 8 or 16"),
    ({"pyocd": {"pack": True}}, "pyocd must be null or"),
    ({"port": "stm32f7"}, "port must be one of"),
    ({"emulator.board": "nucleo_f446re"}, "names the board itself"),
    ({"counter.source": "systick-icount"}, "needs clock.source none"),
])
def test_bad_board_yaml_is_refused_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        change: dict, message: str) -> None:
    _write_board(tmp_path, monkeypatch, **change)
    with pytest.raises(BoardError, match=message.replace("(", r"\(")):
        load_board("nucleo_f446re")


def test_boards_command_lists_every_board(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from microtile import cli

    monkeypatch.setattr(cli.console, "width", 250)  # a wide terminal: no truncated cells
    assert cli.main(["boards"]) == 0
    out = capsys.readouterr().out
    for name in ALL_BOARDS:
        assert name in out
    assert "180 MHz" in out and "stm32f446retx" in out and "LPUART1" in out
    l4 = next(line for line in out.splitlines() if "nucleo_l4r5zi" in line)
    assert "timing model" in l4  # no QEMU machine: --emulate runs on the timing model


# ---- firmware for every board ----

def _need_tools() -> None:
    for tool in ("arm-none-eabi-gcc", "cmake", "ninja"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make setup)")


@pytest.fixture(scope="module")
def op_add():
    from microtile.codegen.model_source import compile_model
    from microtile.importer.tflite_format import load_tflite
    from microtile_models.build import zoo_model_bytes

    return compile_model(load_tflite(zoo_model_bytes("op_add")))


@pytest.fixture(scope="module")
def firmwares(op_add) -> dict:
    _need_tools()
    from microtile.build.firmware import build_firmware

    return {name: build_firmware(op_add, load_board(name)) for name in ALL_BOARDS}


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_image_fits_its_board(firmwares: dict, name: str) -> None:
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    board = load_board(name)
    fw = firmwares[name]
    with open(fw.elf, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_machine"] == "EM_ARM"
        vec = elf.get_section_by_name(".isr_vector")
        assert vec is not None and vec["sh_addr"] == board.flash.origin, "vector table at the flash origin"
        sp, reset = struct.unpack_from("<II", vec.data(), 0)
        stack = board.memories[board.stack_region]
        assert stack.origin < sp <= stack.end and sp % 8 == 0, f"initial SP {sp:#x} in {board.stack_region}"
        assert board.flash.origin <= reset < board.flash.end and reset & 1, f"reset vector {reset:#x}"
        entry = elf["e_entry"]
        assert entry | 1 == reset
        used: dict[str, int] = {}
        for sec in elf.iter_sections():
            if not sec["sh_flags"] & SH_FLAGS.SHF_ALLOC or sec["sh_size"] == 0:
                continue
            start, end = sec["sh_addr"], sec["sh_addr"] + sec["sh_size"]
            region = board.region_of(start)
            assert region is not None and board.region_of(end - 1) == region, \
                f"section {sec.name} [{start:#x}, {end:#x}) outside {name}'s memories"
            used[region] = used.get(region, 0) + sec["sh_size"]
            if sec["sh_type"] != "SHT_NOBITS" and region != "flash":
                used["flash"] = used.get("flash", 0) + sec["sh_size"]  # initial values of .data
        # the handler of the link UART sits at its interrupt's slot
        symbols = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()}
        irqn = {"USART2": 38, "USART3": 39, "LPUART1": 70}[board.uart.name]
        slot = struct.unpack_from("<I", vec.data(), 4 * (16 + irqn))[0]
        assert slot == symbols["mt_uart_irq_handler"] | 1
        counter = "mt_systick" if board.counter_source == "systick-icount" else "SysTick_Handler"
        assert counter in symbols
    for region, size in used.items():
        assert size <= board.memories[region].size, f"{region}: {size} bytes"
    assert fw.sizes.rom_bytes <= board.flash.size
    assert fw.sizes.ram_static_bytes <= board.ram.size


@pytest.mark.parametrize("name", ["nucleo_f446re", "nucleo_l4r5zi", "nucleo_h743zi2"])
def test_each_port_family_builds_warning_free(tmp_path: Path, name: str) -> None:
    """One board per family (stm32f4, stm32l4, stm32h7) with -Wall -Wextra."""
    _need_tools()
    import subprocess

    from microtile.targets.boards import firmware_configure_command

    configure = firmware_configure_command(name, REPO / "tests" / "fixtures" / "tiny_model", "a1", tmp_path)
    for cmd in (configure, ["cmake", "--build", str(tmp_path)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    assert (tmp_path / "microtile.elf").is_file()


def test_real_boards_have_clock_code_and_the_emulated_one_none(firmwares: dict) -> None:
    """mt_family_clock_init programs the clock tree on every Nucleo image; on the
    emulated board (clock.source none) it only reports the fixed clock."""
    from elftools.elf.elffile import ELFFile

    def size_of(name: str, symbol: str) -> int:
        with open(firmwares[name].elf, "rb") as f:
            syms = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(symbol)
            assert syms, f"{symbol} missing in {name}"
            return int(syms[0]["st_size"])

    assert size_of("netduinoplus2", "mt_family_clock_init") < 32
    for name in NUCLEOS:
        assert size_of(name, "mt_family_clock_init") > 120, name


# ---- the NUCLEO-F446RE image on QEMU ----

@pytest.mark.qemu
def test_f446re_image_serves_the_protocol_on_qemu(firmwares: dict, op_add) -> None:
    """The Nucleo image on the emulated F405: the PLL never locks (RCC is not emulated),
    so it runs on HSI and says so; QEMU has no DWT, so counts are 'none', not 0 cycles;
    the model still computes bit-exactly."""
    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm not installed (make setup)")
    from microtile.check.reference import run_reference
    from microtile.targets.qemu import QemuTarget

    board = load_board("nucleo_f446re")
    assert board.emulator is not None and board.emulator.machine == "netduinoplus2"
    fw = firmwares["nucleo_f446re"]
    rng = np.random.default_rng(7)
    with QemuTarget(board, fw.elf) as target:
        link = target.link
        info = link.info()
        assert info.board == "nucleo_f446re" and info.build_id == fw.build_id
        assert info.counter_unit == "none"
        assert info.clock_hz == board.clock.reset_hz == 16_000_000  # HSI fallback
        assert info.port_status & 0x02, "PLL time-out reported"  # MT_PORT_FAIL_PLL
        assert info.port_status & 0x40, "missing cycle counter reported"  # MT_PORT_FAIL_COUNTER
        assert "pll-timeout" in info.port_status_text and "reset clock" in info.port_status_text
        assert link.echo(b"\x00\x01microtile\xff") == b"\x00\x01microtile\xff"
        graph = op_add.graph
        for _ in range(3):
            arrays = [rng.integers(-128, 128, size=graph.tensor(t).shape, dtype=np.int8)
                      for t in graph.inputs]
            for i, arr in enumerate(op_add.to_device(arrays)):
                link.write_input(i, np.ascontiguousarray(arr).tobytes())
            link.invoke(1)  # an ADD written over its input consumes it (docs/protocol.md, INVOKE)
            want = run_reference(graph, arrays)
            for i, t in enumerate(op_add.device_outputs):
                got = np.frombuffer(link.read_output(i), dtype=graph.tensor(t).dtype)
                assert np.array_equal(got, np.asarray(want[i]).reshape(-1))
        counters = link.read_counters()
        assert counters.unit == "none" and counters.invokes == 1
        assert counters.total == 0 and set(counters.layers) == {0}
        assert 0 < counters.stack_bytes < board.stack_size
        assert link.calibrate(1000) == 0
        # a reset boots the same image again, with the same fallback
        info2 = link.reset()
        assert info2.port_status == info.port_status and info2.counter_unit == "none"
