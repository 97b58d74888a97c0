"""The differential operator fuzzer (microtile.check.fuzz_ops): a short sample over every
operator in CI, proof that it turns a crash, a sanitizer report and a layer-sized
stack array into reported failures, and the micro_speech-shaped depthwise model
(1 input channel, depth multiplier 8, 10x8 filter, stride 2, SAME over 49x40) on
QEMU with the default (optimised) kernels, bit-exact with TFLM.

The full run is a command: python -m microtile.check.fuzz_ops --cases 2000 --kernels both."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from microtile.codegen.model_source import compile_model
from microtile.check.fuzz_ops import GENERATORS, Fuzzer, make_case
from microtile.ops import REGISTRY, kernel_for, kernel_label, load_families
from microtile.importer.tflite_format import write_tflite

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from microtile_models.float_graph import FloatNet  # noqa: E402


def test_every_registered_operator_has_a_generator():
    load_families()
    assert set(GENERATORS) == set(REGISTRY)


def test_sample_of_every_operator_both_kernel_sets():
    """8 cases per operator (176 in all; `python -m microtile.check.fuzz_ops` runs thousands),
    C kernels under ASan + UBSan, TFLM on every other one."""
    fuzzer = Fuzzer(seed=7, kernel_sets=("reference", "optimized"), tflm_every=2, log=lambda m: None)
    try:
        fuzzer.run(sorted(GENERATORS), 8)
    finally:
        fuzzer.tflm.close()
    assert not fuzzer.failures, "\n".join(f"{f.what}\n  {f.reproducer()}" for f in fuzzer.failures)
    for op, s in fuzzer.stats.items():
        assert s.cases == 8 and s.tflm >= 3, op
        if op != "DEQUANTIZE":  # host side: no C kernel
            assert s.native["reference"] >= 5, op
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD", "SOFTMAX"):
        assert fuzzer.stats[op].native["optimized"] > 0, op


def test_parameter_space_reaches_the_issue_variants():
    """Depth multipliers above 1 with one input channel, filters as large as the
    input, non-square strides and FC depths of 4000 all occur in a modest sample."""
    seen = {"dm>1, 1 channel": False, "filter == input": False, "sh != sw": False, "K = 4000": False}
    for case in range(300):
        _, _, p = make_case("DEPTHWISE_CONV_2D", 0, case)
        seen["dm>1, 1 channel"] |= p["dm"] > 1 and p["c"] == 1
        _, _, p = make_case("CONV_2D", 0, case)
        seen["filter == input"] |= p["kh"] == p["h"] and p["kw"] == p["w"] and p["h"] > 1
        seen["sh != sw"] |= p["sh"] != p["sw"]
        _, _, p = make_case("FULLY_CONNECTED", 0, case)
        seen["K = 4000"] |= p["depth"] == 4000
    assert all(seen.values()), seen


def _jobs(fuzzer: Fuzzer, op: str, cases: range):
    fuzzer.stats.clear()
    try:
        return [j for case in cases for j in fuzzer.host_part(op, case)]
    finally:
        fuzzer.tflm.close()


def test_a_crash_or_sanitizer_report_is_a_failed_case_not_a_dead_fuzzer():
    fuzzer = Fuzzer(seed=1, kernel_sets=("reference",), tflm_every=1000, log=lambda m: None)
    jobs = _jobs(fuzzer, "RELU", range(4))
    assert len(jobs) == 4
    bad = jobs[1].compiled
    # An out-of-bounds write one byte past the arena, as a kernel bug would make it.
    bad.model_c = bad.model_c.replace("        break;\n    default:",
                                    f"        arena[{bad.plan.arena_size}] = 1;\n        break;\n    default:", 1)
    fuzzer.native_part(jobs)
    assert [(f.case, f.kind) for f in fuzzer.failures] == [(1, "fault")]
    assert "AddressSanitizer" in fuzzer.failures[0].what
    assert fuzzer.stats["RELU"].native["reference"] == 4  # the cases after the crash ran too
    assert "--op RELU --seed 1 --case 1" in fuzzer.failures[0].reproducer()


def test_a_layer_sized_stack_array_is_a_failure():
    """The original bug: the A panel as a K-sized array in run_layer's frame (12 KB for
    the micro_speech FC) overflowed the board's 8 KB stack. The native builds bound
    every frame, so that code is a reported failure."""
    fuzzer = Fuzzer(seed=1, kernel_sets=("reference",), tflm_every=1000, log=lambda m: None)
    jobs = _jobs(fuzzer, "RELU", range(2))
    c = jobs[0].compiled
    c.model_c = c.model_c.replace("    switch (layer) {", "    volatile uint64_t scratch[1500];\n    scratch[0] = 0;\n"
                                  "    (void)scratch;\n    switch (layer) {", 1)
    fuzzer.native_part(jobs)
    assert [f.case for f in fuzzer.failures] == [0]
    assert "stack usage" in fuzzer.failures[0].what


def micro_speech_graph():
    """TFLM's micro_speech architecture: 49x40x1 features, DEPTHWISE_CONV_2D 10x8,
    depth multiplier 8, stride 2, SAME, RELU; then FULLY_CONNECTED 4000 -> 4, SOFTMAX."""
    net = FloatNet("micro_speech_like", 0)
    x = net.input((1, 49, 40, 1))
    y = net.depthwise_conv2d(x, (10, 8), 2, "SAME", "RELU", multiplier=8)
    y = net.reshape(y, (1, 4000))
    y = net.fully_connected(y, 4, "NONE")
    net.output(net.softmax(y))
    return net.to_graph()


def test_micro_speech_layers_run_optimised_with_scratch_in_the_arena():
    graph = micro_speech_graph()
    compiled = compile_model(graph, "optimized")
    labels = [kernel_label(op, graph, "optimized") for op in compiled.device_ops]
    assert labels[0] == "opt" and labels[2] == "opt", labels  # depthwise (as CONV_2D) and FC
    assert "uint64_t scratch[" not in compiled.model_c  # nothing layer-sized on the stack
    # the FC (K = 4000, one row) takes the direct tile: no K-sized panel at all; every layer's
    # scratch that remains is a planned buffer inside the arena (passes/planner.py)
    assert 2 not in compiled.plan.scratch
    assert all(off + n <= compiled.plan.arena_size for off, n in compiled.plan.scratch.values())


def test_fallback_reasons_are_stated():
    """A variant an optimised kernel does not take is a reference call with a reason
    (FULLY_CONNECTED with a non-zero weights zero point); a depthwise conv with a depth
    multiplier above 1 over several channels now runs the optimised kernel."""
    seen = set()
    for case in range(300):
        graph, _, p = make_case("FULLY_CONNECTED", 3, case)
        op = graph.operators[0]
        if p["w_zp"] != 0 and "fc" not in seen:
            kernel_for(op).check(op, graph)
            assert kernel_label(op, graph, "optimized") == f"ref: weights zero point {p['w_zp']} (the optimised kernel takes symmetric weights)"
            assert "mt_fully_connected_s8_ref(" in compile_model(graph, "optimized").model_c
            seen.add("fc")
        graph, _, p = make_case("DEPTHWISE_CONV_2D", 3, case)
        op = graph.operators[0]
        if p["dm"] > 1 and p["c"] > 1 and "dw" not in seen:
            kernel_for(op).check(op, graph)
            if kernel_label(op, graph, "optimized") == "opt":
                assert "mt_depthwise_conv_s8_ref(" not in compile_model(graph, "optimized").model_c
                seen.add("dw")
        if seen == {"fc", "dw"}:
            return
    pytest.fail(f"cases missing: saw only {sorted(seen)}")


@pytest.mark.qemu
def test_micro_speech_depthwise_on_qemu_default_kernels(tmp_path):
    """The issue's symptom: this model hard-faulted (pc 0x00000000) with the default
    kernels; it must run bit-exact with TFLM."""
    _run_on_qemu(tmp_path, micro_speech_graph())


# A handful of fuzz cases for QEMU, chosen for what they reach: depthwise over one
# channel with a multiplier of 3 and a filter as tall as the input (optimised, as
# CONV_2D); depthwise multiplier 1 over 3 channels, 5x7 filter, strides 1x4 (optimised
# depthwise); FC with K = 4000 (the panel in the arena); a conv whose filter is the
# whole 39x1 input with strides 2x3; an average pool over 522 pixels (stated fallback).
QEMU_CASES = [("DEPTHWISE_CONV_2D", 0, 23), ("DEPTHWISE_CONV_2D", 0, 1), ("FULLY_CONNECTED", 0, 14),
              ("CONV_2D", 0, 1), ("AVERAGE_POOL_2D", 0, 31)]


def _run_on_qemu(tmp_path, graph):
    from microtile.measure.runner import run_model

    path = tmp_path / f"{graph.name}.tflite"
    path.write_bytes(write_tflite(graph))
    result = run_model(path, "qemu", random=2)  # the default kernels: optimised
    assert result.error is None, result.error
    assert result.samples == 2 and result.mismatches == []
    assert np.all(np.array(result.mean_counts()) > 0)
    return result


@pytest.mark.qemu
@pytest.mark.parametrize("op,seed,case", QEMU_CASES)
def test_fuzz_cases_on_qemu_default_kernels(tmp_path, op, seed, case):
    """Fuzz-generated single-operator models through the real runner, bit-exact with TFLM."""
    graph, _, _ = make_case(op, seed, case)
    _run_on_qemu(tmp_path, graph)


@pytest.mark.qemu
def test_micro_speech_depthwise_layer_alone_on_qemu(tmp_path):
    """The issue's layer as a single-operator model (49x40x1, 10x8 filter, multiplier
    8, stride 2, SAME, per-channel scales) with the default kernels."""
    from test_ops_conv import conv_graph

    graph = conv_graph(np.random.default_rng(8), h=49, w=40, c=1, oc=8, kh=10, kw=8, sh=2, sw=2,
                       padding="SAME", act="RELU", depthwise=True)
    graph.name = "micro_speech_depthwise"
    assert kernel_label(graph.operators[0], graph, "optimized") == "opt"
    _run_on_qemu(tmp_path, graph)


def test_a_tflm_abort_is_reported_and_the_oracle_restarts():
    """TFLM aborts (TFLITE_CHECK) on an int8 SOFTMAX row of 600 equal values: in the
    oracle's subprocess that is a reported crash, and the next model still runs."""
    from microtile.check.fuzz_ops import TflmProcess, one_op_graph, quant, tflm_can_run
    from microtile.importer.ir import Tensor

    graph = one_op_graph("SOFTMAX", [Tensor(0, "x", (1, 600), "int8", quant(0.1, 0)),
                                     Tensor(1, "y", (1, 600), "int8", quant(1 / 256, -128))], [0], [1], {"beta": 1.0})
    assert not tflm_can_run(graph)  # the fuzzer does not send it (README: a deliberate difference)
    tflm = TflmProcess()
    try:
        status, what = tflm(write_tflite(graph), [np.full((1, 600), 7, np.int8)])
        assert status == "crash" and "TFLM crashed" in what
        relu, inputs, _ = make_case("RELU", 0, 2)
        status, outs = tflm(write_tflite(relu), inputs)
        assert status == "ok" and outs[0].shape == relu.tensor(relu.outputs[0]).shape
    finally:
        tflm.close()
