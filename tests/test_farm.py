"""Several boards on one host (targets/farm.py): a board is locked by one user at a time,
pytest-xdist workers each get their own board, and the lab spreads cells over the boards.

No board is attached here: the USB layer (pyOCD's probe list) is replaced by
AttachedProbe records, as tests/test_discovery.py does; the locks, the xdist session and
the lab's threads are the real ones."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from microtile.errors import MicrotileError
from microtile.targets.discovery import AttachedProbe
from microtile.targets.farm import BoardBusyError, ProbeLock, claim_board, farm_boards, worker_index

pytest_plugins = ["pytester"]


def probe(uid: str, board: str | None = "nucleo_f446re") -> AttachedProbe:
    name = "NUCLEO-F446RE" if board else None
    return AttachedProbe(uid, "STM32 STLink", "STMicroelectronics", "STM32 STLink", name, None, f"/dev/tty{uid}", board)


TWO_BOARDS = [probe("0671FF48B"), probe("0671FF48A"), probe("066DFF11", None)]


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROTILE_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "locks"


def test_a_probe_lock_is_exclusive_across_processes_and_dies_with_its_holder():
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from microtile.targets.farm import ProbeLock\n"
                               "assert ProbeLock('0671FF48A').acquire()\nprint('held', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = ProbeLock("0671FF48A")
        assert not lock.acquire()
        with pytest.raises(BoardBusyError, match=rf"in use by another run \(pid {holder.pid}\)"):
            with ProbeLock("0671FF48A"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert lock.acquire()  # the kernel dropped the dead holder's lock
    lock.release()


def test_workers_claim_distinct_boards_and_the_extra_one_is_told_to_run_fewer():
    assert [a.unique_id for a in farm_boards("nucleo", attached=TWO_BOARDS)] == ["0671FF48A", "0671FF48B"]
    assert [a.unique_id for a in farm_boards("nucleo_f446re", probe="48b", attached=TWO_BOARDS)] == ["0671FF48B"]
    assert worker_index("gw3") == 3 and worker_index("main") is None
    first, lock0 = claim_board("nucleo", worker=0, attached=TWO_BOARDS)
    second, lock1 = claim_board("nucleo", worker=0, attached=TWO_BOARDS)  # board 0 is taken: the next one
    assert {first.unique_id, second.unique_id} == {"0671FF48A", "0671FF48B"}
    with pytest.raises(BoardBusyError, match=r"all 2 attached nucleo board\(s\) are in use.*pytest -n 2"):
        claim_board("nucleo", worker=2, attached=TWO_BOARDS)
    lock0.release()
    again, lock2 = claim_board("nucleo", worker=5, attached=TWO_BOARDS)
    assert again.unique_id == first.unique_id
    for lk in (lock1, lock2):
        lk.release()
    with pytest.raises(MicrotileError, match="no attached board matches --board nucleo_f429zi"):
        claim_board("nucleo_f429zi", attached=TWO_BOARDS)


FARM_CONFTEST = """
import microtile.targets.farm as farm
from microtile.targets.discovery import AttachedProbe

def _attached():
    return [AttachedProbe(uid, "STM32 STLink", "STMicroelectronics", "STM32 STLink", "NUCLEO-F446RE", None,
                          "/dev/tty" + uid, "nucleo_f446re") for uid in ("BOARD_A", "BOARD_B")]

farm.list_attached = _attached  # the USB layer: two boards "attached"
"""

FARM_TESTS = """
import os, pathlib, time
import pytest

@pytest.mark.parametrize("k", range(6))
def test_device(board, attached_probe, k):
    time.sleep(0.05)
    with open(os.environ["FARM_LOG"], "a") as f:
        f.write(f"{os.environ['PYTEST_XDIST_WORKER']} {attached_probe.unique_id} {board.name}\\n")
