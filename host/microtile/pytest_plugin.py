"""pytest plugin (registered through the pytest11 entry point).

    pytest                                   # device tests run on QEMU (the default --board qemu)
    pytest --board nucleo                    # the single Nucleo attached over ST-LINK USB
    pytest --board nucleo_f446re [--probe UID] [--port /dev/ttyACM1] [--baud 115200]
    pytest --board nucleo_f446re --emulate   # that board's image on its emulator (QEMU)

Device tests (those using the ``board`` / ``run_on_board`` fixtures) run on the selected
target, and the board's name is part of their test id (``test_x[nucleo_f446re-op_add]``).
On a board, each firmware build is flashed once: the target asks the board for the build
id it runs (INFO) and flashes only a different one, so tests sharing a model share the
flash. Asking for a board (``--board nucleo...``) that is not attached fails every device
test with a message saying what is needed (as twister's device testing does), so a CI
runner whose board fell off USB does not pass; ``--allow-no-board`` skips them instead.
Tests marked ``hardware`` need a real board; on an emulator they skip.

Each ``run_on_board`` run records its figures as JUnit properties (``pytest
--junitxml``): board, model, kernels, samples, mismatches, counter_unit, the total count
under the unit's name (``cycles`` or ``instructions``; none without a counter), top1 (with
labels), ram_bytes, rom_bytes, and error when the run failed.

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
from microtile.paths import REPO_ROOT

SHARED_ENV = "MICROTILE_SHARED"
NEEDS_BOARD = ("needs a Nucleo board attached over its ST-LINK USB connector (pytest --board nucleo "
               "or --board nucleo_<name> [--probe UID]; `microtile probes` lists what is attached)")
NO_BOARD_HINT = "pass --allow-no-board to skip the device tests instead of failing them"
# pytest-embedded records an XML attribute on every test (an experimental pytest API), and
# run_on_board properties, which pytest's default junit_family xunit2 flags with one
# warning per test although it writes the properties all the same: warnings about the
# report, not about the test.
REPORT_WARNINGS = (
    "ignore:record_(xml_attribute|property) is incompatible with junit_family:pytest.PytestWarning",
    "ignore:record_xml_attribute is an experimental feature:pytest.PytestExperimentalApiWarning",
)

_selection_key = pytest.StashKey[tuple[Any, Any, str | None]]()
_farm_key = pytest.StashKey[Any]()  # this process's board lock (farm.ProbeLock) or labgrid place
_busy_key = pytest.StashKey[str]()  # the board kind an xdist worker found no free board of


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("microtile")
    group.addoption("--board", default="qemu",
                    help="target for device tests: qemu (default), nucleo (the attached Nucleo), or a board "
                    "from `microtile boards`")
    group.addoption("--probe", default=None, help="debug probe unique id when several boards are attached")
    group.addoption("--power", default=None, metavar="PROBE:PORT",
                    help="measure energy in run_on_board runs: ppk2:/dev/ttyACM2, joulescope[:SERIAL], "
                         "lpm01a:PORT or stlinkv3pwr:PORT (README, Energy)")
    group.addoption("--emulate", action="store_true", default=False,
                    help="run the --board's image on its emulator (QEMU) instead of the real board")
    group.addoption("--labgrid", default=os.environ.get("LG_PLACE"), metavar="PLACE",
                    help="acquire this labgrid place for the session and use its ST-LINK and VCP "
                    "(default: $LG_PLACE)")
    group.addoption("--allow-no-board", action="store_true", default=False,
                    help="with --board nucleo...: skip the device tests when no board is attached "
                    "(default: they fail, so a missing board never passes)")


def _option(config: pytest.Config, name: str) -> Any:
    try:
        return config.getoption(name)
    except ValueError:  # pytest-embedded not installed: no --port/--baud
        return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hardware: needs a real board (pytest --board nucleo...)")
    config.addinivalue_line("markers", "qemu: runs firmware on qemu-system-arm")
    config.addinivalue_line("markers", "shared: needs the MLPerf Tiny data in ../shared")
    for line in REPORT_WARNINGS:
        config.addinivalue_line("filterwarnings", line)


def _wants_hardware(config: pytest.Config) -> bool:
    from microtile.targets.boards import load_board
    from microtile.targets.discovery import GENERIC_BOARD, is_probe_board
    from microtile.errors import MicrotileError

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
    from microtile.targets.boards import load_board
    from microtile.targets.discovery import AmbiguousProbeError, ProbeNotFoundError, resolve_board
    from microtile.errors import MicrotileError

    name = config.getoption("--board")
    probe = config.getoption("--probe")
    selection: tuple[Any, Any, str | None]
    try:
        if _wants_hardware(config):
            resolved, device = _farm_board(config, name, probe)
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


def _farm_board(config: pytest.Config, name: str, probe: str | None):
    """The board of this process: a labgrid place's ST-LINK when --labgrid is given; under
    pytest-xdist one board per worker, locked (targets/farm.py); else the one attached."""
    from microtile.targets.discovery import resolve_board
    from microtile.targets.farm import BoardBusyError, ProbeLock, claim_board, worker_index

    place = config.stash.get(_farm_key, None)
    if place is not None and probe is None:
        probe = place.target()["probe"]
    worker = worker_index()
    if worker is None:
        resolved, device = resolve_board(name, probe)
        if device is not None:  # locked too, so a lab run or another session keeps off it
            lock = ProbeLock(device.unique_id)
            if not lock.acquire():
                raise BoardBusyError(f"probe {device.unique_id} is in use by another run ({lock.holder()}); "
                                     "wait for it, or choose another board with --probe", board=resolved)
            config.stash[_farm_key] = lock
            config.add_cleanup(lock.release)
        return resolved, device
    try:
        device, lock = claim_board(name, probe, worker)
    except BoardBusyError as exc:  # keep the test ids of the workers that have a board
        config.stash[_busy_key] = exc.board
        raise
    config.stash[_farm_key] = lock  # held until the worker ends
    config.add_cleanup(lock.release)
    return device.board, device


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` with --board nucleo...: one worker per attached board of that kind."""
    if not _wants_hardware(config) or config.getoption("--labgrid"):
        return 1 if config.getoption("--labgrid") and _wants_hardware(config) else None
    from microtile.targets.farm import farm_boards

    return max(1, len(farm_boards(config.getoption("--board"), config.getoption("--probe"))))


