"""What made a result: microtile's version and git commit, the compiler and emulator
versions, and a UTC timestamp, recorded in every JSON result and printed by
``microtile --version``."""
from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from microtile import __version__
from microtile.paths import REPO_ROOT



def _first_line(cmd: list[str]) -> str | None:
    """First line of a tool's output, or None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.strip().splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else None


@functools.lru_cache(maxsize=None)
def git_commit() -> str | None:
    """HEAD of the checkout microtile runs from (with "-dirty" for local changes);
    None outside a git checkout (an installed package)."""
    if not (REPO_ROOT / ".git").exists():
        return None
    commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"])
    if commit is None:
        return None
    dirty = _first_line(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"])
    return commit + ("-dirty" if dirty else "")


@functools.lru_cache(maxsize=None)
def gcc_version() -> str | None:
    return _first_line(["arm-none-eabi-gcc", "--version"])


@functools.lru_cache(maxsize=None)
def qemu_version() -> str | None:
    return _first_line(["qemu-system-arm", "--version"])


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tool_versions() -> dict:
    return {"microtile": __version__, "git_commit": git_commit(), "arm_none_eabi_gcc": gcc_version(),
            "qemu": qemu_version()}


def provenance(*, board: str, build_id: str | None, model_sha256: str, seed: int | None,
               kernels: str) -> dict:
    """The "provenance" object of a JSON result."""
    return {**tool_versions(), "board": board, "build_id": build_id, "model_sha256": model_sha256,
            "seed": seed, "kernels": kernels,
            "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def version_text() -> str:
    """`microtile --version`."""
    v = tool_versions()
    return (f"microtile {v['microtile']} (commit {v['git_commit'] or 'unknown: not a git checkout'})\n"
            f"arm-none-eabi-gcc: {v['arm_none_eabi_gcc'] or 'not found'}\n"
            f"qemu-system-arm: {v['qemu'] or 'not found'}")
