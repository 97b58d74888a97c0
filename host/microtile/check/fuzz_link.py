"""Link fuzzer: the device must survive any byte sequence on its UART.

    python -m microtile.check.fuzz_link [--seconds 60] [--seed 1] [--elf microtile.elf] [--board qemu]

Sends seeded bursts of hostile input to the firmware on QEMU: random bytes, valid
request frames with bits flipped, truncated frames, frames longer than the limit,
well-formed frames of every type (known and unknown) with random payloads and
wrong length fields, and pipelined request floods that overflow the receive
buffer. After each burst INFO must answer, with the same build id, model and hash as
before, within a time-out; a FAULT frame, a wrong INFO, silence or a QEMU exit is a
device failure (QEMU is then restarted and the fuzzer goes on). Prints the frames
and bytes sent, the bursts, and the failures with the seed and burst to replay them.

Exit status: 0 no failure, 3 at least one device failure, 2 bad arguments or a
missing tool. Without ``--elf`` it builds the repository's tiny test model
(tests/fixtures/tiny_model) into build/fuzz_link/.

Well-formed frames are sent with seq 0, which the host's requests never use: their
replies and errors are skipped by ``DeviceLink.request`` like any seq-0 noise, except
a FAULT, which fails the check."""
from __future__ import annotations

import argparse
import random
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from microtile.paths import REPO_ROOT
from microtile.targets.boards import firmware_configure_command, load_board
from microtile.errors import BoardNotFoundError, DeviceFaultError, LinkError, LinkTimeoutError, MicrotileError, ToolMissingError
from microtile.link.protocol import (CMD_CALIBRATE, CMD_ECHO, CMD_INFO, CMD_INVOKE, CMD_READ_COUNTERS, CMD_READ_OUTPUT,
                   CMD_RESET, CMD_WRITE_INPUT, CRC, HEADER, INVOKE_MAX, MAX_PAYLOAD, DeviceInfo, build_frame,
                   cobs_encode, crc32)
from microtile.measure.runner import EXIT_TARGET_FAILED, exit_code, signals_as_interrupts
from microtile.targets.qemu import QemuTarget

TINY_MODEL = REPO_ROOT / "tests" / "fixtures" / "tiny_model"
COMMANDS = [CMD_INFO, CMD_WRITE_INPUT, CMD_INVOKE, CMD_READ_OUTPUT, CMD_READ_COUNTERS, CMD_RESET,
            CMD_CALIBRATE, CMD_ECHO]
CALIBRATE_FUZZ_MAX = 1 << 20  # larger counts are valid but only make the device busy for seconds
CHECK_TIMEOUT = 20.0  # INFO must answer within this after a burst (covers a reboot)


def request_frame(rnd: random.Random) -> bytes:
    """A well-formed request (valid COBS and CRC, seq 0), often with wrong arguments."""
    cmd = rnd.choice(COMMANDS) if rnd.random() < 0.85 else rnd.randrange(256)
    kind = rnd.random()
    if cmd == CMD_INVOKE and kind < 0.7:
        payload = struct.pack("<I", rnd.choice([0, 1, 2, INVOKE_MAX, INVOKE_MAX + 1, rnd.getrandbits(32)]))
    elif cmd == CMD_CALIBRATE and kind < 0.7:
        payload = struct.pack("<I", rnd.choice([0, 1, rnd.randrange(1, CALIBRATE_FUZZ_MAX), 2**30 + 1,
                                                rnd.getrandbits(32) | 2**31]))
    elif cmd in (CMD_WRITE_INPUT, CMD_READ_OUTPUT) and kind < 0.7:
        index = rnd.choice([0, 1, 2, 0xFFFF])
        offset = rnd.choice([0, 1, 63, 64, 65, 0xFFFFFFFF, rnd.getrandbits(32)])
        if cmd == CMD_WRITE_INPUT:
            payload = struct.pack("<HI", index, offset) + rnd.randbytes(rnd.randrange(MAX_PAYLOAD - 6 + 1))
        else:
            payload = struct.pack("<HIH", index, offset, rnd.choice([0, 1, 64, MAX_PAYLOAD, 0xFFFF]))
    elif cmd == CMD_READ_COUNTERS and kind < 0.7:
        payload = struct.pack("<H", rnd.choice([0, 1, 3, 61, 0xFFFF]))
    else:
        payload = rnd.randbytes(rnd.choice([0, 1, 2, 4, 8, rnd.randrange(MAX_PAYLOAD + 9)]))
    length = len(payload)
    if rnd.random() < 0.1:  # a length field that does not match the payload
        length = rnd.randrange(0x10000)
    body = HEADER.pack(cmd, 0, length) + payload
    return cobs_encode(body + CRC.pack(crc32(body))) + b"\x00"


def mutate(rnd: random.Random, frame: bytes) -> bytes:
    """A valid frame made invalid: bits flipped, cut short, or bytes dropped/inserted."""
    data = bytearray(frame[:-1])
    how = rnd.randrange(3)
    if how == 0:
        for _ in range(rnd.randint(1, 3)):
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
    elif how == 1:
        del data[rnd.randrange(1, len(data)):]
    else:
        pos = rnd.randrange(len(data))
        if rnd.random() < 0.5:
            del data[pos]
        else:
            data.insert(pos, rnd.randrange(256))
    return bytes(data) + b"\x00"


