"""The schedule model (host/microtile/passes/schedule.py): tile choice follows the formula,
the cost model's counts, the int16-weights flash budget, --explain rows."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from microtile.passes import schedule
from microtile.codegen.model_source import compile_model
from microtile.targets.boards import load_board

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from microtile_models.zoo import single_op  # noqa: E402


def test_register_budget_gives_four_accumulators():
    assert schedule.ACCUMULATORS == 13 - 3 - 4 - 2 == 4


@pytest.mark.parametrize("m, expected", [(1, (1, 4)), (2, (1, 4)), (3, (3, 2)), (125, (3, 2))])
def test_tile_follows_rows(m, expected):
    assert schedule.choose_tile(m, k_blocks=16, stack_budget=3072) == expected


def test_tile_falls_back_when_the_panel_does_not_fit_the_stack():
    kb = 144  # K = 576 (3x3x64)
    assert schedule.panel_bytes(3, kb) > 3072
    assert schedule.choose_tile(256, kb, stack_budget=3072) == (1, 4)
    assert schedule.choose_tile(256, kb, stack_budget=8192) == (3, 2)


@pytest.mark.parametrize("mr, nr, wide, expected", [
    (3, 2, False, 6 + 16 + 3 / 8),      # 4 LDR + 2 LDRD, 4 SXTB16 + 12 SMLAD, LDR end + CMP + BNE per 8 blocks
    (3, 2, True, 1 + 3 + 12 + 3 / 8),   # LDM, 3 LDRD, 12 SMLAD
    (4, 1, False, 1 + 2 + 10 + 1),      # LDR, 2 LDM, 2 SXTB16 + 8 SMLAD, SUBS + BNE per 2 blocks
    (1, 4, False, 1 + 1 + 16 + 1),      # LDRD, LDM, 8 SXTB16 + 8 SMLAD
    (4, 1, True, 1 + 2 + 8 + 1),
    (1, 4, True, 1 + 2 + 8 + 1),
])
def test_block_instructions(mr, nr, wide, expected):
    assert schedule.block_instructions(mr, nr, wide) == expected


def test_block_cycles_follow_the_timing_table(monkeypatch):
    """Cortex-M4 at zero wait states: 3x2 int8 = LDR 2 + 3 pipelined LDR 1 + 2 LDRD 3 +
    16 DSP 1 = 27, plus the loop (LDR 2 + CMP 1 + BNE 1 + refill 2) per 8 blocks; behind
    5 wait states the 8 weight bytes of a block cost 5 * 8/32; in SRAM nothing. The
    figures are TIMING's."""
    from microtile.measure.timing import TIMING

    assert schedule.block_cycles(3, 2, False) == 27 + 6 / 8
    assert schedule.block_cycles(4, 1, False) == 2 + 2 * 5 + 10 + 4 / 2
    l4 = schedule.target_of(load_board("nucleo_l4r5zi"))
    assert (l4.core, l4.wait_states, l4.line_bytes) == ("cortex-m4", 5, 32)
    assert schedule.block_cycles(3, 2, False, l4) == 27.75 + 5 * 8 / 32
    assert schedule.block_cycles(3, 2, False, l4, sram=True) == 27.75
    monkeypatch.setitem(TIMING["cortex-m4"]["cycles"], "load_dual", 4)
    assert schedule.block_cycles(3, 2, False) == 29 + 0.75


@dataclass
class _Mem:
    size: int


@dataclass
class _Board:
    memories: dict
    stack_size: int = 0x2000
    stack_region: str = "ram"


def _fc(units=128, depth=640):
    graph = single_op("FULLY_CONNECTED", shape=(1, depth), units=units)
    return graph, next(o for o in graph.operators if o.opcode == "FULLY_CONNECTED")


def test_int16_weights_only_within_the_flash_budget():
    """Zero wait states: int16 copies save cycles, so they are taken when --flash-budget
    grants the flash; by default (reference ROM + 10 %) they do not fit."""
    graph, op = _fc()
    board = _Board({"flash": _Mem(1 << 20), "ram": _Mem(1 << 20)})
    assert not schedule.schedule_for(op, graph, board).wide
    try:
        schedule.set_flash_budget(1 << 20)
        graph, op = _fc()
        s = schedule.schedule_for(op, graph, board)
        schedule.FORCE_WEIGHTS = "int8"
        assert s.wide and s.predicted_cpm < schedule.schedule_for(op, graph, board).predicted_cpm
    finally:
        schedule.FORCE_WEIGHTS = None
        schedule.set_flash_budget(None)


