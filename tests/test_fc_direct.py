"""FULLY_CONNECTED on the direct 1x4 tile (mt_gemm_rows_1x4d_*): the input row is read
and extended inside the tile loop, so the layer takes no arena scratch (issue 9: AD's
K = 640 layer kept a 1,280 B int16 panel, 2,048 B of arena against TFLM's 768 B).
Native builds, bit-exact with TFLM; the panel variant is run beside it."""
from __future__ import annotations

import numpy as np
import pytest

from microtile.build.native import NativeModel
from microtile.passes import schedule

from op_harness import random_int8, tflm
from test_ops_conv import fc_graph


def _build(graph, direct: bool | None, weights: str | None = None) -> NativeModel:
    # the 1x4 tile forced too: at 3 rows the cost model would pick 3x2
    schedule.FORCE_DIRECT, schedule.FORCE_WEIGHTS, schedule.FORCE_TILE = direct, weights, (1, 4)
    try:
        return NativeModel.build(graph, kernels="optimized")
    finally:
        schedule.FORCE_DIRECT, schedule.FORCE_WEIGHTS, schedule.FORCE_TILE = None, None, None


@pytest.mark.parametrize("depth,oc,batches", [(640, 128, 1), (77, 13, 1), (3, 5, 1), (61, 9, 3)])
@pytest.mark.parametrize("weights", ["int8", "int16"])
def test_direct_fc_matches_tflm(depth, oc, batches, weights):
    rng = np.random.default_rng(depth * 100 + oc)
    graph = fc_graph(rng, batches=batches, depth=depth, oc=oc, act="RELU", per_channel=True,
                     in_shape=(1, batches, depth) if batches > 1 else None)
    oracle = tflm(graph)
    x = [random_int8(rng, graph.tensor(i).shape) for i in graph.inputs]
    expected = oracle(x)[0]
    for direct in (True, False):
        model = _build(graph, direct, weights)
        assert ("mt_gemm_rows_1x4d_" in model.compiled.model_c) == direct, "wrong tile emitted"
        got = model.run(x)[0]
        assert np.array_equal(got, expected), f"direct={direct}: {int((got != expected).sum())} values differ"


def test_batch1_fc_takes_no_scratch():
    """M = 1, K = 640 (AD's first layer): the schedule picks the direct tile, its scratch
    is 0 and the planner places no scratch buffer, so the arena is the layer's in + out."""
    graph = fc_graph(np.random.default_rng(9), depth=640, oc=128)
    op = graph.operators[0]
    s = schedule.schedule_for(op, graph)
    assert s.direct and s.scratch_bytes == 0, s
    model = _build(graph, None)
    assert "NULL); /* A panel: 1x4 tile, K = 640, 0 B" in model.compiled.model_c
    assert model.compiled.plan.scratch == {}, model.compiled.plan.scratch
    assert model.compiled.plan.arena_size <= 640 + 128, model.compiled.plan.arena_size
    # the panel variant of the same layer needs the 1,280 B panel
    schedule.FORCE_DIRECT = False
    try:
        assert schedule.schedule_for(op, graph).scratch_bytes == 1280
    finally:
        schedule.FORCE_DIRECT = None


def test_direct_fc_odd_depth_on_qemu():
    """The DSP asm loop (LDR + 2 SXTB16 per block) on QEMU, K = 77 (a 1-byte tail),
    both weight formats: bit-exact with TFLM, and the direct tile was emitted."""
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    from microtile_models.zoo import single_op

    from microtile.importer.tflite_format import write_tflite
    from microtile.measure.runner import run_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fc77.tflite"
        path.write_bytes(write_tflite(single_op("FULLY_CONNECTED", shape=(1, 77), units=13)))
        for weights in ("int8", "int16"):
            schedule.FORCE_WEIGHTS = weights
            try:
                result = run_model(path, "qemu", random=2, kernels="optimized")
            finally:
                schedule.FORCE_WEIGHTS = None
            assert "mt_gemm_rows_1x4d_w%d" % (weights == "int16") in result.compiled.model_c
            assert not result.mismatches, (weights, result.mismatches)
