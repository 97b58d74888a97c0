"""Peak RAM (issue 9): the graph passes, in-place aliases, bands, the exact planner and the
search under a RAM budget, each checked bit-exact (numpy reference, native C, QEMU)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microtile.build.native import NativeModel
from microtile.check.reference import run_reference
from microtile.codegen.model_source import compile_model, prepare
from microtile.errors import DoesNotFitError
from microtile.importer.ir import Graph, Operator
from microtile.ops import kernel_for
from microtile.passes.fold_pad import fold_pad
from microtile.passes.inplace import (PANEL_ROWS, FusedPlan, PanelPlan, ResidualPlan, band_operator, band_plan,
                                      panel_plan)
from microtile.passes.pipeline import RamConfig, check_pass
from microtile.passes.planner import Alias, plan_memory
from microtile.passes.reorder import live_peak, live_profile, reorder
from microtile.targets.boards import load_board
from microtile_models import zoo
from microtile_models.float_graph import FloatNet


@pytest.fixture(scope="module")
def techniques() -> Graph:
    return zoo.build("ram_techniques")


def _inputs(graph: Graph, n: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    t = graph.tensor(graph.inputs[0])
    return [[rng.integers(-128, 128, size=t.shape).astype(t.dtype)] for _ in range(n)]


# ---------------------------------------------------------------- graph passes

def test_fold_pad_removes_the_pad_and_keeps_the_outputs(techniques):
    folded = fold_pad(techniques)
    assert [op.opcode for op in techniques.operators].count("PAD") == 1
    assert "PAD" not in [op.opcode for op in folded.operators]
    conv = folded.operators[0]
    assert conv.opcode == "CONV_2D" and conv.options["explicit_padding"] == (1, 1)
    assert conv.inputs[0] == techniques.inputs[0]  # reads the unpadded input
    assert "explicit_padding" not in techniques.operators[1].options  # the input graph is unchanged
    for x in _inputs(techniques, 3):
        check_pass(techniques, folded, x)


def test_fold_pad_leaves_a_pad_value_that_is_not_the_zero_point():
    net = FloatNet("padv", 1)
    x = net.input((1, 6, 6, 4))
    x = net.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    net.output(net.avg_pool(x, (2, 2)))  # a pool's border is not a zero contribution: never folded
    g = net.to_graph()
    assert fold_pad(g) is g


def _branchy() -> Graph:
    """Two branches, each a large tensor reduced to a small one, built (and so ordered)
    large, large, small, small: the peak holds both large tensors."""
    net = FloatNet("branchy", 2)
    x = net.input((1, 8, 8, 4))
    a = net.conv2d(x, 32, (1, 1))
    b = net.conv2d(x, 32, (1, 1))
    a = net.avg_pool(a, (8, 8))
    b = net.max_pool(b, (8, 8))
    net.output(net.add(a, b))
    return net.to_graph()


def test_reorder_lowers_the_peak_of_a_branchy_graph_and_keeps_the_outputs():
    g = _branchy()
    r = reorder(g)
    assert live_peak(g, r.operators) < live_peak(g, g.operators)
    assert [op.opcode for op in r.operators] == ["CONV_2D", "AVERAGE_POOL_2D", "CONV_2D", "MAX_POOL_2D", "ADD"]
    for x in _inputs(g, 2):
        check_pass(g, r, x)
    assert reorder(zoo.build("ds_cnn_kws")).operators  # a chain keeps its order
    plain = compile_model(g, "reference", ram=RamConfig.none())
    better = compile_model(g, "reference", ram=replace(RamConfig.none(), reorder=True))
    assert better.plan.arena_size < plain.plan.arena_size


def test_reorder_breaks_a_peak_tie_by_the_fewest_live_bytes():
    """A strided residual block as ResNet-8 builds it (conv, conv, then the shortcut conv):
    every order has the same peak, but running the shortcut before the second conv frees
    the block input earlier (and lets the shortcut write over it)."""
    net = FloatNet("shortcut", 4)
    x = net.input((1, 8, 8, 8))
    a = net.conv2d(net.conv2d(x, 16, (3, 3), stride=2), 16, (3, 3))
    net.output(net.add(net.conv2d(x, 16, (1, 1), stride=2), a))
    g = net.to_graph()
    r = reorder(g)
    (peak, total), (new_peak, new_total) = live_profile(g, g.operators), live_profile(g, r.operators)
    assert new_peak == peak and new_total < total
    for x in _inputs(g, 2):
        check_pass(g, r, x)


# ---------------------------------------------------------------- planner with aliases

def _chain(sizes: list[int]) -> Graph:
    from microtile.importer.ir import Tensor

    tensors = [Tensor(i, f"t{i}", (s,), "int8") for i, s in enumerate(sizes)]
    ops = [Operator(i - 1, "ADD", [i - 1], [i]) for i in range(1, len(sizes))]
    return Graph("chain", tensors, ops, [0], [len(sizes) - 1])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=3, max_size=9), st.data())
def test_aliased_buffers_share_bytes_only_where_an_alias_allows(sizes, data):
    g = _chain([s * 8 for s in sizes])
    n = len(sizes)
    aliases = [Alias(b, a, 8 * data.draw(st.integers(-60, 60)), "test")
               for a, b in data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=5))
               if a != b]
    scratch = {s: 8 * data.draw(st.integers(0, 50)) for s in range(n - 1)}
    for exact in (False, True):
        plan = plan_memory(g, g.operators, g.inputs, g.outputs, scratch, aliases, exact=exact, time_limit=2)
        allowed = {frozenset((a.member, a.base)) for a in plan.aliases}
        bufs = {k: (plan.offsets[k], plan.sizes[k], plan.lifetimes[k]) for k in plan.offsets}
        bufs.update({("s", s): (o, b, (s, s)) for s, (o, b) in plan.scratch.items()})
        for a in plan.aliases:
            assert plan.offsets[a.member] == plan.offsets[a.base] + a.delta
        for x, (ox, sx, lx) in bufs.items():
            assert ox >= 0 and ox % 8 == 0 and ox + sx <= plan.arena_size
            for y, (oy, sy, ly) in bufs.items():
                if x == y or lx[1] < ly[0] or ly[1] < lx[0] or frozenset((x, y)) in allowed:
                    continue
                assert ox + sx <= oy or oy + sy <= ox, (x, y, plan)


def test_exact_planner_reaches_the_layer_bound_where_largest_first_does_not():
    """MobileNetV1's first layers: TFLM's order (largest first) fragments the arena (64,512 B
    on the MLPerf model, as the planner of before); CP-SAT proves the layer-by-layer bound."""
    from microtile.passes.planner import _arena, _greedy, _Groups, tensor_lifetimes

    g = zoo.build("mobilenet_v1_vww")
    exact = prepare(g, "reference", None, replace(RamConfig.none(), exact=True)).plan
    assert exact.method == "exact" and exact.arena_size == exact.layer_bound
    life = tensor_lifetimes(g, g.operators, g.inputs, g.outputs)
    groups = _Groups(list(life), exact.sizes, life)
    largest_first = _greedy(groups, sorted(life, key=lambda i: (-exact.sizes[i], life[i][0], i)))
    assert _arena(largest_first, exact.sizes) > exact.arena_size


# ---------------------------------------------------------------- bands in place

def _simulate_bands(op: Operator, graph: Graph, bp) -> np.ndarray:
    """Run the bands on one byte array as the generated C does (input and output
    overlapping by bp.delta, bands in their order, copies before each band)."""
    x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    rng = np.random.default_rng(3)
    xv = rng.integers(-128, 128, size=x.shape).astype(np.int8)
    base = max(0, -bp.delta)
    mem = np.zeros(base + max(x.nbytes, bp.delta + y.nbytes) + 16, dtype=np.int8)
    mem[base:base + x.nbytes] = xv.reshape(-1)
    sub = Graph(graph.name, list(graph.tensors), graph.operators, graph.inputs, graph.outputs)
    kernel = kernel_for(op)
    consts = [graph.tensor(i).data if i >= 0 else None for i in op.inputs[1:]]
    for b in (reversed(bp.bands) if bp.reverse else bp.bands):
        band_op = band_operator(op, sub, b, bp)
        lo, hi = base + b.in_rows[0] * bp.in_row_bytes, base + b.in_rows[1] * bp.in_row_bytes
        rows = mem[lo:hi].copy()  # the copy (or the kernel reading before it writes: never the same bytes)
        out = kernel.reference(band_op, sub, [rows.reshape(sub.tensor(band_op.inputs[0]).shape), *consts])[0]
        at = base + bp.delta + b.out_rows[0] * bp.out_row_bytes
        if not bp.copy:  # direct bands: the band's output never touches its own input rows
            assert at + out.size <= lo or hi <= at
        mem[at:at + out.size] = out.reshape(-1)
    want = kernel.reference(op, graph, [xv, *consts])[0]
    got = mem[base + bp.delta:base + bp.delta + y.nbytes].reshape(y.shape)
    return np.array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["CONV_2D", "DEPTHWISE_CONV_2D"]), st.integers(3, 12), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from(["SAME", "VALID"]), st.integers(1, 2), st.sampled_from([1, 2, 4, 8]), st.integers(2, 9))
def test_bands_never_overwrite_rows_a_later_band_reads(opcode, h, k, stride, padding, cin_mult, cout, bands):
    net = FloatNet("band", 5)
    x = net.input((1, h, 5, 4 * cin_mult))
    if opcode == "CONV_2D":
        net.output(net.conv2d(x, cout, (k, k), stride=stride, padding=padding))
    else:
        net.output(net.depthwise_conv2d(x, (k, k), stride=stride, padding=padding))
    g = net.to_graph()
    op = g.operators[0]
    for chain in (None, (0, -4096, 64), (0, 0, 4096)):  # both directions get chosen
        bp = band_plan(op, g, bands, chain)
        if bp is not None:
            assert _simulate_bands(op, g, bp)


def _panel_reads_see_the_input(op: Operator, graph: Graph, plan: PanelPlan, mr: int) -> bool:
    """Replay mt_conv_s8_opt's order on one byte array: per group of mr output pixels, the
    receptive fields are read (they must still hold input bytes), then the outputs written."""
    p = kernel_for(op).params(op, graph)
    x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    base = max(0, -plan.delta)
    written = np.zeros(base + max(x.nbytes, plan.delta + y.nbytes), dtype=bool)
    pixels, c, oc = p["oh"] * p["ow"], p["c"], y.shape[3]
    for a in range(0, pixels, mr):
        for q in range(a, min(pixels, a + mr)):
            oy, ox = divmod(q, p["ow"])
            for ky in range(p["kh"]):
                for kx in range(p["kw"]):
                    iy, ix = oy * p["sh"] - p["ph"] + ky, ox * p["sw"] - p["pw"] + kx
                    if 0 <= iy < p["h"] and 0 <= ix < p["w"]:
                        at = base + (iy * p["w"] + ix) * c
                        if written[at:at + c].any():
                            return False
        b = min(pixels, a + mr)
        written[base + plan.delta + a * oc:base + plan.delta + b * oc] = True
    return True


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 9), st.integers(2, 7), st.integers(1, 3), st.integers(1, 2), st.sampled_from(["SAME", "VALID"]),
       st.sampled_from([1, 3, 4, 8]), st.sampled_from([1, 2, 4, 8, 16]))
def test_a_conv_in_place_never_overwrites_what_a_later_pixel_group_reads(h, w, k, stride, padding, cin, cout):
    net = FloatNet("panel", 6)
    x = net.input((1, h, w, cin))
    net.output(net.conv2d(x, cout, (k, k), stride=stride, padding=padding if k <= min(h, w) else "SAME"))
    g = net.to_graph()
    op = g.operators[0]
    assert panel_plan(op, g, "reference") is None  # TFLM's loops read the input again per channel
    for chain in (None, (0, -4096, 64), (0, 0, 4096)):
        plan = panel_plan(op, g, "optimized", chain)
        if plan is not None:
            assert plan.delta % 8 == 0
            assert all(_panel_reads_see_the_input(op, g, plan, mr) for mr in PANEL_ROWS)
    if k == 1 and stride == 1 and cout <= cin and h * w >= 2:  # pixel by pixel at the same offset
        assert panel_plan(op, g, "optimized") == PanelPlan(0)


# ---------------------------------------------------------------- native, bit-exact

# Bands both ways, fused pairs, the depthwise in place, over the device input or not.
TECHNIQUE_CONFIGS = [RamConfig(max_bands=32), RamConfig(max_bands=3, exact=False, input_inplace=False, fuse=False)]


@pytest.mark.parametrize("kernels", ["reference", "optimized"])
@pytest.mark.parametrize("config", TECHNIQUE_CONFIGS, ids=lambda c: c.label())
def test_every_technique_is_bit_exact_natively(techniques, kernels, config):
    model = NativeModel.build(techniques, kernels, ram=config)
    kinds = {a.kind for a in model.compiled.plan.aliases}
    if config.reshape_alias:
        assert {"reshape", "concat"} <= kinds
    if config.conv_inplace:
        assert "add" in kinds and model.compiled.bands
        assert "conv_2d" in kinds or not config.input_inplace  # the first conv writes over the input
        panels = [b for b in model.compiled.bands.values() if isinstance(b, PanelPlan)]
        assert bool(panels) == (kernels == "optimized")  # the optimised conv in place, whole
    if not config.fuse:
        assert "depthwise_conv_2d" in kinds
    else:  # the expansion convs run fused with their depthwise
        assert any(isinstance(b, FusedPlan) for b in model.compiled.bands.values())
    assert "PAD" not in [op.opcode for op in model.compiled.device_ops]
    for x in _inputs(techniques, 3, seed=7):
        for got, want in zip(model.run(x), run_reference(techniques, x)):
            assert np.array_equal(got, want)


@pytest.mark.parametrize("kernels", ["reference", "optimized"])
@pytest.mark.parametrize("config", [RamConfig(), RamConfig(max_bands=3, exact=False)], ids=lambda c: c.label())
@pytest.mark.parametrize("name, layers", [("resnet8_ic", 2), ("mcunet_vww", 3)])
def test_a_residual_block_runs_fused_over_its_input_bit_exact(name, layers, kernels, config):
    """ResNet-8's conv, conv, ADD; MobileNetV2's 1x1 conv, depthwise, 1x1 conv, ADD."""
    g = zoo.build(name)
    model = NativeModel.build(g, kernels, ram=config)
    fused = {s: b for s, b in model.compiled.bands.items() if isinstance(b, ResidualPlan)}
    assert fused and {len(rp.layers) for rp in fused.values()} == {layers}
    for step, rp in fused.items():
        add = model.compiled.device_ops[step]
        x = rp.layers[0].inputs[0]
        assert add.opcode == "ADD" and x in add.inputs
        assert model.compiled.plan.offsets[add.outputs[0]] == model.compiled.plan.offsets[x]  # over the block input
        outputs = sum(g.tensor(layer.outputs[0]).nbytes for layer in rp.layers)
        assert rp.scratch_bytes < outputs  # rings and a band, not the layers' outputs
    first = fused[min(fused)]  # the largest block: a small fraction
    assert first.scratch_bytes < 0.4 * sum(g.tensor(layer.outputs[0]).nbytes for layer in first.layers)
    plain = prepare(g, kernels, None, replace(config, fuse=False)).plan.arena_size
    assert model.compiled.plan.arena_size < plain
    for x in _inputs(g, 2, seed=11):
        for got, want in zip(model.run(x), run_reference(g, x)):
            assert np.array_equal(got, want)


def test_techniques_lower_the_arena_of_the_zoo_model(techniques):
    none = compile_model(techniques, "optimized", ram=RamConfig.none())
    chosen = compile_model(techniques, "optimized", load_board("qemu"))
    assert chosen.plan.arena_size < 0.75 * none.plan.arena_size
    assert chosen.plan.arena_size < chosen.plan.layer_bound


# ---------------------------------------------------------------- the search under a budget

def test_budget_below_every_configuration_names_the_smallest_arena(techniques):
    with pytest.raises(DoesNotFitError, match=r"smallest arena found is [\d,]+ B"):
        compile_model(techniques, "optimized", load_board("qemu"), ram_budget=1000)
    search = compile_model(techniques, "optimized", load_board("qemu")).search
    smallest = min(c.arena for c in search.candidates)
    tight = compile_model(techniques, "optimized", load_board("qemu"), ram_budget=smallest + 8)
    assert tight.plan.arena_size <= smallest + 8
    front = search.pareto()
    assert all(a.arena < b.arena and a.cost > b.cost for a, b in zip(front, front[1:]))


def test_cli_ram_budget_too_small_is_one_line_exit_2(tmp_path, capsys):
    from microtile.cli import main
    from microtile_models.build import zoo_model_bytes

    path = tmp_path / "m.tflite"
    path.write_bytes(zoo_model_bytes("ram_techniques"))
    from microtile.passes.ram_search import set_ram_budget

    try:
        assert main(["compile", str(path), "--ram-budget", "512"]) == 2
    finally:
        set_ram_budget(None)  # the option is process-wide, like --flash-budget
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1 and "smallest arena found" in lines[0] and "Traceback" not in captured.err


def test_mcunet_vww_needs_the_techniques_to_fit_128_kib():
    g = zoo.build("mcunet_vww")
    board = load_board("qemu")
    none = prepare(g, "optimized", board, RamConfig.none()).plan.arena_size
    chosen = compile_model(g, "optimized", board)
    assert none > board.ram_bytes > chosen.plan.arena_size + 12 * 1024


# ---------------------------------------------------------------- on QEMU

@pytest.mark.parametrize("name", ["ram_techniques", "mcunet_vww", "resnet8_ic"])
def test_chosen_point_runs_bit_exact_on_the_target(name, tmp_path, run_on_board):
    from microtile_models.build import zoo_model_bytes

    path = tmp_path / f"{name}.tflite"
    path.write_bytes(zoo_model_bytes(name))
    result = run_on_board(path, random=1)
    data = result.to_json()
    assert data["verdict"] == "bit-exact", data["error"]
    ram = data["ram"]
    assert ram["arena_bytes"] < ram["layer_bound_bytes"]
    assert ram["tflm_arena_bytes"] and ram["arena_bytes"] < ram["tflm_arena_bytes"]
    assert ram["ram_search"]["chosen"]["arena_bytes"] == ram["arena_bytes"]
    if name == "mcunet_vww":
        assert ram["total_bytes"] <= 128 * 1024


def test_tflm_arena_of_the_mlperf_models(shared_dir):
    from microtile.measure.ram_bench import TFLM_HEAD, tflm_arena_of

    for name in ("vww_96_int8", "ad01_int8"):
        assert tflm_arena_of(shared_dir / "models" / "mlperf_tiny" / f"{name}.tflite") == TFLM_HEAD[name]


def test_ram_bench_command_prints_the_table_and_writes_json(tmp_path, capsys):
    """A short sample of `python -m microtile.measure.ram_bench` (the MLPerf run is in README)."""
    import json

    from microtile.measure.ram_bench import main
    from microtile_models.build import zoo_model_bytes

    path = tmp_path / "ram_techniques.tflite"
    path.write_bytes(zoo_model_bytes("ram_techniques"))
    out = tmp_path / "ram.json"
    assert main([str(path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "geometric mean of chosen / TFLM arena" in text and "ram_techniques" in text
    r = json.loads(out.read_text())["results"][0]
    assert r["tflm_arena_bytes"] > r["chosen_bytes"] and r["none_bytes"] > r["all_bytes"]
    assert set(r["techniques"]) == set(RamConfig.techniques())
    assert main([str(tmp_path / "missing.tflite")]) == 2
