"""Zephyr builds: the exported model library (the `microtile export` folder the
bare-metal build adds, as a Zephyr module) + the microtile Zephyr module (zephyr/,
the same device app as the bare-metal firmware, with the Zephyr port
firmware/ports/zephyr/) + the application firmware/zephyr_app, built with
``west build`` in the user's west workspace. The ELF talks the same link protocol,
so flashing and running are the bare-metal paths (pyOCD, the VCP UART).

Also the devicetree overlays for the trigger pin (firmware/zephyr_app/boards/), made
from the board YAMLs: ``python -m microtile.build.zephyr overlays`` rewrites them."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from microtile.targets.boards import Board, BoardError, list_boards
from microtile.build.firmware import BUILD_ROOT, FIRMWARE_LIBRARY, Firmware, build_failure, build_key, check_fits, elf_sizes
from microtile.codegen.model_source import CompiledModel
from microtile.errors import BuildError, ToolMissingError
from microtile.codegen.export import write_export
from microtile.paths import REPO_ROOT

APP_DIR = REPO_ROOT / "firmware" / "zephyr_app"
MODULE_DIR = REPO_ROOT / "zephyr"
OVERLAY_DIR = APP_DIR / "boards"
ZEPHYR_BUILD_ROOT = BUILD_ROOT.parent / "zephyr"

# microtile board name -> Zephyr board name (the Zephyr names of the Nucleo boards
# happen to be the same). A board YAML may override it with `zephyr: {board: NAME}`.
ZEPHYR_BOARDS: dict[str, str] = {
    "nucleo_f401re": "nucleo_f401re",
    "nucleo_f411re": "nucleo_f411re",
    "nucleo_f446re": "nucleo_f446re",
    "nucleo_f429zi": "nucleo_f429zi",
    "nucleo_l4r5zi": "nucleo_l4r5zi",
    "nucleo_h743zi": "nucleo_h743zi",
}

SETUP_HINT = ("see docs/zephyr.md: `west init -l <this repo>` in an empty parent directory, "
              "`west update`, `west zephyr-export`, then export ZEPHYR_BASE=<workspace>/zephyr")


def zephyr_board_name(board: Board) -> str:
    """The Zephyr board name for a microtile board (BoardError if it has none)."""
    override = (board.raw.get("zephyr") or {}).get("board") if isinstance(board.raw.get("zephyr"), dict) else None
    name = override or ZEPHYR_BOARDS.get(board.name)
    if not name:
        raise BoardError(
            f"board {board.name} has no Zephyr build; --os zephyr supports "
            f"{', '.join(sorted(ZEPHYR_BOARDS))} (or add `zephyr: {{board: <zephyr board>}}` to {board.path})"
        )
    return str(name)


def find_west() -> str:
    """The west executable: on PATH, or beside this Python (the project's venv)."""
    path = shutil.which("west")
    if path is None:
        beside = Path(sys.executable).parent / "west"
        if beside.is_file() and os.access(beside, os.X_OK):
            path = str(beside)
    if path is None:
        raise ToolMissingError(
            "west not found: install it with `.venv/bin/pip install west==1.5.0` "
            "(pinned in requirements.txt; `make setup` does it)"
        )
    return path


def find_zephyr_base(env: dict[str, str] | None = None) -> Path:
    """ZEPHYR_BASE from the environment, checked to be a Zephyr tree."""
    env = os.environ if env is None else env
    value = env.get("ZEPHYR_BASE", "")
    if not value:
        raise ToolMissingError(f"ZEPHYR_BASE is not set: --os zephyr needs a Zephyr workspace; {SETUP_HINT}")
    base = Path(value).expanduser()
    if not base.is_dir():
        raise ToolMissingError(
            f"ZEPHYR_BASE={value} does not exist: run `west update` in the workspace (it fetches zephyr, "
            f"cmsis, cmsis_6 and hal_stm32), or point ZEPHYR_BASE at the zephyr directory; {SETUP_HINT}"
        )
    if not (base / "share" / "zephyr-package" / "cmake" / "ZephyrConfig.cmake").is_file():
        raise ToolMissingError(
            f"ZEPHYR_BASE={value} is not a Zephyr source tree (no share/zephyr-package/cmake/ZephyrConfig.cmake); "
            f"{SETUP_HINT}"
        )
    return base


def find_workspace(zephyr_base: Path) -> Path:
    """The west workspace (topdir) holding ZEPHYR_BASE: `west build` only exists
    inside one, because the command comes from zephyr's own west extensions."""
    from west.util import WestNotFound, west_topdir

    try:
        return Path(west_topdir(start=zephyr_base))
    except WestNotFound:
        raise ToolMissingError(
            f"ZEPHYR_BASE={zephyr_base} is not inside a west workspace (no .west/ above it), so "
            f"`west build` is unavailable; {SETUP_HINT}"
        ) from None


def zephyr_build_command(west: str, zephyr_board: str, build_dir: Path, model_dir: Path,
                         build_id: str, board_name: str, app_dir: Path = APP_DIR) -> list[str]:
    """The `west build` command line for one (model, board) build."""
    return [
        west, "build",
        "-b", zephyr_board,
        "-d", str(build_dir),
        "-p", "auto",
        str(app_dir),
        "--",
        f"-DMT_MODEL_DIR={model_dir}",
        f"-DMT_BUILD_ID={build_id}",
        f"-DMT_BOARD_NAME={board_name}",
    ]


def zephyr_flash_command(west: str, build_dir: Path, probe: str | None = None) -> list[str]:
    """`west flash` with the pyOCD runner (the ELF can equally be flashed by microtile's
    own pyOCD code; this is the command docs/zephyr.md shows)."""
    cmd = [west, "flash", "-d", str(build_dir), "-r", "pyocd"]
    if probe:
        cmd += ["--", f"--dev-id={probe}"]
    return cmd


def zephyr_build_key(compiled: CompiledModel, board: Board) -> str:
    """build.build_key (model, board, firmware/ and boards/ sources) plus the module
    files and the manifest, so any change rebuilds and the INFO build id changes."""
    h = hashlib.sha256(b"zephyr\0" + build_key(compiled, board).encode())
    for path in sorted(p for p in MODULE_DIR.rglob("*") if p.is_file()) + [REPO_ROOT / "west.yml"]:
        if path.is_file():
            h.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build_zephyr(compiled: CompiledModel, board: Board, build_dir: Path | None = None,
                 verbose: bool = False) -> Firmware:
    """Build the Zephyr app for `board` with `compiled` in it; returns the ELF (cached:
    an existing ELF for the same build key is reused)."""
    check_fits(compiled, board)
    zboard = zephyr_board_name(board)
    zephyr_base = find_zephyr_base()
    west = find_west()
    topdir = find_workspace(zephyr_base)
    key = zephyr_build_key(compiled, board)
    out = Path(build_dir) if build_dir is not None else ZEPHYR_BUILD_ROOT / board.name / key
    west_dir = out / "west"
    elf = west_dir / "zephyr" / "zephyr.elf"
    stamp = out / "build_id"
    if not (elf.is_file() and stamp.is_file() and stamp.read_text().strip() == key):
        model_dir = out / "model"
        write_export(compiled, model_dir, FIRMWARE_LIBRARY)  # the folder the bare-metal build adds too
        cmd = zephyr_build_command(west, zboard, west_dir, model_dir.resolve(), key, board.name)
        env = dict(os.environ, ZEPHYR_BASE=str(zephyr_base))
        proc = subprocess.run(cmd, cwd=topdir, env=env, capture_output=True, text=True)
        if verbose:
            print(proc.stdout)
        if proc.returncode != 0:
            raise build_failure(proc, f"Zephyr build failed ({' '.join(cmd[:6])} ...), in {topdir}", compiled, board)
        if not elf.is_file():
            raise BuildError(f"west build succeeded but {elf} is missing")
        stamp.write_text(key + "\n")
    return Firmware(elf, key, elf_sizes(elf, board))


# ---- devicetree overlays: the trigger pin from the board YAML ----

_PIN = re.compile(r"^P([A-K])(\d{1,2})$")


def trigger_pin(board: Board) -> tuple[str, int] | None:
    """The trigger GPIO of a board YAML as (port letter, pin), e.g. ("A", 8), or None.
    Accepts `trigger: PA8`, `trigger: {pin: PA8}` and `trigger: {port: A, pin: 8}`."""
    spec = board.raw.get("trigger")
    if spec is None:
        return None
    text: str | None = None
    if isinstance(spec, str):
        text = spec
    elif isinstance(spec, dict):
        if isinstance(spec.get("pin"), str):
            text = spec["pin"]
        elif "port" in spec and isinstance(spec.get("pin"), int):
            text = f"P{str(spec['port']).upper().removeprefix('GPIO')}{spec['pin']}"
        elif isinstance(spec.get("gpio"), str):
            text = spec["gpio"]
    m = _PIN.match((text or "").strip().upper())
    if not m or int(m.group(2)) > 15:
        raise BoardError(f"{board.path}: trigger {spec!r} is not a pin like PA8 (port A-K, pin 0-15)")
    return m.group(1), int(m.group(2))


def trigger_overlay(board: Board) -> str | None:
    """Devicetree overlay text giving the trigger pin the alias microtile-trigger."""
    pin = trigger_pin(board)
    if pin is None:
        return None
    port, number = pin
    return (
        f"/* {board.name}: measurement trigger P{port}{number}, from boards/{board.name}.yaml.\n"
        " * Generated by `python -m microtile.build.zephyr overlays`; tests/test_zephyr.py checks it. */\n"
        "/ {\n"
        "\tmicrotile-pins {\n"
        '\t\tcompatible = "gpio-leds";\n'
        "\t\tmt_trigger: mt-trigger {\n"
        f"\t\t\tgpios = <&gpio{port.lower()} {number} GPIO_ACTIVE_HIGH>;\n"
        "\t\t};\n"
        "\t};\n"
        "\n"
        "\taliases {\n"
        "\t\tmicrotile-trigger = &mt_trigger;\n"
        "\t};\n"
        "};\n"
        "\n"
        f"&gpio{port.lower()} {{\n"
        '\tstatus = "okay";\n'
        "};\n"
    )


def expected_overlays() -> dict[Path, str]:
    """Overlay path -> text for every board in boards/ with a Zephyr board and a trigger pin."""
    out: dict[Path, str] = {}
    for board in list_boards():
        try:
            zboard = zephyr_board_name(board)
        except BoardError:
            continue
        text = trigger_overlay(board)
        if text is not None:
            out[OVERLAY_DIR / f"{zboard}.overlay"] = text
    return out


def write_overlays() -> list[Path]:
    OVERLAY_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in expected_overlays().items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["overlays"]:
        for path in write_overlays():
            print(f"wrote {path.relative_to(REPO_ROOT)}")
        return 0
    print("usage: python -m microtile.build.zephyr overlays   (rewrite firmware/zephyr_app/boards/*.overlay)")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
