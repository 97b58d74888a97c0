"""Every user error of `microtile run` / `bench` is one line and exit 2, found before
any firmware is built: bad input files, unwritable outputs, bad numbers, a mistyped
board, a missing emulator."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import microtile.build.firmware as build
from microtile.cli import main
from microtile_models.build import zoo_model_bytes


@pytest.fixture(scope="module")
def kws(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "kws.tflite"
    path.write_bytes(zoo_model_bytes("ds_cnn_kws"))  # input 1x49x10x1 int8, 12 classes
    return path


@pytest.fixture(autouse=True)
def build_root(tmp_path, monkeypatch) -> Path:
    """A fresh build cache: every error here must come before anything is built."""
    root = tmp_path / "build-cache"
    monkeypatch.setattr(build, "BUILD_ROOT", root)
    return root


def fails_in_one_line(capsys, argv: list[str], *expected: str, code: int = 2) -> str:
    assert main(argv) == code
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.out + out.err
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in out.out + out.err
    return lines[0]


def test_npy_inputs_that_cannot_be_loaded(kws, tmp_path, capsys, build_root):
    pickled = tmp_path / "pickled.npy"
    pickled.write_bytes(pickle.dumps({"x": 1}))
    fails_in_one_line(capsys, ["run", str(kws), "--inputs", str(pickled)], "pickled", "never loads")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"x": 1}], dtype=object))
    fails_in_one_line(capsys, ["run", str(kws), "--inputs", str(objects)], "pickled")
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.zeros((1, 49, 10, 1), np.int8))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    fails_in_one_line(capsys, ["run", str(kws), "--inputs", str(truncated)], "not a valid .npy file")
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY\x01\x00garbage")
    fails_in_one_line(capsys, ["run", str(kws), "--inputs", str(corrupt)], "not a valid .npy file")
    unreadable = tmp_path / "dir" / "x.npy"  # a directory named .npy cannot be read, even by root
    unreadable.mkdir(parents=True)
    fails_in_one_line(capsys, ["run", str(kws), "--inputs", str(unreadable.parent)], "cannot read it")
    assert not build_root.exists()


def test_labels_file_binary_missing_or_a_directory(kws, tmp_path, capsys):
    binary = tmp_path / "y_labels.csv"
    binary.write_bytes(bytes(range(256)))
    fails_in_one_line(capsys, ["run", str(kws), "--labels", str(binary)], "binary file")
    fails_in_one_line(capsys, ["run", str(kws), "--labels", str(tmp_path / "none.csv")], "no such file")
    fails_in_one_line(capsys, ["run", str(kws), "--labels", str(tmp_path)], "is a directory")


def test_labels_outside_the_models_classes(kws, tmp_path, capsys):
    (tmp_path / "s.bin").write_bytes(bytes(490))
    for label in (12, -1):
        (tmp_path / "y.csv").write_text(f"s.bin, 12, {label}\n")
        fails_in_one_line(capsys, ["run", str(kws), "--labels", str(tmp_path / "y.csv")],
                          f"label {label}", "12 classes")


@pytest.mark.parametrize("argv, expected", [
    (["--limit", "-1", "--inputs", "IN"], "--limit -1"),
    (["--limit", "0", "--inputs", "IN"], "--limit 0"),
    (["--random", "0"], "--random 0"),
    (["--random", "-5"], "--random -5"),
    (["--random", "3", "--limit", "2"], "--limit applies to --inputs or --labels"),
    (["--seed", "-1"], "--seed -1"),
])
def test_bad_numbers_are_refused_not_bent(kws, tmp_path, capsys, argv, expected):
    np.save(tmp_path / "in.npy", np.zeros((3, 49, 10, 1), np.int8))
    argv = [str(tmp_path / "in.npy") if a == "IN" else a for a in argv]
    fails_in_one_line(capsys, ["run", str(kws), *argv], expected)


def test_bench_refuses_bad_numbers_too(kws, capsys):
    fails_in_one_line(capsys, ["bench", str(kws), "--random", "0"], "--random 0")


@pytest.mark.parametrize("command", ["run", "bench"])
def test_json_path_that_cannot_be_written_is_refused_before_the_run(kws, tmp_path, capsys, build_root, command):
    fails_in_one_line(capsys, [command, str(kws), "--json", str(tmp_path / "no" / "such" / "dir.json")],
                      "cannot write it")
    fails_in_one_line(capsys, [command, str(kws), "--json", str(tmp_path)], "is a directory")
    assert not build_root.exists()  # nothing was built for a result that could not be written


def test_read_only_build_directory(kws, tmp_path, capsys, monkeypatch):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.access(readonly, os.W_OK):  # root ignores permissions: use a read-only file system
        readonly = Path("/sys/microtile-build")
    monkeypatch.setattr(build, "BUILD_ROOT", readonly / "firmware")
    fails_in_one_line(capsys, ["run", str(kws)], "cannot write the build directory", "MICROTILE_BUILD_DIR")


def test_directory_as_model(tmp_path, capsys):
    fails_in_one_line(capsys, ["run", str(tmp_path)], "is a directory")
    fails_in_one_line(capsys, ["bench", str(tmp_path)], "is a directory")


def test_mistyped_board_suggests_the_closest_names(kws, capsys):
    line = fails_in_one_line(capsys, ["run", str(kws), "--board", "nucleo_f446"], "did you mean nucleo_f446re")
    assert "available boards" in line
    fails_in_one_line(capsys, ["run", str(kws), "--board", "qmeu"], "did you mean qemu")


def test_missing_qemu_exits_2_with_the_install_hint_before_building(kws, tmp_path, capsys, monkeypatch, build_root):
    """The compiler, CMake and Ninja are there, QEMU is not: refuse before the build."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("arm-none-eabi-gcc", "cmake", "ninja"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    fails_in_one_line(capsys, ["run", str(kws), "--random", "1"],
                      "qemu-system-arm not found", "apt-get install qemu-system-arm")
    assert not build_root.exists()


def test_version_names_microtile_gcc_and_qemu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    from microtile import __version__

    assert out.startswith(f"microtile {__version__} (commit ")
    lines = out.splitlines()
    assert lines[1].startswith("arm-none-eabi-gcc: ") and lines[2].startswith("qemu-system-arm: ")
    if shutil.which("qemu-system-arm"):
        assert "QEMU emulator version" in lines[2]
