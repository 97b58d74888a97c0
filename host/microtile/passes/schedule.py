"""Analytical schedules for matmul-shaped layers (MEMA-style): register tile, loop
order, weight format and where the weights live, chosen to minimise the **estimated
cycles** of the target board (its core's instruction timings and its flash wait
states, the figures of ``microtile.measure.timing.TIMING``), within the board's flash
and RAM budgets. Instructions per MAC are predicted beside them.

Every matmul-shaped layer is C[M x N] = A[M x K] * B[N x K]^T:
FULLY_CONNECTED (M = batches, K = depth, N = units), CONV_2D 1x1 (M = pixels,
K = input channels) and general CONV_2D as implicit GEMM (M = output pixels,
K = KH * KW * C_in, A built row by row as an int16 im2col panel).

The kernels (firmware/kernels/mt_matmul_opt.c) run the reduction in k-blocks of 4
int8 values: one 32-bit word of int8 gives two SXTB16 results, i.e. two SMLAD
operand pairs. Each tile kernel's k-block is a fixed instruction sequence
(``BLOCK_OPS``, the asm in mt_matmul_opt.c), costed with TIMING:

  tile 3x2 (6 accumulators, 2 pointers, no counter: the loop ends at the panel's end)
      int8:  4 LDR (2 weight words, row 0; pipelined), 2 LDRD rows,
             4 SXTB16, 12 SMLAD                                     27 cycles / 24 MACs
      int16: LDM 4 weights, 3 LDRD panel rows, 12 SMLAD              26 cycles
  tile 4x1 (4 accumulators + counter)
      int8:  LDR, 2 LDM 4 panel words, 2 SXTB16, 8 SMLAD             22 cycles / 16 MACs
      int16: LDRD, 2 LDM 4, 8 SMLAD                                  21 cycles
  tile 1x4 (FC at batch 1: the input pair meets 4 channels)
      int8:  LDRD input, LDM 4 weights, 8 SXTB16, 8 SMLAD            24 cycles / 16 MACs
      int16: LDRD input, 2 LDM 4 weights, 8 SMLAD                    21 cycles

plus the loop (per 2 blocks: SUBS + taken BNE; for 3x2 per 4 blocks: LDR end + CMP + taken BNE),
plus the weights' flash traffic: weights are read once per panel (they do not fit the
8-line ART data cache), so each k-block pays wait_states * (weight bytes / line bytes)
when the weights live in flash and nothing when they live in SRAM. Requantisation,
tile set-up and the im2col panel are predicted in instructions (constants calibrated
on QEMU) and converted with OVERHEAD_CPI (calibrated on the timing model).

Choices, per layer: the tile with the fewest estimated cycles among those the rows
allow (3x2 and 4x1 need 3 / 4 rows and their panel within the panel budget: 3/8 of
the stack size or 1/32 of the RAM; 1x4 always); the weight format: int16 copies save the SXTB16s but double the weight
bytes (ROM, and flash traffic), given by cycles saved per extra ROM byte while the
whole build fits the ROM limit (the ROM rule of issue 8: the reference build's ROM + 10 %;
``--flash-budget BYTES`` sets the limit instead, and a limit below the smallest build the
optimised kernels can make is refused); the placement: weights copied to SRAM (.data, by
the startup) by cycles saved per RAM byte while they fit the RAM budget (the board's RAM
less the stack, every activation tensor and a reserve). Weights in SRAM cost no extra
ROM (their initial values are the flash copy).

The ROM of both builds is predicted, not built (``reference_rom``, ``optimized_rom``):
the constant bytes each kernel set emits are computed from the graph (weights as packed,
per-channel tables, the depthwise stream, the softmax table); the code and structs beside
them are constants measured on the four MLPerf Tiny builds for the NUCLEO-L4R5ZI (the
reference's least, the optimised kernels' most: the prediction errs on the rule's side).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from microtile.errors import DoesNotFitError
from microtile.importer.ir import Graph, Operator

# Registers of the 4x1 / 1x4 kernels (Cortex-M4/M7, 13 general registers in the loop):
# 3 hold the A pointer, B pointer and counter, 4 receive one LDM, 2 the current pair.
REGISTERS = 13
POINTER_REGS = 3      # A pointer, B pointer, loop counter
LDM_REGS = 4          # one LDM group
OPERAND_REGS = 2      # the current operand pair
ACCUMULATORS = REGISTERS - POINTER_REGS - LDM_REGS - OPERAND_REGS  # = 4
K_BLOCK = 4           # int8 values per word: two SMLAD pairs
K_UNROLL = 2          # blocks per loop iteration

# The tile kernels mt_matmul_opt.c has, and the instructions of one k-block of each:
# (timing class, registers for LDM or None, count). "multiple" costs TIMING's 1+N.
TILES = ((3, 2), (4, 1), (1, 4))
BLOCK_OPS = {
    (3, 2, False): [("load", None, 1), ("load_pipelined", None, 3), ("load_dual", None, 2), ("dsp", None, 4 + 12)],
    (3, 2, True): [("multiple", 4, 1), ("load_dual", None, 3), ("dsp", None, 12)],
    (4, 1, False): [("load", None, 1), ("multiple", 4, 2), ("dsp", None, 2 + 8)],
    (4, 1, True): [("load_dual", None, 1), ("multiple", 4, 2), ("dsp", None, 8)],
    (1, 4, False): [("load_dual", None, 1), ("multiple", 4, 1), ("dsp", None, 8 + 8)],
    (1, 4, True): [("load_dual", None, 1), ("multiple", 4, 2), ("dsp", None, 8)],
}
# Direct 1x4 tiles (FC, no panel): the input pair is LDR + 2 SXTB16 instead of the
# panel's LDRD (shared by the 4 channels), and no panel row is built.
DIRECT_BLOCK_OPS = {
    (1, 4, False): [("load", None, 1), ("multiple", 4, 1), ("dsp", None, 2 + 8 + 8)],
    (1, 4, True): [("load", None, 1), ("multiple", 4, 2), ("dsp", None, 2 + 8)],
}
# The loop per LOOP_BLOCKS[mr] blocks (the BNE is taken: + P): 3x2 reads the panel end
# from the stack, 8 blocks per iteration (MT_REDUCE6_UNROLL, entered by TBH at kb % 8);
# 4x1 and 1x4 count down, 2 blocks (K_UNROLL).
LOOP_BLOCKS = {3: 8, 4: K_UNROLL, 1: K_UNROLL}
LOOP_OPS = {3: [("load", None, 1), ("alu", None, 1), ("branch", None, 1)],
            1: [("alu", None, 1), ("branch", None, 1)], 4: [("alu", None, 1), ("branch", None, 1)]}

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
# The 3x2 tile with the int8 activation range (MODE 2) runs its channel tiles as one
# asm loop (mt_matmul_opt.c, mt_tiles_3x2_m2_w*): per output LSL, SMMLAR, ADD, ASR,
# SSAT and STRB; per tile the bias, the table pointer, the reduction's entry (LDR and
# TBH) and the loop's end test. Other activation ranges keep the C loop (TILE, REQUANT).
REQUANT_3x2 = 6.0
TILE_3x2 = 24.0
ASM_CPI_3x2 = 1.33  # its est. cycles per instruction (VWW's K=8 layer: 138.6 est. cycles per tile, 54 in its 2 blocks)
# Estimated cycles per instruction of that scalar code (requantisation, set-up, im2col:
# loads, stores, spills, taken branches), fitted on the timing model (NUCLEO-L4R5ZI).
OVERHEAD_CPI = 1.45
TABLE_BYTES = 16      # bias + 3 requantisation words per output channel (read from flash once per tile)

# Budget for a 4-row A panel (bytes), as a share of the board's stack size; the
# panel itself lives in the arena's scratch region.
STACK_FRACTION = 3 / 8
PANEL_RAM_SHARE = 32  # ... or 1/32 of the RAM, whichever is larger (panel_budget)
DEFAULT_STACK = 0x2000
DEFAULT_FLASH = 0x100000
DEFAULT_RAM = 0x20000
FLASH_FRACTION = 0.6  # share of the flash the weights may take at most (any budget)
ROM_MARGIN = 0.10     # the optimised build's ROM: the reference build's + 10 % by default
# ROM besides the constants reference_rom / optimized_rom count (code, layer structs, the
# port), measured with arm-none-eabi-size on the NUCLEO-L4R5ZI builds of the MLPerf Tiny models.
REFERENCE_CODE = 10 * 1024
OPT_CODE = 16 * 1024
REF_CHANNEL_BYTES = 8     # reference kernels: int32 multiplier and shift per output channel
OPT_CHANNEL_BYTES = 16    # optimised GEMM: folded bias + (mult, k, right) per (padded) channel
DW_SHAPE_CODE = 1536      # one depthwise function specialised for a layer shape (KWS: 1,088-1,536 B)
SOFTMAX_TABLE = 1024      # the optimised SOFTMAX's exp table (int32[256])
RAM_RESERVE = 16 * 1024      # RAM kept free besides the stack and the activations (statics, panel)


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
    scratch_bytes: int      # arena scratch bytes for the A panel (and the conv gather row); 0 if direct
    inner_ipm: float        # instructions per MAC of the reduction loop alone
    predicted_ipm: float    # instructions per MAC of the whole layer
    sram: bool = False      # weights copied to SRAM (.data) instead of read from flash
    predicted_cpm: float = 0.0   # estimated cycles per MAC of the whole layer on the board
    inner_cpm: float = 0.0       # estimated cycles per MAC of the reduction loop (flash included)
    direct: bool = False         # FC 1x4 tile reading the int8 input (no panel, no scratch)

    @property
    def tile(self) -> str:
        return f"{self.mr}x{self.nr}"

    @property
    def weights(self) -> str:
        return ("int16" if self.wide else "int8") + (", SRAM" if self.sram else "")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tile"] = self.tile
        d["weights"] = self.weights
        return d


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------ the core and its memory

@dataclass(frozen=True)
class Target:
    """What the cost model needs of a board: its core's TIMING entry, flash wait states
    and line bytes (microtile.measure.timing.MemorySystem), budgets."""
    core: str = "cortex-m4"
    wait_states: int = 0
    miss_cycles: int = 0
    line_bytes: int = 32


def target_of(board) -> Target:
    if board is None:
        return Target()
    from microtile.measure.timing import MemorySystem

    core = "cortex-m7" if getattr(board, "core", "") == "cortex-m7" else "cortex-m4"
    try:
        mem = MemorySystem.for_board(board)
    except AttributeError:  # a board without a clock tree (tests' stand-ins): zero wait states
        return Target(core)
    return Target(core, mem.wait_states, mem.miss_cycles, mem.line_bytes)


def _op_cycles(ops: list, core: str) -> float:
    from microtile.measure.timing import TIMING

    cycles = TIMING[core]["cycles"]
    total = 0.0
    for cls, regs, count in ops:
        if cls == "multiple":
            total += count * (1 + (regs / 2 if cycles["multiple"] == "1+N/2" else regs))
        else:
            total += count * cycles[cls]
    return total


def block_cycles(mr: int, nr: int, wide: bool, target: Target = Target(), sram: bool = False,
                 direct: bool = False) -> float:
    """Estimated cycles of one k-block of an mr x nr tile: its instructions (TIMING),
    the loop's share and the weights' flash traffic."""
    from microtile.measure.timing import TIMING

    c = _op_cycles((DIRECT_BLOCK_OPS if direct else BLOCK_OPS)[(mr, nr, wide)], target.core)
    loop = _op_cycles(LOOP_OPS[mr], target.core) + TIMING[target.core]["P"]
    flash = 0.0 if sram else target.miss_cycles * weight_bytes_per_block(nr, wide) / target.line_bytes
    return c + loop / LOOP_BLOCKS[mr] + flash


def weight_bytes_per_block(nr: int, wide: bool) -> int:
    return nr * K_BLOCK * (2 if wide else 1)


def block_instructions(mr: int, nr: int, wide: bool, direct: bool = False) -> float:
    """I_blk: instructions per k-block (4 reduction steps) of an mr x nr tile."""
    body = sum(count for _, _, count in (DIRECT_BLOCK_OPS if direct else BLOCK_OPS)[(mr, nr, wide)])
    return body + sum(count for _, _, count in LOOP_OPS[mr]) / LOOP_BLOCKS[mr]


def choose_tile(m: int, k_blocks: int, stack_budget: int, wide: bool = False,
                target: Target = Target(), sram: bool = False) -> tuple[int, int]:
    """The register tile with the fewest estimated cycles per MAC of its reduction loop
    among those the rows allow: mr rows need M >= mr and an mr-row panel within the
    panel budget; 1x4 always fits (FC at batch 1)."""
    fits = [(mr, nr) for mr, nr in TILES if mr == 1 or (m >= mr and panel_bytes(mr, k_blocks) <= stack_budget)]
    return min(fits, key=lambda t: block_cycles(t[0], t[1], wide, target, sram) / (4 * t[0] * t[1]))


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


def _output_costs(mr: int, nr: int, int8_range: bool) -> tuple[float, float, float]:
    """(instructions per tile outside the k-blocks, per output, and their estimated
    cycles per instruction) of a tile shape; int8_range: the layer's activation range
    is int8's (the kernel's MODE 2)."""
    if (mr, nr) == (3, 2) and int8_range:
        return TILE_3x2, REQUANT_3x2, ASM_CPI_3x2
    return TILE, REQUANT, OVERHEAD_CPI


def predict(kind: str, m: int, n: int, k: int, mr: int, nr: int, wide: bool,
            panel_row: float | None = None, direct: bool = False, int8_range: bool = True) -> tuple[float, float]:
    """(inner-loop instructions/MAC, whole-layer instructions/MAC)."""
    kb = _ceil(k, K_BLOCK)
    i_blk = block_instructions(mr, nr, wide, direct)
    if direct:
        panel_row = 0.0
    tiles = _ceil(m, mr) * _ceil(n, nr)
    tile, requant, _ = _output_costs(mr, nr, int8_range)
    loop = tiles * (kb * i_blk + tile)
    outputs = m * n * requant
    rows = _ceil(m, mr) * mr
    panel = rows * (panel_row_cost(k) if panel_row is None else panel_row)
    macs = m * n * k
    return i_blk / (4 * mr * nr), (loop + outputs + panel) / macs


def predict_cycles(m: int, n: int, k: int, mr: int, nr: int, wide: bool, target: Target = Target(),
                   sram: bool = False, panel_row: float | None = None,
                   direct: bool = False, int8_range: bool = True) -> tuple[float, float]:
    """(inner-loop estimated cycles/MAC, whole-layer estimated cycles/MAC): the k-blocks
    costed from TIMING and the flash, the rest (requantisation, set-up, panel) as
    instructions x OVERHEAD_CPI, plus the bias/requantisation tables' flash lines.
    direct: a 1x4 tile that extends the input in its loop (no panel row to build)."""
    kb = _ceil(k, K_BLOCK)
    blk = block_cycles(mr, nr, wide, target, sram, direct)
    if direct:
        panel_row = 0.0
    tiles = _ceil(m, mr) * _ceil(n, nr)
    rows = _ceil(m, mr) * mr
    tables = 0.0 if sram else target.miss_cycles * nr * TABLE_BYTES / target.line_bytes
    tile, requant, cpi = _output_costs(mr, nr, int8_range)
    panel = rows * (panel_row_cost(k) if panel_row is None else panel_row)
    total = tiles * (kb * blk + tables) + cpi * (tiles * tile + m * n * requant) + OVERHEAD_CPI * panel
    return blk / (4 * mr * nr), total / (m * n * k)


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
    """(stack budget for the panel, flash the weights may take at most) in bytes."""
    if board is None:
        return int(DEFAULT_STACK * STACK_FRACTION), int(DEFAULT_FLASH * FLASH_FRACTION)
    flash = board.memories["flash"].size if "flash" in board.memories else DEFAULT_FLASH
    return int(board.stack_size * STACK_FRACTION), int(flash * FLASH_FRACTION)


# Test hooks: force the weight format ("int8" / "int16"), the tile ((mr, nr)) or the
# placement (True: SRAM) regardless of the cost model and the budgets.
FORCE_WEIGHTS: str | None = None
FORCE_TILE: tuple[int, int] | None = None
FORCE_SRAM: bool | None = None
FORCE_DIRECT: bool | None = None  # FC 1x4: True the direct tile, False the panel
# --flash-budget BYTES: the ROM the optimised build may take (None: the reference build's + 10 %).
FLASH_BUDGET: int | None = None


def set_flash_budget(nbytes: int | None) -> None:
    global FLASH_BUDGET
    FLASH_BUDGET = nbytes  # plans are cached per budget


def _graph_const_bytes(graph: Graph) -> int:
    return sum(t.nbytes for t in graph.tensors if t.is_constant)


_CHANNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _out_channels(op: Operator, graph: Graph) -> int:
    return graph.tensor(op.outputs[0]).shape[-1] if op.opcode in _CHANNEL_OPS else 0


def _const_inputs(op: Operator, graph: Graph) -> list[int]:
    return [i for i in op.inputs if i >= 0 and graph.tensor(i).is_constant]


def reference_rom(graph: Graph) -> int:
    """Predicted ROM of the reference build: every constant tensor, the reference
    kernels' multiplier and shift per output channel, and REFERENCE_CODE."""
    channels = sum(_out_channels(op, graph) for op in graph.operators)
    return _graph_const_bytes(graph) + REF_CHANNEL_BYTES * channels + REFERENCE_CODE


