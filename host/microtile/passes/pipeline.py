"""The graph-pass stage, between import and codegen.

Each pass maps a Graph to a new Graph (the input is never changed) computing the same
function: ``check_pass`` runs both on the numpy reference executor and compares the
outputs bit for bit. ``RamConfig`` says which RAM techniques a compilation uses: the
graph passes run here; the others (aliases, bands, the exact planner) are applied by
codegen and the planner.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from microtile.importer.ir import Graph


@dataclass(frozen=True)
class RamConfig:
    """One point of the RAM search: each field turns one technique on."""
    shared_scratch: bool = True   # kernel scratch planned as a per-layer buffer (else after the tensors)
    reshape_alias: bool = True    # RESHAPE output = its input bytes, no copy
    fold_pad: bool = True         # PAD folded into the CONV_2D / DEPTHWISE_CONV_2D that reads it
    add_inplace: bool = True      # ADD written over an input whose lifetime ends there
    concat_place: bool = True     # CONCATENATION inputs written into their slices of the output
    conv_inplace: bool = True     # CONV_2D run in bands of rows over its own input
    depthwise_inplace: bool = True  # DEPTHWISE_CONV_2D likewise
    fuse: bool = True             # line-buffered fusion (no middle tensor): a 1x1 CONV_2D and the depthwise
                                  # reading it; a residual block and its ADD (with add_inplace)
    input_inplace: bool = True    # layers may write over the device inputs (see passes/inplace.py)
    reorder: bool = True          # operator order of branchy graphs chosen for the lowest peak
    exact: bool = True            # exact (CP-SAT) offsets, greedy under a time limit
    fdt: bool = True              # fused depthwise tiling: channel partitions of conv -> ... -> conv/FC paths
    max_bands: int = 8            # bands per in-place layer (more: less scratch, more calls)

    @classmethod
    def none(cls) -> "RamConfig":
        """The layer-by-layer build: no technique (the planner of before)."""
        return cls(**{f.name: False for f in fields(cls) if f.type in (bool, "bool")})

    @classmethod
    def techniques(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.type in (bool, "bool")]

    def on(self) -> list[str]:
        return [k for k in self.techniques() if getattr(self, k)]

    def label(self) -> str:
        """'all', 'none', 'all-X-Y' or 'X+Y' (the shorter), with ':bandsN' when N is not 8."""
        on, off = self.on(), [k for k in self.techniques() if not getattr(self, k)]
        text = "all" if not off else "none" if not on else ("all-" + "-".join(off) if len(off) < len(on)
                                                           else "+".join(on))
        return text + (f":bands{self.max_bands}" if self.max_bands != 8 and (self.conv_inplace or self.depthwise_inplace) else "")


def run_passes(graph: Graph, config: RamConfig) -> Graph:
    """The graph passes the config turns on, in order."""
    from microtile.passes.fdt import fdt
    from microtile.passes.fold_pad import fold_pad
    from microtile.passes.reorder import reorder

    if config.fold_pad:
        graph = fold_pad(graph)
    if config.reorder:
        graph = reorder(graph)
    if config.fdt:  # after reorder: its partitions run in order, one after the other
        graph = fdt(graph, config)
    return graph


def check_pass(before: Graph, after: Graph, inputs: list[np.ndarray]) -> None:
    """Raise AssertionError unless both graphs give the same outputs on the reference."""
    from microtile.check.reference import run_reference

    for a, b in zip(run_reference(before, inputs), run_reference(after, inputs)):
        if a.shape != b.shape or not np.array_equal(a, b):
            raise AssertionError(f"pass changed the output of {before.name}: {np.count_nonzero(a != b)} values differ")


def copy_graph(graph: Graph, **changes) -> Graph:
    """A new Graph sharing the tensors (passes replace lists, never edit them in place)."""
    return replace(graph, **{"tensors": list(graph.tensors), "operators": list(graph.operators), **changes})
