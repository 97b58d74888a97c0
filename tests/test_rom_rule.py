"""The ROM rule of issue 8 (passes/schedule.py): the optimised build's ROM is at most the
reference build's + 10 % (measured on the ELFs for the NUCLEO-L4R5ZI), --flash-budget
grants more and the build spends it, and a budget below the smallest optimised build is
refused with one line naming the smallest (measured) ROM and exit 2."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from microtile.build.firmware import build_firmware
from microtile.codegen.model_source import compile_model
from microtile.importer.tflite_format import load_tflite, write_tflite
from microtile.passes import schedule
from microtile.pytest_plugin import find_shared
from microtile.targets.boards import load_board

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from microtile_models.zoo import single_op  # noqa: E402

BOARD = "nucleo_l4r5zi"


def _fc():
    """One 128 x 640 FULLY_CONNECTED: 82 KB of int8 weights, an int16 copy adds 80 KB."""
    return single_op("FULLY_CONNECTED", shape=(1, 640), units=128)


def _kws():
    shared = find_shared()
    if shared is None:
        pytest.skip("MLPerf Tiny data not found: put it at ../shared beside the repo or set MICROTILE_SHARED")
    return load_tflite(shared / "models" / "mlperf_tiny" / "kws_ref_model.tflite")


def _build(graph, kernels):
    board = load_board(BOARD)
    compiled = compile_model(graph, kernels, board)
    return compiled, build_firmware(compiled, board).sizes.rom_bytes


def _predicted_cycles(compiled) -> float:
    """The cost model's estimated cycles of the matmul-shaped layers."""
    board = load_board(BOARD)
    total = 0.0
    for op in compiled.device_ops:
        if schedule.matmul_shape(op, compiled.graph) is not None:
            s = schedule.schedule_for(op, compiled.graph, board)
            total += s.predicted_cpm * s.m * s.n * s.k
    return total


@pytest.mark.parametrize("model", ["fc", "kws"])
def test_optimised_rom_within_the_reference_plus_ten_percent(model):
    """Measured ROM (text + data of the whole firmware). KWS was 60,368 B optimised against
    46,020 B reference (+31 %) before the rule was the cost model's limit."""
    graph = _fc if model == "fc" else _kws
    _, ref = _build(graph(), "reference")
    _, opt = _build(graph(), "optimized")
    assert opt <= 1.10 * ref, f"optimised {opt:,} B > 1.10 x reference {ref:,} B"


def test_flash_budget_is_spent():
    """A grant of 100 KB over the int8 build: the 80 KB int16 copy fits and is taken, the
    measured ROM goes up but stays within the budget, and the estimated cycles go down.
    (Before, the budget counted a fixed 40 KB for the code, so the copy did not fit.)"""
    try:
        schedule.FORCE_WEIGHTS = "int8"
        small, small_rom = _build(_fc(), "optimized")
        small_cycles = _predicted_cycles(small)
        schedule.FORCE_WEIGHTS = None
        budget = small_rom + 100 * 1024
        schedule.set_flash_budget(budget)
        big, big_rom = _build(_fc(), "optimized")
        big_cycles = _predicted_cycles(big)
    finally:
        schedule.FORCE_WEIGHTS = None
        schedule.set_flash_budget(None)
    assert small_rom + 64 * 1024 < big_rom <= budget, (small_rom, big_rom, budget)
    assert big_cycles < 0.95 * small_cycles, (big_cycles, small_cycles)


def test_flash_budget_below_the_smallest_build_is_refused(tmp_path, capsys):
    """One line naming the smallest ROM, exit 2 (it used to build and ignore the budget)."""
    from microtile.cli import main

    path = tmp_path / "fc.tflite"
    path.write_bytes(write_tflite(_fc()))
    try:
        code = main(["compile", str(path), "--board", BOARD, "--flash-budget", "4096"])
    finally:
        schedule.set_flash_budget(None)
    out = capsys.readouterr().out.strip()
    assert code == 2, out
    assert len(out.splitlines()) == 1 and "Traceback" not in out, out
    assert "--flash-budget 4,096 B is below the ROM of the optimised build" in out, out
    smallest = int(out.split("the smallest possible is ")[1].split(" B")[0].replace(",", ""))
    assert f"give at least {smallest:,} B" in out, out
    assert 82 * 1024 < smallest < 82 * 1024 + 40 * 1024, out  # the weights and the kernels' code