def _depthwise_bytes(op: Operator, graph: Graph) -> tuple[int, tuple] | None:
    """(stream bytes, shape) of a DEPTHWISE_CONV_2D the optimised kernel takes, else None."""
    from microtile.ops import kernel_for
    from microtile.ops.conv import depthwise_as_conv

    if op.opcode != "DEPTHWISE_CONV_2D" or depthwise_as_conv(op, graph):
        return None
    from microtile.ops.depthwise_opt import depthwise_fallback

    p = kernel_for(op).params(op, graph)
    if depthwise_fallback(op, graph, p) is not None:
        return None
    taps, oc = p["kh"] * p["kw"], p["oc"]
    words = (oc // 4) * (8 + taps + 12) + (oc % 4) * (4 + taps)  # MT_DW_GROUP_WORDS, MT_DW_REM_WORDS
    shape = tuple(p[k] for k in ("h", "w", "c", "oh", "ow", "kh", "kw", "sh", "sw", "ph", "pw", "dm"))
    return 4 * words, shape


def optimized_rom(graph: Graph, layers: dict, plan: dict) -> int:
    """Predicted ROM of the optimised build with `plan` ({layer index: (int16, SRAM)}) for
    the matmul-shaped layers `layers`: their packed weights and per-channel tables, the
    depthwise streams and one specialised function per depthwise shape, the softmax
    table, every other constant as the reference emits it, and OPT_CODE."""
    total, shapes, counted = OPT_CODE, set(), set()
    for op in graph.operators:
        if op.index in layers:
            layer, (wide, sram) = layers[op.index], plan[op.index]
            tile = layer.best(wide, sram)[0]
            total += layer.weight_bytes(tile, wide) + _ceil(layer.n, tile[1]) * tile[1] * OPT_CHANNEL_BYTES
            counted.update(_const_inputs(op, graph))
            continue
        dw = _depthwise_bytes(op, graph)
        if dw is not None:
            total += dw[0]
            shapes.add(dw[1])
            counted.update(_const_inputs(op, graph))
            continue
        if op.opcode == "SOFTMAX" and graph.tensor(op.outputs[0]).dtype == "int8":
            total += SOFTMAX_TABLE
        total += REF_CHANNEL_BYTES * _out_channels(op, graph)
    total += DW_SHAPE_CODE * len(shapes)
    total += sum(t.nbytes for i, t in enumerate(graph.tensors) if t.is_constant and i not in counted)
    return total


class FlashBudgetError(DoesNotFitError):
    """--flash-budget below the smallest build the optimised kernels can make (exit 2)."""


def rom_limit(graph: Graph, board) -> int:
    """The ROM the optimised build may take: --flash-budget when given, else the ROM
    rule (the reference build's + ROM_MARGIN)."""
    if FLASH_BUDGET is not None:
        return FLASH_BUDGET
    return int((1 + ROM_MARGIN) * reference_rom(graph))


def rom_spare(graph: Graph, board, layers: dict | None = None) -> int:
    """ROM bytes int16 weight copies may add: the ROM limit less the predicted ROM of the
    smallest optimised build (every layer int8); never past FLASH_FRACTION of the flash.
    A --flash-budget below the smallest build is refused after the build, on the
    measured ROM (check_flash_budget): the RAM search's candidate graphs predict
    differently, so a prediction would refuse budgets the chosen one meets."""
    if layers is None:
        layers = _matmul_layers(graph, board)
    smallest = optimized_rom(graph, layers, {index: (False, False) for index in layers})
    spare = rom_limit(graph, board) - smallest
    consts = _graph_const_bytes(graph)
    return int(max(0, min(spare, _board_limits(board)[1] - consts)))


def _plan_for(graph: Graph, board) -> dict[int, tuple[bool, bool]]:
    """The cached plan of this graph for the board and the current --flash-budget."""
    plans = graph.__dict__.setdefault("_schedule_plans", {})
    key = (getattr(board, "name", None), FLASH_BUDGET)
    if key not in plans:
        plans[key] = _plan(graph, board)
    return plans[key]


def int16_copy_bytes(graph: Graph, board) -> int:
    """ROM the plan spends on int16 weight copies (beyond the int8 build)."""
    layers = _matmul_layers(graph, board)
    plan = _plan_for(graph, board)
    return optimized_rom(graph, layers, plan) - optimized_rom(graph, layers, {i: (False, False) for i in layers})


def check_flash_budget(graph: Graph, board, rom_bytes: int) -> None:
    """After an optimised build: its measured ROM must lie within --flash-budget (the plan
    was made on predicted sizes). Over it: FlashBudgetError naming the measured ROM and
    the smallest ROM the optimised kernels make (the measured one less the int16 copies)."""
    if FLASH_BUDGET is None or rom_bytes <= FLASH_BUDGET:
        return
    copies = int16_copy_bytes(graph, board)
    smallest = rom_bytes - copies
    need = smallest if smallest > FLASH_BUDGET else rom_bytes
    raise FlashBudgetError(
        f"--flash-budget {FLASH_BUDGET:,} B is below the ROM of the optimised build of {graph.name or 'this model'} "
        f"({rom_bytes:,} B measured, {copies:,} B of them int16 weight copies; the smallest possible is "
        f"{smallest:,} B): give at least {need:,} B, or build with --kernels reference")


def ram_spare(graph: Graph, board) -> int:
    """RAM bytes weights copied to SRAM may take: the board's RAM (the stack's region,
    where .data lives) less the stack, every activation tensor (an upper bound on the
    arena) and RAM_RESERVE. No board: none (the host build has no flash to avoid)."""
    if board is None or not getattr(board, "memories", None):
        return 0
    region = board.memories.get(getattr(board, "stack_region", "ram")) or board.memories.get("ram")
    if region is None:
        return 0
    activations = sum(t.nbytes for t in graph.tensors if not t.is_constant)
    return max(0, region.size - board.stack_size - activations - RAM_RESERVE)


@dataclass(frozen=True)
class _Layer:
    kind: str
    m: int
    n: int
    k: int
    row: float          # panel row instructions
    stack_budget: int
    target: Target
    int8_range: bool    # the activation range is int8's (the kernels' MODE 2)

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k

    def tiles(self) -> list[tuple[int, int]]:
        kb = _ceil(self.k, K_BLOCK)
        return [(mr, nr) for mr, nr in TILES
                if mr == 1 or (self.m >= mr and panel_bytes(mr, kb) <= self.stack_budget)]

    def cycles(self, tile: tuple[int, int], wide: bool, sram: bool) -> float:
        return predict_cycles(self.m, self.n, self.k, tile[0], tile[1], wide, self.target, sram, self.row,
                              int8_range=self.int8_range)[1] * self.macs

    def best(self, wide: bool, sram: bool) -> tuple[tuple[int, int], float]:
        """The tile with the fewest estimated cycles of the whole layer, and those cycles."""
        tiles = [FORCE_TILE] if FORCE_TILE in self.tiles() else self.tiles()
        tile = min(tiles, key=lambda t: self.cycles(t, wide, sram))
        return tile, self.cycles(tile, wide, sram)

    def weight_bytes(self, tile: tuple[int, int], wide: bool) -> int:
        return _ceil(self.n, tile[1]) * tile[1] * _ceil(self.k, K_BLOCK) * K_BLOCK * (2 if wide else 1)


def _layer(op: Operator, graph: Graph, board) -> _Layer:
    kind, m, n, k = matmul_shape(op, graph)
    geometry = None
    if _conv_like(op, graph):
        from microtile.ops.conv import _conv_geometry
        geometry = _conv_geometry(op, graph)
    row = panel_row_cost(k, geometry, _gather_fraction(op, graph))
    from microtile.ops import fused_activation_range

    int8_range = tuple(fused_activation_range(op, graph.tensor(op.outputs[0]))) == (-128, 127)
    return _Layer(kind, m, n, k, row, panel_budget(board), target_of(board), int8_range)


def panel_budget(board) -> int:
    """Bytes an A panel may take: it lives in the arena's scratch, so besides the
    historical 3/8 of the stack size it may take 1/32 of the board's RAM (20 KB of the
    L4R5's 640 KB: ResNet-8's K = 576 layer gets a 3-row panel)."""
    stack = _board_limits(board)[0]
    region = None if board is None else getattr(board, "memories", {}).get(getattr(board, "stack_region", "ram"))
    return max(stack, region.size // PANEL_RAM_SHARE if region is not None else 0)


def _matmul_layers(graph: Graph, board) -> dict[int, _Layer]:
    """The matmul-shaped layers the optimised kernels run, by operator index."""
    from microtile.ops.conv import optimized_supported

    return {op.index: _layer(op, graph, board) for op in graph.operators
            if matmul_shape(op, graph) is not None and optimized_supported(op, graph)}


def _plan(graph: Graph, board) -> dict[int, tuple[bool, bool]]:
    """Per matmul-shaped layer the optimised kernels run: (int16 weights, weights in
    SRAM). int16 copies by estimated cycles saved per extra ROM byte within rom_spare,
    then SRAM placement by cycles saved per RAM byte within ram_spare."""
    layers = _matmul_layers(graph, board)
    plan = {index: (False, False) for index in layers}
    spare = rom_spare(graph, board, layers)
    gains = []
    for index, layer in layers.items():
        (t8, c8), (t16, c16) = layer.best(False, False), layer.best(True, False)
        extra = layer.weight_bytes(t16, True) - layer.weight_bytes(t8, False)
        if c16 < c8 and extra > 0:
            gains.append(((c8 - c16) / extra, index, extra))
    for _, index, extra in sorted(gains, reverse=True):
        if extra <= spare:
            plan[index] = (True, False)
            spare -= extra
    room = ram_spare(graph, board)
    gains = []
    for index, layer in layers.items():
        wide = plan[index][0]
        (tf, cf), (ts, cs) = layer.best(wide, False), layer.best(wide, True)
        size = layer.weight_bytes(ts, wide) + _ceil(layer.n, ts[1]) * ts[1] * TABLE_BYTES
        if cs < cf:
            gains.append(((cf - cs) / size, index, size))
    for _, index, size in sorted(gains, reverse=True):
        if size <= room:
            plan[index] = (plan[index][0], True)
            room -= size
    return plan



def schedule_for(op: Operator, graph: Graph, board=None) -> Schedule:
    """The schedule of a matmul-shaped layer (FULLY_CONNECTED or CONV_2D)."""
    shape = matmul_shape(op, graph)
    if shape is None:
        raise ValueError(f"operator #{op.index} {op.opcode} is not matmul-shaped")
    layer = _layer(op, graph, board)
    # cached per graph object (an id() key could be reused by a later graph)
    wide, sram = _plan_for(graph, board).get(op.index, (False, False))
    if FORCE_WEIGHTS is not None:
        wide = FORCE_WEIGHTS == "int16"
    if FORCE_SRAM is not None:
        sram = FORCE_SRAM
    (mr, nr), cycles = layer.best(wide, sram)
    kind, m, n, k = shape
    kb = _ceil(k, K_BLOCK)
    direct = False
    if kind == "fc" and mr == 1:
        direct_cycles = predict_cycles(m, n, k, mr, nr, wide, layer.target, sram, direct=True,
                                       int8_range=layer.int8_range)[1] * layer.macs
        direct = direct_cycles <= cycles or _panel_sets_peak(op, graph, panel_bytes(mr, kb, kind))
        if FORCE_DIRECT is not None:
            direct = FORCE_DIRECT
        if direct:
            cycles = direct_cycles
    inner, total = predict(kind, m, n, k, mr, nr, wide, layer.row, direct, layer.int8_range)
    inner_c = predict_cycles(m, n, k, mr, nr, wide, layer.target, sram, layer.row, direct, layer.int8_range)[0]
    reuse = ("the weight pair of a block is reused by %d rows" % mr if mr > 1
             else "the input pair of a block is reused by %d channels" % nr)
    if mr > 1 and nr > 1:
        reuse = "each panel pair meets %d channels, each weight pair %d rows" % (nr, mr)
    if direct:
        reuse += ", extended in the loop (no panel)"
    order = "k-first: the %dx%d output tile stays in registers for the whole reduction; %s" % (mr, nr, reuse)
    return Schedule(op.opcode, kind, m, n, k, mr, nr, wide, order, K_BLOCK * LOOP_BLOCKS[mr], kb,
                    0 if direct else panel_bytes(mr, kb, kind), round(inner, 4), round(total, 4), sram,
                    round(cycles / layer.macs, 4), round(inner_c, 4), direct)


def _layer_bytes(op: Operator, graph: Graph) -> int:
    """Activation bytes a layer holds at once: its non-constant inputs and outputs."""
    return sum(graph.tensor(i).nbytes for i in [*op.inputs, *op.outputs]
               if i >= 0 and not graph.tensor(i).is_constant)


def _panel_sets_peak(op: Operator, graph: Graph, scratch: int) -> bool:
    """Would this layer's panel make it the arena's peak? (its in + out + panel above
    the layer-by-layer bound, the largest in + out of any layer: AD's K = 640 FC
    takes 768 + 1,280 B where the bound is 768 B)."""
    return _layer_bytes(op, graph) + scratch > max(_layer_bytes(o, graph) for o in graph.operators)


def _optimized_schedule(op: Operator, graph: Graph, board) -> dict:
    """The schedule of a layer the optimised kernels run (explain() checks that)."""
    if matmul_shape(op, graph) is None:
        from microtile.ops.opt_schedules import explain_op  # depthwise, pooling, add, softmax

        vector = explain_op(op, graph)
        if vector is None:
            return {}
        return {"loop_order": vector["schedule"], "predicted_ipm": vector["predicted_ipm"],
                "predicted_cpm": vector["predicted_cpm"]}
    s = schedule_for(op, graph, board)
    return {"kind": s.kind, "M": s.m, "N": s.n, "K": s.k, "tile": s.tile,
            "weights": s.weights, "loop_order": s.loop_order,
            "k_unroll": s.k_unroll, "predicted_ipm": s.predicted_ipm, "inner_ipm": s.inner_ipm,
            "predicted_cpm": s.predicted_cpm}


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

