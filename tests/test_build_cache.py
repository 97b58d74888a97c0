"""A failed firmware build leaves no cache entry: after a broken compiler on PATH, the
next build with the real toolchain succeeds without deleting anything by hand."""
from __future__ import annotations

import os

import pytest

import microtile.build.firmware as build
from microtile.targets.boards import load_board
from microtile.codegen.model_source import compile_model
from microtile.errors import BuildError
from microtile.importer.tflite_format import load_tflite
from microtile_models.build import zoo_model_bytes


def test_failed_configure_does_not_poison_the_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setattr(build, "BUILD_ROOT", root)
    board = load_board("qemu")
    compiled = compile_model(load_tflite(zoo_model_bytes("op_add")), "optimized", board)

    broken = tmp_path / "broken-bin"
    broken.mkdir()
    gcc = broken / "arm-none-eabi-gcc"
    gcc.write_text("#!/bin/sh\necho 'arm-none-eabi-gcc: broken on purpose' >&2\nexit 1\n")
    gcc.chmod(0o755)
    with monkeypatch.context() as m:
        m.setenv("PATH", f"{broken}:{os.environ['PATH']}")
        with pytest.raises(BuildError, match="firmware build failed"):
            build.build_firmware(compiled, board)
    assert list((root / board.name).iterdir()) == []  # no entry, not even a half-built folder

    firmware = build.build_firmware(compiled, board)  # the real compiler, same key
    assert firmware.elf.is_file() and firmware.elf.parent == root / board.name / firmware.build_id
    assert [p.name for p in (root / board.name).iterdir()] == [firmware.build_id]
