"""The timing model (host/microtile/measure/timing.py): short instruction sequences whose
cycle counts the Cortex-M4 TRM states, assembled with arm-none-eabi-gcc and run on
the engine; flash wait states and the ART accelerator on loops; and per-layer
instruction counts equal to QEMU's on a zoo model."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from microtile.targets.boards import load_board
from microtile.measure.timing import TIMING, FirmwareTiming, TimingEngine

pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")

QEMU_BOARD = load_board("qemu")  # netduinoplus2: no wait states in its YAML
L4 = load_board("nucleo_l4r5zi")  # 5 wait states at 120 MHz, ART on
SRAM = 0x20001000  # r1 points here: data in SRAM (zero wait states)
P = TIMING["cortex-m4"]["P"]
RETURN = 1 + P  # the function's final `bx lr`


def assemble(tmp_path, body: str, data: str = "", name: str = "f") -> TimingEngine:
    """A flat function `f` (plus optional read-only data `table`) linked at the flash
    origin, loaded on an engine for QEMU_BOARD."""
    src = tmp_path / f"{name}.S"
    src.write_text(".syntax unified\n.thumb\n.text\n.global f\n.type f, %function\n.align 4\nf:\n"
                   f"{body}\n    bx lr\n.align 4\n.global table\ntable:\n{data}\n")
    elf = tmp_path / f"{name}.elf"
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-nostdlib", "-nostartfiles",
                    "-Wl,-Ttext=0x08000000", "-Wl,-e,f", str(src), "-o", str(elf)], check=True)
    return elf


def cycles(tmp_path, body: str, board=QEMU_BOARD, r0: int = 0, data: str = "") -> tuple[int, int]:
    engine = TimingEngine(assemble(tmp_path, body, data), board)
    t = engine.call(engine.symbols["f"], r0, SRAM)
    return t.instructions, t.cycles


# (body, TRM cycles of the body without the final bx lr)
TRM_CASES = {
    "add": ("add r0, r0, #1", 1),
    "mul": ("mul r0, r0, r0", 1),
    "mla": ("mla r0, r0, r0, r0", 1),
    "smlad": ("smlad r0, r2, r3, r0", 1),
    "smull": ("smull r2, r3, r0, r0", 1),
    "ldr": ("ldr r0, [r1]", 2),
    "ldr pipelined": ("ldr r0, [r1]\n ldr r2, [r1, #4]\n ldr r3, [r1, #8]", 2 + 1 + 1),
    "str imm": ("str r0, [r1]", 1),
    "ldr after str": ("str r0, [r1]\n ldr r2, [r1, #4]", 1 + 2),  # nothing pipelines after a store
    "ldrd": ("ldrd r2, r3, [r1]", 3),
    "ldm 4": ("ldm r1, {r2, r3, r4, r5}", 1 + 4),
    "push pop": ("push {r4, r5, r6}\n pop {r4, r5, r6}", (1 + 3) + (1 + 3)),
    "taken branch": ("b 1f\n nop\n1:", 1 + P),
    "not taken": ("cmp r0, #1\n beq 1f\n nop\n1:", 1 + 1 + 1),
    "taken conditional": ("cmp r0, #0\n beq 1f\n nop\n1:", 1 + 1 + P),
    "cbz taken": ("cbz r0, 1f\n nop\n1:", 1 + P),
}


@pytest.mark.parametrize("name", list(TRM_CASES))
def test_trm_sequence_cycles(tmp_path, name):
    body, expected = TRM_CASES[name]
    _, base = cycles(tmp_path, "")
    assert base == RETURN
    _, total = cycles(tmp_path, body)
    assert total - RETURN == expected


def test_loop_counts_and_branch_refills(tmp_path):
    body = "1:\n subs r0, r0, #1\n bne 1b"
    n = 50
    insns, total = cycles(tmp_path, body, r0=n)
    assert insns == 2 * n + 1  # + bx lr
    # every iteration but the last takes the branch back (1 + P), the last falls through
    assert total - RETURN == (n - 1) * (1 + 1 + P) + (1 + 1)


def test_flash_wait_states_art_icache_loop(tmp_path):
    """The loop's code misses the ART's instruction cache once, then hits: the stall
    does not grow with the iterations, and at zero wait states there is none."""
    body = "1:\n subs r0, r0, #1\n bne 1b"
    _, fast10 = cycles(tmp_path, body, r0=10)
    _, slow10 = cycles(tmp_path, body, board=L4, r0=10)
    _, fast100 = cycles(tmp_path, body, r0=100)
    _, slow100 = cycles(tmp_path, body, board=L4, r0=100)
    assert slow10 > fast10  # the first fetch of each line waits 5 cycles
    assert slow100 - fast100 == slow10 - fast10  # later iterations hit the cache
    assert slow10 - fast10 <= 2 * L4.clock.flash_wait_states  # the function spans at most two lines


def _table(words: int) -> str:
    return "\n".join(f".word {i}" for i in range(words))


def test_flash_data_reads_art_dcache(tmp_path):
    """Loads from flash go through the ART data cache: one miss (5 wait states) per
    32-byte line on a sequential scan; a repeated read of one word misses once; a table
    larger than the 8-line cache misses again on a second pass."""
    ws = L4.clock.flash_wait_states
    line = TIMING["memory"]["art"]["stm32l4"]["line_bytes"]
    lines = TIMING["memory"]["art"]["stm32l4"]["dcache_lines"]
    scan = "ldr r1, =table\n1:\n ldr r2, [r1], #4\n subs r0, r0, #1\n bne 1b"
    words = lines * line // 4  # exactly the cache: 8 lines of 32 bytes
    engine = TimingEngine(assemble(tmp_path, scan, _table(2 * words)), L4)
    fast = TimingEngine(assemble(tmp_path, scan, _table(2 * words), name="g"), QEMU_BOARD)
    f = engine.symbols["f"]
    first = engine.call(f, words)
    zero = fast.call(f, words)
    assert first.flash_data_reads == words + 1  # + the literal-pool load of `table`
    data_misses = words * 4 // line
    assert first.cycles - zero.cycles - first.stall_cycles == 0
    # the instruction side misses at most 2 lines; the data side once per line (+ the literal)
    assert ws * data_misses <= first.stall_cycles <= ws * (data_misses + 1 + 2)
    again = engine.call(f, words)  # 8 lines + the literal's line: LRU thrashes, all miss again
    assert again.stall_cycles >= ws * data_misses
    same = "ldr r1, =table\n1:\n ldr r2, [r1]\n subs r0, r0, #1\n bne 1b"
    e2 = TimingEngine(assemble(tmp_path, same, _table(4), name="h"), L4)
    once = e2.call(e2.symbols["f"], 100)
    assert once.flash_data_reads == 101
    assert once.stall_cycles <= ws * (1 + 1 + 2)  # the word's line, the literal's line, code lines


@pytest.mark.qemu
def test_layer_instructions_equal_qemu_and_run_json(tmp_path):
    """The engine's per-layer instructions on the built firmware equal QEMU's counts
    for the same build and input (the noop-call overhead subtracted as the device
    does), and the run JSON carries est_cycles per layer and in the total."""
    from microtile_models import zoo

    from microtile.measure.inputs import load_samples
    from microtile.measure.runner import run_model
    from microtile.importer.tflite_format import write_tflite
    from microtile.measure.timing import estimate

    model = tmp_path / "kws.tflite"
    model.write_bytes(write_tflite(zoo.ds_cnn_kws()))
    result = run_model(model, "qemu", random=1, seed=3)
    assert result.error is None and result.mismatch_count == 0
    sample = load_samples(result.compiled.graph, None, 1, None, None, seed=3)[0]
    inputs = [np.ascontiguousarray(a).tobytes() for a in result.compiled.to_device(sample.arrays)]
    timing = estimate(result.firmware.elf, result.board, inputs)
    assert [t.instructions for t in timing.layers] == result.mean_counts()
    data = result.to_json()
    assert [entry["est_cycles"] for entry in data["layers"]] == [t.cycles for t in timing.layers]
    assert data["total"]["est_cycles"] == sum(t.cycles for t in timing.layers) > data["total"]["instructions"]
    assert data["timing_model"]["board"] == "netduinoplus2" and data["timing_model"]["flash_wait_states"] == 0
    assert data["timing_model"]["samples"] == 1 and data["timing_model"]["error"] is None


def test_run_emulate_on_a_board_without_qemu(tmp_path):
    """`microtile run --board nucleo_l4r5zi --emulate`: no QEMU machine models the L4,
    so the timing model runs the board's own image (its memory map, 5 wait states at
    120 MHz), bit-exact with TFLM, with estimated cycles and time at the board clock."""
    import json
    import subprocess
    import sys

    from microtile_models import zoo

    from microtile.importer.tflite_format import write_tflite

    model = tmp_path / "fc.tflite"
    model.write_bytes(write_tflite(zoo.fc_autoencoder_ad()))
    out = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "run", str(model), "--board", "nucleo_l4r5zi",
                           "--emulate", "--random", "2", "--json", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "est. cycles" in proc.stdout and "est. µs" in proc.stdout and "bit-exact with TFLM" in proc.stdout
    data = json.loads(out.read_text())
    assert data["counter_unit"] == "instructions" and data["samples"] == 2
    tm = data["timing_model"]
    assert (tm["board"], tm["clock_hz"], tm["flash_wait_states"], tm["target"]) == \
        ("nucleo_l4r5zi", 120_000_000, 5, True)
    total = data["total"]
    assert total["est_cycles"] == sum(layer["est_cycles"] for layer in data["layers"]) > total["instructions"] > 0
    assert total["est_time_us"] == pytest.approx(total["est_cycles"] / 120, rel=1e-6)
    assert data["ram"]["stack_bytes"] > 0


def test_docs_render_the_one_table():
    """docs/timing.md shows TIMING as `python -m microtile.measure.timing --table` renders it."""
    from pathlib import Path

    from microtile.measure.timing import table_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "timing.md").read_text()
    begin, end = "<!-- timing-table:begin -->\n", "<!-- timing-table:end -->"
    assert doc[doc.index(begin) + len(begin):doc.index(end)] == table_markdown()


def test_cortex_m7_dual_issue_approximation(tmp_path):
    """On the H7 model two independent ALU instructions issue together; a dependent
    pair does not (memory stalls aside)."""
    h7 = load_board("nucleo_h743zi")

    def core_cycles(body: str) -> int:
        engine = TimingEngine(assemble(tmp_path, body), h7)
        t = engine.call(engine.symbols["f"], 0, SRAM)
        return t.cycles - t.stall_cycles

    base = core_cycles("")
    assert core_cycles("add r0, r0, #1\n add r2, r2, #1") - base == 1
    assert core_cycles("add r0, r0, #1\n add r0, r0, #1") - base == 2
    assert core_cycles("ldr r2, [r1]\n ldr r3, [r1, #4]") - base == 2  # one load/store per cycle


def test_not_a_firmware_elf_is_one_line_error(tmp_path):
    from microtile.errors import MicrotileError

    with pytest.raises(MicrotileError, match="not a microtile firmware ELF"):
        FirmwareTiming(assemble(tmp_path, "nop"), QEMU_BOARD)
    with pytest.raises(MicrotileError, match="cannot read"):
        FirmwareTiming(tmp_path / "missing.elf", QEMU_BOARD)
    elsewhere = tmp_path / "high.elf"
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-nostdlib", "-Wl,-Ttext=0x30000000",
                    "-Wl,-e,f", str(tmp_path / "f.S"), "-o", str(elsewhere)], check=True)
    with pytest.raises(MicrotileError, match="outside the memories of netduinoplus2"):
        TimingEngine(elsewhere, QEMU_BOARD)
