"""Compile an IR graph into AOT C: model.h / model.c for the firmware.

The compiled program keeps the float edges of the model (QUANTIZE of a float graph
input and float ops before it, DEQUANTIZE towards a graph output and float ops after
it) on the host side of the link, checks every
device operator, plans the activation arena and asks each operator's kernel to emit
its C call. Weights become const arrays (flash); every call gets constant parameters.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from microtile.errors import DoesNotFitError, MicrotileError, UnsupportedOperatorError
from microtile.importer.ir import Graph, Operator, Tensor
from microtile.ops import kernel_for
from microtile.ops.float_edge import is_float_edge_op, kernel_for_op
from microtile.passes.inplace import Band, BandPlan, FusedPlan, PanelPlan, ResidualPlan, band_operator, find_aliases
from microtile.passes.pipeline import RamConfig, run_passes
from microtile.passes.planner import ALIGN, MemoryPlan, plan_memory
from microtile.importer.quant import MultiplierRangeError
from microtile.check.reference import check_input_arrays, run_operators

_CTYPES = {
    "int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "uint16": "uint16_t",
    "int32": "int32_t", "uint32": "uint32_t", "int64": "int64_t",
}
CODEGEN_VERSION = "1"


@dataclass
class CompiledModel:
    graph: Graph
    kernels: str
    board: object  # the Board compiled for (None: native host build)
    device_ops: list[Operator]
    host_pre: list[Operator]  # run on the host before sending inputs
    host_post: list[Operator]  # run on the host after reading outputs
    device_inputs: list[int]  # tensor indices the device receives
    device_outputs: list[int]  # tensor indices the device returns
    plan: MemoryPlan
    model_c: str
    model_h: str
    const_bytes: int  # weights and parameters placed in flash
    hash: str  # content hash of the generated sources
    ram: RamConfig = field(default_factory=RamConfig)  # the RAM techniques compiled in
    bands: dict = field(default_factory=dict)  # step -> BandPlan of the layers run in bands in place
    search: object = None  # the RamSearch that chose ``ram`` (None when it was given)
    band_graph: object = None  # keeps the band sub-graph alive (the schedule caches by id)

    @property
    def macs(self) -> list[int]:
        return [kernel_for(op).macs(op, self.graph) for op in self.device_ops]

    def to_device(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Model inputs -> the int8 arrays the device receives (host-side QUANTIZE)."""
        values = dict(zip(self.graph.inputs, check_input_arrays(self.graph, self.graph.inputs, inputs)))
        run_operators(self.graph, self.host_pre, values)
        return [values[i] for i in self.device_inputs]

    def from_device(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """Device output arrays -> model outputs (host-side DEQUANTIZE)."""
        values = {i: np.asarray(x).reshape(self.graph.tensor(i).shape) for i, x in zip(self.device_outputs, outputs)}
        run_operators(self.graph, self.host_post, values)
        return [values[i] for i in self.graph.outputs]

    def write(self, outdir: Path) -> Path:
        outdir.mkdir(parents=True, exist_ok=True)
        for name, text in (("model.c", self.model_c), ("model.h", self.model_h)):
            path = outdir / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
        return outdir


QUANTISE_HINT = ("quantise it to int8 with the TFLite converter's full-integer post-training quantisation: "
                 "converter.optimizations = [tf.lite.Optimize.DEFAULT], converter.representative_dataset = "
                 "<a few hundred real inputs>, converter.target_spec.supported_ops = "
                 "[tf.lite.OpsSet.TFLITE_BUILTINS_INT8]")


def refuse_float_model(graph: Graph) -> None:
    """A model whose activations are all float is a float model: say how to quantise it."""
    activations = [t for t in graph.tensors if not t.is_constant]
    if activations and all(t.dtype in ("float32", "float16") for t in activations):
        raise MicrotileError(f"model {graph.name} is a float32 model; microtile runs int8 models: "
                             + QUANTISE_HINT)


def validate(graph: Graph) -> None:
    """Check every operator (raises UnsupportedOperatorError naming the first bad one)."""
    refuse_float_model(graph)
    for i in graph.inputs:
        t = graph.tensor(i)
        if len(t.shape) == 4 and t.shape[0] > 1:  # NHWC images; lower ranks may be broadcast operands
            consumer = next((op for op in graph.operators if i in op.inputs), None)
            raise UnsupportedOperatorError(
                consumer.index if consumer else -1, consumer.opcode if consumer else "INPUT",
                f"input {t.name!r} has batch {t.shape[0]}; microtile runs batch 1 (convert the model with batch size 1)",
            )
    split_boundaries(graph)  # a float op inside the int8 body: refused with how to quantise
    for op in graph.operators:
        with operator_errors(op):
            kernel_for_op(op, graph).check(op, graph)


def _is_host_pre(op: Operator, graph: Graph) -> bool:
    return (op.opcode == "QUANTIZE" and graph.tensor(op.inputs[0]).dtype == "float32") or is_float_edge_op(op, graph)


def _is_host_post(op: Operator, graph: Graph) -> bool:
    return (op.opcode == "DEQUANTIZE" and graph.tensor(op.outputs[0]).dtype == "float32") or is_float_edge_op(op, graph)


def split_boundaries(graph: Graph) -> tuple[list[Operator], list[Operator], list[Operator]]:
    """(host_pre, device, host_post). The host runs the float edges: from the float graph
    inputs forward, float ops and the QUANTIZE that ends them; from the graph outputs
    backward, float ops and the DEQUANTIZE that starts them. Everything else runs on
    the device and must be int8."""
    def is_const(i: int) -> bool:
        return i < 0 or graph.tensor(i).is_constant

    on_host = {i for i in graph.inputs if graph.tensor(i).dtype == "float32"}  # values the host has
    pre = set()
    for op in graph.operators:
        if _is_host_pre(op, graph) and all(is_const(i) or i in on_host for i in op.inputs):
            pre.add(op.index)
            on_host.update(op.outputs)
    readers: dict[int, list[int]] = {}
    for op in graph.operators:
        for i in op.inputs:
            readers.setdefault(i, []).append(op.index)
    outputs = set(graph.outputs)
    post: set[int] = set()
    for op in reversed(graph.operators):
        # Every value the op writes goes only to the host: graph outputs or host-side ops.
        if op.index not in pre and _is_host_post(op, graph) and all(
                all(r in post for r in readers.get(o, [])) and (o in outputs or readers.get(o))
                for o in op.outputs):
            post.add(op.index)
    host_pre = [op for op in graph.operators if op.index in pre]
    host_post = [op for op in graph.operators if op.index in post]
    device = [op for op in graph.operators if op.index not in pre and op.index not in post]
    for op in device:
        for i in op.inputs:
            if not is_const(i) and graph.tensor(i).dtype == "float32":
                raise MicrotileError(
                    f"operator #{op.index} {op.opcode} reads float tensor {graph.tensor(i).name!r}; microtile runs "
                    "int8 models, with float only at the edges (QUANTIZE / DEQUANTIZE and float SOFTMAX, "
                    "LOG_SOFTMAX, LOGISTIC, RESHAPE beyond them): " + QUANTISE_HINT
                )
    return host_pre, device, host_post


@contextmanager
def operator_errors(op: Operator):
    """Scales no converter writes (a corrupted file) surface while an operator's
    parameters are computed: name the operator."""
    try:
        yield
    except MultiplierRangeError as exc:
        raise UnsupportedOperatorError(op.index, op.opcode, str(exc)) from None


def check_tensor_sizes(graph: Graph, device_ops: list[Operator], board) -> None:
    """Refuse any activation larger than the board's RAM before anything is sized from
    it (arena plan, host buffers, the TFLM arena): a corrupted shape fails here."""
    ram = board.ram_bytes
    on_device = {i for op in device_ops for i in op.inputs + op.outputs if i >= 0}
    for t in graph.tensors:
        if t.is_constant:
            continue
        # A host-side float tensor mirrors a device int8 one: count its elements.
        need = t.nbytes if t.index in on_device else t.size
        if need > ram:
            raise DoesNotFitError(
                f"model {graph.name}: tensor #{t.index} {t.name!r} {list(t.shape)} {t.dtype} needs {need:,} bytes, "
                f"but {board.name} has {ram:,} bytes of RAM; use a board with more RAM or a smaller input")


class _Emitter:
    """EmitContext implementation: collects includes, const data and parameter structs."""

    def __init__(self, graph: Graph, plan: MemoryPlan | None, kernels: str, board):
        self.graph = graph
        # probe: no plan yet; records each layer's scratch (offsets read as 0, no C text kept)
        self.probe = plan is None
        self.plan = plan
        self.offsets = defaultdict(int) if plan is None else plan.offsets
        self.kernels = kernels
        self.board = board
        self.includes: list[str] = []
        self.decls: list[str] = []
        self.const_bytes = 0
        self._by_content: dict[bytes, str] = {}
        self._names: set[str] = set()
        self.layer = 0
        # Kernel working memory (im2col panels, band copies): each layer's own buffer,
        # planned with the tensors (plan.scratch), so it is counted in the arena.
        self.scratch_bytes: dict[int, int] = {}  # layer -> bytes its kernels asked for
        self.pointers: dict[int, str] = {}  # band tensors -> their C pointer
        self.band_graph: Graph | None = None

    def layer_scratch(self) -> int:
        """Offset of this layer's scratch buffer in the arena."""
        return 0 if self.probe else self.plan.scratch.get(self.layer, (0, 0))[0]

    def _name(self, hint: str) -> str:
        base = "".join(c if c.isalnum() else "_" for c in hint) or "c"
        name = f"l{self.layer}_{base}"
        n = 1
        while name in self._names:
            name = f"l{self.layer}_{base}_{n}"
            n += 1
        self._names.add(name)
        return name

    def include(self, header: str) -> None:
        if header not in self.includes:
            self.includes.append(header)

    def const_array(self, hint: str, values: np.ndarray, sram: bool = False) -> str:
        """sram: placed in .data (copied to SRAM by the startup, no flash wait states)."""
        values = np.ascontiguousarray(values).reshape(-1)
        ctype = _CTYPES.get(values.dtype.name)
        if ctype is None:
            raise MicrotileError(f"codegen: no C type for {values.dtype} (array {hint})")
        key = values.dtype.name.encode() + values.tobytes()
        if key in self._by_content:
            return self._by_content[key]
        name = self._name(hint)
        if self.probe:
            self._by_content[key] = name
            return name
        items = values.tolist() or [0]
        if ctype == "int32_t":  # INT32_MIN is not a valid literal on its own
            text = [f"{v}" if v != -(1 << 31) else "INT32_MIN" for v in items]
        else:
            text = [str(v) for v in items]
        lines = ",\n".join(", ".join(text[i:i + 24]) for i in range(0, len(text), 24))
        self.decls.append(
            f"static const {ctype} {name}[{len(items)}] __attribute__((aligned(4)"
            + (f", section(\".data.mt_sram.{name}\")" if sram else "") + f")) = {{\n{lines}\n}};"
        )
        self.const_bytes += values.nbytes
        self._by_content[key] = name
        return name

    def static_struct(self, ctype: str, hint: str, initializer: str) -> str:
        name = self._name(hint)
        self.decls.append(f"static const {ctype} {name} = {initializer};")
        return name

    def define(self, text: str) -> None:
        if text not in self.decls:
            self.decls.append(text)

    def scratch(self, nbytes: int) -> str:
        self.scratch_bytes[self.layer] = max(self.scratch_bytes.get(self.layer, 0), nbytes)
        return f"((uint64_t *)(arena + {self.layer_scratch()}))"

    def ptr(self, tensor_index: int) -> str:
        if tensor_index in self.pointers:
            return self.pointers[tensor_index]
        t = self.graph.tensor(tensor_index) if self.band_graph is None else self.band_graph.tensor(tensor_index)
        if t.is_constant:
            return self.const_array(t.name, t.data.astype(t.dtype))
        ctype = _CTYPES[t.dtype]
        return f"(({ctype} *)(arena + {self.offsets[tensor_index]}))"


def device_boundary(graph: Graph, host_pre: list[Operator], device_ops: list[Operator],
                    host_post: list[Operator]) -> tuple[list[int], list[int]]:
    """The tensors the host sends (int8 graph inputs, then what the host-side QUANTIZE
    ops produce for the device) and the ones it reads back (what the device writes and
    the host side or the graph output reads)."""
    pre_out = {o for op in host_pre for o in op.outputs}
    device_read = {i for op in device_ops for i in op.inputs if i >= 0}
    device_inputs = [o for op in host_pre for o in op.outputs if o in device_read]
    device_inputs += [i for i in graph.inputs if i not in pre_out and graph.tensor(i).dtype != "float32"
                      and i not in device_inputs]
    written = {o for op in device_ops for o in op.outputs}
    host_read = [i for op in host_post for i in op.inputs if i in written] + \
        [i for i in graph.outputs if i in written or i in device_inputs]
    device_outputs = list(dict.fromkeys(host_read))
    return device_inputs, device_outputs


KERNEL_SETS = ("reference", "optimized")


@dataclass
class Prepared:
    """A graph after the passes, split and planned for one RamConfig (no C yet)."""
    graph: Graph
    config: RamConfig
    host_pre: list[Operator]
    device_ops: list[Operator]
    host_post: list[Operator]
    device_inputs: list[int]
    device_outputs: list[int]
    bands: dict[int, BandPlan]
    plan: MemoryPlan
    band_graph: Graph | None = None  # the graph plus the band tensors (one per compilation)


def _concat_placed(op: Operator, plan: MemoryPlan) -> set[int]:
    """The inputs of a CONCATENATION its producers already wrote into the output."""
    return {a.member for a in plan.aliases if a.kind == "concat" and a.base == op.outputs[0] and a.member in op.inputs}


def _emit_banded(op: Operator, graph: Graph, em: _Emitter, bp: BandPlan) -> str:
    """The layer as one call per band of output rows: the band's input rows are copied
    into the layer's scratch (after the kernel's own), then the band's rows are written
    into the output, which overlaps the input (passes/inplace.py)."""
    sub = em.band_graph
    in_off, out_off = em.offsets[op.inputs[0]], em.offsets[op.outputs[0]]
    kernel = kernel_for(op)
    calls, kernel_scratch = [], 0
    for b in (reversed(bp.bands) if bp.reverse else bp.bands):  # bottom-up bands: the output sits after the input
        band_op = band_operator(op, sub, b, bp)
        ti, to = band_op.inputs[0], band_op.outputs[0]
        before = em.scratch_bytes.get(em.layer, 0)
        em.scratch_bytes[em.layer] = 0
        em.pointers[ti] = ("((int8_t *)(arena + @BAND@))" if bp.copy
                           else f"((int8_t *)(arena + {in_off + b.in_rows[0] * bp.in_row_bytes}))")
        em.pointers[to] = f"((int8_t *)(arena + {out_off + b.out_rows[0] * bp.out_row_bytes}))"
        call = kernel.emit(band_op, sub, em).strip()
        kernel_scratch = max(kernel_scratch, em.scratch_bytes[em.layer])
        em.scratch_bytes[em.layer] = max(before, em.scratch_bytes[em.layer])
        nbytes = (b.in_rows[1] - b.in_rows[0]) * bp.in_row_bytes
        rows = f"/* input rows {b.in_rows[0]}..{b.in_rows[1] - 1} */"
        calls.append(f"memcpy(arena + @BAND@, arena + {in_off + b.in_rows[0] * bp.in_row_bytes}, {nbytes}u); {rows}\n{call}"
                     if bp.copy else f"{rows}\n{call}")
    band_at = (kernel_scratch + ALIGN - 1) // ALIGN * ALIGN
    em.scratch_bytes[em.layer] = band_at + bp.scratch_bytes
    head = (f"/* in place in {len(bp.bands)} bands{' bottom-up' if bp.reverse else ''}: output = input {bp.delta:+d} B, "
            f"{bp.scratch_bytes if bp.copy else 'no'} B of input rows copied per band */")
    return head + "\n" + "\n".join(calls).replace("@BAND@", str(em.layer_scratch() + band_at))


def _emit_fused(op: Operator, graph: Graph, em: _Emitter, fp: FusedPlan) -> str:
    """The 1x1 conv and the depthwise reading it, band by band through a ring of conv
    output rows in the layer's scratch (passes/inplace.FusedPlan)."""
    from types import SimpleNamespace

    sub, conv = em.band_graph, fp.conv
    x_off, y_off = em.offsets[conv.inputs[0]], em.offsets[op.outputs[0]]
    calls, kernel_scratch, prev = [], 0, None
    no_pad = SimpleNamespace(pad_left=0)
    for b in (reversed(fp.bands) if fp.reverse else fp.bands):
        t0, t1 = b.in_rows
        lines = []
        new0, new1 = t0, t1
        if prev is not None and not fp.reverse and prev[1] > t0:  # rows the last band made: to the ring's front
            keep0 = max(t0, prev[0])
            lines.append(f"memmove(arena + @RING@, arena + @RING@ + {(keep0 - prev[0]) * fp.t_row_bytes}, "
                         f"{(prev[1] - keep0) * fp.t_row_bytes}u);")
            new0 = prev[1]
        if prev is not None and fp.reverse and prev[0] < t1:  # bottom-up: they move to the ring's end
            keep1 = min(t1, prev[1])
            lines.append(f"memmove(arena + @RING@ + {(prev[0] - t0) * fp.t_row_bytes}, arena + @RING@, "
                         f"{(keep1 - prev[0]) * fp.t_row_bytes}u);")
            new1 = prev[0]
        steps = []
        if new0 < new1:
            steps.append((conv, band_operator(conv, sub, Band((new0, new1), (new0, new1), 0), no_pad),
                          f"((int8_t *)(arena + {x_off + new0 * fp.x_row_bytes}))",
                          f"((int8_t *)(arena + @RING@ + {(new0 - t0) * fp.t_row_bytes}))"))
        steps.append((op, band_operator(op, sub, b, fp), "((int8_t *)(arena + @RING@))",
                      f"((int8_t *)(arena + {y_off + b.out_rows[0] * fp.out_row_bytes}))"))
        for layer_op, band_op, src, dst in steps:
            em.pointers[band_op.inputs[0]], em.pointers[band_op.outputs[0]] = src, dst
            em.scratch_bytes[em.layer] = 0
            lines.append(kernel_for(layer_op).emit(band_op, sub, em).strip())
            kernel_scratch = max(kernel_scratch, em.scratch_bytes[em.layer])
        calls.append(f"/* rows {b.out_rows[0]}..{b.out_rows[1] - 1} from conv rows {t0}..{t1 - 1} */\n"
                     + "\n".join(lines))
        prev = (t0, t1)
    ring_at = (kernel_scratch + ALIGN - 1) // ALIGN * ALIGN
    em.scratch_bytes[em.layer] = ring_at + fp.scratch_bytes
    head = (f"/* #{conv.index} CONV_2D fused with this DEPTHWISE_CONV_2D in {len(fp.bands)} bands: a ring of "
            f"{fp.ring_rows} conv output rows, output = conv input {fp.delta:+d} B */")
    return head + "\n" + "\n".join(calls).replace("@RING@", str(em.layer_scratch() + ring_at))


def _emit_residual(op: Operator, graph: Graph, em: _Emitter, rp: ResidualPlan) -> str:
    """A residual block band by band (passes/inplace.ResidualPlan): each layer but the last
    makes its new rows into its ring (the rows it made for the last band and still needed
    move to the ring's front), the last layer makes a band of u after the rings, and the
    ADD writes the band's rows of z."""
    from types import SimpleNamespace

    sub, layers = em.band_graph, rp.layers
    x_off, z_off = em.offsets[layers[0].inputs[0]], em.offsets[op.outputs[0]]
    rings = rp.ring_offsets()
    window = [None] * len(rings)  # (first row, end row) each ring holds
    calls, kernel_scratch = [], 0

    def emit(layer: Operator, band: Band, pad_left: int, src: str, dst: str) -> str:
        nonlocal kernel_scratch
        band_op = band_operator(layer, sub, band, SimpleNamespace(pad_left=pad_left))
        em.pointers[band_op.inputs[0]], em.pointers[band_op.outputs[0]] = src, dst
        em.scratch_bytes[em.layer] = 0
        text = kernel_for(layer).emit(band_op, sub, em).strip()
        kernel_scratch = max(kernel_scratch, em.scratch_bytes[em.layer])
        return text

    def source(k: int, first_row: int) -> str:  # layer k's input row first_row
        if k == 0:
            return f"((int8_t *)(arena + {x_off + first_row * rp.row_bytes[0]}))"
        return f"((int8_t *)(arena + @RING@ + {rings[k - 1] + (first_row - window[k - 1][0]) * rp.row_bytes[k]}))"

    for b, steps in zip(rp.bands, rp.steps):
        lines = []
        for k, st in enumerate(steps):
            (new0, new1), rb = st.band.out_rows, rp.row_bytes[k + 1]
            if new0 >= new1:
                continue
            if window[k] is not None and window[k][1] > st.window and st.window > window[k][0]:
                lines.append(f"memmove(arena + @RING@ + {rings[k]}, arena + @RING@ + "
                             f"{rings[k] + (st.window - window[k][0]) * rb}, {(window[k][1] - st.window) * rb}u);")
            window[k] = (st.window, new1)
            lines.append(emit(layers[k], st.band, rp.pad_left[k], source(k, st.band.in_rows[0]),
                              f"((int8_t *)(arena + @RING@ + {rings[k] + (new0 - st.window) * rb}))"))
        lines.append(emit(layers[-1], b, rp.pad_left[-1], source(len(layers) - 1, b.in_rows[0]),
                          f"((int8_t *)(arena + @RING@ + {rings[-1]}))"))
        # the ADD on the band's rows: x's rows and the u band in, z's rows out (over x's when aliased)
        rows = b.out_rows[1] - b.out_rows[0]
        band_tensors = []
        for i in (*op.inputs, op.outputs[0]):
            t = sub.tensor(i)
            bt = Tensor(len(sub.tensors), f"{t.name}_rows{b.out_rows[0]}", (1, rows, *t.shape[2:]), t.dtype, t.quant)
            sub.tensors.append(bt)
            band_tensors.append(bt.index)
            em.pointers[bt.index] = (f"((int8_t *)(arena + @RING@ + {rings[-1]}))" if i == layers[-1].outputs[0] else
                                     f"((int8_t *)(arena + {(z_off if i == op.outputs[0] else x_off) + b.out_rows[0] * rp.row_bytes[0]}))")
        em.scratch_bytes[em.layer] = 0
        lines.append(kernel_for(op).emit(Operator(op.index, op.opcode, band_tensors[:2], band_tensors[2:], op.options),
                                         sub, em).strip())
        kernel_scratch = max(kernel_scratch, em.scratch_bytes[em.layer])
        calls.append(f"/* rows {b.out_rows[0]}..{b.out_rows[1] - 1} */\n" + "\n".join(lines))
    ring_at = (kernel_scratch + ALIGN - 1) // ALIGN * ALIGN
    em.scratch_bytes[em.layer] = ring_at + rp.scratch_bytes
    names = ", ".join(f"#{layer.index} {layer.opcode}" for layer in layers)
    head = (f"/* {names} and this ADD fused in {len(rp.bands)} bands: rings of {', '.join(map(str, rp.ring_rows))} "
            f"rows and a band of {rp.band_rows}, output over the block input */")
    return head + "\n" + "\n".join(calls).replace("@RING@", str(em.layer_scratch() + ring_at))


def fused_into(step: int, bands: dict) -> int | None:
    """The device step whose statements run this step's layer (a 1x1 conv fused into the
    depthwise after it, a layer fused into its residual block's ADD), else None. Its
    instructions are counted there."""
    if isinstance(bands.get(step + 1), FusedPlan):
        return step + 1
    for k in (1, 2, 3):
        if isinstance(bands.get(step + k), ResidualPlan) and len(bands[step + k].layers) >= k:
            return step + k
    return None


def emit_layer(op: Operator, graph: Graph, em: _Emitter, step: int, bands: dict[int, BandPlan],
               plan: MemoryPlan | None) -> str:
    """The C statements of one device layer, with the RAM techniques applied."""
    em.layer = step
    with operator_errors(op):
        host = fused_into(step, bands)
        if host is not None:
            into = "the next layer" if isinstance(bands[host], FusedPlan) else "the residual block's ADD"
            return f"/* #{op.index} {op.opcode}: fused into {into} */"
        if isinstance(bands.get(step), ResidualPlan):
            return _emit_residual(op, graph, em, bands[step])
        if isinstance(bands.get(step), FusedPlan):
            return _emit_fused(op, graph, em, bands[step])
        if isinstance(bands.get(step), int):  # the depthwise kernel's own in-place mode
            return kernel_for(op).emit(replace(op, options={**op.options, "in_place": True}), graph, em).strip()
        if isinstance(bands.get(step), PanelPlan):  # whole, its output over its input (planned offsets)
            return (f"/* in place: output = input {bands[step].delta:+d} B (each panel is built before its "
                    "outputs are written) */\n" + kernel_for(op).emit(op, graph, em).strip())
        if step in bands:
            return _emit_banded(op, graph, em, bands[step])
        aliased = plan is not None and any(a.member == op.outputs[0] for a in plan.aliases if a.kind == "reshape")
        if op.opcode == "RESHAPE" and aliased:
            return "/* RESHAPE: its output is its input's bytes, nothing to copy */"
        placed = _concat_placed(op, plan) if plan is not None and op.opcode == "CONCATENATION" else set()
        if placed:
            lines, offset = [f"/* CONCATENATION: {len(placed)} of {len(op.inputs)} inputs written in place */"], 0
            for i in op.inputs:
                n = graph.tensor(i).nbytes
                if i not in placed:
                    lines.append(f"memcpy(arena + {em.offsets[op.outputs[0]] + offset}, arena + {em.offsets[i]}, {n}u);")
                offset += n
            return "\n".join(lines)
        return kernel_for(op).emit(op, graph, em).strip()


def prepare(graph: Graph, kernels: str, board, config: RamConfig, exact: bool | None = None,
            scratch_cache: dict | None = None) -> Prepared:
    """Passes, host/device split, aliases, each layer's scratch and the memory plan.
    ``scratch_cache`` (a search's, while its graphs are alive): layer scratch by
    (operator, how it runs), so candidates do not emit the same layer again."""
    graph = run_passes(graph, config)
    host_pre, device_ops, host_post = split_boundaries(graph)
    device_inputs, device_outputs = device_boundary(graph, host_pre, device_ops, host_post)
    if not device_ops:
        raise MicrotileError(f"model {graph.name} has no operators to run on the device")
    if board is not None:
        check_tensor_sizes(graph, device_ops, board)
    exact = config.exact if exact is None else exact
    band_graph = Graph(graph.name, list(graph.tensors), graph.operators, graph.inputs, graph.outputs)

    cache = {} if scratch_cache is None else scratch_cache

    def scratch_of(bands: dict) -> dict[int, int]:
        probe = _Emitter(graph, None, kernels, board)
        probe.band_graph = band_graph
        sizes = {}
        for step, op in enumerate(device_ops):
            key = (id(op), repr(bands.get(step)))
            if key not in cache:
                emit_layer(op, graph, probe, step, bands, None)
                cache[key] = probe.scratch_bytes.get(step, 0)
            if cache[key]:
                sizes[step] = cache[key]
        return sizes

    band_kinds = ("conv_2d", "depthwise_conv_2d")

    def plan_with(aliases: list, bands: dict, exact: bool) -> MemoryPlan:
        fused = {step: fp for step, fp in bands.items() if isinstance(fp, FusedPlan)}
        virtual = {fp.conv.outputs[0] for fp in fused.values()}
        virtual |= {c.outputs[0] for rp in bands.values() if isinstance(rp, ResidualPlan) for c in rp.layers}
        extend = {fp.conv.inputs[0]: step for step, fp in fused.items()}
        scratch = scratch_of(bands)
        kept = [a for a in aliases if a.kind not in band_kinds or any(device_ops[s].outputs[0] == a.member for s in bands)]
        extra = dict(virtual=virtual, extend=extend)
        if config.shared_scratch:
            return plan_memory(graph, device_ops, device_inputs, device_outputs, scratch, kept, exact=exact, **extra)
        # one region after the planned tensors, shared by the layers (the planner of before)
        plan = plan_memory(graph, device_ops, device_inputs, device_outputs, None, kept, exact=exact, **extra)
        region = max(scratch.values(), default=0)
        if region:
            at = (plan.arena_size + 15) // 16 * 16
            plan.scratch = {step: (at, region) for step in range(len(device_ops))}
            plan.arena_size = at + region
        return plan

    def attempt(cut: bool):
        aliases, bands = find_aliases(graph, device_ops, device_inputs, device_outputs, config, kernels, cut)
        plan = plan_with(aliases, bands, exact=False)
        accepted = {a.member for a in plan.aliases if a.kind in band_kinds}
        kept = {step: bp for step, bp in bands.items()
                if device_ops[step].outputs[0] in accepted or isinstance(bp, (FusedPlan, ResidualPlan))}
        if kept != bands or exact:  # a band layer whose alias was dropped runs whole, without a band copy
            plan = plan_with(aliases, kept, exact)
        return plan.arena_size, aliases, kept, plan

    # every layer that can in place, or only those above the peak (a shorter chain drifts less);
    # at equal arenas the cut one: a layer left whole runs its whole-layer kernel, not band calls
    # (VWW's 6x6 pairs: the planar depthwise instead of fused bands, -328k est. cycles)
    _, aliases, bands, plan = min((attempt(cut) for cut in (True, False)), key=lambda a: a[0])
    return Prepared(graph, config, host_pre, device_ops, host_post, device_inputs, device_outputs, bands, plan,
                    band_graph)


def compile_model(graph: Graph, kernels: str = "reference", board=None, ram: RamConfig | None = None,
                  ram_budget: int | None = None) -> CompiledModel:
    """``kernels``: "reference" (portable kernels, TFLM's loop structure) or
    "optimized" (schedule-specialised kernels); both are bit-exact with TFLM.
    ``ram``: the RAM techniques to use; None searches them (passes/ram_search.py) for
    the fastest configuration whose arena fits ``ram_budget`` (default: the board's)."""
    if kernels not in KERNEL_SETS:
        raise MicrotileError(f"unknown kernel set {kernels!r}: choose one of {', '.join(KERNEL_SETS)}")
    validate(graph)
    search = None
    if ram is None:
        from microtile.passes.ram_search import search_ram

        search = search_ram(graph, kernels, board, ram_budget)
        prep = search.chosen_prepared
    else:
        prep = prepare(graph, kernels, board, ram)
    compiled = emit_model(prep, kernels, board)
    compiled.search = search
    return compiled


def emit_model(prep: Prepared, kernels: str, board) -> CompiledModel:
    graph, plan, device_ops = prep.graph, prep.plan, prep.device_ops
    device_inputs, device_outputs = prep.device_inputs, prep.device_outputs
    em = _Emitter(graph, plan, kernels, board)
    em.band_graph = prep.band_graph
    cases = []
    for layer, op in enumerate(device_ops):
        body = emit_layer(op, graph, em, layer, prep.bands, plan)
        body = "\n".join("        " + line for line in body.splitlines())
        cases.append(f"    case {layer}: /* #{op.index} {op.opcode} */\n{body}\n        break;")
    for layer, n in em.scratch_bytes.items():  # the probe sized what emission asked for
        assert n <= plan.scratch.get(layer, (0, 0))[1], (layer, n, plan.scratch.get(layer))

    def buffers(indices: list[int]) -> str:
        return ", ".join(f"{{{plan.offsets[i]}u, {graph.tensor(i).nbytes}u}}" for i in indices)

    includes = "\n".join(f'#include "{h}"' for h in em.includes)
    body_c = "\n".join(em.decls) + "\n\n" + "static void run_layer(uint32_t layer, uint8_t *arena)\n{\n" \
        + "    (void)arena; /* a model of aliases only reads no tensor */\n    switch (layer) {\n" + "\n".join(cases) + "\n    default:\n        break;\n    }\n}\n"
    safe_name = graph.name.replace("\\", "_").replace('"', "_")
    digest = hashlib.sha256((CODEGEN_VERSION + safe_name + kernels + includes + body_c + buffers(device_inputs)
                             + buffers(device_outputs)).encode()).hexdigest()
    model_c = f"""/* Generated by microtile from {safe_name}: do not edit. */
#include <stdint.h>
#include <string.h>
#include "model.h"
{includes}

{body_c}
static const mt_buffer model_inputs[] = {{{buffers(device_inputs)}}};
static const mt_buffer model_outputs[] = {{{buffers(device_outputs)}}};

const mt_model mt_model_def = {{
    "{safe_name}", 0x{digest[:8]}u, {plan.arena_size}u,
    {len(device_inputs)}, {len(device_outputs)}, {len(device_ops)},
    model_inputs, model_outputs, run_layer,
}};
"""
    model_h = f"""/* Generated by microtile from {safe_name}: do not edit. */
#ifndef MT_GENERATED_MODEL_H
#define MT_GENERATED_MODEL_H

#include "mt_model.h"

#define MT_ARENA_SIZE {max(plan.arena_size, 8)}u
#define MT_MODEL_HASH 0x{digest[:8]}u
#define MT_NUM_LAYERS {len(device_ops)}u

#endif
"""
    return CompiledModel(graph, kernels, board, device_ops, prep.host_pre, prep.host_post, device_inputs,
                         device_outputs, plan, model_c, model_h, em.const_bytes, digest, prep.config, prep.bands,
                         band_graph=em.band_graph)
