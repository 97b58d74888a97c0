"""`microtile run`: compile, build, run every input on the target, check each output
against TFLM bit for bit, and collect per-layer counts, memory and accuracy.

Results accumulate sample by sample, so a target that fails half-way still leaves
everything measured until then in the report (``RunResult.error`` says what broke).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .boards import Board, load_board
from .build import Firmware, build_firmware
from .codegen import CompiledModel, compile_model
from .errors import MicrotileError
from .inputs import Sample, load_samples
from .oracle import TflmOracle
from .tflite_format import load_tflite


@dataclass
class RunResult:
    model: str
    board: Board
    counter_unit: str  # "instructions" (emulator) or "cycles" (board)
    compiled: CompiledModel
    firmware: Firmware
    layer_counts: list[list[int]] = field(default_factory=list)  # per sample, per layer
    stack_bytes: int = 0
    samples: int = 0
    mismatches: list[str] = field(default_factory=list)  # names of samples that differ from TFLM
    correct: int = 0  # Top-1 hits (labelled samples)
    tflm_correct: int = 0
    labelled: int = 0
    error: str | None = None
    clock_hz: int | None = None  # the clock the target reports (a board may fall back to its reset clock)
    port_status: str = "ok"  # the board port's own report (clock fallback, missing counter, ...)

    @property
    def top1(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def tflm_top1(self) -> float | None:
        return self.tflm_correct / self.labelled if self.labelled else None

    def mean_counts(self) -> list[int]:
        if not self.layer_counts:
            return [0] * len(self.compiled.device_ops)
        return [int(round(v)) for v in np.mean(np.array(self.layer_counts, dtype=np.float64), axis=0)]

    def to_json(self) -> dict:
        counts = self.mean_counts()
        macs = self.compiled.macs
        unit = self.counter_unit
        layers = [
            {"index": op.index, "op": op.opcode, "macs": m, unit: c}
            for op, m, c in zip(self.compiled.device_ops, macs, counts)
        ]
        arena = self.compiled.plan.arena_size
        data = {
            "model": self.model,
            "board": self.board.name,
            "kernels": self.compiled.kernels,
            "samples": self.samples,
            "mismatches": len(self.mismatches),
            "mismatched_samples": self.mismatches[:100],
            "top1": self.top1,
            "tflm_top1": self.tflm_top1,
            "counter_unit": unit,
            "layers": layers,
            "total": {"macs": sum(macs), unit: sum(counts)},
            "ram": {
                "arena_bytes": arena,
                "stack_bytes": self.stack_bytes,
                "static_bytes": self.firmware.sizes.ram_static_bytes,
                "stack_reserved_bytes": self.firmware.sizes.stack_reserved_bytes,
                # what the model needs: static data (arena included) + the stack it used
                "total_bytes": self.firmware.sizes.ram_static_bytes + self.stack_bytes,
            },
            "rom": {"total_bytes": self.firmware.sizes.rom_bytes},
            "error": self.error,
            "port_status": self.port_status,
        }
        if unit == "cycles":  # also as time, at the clock the firmware reported
            clock = self.clock_hz or self.board.clock_hz
            data["clock_hz"] = clock
            for entry in (*layers, data["total"]):
                entry["time_us"] = round(entry["cycles"] * 1e6 / clock, 3)
        return data


def top1_of(output: np.ndarray) -> int:
    return int(np.argmax(np.asarray(output).reshape(-1)))


def run_model(model_path: str | Path, board_name: str = "qemu", inputs: str | None = None,
              random: int | None = None, labels: str | None = None, limit: int | None = None,
              progress: Callable[[int, int], None] | None = None, probe: str | None = None,
              kernels: str = "optimized", os_name: str = "baremetal",
              target_options: dict | None = None) -> RunResult:
    """Run a model on a target. ``target_options`` go to ``targets.open_target``
    (``emulate``, ``port``, ``baudrate``); ``os_name`` is "baremetal" or "zephyr"."""
    from .targets import open_target

    model_path = Path(model_path)
    graph = load_tflite(model_path)
    board = load_board(board_name)
    compiled = compile_model(graph, kernels, board)
    samples: list[Sample] = load_samples(graph, inputs, random, labels, limit)
    if os_name == "zephyr":
        from .zephyr import build_zephyr

        firmware = build_zephyr(compiled, board)
    elif os_name == "baremetal":
        firmware = build_firmware(compiled, board)
    else:
        raise MicrotileError(f"unknown --os {os_name!r}: baremetal or zephyr")
    oracle = TflmOracle(model_path)

    result = RunResult(graph.name, board, board.counter_unit, compiled, firmware)
    try:
        with open_target(board, firmware, probe=probe, **(target_options or {})) as target:
            link = target.link
            info = link.info()
            if info.model_hash != int(compiled.hash[:8], 16):
                raise MicrotileError(
                    f"the target runs model hash {info.model_hash:08x}, not {compiled.hash[:8]}: stale image"
                )
            result.counter_unit = info.counter_unit
            result.clock_hz = info.clock_hz
            result.port_status = getattr(info, "port_status_text", "") or "ok"
            for k, sample in enumerate(samples):
                for i, arr in enumerate(compiled.to_device(sample.arrays)):
                    link.write_input(i, np.ascontiguousarray(arr).tobytes())
                link.invoke(1)
                device_outs = []
                for i, t_index in enumerate(compiled.device_outputs):
                    t = graph.tensor(t_index)
                    device_outs.append(np.frombuffer(link.read_output(i), dtype=t.dtype).reshape(t.shape))
                counters = link.read_counters()
                outputs = compiled.from_device(device_outs)
                expected = oracle(sample.arrays)

                result.samples += 1
                result.layer_counts.append(list(counters.layers))
                result.stack_bytes = max(result.stack_bytes, counters.stack_bytes)
                if any(not np.array_equal(a, b) for a, b in zip(outputs, expected)):
                    result.mismatches.append(sample.name)
                if sample.label is not None:
                    result.labelled += 1
                    result.correct += top1_of(outputs[0]) == sample.label
                    result.tflm_correct += top1_of(expected[0]) == sample.label
                if progress:
                    progress(k + 1, len(samples))
    except MicrotileError as exc:  # link failures included: keep what was measured
        result.error = str(exc)
    except KeyboardInterrupt:
        result.error = f"interrupted (Ctrl-C) after {result.samples} of {len(samples)} samples"
    return result


def write_json(result: RunResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result.to_json(), indent=2) + "\n")
