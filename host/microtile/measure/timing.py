"""The timing model: estimated cycles of each layer of a built firmware ELF.

Unicorn (QEMU's CPU emulation as a library) executes the ELF's own machine code:
the segments are loaded, .data/.bss set up as the startup does, the inputs written
into the arena, and each layer's ``run_layer(l, arena)`` called until it returns to
a magic LR. Instructions are counted exactly (every executed translation block's
instructions). Cycles are estimated:

- each basic block is disassembled once (capstone) and costed once from the core's
  instruction timings (``TIMING``), then multiplied by its execution count;
- a taken branch adds the pipeline refill (seen from the next block's address);
- the memory system adds stalls: flash wait states at the board clock behind the
  STM32 ART accelerator (F4/L4: instruction cache lines, data cache lines, prefetch),
  the Cortex-M7's caches on H7; SRAM and TCMs have no wait states.

``TIMING`` is the one table holding every figure and assumption; docs/timing.md
renders it with the sources (``python -m microtile.measure.timing --table``).
"""
from __future__ import annotations

import argparse
import struct
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from microtile.errors import MicrotileError, ToolMissingError

TIMING_MODEL = "microtile-timing"
TIMING_MODEL_VERSION = "2"

# Every timing and assumption of the model, in one place. Cycles are core clock
# cycles at zero wait states unless a "memory" entry says otherwise. P = pipeline
# refill after a taken branch or a write to the PC, N = registers transferred.
TIMING = {
    "cortex-m4": {
        "source": "Cortex-M4 TRM (ARM DDI 0439B) section 3.3, Table 3-1 and 'Load/store timings'",
        "P": 2,  # refill 1..3 cycles; 2 for a 32-bit aligned target (the issue's 1+2 taken branch)
        "cycles": {
            "alu": 1,           # MOV, ADD, SUB, logic, shifts, compare, extend, bitfield, saturate, CLZ
            "dsp": 1,           # SMLAD, SMUAD, SXTB16, SXTAB16, QADD, SSAT16, PKHBT, SEL, ... (single cycle)
            "mul": 1,           # MUL, MLA, MLS, SMULL, UMULL, SMLAL, UMLAL, SMMUL, SMLABB, ...
            "div": 7,           # SDIV/UDIV take 2..12 (early termination on the operands); the midpoint
            "load": 2,          # LDR/LDRB/LDRH/LDRSB/LDRSH: address + data phase
            "load_pipelined": 1,  # a load right after another load pipelines its address phase (not after a store)
            "load_pc": 3,       # LDR Rx,[PC,#imm]: one more cycle for contention with the fetch unit
            "store": 1,         # STR Rx,[Ry,#imm]: always one cycle (the write buffer)
            "store_regoffset": 2,  # STR with a register offset is not pipelined
            "load_dual": 3,     # LDRD/STRD: 1 + N, N = 2
            "multiple": "1+N",  # LDM/STM/PUSH/POP (+P when PC is loaded)
            "branch": 1,        # B<cond> not taken, CBZ/CBNZ not taken; taken: 1 + P
            "branch_link": "1+P",  # BL, BLX, BX: always a refill
            "table_branch": "2+P",  # TBB, TBH
            "it": 1,            # IT (assumed not folded onto the previous instruction)
            "nop": 1,
            "barrier": 1,       # DSB/DMB (B = 0 here: no outstanding memory traffic), ISB = 1 + P
            "fp": 1,            # VADD, VSUB, VMUL, VABS, VNEG, VCVT, VCMP, VMOV, VMRS
            "fp_mac": 3,        # VMLA, VMLS, VFMA, VFMS, VNMLA, ...
            "fp_div": 14,       # VDIV, VSQRT
            "fp_load": 2,       # VLDR, VSTR
            "fp_multiple": "1+N",  # VLDM, VSTM, VPUSH, VPOP
        },
        "assumptions": [
            "a load pipelines only after a load in the same basic block (the first load of a block costs 2); "
            "nothing pipelines after a store (TRM)",
            "a conditional instruction skipped inside an IT block costs its full time (the TRM: 1 cycle or more)",
            "no stall for register dependencies: the M4 forwards results in one cycle (loads excepted, above)",
            "unaligned accesses cost as aligned ones",
        ],
    },
    "cortex-m7": {
        "source": "Cortex-M7 TRM (ARM DDI 0489) and Arm's M7 Software Optimization notes; an approximation",
        "P": 1,  # the branch predictor (BTAC) hides most refills in loops: 1 cycle per taken branch
        "cycles": {
            "alu": 1, "dsp": 1, "mul": 1, "div": 7, "load": 1, "load_pipelined": 1, "load_pc": 1,
            "store": 1, "store_regoffset": 1, "load_dual": 1, "multiple": "1+N/2", "branch": 1,
            "branch_link": "1+P", "table_branch": "2+P", "it": 1, "nop": 1, "barrier": 1,
            "fp": 1, "fp_mac": 1, "fp_div": 14, "fp_load": 1, "fp_multiple": "1+N/2",
        },
        "dual_issue": "two neighbouring instructions issue together when at most one is a load/store, at most "
                      "one a multiply/DSP op, neither is a branch, IT, divide or multiple transfer, and the second "
                      "reads no register the first writes",
        "assumptions": [
            "I- and D-cache hits for SRAM and TCM accesses (TCMs are zero wait; kernels fit the 16 KiB caches)",
            "64-bit loads (LDRD) in one cycle through the 64-bit AXI/TCM ports",
        ],
    },
    "memory": {
        "source": "RM0090 (STM32F4) 3.5 'Read interface' / ART accelerator; RM0432 (STM32L4+) 3.3 'Read access "
                  "latency'; RM0433 (STM32H7) 4.3; wait states from boards/*.yaml clock.flash_wait_states",
        "sram_wait_states": 0,
        "art": {  # STM32F4 and STM32L4 flash accelerator, on (the ports set PRFTEN, ICEN, DCEN)
            "stm32f4": {"line_bytes": 16, "icache_lines": 64, "dcache_lines": 8},   # 128-bit lines
            "stm32l4": {"line_bytes": 32, "icache_lines": 32, "dcache_lines": 8},   # 4 x 64-bit lines
        },
        "art_miss": "a fetch or data read of a line not in its cache stalls the core for the wait states",
        "prefetch": "instruction fetch of the next sequential line overlaps the current line's execution: "
                    "a sequential miss stalls max(0, wait states - cycles spent in the previous line)",
        "data_reads": "loads from flash (weights, constants, literal pools) go through the ART data cache; "
                      "stores to flash do not occur",
        "stm32h7": {"line_bytes": 32, "dcache_bytes": 16384, "icache_bytes": 16384, "ways": 4,
                    "miss_cycles": "2 x (wait states + 1) x 4 beats: the AXI flash at half the core clock"},
        "qemu_board": "the QEMU board (netduinoplus2) has no wait states in its YAML: modelled at zero wait states",
    },
}