@pytest.mark.parametrize("h,w,c,k,stride,padding", [
    (12, 12, 16, 3, 2, "SAME"),   # VWW's stride 2
    (9, 7, 6, 3, 1, "SAME"),      # channels not a multiple of 4
    (6, 6, 8, 5, 1, "VALID"),     # a 5x5 window (tap loop)
])
def test_shared_depthwise_kernel_is_bit_exact(h, w, c, k, stride, padding):
    """The run-time-geometry kernel (mt_depthwise_opt.c), the ROM-cheap alternative to a
    specialised function per layer shape, matches TFLM."""
    from microtile.ops import depthwise_opt
    from op_harness import random_int8
    from test_ops_conv import conv_graph
    from test_ops_opt import check_optimized

    rng = np.random.default_rng(h * 100 + c)
    graph = conv_graph(rng, h=h, w=w, c=c, oc=c, kh=k, kw=k, sh=stride, sw=stride, padding=padding,
                       act="RELU6", depthwise=True)
    try:
        depthwise_opt.SHARED = lambda p, in_place: True
        check_optimized(graph, [random_int8(rng, (1, h, w, c))], "mt_depthwise_s8_opt_shared")
    finally:
        depthwise_opt.SHARED = None


def test_vww_depthwise_functions_are_where_its_rom_goes():
    """VWW's optimised build over the rule is mostly specialised depthwise functions: one
    per band shape or planar shape. With the shared kernel everywhere the measured ROM
    drops by at least 12 KB (measured 324,776 -> 306,284 B at 2933158; 309,952 -> 295,604 B
    once the planar kernel took the 3x3 stride-1 layers, whose functions are smaller)."""
    from microtile.ops import depthwise_opt

    shared = find_shared()
    if shared is None:
        pytest.skip("MLPerf Tiny data not found")
    path = shared / "models" / "mlperf_tiny" / "vww_96_int8.tflite"
    _, specialised = _build(load_tflite(path), "optimized")
    try:
        depthwise_opt.SHARED = lambda p, in_place: True
        _, plain = _build(load_tflite(path), "optimized")
    finally:
        depthwise_opt.SHARED = None
    assert specialised - plain >= 12 * 1024, (specialised, plain)


def test_run_and_bench_keep_vww_within_the_rule_on_measured_sizes(monkeypatch):
    """An optimised build of VWW over the rule with every depthwise shape specialised sends
    the shapes with the most code per MAC to the shared kernel until the measured ROM is
    within the rule; the rest stay specialised. --flash-budget keeps them all. VWW fits
    the default + 10 % with every shape specialised (309,952 <= 310,794 B), so the rule
    here is + 7.5 %: all shared measures 295,604 B (1.046 x), which fits."""
    from microtile.build.firmware import _shape_function_sizes, build_within_rom_rule

    shared = find_shared()
    if shared is None:
        pytest.skip("MLPerf Tiny data not found: put it at ../shared beside the repo or set MICROTILE_SHARED")
    graph = load_tflite(shared / "models" / "mlperf_tiny" / "vww_96_int8.tflite")
    board = load_board(BOARD)
    monkeypatch.setattr(schedule, "ROM_MARGIN", 0.075)
    _, ref = _build(graph, "reference")
    full, full_rom = _build(graph, "optimized")
    assert full_rom > 1.075 * ref  # the premise: all specialised breaks the rule
    compiled, fw = build_within_rom_rule(graph, compile_model(graph, "optimized", board), board)
    assert fw.sizes.rom_bytes <= 1.075 * ref, (fw.sizes.rom_bytes, ref)
    assert "mt_depthwise_s8_opt_shared(" in compiled.model_c
    kept = _shape_function_sizes(fw.elf)
    assert 0 < len(kept) < len(_shape_function_sizes(build_firmware(full, board).elf))
    schedule.set_flash_budget(full_rom + 8 * 1024)  # granted: the plan may spend it on int16 copies
    try:
        granted, fw2 = build_within_rom_rule(graph, compile_model(graph, "optimized", board), board)
    finally:
        schedule.set_flash_budget(None)
    assert "mt_depthwise_s8_opt_shared(" not in granted.model_c and fw2.sizes.rom_bytes >= full_rom


def test_a_planar_shape_can_be_shared():
    """The rule sends shapes to the shared kernel by the names in the ELF; a planar
    shape's function (KWS's 25x5x64 depthwise, mt_dw_shape_..._planar) is counted under
    its shape's name, the name depthwise_opt.SHARED_SHAPES matches, so sharing it takes
    the layers off the planar kernel (with the suffix kept, nothing matched and a build
    over the rule stayed over it)."""
    from microtile.build.firmware import _shape_function_sizes
    from microtile.ops import depthwise_opt

    shared = find_shared()
    if shared is None:
        pytest.skip("MLPerf Tiny data not found: put it at ../shared beside the repo or set MICROTILE_SHARED")
    graph = load_tflite(shared / "models" / "mlperf_tiny" / "kws_ref_model.tflite")
    board = load_board(BOARD)
    compiled = compile_model(graph, "optimized", board)
    assert "_planar(&" in compiled.model_c
    names = set(_shape_function_sizes(build_firmware(compiled, board).elf))
    assert len(names) == 1 and not any(n.endswith("_planar") for n in names), names
    depthwise_opt.SHARED_SHAPES = frozenset(names)
    try:
        again = compile_model(graph, "optimized", board)
    finally:
        depthwise_opt.SHARED_SHAPES = frozenset()
    assert "_planar(&" not in again.model_c and again.model_c.count("mt_depthwise_s8_opt_shared(") == 4


