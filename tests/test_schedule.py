"""The schedule model (host/microtile/passes/schedule.py): tile choice follows the formula,
the cost model's counts, the int16-weights flash budget, --explain rows."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from microtile.passes import schedule
from microtile.codegen.model_source import compile_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from microtile_models.zoo import single_op  # noqa: E402


def test_register_budget_gives_four_accumulators():
    assert schedule.ACCUMULATORS == 13 - 3 - 4 - 2 == 4


@pytest.mark.parametrize("m, expected", [(1, (1, 4)), (3, (1, 4)), (4, (4, 1)), (125, (4, 1))])
def test_tile_follows_rows(m, expected):
    assert schedule.choose_tile(m, k_blocks=16, stack_budget=3072) == expected


def test_tile_falls_back_when_the_panel_does_not_fit_the_stack():
    kb = 144  # K = 576 (3x3x64)
    assert schedule.panel_bytes(4, kb) > 3072
    assert schedule.choose_tile(256, kb, stack_budget=3072) == (1, 4)
    assert schedule.choose_tile(256, kb, stack_budget=8192) == (4, 1)


@pytest.mark.parametrize("mr, nr, wide, expected", [
    (4, 1, False, 8 + 2 + 1 + 2 + 1),   # 8 SMLAD, 2 LDM, LDR, 2 SXTB16, loop
    (1, 4, False, 8 + 1 + 1 + 8 + 1),   # 8 SMLAD, LDRD, LDM, 8 SXTB16, loop
    (4, 1, True, 8 + 2 + 1 + 0 + 1),
    (1, 4, True, 8 + 1 + 2 + 0 + 1),
])
def test_block_instructions(mr, nr, wide, expected):
    assert schedule.block_instructions(mr, nr, wide) == expected


def test_rows_side_is_cheaper_with_int8_weights():
    # the formula's reason for 4x1: extending int8 weights costs more than panel rows
    assert schedule.ideal_ipm(4, 1, False) < schedule.ideal_ipm(1, 4, False)
    assert schedule.ideal_ipm(4, 1, True) == schedule.ideal_ipm(1, 4, True) == 0.75


def test_prediction_grows_with_requant_share():
    _, small_k = schedule.predict("conv1x1", 125, 64, 16, 4, 1, False)
    _, big_k = schedule.predict("conv1x1", 125, 64, 256, 4, 1, False)
    assert small_k > big_k > schedule.ideal_ipm(4, 1, False)


@dataclass
class _Mem:
    size: int


@dataclass
class _Board:
    memories: dict
    stack_size: int = 0x2000


def test_int16_weights_are_budgeted():
    graph = single_op("FULLY_CONNECTED", shape=(1, 640), units=128)
    op = next(o for o in graph.operators if o.opcode == "FULLY_CONNECTED")
    big = _Board({"flash": _Mem(1 << 20)})
    tiny = _Board({"flash": _Mem(128 * 1024)})  # 60% = 78 KB < 82 KB int8 + 82 KB int16 copy
    assert schedule.schedule_for(op, graph, big).wide
    assert not schedule.schedule_for(op, graph, tiny).wide


def test_schedule_fields_and_explain():
    graph = single_op("CONV_2D", shape=(1, 49, 10, 1), kernel=(10, 4), stride=2, filters=64)
    op = next(o for o in graph.operators if o.opcode == "CONV_2D")
    s = schedule.schedule_for(op, graph)
    assert (s.kind, s.m, s.n, s.k) == ("conv", 125, 64, 40)
    assert s.tile == "4x1" and s.k_blocks == 10 and s.k_unroll == 8
    assert "k-first" in s.loop_order
    rows = schedule.explain(compile_model(graph, "optimized"))
    conv = [r for r in rows if r["op"] == "CONV_2D"]
    assert conv and conv[0]["tile"] == "4x1" and conv[0]["K"] == 40
    assert 1.0 < conv[0]["predicted_ipm"] < 2.33


def test_not_matmul_shaped():
    graph = single_op("AVERAGE_POOL_2D")
    op = next(o for o in graph.operators if o.opcode == "AVERAGE_POOL_2D")
    assert schedule.matmul_shape(op, graph) is None
    with pytest.raises(ValueError):
        schedule.schedule_for(op, graph)


def test_explain_names_the_kernel_of_every_layer():
    """'opt', or 'ref: <reason>' where the optimised set falls back (here a depthwise
    layer with a depth multiplier of 2 over 3 channels)."""
    from microtile.check.fuzz_ops import make_case
    from microtile.ops import kernel_for

    graph = next(g for g, _, p in (make_case("DEPTHWISE_CONV_2D", 3, i) for i in range(200))
                 if p["dm"] > 1 and p["c"] > 1)
    kernel_for(graph.operators[0]).check(graph.operators[0], graph)
    (row,) = schedule.explain(compile_model(graph, "optimized"))
    assert row["kernel"].startswith("ref: depth multiplier") and "predicted_ipm" not in row
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
    assert cells[-1] == cells[-2] == "n/a" and float(cells[-3]) > 0 and "opt" in cells  # measured, est. cycles
    assert "could not measure" in proc.stdout and "qemu-system-arm" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