def test_int8_over_int16_when_flash_wait_states_are_high():
    """The H7's flash line fill (2 x (wait states + 1) x 4 cycles) makes the doubled
    weight bytes of int16 copies cost more than the SXTB16s they save: int8, even with
    all the flash granted; the same layer at zero wait states takes int16."""
    h7 = schedule.target_of(load_board("nucleo_h743zi"))
    assert h7.miss_cycles > 20
    assert schedule.block_cycles(1, 4, True, h7) > schedule.block_cycles(1, 4, False, h7)
    assert schedule.block_cycles(1, 4, True) < schedule.block_cycles(1, 4, False)
    try:
        schedule.set_flash_budget(2 << 20)
        graph, op = _fc()
        assert not schedule.schedule_for(op, graph, load_board("nucleo_h743zi")).wide
        graph, op = _fc()
        assert schedule.schedule_for(op, graph, load_board("netduinoplus2")).wide
    finally:
        schedule.set_flash_budget(None)


def test_weights_in_sram_only_when_the_ram_allows():
    """82 KB of FC weights: copied to SRAM on the L4R5 (640 KB), kept in flash on the
    F401 (96 KB less the stack, activations and reserve), and the estimate says why."""
    graph, op = _fc()
    l4 = schedule.schedule_for(op, graph, load_board("nucleo_l4r5zi"))
    f4 = schedule.schedule_for(op, graph, load_board("nucleo_f401re"))
    assert l4.sram and not f4.sram
    assert l4.weights == "int8, SRAM" and f4.weights == "int8"
    assert l4.predicted_cpm < f4.predicted_cpm  # no wait states on the weights (the F401 has 2, L4R5 5)
    assert schedule.ram_spare(graph, load_board("nucleo_f401re")) < 640 * 128


def test_prediction_grows_with_requant_share():
    _, small_k = schedule.predict("conv1x1", 125, 64, 16, 3, 2, False)
    _, big_k = schedule.predict("conv1x1", 125, 64, 256, 3, 2, False)
    assert small_k > big_k > schedule.ideal_ipm(3, 2, False)
    _, small_c = schedule.predict_cycles(125, 64, 16, 3, 2, False)
    _, big_c = schedule.predict_cycles(125, 64, 256, 3, 2, False)
    assert small_c > big_c > schedule.block_cycles(3, 2, False) / 24


def test_schedule_fields_and_explain():
    graph = single_op("CONV_2D", shape=(1, 49, 10, 1), kernel=(10, 4), stride=2, filters=64)
    op = next(o for o in graph.operators if o.opcode == "CONV_2D")
    s = schedule.schedule_for(op, graph)
    assert (s.kind, s.m, s.n, s.k) == ("conv", 125, 64, 40)
    assert s.tile == "3x2" and s.k_blocks == 10 and s.k_unroll == 32
    assert "k-first" in s.loop_order
    rows = schedule.explain(compile_model(graph, "optimized"))
    conv = [r for r in rows if r["op"] == "CONV_2D"]
    assert conv and conv[0]["tile"] == "3x2" and conv[0]["K"] == 40
    assert 1.0 < conv[0]["predicted_ipm"] < 2.33
    # estimated cycles beside instructions: more cycles than instructions (2-cycle loads, refills)
    assert conv[0]["predicted_ipm"] < conv[0]["predicted_cpm"] < 2 * conv[0]["predicted_ipm"]
    pool = single_op("AVERAGE_POOL_2D")
    (row,) = schedule.explain(compile_model(pool, "optimized"))
    assert row["predicted_cpm"] > row["predicted_ipm"] > 0


def test_not_matmul_shaped():
    graph = single_op("AVERAGE_POOL_2D")
    op = next(o for o in graph.operators if o.opcode == "AVERAGE_POOL_2D")
    assert schedule.matmul_shape(op, graph) is None
    with pytest.raises(ValueError):
        schedule.schedule_for(op, graph)


