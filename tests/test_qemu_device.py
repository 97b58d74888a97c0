"""The real firmware (port + app + a hand-written tiny model) on qemu-system-arm:
INFO, input/output round trip, exact and repeatable instruction counts, garbled
frames, stray bytes, length limits, bounded and interruptible INVOKE, receive
overflow, a link fuzz sample, reset, CPU faults in a layer (a test-only model that
faults on purpose), a frozen emulator, a missing emulator."""
from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from microtile.targets.boards import firmware_configure_command, load_board
from microtile.errors import DeviceFaultError, LinkTimeoutError, ToolMissingError
from microtile.check.fuzz_link import fuzz
from microtile.link.protocol import (
    CMD_ECHO,
    CMD_INFO,
    CMD_INVOKE,
    CMD_READ_OUTPUT,
    CMD_WRITE_INPUT,
    CRC,
    FRAME_ERROR,
    HEADER,
    INVOKE_MAX,
    MAX_PAYLOAD,
    REPLY,
    DeviceError,
    Frame,
    FrameError,
    build_frame,
    cobs_encode,
    crc32,
)
from microtile.targets.qemu import QemuTarget

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "fixtures" / "tiny_model"
FAULT_MODEL = REPO / "tests" / "fixtures" / "fault_model"
BUILD_ID = "c0ffee42"
TINY_ROUNDS = 200000  # tests/fixtures/tiny_model/model.h

pytestmark = pytest.mark.qemu


def tiny_reference(x: bytes) -> tuple[bytes, bytes]:
    """What the tiny model computes (see its model.c), recomputed here."""
    scratch = bytes((v * 3 + 1) & 0xFF for v in x)
    out0 = bytes(scratch[63 - i] ^ 0x5A for i in range(64))
    h = 2166136261
    for r in range(TINY_ROUNDS):
        h = ((h ^ x[r & 63]) * 16777619) & 0xFFFFFFFF
    return out0, struct.pack("<I", h)