def hostile_piece(rnd: random.Random) -> tuple[bytes, int]:
    """One piece of a burst and the number of frames (delimiters) it holds."""
    kind = rnd.random()
    if kind < 0.2:
        piece = rnd.randbytes(rnd.randrange(1, 700))  # noise, zero bytes included by chance
    elif kind < 0.45:
        piece = mutate(rnd, request_frame(rnd))
    elif kind < 0.55:
        piece = bytes(rnd.randrange(1, 256) for _ in range(rnd.randrange(525, 3000))) + b"\x00"  # too long
    elif kind < 0.6:
        piece = build_frame(CMD_INFO, 0) * rnd.randrange(50, 400)  # a pipelined flood
    else:
        piece = request_frame(rnd)
    return piece, max(1, piece.count(0))


@dataclass
class FuzzReport:
    seconds: float = 0.0
    bursts: int = 0
    frames: int = 0
    bytes: int = 0
    failures: list[str] = field(default_factory=list)
    rx_overflows: int = 0  # as INFO counted them (summed over QEMU restarts)

    def summary(self) -> str:
        lines = [f"link fuzz: {self.bursts} bursts, {self.frames} frames, {self.bytes} bytes in "
                 f"{self.seconds:.0f} s; receive overflows reported by the device: {self.rx_overflows}; "
                 f"device failures: {len(self.failures)}"]
        lines += [f"  FAILED {f}" for f in self.failures]
        return "\n".join(lines)


def check_alive(target: QemuTarget, expect: DeviceInfo, timeout: float = CHECK_TIMEOUT) -> tuple[str | None, int]:
    """(None, rx_overflows) when INFO answers as before; else (what went wrong, 0)."""
    deadline = time.monotonic() + timeout
    while True:
        if target.process is None or target.process.poll() is not None:
            return f"QEMU exited: {target.output()[-300:] or '(no output)'}", 0
        try:
            info = target.link.info(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
        except DeviceFaultError as exc:
            return str(exc), 0
        except LinkTimeoutError:
            if time.monotonic() >= deadline:
                return f"no INFO reply within {timeout:.0f} s", 0
            continue  # rebooting after a RESET in the burst, or still busy
        except LinkError as exc:
            return f"INFO failed: {exc}", 0
        got = (info.build_id, info.model_name, info.model_hash, info.input_sizes, info.output_sizes)
        want = (expect.build_id, expect.model_name, expect.model_hash, expect.input_sizes, expect.output_sizes)
        if got != want:
            return f"INFO changed: {got} instead of {want}", 0
        return None, info.rx_overflows


def fuzz(elf: Path, seconds: float, seed: int, board: str = "qemu", max_bursts: int | None = None,
         out=None) -> FuzzReport:
    """Fuzz the firmware ``elf`` on QEMU for ``seconds`` (or ``max_bursts`` bursts)."""
    rnd = random.Random(seed)
    report = FuzzReport()
    start = time.monotonic()
    target = QemuTarget(board, elf, timeout=5.0)
    target.start()
    try:
        expect = target.link.info()
        overflows_before = 0
        while time.monotonic() - start < seconds and (max_bursts is None or report.bursts < max_bursts):
            burst = bytearray()
            for _ in range(rnd.randint(1, 12)):
                piece, frames = hostile_piece(rnd)
                burst += piece
                report.frames += frames
            report.bursts += 1
            report.bytes += len(burst)
            target.link.send_raw(bytes(burst))
            problem, overflows = check_alive(target, expect)
            if problem is None:
                report.rx_overflows += max(0, overflows - overflows_before)
                overflows_before = overflows
                continue
            report.failures.append(f"burst {report.bursts} (seed {seed}): {problem}")
            if out:
                print(f"FAILED burst {report.bursts}: {problem}; restarting QEMU", file=out, flush=True)
            target.stop()
            target = QemuTarget(board, elf, timeout=5.0)
            target.start()  # a firmware that no longer boots ends the run (BoardNotFoundError)
            overflows_before = 0
    finally:
        target.stop()
    report.seconds = time.monotonic() - start
    return report


def build_tiny_firmware(board: str) -> Path:
    """The tiny test model's firmware, built (incrementally) under build/fuzz_link/."""
    if not (TINY_MODEL / "model.c").is_file():
        raise MicrotileError(f"{TINY_MODEL} not found (an installed package has no tests): pass --elf FIRMWARE.elf")
    out = REPO_ROOT / "build" / "fuzz_link" / load_board(board).name
    for tool in ("cmake", "ninja", "arm-none-eabi-gcc"):
        from shutil import which

        if which(tool) is None:
            raise ToolMissingError(f"{tool} not found on PATH: run `make setup`")
    for cmd in (firmware_configure_command(board, TINY_MODEL, "f022", out), ["cmake", "--build", str(out)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise MicrotileError(f"building the fuzz firmware failed: {(proc.stdout + proc.stderr)[-1500:]}")
    return out / "microtile.elf"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m microtile.check.fuzz_link", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--elf", type=Path, help="firmware to fuzz (default: the tiny test model's)")
    ap.add_argument("--board", default="qemu", help="a board with an emulator (default qemu)")
    args = ap.parse_args(argv)
    try:
        if args.seconds <= 0:
            raise MicrotileError(f"--seconds must be positive, got {args.seconds:g}")
        elf = args.elf if args.elf is not None else build_tiny_firmware(args.board)
        if not elf.is_file():
            raise MicrotileError(f"{elf} is not a file: pass a firmware ELF built by microtile")
        with signals_as_interrupts():  # SIGTERM/SIGHUP too: QEMU is stopped on the way out
            report = fuzz(elf, args.seconds, args.seed, args.board, out=sys.stdout)
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return exit_code(exc)
    except BoardNotFoundError as exc:  # the fuzzed firmware no longer boots: the target failed
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TARGET_FAILED
    except MicrotileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    print(report.summary())
    return EXIT_TARGET_FAILED if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