MAGIC_RETURN = 0x1FFF0000  # run_layer returns here: a page mapped for it (system-memory area, never code here; not 0xFxxxxxxx, which M-profile takes as an exception return)
MAX_INSTRUCTIONS = 2_000_000_000  # a call that runs longer has lost its way
STACK_GUARD = 256  # bytes below the stack top left free (the app's frame)


@dataclass
class LayerTiming:
    instructions: int
    cycles: int
    flash_data_reads: int = 0  # loads from flash (recorded behind wait states only)
    stall_cycles: int = 0


@dataclass
class TimingResult:
    board: str
    core: str
    clock_hz: int
    flash_wait_states: int
    layers: list[LayerTiming] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)
    seconds: float = 0.0


# ---- instruction classes ----

def _classes():
    from capstone import arm_const as A

    def ids(*names):
        return {getattr(A, "ARM_INS_" + n) for n in names if hasattr(A, "ARM_INS_" + n)}

    return {
        "load": ids("LDR", "LDRB", "LDRH", "LDRSB", "LDRSH", "LDRT", "LDRBT", "LDRHT", "LDREX", "LDRSBT", "LDRSHT"),
        "store": ids("STR", "STRB", "STRH", "STRT", "STRBT", "STRHT", "STREX"),
        "load_dual": ids("LDRD", "STRD"),
        "multiple": ids("LDM", "LDMDB", "LDMIB", "LDMDA", "STM", "STMDB", "STMIB", "STMDA", "PUSH", "POP"),
        "mul": ids("MUL", "MLA", "MLS", "SMULL", "UMULL", "SMLAL", "UMLAL", "UMAAL", "SMMUL", "SMMULR", "SMMLA",
                   "SMMLAR", "SMMLS", "SMMLSR", "SMULBB", "SMULBT", "SMULTB", "SMULTT", "SMULWB", "SMULWT",
                   "SMLABB", "SMLABT", "SMLATB", "SMLATT", "SMLAWB", "SMLAWT", "SMLALBB", "SMLALBT",
                   "SMLALTB", "SMLALTT"),
        "dsp": ids("SMLAD", "SMLADX", "SMLSD", "SMLSDX", "SMUAD", "SMUADX", "SMUSD", "SMUSDX", "SMLALD",
                   "SMLALDX", "SMLSLD", "SMLSLDX", "USAD8", "USADA8"),
        "div": ids("SDIV", "UDIV"),
        "branch": ids("B", "CBZ", "CBNZ"),
        "branch_link": ids("BL", "BLX", "BX"),
        "table_branch": ids("TBB", "TBH"),
        "it": ids("IT"),
        "barrier": ids("DSB", "DMB", "ISB"),
        "fp_mac": ids("VMLA", "VMLS", "VNMLA", "VNMLS", "VFMA", "VFMS", "VFNMA", "VFNMS"),
        "fp_div": ids("VDIV", "VSQRT"),
        "fp_load": ids("VLDR", "VSTR"),
        "fp_multiple": ids("VLDMIA", "VLDMDB", "VSTMIA", "VSTMDB", "VPUSH", "VPOP"),
    }