def test_explain_names_the_kernel_of_every_layer():
    """'opt', or 'ref: <reason>' where the optimised set falls back (here the first
    fuzzed depthwise layer the optimised kernel refuses, with the kernel's own reason)."""
    from microtile.check.fuzz_ops import make_case
    from microtile.ops import kernel_for

    def refused(graph):
        op = graph.operators[0]
        kernel_for(op).check(op, graph)
        return kernel_for(op).opt_fallback(op, graph)

    graph = next(g for g, _, p in (make_case("DEPTHWISE_CONV_2D", 3, i) for i in range(200)) if refused(g))
    (row,) = schedule.explain(compile_model(graph, "optimized"))
    assert row["kernel"] == "ref: " + refused(graph) and "predicted_ipm" not in row
    (row,) = schedule.explain(compile_model(graph, "reference"))
    assert row["kernel"] == "ref"
    conv = single_op("CONV_2D", shape=(1, 8, 8, 4), kernel=(3, 3), filters=8)
    assert [r["kernel"] for r in schedule.explain(compile_model(conv, "optimized")) if r["op"] == "CONV_2D"] == ["opt"]


def test_compile_explain_prints_the_schedule_when_the_measurement_fails(tmp_path):
    """No qemu-system-arm on PATH: the build works, the measurement cannot run. The
    predicted schedule is still printed (measured n/a), then the error; exit 2 (missing
    tool; a target failure gives 3)."""
    import os
    import shutil
    import subprocess

    from microtile_models.build import zoo_model_bytes

    model = tmp_path / "fc.tflite"
    model.write_bytes(zoo_model_bytes("op_fc_relu"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-g++", "arm-none-eabi-objcopy", "arm-none-eabi-size",
                 "arm-none-eabi-ar", "arm-none-eabi-ranlib", "cmake", "ninja", "gcc", "cc", "ld", "as"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = dict(os.environ, PATH=str(bin_dir))
    proc = subprocess.run([sys.executable, "-m", "microtile.cli", "compile", str(model), "--explain"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "FULLY_CONNECTED" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    # measured instructions and est. cycles n/a; predicted instructions and est. cycles per MAC
    assert cells[-1] == cells[-3] == "n/a" and float(cells[-2]) > float(cells[-4]) > 0 and "opt" in cells
    assert "could not measure" in proc.stdout and "qemu-system-arm" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_rom_within_ten_percent_of_the_reference_build():
    """Without --flash-budget the optimised build of an FC 640 -> 128 (82 KB of weights)
    takes at most the reference build's ROM + 10 % (before the cost model's ROM budget,
    60 % of the flash went to int16 copies: +82 KB); with the flash granted, int16
    copies make it larger."""
    from microtile.build.firmware import build_firmware

    board = load_board("nucleo_l4r5zi")
    roms = {}
    for kernels in ("reference", "optimized"):
        graph, _ = _fc()
        roms[kernels] = build_firmware(compile_model(graph, kernels, board), board).sizes.rom_bytes
    assert roms["optimized"] <= 1.10 * roms["reference"], roms
    try:
        schedule.set_flash_budget(2 << 20)
        board0 = load_board("netduinoplus2")  # zero wait states: int16 copies pay off
        graph, op = _fc()
        assert schedule.schedule_for(op, graph, board0).wide
    finally:
        schedule.set_flash_budget(None)


@pytest.mark.parametrize("command", ["run", "bench", "compile", "export"])
def test_flash_budget_option(command, capsys):
    """--flash-budget BYTES on run, bench, compile and export: a bad value is one line
    and exit 2 (argparse), before anything is built."""
    from microtile.cli import main

    extra = ["--out", "unused"] if command == "export" else []
    with pytest.raises(SystemExit) as exc:
        main([command, "missing.tflite", *extra, "--flash-budget", "-5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--flash-budget: '-5' is not a positive number of bytes" in err and "Traceback" not in err


def test_flash_budget_reaches_the_schedule(tmp_path):
    """The option sets the budget the schedule plans with (0x... accepted)."""
    from microtile.cli import main

    code = main(["compile", str(tmp_path / "missing.tflite"), "--flash-budget", "0x200000"])
    try:
        assert code == 2 and schedule.FLASH_BUDGET == 0x200000  # the missing model fails after parsing
    finally:
        schedule.set_flash_budget(None)
