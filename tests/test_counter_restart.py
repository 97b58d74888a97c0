"""The DWT cycle counter after flashing, against pyOCD's real session code.

pyOCD's session close (CortexM.disconnect with resume_on_disconnect) writes DEMCR = 0,
about 0.1 s after the reset that started the firmware: TRCENA goes, and the DWT counter
freezes. NucleoTarget therefore resets the board over its VCP once the session is closed
(the firmware's boot code sets TRCENA again) and refuses a counter that reads 0.

What is real here: pyOCD's Session, Board, CoreSightTarget, DebugPort, AccessPort /
MEM_AP, ROM-table discovery and CortexM (connect, halt, reset, disconnect), opened with
the options microtile flashes with (``session_options``); pyserial's socket:// port;
the link's frames. What stands in for hardware, below pyOCD's DebugProbe interface:
``SimProbe`` answers DP and AP register accesses as ADIv5 defines them, and ``SimMcu``
holds the memory-mapped debug registers of the F429's Cortex-M4 as the ARMv7-M ARM defines them
(DHCSR, DCRSR/DCRDR, DEMCR, AIRCR, the DWT, FPB and ROM table ID registers). On a system
reset it "boots": like firmware/ports/common/counter_dwt.c, it sets DEMCR.TRCENA.
``SimBoard`` answers the link protocol (docs/protocol.md) on a TCP socket, with cycle
counts that advance only while the simulated TRCENA is set.
"""
from __future__ import annotations

import socket
import struct
import threading

import pytest
from pyocd.core.memory_interface import MemoryInterface
from pyocd.core.session import Session
from pyocd.probe.debug_probe import DebugProbe

from microtile.targets.boards import load_board
from microtile.targets.discovery import AttachedProbe, pyocd_config
from microtile.link.protocol import (CMD_CALIBRATE, CMD_INFO, CMD_INVOKE, CMD_RESET, FRAME_ERROR, FRAME_LOG, REPLY,
                            Frame, FrameDecoder, build_frame)
from microtile.targets.nucleo import (ERR_COUNTER, CounterFrozenError, NucleoTarget,
                                      session_options)

UID = "066DFF575251717867114355"
BOARD = "nucleo_f429zi"  # its pyOCD target is built in (no CMSIS pack needed)
PYOCD_TARGET = pyocd_config(load_board(BOARD))[0]

DHCSR, DCRSR, DCRDR, DEMCR = 0xE000EDF0, 0xE000EDF4, 0xE000EDF8, 0xE000EDFC
CPUID, AIRCR = 0xE000ED00, 0xE000ED0C
DWT_CTRL, FP_CTRL = 0xE0001000, 0xE0002000
TRCENA = 1 << 24
VC_CORERESET = 1 << 0
ROM_TABLE = 0xE00FF000


def _id_block(cls: int, part: int) -> dict[int, int]:
    """CoreSight CIDR/PIDR words (offsets 0xFD0..0xFFC) of an ARM component (JEP106 0x43B)."""
    return {0xFD0: 0x04, 0xFE0: part & 0xFF, 0xFE4: 0xB0 | (part >> 8), 0xFE8: 0x0B, 0xFEC: 0x00,
            0xFF0: 0x0D, 0xFF4: cls << 4, 0xFF8: 0x05, 0xFFC: 0xB1}