def test_a_pruned_network_keeps_the_rule_of_the_users_model():
    """`microtile approx` builds KWS with 12 channels of one group removed. Its RAM search
    picks row bands (a smaller arena within COST_SLACK of the fastest), over the rule even
    with every depthwise shape shared; the rule then takes the search's next RAM
    configuration that fits (unbanded: two planar depthwise shapes). Held to the network's own
    reference + 10 %, smaller by the pruned weights, it does not (the build keeps the
    shared kernel, about 2x the depthwise cycles); held to the user's model's, the rule of
    the model brought, it does."""
    from microtile.build.firmware import build_within_rom_rule
    from microtile.passes import channel_prune

    shared = find_shared()
    if shared is None:
        pytest.skip("MLPerf Tiny data not found: put it at ../shared beside the repo or set MICROTILE_SHARED")
    graph = load_tflite(shared / "models" / "mlperf_tiny" / "kws_ref_model.tflite")
    board = load_board(BOARD)
    group = next(g for g in channel_prune.find_groups(graph) if g.producer == 6)
    pruned = channel_prune.prune_channels(graph, [group], {6: np.arange(12)})
    search = compile_model(pruned, "optimized", board).search
    assert search.chosen is not search.fastest()  # the premise: the search chose bands
    own, _ = build_within_rom_rule(pruned, compile_model(pruned, "optimized", board), board)
    users, fw = build_within_rom_rule(pruned, compile_model(pruned, "optimized", board), board, graph)
    reference = build_firmware(compile_model(graph, "reference", board), board).sizes.rom_bytes
    assert "mt_depthwise_s8_opt_shared(" in own.model_c and own.ram == search.chosen.config
    assert "mt_depthwise_s8_opt_shared(" not in users.model_c and users.model_c.count("_planar(&") == 4
    assert users.ram != search.chosen.config and users.search.chosen.config == users.ram  # --explain's
    assert fw.sizes.rom_bytes <= (1 + schedule.ROM_MARGIN) * reference


def test_sharing_that_does_not_fit_is_not_kept(monkeypatch):
    """KWS just over the rule: sharing its 4 depthwise shapes adds the shared kernel's
    code (4.9 KB) for less than it saves, so the rule cannot be met that way; the build
    is not made bigger and slower for nothing."""
    from microtile.build.firmware import build_within_rom_rule

    shared = find_shared()
    if shared is None:
        pytest.skip("MLPerf Tiny data not found: put it at ../shared beside the repo or set MICROTILE_SHARED")
    graph = load_tflite(shared / "models" / "mlperf_tiny" / "kws_ref_model.tflite")
    board = load_board(BOARD)
    _, ref = _build(graph, "reference")
    _, rom = _build(graph, "optimized")
    monkeypatch.setattr(schedule, "ROM_MARGIN", (rom - 50) / ref - 1)  # 50 B over
    compiled, fw = build_within_rom_rule(graph, compile_model(graph, "optimized", board), board)
    assert "mt_depthwise_s8_opt_shared(" not in compiled.model_c
    assert fw.sizes.rom_bytes <= rom


def test_the_rule_tries_the_next_arena_sizes_then_the_fastest():
    """Over the rule, the RAM configurations built are one per arena size after the
    chosen one, the smallest first, ROM_RETRIES of them, and the fastest last even when
    it is the largest arena; candidates outside COST_SLACK or over the RAM budget never."""
    from microtile.build.firmware import ROM_RETRIES, _ram_alternatives
    from microtile.passes.pipeline import RamConfig
    from microtile.passes.ram_search import COST_SLACK, Candidate, RamSearch

    search = RamSearch(budget=100_000, baseline=1e6, layer_bound=90_000)
    slack = COST_SLACK * 1e6
    arenas = [20_000, 20_000, 21_000, 22_000, 23_000, 24_000, 25_000, 26_000]
    search.candidates = [Candidate(RamConfig(max_bands=i + 1), a, 0.0, 1e6 + slack * 0.5, "greedy")
                         for i, a in enumerate(arenas)]
    fastest = Candidate(RamConfig(max_bands=99), 60_000, 0.0, 1e6, "greedy")
    far = Candidate(RamConfig(max_bands=98), 19_000, 0.0, 1e6 + 2 * slack, "greedy")  # outside the slack
    big = Candidate(RamConfig(max_bands=97), 200_000, 0.0, 0.9e6, "greedy", fits=False)  # over the budget
    search.candidates += [fastest, far, big]
    search.chosen = search.ranked()[0]
    assert search.chosen.arena == 20_000 and search.fastest() is fastest
    tried = _ram_alternatives(search)
    assert [c.arena for c in tried] == [21_000, 22_000, 23_000, 24_000][:ROM_RETRIES] + [60_000]
