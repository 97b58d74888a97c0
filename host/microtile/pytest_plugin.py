"""pytest plugin (registered through the pytest11 entry point).

    pytest                                   # device tests run on QEMU (the default --board qemu)
    pytest --board nucleo                    # the single Nucleo attached over ST-LINK USB
    pytest --board nucleo_f446re [--probe UID] [--port /dev/ttyACM1] [--baud 115200]
    pytest --board nucleo_f446re --emulate   # that board's image on its emulator (QEMU)

Device tests (those using the ``board`` / ``run_on_board`` fixtures) run on the selected
target. On a board, each firmware build is flashed once: the target asks the board for
the build id it runs (INFO) and flashes only a different one, so tests sharing a model
share the flash. Without an attached board, ``--board nucleo...`` skips every device test
with a message saying what is needed (exit status 0). Tests marked ``hardware`` need a
real board and skip otherwise.

``--port``/``--baud`` are pytest-embedded's options when it is installed: here they
override the discovered VCP and the board's baud rate.

Fixtures: ``board`` (the Board), ``attached_probe`` (the AttachedProbe in use, or None on
QEMU), ``run_on_board`` (runs a .tflite on the selected target and returns a RunResult),
``target_args`` (the same target as ``microtile run`` arguments), ``shared_dir`` (the
MLPerf Tiny data beside the repo, or a skip).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

SHARED_ENV = "MICROTILE_SHARED"
NEEDS_BOARD = ("needs a Nucleo board attached over its ST-LINK USB connector (pytest --board nucleo "
               "or --board nucleo_<name> [--probe UID]; `microtile probes` lists what is attached)")

_selection_key = pytest.StashKey[tuple[Any, Any, str | None]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("microtile")
    group.addoption("--board", default="qemu",
                    help="target for device tests: qemu (default), nucleo (the attached Nucleo), or a board "
                    "from `microtile boards`")
    group.addoption("--probe", default=None, help="debug probe unique id when several boards are attached")
    group.addoption("--emulate", action="store_true", default=False,
                    help="run the --board's image on its emulator (QEMU) instead of the real board")


def _option(config: pytest.Config, name: str) -> Any:
    try:
        return config.getoption(name)
    except ValueError:  # pytest-embedded not installed: no --port/--baud
        return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hardware: needs a real board (pytest --board nucleo...)")
    config.addinivalue_line("markers", "qemu: runs firmware on qemu-system-arm")
    config.addinivalue_line("markers", "shared: needs the MLPerf Tiny data in ../shared")


def _wants_hardware(config: pytest.Config) -> bool:
    from .boards import load_board
    from .discovery import GENERIC_BOARD, is_probe_board
    from .errors import MicrotileError

    name = config.getoption("--board")
    if config.getoption("--emulate"):
        return False
    if name == GENERIC_BOARD:
        return True
    try:
        return is_probe_board(load_board(name))
    except MicrotileError:
        return False  # reported by the board fixture


def select_target(config: pytest.Config) -> tuple[Any, Any, str | None]:
    """(Board, AttachedProbe or None, reason to skip or None), once per session."""
    if _selection_key in config.stash:
        return config.stash[_selection_key]
    from .boards import load_board
    from .discovery import AmbiguousProbeError, ProbeNotFoundError, resolve_board
    from .errors import MicrotileError

    name = config.getoption("--board")
    probe = config.getoption("--probe")
    selection: tuple[Any, Any, str | None]
    try:
        if _wants_hardware(config):
            resolved, device = resolve_board(name, probe)
            selection = (load_board(resolved), device, None)
        else:
            selection = (load_board(name), None, None)
    except AmbiguousProbeError as exc:  # the user must choose: not a skip
        pytest.exit(f"--board {name}: {exc}", returncode=4)
    except ProbeNotFoundError as exc:
        selection = (None, None, f"{NEEDS_BOARD}: {exc}")
    except MicrotileError as exc:  # unknown board, udev permissions, ...: a usage error
        pytest.exit(f"--board {name}: {exc}", returncode=4)
    config.stash[_selection_key] = selection
    return selection


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    hardware_items = [item for item in items if "hardware" in item.keywords]
    if not hardware_items:
        return
    if _wants_hardware(config):
        _, _, reason = select_target(config)
        if reason is None:
            return
    else:
        reason = f"{NEEDS_BOARD} (selected target: {config.getoption('--board')})"
    for item in hardware_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def board(pytestconfig: pytest.Config):
    selected, _, reason = select_target(pytestconfig)
    if reason is not None:
        pytest.skip(reason)
    return selected


@pytest.fixture(scope="session")
def attached_probe(board, pytestconfig: pytest.Config):
    """The AttachedProbe the device tests use (None when they run on an emulator)."""
    return select_target(pytestconfig)[1]


@pytest.fixture(scope="session")
def run_on_board(board, attached_probe, pytestconfig: pytest.Config):
    """Run a model on the selected target: ``run_on_board(path, random=3)`` -> RunResult."""
    from .runner import run_model

    probe = attached_probe.unique_id if attached_probe is not None else pytestconfig.getoption("--probe")

    baud = _option(pytestconfig, "baud")
    options = {"emulate": bool(pytestconfig.getoption("--emulate")), "port": _option(pytestconfig, "port"),
               "baudrate": int(baud) if baud else None}

    def run(model_path, **kwargs):
        return run_model(model_path, board.name, probe=probe, target_options=options, **kwargs)

    return run


@pytest.fixture(scope="session")
def target_args(board, attached_probe, pytestconfig: pytest.Config) -> list[str]:
    """``microtile run`` arguments selecting the same target as the device tests
    (``--board NAME`` plus ``--probe UID`` on a board, ``--emulate`` under --emulate)."""
    args = ["--board", board.name]
    if attached_probe is not None:
        args += ["--probe", attached_probe.unique_id]
    elif pytestconfig.getoption("--emulate"):
        args.append("--emulate")
    port, baud = _option(pytestconfig, "port"), _option(pytestconfig, "baud")
    if attached_probe is not None and port:
        args += ["--port", str(port)]
    if attached_probe is not None and baud:
        args += ["--baud", str(baud)]
    return args


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