def build_elf(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    for tool in ("arm-none-eabi-gcc", "cmake", "ninja"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make setup)")
    build = tmp_path_factory.mktemp("fw")
    configure = firmware_configure_command("qemu", model_dir, BUILD_ID, build)
    for cmd in (configure, ["cmake", "--build", str(build)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "warning" not in proc.stdout.lower(), proc.stdout
    return build / "microtile.elf"


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_elf(tmp_path_factory, TINY)


@pytest.fixture(scope="module")
def target(elf: Path):
    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm not installed (sudo apt-get install qemu-system-arm)")
    with QemuTarget("qemu", elf, timeout=10.0) as t:
        yield t


def test_info_fields(target: QemuTarget) -> None:
    info = target.link.info()
    board = load_board("qemu")
    assert info.build_id == BUILD_ID
    assert info.model_name == "tiny" and info.model_hash == 0x1234ABCD
    assert info.board == "netduinoplus2"
    assert info.clock_hz == board.clock_hz == 168_000_000
    assert info.counter_unit == "instructions"
    assert info.arena_size == 256 and info.model_arena_size == 196
    assert info.stack_size == board.stack_size
    assert info.input_sizes == [64] and info.output_sizes == [64, 4]
    assert info.num_layers == 3
    assert info.max_payload == 512


def test_write_invoke_read_round_trip(target: QemuTarget) -> None:
    link = target.link
    rnd = random.Random(1)
    for _ in range(3):
        x = bytes(rnd.randrange(256) for _ in range(64))
        link.write_input(0, x)
        link.invoke(1)
        assert (link.read_output(0), link.read_output(1)) == tiny_reference(x)


def test_large_echo_frames_survive(target: QemuTarget) -> None:
    rnd = random.Random(2)
    for size in (0, 1, 253, 254, 255, 511, 512):
        data = bytes(rnd.randrange(256) for _ in range(size))
        assert target.link.echo(data) == data
    assert target.link.echo(bytes(512)) == bytes(512)  # all zeros: worst case for COBS blocks


@pytest.mark.parametrize("iterations", [1, 7, 1000, 123_457, 1_000_000, 3_000_001])
def test_instruction_count_is_exact(target: QemuTarget, iterations: int) -> None:
    # mt_calib_loop runs exactly 2*n instructions more than an empty layer; the larger
    # n span many 24-bit SysTick wraps (one per ~390k instructions).
    assert target.link.calibrate(iterations) == 2 * iterations


def test_layer_counts_positive_and_repeatable(target: QemuTarget) -> None:
    link = target.link
    rnd = random.Random(3)
    runs = []
    for n in (1, 1, 3, 2):
        link.write_input(0, bytes(rnd.randrange(256) for _ in range(64)))
        total = link.invoke(n)
        c = link.read_counters()
        assert c.unit == "instructions" and c.invokes == n
        assert len(c.layers) == 3 and all(v > 0 for v in c.layers)
        assert c.total == sum(c.layers) == total
        assert 0 < c.stack_bytes < load_board("qemu").stack_size
        runs.append(c.layers)
    # the tiny model's layers take data-independent paths: same counts every time,
    # although each run meets the SysTick wraps at a different place
    assert all(r == runs[0] for r in runs)
    # layer 2 loops TINY_ROUNDS times: at least a few instructions per round
    assert runs[0][2] > 3 * TINY_ROUNDS
    assert runs[0][0] > 64 and runs[0][1] > 64


def test_garbled_frames_get_error_frames_and_device_keeps_serving(target: QemuTarget) -> None:
    link = target.link
    good = build_frame(CMD_INFO, 77)
    flipped = bytearray(good)
    flipped[2] ^= 0x01
    cases = {
        "BAD_CRC": bytes(flipped),
        "BAD_COBS": good[:2] + b"\x00",
        "BAD_LENGTH": b"\x02\x09\x00",
        "TOO_LONG": b"\x5a" * 3000 + b"\x00",
    }
    for name, data in cases.items():
        link.send_raw(b"\x00" + data)
        reply = link.receive(5.0)
        assert isinstance(reply, Frame) and reply.type == FRAME_ERROR, (name, reply)
        code = struct.unpack_from("<H", reply.payload)[0]
        assert code == {"BAD_COBS": 1, "BAD_CRC": 2, "BAD_LENGTH": 3, "TOO_LONG": 4}[name], name
        assert link.info().model_name == "tiny"
    # random noise: every reply is an error frame, never a crash or a hang
    rnd = random.Random(4)
    noise = bytes(rnd.randrange(256) for _ in range(4000))
    link.send_raw(noise + b"\x00")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            item = link.receive(0.3)
        except LinkTimeoutError:
            break
        assert isinstance(item, FrameError) or item.type == FRAME_ERROR
    assert link.info().build_id == BUILD_ID


def test_bad_requests_get_device_errors(target: QemuTarget) -> None:
    link = target.link
    with pytest.raises(DeviceError, match="UNKNOWN_COMMAND"):
        link.request(0x55)
    with pytest.raises(DeviceError, match="OUT_OF_RANGE.*input index"):
        link.request(CMD_WRITE_INPUT, struct.pack("<HI", 1, 0) + b"x")
    with pytest.raises(DeviceError, match="OUT_OF_RANGE.*past the end"):
        link.request(CMD_WRITE_INPUT, struct.pack("<HI", 0, 60) + b"12345")
    with pytest.raises(DeviceError, match="OUT_OF_RANGE"):
        link.request(CMD_READ_OUTPUT, struct.pack("<HIH", 1, 2, 3))
    with pytest.raises(DeviceError, match="BAD_ARGUMENT"):
        link.request(CMD_READ_OUTPUT, struct.pack("<HI", 0, 0))
    with pytest.raises(DeviceError, match="BAD_ARGUMENT"):
        link.request(0x03, struct.pack("<I", 0))  # INVOKE 0
    assert link.info().num_layers == 3


def test_stray_byte_before_a_request_does_not_fail_it(target: QemuTarget) -> None:
    link = target.link
    for stray in (b"A", b"\xff\x13", b"\x00\x05"):
        link.send_raw(stray)  # the device answers it with a seq-0 error, then the request
        assert link.info().build_id == BUILD_ID
    assert link.line_errors >= 2


def _raw_request(cmd: int, seq: int, payload: bytes) -> bytes:
    """A well-formed frame without the host's payload check."""
    body = HEADER.pack(cmd, seq, len(payload)) + payload
    return b"\x00" + cobs_encode(body + CRC.pack(crc32(body))) + b"\x00"


def _next_frame(link, seq: int) -> Frame:
    deadline = time.monotonic() + 5.0
    while True:
        item = link.receive(max(0.0, deadline - time.monotonic()))
        if isinstance(item, Frame) and item.seq == seq:
            return item


def test_payload_over_the_limit_is_refused(target: QemuTarget) -> None:
    link = target.link
    data = bytes(range(1, 256)) * 2 + b"xyz"  # 513 bytes: COBS still fits it in the buffer
    link.send_raw(_raw_request(CMD_ECHO, 99, data))
    reply = _next_frame(link, 99)
    assert reply.type == FRAME_ERROR and struct.unpack_from("<H", reply.payload)[0] == 4  # TOO_LONG
    assert link.echo(bytes(MAX_PAYLOAD)) == bytes(MAX_PAYLOAD)
    assert link.info().model_name == "tiny"


def test_invoke_count_is_bounded(target: QemuTarget) -> None:
    link = target.link
    assert link.info().invoke_max == INVOKE_MAX
    for count in (INVOKE_MAX + 1, 0xFFFFFFFF):
        with pytest.raises(DeviceError, match="BAD_ARGUMENT on INVOKE"):
            link.request(CMD_INVOKE, struct.pack("<I", count))
    assert link.info().build_id == BUILD_ID


def test_long_invoke_still_hears_the_host(target: QemuTarget) -> None:
    link = target.link
    link.write_input(0, bytes(64))
    start = time.monotonic()
    link.send_raw(_raw_request(CMD_INVOKE, 201, struct.pack("<I", INVOKE_MAX)))  # minutes of work
    time.sleep(0.3)
    link.send_raw(_raw_request(CMD_ECHO, 202, b"hello"))
    invoke = _next_frame(link, 201)
    assert invoke.type == CMD_INVOKE | REPLY
    done, total = struct.unpack("<IQ", invoke.payload)
    assert 1 <= done < INVOKE_MAX and total > 0
    echo = _next_frame(link, 202)
    assert echo.type == CMD_ECHO | REPLY and echo.payload == b"hello"
    assert time.monotonic() - start < 5.0
    assert link.read_counters().invokes == done
    # and RESET is heard during a long INVOKE too
    link.send_raw(_raw_request(CMD_INVOKE, 203, struct.pack("<I", INVOKE_MAX)))
    time.sleep(0.3)
    assert link.reset().build_id == BUILD_ID
    assert link.read_counters().invokes == 0


def test_pipelined_requests_overflow_is_reported(target: QemuTarget) -> None:
    link = target.link
    before = link.info().rx_overflows
    # a CALIBRATE keeps the device busy (~0.2 s) while 400 pipelined requests (5 KiB)
    # arrive: the 1 KiB receive ring must overflow
    n = 400
    link.send_raw(_raw_request(0x07, 250, struct.pack("<I", 1 << 25))
                  + b"".join(_raw_request(CMD_INFO, 1 + i % 200, b"") for i in range(n)))
    replies, overflow_errors = 0, 0
    while True:
        try:
            item = link.receive(1.0)
        except LinkTimeoutError:
            break
        if isinstance(item, Frame) and item.type == CMD_INFO | REPLY:
            replies += 1
        elif isinstance(item, Frame) and item.type == FRAME_ERROR:
            overflow_errors += struct.unpack_from("<H", item.payload)[0] == 10  # RX_OVERFLOW
    assert 0 < replies < n
    assert overflow_errors >= 1  # the loss is reported, not silent
    info = link.info()
    assert info.rx_overflows - before >= overflow_errors


def test_link_fuzz_sample(elf: Path) -> None:
    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm not installed")
    report = fuzz(elf, seconds=8.0, seed=7)
    assert report.bursts >= 5 and report.frames > 100
    assert report.failures == [], report.summary()


def test_reset_reboots_and_clears_counters(target: QemuTarget) -> None:
    link = target.link
    link.write_input(0, bytes(64))
    link.invoke(1)
    assert link.read_counters().invokes == 1
    info = link.reset()
    assert info.build_id == BUILD_ID
    assert link.read_counters().invokes == 0
    assert any("microtile ready" in line for line in link.logs)


def test_frozen_qemu_times_out_instead_of_hanging(elf: Path) -> None:
    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm not installed")
    t = QemuTarget("qemu", elf, timeout=1.0)
    with t:
        pid = t.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(LinkTimeoutError, match="stopped answering after 1.0 s"):
            t.link.info()
        assert time.monotonic() - start < 3.0
    # leaving the with-block ended the stopped process
    assert t.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_qemu_is_stopped_when_the_body_raises(elf: Path) -> None:
    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm not installed")
    pid = None
    with pytest.raises(RuntimeError):
        with QemuTarget("qemu", elf) as t:
            pid = t.pid
            raise RuntimeError("boom")
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_missing_qemu_is_a_tool_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no qemu-system-arm
    with pytest.raises(ToolMissingError, match="apt-get install qemu-system-arm"):
        with QemuTarget("qemu", tmp_path / "microtile.elf"):
            pass


# ---- CPU faults: a test-only model whose layer 1 faults as input[0] asks ----

@pytest.fixture(scope="module")
def fault_target(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm not installed (sudo apt-get install qemu-system-arm)")
    with QemuTarget("qemu", build_elf(tmp_path_factory, FAULT_MODEL), timeout=10.0) as t:
        yield t


FAULTS = {  # tests/fixtures/fault_model/model.h
    1: ("BusFault: precise data bus error at 0x30000000", 0x8200),
    2: ("UsageFault: undefined instruction", 1 << 16),
    3: ("UsageFault: unaligned access", 1 << 24),
}


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_fault_in_a_layer_names_layer_fault_and_registers(fault_target: QemuTarget, kind: int) -> None:
    link = fault_target.link
    link.write_input(0, bytes([kind]) + bytes(15))
    with pytest.raises(DeviceFaultError) as exc:
        link.invoke(1)
    err = exc.value
    text, cfsr = FAULTS[kind]
    assert err.layer == 1 and err.fault == text
    assert err.registers["cfsr"] == cfsr
    assert 0x08000000 <= err.registers["pc"] < 0x08100000  # in the firmware's flash
    assert err.registers["lr"] & 1  # a Thumb return address
    if kind == 1:
        assert err.registers["bfar"] == 0x30000000
    # the device reset itself and serves again
    assert link.wait_ready(10.0).model_name == "fault"
    link.write_input(0, bytes(16))
    link.invoke(1)
    assert link.read_output(0) == b"\xff" + bytes(15)


def test_stack_overflow_fault_is_reported_from_a_fresh_stack(fault_target: QemuTarget) -> None:
    link = fault_target.link
    link.write_input(0, bytes([4]) + bytes(15))
    with pytest.raises(DeviceFaultError, match="stacking.*stack overflow") as exc:
        link.invoke(1)
    assert exc.value.layer == 1 and "pc" not in exc.value.registers
    assert link.wait_ready(10.0).model_name == "fault"
