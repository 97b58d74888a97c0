"""Several boards on one host: each user of a board (a pytest-xdist worker, a lab slot)
holds an exclusive lock on its probe, so two of them never drive the same board.

    boards = farm_boards("nucleo")            # every attached Nucleo, by unique id
    with ProbeLock(boards[0].unique_id):      # raises BoardBusyError if another holds it
        ...

The lock is an ``flock`` on a file named after the probe's unique id in ``lock_dir()``
($MICROTILE_LOCK_DIR, default /tmp/microtile-probes): the kernel drops it when its
holder dies, so a killed worker never leaves a board locked.
"""
from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Sequence
from pathlib import Path

from microtile.targets.boards import load_board
from microtile.targets.discovery import GENERIC_BOARD, AttachedProbe, ProbeNotFoundError, list_attached

LOCK_DIR_ENV = "MICROTILE_LOCK_DIR"


class BoardBusyError(ProbeNotFoundError):
    """Every matching board is held by another worker or run."""

    def __init__(self, message: str, board: str | None = None):
        super().__init__(message)
        self.board = board  # the kind of board that is busy (nucleo_f446re)


def lock_dir() -> Path:
    path = Path(os.environ.get(LOCK_DIR_ENV) or "/tmp/microtile-probes")
    path.mkdir(parents=True, exist_ok=True)
    return path


class ProbeLock:
    """Exclusive, non-blocking lock on one probe for as long as it is held."""

    def __init__(self, unique_id: str):
        self.unique_id = unique_id
        self.path = lock_dir() / (re.sub(r"[^A-Za-z0-9_.-]", "_", unique_id) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True when this process now holds the board; False when another does."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ProbeLock":
        if not self.acquire():
            raise BoardBusyError(f"probe {self.unique_id} is in use by another run ({self.holder()}); "
                                 "wait for it, or choose another board with --probe")
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid else "unknown process"


def farm_boards(board: str, probe: str | None = None,
                attached: Sequence[AttachedProbe] | None = None) -> list[AttachedProbe]:
    """The attached probes a --board value can run on, sorted by unique id: "nucleo" =
    every probe on a known board; a board name = the probes on that board; --probe
    narrows to the ids containing it."""
    attached = list_attached() if attached is None else list(attached)
    if board == GENERIC_BOARD:
        found = [a for a in attached if a.board is not None]
    else:
        name = load_board(board).name
        found = [a for a in attached if a.board == name]
    if probe:
        found = [a for a in found if probe.lower() in a.unique_id.lower()]
    return sorted(found, key=lambda a: a.unique_id)


def worker_index(worker: str | None = None) -> int | None:
    """pytest-xdist's worker number (PYTEST_XDIST_WORKER=gw3 -> 3), None outside xdist."""
    worker = worker if worker is not None else os.environ.get("PYTEST_XDIST_WORKER")
    m = re.fullmatch(r"gw(\d+)", worker or "")
    return int(m.group(1)) if m else None


def claim_board(board: str, probe: str | None = None, worker: int = 0,
                attached: Sequence[AttachedProbe] | None = None) -> tuple[AttachedProbe, ProbeLock]:
    """Lock one free board for this worker: worker N tries board N first (so the
    assignment is stable across runs), then the others in turn. The lock stays held
    until released (or the process ends)."""
    boards = farm_boards(board, probe, attached)
    if not boards:
        raise ProbeNotFoundError(f"no attached board matches --board {board}"
                                 + (f" --probe {probe}" if probe else "") + "; `microtile probes` lists them")
    for k in range(len(boards)):
        chosen = boards[(worker + k) % len(boards)]
        lock = ProbeLock(chosen.unique_id)
        if lock.acquire():
            return chosen, lock
    raise BoardBusyError(f"all {len(boards)} attached {board} board(s) are in use by other workers or runs "
                         f"({', '.join(b.unique_id for b in boards)}); run fewer workers (pytest -n {len(boards)})",
                         board=boards[0].board)