class SimMcu:
    """The debug-visible state of a Cortex-M4 (ARMv7-M ARM, C1.6)."""

    def __init__(self, boot_sets_trcena: bool = True):
        self.words: dict[int, int] = {CPUID: 0x410FC241, DWT_CTRL: 0x40000000, FP_CTRL: 0x00000260,
                                      0xE000ED88: 0, 0xE000EF40: 0x10110021, 0xE000EF44: 0x11000011}
        # ROM table: SCS, DWT, FPB (offsets relative to the table, present, 32-bit format)
        for i, base in enumerate((0xE000E000, 0xE0001000, 0xE0002000)):
            self.words[ROM_TABLE + 4 * i] = ((base - ROM_TABLE) & 0xFFFFF000) | 0x3
        self.words[ROM_TABLE + 12] = 0
        for base, cls, part in ((ROM_TABLE, 0x1, 0x4C4), (0xE000E000, 0xE, 0x00C), (0xE0001000, 0xE, 0x002),
                                (0xE0002000, 0xE, 0x003)):
            for off, value in _id_block(cls, part).items():
                self.words[base + off] = value
        self.core_regs: dict[int, int] = {15: 0x08000199, 16: 0x01000000, 13: 0x20020000}
        self.c_debugen = self.c_halt = False
        self.reset_seen = False  # DHCSR.S_RESET_ST: sticky until read
        self.boot_sets_trcena = boot_sets_trcena
        self.boots = 0
        self.demcr_log: list[int] = []  # every value written to DEMCR, in order
        self.boot()

    @property
    def counting(self) -> bool:
        """Whether DWT.CYCCNT advances: TRCENA powers the DWT, CYCCNTENA starts it."""
        return bool(self.words.get(DEMCR, 0) & TRCENA) and bool(self.words[DWT_CTRL] & 1)

    def boot(self) -> None:
        """The firmware's reset path: mt_counter_init sets TRCENA and CYCCNTENA."""
        self.boots += 1
        if self.boot_sets_trcena:
            self.words[DEMCR] = self.words.get(DEMCR, 0) | TRCENA
        self.words[DWT_CTRL] |= 1

    def system_reset(self) -> None:
        """SYSRESETREQ: the core restarts, the debug registers (DHCSR, DEMCR) keep their values."""
        self.reset_seen = True
        if self.c_debugen and self.words.get(DEMCR, 0) & VC_CORERESET:
            self.c_halt = True  # vector catch: halted at the reset vector, the firmware waits
        else:
            self.c_halt = False
            self.boot()

    def read32(self, addr: int) -> int:
        if addr == DHCSR:
            halted = self.c_debugen and self.c_halt
            value = (1 << 16) | (halted << 17) | (self.reset_seen << 25) | self.c_debugen | (self.c_halt << 1)
            self.reset_seen = False
            return value
        if addr == AIRCR:
            return 0xFA050000
        return self.words.get(addr, 0)

    def write32(self, addr: int, value: int) -> None:
        if addr == DHCSR:
            if value >> 16 == 0xA05F:
                was_halted = self.c_halt
                self.c_debugen, self.c_halt = bool(value & 1), bool(value & 2) and bool(value & 1)
                if was_halted and not self.c_halt and self.boots == 0:
                    self.boot()
        elif addr == DCRSR:
            reg = value & 0x7F
            if value & (1 << 16):
                self.core_regs[reg] = self.words.get(DCRDR, 0)
            else:
                self.words[DCRDR] = self.core_regs.get(reg, 0)
        elif addr == AIRCR:
            if value >> 16 == 0x05FA and value & 0x5:
                self.system_reset()
        elif addr == DWT_CTRL:
            self.words[DWT_CTRL] = (self.words[DWT_CTRL] & 0xF0000000) | (value & 0x0FFFFFFF)
        elif addr == FP_CTRL:
            self.words[FP_CTRL] = 0x260 | (value & 1 if value & 2 else self.words[FP_CTRL] & 1)
        else:
            if addr == DEMCR:
                self.demcr_log.append(value)
            self.words[addr] = value


class SimMemory(MemoryInterface):
    """The AHB-AP's view of the MCU, as the probe's memory interface (like an ST-LINK's)."""

    def __init__(self, mcu: SimMcu):
        self.mcu = mcu

    def write_memory(self, addr, data, transfer_size=32, **kwargs):
        if transfer_size == 32:
            self.mcu.write32(addr, data)
        else:
            shift = 8 * (addr & 3)
            mask = ((1 << transfer_size) - 1) << shift
            word = self.mcu.read32(addr & ~3)
            self.mcu.write32(addr & ~3, (word & ~mask) | ((data << shift) & mask))

    def read_memory(self, addr, transfer_size=32, now=True, **kwargs):
        word = self.mcu.read32(addr & ~3)
        value = word if transfer_size == 32 else (word >> (8 * (addr & 3))) & ((1 << transfer_size) - 1)
        return value if now else (lambda: value)

    def write_memory_block32(self, addr, data, **kwargs):
        for i, word in enumerate(data):
            self.mcu.write32(addr + 4 * i, word)

    def read_memory_block32(self, addr, size, **kwargs):
        return [self.mcu.read32(addr + 4 * i) for i in range(size)]