"""


def test_xdist_workers_each_get_their_own_board(pytester, tmp_path, monkeypatch):
    """`pytest --board nucleo -n 3` over two attached boards: each worker that has a board
    keeps it for all its tests, never two workers on one board, and the third worker's
    device tests fail saying there is no free board and how many workers to run."""
    log = tmp_path / "farm.log"
    monkeypatch.setenv("FARM_LOG", str(log))
    pytester.makeconftest(FARM_CONFTEST)
    pytester.makepyfile(test_farm_inner=FARM_TESTS)
    result = pytester.runpytest_subprocess("--board", "nucleo", "-n", "3", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) >= 1 and outcomes.get("passed", 0) >= 1, outcomes
    result.stdout.fnmatch_lines(["*all 2 attached nucleo board(s) are in use*pytest -n 2*"])
    by_worker = {}
    for worker, uid, board in (line.split() for line in log.read_text().splitlines()):
        assert board == "nucleo_f446re"
        by_worker.setdefault(worker, set()).add(uid)
    assert all(len(uids) == 1 for uids in by_worker.values()), by_worker  # a worker keeps its board
    owners = [next(iter(u)) for u in by_worker.values()]
    assert len(owners) == len(set(owners))  # never two workers on one board


def test_xdist_auto_runs_one_worker_per_attached_board(monkeypatch):
    import microtile.targets.farm as farm
    from microtile.pytest_plugin import pytest_xdist_auto_num_workers

    class Config:  # the options pytest would parse from `--board nucleo -n auto`
        stash: dict = {}

        def getoption(self, name):
            return {"--board": "nucleo", "--probe": None, "--emulate": False, "--labgrid": None}[name]

    monkeypatch.setattr(farm, "list_attached", lambda: TWO_BOARDS)
    assert pytest_xdist_auto_num_workers(Config()) == 2


def test_lab_spreads_cells_over_the_attached_boards(tmp_path):
    """The lab's board threads: each of the two boards takes cells, no board runs two at
    once, every cell runs once and a failing cell is recorded with its error."""
    from microtile.measure.lab import PlainProgress, load_plan, run_lab

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.tflite").write_bytes(b"not run")
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text("models: [a.tflite, b.tflite, c.tflite]\nboards: [nucleo_f446re]\n"
                         "kernels: [reference, optimized]\ninputs: {random: 1}\n")
    plan = load_plan(plan_path)
    busy: set[str] = set()
    ran: list[tuple[str, str]] = []
    guard = threading.Lock()

    def run(model, board, probe=None, **kwargs):
        with guard:
            assert probe not in busy, f"two cells at once on {probe}"
            busy.add(probe)
        time.sleep(0.1)
        with guard:
            busy.discard(probe)
            ran.append((Path(model).name, probe))
        raise MicrotileError(f"no firmware here ({probe})")

    spec = plan.boards[0]
    out = run_lab(plan, tmp_path / "out", PlainProgress(6, open("/dev/null", "w")), run=run,
                  slots={spec: ["BOARD_A", "BOARD_B"]})
    assert len(ran) == 6 == len(outcome_records := outcome_records_of(out))
    assert {p for _, p in ran} == {"BOARD_A", "BOARD_B"}
    assert all(r["status"] == "failed" and r["exit_code"] == 2 and r["probe"] in r["error"] for r in outcome_records)
    assert out.exit_code == 2


def outcome_records_of(outcome):
    return outcome.records


def test_a_session_without_xdist_locks_its_board_too(pytester, lock_dir):
    """`pytest --board nucleo` (no -n) on a board another run holds: its device tests fail
    saying which process holds it."""
    pytester.makeconftest(FARM_CONFTEST.replace('("BOARD_A", "BOARD_B")', '("BOARD_A",)')
                          + "import microtile.targets.discovery as discovery\ndiscovery.list_attached = _attached\n")
    pytester.makepyfile(test_inner="def test_device(board):\n    assert board\n")
    with ProbeLock("BOARD_A"):
        result = pytester.runpytest_subprocess("--board", "nucleo", "-p", "no:cacheprovider")
    assert result.parseoutcomes().get("errors") == 1
    result.stdout.fnmatch_lines(["*probe BOARD_A is in use by another run (pid *)*"])
    result = pytester.runpytest_subprocess("--board", "nucleo", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
