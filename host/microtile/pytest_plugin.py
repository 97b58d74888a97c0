"""pytest plugin (registered through the pytest11 entry point).

    pytest                      # device tests run on QEMU (the default --board qemu)
    pytest --board nucleo_f446re [--probe UID]

Tests marked ``hardware`` need a real board; without one they skip with a message
saying what they would need. Fixtures: ``board`` (the Board), ``run_on_board`` (runs a
.tflite on the selected target and returns a RunResult), ``shared_dir`` (the
MLPerf Tiny data beside the repo, or a skip).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_ENV = "MICROTILE_SHARED"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("microtile")
    group.addoption("--board", default="qemu",
                    help="target for device tests: qemu (default) or a board from `microtile boards`")
    group.addoption("--probe", default=None, help="debug probe unique id when several boards are attached")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hardware: needs a real board (pytest --board nucleo...)")
    config.addinivalue_line("markers", "qemu: runs firmware on qemu-system-arm")
    config.addinivalue_line("markers", "shared: needs the MLPerf Tiny data in ../shared")


def _is_hardware(name: str) -> bool:
    return name.startswith("nucleo")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    name = config.getoption("--board")
    if _is_hardware(name):
        return
    skip = pytest.mark.skip(
        reason=f"needs a Nucleo board: run with --board nucleo_<name> and a board attached over ST-LINK "
        f"(selected target: {name})"
    )
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def board(pytestconfig: pytest.Config):
    from .boards import load_board
    from .errors import MicrotileError

    name = pytestconfig.getoption("--board")
    try:
        selected = load_board(name)
    except MicrotileError as exc:
        pytest.exit(f"--board {name}: {exc}", returncode=4)
    if not selected.is_emulated:
        pytest.skip(f"--board {name}: running on a real board needs pyOCD flashing, which this version "
                    "does not provide yet; use --board qemu")
    return selected


@pytest.fixture(scope="session")
def run_on_board(board, pytestconfig: pytest.Config):
    """Run a model on the selected target: ``run_on_board(path, random=3)`` -> RunResult."""
    from .runner import run_model

    def run(model_path, **kwargs):
        return run_model(model_path, board.name, probe=pytestconfig.getoption("--probe"), **kwargs)

    return run


def find_shared() -> Path | None:
    """The shared MLPerf Tiny data: $MICROTILE_SHARED, else ../shared beside the repo."""
    env = os.environ.get(SHARED_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared")
    for path in candidates:
        if (path / "models").is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = find_shared()
    if path is None:
        pytest.skip(f"MLPerf Tiny data not found: put it at ../shared beside the repo or set {SHARED_ENV}")
    return path