class SimProbe(DebugProbe):
    """A pyOCD DebugProbe (the documented driver interface) over SimMcu: DP and AP
    registers per ADIv5 (DPv1 IDR, CTRL/STAT power-up handshake, one AHB-AP)."""

    DP_IDR = 0x2BA01477  # SW-DP, DPv1 (Cortex-M4)
    AP_IDR = 0x24770011  # AHB-AP
    AP_BASE = ROM_TABLE | 0x3

    def __init__(self, mcu: SimMcu):
        super().__init__()
        self.mcu = mcu
        self.memory = SimMemory(mcu)
        self._open = False
        self._protocol = None
        self.ctrl_stat = 0
        self.csw = 0x03000040
        self.closed = 0

    description = vendor_name = product_name = "simulated ST-LINK"
    unique_id = UID
    supported_wire_protocols = [DebugProbe.Protocol.DEFAULT, DebugProbe.Protocol.SWD]
    capabilities = {DebugProbe.Capability.MANAGED_AP_SELECTION}

    @property
    def wire_protocol(self):
        return self._protocol

    @property
    def is_open(self):
        return self._open

    def open(self):
        self._open = True

    def close(self):
        self._open = False
        self.closed += 1

    def connect(self, protocol=None):
        self._protocol = DebugProbe.Protocol.SWD

    def disconnect(self):
        self._protocol = None

    def set_clock(self, frequency):
        pass

    def flush(self):
        pass

    def reset(self):
        self.mcu.system_reset()

    def assert_reset(self, asserted):
        if asserted:
            self.mcu.system_reset()

    def is_reset_asserted(self):
        return False

    def read_dp(self, addr, now=True):
        value = {0x0: self.DP_IDR, 0x4: self.ctrl_stat | ((self.ctrl_stat & 0x50000000) << 1)}.get(addr & 0xF, 0)
        return value if now else (lambda: value)

    def write_dp(self, addr, data):
        if addr & 0xF == 0x4:
            self.ctrl_stat = data

    def read_ap(self, addr, now=True):
        reg, apsel = addr & 0xFF, addr >> 24
        value = 0
        if apsel == 0:
            value = {0xFC: self.AP_IDR, 0xF8: self.AP_BASE, 0x00: self.csw}.get(reg, 0)
        return value if now else (lambda: value)

    def write_ap(self, addr, data):
        if addr >> 24 == 0 and addr & 0xFF == 0x00:
            self.csw = data

    def read_ap_multiple(self, addr, count=1, now=True):
        values = [self.read_ap(addr) for _ in range(count)]
        return values if now else (lambda: values)

    def write_ap_multiple(self, addr, values):
        for v in values:
            self.write_ap(addr, v)

    def get_memory_interface_for_ap(self, ap_address):
        return self.memory if ap_address.apsel == 0 else None


def pyocd_flash(mcu: SimMcu, probe: SimProbe | None = None):
    """A flasher for NucleoTarget: a real pyOCD session on the simulated MCU, with the
    options microtile flashes with, that resets the core and closes, as _program does
    (FileProgrammer itself needs the flash algorithm running on a core: not simulated)."""
    def flash(elf, board, unique_id):
        with Session(probe or SimProbe(mcu), options=session_options("halt"),
                     target_override=PYOCD_TARGET) as session:
            session.target.reset()  # reset and run: the firmware boots, TRCENA set
            assert mcu.counting
        return "halt"
    return flash


# ---- pyOCD's real code path ----

def test_pyocd_session_close_clears_demcr_and_freezes_the_counter():
    """The symptom, in pyOCD 0.46's own code: after the reset that starts the firmware,
    closing the session writes DEMCR = 0, so the DWT stops counting."""
    mcu = SimMcu()
    probe = SimProbe(mcu)
    boots = mcu.boots
    pyocd_flash(mcu, probe)("fw.elf", None, UID)
    assert mcu.boots == boots + 1  # the reset through pyOCD booted the firmware once
    assert mcu.demcr_log[-1] == 0 and not mcu.counting  # Session.close -> CortexM.disconnect
    assert probe.closed == 1 and not mcu.c_debugen  # the core runs on, debug off
    mcu.system_reset()  # a reset without a debugger: the firmware's boot code sets TRCENA again
    assert mcu.counting


# ---- the link side: a board that answers the protocol, with the simulated counter ----

