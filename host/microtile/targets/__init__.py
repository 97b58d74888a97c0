"""Targets that run a firmware image and expose a DeviceLink: QEMU now, boards later."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..boards import Board, load_board
from ..errors import BoardNotFoundError


def open_target(board: Board | str, firmware: Any, probe: str | None = None, **kwargs: Any):
    """A context manager with ``.link`` (a DeviceLink) for the board.

    ``firmware`` is an ELF path or an object with an ``.elf`` attribute (build.Firmware)."""
    board = load_board(board) if isinstance(board, str) else board
    elf = Path(getattr(firmware, "elf", firmware))
    if board.emulator is not None:
        from .qemu import QemuTarget

        return QemuTarget(board, elf, **kwargs)
    raise BoardNotFoundError(
        f"board {board.name}: flashing real hardware is not implemented yet"
        f"{' (probe ' + probe + ')' if probe else ''}; use --board qemu")