_CLASS_OF: dict[int, str] | None = None


def insn_class(insn) -> str:
    """The timing class of a capstone instruction (``TIMING[core]["cycles"]`` key)."""
    global _CLASS_OF
    if _CLASS_OF is None:
        _CLASS_OF = {i: name for name, members in _classes().items() for i in members}
    cls = _CLASS_OF.get(insn.id)
    if cls is None:
        cls = "fp" if insn.mnemonic.startswith("v") else "nop" if insn.mnemonic.startswith("nop") else "alu"
    return cls


def _regs_written(insn) -> set[int]:
    try:
        return set(insn.regs_access()[1])
    except Exception:  # capstone without access info for this instruction
        return set()


def _regs_read(insn) -> set[int]:
    try:
        return set(insn.regs_access()[0])
    except Exception:
        return set()


@dataclass
class Block:
    """One translation block, costed once."""
    instructions: int
    cycles: int  # not-taken cost (no refill for the final branch)
    taken_penalty: int  # added when the next block is not the fall-through
    end: int  # fall-through address
    lines: tuple[int, ...] = ()  # flash line numbers the block's code spans (ART / I-cache)
    prefetch_hidden: int = 0  # stall cycles the prefetch hides for the line after this block's


def _pc_written(insn, pc_reg: int) -> bool:
    return pc_reg in _regs_written(insn)


