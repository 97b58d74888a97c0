"""Cores without the DSP extension (Cortex-M0+/M3): the optimised kernels and the
generated models that inline them build from their portable C versions, warning-free
and with no DSP instruction in the code (the same portable code the native tests run
bit-exactly against TFLM)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from microtile.codegen.model_source import compile_model
from microtile.importer.tflite_format import load_tflite
from microtile_models.build import zoo_model_bytes

REPO = Path(__file__).resolve().parents[1]
CPUS = ["cortex-m3", "cortex-m0plus"]
# Armv7E-M DSP-extension mnemonics the optimised kernels use on M4/M7.
DSP = re.compile(r"\s(smla[bdt][bt]?x?|smlsd|smuad|sxtab?16|smmulr?|ssat16|[su]add(16|8)|qadd(16|8)|"
                 r"ssub(16|8)|sel|pkhbt|pkhtb|usad8)\s")
MODELS = ["ds_cnn_kws", "resnet8_ic", "op_maxpool_2x2", "op_softmax", "op_fc_relu"]


def _compile(cpu: str, source: Path, out: Path, include: list[Path]) -> str:
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        pytest.skip("arm-none-eabi-gcc not installed (make setup)")
    cmd = [gcc, f"-mcpu={cpu}", "-mthumb", "-mfloat-abi=soft", "-O2", "-std=c99", "-Wall", "-Wextra",
           "-Werror", *(f"-I{p}" for p in include), "-c", str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return subprocess.run(["arm-none-eabi-objdump", "-d", str(out)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("cpu", CPUS)
def test_kernels_build_without_dsp_instructions(cpu, tmp_path):
    sources = sorted((REPO / "firmware" / "kernels").glob("*.c"))
    assert sources
    for src in sources:
        asm = _compile(cpu, src, tmp_path / (src.stem + ".o"), [REPO / "firmware" / "include"])
        assert not DSP.search(asm), f"{src.name} uses a DSP instruction on {cpu}: {DSP.search(asm).group()}"


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("name", MODELS)
def test_optimised_models_build_without_dsp_instructions(cpu, name, tmp_path):
    compiled = compile_model(load_tflite(zoo_model_bytes(name)), kernels="optimized")
    compiled.write(tmp_path)
    asm = _compile(cpu, tmp_path / "model.c", tmp_path / "model.o", [REPO / "firmware" / "include", tmp_path])
    assert not DSP.search(asm), f"{name} uses a DSP instruction on {cpu}: {DSP.search(asm).group()}"


def test_the_check_sees_dsp_instructions_on_cortex_m4(tmp_path):
    """The same sources do use the DSP extension on a Cortex-M4, so the checks above can fail."""
    src = REPO / "firmware" / "kernels" / "mt_matmul_opt.c"
    assert DSP.search(_compile("cortex-m4", src, tmp_path / "m4.o", [REPO / "firmware" / "include"]))