class SimBoard:
    """A board on a TCP socket answering INFO, RESET, CALIBRATE and INVOKE as the
    firmware does (docs/protocol.md). Counts advance only while mcu.counting; with
    ``reports_stuck`` the device sends the COUNTER error frame instead of a 0 count."""

    def __init__(self, mcu: SimMcu, board: str = BOARD, reports_stuck: bool = False):
        self.mcu, self.board, self.reports_stuck = mcu, board, reports_stuck
        self.commands: list[int] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _info(self) -> bytes:
        head = struct.pack("<BBHIIIIHHHHI", 1, 1, 512, 180_000_000, 0x1234, 4096, 8192, 1, 1, 1, 64, 4000)
        strings = b"".join(bytes([len(s)]) + s for s in (b"abc123", b"m", self.board.encode()))
        return head + struct.pack("<II", 4, 4) + strings

    def _count(self, cycles: int, cmd: int, seq: int, conn: socket.socket) -> bytes | None:
        if self.mcu.counting:
            return struct.pack("<Q", cycles)
        if self.reports_stuck:
            conn.sendall(build_frame(FRAME_ERROR, seq, struct.pack("<HB", ERR_COUNTER, cmd) + b"counter stuck"))
            return None
        return struct.pack("<Q", 0)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            decoder = FrameDecoder()
            with conn:
                while data := conn.recv(4096):
                    for frame in decoder.feed(data):
                        if isinstance(frame, Frame):
                            self._answer(frame, conn)

    def _answer(self, frame: Frame, conn: socket.socket) -> None:
        self.commands.append(frame.type)
        reply: bytes | None = b""
        if frame.type == CMD_INFO:
            reply = self._info()
        elif frame.type == CMD_CALIBRATE:
            reply = self._count(2 * struct.unpack("<I", frame.payload)[0], frame.type, frame.seq, conn)
            reply = reply and reply + struct.pack("<I", 12)
        elif frame.type == CMD_INVOKE:
            count = self._count(123_456, frame.type, frame.seq, conn)
            reply = count and struct.pack("<I", 1) + count
        if reply is not None:
            conn.sendall(build_frame(frame.type | REPLY, frame.seq, reply))
        if frame.type == CMD_RESET:
            self.mcu.system_reset()
            conn.sendall(build_frame(FRAME_LOG, 0, b"microtile ready"))

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def sim():
    boards: list[SimBoard] = []

    def make(mcu: SimMcu, **kwargs) -> SimBoard:
        boards.append(SimBoard(mcu, **kwargs))
        return boards[-1]

    yield make
    for b in boards:
        b.close()


def _device(url: str) -> AttachedProbe:
    return AttachedProbe(UID, "STM32 STLink", "STMicroelectronics", "STM32 STLink", "NUCLEO-F429ZI",
                         PYOCD_TARGET, url, BOARD)


def test_flashing_then_reset_over_the_link_gives_a_working_counter(sim):
    """The whole sequence: the board runs another build, NucleoTarget flashes it through a
    real pyOCD session (whose close freezes the counter), then resets over the VCP; the
    counter advances and INVOKE measures cycles."""
    mcu = SimMcu()
    board = sim(mcu)
    target = NucleoTarget(load_board(BOARD), "fw.elf", build_id="abc123", force_flash=True,
                          device=_device(board.url), flasher=pyocd_flash(mcu), boot_timeout=3)
    with target:
        assert target.flashed and mcu.demcr_log[-1] == 0  # the session closed and cleared DEMCR ...
        assert mcu.counting  # ... and the RESET sent afterwards made the firmware set TRCENA again
        assert CMD_RESET in board.commands and board.commands.index(CMD_RESET) < board.commands.index(CMD_CALIBRATE)
        assert target.link.invoke(1) == 123_456


def test_current_image_frozen_by_an_earlier_session_is_reset_too(sim):
    """No flash needed (the stale-image check passes), but an earlier pyOCD session left the
    counter frozen: the target still resets over the link, so it counts again."""
    mcu = SimMcu()
    pyocd_flash(mcu)("fw.elf", None, UID)  # an earlier run's session
    assert not mcu.counting
    board = sim(mcu)
    flashed: list = []
    with NucleoTarget(load_board(BOARD), "fw.elf", build_id="abc123", device=_device(board.url),
                      flasher=lambda *a: flashed.append(a) or "halt", boot_timeout=3) as target:
        assert flashed == [] and not target.decision.flash
        assert mcu.counting and target.link.calibrate(1000) == 2000


@pytest.mark.parametrize("reports_stuck", [False, True])
def test_a_counter_that_stays_frozen_is_an_error_not_zero_cycles(sim, reports_stuck):
    """A DEMCR that nothing sets again (here: a boot that does not enable the DWT): the
    target refuses to start, whether the device reads 0 or reports the counter stuck."""
    mcu = SimMcu(boot_sets_trcena=False)
    mcu.words[DEMCR] = 0
    board = sim(mcu, reports_stuck=reports_stuck)
    target = NucleoTarget(load_board(BOARD), "fw.elf", build_id="abc123", device=_device(board.url),
                          flasher=pyocd_flash(mcu), boot_timeout=3)
    with pytest.raises(CounterFrozenError, match=f"cycle counter of {BOARD} does not advance") as exc:
        target.start()
    assert "reset button" in str(exc.value) and target._link is None
    # The same on a link already open: INVOKE never returns 0 cycles.
    from microtile.targets.nucleo import BoardLink, open_serial

    link = BoardLink(open_serial(board.url, 115200, 3), timeout=3)
    try:
        with pytest.raises(CounterFrozenError):
            link.invoke(1)
    finally:
        link.close()