@pytest.hookimpl(tryfirst=True)  # before the report header asks for the board
def pytest_sessionstart(session: pytest.Session) -> None:
    """--labgrid PLACE: the controller acquires the place (released when pytest ends);
    xdist workers read its resources."""
    name = session.config.getoption("--labgrid")
    if not name or not _wants_hardware(session.config):
        return
    from microtile.errors import MicrotileError
    from microtile.targets.farm import worker_index
    from microtile.targets.labgrid_place import LabgridPlace

    place = LabgridPlace(name)
    try:
        place.inspect() if worker_index() is not None else place.acquire()
    except MicrotileError as exc:
        pytest.exit(f"--labgrid {name}: {exc}", returncode=4)
    session.config.stash[_farm_key] = place
    # released at the very end, also when the session stops before it starts (pytest.exit)
    session.config.add_cleanup(place.release)


def board_id(config: pytest.Config) -> str:
    """The board's name as it appears in test ids: the board found (``--board nucleo`` ->
    nucleo_f446re), else what --board says."""
    selected, _, _ = select_target(config)
    if selected is None and _busy_key in config.stash:
        return config.stash[_busy_key]
    return selected.name if selected is not None else str(config.getoption("--board"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test using the ``board`` fixture (directly or through run_on_board) gets the
    board in its id, so JUnit reports from several boards stay apart."""
    if "board" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        if "board" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)):
            return  # the test parametrizes a "board" argument of its own
    name = board_id(metafunc.config)
    metafunc.parametrize("board", [name], ids=[name], indirect=True, scope="session")


def pytest_report_header(config: pytest.Config) -> str | None:
    if not _wants_hardware(config):
        return None
    selected, device, reason = select_target(config)
    if reason is None:
        return f"microtile: board {selected.name}, probe {device.unique_id}, VCP {device.port}"
    what = "skipped (--allow-no-board)" if config.getoption("--allow-no-board") else "FAIL"
    return f"microtile: --board {config.getoption('--board')}: no board attached; device tests {what}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    hardware_items = [item for item in items if "hardware" in item.keywords]
    if not hardware_items:
        return
    if _wants_hardware(config):
        _, _, reason = select_target(config)
        if reason is None or not config.getoption("--allow-no-board"):
            return  # a missing board fails them through the board fixture
    else:
        reason = f"{NEEDS_BOARD} (selected target: {config.getoption('--board')})"
    for item in hardware_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def board(pytestconfig: pytest.Config):
    """The Board the device tests run on (--board); a requested board that is not attached
    fails the test, or skips it under --allow-no-board."""
    selected, _, reason = select_target(pytestconfig)
    if reason is not None:
        if pytestconfig.getoption("--allow-no-board"):
            pytest.skip(reason)
        pytest.fail(f"{reason}; {NO_BOARD_HINT}", pytrace=False)
    return selected


@pytest.fixture(scope="session")
def attached_probe(board, pytestconfig: pytest.Config):
    """The AttachedProbe the device tests use (None when they run on an emulator)."""
    return select_target(pytestconfig)[1]


def result_properties(result: Any) -> list[tuple[str, Any]]:
    """A RunResult's figures as JUnit properties (name, value), from its JSON form."""
    data = result.to_json()
    unit = data["counter_unit"]
    props = [(key, data[key]) for key in ("board", "model", "kernels", "samples", "mismatches", "counter_unit")]
    count = data["total"].get(unit)
    if unit in ("cycles", "instructions") and count is not None and data["samples"]:
        props.append((unit, count))
    if data.get("top1") is not None:
        props.append(("top1", data["top1"]))
    props += [("ram_bytes", data["ram"]["total_bytes"]), ("rom_bytes", data["rom"]["total_bytes"])]
    if (data.get("energy") or {}).get("per_inference"):
        props.append(("energy_uj", data["energy"]["per_inference"]["median_uj"]))
    if data["total"].get("est_energy_uj") is not None:
        props.append(("est_energy_uj", data["total"]["est_energy_uj"]))
    if data.get("error"):
        props.append(("error", data["error"]))
    return props


@pytest.fixture
def run_on_board(board, attached_probe, pytestconfig: pytest.Config, record_property):
    """Run a model on the selected target: ``run_on_board(path, random=3, kernels=..., labels=...,
    limit=...)`` takes ``microtile run``'s options and returns a RunResult; its figures go
    into the JUnit report as properties (``result_properties``)."""
    from microtile.measure.runner import run_model

    probe = attached_probe.unique_id if attached_probe is not None else pytestconfig.getoption("--probe")

    baud = _option(pytestconfig, "baud")
    options = {"emulate": bool(pytestconfig.getoption("--emulate")), "port": _option(pytestconfig, "port"),
               "baudrate": int(baud) if baud else None}

    def run(model_path, **kwargs):
        kwargs.setdefault("power", pytestconfig.getoption("--power"))
        result = run_model(model_path, board.name, probe=probe, target_options=options, **kwargs)
        for name, value in result_properties(result):
            record_property(name, value)
        return result

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
    candidates.append(REPO_ROOT.parent / "shared")
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
