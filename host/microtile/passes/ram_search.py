"""The search under a RAM budget: which RAM techniques a model is compiled with.

Candidates: no technique; each technique alone; all of them; all but one. Each is
prepared (passes, aliases, greedy plan) and given a cost in estimated cycles: the
plain build's (the schedules' predicted cycles per MAC on the board, the vector kernels'
instructions x VECTOR_CPI) plus what the techniques add (band copies and calls, FDT's
partitions, predicted in instructions x VECTOR_CPI; copies RESHAPE and CONCATENATION no
longer make are subtracted). The chosen point is the fastest
candidate whose arena fits the budget, where candidates within COST_SLACK of the
fastest count as equally fast and the smallest arena among them wins; it is then
planned exactly (CP-SAT) when its config says so. No candidate within the budget:
DoesNotFitError naming the smallest arena found.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from microtile.errors import DoesNotFitError
from microtile.importer.ir import Graph
from microtile.ops.opt_schedules import VECTOR_CPI
from microtile.passes.inplace import Band, FusedPlan, PanelPlan, ResidualPlan
from microtile.passes.pipeline import RamConfig

COPY_BYTE = 0.5     # instructions per byte copied (word copies: LDR + STR + loop per 4 bytes)
# An extra kernel call of a band: its set-up, plus, for a conv, the padded rows of the last
# register tile (a band of P pixels runs ceil(P / 3) tiles of 3: up to 2 pixels' K x N MACs
# made and thrown away). A rough fit: QEMU measured 1,070 (VWW: no wasted row), 3,028 (KWS:
# 1 pixel of 64 x 64; this predicts 5,196) and 6,095 (IC: 1 pixel of 144 x 16; 3,404)
# instructions per extra call at one row per band. It ranks candidates; the RAM benchmark
# measures what the chosen point really adds.
BAND_CALL = 1100
TILE_ROWS = 3       # the conv schedules' usual register tile height (3x2)
WASTED_MAC = 1.0    # instructions per MAC of a thrown-away tile row
COST_SLACK = 0.05   # candidates within 5% of the fastest predicted est. cycles are "as fast"
EXACT_RETRIES = 4   # smallest candidates planned exactly when none fits the budget greedily
DEFAULT_IPM = 8.0   # instructions per MAC (or element) of a layer with no prediction


@dataclass
class Candidate:
    config: RamConfig
    arena: int
    extra: float          # predicted estimated cycles added to the plain build
    cost: float           # predicted estimated cycles of the whole build
    method: str
    fits: bool = True

    def as_dict(self) -> dict:
        return {"config": self.config.label(), "techniques": self.config.on(), "max_bands": self.config.max_bands,
                "arena_bytes": self.arena, "predicted_est_cycles": round(self.cost),
                "predicted_extra_est_cycles": round(self.extra), "planner": self.method, "fits": self.fits}


@dataclass
class RamSearch:
    budget: int
    baseline: float                      # predicted estimated cycles of the plain build
    layer_bound: int
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    chosen_prepared: object = None

    def pareto(self) -> list[Candidate]:
        """Candidates no other beats on both arena and cost, smallest arena first."""
        front = []
        for c in sorted(self.candidates, key=lambda c: (c.arena, c.cost)):
            if not front or c.cost < front[-1].cost:
                front.append(c)
        return front

    def fastest(self) -> Candidate:
        """The fitting candidate of the lowest predicted cost."""
        return min((c for c in self.candidates if c.fits), key=lambda c: c.cost)

    def ranked(self) -> list[Candidate]:
        """The fitting candidates within COST_SLACK of the fastest, as the search prefers
        them: the smallest arena first, then the lowest cost (the first is the chosen one)."""
        fastest = self.fastest()
        near = [c for c in self.candidates if c.fits and c.cost <= fastest.cost + COST_SLACK * self.baseline]
        return sorted(near, key=lambda c: (c.arena, c.cost))

    def as_dict(self) -> dict:
        return {"budget_bytes": self.budget, "layer_bound_bytes": self.layer_bound,
                "predicted_plain_est_cycles": round(self.baseline),
                "chosen": self.chosen.as_dict() if self.chosen else None,
                "pareto": [c.as_dict() for c in self.pareto()],
                "candidates": [c.as_dict() for c in self.candidates]}


_RAM_BUDGET: int | None = None  # --ram-budget of this command (cli.main sets it)
_FORCED: RamConfig | None = None  # one config to compile with, whatever fits (the RAM benchmark)


def force_config(config: RamConfig | None) -> None:
    global _FORCED
    _FORCED = config


def set_ram_budget(nbytes: int | None) -> None:
    global _RAM_BUDGET
    _RAM_BUDGET = nbytes


def default_budget(board) -> int | None:
    """The board's RAM minus the stack and the firmware's own buffers (build/firmware.py's
    RAM_BUDGET), or None for a host build."""
    if board is None:
        return None
    from microtile.build.firmware import RAM_BUDGET

    return board.ram_bytes - RAM_BUDGET


def candidate_configs() -> list[RamConfig]:
    names = RamConfig.techniques()
    none, full = RamConfig.none(), RamConfig()
    configs = [none, full]  # these two first (search_ram stops after them when nothing applies)
    configs += [replace(none, **{n: True}) for n in names if n != "exact"]
    configs += [replace(full, **{n: False}) for n in names if n != "exact"]
    # fewer bands: fewer calls; ~ a row per band: the least scratch
    configs += [replace(full, max_bands=n, fuse=f) for n in (2, 4, 32) for f in (True, False)]
    return list(dict.fromkeys(configs))


def baseline_instructions(prep, board, cycles: bool = False) -> float:
    """Predicted instructions (or, with ``cycles``, estimated cycles) of the layers: the
    schedules' and vector kernels' cost models."""
    from microtile.ops import kernel_for
    from microtile.ops.opt_schedules import VECTOR_CPI, explain_op
    from microtile.passes.schedule import matmul_shape, schedule_for

    total = 0.0
    graph = prep.graph
    for op in prep.device_ops:
        work = kernel_for(op).macs(op, graph) or graph.tensor(op.outputs[0]).size
        ipm, cpm = DEFAULT_IPM, DEFAULT_IPM * VECTOR_CPI
        try:
            if matmul_shape(op, graph) is not None:
                s = schedule_for(op, graph, board)
                ipm, cpm = s.predicted_ipm, s.predicted_cpm or s.predicted_ipm * VECTOR_CPI  # 0: no board
            else:
                e = explain_op(op, graph)
                if e is not None:
                    ipm, cpm = e["predicted_ipm"], e["predicted_cpm"]
        except Exception:  # a layer the cost models do not cover keeps the default
            pass
        total += (cpm if cycles else ipm) * work
    return total


def _band_call(op, graph, band) -> float:
    """The predicted instructions of one more call of ``op`` for ``band`` (see BAND_CALL)."""
    if op.opcode != "CONV_2D":
        return BAND_CALL
    y, w = graph.tensor(op.outputs[0]), graph.tensor(op.inputs[1])
    pixels = (band.out_rows[1] - band.out_rows[0]) * y.shape[2]
    return BAND_CALL + (-pixels % TILE_ROWS) * int(np.prod(w.shape[1:])) * y.shape[3] * WASTED_MAC


def extra_instructions(prep) -> float:
    """What the techniques add: band copies and calls, minus the copies they remove."""
    graph = prep.graph
    extra = 0.0
    for step, bp in prep.bands.items():
        if isinstance(bp, (int, PanelPlan)):  # kernels in place: the depthwise's plane copies cost about
            continue                          # what they save; the conv's panel is built anyway
        op = prep.device_ops[step]
        if isinstance(bp, ResidualPlan):  # a call per layer and band (each on the rows it makes), ring moves
            calls = [(layer, st.band) for steps in bp.steps[1:] for layer, st in zip(bp.layers, steps)
                     if st.band.out_rows[0] < st.band.out_rows[1]]
            calls += [(layer, b) for b in bp.bands[1:] for layer in (bp.layers[-1], op)]
            moved = bp.moved_bytes
        elif isinstance(bp, FusedPlan):   # two calls per band (the conv on the ring rows), ring moves
            calls = [(bp.conv, Band(b.in_rows, b.in_rows, 0)) for b in bp.bands[1:]] + [(op, b) for b in bp.bands[1:]]
            moved = sum(max(0, a.in_rows[1] - b.in_rows[0]) for a, b in zip(bp.bands, bp.bands[1:])) * bp.t_row_bytes
        else:                             # one call per band and its input rows copied
            calls, moved = [(op, b) for b in bp.bands[1:]], 0
            extra += bp.copied_bytes * COPY_BYTE
        extra += moved * COPY_BYTE + sum(_band_call(layer, graph, b) for layer, b in calls)
    for a in prep.plan.aliases:
        if a.kind in ("reshape", "concat"):
            extra -= graph.tensor(a.member).nbytes * COPY_BYTE
    from microtile.passes.fdt import extra_instructions as fdt_extra

    return extra + fdt_extra(graph)  # FDT's extra calls, accumulator updates and partial sums


def search_ram(graph: Graph, kernels: str, board, budget: int | None = None,
               configs: list[RamConfig] | None = None, exact_all: bool = False) -> RamSearch:
    """``exact_all``: plan every candidate as its config says (the benchmark), not only the chosen one."""
    from microtile.codegen.model_source import prepare

    if budget is None:
        budget = _RAM_BUDGET if _RAM_BUDGET is not None else default_budget(board)
    preps: dict = {}  # keeps every candidate's graph alive while the scratch cache is keyed by operator ids
    cache: dict = {}
    search = None
    if configs is None and _FORCED is not None:
        configs, budget = [_FORCED], 1 << 30
    for config in configs or candidate_configs():
        prep = prepare(graph, kernels, board, config, exact=None if exact_all else False, scratch_cache=cache)
        preps[config] = prep
        if search is None:
            search = RamSearch(budget or 0, baseline_instructions(prep, board, cycles=True), prep.plan.layer_bound)
        extra = extra_instructions(prep) * VECTOR_CPI  # copies and calls: instructions at the vector kernels' CPI
        search.candidates.append(Candidate(config, prep.plan.arena_size, extra, search.baseline + extra,
                                           prep.plan.method, budget is None or prep.plan.arena_size <= budget))
        if configs is None and config == RamConfig() and not prep.plan.aliases and not prep.bands \
                and prep.graph is graph:
            break  # nothing to alias, fuse or rewrite: the other candidates are these two again
    fitting = [c for c in search.candidates if c.fits]
    if not fitting:  # the exact planner may still bring the smallest ones within the budget
        for c in sorted(search.candidates, key=lambda c: c.arena)[:EXACT_RETRIES]:
            if c.config.exact:
                preps[c.config] = prepare(graph, kernels, board, c.config, scratch_cache=cache)
                c.arena, c.method = preps[c.config].plan.arena_size, preps[c.config].plan.method
                c.fits = c.arena <= budget
        fitting = [c for c in search.candidates if c.fits]
    if not fitting:
        smallest = min(search.candidates, key=lambda c: c.arena)
        raise DoesNotFitError(
            f"model {graph.name}: no configuration fits the RAM budget of {budget:,} B; the smallest arena found "
            f"is {smallest.arena:,} B ({smallest.config.label()}); raise --ram-budget to at least that or use a "
            "board with more RAM")
    chosen = search.ranked()[0]
    prep = preps[chosen.config]
    if chosen.config.exact and prep.plan.method == "greedy":
        prep = prepare(graph, kernels, board, chosen.config, scratch_cache=cache)
        chosen.arena, chosen.method = prep.plan.arena_size, prep.plan.method
    search.chosen, search.chosen_prepared = chosen, prep
    return search
