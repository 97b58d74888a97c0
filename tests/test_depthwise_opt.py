"""The optimised DEPTHWISE_CONV_2D: depth multipliers above 1, and in place.

In place is tested on the emitter and the kernel alone, natively: a minimal emit
context gives the output the input's arena offset (what the memory planner does when
``inplace_scratch_bytes`` allows it), the generated call is compiled with the host gcc
under ASan + UBSan into an executable whose arena is exactly input + scratch bytes,
and its output, read from the input's bytes, must equal the numpy reference."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microtile.build.native import BASE_CFLAGS, FIRMWARE, SANITIZERS, _gcc
from microtile.errors import MicrotileError
from microtile.importer.ir import Operator
from microtile.importer.quant import multiply_by_quantized_multiplier
from microtile.ops import kernel_for
from microtile.ops.depthwise_opt import emit_depthwise_opt, inplace_scratch_bytes, plane_bytes
from microtile.ops.requant_opt import fast_requant, reference_fast_requant

from op_harness import random_int8
from test_ops_conv import conv_graph
from test_ops_opt import check_optimized

FEW = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@FEW
@given(h=st.integers(1, 8), w=st.integers(1, 8), c=st.integers(2, 7), dm=st.integers(2, 4),
       kh=st.integers(1, 4), kw=st.integers(1, 4), stride=st.integers(1, 2),
       padding=st.sampled_from(["SAME", "VALID"]), act=st.sampled_from(["NONE", "RELU6"]),
       seed=st.integers(0, 2**32 - 1))
def test_depth_multiplier_over_channels_runs_optimised(h, w, c, dm, kh, kw, stride, padding, act, seed):
    """Depth multiplier > 1 over several input channels: the optimised kernel (it fell
    back to the reference kernel before), bit-exact with TFLM."""
    if padding == "VALID":
        kh, kw = min(kh, h), min(kw, w)
    rng = np.random.default_rng(seed)
    graph = conv_graph(rng, h=h, w=w, c=c, oc=c * dm, kh=kh, kw=kw, sh=stride, sw=stride, padding=padding,
                       act=act, depthwise=True)
    op = graph.operators[0]
    reason = kernel_for(op).opt_fallback(op, graph)
    # only the fast requantisation's own limits may keep the reference kernel
    assert reason is None or "fast path" in reason, reason
    check_optimized(graph, [random_int8(rng, graph.tensor(0).shape)], None if reason else "mt_depthwise_s8_opt")


def test_requant_sign_fix_from_the_accumulator():
    """The DSP requantisation takes the sign fix from acc instead of the high product h
    (SMMLAR form): equal to TFLite's MultiplyByQuantizedMultiplier + zp on every shift."""
    rng = np.random.default_rng(1)
    for right in range(1, 31):
        mult = rng.integers(1 << 30, 1 << 31, size=16)
        zp = int(rng.integers(-128, 128)) if right < 23 else 0
        bound = 1 << 20
        k, r = fast_requant(mult, np.full(16, -right), zp, np.full(16, bound))
        acc = np.concatenate([rng.integers(-bound, bound, size=(3000, 1)), np.arange(-40, 40).reshape(-1, 1)])
        a2 = 2 * acc
        t = ((a2 * mult[None, :] + (1 << 31)) >> 32) + k[None, :]   # SMMLAR(2acc, m, k)
        got = (t + (a2 >> 31)) >> r[None, :]
        want = multiply_by_quantized_multiplier(acc, mult[None, :], np.full(16, -right)[None, :]) + zp
        assert np.array_equal(got, want), right
        assert np.array_equal(got, reference_fast_requant(acc, mult[None, :], k[None, :], r[None, :]))


# ---------------------------------------------------------------- in place

class _InPlaceContext:
    """An EmitContext whose arena holds the input at offset 0, the output at the same
    offset (the planner's alias) and the layer scratch after it."""

    kernels = "optimized"
    board = None

    def __init__(self, graph, in_bytes: int):
        self.graph, self.decls, self.in_bytes, self.scratch_bytes = graph, [], in_bytes, 0

    def include(self, header):
        pass

    def const_array(self, hint, values):
        values = np.ascontiguousarray(values).reshape(-1)
        ctype = {"int32": "int32_t", "int8": "int8_t"}[values.dtype.name]
        name = f"c_{hint}_{len(self.decls)}"
        body = ", ".join(str(int(v)) if v != -(1 << 31) else "INT32_MIN" for v in values.tolist())
        self.decls.append(f"static const {ctype} {name}[] = {{{body or 0}}};")
        return name

    def static_struct(self, ctype, hint, initializer):
        name = f"s_{hint}_{len(self.decls)}"
        self.decls.append(f"static const {ctype} {name} = {initializer};")
        return name

    def define(self, text):
        if text not in self.decls:
            self.decls.append(text)

    def scratch(self, nbytes):
        self.scratch_bytes = max(self.scratch_bytes, nbytes)
        return f"((uint64_t *)(arena + {(self.in_bytes + 7) // 8 * 8}))"

    def ptr(self, tensor_index):
        return "((int8_t *)(arena + 0))"


