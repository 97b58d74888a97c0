"""The correctness oracle: TensorFlow Lite Micro's reference kernels, run through
the ``tflite-micro`` Python package on the original .tflite bytes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from microtile.errors import ModelFormatError


class TflmRefusedError(ModelFormatError, RuntimeError):
    """TFLM itself cannot run the model (its Prepare or Invoke failed): nothing can be
    checked against it, so the run stops here with one line (exit 2). Still the
    RuntimeError the tflite_micro runtime raised, for callers that catch that."""


def _refused(exc: Exception, when: str) -> TflmRefusedError:
    detail = " ".join(str(exc).split())
    return TflmRefusedError(f"TFLM cannot {when} this model ({detail}; TFLM's reason is printed above), so "
                            "nothing can be checked against it: re-convert the model with the TFLite converter")


class TflmOracle:
    """One TFLM interpreter for a model, reused across inputs."""

    def __init__(self, model: bytes | str | Path):
        import tflite
        from tflite_micro.python.tflite_micro import runtime

        data = Path(model).read_bytes() if isinstance(model, (str, Path)) else bytes(model)
        subgraph = tflite.Model.GetRootAs(data, 0).Subgraphs(0)
        self.num_outputs = subgraph.OutputsLength()
        # The package's default arena (10x the model size) is too small for models with few
        # weights and large activations (a lone pooling layer): add room for every tensor.
        activations = 0
        for i in range(subgraph.TensorsLength()):
            t = subgraph.Tensors(i)
            activations += int(np.prod(t.ShapeAsNumpy())) * 4 if t.ShapeLength() else 4
        try:
            self.interpreter = runtime.Interpreter.from_bytes(
                data, arena_size=len(data) * 10 + activations + 16384)
        except (RuntimeError, ValueError) as exc:
            raise _refused(exc, "load") from None

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        for i, x in enumerate(inputs):
            self.interpreter.set_input(np.asarray(x, order="C"), i)  # keeps 0-d inputs 0-d
        try:
            self.interpreter.invoke()
        except RuntimeError as exc:
            raise _refused(exc, "run") from None
        return [np.array(self.interpreter.get_output(i)) for i in range(self.num_outputs)]


def run_tflm(model: bytes | str | Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run the model once on TFLM; return its outputs."""
    return TflmOracle(model)(inputs)
