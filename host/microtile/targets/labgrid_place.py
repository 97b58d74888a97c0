"""Boards on other hosts through labgrid: a run acquires a labgrid place around itself
and releases it afterwards (also on Ctrl-C / SIGTERM and on failure).

A place for a Nucleo holds three named resources (the exporter's config; README):

    nucleo-1:                       # resource group on the exporter
      stlink: {cls: USBDebugger, match: {ID_SERIAL_SHORT: "<ST-LINK serial>"}}
      vcp:    {cls: USBSerialPort, match: {ID_SERIAL_SHORT: "<ST-LINK serial>"}}
      power:  {cls: USBSerialPort, match: {ID_SERIAL_SHORT: "<PPK2 / LPM01A serial>"}}

microtile drives labgrid through its own command-line client, ``labgrid-client``
(``-p PLACE acquire | show | release``), which talks to the coordinator named by
$LG_COORDINATOR. labgrid lives in its own venv (.venv-labgrid, made by make setup):
it requires pyserial-labgrid, a fork that installs the same ``serial`` module as the
pyserial microtile pins, so the two cannot share one environment.

From the acquired resources a run takes the ST-LINK's USB serial number (its pyOCD
unique id, read from sysfs on the exporter's host: the USB path labgrid reports), the
VCP (its local device, or ``rfc2217://host:port`` through the exporter's ser2net) and the
power probe's port.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from microtile.errors import BoardNotFoundError, ToolMissingError
from microtile.paths import REPO_ROOT

CLIENT_ENV = "MICROTILE_LABGRID_CLIENT"
TIMEOUT_S = 30
RESOURCE_NAMES = ("stlink", "vcp", "power")


class PlaceError(BoardNotFoundError):
    """The place cannot be acquired (busy, unknown, no coordinator) or lacks a resource."""


def labgrid_client() -> str:
    """The labgrid-client program: $MICROTILE_LABGRID_CLIENT, the project's .venv-labgrid, or PATH."""
    for candidate in (os.environ.get(CLIENT_ENV), str(REPO_ROOT / ".venv-labgrid" / "bin" / "labgrid-client"),
                      shutil.which("labgrid-client")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ToolMissingError("labgrid-client not found: run `make setup` (it makes .venv-labgrid) or set "
                           f"{CLIENT_ENV} to a labgrid-client")


def parse_show(text: str) -> dict[str, dict]:
    """`labgrid-client -p PLACE show` -> acquired resource name -> {cls, avail, params, acquired}.
    Each resource is printed as ``Acquired resource 'NAME' (PATH):`` followed by its dict's repr."""
    out = {}
    for m in re.finditer(r"^Acquired resource '([^']+)' \(([^)]*)\):\n((?:[ \t]+.*\n?)+)", text, re.M):
        try:
            data = ast.literal_eval(m.group(3).strip())
        except (ValueError, SyntaxError):
            continue
        if isinstance(data, dict):
            out[m.group(1)] = {**data, "path": m.group(2)}
    return out


class LabgridPlace:
    """``with LabgridPlace("bench-1") as place:`` acquires the place, ``place.resources``
    holds what it acquired, ``place.target()`` the probe / port / power for a run."""

    def __init__(self, name: str, client: str | None = None, env: dict | None = None):
        self.name = name
        self.client = client
        self.env = env
        self.resources: dict[str, dict] = {}
        self.acquired = False

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        client = self.client or labgrid_client()
        try:
            return subprocess.run([client, "-p", self.name, *args], capture_output=True, text=True,
                                  timeout=TIMEOUT_S, env=self.env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PlaceError(f"labgrid place {self.name}: labgrid-client {args[0]} got no answer in {TIMEOUT_S} s; "
                             "check the coordinator runs and LG_COORDINATOR names it (host:port)") from None

    @staticmethod
    def _why(proc: subprocess.CompletedProcess) -> str:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "rror" in ln]
        return (errors or lines or [f"exit {proc.returncode}"])[-1]

    def acquire(self) -> None:
        proc = self._run("acquire")
        if proc.returncode != 0:
            raise PlaceError(f"labgrid place {self.name}: cannot acquire it ({self._why(proc)}); "
                             "`labgrid-client places` shows who holds it")
        self.acquired = True
        show = self._run("show")
        self.resources = parse_show(show.stdout) if show.returncode == 0 else {}

    def inspect(self) -> None:
        """Read the place's resources without acquiring it (an xdist worker, whose
        controller holds the place)."""
        show = self._run("show")
        if show.returncode != 0:
            raise PlaceError(f"labgrid place {self.name}: {self._why(show)}")
        self.resources = parse_show(show.stdout)

    def release(self) -> None:
        if self.acquired:
            self._run("release")
            self.acquired = False

    def __enter__(self) -> "LabgridPlace":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def target(self) -> dict:
        """{"probe", "port", "power"} for the run: None for what the place does not hold.
        Raises PlaceError when the ST-LINK is unplugged at the exporter or on another host."""
        out: dict = {"probe": None, "port": None, "power": None}
        stlink = self.resources.get("stlink")
        if stlink is not None:
            if not stlink.get("avail"):
                raise PlaceError(f"labgrid place {self.name}: its ST-LINK ({stlink['path']}) is not available at "
                                 "the exporter (unplugged, or the udev match finds no device)")
            params = stlink.get("params") or {}
            host = params.get("host")
            if host not in _local_names():
                raise PlaceError(f"labgrid place {self.name}: its ST-LINK is on host {host}; pyOCD drives only "
                                 f"local probes: run microtile on {host} with LG_PLACE={self.name}")
            out["probe"] = usb_serial(params.get("path"))
        for key, name in (("port", "vcp"), ("power", "power")):
            res = self.resources.get(name)
            if res is not None and res.get("avail"):
                params = res.get("params") or {}
                local = (params.get("extra") or {}).get("path")
                host = params.get("host")
                out[key] = local if local and host in _local_names() else f"rfc2217://{host}:{params.get('port')}"
        return out


def _local_names() -> set[str]:
    return {socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", os.environ.get("LG_HOSTNAME", "")}


def usb_serial(sysfs_path: str | None) -> str | None:
    """The USB serial number (pyOCD's unique id for an ST-LINK) of a USB device path
    such as 1-1.2, from /sys/bus/usb/devices/<path>/serial."""
    if not sysfs_path:
        return None
    path = Path("/sys/bus/usb/devices") / Path(sysfs_path).name / "serial"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
