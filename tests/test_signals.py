"""SIGTERM and SIGHUP (and so `timeout N microtile run ...`) end a run like Ctrl-C:
QEMU's process group is stopped, what was measured is written, exit 128+signal."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microtile_models.build import zoo_model_bytes

pytestmark = pytest.mark.qemu


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            out.append((int(entry.name), name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_qemu_writes_json_and_exits_128_plus_n(tmp_path, signum):
    model = tmp_path / "add.tflite"
    model.write_bytes(zoo_model_bytes("op_add"))
    out = tmp_path / "run.json"
    proc = subprocess.Popen([sys.executable, "-m", "microtile.cli", "run", str(model), "--random", "5000",
                             "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    qemu_pid = None
    try:
        deadline = time.monotonic() + 120  # includes a firmware build on a cold cache
        while qemu_pid is None and time.monotonic() < deadline and proc.poll() is None:
            qemu_pid = next((p for p, name in _children(proc.pid) if name.startswith("qemu-system")), None)
            time.sleep(0.1)
        assert qemu_pid is not None, "QEMU never started"
        time.sleep(3)  # let some samples through
        proc.send_signal(signum)
        stdout, _ = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signum, stdout
        assert "Traceback" not in stdout
        deadline = time.monotonic() + 5
        while _alive(qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(qemu_pid), "QEMU was left running"
        data = json.loads(out.read_text())
        name = signal.Signals(signum).name
        assert 0 < data["samples"] < 5000 and data["verdict"] == "failed"
        assert data["error"].startswith(f"interrupted ({name}) after {data['samples']} of 5000")
        assert data["exit_code"] == 128 + signum and data["layers"][0]["instructions"] > 0
        assert "FAILED" in stdout and "bit-exact" not in stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if qemu_pid is not None and _alive(qemu_pid):
            os.kill(qemu_pid, signal.SIGKILL)  # the QEMU this test started, left by a failure


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes() and _alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _compiling(build_dir: str) -> bool:
    """A compiler of the firmware build is running (below CMake and Ninja)."""
    for pid in _processes_mentioning(build_dir):
        try:
            if (Path(f"/proc/{pid}/comm").read_text().strip() in ("cc1", "arm-none-eabi-gcc", "as")):
                return True
        except OSError:
            continue
    return False


def test_sigterm_during_the_build_leaves_no_compiler_running_and_no_cache_entry(tmp_path):
    model = tmp_path / "add.tflite"
    model.write_bytes(zoo_model_bytes("op_add"))
    cache = tmp_path / "cache"
    env = {**os.environ, "MICROTILE_BUILD_DIR": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "microtile.cli", "run", str(model)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _compiling(str(cache)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None and _compiling(str(cache)), "the compilers never ran"
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
        assert proc.returncode == 143 and "interrupted (SIGTERM)" in stdout, stdout
        time.sleep(0.5)
        assert _processes_mentioning(str(cache)) == []  # no cmake, ninja or gcc left behind
        assert not (cache / "netduinoplus2").exists() or not any((cache / "netduinoplus2").iterdir())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _processes_mentioning(str(cache)):  # this test's own build, left by a failure
            os.kill(pid, signal.SIGKILL)
