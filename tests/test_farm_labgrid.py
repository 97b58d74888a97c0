"""labgrid integration (targets/labgrid_place.py) against labgrid's own coordinator and
exporter, started here on 127.0.0.1: the exporter exports a Nucleo place's ST-LINK
(USBDebugger), VCP and power probe (USBSerialPort) by udev match; no such USB device is
attached here, so the resources are exported as unavailable, which is what a lab sees
when a board is unplugged. Runs acquire the place, hold it against other users and
release it, also when they fail. Untested here: a place whose resources are available
(a real ST-LINK, so the probe id and VCP from it) and ser2net's rfc2217 port of a VCP
on another host."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microtile.paths import REPO_ROOT
from microtile_models.build import zoo_model_bytes

pytest_plugins = ["pytester"]

LABGRID_BIN = REPO_ROOT / ".venv-labgrid" / "bin"
EXPORTER_CONFIG = """
nucleo-1:
  stlink:
    cls: USBDebugger
    match: {ID_SERIAL_SHORT: "0671FF485051717867162144"}
  vcp:
    cls: USBSerialPort
    match: {ID_SERIAL_SHORT: "0671FF485051717867162144"}
  power:
    cls: USBSerialPort
    match: {ID_SERIAL_SHORT: "C5E5F0C0A1B2"}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LABGRID_BIN / "labgrid-client"), *args], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    if not (LABGRID_BIN / "labgrid-coordinator").is_file():
        pytest.skip(f"labgrid is not installed in {LABGRID_BIN.parent} (make setup makes it from "
                    "requirements-labgrid.txt)")
    work = tmp_path_factory.mktemp("labgrid")
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "LG_COORDINATOR": address, "LG_USERNAME": "alice",
           "MICROTILE_LABGRID_CLIENT": str(LABGRID_BIN / "labgrid-client")}
    procs = [subprocess.Popen([str(LABGRID_BIN / "labgrid-coordinator"), "-l", address], cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        (work / "exporter.yaml").write_text(EXPORTER_CONFIG)
        time.sleep(1.0)
        procs.append(subprocess.Popen([str(LABGRID_BIN / "labgrid-exporter"), "-c", address, "-n", "exp1",
                                       str(work / "exporter.yaml")], cwd=work,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30  # the coordinator may take a while to listen on a loaded machine
        while (created := client(env, "-p", "bench1", "create")).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert created.returncode == 0, created.stdout + created.stderr
        assert client(env, "-p", "bench1", "add-match", "exp1/nucleo-1/*").returncode == 0
        # `resources` lists only available ones: wait until an acquired place shows the three
        deadline = time.monotonic() + 30
        while True:
            setup = {**env, "LG_USERNAME": "setup"}
            if client(setup, "-p", "bench1", "acquire").returncode == 0:
                shown = client(setup, "-p", "bench1", "show").stdout
                client(setup, "-p", "bench1", "release")
                if shown.count("Acquired resource '") == 3:
                    break
            assert time.monotonic() < deadline, "the exporter did not register its resources with the coordinator"
            time.sleep(0.5)
        yield env, work
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def free_for(env: dict, user: str) -> bool:
    """Another user can acquire the place (and then releases it again)."""
    other = {**env, "LG_USERNAME": user}
    if client(other, "-p", "bench1", "acquire").returncode != 0:
        return False
    assert client(other, "-p", "bench1", "release").returncode == 0
    return True


def test_a_place_is_acquired_with_its_resources_held_and_released(coordinator):
    from microtile.targets.labgrid_place import LabgridPlace, PlaceError

    env, _ = coordinator
    with LabgridPlace("bench1", env=env) as place:
        assert set(place.resources) == {"stlink", "vcp", "power"}
        assert place.resources["stlink"]["cls"] == "NetworkUSBDebugger"
        assert place.resources["vcp"]["cls"] == "NetworkSerialPort"
        assert all(r["avail"] is False and r["acquired"] == "bench1" for r in place.resources.values())
        assert not free_for(env, "bob")
        with pytest.raises(PlaceError, match="cannot acquire it"):
            LabgridPlace("bench1", env={**env, "LG_USERNAME": "bob"}).acquire()
        with pytest.raises(PlaceError, match=r"its ST-LINK \(exp1/nucleo-1/NetworkUSBDebugger/stlink\) is not "
                                             "available at the exporter"):
            place.target()
    assert free_for(env, "bob")
    with pytest.raises(PlaceError, match="cannot acquire it"):
        LabgridPlace("no-such-place", env=env).acquire()


def test_lab_holds_the_place_around_its_run_and_releases_it_on_failure(coordinator, tmp_path):
    env, _ = coordinator
    (tmp_path / "a.tflite").write_bytes(zoo_model_bytes("op_fc_relu"))
    (tmp_path / "plan.yaml").write_text("models: [a.tflite]\nboards: [qemu]\nkernels: [optimized]\n"
                                        "inputs: {random: 1}\n")
    lab = [sys.executable, "-m", "microtile.cli", "lab", "plan.yaml", "--out", "out"]
    proc = subprocess.run([*lab, "--labgrid", "bench1"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["labgrid"]["place"] == "bench1" and set(report["labgrid"]["resources"]) == {"stlink", "vcp", "power"}
    assert free_for(env, "bob")  # released after the run
    # a board run on the place: its ST-LINK is unplugged -> one line, exit 2, place released
    (tmp_path / "plan.yaml").write_text("models: [a.tflite]\nboards: [nucleo_f446re]\n")
    proc = subprocess.run(lab, capture_output=True, text=True, env={**env, "LG_PLACE": "bench1"}, cwd=tmp_path,
                          timeout=120)
    text = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "not available at the exporter" in text and len(text.splitlines()) == 1, text
    assert free_for(env, "bob")


def test_pytest_labgrid_option_acquires_and_releases_the_place(coordinator, pytester):
    env, _ = coordinator
    pytester.makepyfile(test_inner="def test_device(board):\n    assert board\n")
    for key, value in env.items():
        pytester._monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess("--board", "nucleo_f446re", "--labgrid", "bench1", "-p", "no:cacheprovider")
    assert result.ret == 4
    assert "its ST-LINK (exp1/nucleo-1/NetworkUSBDebugger/stlink) is not available" in result.stderr.str()
    assert free_for(env, "bob")
