"""Fused depthwise tiling (passes/fdt.py, ops/partial.py, firmware/kernels/mt_partial.c):
path discovery, the rewrite bit-exact on the numpy reference for several partition
counts, the partial-sum kernels natively bit-exact with TFLM, the zoo model on QEMU, and
the arena FDT saves."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from microtile.build.native import NativeModel
from microtile.check.oracle import TflmOracle
from microtile.codegen.model_source import compile_model, prepare
from microtile.importer.ir import Graph
from microtile.importer.tflite_format import write_tflite
from microtile.passes.fdt import apply_path, discover, extra_instructions, fdt, partition_counts
from microtile.passes.pipeline import RamConfig, check_pass
from microtile.targets.boards import load_board
from microtile_models import zoo
from microtile_models.float_graph import FloatNet


def _inputs(graph: Graph, n: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    t = graph.tensor(graph.inputs[0])
    return [[rng.integers(-128, 128, size=t.shape).astype(t.dtype)] for _ in range(n)]


def _opcodes(path) -> list[str]:
    return [op.opcode for op in path.ops]


@pytest.fixture(scope="module")
def head() -> Graph:
    return zoo.build("fdt_head")


def _conv_end() -> Graph:
    """A path ending at a 3x3 CONV_2D split by input channel, through a strided
    depthwise, LOGISTIC, MAX_POOL_2D and a PAD (folded into the conv by fold_pad)."""
    net = FloatNet("fdt_conv_end", 3)
    x = net.input((1, 12, 12, 8), -1.0, 1.0)
    x = net.conv2d(x, 32, (1, 1), activation="RELU6")
    x = net.depthwise_conv2d(x, (3, 3), stride=2, activation="RELU")
    x = net.unary("LOGISTIC", x)
    x = net.max_pool(x, (2, 2), stride=1, padding="SAME")
    x = net.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    x = net.conv2d(x, 6, (3, 3), padding="VALID", activation="RELU")
    net.output(x)
    return net.to_graph()


def _fc_chain() -> Graph:
    """FC -> MEAN-free FC path: per-channel start weights, per-tensor end weights."""
    net = FloatNet("fdt_fc_chain", 4)
    x = net.input((1, 48), -1.0, 1.0)
    x = net.fully_connected(x, 64, activation="RELU", per_channel=True)
    x = net.unary("HARD_SWISH", x)
    x = net.fully_connected(x, 12, activation="NONE")
    net.output(x)
    return net.to_graph()


def _mean_head() -> Graph:
    net = FloatNet("fdt_mean_head", 5)
    x = net.input((1, 8, 8, 8), -1.0, 1.0)
    x = net.conv2d(x, 48, (3, 3), activation="RELU")
    x = net.mean(x, (1, 2), keep_dims=True)
    x = net.reshape(x, (1, 48))
    x = net.fully_connected(x, 5, activation="NONE")
    net.output(x)
    return net.to_graph()


def _rejections() -> Graph:
    """Each start but one fails for its own reason."""
    net = FloatNet("fdt_rejections", 6)
    x = net.input((1, 6, 6, 4), -1.0, 1.0)
    a = net.conv2d(x, 8, (1, 1), activation="RELU")                 # #0: depthwise multiplier 2
    a = net.depthwise_conv2d(a, (3, 3), multiplier=2, activation="RELU")
    b = net.conv2d(a, 8, (1, 1), activation="RELU")                 # #2: read twice
    c = net.add(b, b)
    c = net.conv2d(c, 8, (1, 1), activation="RELU")                 # #4: reshape mixes pixels into channels
    c = net.reshape(c, (1, 288))
    c = net.fully_connected(c, 16, activation="RELU")               # #6 -> #7: a path
    c = net.fully_connected(c, 4, activation="NONE")                # #7: ends at the SOFTMAX
    net.output(net.softmax(c))
    return net.to_graph()


# ---------------------------------------------------------------- discovery

def test_discovery_finds_the_path_and_says_why_others_do_not_qualify(head):
    paths, rejected = discover(head)
    assert [_opcodes(p) for p in paths] == [
        ["CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED"]]
    assert paths[0].channels == 96
    assert "SOFTMAX" in rejected[4]

    paths, rejected = discover(_rejections())
    assert [[op.index for op in p.ops] for p in paths] == [[6, 7]]
    assert "depth multiplier other than 1" in rejected[0]
    assert "read by 2 operators" in rejected[2]
    assert "no channels on the last axis" in rejected[4]
    assert "SOFTMAX" in rejected[7]

    paths, _ = discover(_conv_end())
    assert [_opcodes(p) for p in paths] == [
        ["CONV_2D", "DEPTHWISE_CONV_2D", "LOGISTIC", "MAX_POOL_2D", "PAD", "CONV_2D"]]


def test_partition_counts_divide_the_channels_in_groups_of_four():
    assert partition_counts(96) == [2, 3, 4, 6, 8, 12]  # 16 partitions of 6 would leave pairs to the scalar path
    assert partition_counts(10) == [2, 5, 10]  # no multiple of 4 divides 10: every divisor


# ---------------------------------------------------------------- the rewrite, on the numpy reference

@pytest.mark.parametrize("parts", [2, 3, 8, 16])
def test_rewrite_is_bit_exact_on_the_reference(head, parts):
    path = discover(head)[0][0]
    after = apply_path(head, path, parts)
    ops = [op.opcode for op in after.operators]
    assert ops.count("CONV_2D") == parts and ops.count("MT_PARTIAL_FC") == parts and ops.count("MT_REQUANT_ACC") == 1
    assert "FULLY_CONNECTED" not in ops
    for x in _inputs(head, 3, seed=parts):
        check_pass(head, after, x)


@pytest.mark.parametrize("build, parts", [(_conv_end, 4), (_conv_end, 8), (_fc_chain, 16), (_mean_head, 3)])
def test_conv_and_fc_ends_are_bit_exact_on_the_reference(build, parts):
    g = build()
    after = apply_path(g, discover(g)[0][0], parts)
    for x in _inputs(g, 4, seed=parts):
        check_pass(g, after, x)


def _random_path(seed: int) -> Graph:
    """A random path: start conv (1x1 or 3x3, maybe strided) or FC, some of the middle
    layers, end conv or FC."""
    rng = np.random.default_rng(seed)
    net = FloatNet(f"fdt_random_{seed}", seed)
    channels = int(rng.choice([8, 12, 24, 32]))
    if rng.random() < 0.25:
        x = net.input((1, int(rng.integers(8, 40))), -1.0, 1.0)
        x = net.fully_connected(x, channels, activation=str(rng.choice(["NONE", "RELU"])), per_channel=True)
        x = net.unary(str(rng.choice(["RELU6", "LOGISTIC", "HARD_SWISH"])), x)
        net.output(net.fully_connected(x, int(rng.integers(2, 9)), activation="NONE"))
        return net.to_graph()
    x = net.input((1, int(rng.integers(5, 11)), int(rng.integers(5, 11)), int(rng.integers(1, 9))), -1.0, 1.0)
    k = int(rng.choice([1, 3]))
    x = net.conv2d(x, channels, (k, k), stride=int(rng.integers(1, 3)), activation=str(rng.choice(["RELU", "RELU6"])))
    if rng.random() < 0.7:
        x = net.depthwise_conv2d(x, (3, 3), stride=int(rng.integers(1, 3)), activation="RELU6")
    if rng.random() < 0.5:
        x = net.unary(str(rng.choice(["RELU", "LOGISTIC", "HARD_SWISH"])), x)
    if rng.random() < 0.5:
        x = net.max_pool(x, (2, 2), stride=1, padding="SAME")
    if rng.random() < 0.5:
        h, w = net.shape(x)[1:3]
        x = net.reshape(net.avg_pool(x, (h, w)), (1, channels))
        net.output(net.fully_connected(x, int(rng.integers(2, 9)), activation="NONE"))
    else:
        net.output(net.conv2d(x, int(rng.integers(2, 9)), (3, 3), stride=int(rng.integers(1, 3)), activation="NONE"))
    return net.to_graph()


@pytest.mark.parametrize("seed", range(8))
def test_random_paths_are_bit_exact_on_the_reference(seed):
    g = _random_path(seed)
    (path,), _ = discover(g)
    for parts in partition_counts(path.channels):
        after = apply_path(g, path, parts)
        for x in _inputs(g, 2, seed=seed):
            check_pass(g, after, x)


def test_the_pass_applies_only_where_it_lowers_the_peak(head):
    after = fdt(head)
    assert after is not head and extra_instructions(after) > 0
    fc_only = _fc_chain()  # 64 B middle tensors, a 48 B accumulator: nothing to gain
    assert fdt(fc_only) is fc_only


def test_the_pass_weighs_what_the_in_place_techniques_would_save():
    """ram_techniques' MobileNetV2 blocks: FDT lowers the plain peak, but split layers
    cannot run in place or fused, which saves more; with those techniques on, it stays off."""
    g = zoo.build("ram_techniques")
    assert fdt(g, RamConfig.none()) is not g
    assert fdt(g, RamConfig()) is g
    head = zoo.build("fdt_head")
    assert fdt(head, RamConfig()) is not head


# ---------------------------------------------------------------- the C kernels, native, against TFLM

@pytest.mark.parametrize("build", [_conv_end, lambda: zoo.build("fdt_head")], ids=["conv", "head"])
def test_partial_kernels_natively_bit_exact_with_tflm(build):
    g = build()
    oracle = TflmOracle(write_tflite(g))
    forced = replace(RamConfig.none(), fdt=True, fold_pad=True)  # the conv end takes the PAD as explicit padding
    for kernels in ("reference", "optimized"):
        model = NativeModel.build(g, kernels, ram=forced)
        assert any(op.opcode.startswith("MT_PARTIAL") for op in model.compiled.device_ops)
        for x in _inputs(g, 3, seed=11):
            for got, want in zip(model.run(x), oracle(x)):
                assert np.array_equal(got, want), kernels


@pytest.mark.parametrize("build, parts", [(_conv_end, 8), (_fc_chain, 4)], ids=["conv", "fc"])
def test_rewritten_graph_compiles_natively_bit_exact_with_tflm(build, parts):
    """Each end kind's partial kernels, also where the pass would not choose them: the
    rewritten graph compiled as it is, TFLM running the original model."""
    g = build()
    after = apply_path(g, discover(g)[0][0], parts)
    model = NativeModel.build(after, "optimized", ram=RamConfig.none())
    assert sum(op.opcode.startswith("MT_PARTIAL") for op in model.compiled.device_ops) == parts
    oracle = TflmOracle(write_tflite(g))
    for x in _inputs(g, 3, seed=12):
        for got, want in zip(model.run(x), oracle(x)):
            assert np.array_equal(got, want)


# ---------------------------------------------------------------- the arena

def test_fdt_lowers_the_arena_of_the_zoo_model(head):
    board = load_board("qemu")
    none = prepare(head, "optimized", board, RamConfig.none()).plan.arena_size
    fdt_only = prepare(head, "optimized", board, replace(RamConfig.none(), fdt=True)).plan.arena_size
    without = prepare(head, "optimized", board, RamConfig(fdt=False)).plan.arena_size
    everything = prepare(head, "optimized", board, RamConfig()).plan.arena_size
    assert fdt_only < 0.25 * none
    assert everything < 0.5 * without
    # a budget only FDT reaches: the search picks it
    chosen = compile_model(head, "optimized", board, ram_budget=without // 2)
    assert chosen.ram.fdt and chosen.plan.arena_size <= without // 2
    assert any(op.opcode == "MT_REQUANT_ACC" for op in chosen.device_ops)


# ---------------------------------------------------------------- on QEMU

def test_zoo_model_with_fdt_runs_bit_exact_on_the_target(tmp_path, run_on_board):
    from microtile.passes.ram_search import set_ram_budget
    from microtile_models.build import zoo_model_bytes

    path = tmp_path / "fdt_head.tflite"
    path.write_bytes(zoo_model_bytes("fdt_head"))
    set_ram_budget(24000)  # below every configuration without FDT
    try:
        result = run_on_board(path, random=1)
    finally:
        set_ram_budget(None)
    data = result.to_json()
    assert data["verdict"] == "bit-exact", data["error"]
    assert "fdt" in data["ram"]["ram_search"]["chosen"]["techniques"]
    assert data["ram"]["arena_bytes"] <= 24000
    assert "MT_PARTIAL_FC" in {layer["op"] for layer in data["layers"]}
