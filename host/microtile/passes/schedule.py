"""Analytical schedules for matmul-shaped layers (MEMA-style): register tile, loop
order, reduction unroll and weight format, chosen by formula from M, N, K and the
core's register budget, with a cost model in instructions per MAC.

Every matmul-shaped layer is C[M x N] = A[M x K] * B[N x K]^T:
FULLY_CONNECTED (M = batches, K = depth, N = units), CONV_2D 1x1 (M = pixels,
K = input channels) and general CONV_2D as implicit GEMM (M = output pixels,
K = KH * KW * C_in, A built row by row as an int16 im2col panel).

The kernels (firmware/kernels/mt_matmul_opt.c) run the reduction in k-blocks of 4
int8 values: one 32-bit word of int8 gives two SXTB16 results, i.e. two SMLAD
operand pairs. The model (docs/schedules.md states it with the same symbols):

  instructions per k-block of an mr x nr tile
      I_blk = 2*mr*nr                      SMLAD: 4 MACs per (row, channel) pair
            + L_A(mr)                      A loads: LDM of two panel rows, LDRD for one
            + L_B(nr, wide)                B loads: LDR / LDRD / LDM of packed weights
            + 2*nr*(1 - wide)              SXTB16 (+ROR8) of int8 weights
            + 1/2 * 2                      SUBS+BNE per two blocks (unroll 2)
  instructions per MAC, inner loop:   I_blk / (4*mr*nr)
  plus per output:                    R (requantise, clamp, store)
  plus per tile:                      T (bias into accumulators, loop entry)
  plus per A row and k-block:         E (im2col: LDR, 2 SXTB16, STRD, loop; more
                                      at the borders)

Register budget (Cortex-M4/M7, 13 general registers usable in the loop): 3 hold the
A and B pointers and the loop counter, 4 receive one LDM (two panel rows or two
int16 channels), 2 hold the current operand pair: 13 - 3 - 4 - 2 = 4 accumulators,
so mr*nr = 4. The split of those 4 minimises the operand cost per MAC,
c_A/nr + c_B/mr, where c_A = 1/2 (an LDM brings two rows) and c_B = 2 + 1/4 for
int8 weights (two SXTB16 and a quarter of an LDM) or 1/4..1/2 for int16 weights:
since c_B >= c_A the rows side gets the larger factor, mr = 4, nr = 1 (k-first loop
order: the 4x1 output tile stays in registers for the whole reduction, the
extended weight pair of the block is reused by 4 rows). With M < 4 (FC, batch 1)
mr = 1 and nr = 4 (the input pair is reused by 4 channels). The A panel of mr rows
lives in the arena (a scratch region after the planned tensors, codegen's
``scratch``), never on the stack, so it is part of the RAM the fit check and the
run report count; mr = 4 only while its 4-row panel stays within the panel budget
(3/8 of the board's stack size: the RAM a 4-row panel may cost), else mr = 1.

Weight format: int16 duplicates of the weights (pre-extended, pre-paired) remove the
SXTB16s (c_B = 1/2 for 1x4, LDRD for 4x1) at twice the flash. It is a budgeted
choice: layers are given int16 weights in order of instructions saved per extra
byte while the extra bytes fit the board's flash budget.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from microtile.importer.ir import Graph, Operator

# Registers and loop structure of the DSP kernels (see module docstring).
REGISTERS = 13
POINTER_REGS = 3      # A pointer, B pointer, loop counter
LDM_REGS = 4          # one LDM group
OPERAND_REGS = 2      # the current operand pair
ACCUMULATORS = REGISTERS - POINTER_REGS - LDM_REGS - OPERAND_REGS  # = 4
K_BLOCK = 4           # int8 values per word: two SMLAD pairs
K_UNROLL = 2          # blocks per loop iteration

# Per-output, per-tile and per-panel-element costs (instructions), calibrated on
# QEMU netduinoplus2 with arm-none-eabi-gcc 12.2 -O2 (tests/test_ops_conv_opt.py
# checks predictions against measurements on QEMU, within 10%).
REQUANT = 14.0        # requantise (SMMULR path) + clamp + store one output
TILE = 18.0           # bias loads, pointer set-up, odd-block branch per tile
PANEL_BLOCK = 10.0    # one k-block of one A row (fast path: LDR, 2 SXTB16, STRD, loop)
PANEL_ROW = 20.0      # per filter row of a conv window (bounds, source address)
COPY_ROW = 40.0       # per filter row copied bytewise (filter rows that are not whole words)
GATHER_TAP = 20.0     # per filter tap on the gather path (borders, odd row lengths)
GATHER_VALUE = 4.0    # per value on the gather path
GATHER_BLOCK = 6.0    # per k-block converting the gathered bytes

# Budget for a 4-row A panel (bytes), as a share of the board's stack size; the
# panel itself lives in the arena's scratch region.
STACK_FRACTION = 3 / 8
DEFAULT_STACK = 0x2000
DEFAULT_FLASH = 0x100000
FLASH_FRACTION = 0.6  # share of the flash the weights (int8 + int16 copies) may take


@dataclass(frozen=True)
class Schedule:
    op: str                 # opcode
    kind: str               # "fc", "conv1x1" or "conv"
    m: int                  # rows of A (pixels or batches)
    n: int                  # output channels
    k: int                  # reduction length
    mr: int                 # register tile rows (pixels)
    nr: int                 # register tile columns (output channels)
    wide: bool              # int16 weights (flash budget permitting)
    loop_order: str
    k_unroll: int           # reduction values per loop iteration
    k_blocks: int           # ceil(K / 4)
    scratch_bytes: int      # arena scratch bytes for the A panel (and the conv gather row)
    inner_ipm: float        # instructions per MAC of the reduction loop alone
    predicted_ipm: float    # instructions per MAC of the whole layer

    @property
    def tile(self) -> str:
        return f"{self.mr}x{self.nr}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tile"] = self.tile
        d["weights"] = "int16" if self.wide else "int8"
        return d


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def block_instructions(mr: int, nr: int, wide: bool) -> float:
    """I_blk: instructions per k-block (4 reduction steps) of an mr x nr tile."""
    smlad = 2 * mr * nr
    a_loads = _ceil(mr, 2)                      # LDM of two panel rows (LDRD for one)
    if wide:
        b_loads = 1 if nr == 1 else _ceil(nr, 2)  # LDRD of one channel, LDM of two
        ext = 0
    else:
        b_loads = 1 if nr == 1 else _ceil(nr, 4)  # LDR of one word, LDM of four
        ext = 2 * nr                            # SXTB16, SXTB16 ROR8 per channel
    loop = 2 / K_UNROLL                         # SUBS + BNE per K_UNROLL blocks
    return smlad + a_loads + b_loads + ext + loop


def choose_tile(m: int, k_blocks: int, stack_budget: int) -> tuple[int, int]:
    """The register tile by formula: mr*nr = ACCUMULATORS; mr = 4 (rows side, since
    int8/int16 weights cost at least as much per block as panel rows) when there are
    4 rows and their panel fits the stack budget, else mr = 1, nr = 4."""
    mr = 4 if m >= 4 and panel_bytes(4, k_blocks) <= stack_budget else 1
    return mr, ACCUMULATORS // mr


def panel_bytes(mr: int, k_blocks: int, kind: str = "conv") -> int:
    """Scratch bytes of a layer: MT_GEMM_SCRATCH_U64(mr, k_blocks) * 8 for a conv
    (panel + gather row), the panel alone (mr * k_blocks * 8) for FC."""
    return (mr * k_blocks + (0 if kind == "fc" else (k_blocks + 1) // 2)) * 8


def panel_row_cost(k: int, geometry: dict | None = None, border_fraction: float = 0.0) -> float:
    """Instructions to build one A panel row. FC: kb * PANEL_BLOCK. Conv, window
    inside horizontally: per filter row PANEL_ROW + its blocks extended in place, or,
    when a filter row is not whole words, copied (COPY_ROW + GATHER_VALUE per value)
    and converted (GATHER_BLOCK per block). Window across a side border: per tap
    GATHER_TAP + C * GATHER_VALUE, then the conversion."""
    kb = _ceil(k, K_BLOCK)
    if geometry is None:
        return kb * PANEL_BLOCK
    kh, kw, c = geometry["kh"], geometry["kw"], geometry["c"]
    if (kw * c) % K_BLOCK == 0:
        inside = kh * (PANEL_ROW + (kw * c // K_BLOCK) * PANEL_BLOCK)
    else:
        inside = kh * (COPY_ROW + kw * c * GATHER_VALUE) + kb * GATHER_BLOCK
    border = kh * kw * (GATHER_TAP + c * GATHER_VALUE) + kb * GATHER_BLOCK
    return inside * (1 - border_fraction) + border * border_fraction


def predict(kind: str, m: int, n: int, k: int, mr: int, nr: int, wide: bool,
            panel_row: float | None = None) -> tuple[float, float]:
    """(inner-loop instructions/MAC, whole-layer instructions/MAC)."""
    kb = _ceil(k, K_BLOCK)
    i_blk = block_instructions(mr, nr, wide)
    tiles = _ceil(m, mr) * _ceil(n, nr)
    loop = tiles * (kb * i_blk + TILE)
    outputs = m * n * REQUANT
    rows = _ceil(m, mr) * mr
    panel = rows * (panel_row_cost(k) if panel_row is None else panel_row)
    macs = m * n * k
    return i_blk / (4 * mr * nr), (loop + outputs + panel) / macs


# ------------------------------------------------------------------ layers

def matmul_shape(op: Operator, graph: Graph) -> tuple[str, int, int, int] | None:
    """(kind, M, N, K) of a matmul-shaped operator, or None."""
    if op.opcode == "FULLY_CONNECTED":
        f = graph.tensor(op.inputs[1])
        n, k = f.shape
        x = graph.tensor(op.inputs[0])
        size = 1
        for d in x.shape:
            size *= d
        return "fc", size // k, n, k
    if _conv_like(op, graph):
        from microtile.ops.conv import _conv_geometry
        g = _conv_geometry(op, graph)
        f = graph.tensor(op.inputs[1])
        n = f.shape[3] if op.opcode == "DEPTHWISE_CONV_2D" else f.shape[0]
        kind = "conv1x1" if g["kh"] == 1 and g["kw"] == 1 else "conv"
        return kind, g["n"] * g["oh"] * g["ow"], n, g["kh"] * g["kw"] * g["c"]
    return None


def _conv_like(op: Operator, graph: Graph) -> bool:
    """CONV_2D, or a DEPTHWISE_CONV_2D over one input channel (it runs as a CONV_2D)."""
    from microtile.ops.conv import depthwise_as_conv

    return op.opcode == "CONV_2D" or depthwise_as_conv(op, graph)


def _gather_fraction(op: Operator, graph: Graph) -> float:
    """Share of output pixels whose window crosses the left or right border (their
    panel rows are gathered tap by tap)."""
    if not _conv_like(op, graph):
        return 0.0
    from microtile.ops.conv import _conv_geometry
    g = _conv_geometry(op, graph)
    inside = sum(1 for ox in range(g["ow"]) if 0 <= ox * g["sw"] - g["pw"] and ox * g["sw"] - g["pw"] + g["kw"] <= g["w"])
    return 1.0 - inside / g["ow"]


def _board_limits(board) -> tuple[int, int]:
    """(stack budget for the panel, flash budget for weights) in bytes."""
    if board is None:
        return int(DEFAULT_STACK * STACK_FRACTION), int(DEFAULT_FLASH * FLASH_FRACTION)
    flash = board.memories["flash"].size if "flash" in board.memories else DEFAULT_FLASH
    return int(board.stack_size * STACK_FRACTION), int(flash * FLASH_FRACTION)


# Test hook: force the weight format ("int8" / "int16") regardless of the budget.
FORCE_WEIGHTS: str | None = None


def _graph_const_bytes(graph: Graph) -> int:
    return sum(t.nbytes for t in graph.tensors if t.is_constant)


def _wide_plan(graph: Graph, flash_budget: int, stack_budget: int) -> set[int]:
    """Operator indices given int16 weights: by instructions saved per extra flash
    byte, while the int16 copies plus every constant fit the flash budget."""
    spare = flash_budget - _graph_const_bytes(graph)
    candidates = []
    for op in graph.operators:
        shape = matmul_shape(op, graph)
        if shape is None:
            continue
        kind, m, n, k = shape
        kb = _ceil(k, K_BLOCK)
        mr, nr = choose_tile(m, kb, stack_budget)
        saved = (block_instructions(mr, nr, False) - block_instructions(mr, nr, True)) * kb * _ceil(m, mr) * _ceil(n, nr)
        extra = _ceil(n, nr) * nr * kb * 4  # the int16 copy replaces the int8 weights: +1 byte each
        candidates.append((saved / extra, op.index, extra))
    chosen: set[int] = set()
    for _, index, extra in sorted(candidates, reverse=True):
        if extra <= spare:
            chosen.add(index)
            spare -= extra
    return chosen


_PLANS: dict[tuple[int, int, int], set[int]] = {}


def schedule_for(op: Operator, graph: Graph, board=None) -> Schedule:
    """The schedule of a matmul-shaped layer (FULLY_CONNECTED or CONV_2D)."""
    shape = matmul_shape(op, graph)
    if shape is None:
        raise ValueError(f"operator #{op.index} {op.opcode} is not matmul-shaped")
    kind, m, n, k = shape
    stack_budget, flash_budget = _board_limits(board)
    kb = _ceil(k, K_BLOCK)
    mr, nr = choose_tile(m, kb, stack_budget)
    if FORCE_WEIGHTS is not None:
        wide = FORCE_WEIGHTS == "int16"
    else:
        key = (id(graph), flash_budget, stack_budget)
        if key not in _PLANS:
            _PLANS[key] = _wide_plan(graph, flash_budget, stack_budget)
        wide = op.index in _PLANS[key]
    geometry = None
    if _conv_like(op, graph):
        from microtile.ops.conv import _conv_geometry
        geometry = _conv_geometry(op, graph)
    row = panel_row_cost(k, geometry, _gather_fraction(op, graph))
    inner, total = predict(kind, m, n, k, mr, nr, wide, row)
    order = ("k-first: the %dx%d output tile stays in registers for the whole reduction; "
             "%s" % (mr, nr, "the weight pair of a block is reused by %d rows" % mr if mr > 1
                     else "the input pair of a block is reused by %d channels" % nr))
    return Schedule(op.opcode, kind, m, n, k, mr, nr, wide, order, K_BLOCK * K_UNROLL, kb,
                    panel_bytes(mr, kb, kind), round(inner, 4), round(total, 4))


def _optimized_schedule(op: Operator, graph: Graph, board) -> dict:
    """The schedule of a layer the optimised kernels run (explain() checks that)."""
    if matmul_shape(op, graph) is None:
        from microtile.ops.opt_schedules import explain_op  # depthwise, pooling, add, softmax

        vector = explain_op(op, graph)
        if vector is None:
            return {}
        return {"loop_order": vector["schedule"], "predicted_ipm": vector["predicted_ipm"]}
    s = schedule_for(op, graph, board)
    return {"kind": s.kind, "M": s.m, "N": s.n, "K": s.k, "tile": s.tile,
            "weights": "int16" if s.wide else "int8", "loop_order": s.loop_order,
            "k_unroll": s.k_unroll, "predicted_ipm": s.predicted_ipm, "inner_ipm": s.inner_ipm}


def explain(compiled) -> list[dict]:
    """Per device layer: op, shape, the kernel it runs ("opt", "ref: <reason>" when the
    optimised set falls back, "ref"), and for optimised layers M/N/K, tile, loop
    order and the predicted instructions per MAC."""
    from microtile.ops import kernel_label

    graph = compiled.graph
    board = getattr(compiled, "board", None)
    rows = []
    for layer, op in enumerate(compiled.device_ops):
        entry: dict = {"layer": layer, "index": op.index, "op": op.opcode,
                       "shape": list(graph.tensor(op.outputs[0]).shape),
                       "kernel": kernel_label(op, graph, compiled.kernels)}
        if entry["kernel"] == "opt":
            entry.update(_optimized_schedule(op, graph, board))
        rows.append(entry)
    return rows


def ideal_ipm(mr: int, nr: int, wide: bool) -> float:
    """Inner-loop instructions per MAC (no requantisation, no panel)."""
    return block_instructions(mr, nr, wide) / (4 * mr * nr)


__all__ = ["ACCUMULATORS", "Schedule", "block_instructions", "choose_tile", "explain", "ideal_ipm",
           "matmul_shape", "predict", "schedule_for"]