def cost_block(insns: list, core: str) -> tuple[int, int]:
    """(cycles when the final branch is not taken, extra cycles when it is) of a
    basic block's instructions (capstone, detail on) on ``core``."""
    from capstone import arm_const as A

    table = TIMING[core]
    c = table["cycles"]
    refill = table["P"]
    m7 = core == "cortex-m7"
    total = 0
    taken = 0
    prev_load = False  # the previous instruction was a load single (pipelining)
    prev = None
    paired = False  # M7: the previous instruction already issued as the second of a pair
    for k, insn in enumerate(insns):
        cls = insn_class(insn)
        writes_pc = _pc_written(insn, A.ARM_REG_PC)
        if cls == "load":
            pc_rel = any(op.type == A.ARM_OP_MEM and op.mem.base == A.ARM_REG_PC for op in insn.operands)
            cyc = c["load_pc"] if pc_rel else c["load_pipelined"] if prev_load else c["load"]
            if writes_pc:
                cyc += refill
        elif cls == "store":
            reg_offset = any(op.type == A.ARM_OP_MEM and op.mem.index != 0 for op in insn.operands)
            cyc = c["store_regoffset"] if reg_offset else c["store"]
        elif cls in ("multiple", "fp_multiple"):
            regs = sum(1 for op in insn.operands if op.type == A.ARM_OP_REG) - (
                1 if insn.id not in (A.ARM_INS_PUSH, A.ARM_INS_POP, A.ARM_INS_VPUSH, A.ARM_INS_VPOP) else 0)
            regs = max(regs, 1)
            cyc = 1 + (regs + 1) // 2 if m7 else 1 + regs
            if writes_pc:
                cyc += refill
        elif cls == "branch":
            cyc = c["branch"]
            if insn.id == A.ARM_INS_B and insn.cc in (A.ARM_CC_AL, A.ARM_CC_INVALID) and not _in_it(insns, k):
                cyc += refill  # unconditional: always taken
            else:
                taken = refill
        elif cls == "branch_link":
            cyc = 1 + refill
        elif cls == "table_branch":
            cyc = 2 + refill
        elif cls == "barrier":
            cyc = c["barrier"] + (refill if insn.id == A.ARM_INS_ISB else 0)
        else:
            cyc = c[cls]
            if writes_pc:  # ADD PC / MOV PC
                cyc += refill
        if m7 and prev is not None and not paired and _dual_issue(prev, insn, cls):
            cyc = 0  # issues with the previous instruction
            paired = True
        else:
            paired = False
        total += cyc
        prev_load = cls == "load"
        prev = (insn, cls)
    return total, taken


_NO_PAIR = {"branch", "branch_link", "table_branch", "it", "div", "multiple", "fp_multiple", "barrier",
            "load_dual", "fp_div"}
_MEM = {"load", "store", "fp_load"}
_MAC = {"mul", "dsp", "fp_mac"}


def _dual_issue(prev: tuple, insn, cls: str) -> bool:
    pinsn, pcls = prev
    if cls in _NO_PAIR or pcls in _NO_PAIR:
        return False
    if cls in _MEM and pcls in _MEM:
        return False
    if cls in _MAC and pcls in _MAC:
        return False
    return not (_regs_written(pinsn) & _regs_read(insn))


def _in_it(insns: list, k: int) -> bool:
    """True when instruction k lies inside an IT block opened earlier in the block."""
    from capstone import arm_const as A

    for back in range(1, 5):
        j = k - back
        if j < 0:
            return False
        if insns[j].id == A.ARM_INS_IT:
            return back <= len(insns[j].mnemonic) - 1  # "it", "itt", "ite", "ittt", ...
    return False


# ---- the memory system ----

@dataclass
class MemorySystem:
    """Flash wait states behind a line cache (ART or M7 cache), SRAM at zero wait."""
    wait_states: int
    line_bytes: int
    icache_lines: int
    dcache_lines: int
    miss_cycles: int  # stall of a line miss
    prefetch: bool

    @classmethod
    def for_board(cls, board) -> "MemorySystem":
        ws = board.clock.flash_wait_states if board.clock.source != "none" else 0
        if board.core == "cortex-m7":
            h7 = TIMING["memory"]["stm32h7"]
            lines = h7["dcache_bytes"] // h7["line_bytes"]
            return cls(ws, h7["line_bytes"], h7["icache_bytes"] // h7["line_bytes"], lines,
                       2 * (ws + 1) * 4, prefetch=False)
        art = TIMING["memory"]["art"]["stm32l4" if board.port == "stm32l4" else "stm32f4"]
        return cls(ws, art["line_bytes"], art["icache_lines"], art["dcache_lines"], ws, prefetch=True)


class LineCache:
    """A fully associative LRU cache of flash line numbers (the ART's, or an
    approximation of the M7's set-associative caches)."""

    def __init__(self, lines: int):
        self.size = lines
        self.lines: OrderedDict[int, None] = OrderedDict()

    def access(self, line: int) -> bool:
        """True on a hit."""
        lines = self.lines
        if line in lines:
            lines.move_to_end(line)
            return True
        lines[line] = None
        if len(lines) > self.size:
            lines.popitem(last=False)
        return False


# ---- the engine ----

def _elf_info(elf_path: Path) -> tuple[list[tuple[int, bytes, int]], dict[str, int]]:
    from elftools.common.exceptions import ELFError

    try:
        return _read_elf(elf_path)
    except (OSError, ELFError) as exc:
        raise MicrotileError(f"timing model: cannot read {elf_path} ({exc})") from None


