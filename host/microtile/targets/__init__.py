"""Targets that run a firmware image and expose a DeviceLink: QEMU, and Nucleo boards
through their ST-LINK (pyOCD flashing, virtual COM port)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from microtile.targets.boards import Board, load_board
from microtile.errors import BoardNotFoundError

def _emulated(board: Board, emulate: bool) -> bool:
    from microtile.targets.discovery import is_probe_board

    return not is_probe_board(board) or emulate


def check_target_tools(board: Board, *, emulate: bool = False, **_: Any) -> None:
    """Raise ToolMissingError (exit 2) when the program that runs the board is missing,
    so the run stops before a firmware build it could not use."""
    if _emulated(board, emulate) and board.emulator is not None:
        from microtile.targets.qemu import find_qemu

        find_qemu(board.emulator.program)


def open_target(board: Board | str, firmware: Any, probe: str | None = None, *,
                emulate: bool = False, **kwargs: Any):
    """A context manager with ``.link`` (a DeviceLink) for the board.

    ``firmware`` is an ELF path or an object with ``.elf`` and ``.build_id``
    (build.Firmware). Boards flashed through a probe (a ``pyocd:`` section in their YAML)
    run on the real board; boards that only have an ``emulator:`` run on it. A board with
    both runs on hardware unless ``emulate=True``."""
    board = load_board(board) if isinstance(board, str) else board
    elf = Path(getattr(firmware, "elf", firmware))
    on_hardware = not _emulated(board, emulate)
    if not on_hardware:
        if board.emulator is None:
            raise BoardNotFoundError(f"board {board.name} has neither a pyOCD target nor an emulator in "
                                     f"{board.path}; it cannot be run")
        from microtile.targets.qemu import QemuTarget

        qemu_kwargs = {k: v for k, v in kwargs.items() if k not in ("port", "baudrate", "force_flash")}  # hardware only
        return QemuTarget(board, elf, **qemu_kwargs)
    from microtile.targets.nucleo import NucleoTarget

    options = {k: v for k, v in kwargs.items() if v is not None}
    return NucleoTarget(board, elf, build_id=getattr(firmware, "build_id", None), probe=probe, **options)