def _run_in_place(graph, x: np.ndarray, tmp_path) -> tuple[np.ndarray, int]:
    op = graph.operators[0]
    ctx = _InPlaceContext(graph, x.nbytes)
    op = Operator(op.index, op.opcode, op.inputs, op.outputs, {**op.options, "in_place": True})
    call = emit_depthwise_opt(op, graph, ctx, kernel_for(op).params(op, graph))
    assert call is not None and call.startswith("mt_dw_shape_")
    arena_bytes = (x.nbytes + 7) // 8 * 8 + ctx.scratch_bytes
    out_bytes = int(np.prod(graph.tensor(op.outputs[0]).shape))
    src = "\n".join([
        "#include <stdint.h>", "#include <stdio.h>", "#include <stdlib.h>", '#include "mt_depthwise_opt.h"',
        *ctx.decls,
        "int main(void) {",
        f"    uint8_t *arena = malloc({arena_bytes});",  # exactly input + scratch: ASan sees overruns
        f"    if (fread(arena, 1, {x.nbytes}, stdin) != {x.nbytes}) return 2;",
        f"    {call}",
        f"    fwrite(arena, 1, {out_bytes}, stdout);",
        "    free(arena);", "    return 0;", "}"])
    (tmp_path / "inplace.c").write_text(src)
    exe = tmp_path / "inplace"
    subprocess.run([_gcc(), *BASE_CFLAGS, *SANITIZERS["asan"], "-I", str(FIRMWARE / "include"),
                    str(tmp_path / "inplace.c"), "-o", str(exe)], check=True, capture_output=True)
    proc = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return np.frombuffer(proc.stdout, dtype=np.int8), ctx.scratch_bytes


@pytest.mark.parametrize("h,w,c,k,stride,padding", [
    (25, 5, 64, 3, 1, "SAME"),    # KWS's depthwise
    (12, 12, 16, 3, 2, "SAME"),   # VWW's stride 2
    (9, 7, 6, 3, 1, "SAME"),      # channels not a multiple of 4 (scalar tail over scratch)
    (7, 8, 3, 3, 2, "VALID"),     # fewer than 4 channels
    (6, 6, 8, 5, 1, "SAME"),      # a 5x5 window (tap loop)
    (8, 9, 12, 2, 2, "VALID"),
])
def test_in_place_matches_reference(h, w, c, k, stride, padding, tmp_path):
    """Output written over its own input (same arena offset), bit-exact with the numpy
    reference, with only inplace_scratch_bytes of scratch."""
    rng = np.random.default_rng(h * 100 + c)
    graph = conv_graph(rng, h=h, w=w, c=c, oc=c, kh=k, kw=k, sh=stride, sw=stride, padding=padding,
                       act="RELU6", depthwise=True)
    op = graph.operators[0]
    need = inplace_scratch_bytes(op, graph)
    assert need == h * w * min(4, c) == plane_bytes(kernel_for(op).params(op, graph), True)
    x = random_int8(rng, (1, h, w, c))
    inputs = [x] + [graph.tensor(i).data for i in op.inputs[1:]]
    want = kernel_for(op).reference(op, graph, inputs)[0].reshape(-1)
    got, scratch = _run_in_place(graph, x, tmp_path)
    assert scratch == need
    diff = np.flatnonzero(got != want)
    assert diff.size == 0, f"{diff.size} of {want.size} values differ, first at {diff[:5]}"


def test_in_place_refused_where_it_cannot_work():
    rng = np.random.default_rng(3)
    dm2 = conv_graph(rng, h=5, w=5, c=3, oc=6, kh=3, kw=3, depthwise=True)
    one = conv_graph(rng, h=5, w=5, c=1, oc=1, kh=3, kw=3, depthwise=True)
    ok = conv_graph(rng, h=5, w=5, c=8, oc=8, kh=3, kw=3, depthwise=True)
    assert inplace_scratch_bytes(dm2.operators[0], dm2) is None   # output wider than the input
    assert inplace_scratch_bytes(one.operators[0], one) is None   # runs as a CONV_2D
    assert inplace_scratch_bytes(ok.operators[0], ok, kernels="reference") is None
    assert inplace_scratch_bytes(ok.operators[0], ok) == 5 * 5 * 4
    op = dm2.operators[0]
    asked = Operator(op.index, op.opcode, op.inputs, op.outputs, {**op.options, "in_place": True})
    with pytest.raises(MicrotileError, match="cannot write over its input"):
        emit_depthwise_opt(asked, dm2, _InPlaceContext(dm2, 75), kernel_for(op).params(op, dm2))