def _read_elf(elf_path: Path) -> tuple[list[tuple[int, bytes, int]], dict[str, int]]:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    segments, symbols = [], {}
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
                segments.append((seg["p_paddr"], seg.data(), seg["p_vaddr"]))
        for sec in elf.iter_sections():
            if isinstance(sec, SymbolTableSection):
                for sym in sec.iter_symbols():
                    if sym.name:
                        symbols[sym.name] = sym["st_value"]
    return segments, symbols


def _raw_hook(uc, kind: int, fptr, begin: int, end: int) -> int:
    """uc.hook_add with a ctypes function pointer called directly (unicorn 2.1's own
    hook registration, without its per-call Python wrapper)."""
    return uc._Uc__do_hook_add(kind, fptr, begin, end)


class TimingEngine:
    """Runs functions of an ELF on unicorn, with the board's memory map, and estimates
    their cycles. ``call`` times one call; the caches persist between calls."""

    def __init__(self, elf: str | Path, board):
        try:
            from capstone import CS_ARCH_ARM, CS_MODE_MCLASS, CS_MODE_THUMB, Cs
            from unicorn import UC_ARCH_ARM, UC_MODE_MCLASS, UC_MODE_THUMB, Uc
            from unicorn import arm_const as U
        except ImportError as exc:
            raise ToolMissingError(f"the timing model needs {exc.name} (pinned in requirements.txt): "
                                   "run `make setup`") from None

        self.board = board
        self.core = "cortex-m7" if board.core == "cortex-m7" else "cortex-m4"
        self.memory = MemorySystem.for_board(board)
        segments, self.symbols = _elf_info(Path(elf))
        self.uc = uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
        uc.ctl_set_cpu_model(U.UC_CPU_ARM_CORTEX_M7 if self.core == "cortex-m7" else U.UC_CPU_ARM_CORTEX_M4)
        for region in board.memories.values():
            if region.origin <= MAGIC_RETURN < region.end:
                raise MicrotileError(f"board {board.name}: memory {region.name} covers the timing model's "
                                     f"return address 0x{MAGIC_RETURN:08x}")
            uc.mem_map(region.origin, (region.size + 0xFFF) & ~0xFFF)
        uc.mem_map(MAGIC_RETURN, 0x1000)
        for paddr, data, vaddr in segments:
            if board.region_of(paddr) is None or board.region_of(paddr + len(data) - 1) is None:
                raise MicrotileError(f"timing model: {elf} loads 0x{paddr:08x}..0x{paddr + len(data):08x}, "
                                     f"outside the memories of {board.name}; build it for that board")
            uc.mem_write(paddr, data)
        self.flash = board.flash
        self.cs = Cs(CS_ARCH_ARM, CS_MODE_THUMB | CS_MODE_MCLASS)
        self.cs.detail = True
        self.blocks: dict[int, Block] = {}
        self.icache = LineCache(self.memory.icache_lines)
        self.dcache = LineCache(self.memory.dcache_lines)
        stack = board.memories[board.stack_region]
        self.stack_top = self.symbols.get("_estack", stack.end) - STACK_GUARD

    def _block(self, key: int) -> Block:
        address, size = key >> 16, key & 0xFFFF
        code = bytes(self.uc.mem_read(address, size))
        insns = list(self.cs.disasm(code, address))
        cycles, taken = cost_block(insns, self.core)
        lb = self.memory.line_bytes
        lines = tuple(range(address // lb, (address + size - 1) // lb + 1)) if self._in_flash(address) else ()
        # prefetch: a sequential line is fetched while the previous one executes
        hidden = min(self.memory.miss_cycles, cycles // max(1, len(lines))) if self.memory.prefetch else 0
        block = Block(len(insns), cycles, taken, address + size, lines, hidden)
        self.blocks[key] = block
        return block

    def _in_flash(self, addr: int) -> bool:
        return self.flash.origin <= addr < self.flash.end

    def call(self, address: int, r0: int = 0, r1: int = 0) -> LayerTiming:
        """Call the Thumb function at ``address`` with (r0, r1) until it returns; its
        executed instructions and estimated cycles."""
        from unicorn import UC_HOOK_BLOCK, UC_HOOK_MEM_READ, UcError
        from unicorn import arm_const as U
        from unicorn.unicorn_py3.unicorn import HOOK_CODE_CFUNC, HOOK_MEM_ACCESS_CFUNC

        uc = self.uc
        seq: list[int] = []
        reads: list[int] = []
        append, rappend = seq.append, reads.append

        # Raw ctypes callbacks: unicorn's Python wrapper around each callback doubles the
        # cost of the (millions of) block and flash-read events.
        on_block = HOOK_CODE_CFUNC(lambda handle, address, size, _: append(address << 16 | size))
        on_read = HOOK_MEM_ACCESS_CFUNC(lambda handle, access, address, size, value, _: rappend(address))
        h1 = _raw_hook(uc, UC_HOOK_BLOCK, on_block, 1, 0)
        # flash data reads only cost something behind wait states; at zero none is recorded
        h2 = _raw_hook(uc, UC_HOOK_MEM_READ, on_read, self.flash.origin, self.flash.end - 1) \
            if self.memory.wait_states else None
        uc.reg_write(U.UC_ARM_REG_SP, self.stack_top & ~7)
        uc.reg_write(U.UC_ARM_REG_R0, r0)
        uc.reg_write(U.UC_ARM_REG_R1, r1)
        uc.reg_write(U.UC_ARM_REG_LR, MAGIC_RETURN | 1)
        try:
            uc.emu_start(address | 1, MAGIC_RETURN, count=MAX_INSTRUCTIONS)
        except UcError as exc:
            pc = uc.reg_read(U.UC_ARM_REG_PC)
            raise MicrotileError(f"timing model: the call of 0x{address:08x} stopped at pc 0x{pc:08x} ({exc})") \
                from None
        finally:
            uc.hook_del(h1)
            if h2 is not None:
                uc.hook_del(h2)
        if uc.reg_read(U.UC_ARM_REG_PC) & ~1 != MAGIC_RETURN:
            raise MicrotileError(f"timing model: the call of 0x{address:08x} ran past {MAX_INSTRUCTIONS:,} "
                                 "instructions without returning")
        return self._cost(seq, reads)

    def _cost(self, seq: list[int], reads: list[int]) -> LayerTiming:
        blocks = self.blocks
        mem = self.memory
        # execution counts per block, and how often it branched away (not to its fall-through)
        arr = np.asarray(seq, dtype=np.int64)
        keys, first, inverse, counts = np.unique(arr, return_index=True, return_inverse=True, return_counts=True)
        for key in keys.tolist():
            if key not in blocks:
                self._block(key)
        ends = np.array([blocks[k].end for k in keys.tolist()], dtype=np.int64)
        nxt = np.empty_like(arr)
        nxt[:-1] = arr[1:] >> 16
        nxt[-1] = MAGIC_RETURN
        taken = np.bincount(inverse, weights=nxt != ends[inverse], minlength=len(keys)).astype(np.int64)
        instructions = cycles = 0
        for key, n, t in zip(keys.tolist(), counts.tolist(), taken.tolist()):
            b = blocks[key]
            instructions += b.instructions * n
            cycles += b.cycles * n + b.taken_penalty * t
        stall = 0
        if mem.wait_states:
            # instruction side: each executed block's flash lines through the I-cache, in order;
            # a block run again at once finds its lines cached (they are the most recent)
            miss = mem.miss_cycles
            last_line, hidden, prev = -2, 0, -1
            access = self.icache.access
            small = self.icache.size
            for key in seq:
                b = blocks[key]
                if key == prev and len(b.lines) <= small:
                    continue
                prev = key
                for line in b.lines:
                    if not access(line):
                        stall += miss - hidden if line == last_line + 1 else miss
                    last_line, hidden = line, b.prefetch_hidden
            # data side: loads from flash through the data cache (a read of the line read
            # just before is a hit and leaves the LRU order as it is)
            if reads:
                lines = np.asarray(reads, dtype=np.int64) // mem.line_bytes
                keep = np.ones(len(lines), dtype=bool)
                keep[1:] = lines[1:] != lines[:-1]
                daccess = self.dcache.access
                for line in lines[keep].tolist():
                    if not daccess(line):
                        stall += miss
        return LayerTiming(instructions, cycles + stall, len(reads), stall)


class FirmwareTiming(TimingEngine):
    """A microtile firmware ELF: its model's layers, measured as the firmware measures
    them (minus the cost of calling mt_noop_layer, the overhead the device subtracts)."""

    def __init__(self, elf: str | Path, board):
        super().__init__(elf, board)
        s = self.symbols
        for name in ("mt_model_def", "mt_arena", "mt_noop_layer", "_sdata", "_edata", "_sidata", "_sbss", "_ebss"):
            if name not in s:
                raise MicrotileError(f"{elf}: symbol {name} missing; not a microtile firmware ELF")
        uc = self.uc
        # what the startup does: .data from its load address, .bss zeroed
        uc.mem_write(s["_sdata"], bytes(uc.mem_read(s["_sidata"], s["_edata"] - s["_sdata"])))
        uc.mem_write(s["_sbss"], bytes(s["_ebss"] - s["_sbss"]))
        mdef = bytes(uc.mem_read(s["mt_model_def"], 32))
        (_, _, self.arena_size, self.num_inputs, self.num_outputs, self.num_layers, _pad, inputs, outputs,
         self.run_layer) = struct.unpack("<IIIHHHHIII", mdef)
        self.inputs = self._buffers(inputs, self.num_inputs)
        self.outputs = self._buffers(outputs, self.num_outputs)
        self.arena = s["mt_arena"]
        # the overhead, warm as the firmware measures it (its min after warm-up runs)
        for _ in range(2):
            self.overhead = self.call(s["mt_noop_layer"], 0, self.arena)

    def _buffers(self, addr: int, n: int) -> list[tuple[int, int]]:
        raw = bytes(self.uc.mem_read(addr, 8 * n))
        return [struct.unpack_from("<II", raw, 8 * i) for i in range(n)]

    def write_input(self, index: int, data: bytes) -> None:
        offset, size = self.inputs[index]
        if len(data) != size:
            raise MicrotileError(f"input {index}: {len(data)} bytes, the model takes {size}")
        self.uc.mem_write(self.arena + offset, data)

    def read_output(self, index: int) -> bytes:
        offset, size = self.outputs[index]
        return bytes(self.uc.mem_read(self.arena + offset, size))

    def run_layer_timed(self, layer: int) -> LayerTiming:
        t = self.call(self.run_layer, layer, self.arena)
        o = self.overhead
        return LayerTiming(t.instructions - o.instructions, max(0, t.cycles - o.cycles), t.flash_data_reads,
                           t.stall_cycles)

    def run(self, inputs: list[bytes]) -> TimingResult:
        """All layers on one input; returns per-layer instructions and estimated cycles."""
        t0 = time.perf_counter()
        for i, data in enumerate(inputs):
            self.write_input(i, data)
        result = TimingResult(self.board.name, self.core, self.board.clock_hz, self.memory.wait_states)
        for layer in range(self.num_layers):
            result.layers.append(self.run_layer_timed(layer))
        result.outputs = [self.read_output(i) for i in range(self.num_outputs)]
        result.seconds = time.perf_counter() - t0
        return result


def estimate(elf: str | Path, board, inputs: list[bytes]) -> TimingResult:
    return FirmwareTiming(elf, board).run(inputs)


STACK_PAINT = 0xA5  # bytes of the stack before each invoke; the first overwritten one is the high-water mark


class TimingLink:
    """The timing model as a target, for boards that no QEMU machine models
    (``microtile run --board nucleo_l4r5zi --emulate``): the same link calls the
    runner makes on QEMU or a board, answered by running the ELF's layers on the
    engine. Counts are executed instructions; ``last`` holds the estimated cycles."""

    def __init__(self, elf: str | Path, board):
        self.engine = FirmwareTiming(elf, board)
        self.last: TimingResult | None = None
        self._stack_used = 0

    def info(self):
        from microtile.link.protocol import DeviceInfo

        e = self.engine
        model_hash = struct.unpack("<I", bytes(e.uc.mem_read(e.symbols["mt_model_def"] + 4, 4)))[0]
        return DeviceInfo(proto_version=0, counter_unit="instructions", max_payload=0,
                          clock_hz=e.board.clock_hz, model_hash=model_hash, arena_size=e.arena_size,
                          stack_size=e.board.stack_size, num_layers=e.num_layers, max_layers=e.num_layers,
                          model_arena_size=e.arena_size, input_sizes=[s for _, s in e.inputs],
                          output_sizes=[s for _, s in e.outputs], build_id="", model_name="",
                          board=e.board.name, port_status_text="timing model (unicorn), no device")

    def write_input(self, index: int, data: bytes) -> None:
        self.engine.write_input(index, data)

    def invoke(self, count: int = 1) -> None:
        e = self.engine
        bottom = e.symbols.get("_sstack", e.stack_top - e.board.stack_size)
        size = e.stack_top - bottom
        e.uc.mem_write(bottom, bytes([STACK_PAINT]) * size)
        for _ in range(count):
            self.last = e.run([])
        painted = bytes(e.uc.mem_read(bottom, size))
        untouched = len(painted) - len(painted.lstrip(bytes([STACK_PAINT])))
        self._stack_used = size - untouched + STACK_GUARD

    def read_output(self, index: int) -> bytes:
        return self.engine.read_output(index)

    def read_counters(self):
        from microtile.link.protocol import Counters

        layers = [t.instructions for t in self.last.layers]
        return Counters("instructions", layers, sum(layers), self._stack_used, 1)


class TimingTarget:
    """Context manager with ``.link`` (a TimingLink), like targets.open_target's."""

    def __init__(self, board, firmware):
        self.link = TimingLink(getattr(firmware, "elf", firmware), board)

    def __enter__(self) -> "TimingTarget":
        return self

    def __exit__(self, *exc) -> None:
        return None


def timing_model_info(board) -> dict:
    """The timing model's identity for a board (what a run JSON records beside est_cycles)."""
    memory = MemorySystem.for_board(board)
    return {"name": TIMING_MODEL, "version": TIMING_MODEL_VERSION, "board": board.name,
            "core": "cortex-m7" if board.core == "cortex-m7" else "cortex-m4", "clock_hz": board.clock_hz,
            "flash_wait_states": memory.wait_states}


def table_markdown() -> str:
    """``TIMING`` as the Markdown tables of docs/timing.md (a test keeps them equal)."""
    m4, m7, mem = TIMING["cortex-m4"], TIMING["cortex-m7"], TIMING["memory"]
    out = ["| class | Cortex-M4 cycles | Cortex-M7 cycles (approximation) |", "|---|---:|---:|"]
    for cls, cyc in m4["cycles"].items():
        out.append(f"| {cls} | {cyc} | {m7['cycles'][cls]} |")
    out.append(f"| P (pipeline refill) | {m4['P']} | {m7['P']} |")
    out += ["", f"Cortex-M4: {m4['source']}.", f"Cortex-M7: {m7['source']}. Dual issue: {m7['dual_issue']}.", "",
            "Assumptions:", ""]
    out += [f"- {a}" for a in m4["assumptions"] + m7["assumptions"]]
    out += ["", "| memory system | line bytes | I-cache lines | D-cache lines |", "|---|---:|---:|---:|"]
    for fam, art in mem["art"].items():
        out.append(f"| {fam} ART | {art['line_bytes']} | {art['icache_lines']} | {art['dcache_lines']} |")
    h7 = mem["stm32h7"]
    out.append(f"| stm32h7 L1 ({h7['ways']}-way, modelled fully associative) | {h7['line_bytes']} | "
               f"{h7['icache_bytes'] // h7['line_bytes']} | {h7['dcache_bytes'] // h7['line_bytes']} |")
    out += ["", f"- SRAM, CCM and TCM: {mem['sram_wait_states']} wait states.",
            f"- ART miss: {mem['art_miss']}.", f"- Prefetch: {mem['prefetch']}.",
            f"- Data reads: {mem['data_reads']}.", f"- H7 line fill: {h7['miss_cycles']}.",
            f"- {mem['qemu_board']}.", f"- Sources: {mem['source']}."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microtile.measure.timing",
                                     description="print the timing model's table (docs/timing.md)")
    parser.add_argument("--table", action="store_true", help="the table of timings and assumptions, as Markdown")
    args = parser.parse_args(argv)
    if args.table:
        sys.stdout.write(table_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
