"""Device link framing without a device: COBS, CRC, frames on real byte streams
(garbled, truncated, oversized), the firmware's own C framing code compiled for the
host, and DeviceLink over real pyserial transports (loop://, a TCP socket)."""
from __future__ import annotations

import ctypes
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microtile.errors import DeviceFaultError, LinkError, LinkTimeoutError
from microtile.link.protocol import (
    CMD_INFO,
    FRAME_ERROR,
    FRAME_LOG,
    INVOKE_MAX,
    MAX_PAYLOAD,
    REPLY,
    DeviceError,
    DeviceLink,
    Frame,
    FrameDecoder,
    FrameError,
    build_frame,
    cobs_decode,
    cobs_encode,
    max_encoded_size,
    parse_fault,
    parse_frame,
    parse_info,
)

REPO = Path(__file__).resolve().parents[1]

# Published COBS examples (Cheshire & Baker; the Wikipedia table).
COBS_VECTORS = [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize("raw,encoded", COBS_VECTORS)
def test_cobs_known_vectors(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


@given(st.binary(max_size=1200))
def test_cobs_round_trip_has_no_zero(data: bytes) -> None:
    enc = cobs_encode(data)
    assert 0 not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert cobs_decode(enc) == data


@pytest.mark.parametrize("bad", [b"\x05\x11\x22", b"\x03\x11\x00\x22", b"\x00"])
def test_cobs_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(FrameError):
        cobs_decode(bad)


def test_frame_layout_is_header_payload_crc() -> None:
    frame = build_frame(0x02, 7, b"\x00\x01abc")
    assert frame.endswith(b"\x00") and 0 not in frame[:-1]
    raw = cobs_decode(frame[:-1])
    assert raw[:4] == bytes([0x02, 7, 5, 0])  # type, seq, length u16 LE
    assert raw[4:9] == b"\x00\x01abc"
    assert raw[9:] == struct.pack("<I", zlib.crc32(raw[:9]))
    assert parse_frame(frame[:-1]) == Frame(0x02, 7, b"\x00\x01abc")


def test_payload_limit_is_enforced_on_send() -> None:
    build_frame(1, 1, bytes(MAX_PAYLOAD))
    with pytest.raises(LinkError, match="chunk"):
        build_frame(1, 1, bytes(MAX_PAYLOAD + 1))


@settings(max_examples=50)
@given(st.lists(st.binary(max_size=MAX_PAYLOAD), min_size=1, max_size=6), st.randoms())
def test_decoder_reassembles_frames_split_anywhere(payloads: list[bytes], rnd: random.Random) -> None:
    stream = b"".join(build_frame(0x81, i + 1, p) for i, p in enumerate(payloads))
    decoder = FrameDecoder()
    got: list = []
    pos = 0
    while pos < len(stream):
        step = rnd.randint(1, 97)
        got += decoder.feed(stream[pos:pos + step])
        pos += step
    assert got == [Frame(0x81, i + 1, p) for i, p in enumerate(payloads)]


def test_every_single_bit_flip_is_detected() -> None:
    good = build_frame(0x83, 42, bytes(range(40)))
    for i in range(len(good) - 1):
        for bit in range(8):
            bad = bytearray(good)
            bad[i] ^= 1 << bit
            items = FrameDecoder().feed(bytes(bad) + b"\x00")
            assert items, f"flip at byte {i} bit {bit} vanished"
            assert all(isinstance(x, FrameError) for x in items), f"flip at byte {i} bit {bit} accepted"


def test_truncated_frames_are_errors_and_stream_recovers() -> None:
    good = build_frame(0x81, 1, b"hello world")
    decoder = FrameDecoder()
    for cut in range(1, len(good) - 1):
        items = decoder.feed(good[:cut] + b"\x00")
        assert len(items) == 1 and isinstance(items[0], FrameError)
    assert decoder.feed(good) == [Frame(0x81, 1, b"hello world")]


def test_oversized_frame_is_one_error_then_recovers() -> None:
    decoder = FrameDecoder(max_encoded=max_encoded_size(MAX_PAYLOAD))
    items = decoder.feed(b"\x07" * 5000)
    assert items == []  # still inside the oversize frame
    items = decoder.feed(b"\x00" + build_frame(0x81, 2, b"ok"))
    assert isinstance(items[0], FrameError) and "longer" in str(items[0])
    assert items[1:] == [Frame(0x81, 2, b"ok")]


def test_wrong_length_field_is_rejected() -> None:
    body = struct.pack("<BBH", 1, 1, 9) + b"abc"  # claims 9 payload bytes, has 3
    enc = cobs_encode(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(FrameError, match="length"):
        parse_frame(enc)


# ---- the firmware's C framing code, compiled for the host ----

@pytest.fixture(scope="module")
def clink(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no host C compiler (gcc)")
    lib = tmp_path_factory.mktemp("clink") / "libmtlink.so"
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC",
                    "-I", str(REPO / "firmware" / "app"), str(REPO / "firmware" / "app" / "mt_link.c"),
                    "-o", str(lib)], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.mt_crc32.restype = ctypes.c_uint32
    dll.mt_crc32.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
    dll.mt_cobs_decode.restype = ctypes.c_int32
    dll.mt_cobs_decode.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    dll.mt_rx_feed.restype = ctypes.c_int
    return dll


WRITE_CB = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t)


def c_cobs_write(dll: ctypes.CDLL, data: bytes) -> bytes:
    out = bytearray()

    def cb(ptr, n):  # type: ignore[no-untyped-def]
        out.extend(ctypes.string_at(ptr, n))

    callback = WRITE_CB(cb)
    dll.mt_cobs_write(ctypes.c_char_p(data), ctypes.c_size_t(len(data)), callback)
    return bytes(out)


class CReceiver:
    """The device's frame receiver (mt_rx_feed), fed byte by byte."""

    def __init__(self, dll: ctypes.CDLL):
        self.dll = dll
        self.state = ctypes.create_string_buffer(4096)  # >= sizeof(mt_rx)
        dll.mt_rx_reset(self.state)

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        events = []
        n, err, seq = ctypes.c_size_t(), ctypes.c_uint32(), ctypes.c_uint8()
        for b in data:
            r = self.dll.mt_rx_feed(self.state, ctypes.c_uint8(b), ctypes.byref(n), ctypes.byref(err),
                                    ctypes.byref(seq))
            if r == 1:
                events.append(("frame", self.state.raw[:n.value]))
            elif r == 2:
                events.append(("error", err.value))
        return events


@given(st.binary(max_size=2000))
def test_c_crc32_matches_zlib(clink: ctypes.CDLL, data: bytes) -> None:
    assert clink.mt_crc32(0, data, len(data)) == zlib.crc32(data)
    half = len(data) // 2
    assert clink.mt_crc32(clink.mt_crc32(0, data[:half], half), data[half:], len(data) - half) == zlib.crc32(data)


@pytest.mark.parametrize("raw,encoded", COBS_VECTORS)
def test_c_cobs_known_vectors(clink: ctypes.CDLL, raw: bytes, encoded: bytes) -> None:
    assert c_cobs_write(clink, raw) == encoded + b"\x00"
    buf = ctypes.create_string_buffer(encoded, len(encoded))
    n = clink.mt_cobs_decode(buf, len(encoded))
    assert buf.raw[:n] == raw


@given(st.binary(max_size=1100))
def test_c_cobs_agrees_with_python(clink: ctypes.CDLL, data: bytes) -> None:
    assert c_cobs_write(clink, data) == cobs_encode(data) + b"\x00"


ERR = {"BAD_COBS": 1, "BAD_CRC": 2, "BAD_LENGTH": 3, "TOO_LONG": 4, "RX_OVERFLOW": 10}


def test_c_receiver_accepts_host_frames(clink: ctypes.CDLL) -> None:
    rx = CReceiver(clink)
    payload = bytes(range(256)) * 2
    frame = build_frame(0x02, 9, payload)
    events = rx.feed(b"\x00" + frame + b"\x00")  # empty frames around it are ignored
    assert events == [("frame", struct.pack("<BBH", 2, 9, 512) + payload +
                       struct.pack("<I", zlib.crc32(struct.pack("<BBH", 2, 9, 512) + payload)))]


def test_c_receiver_reports_each_kind_of_garbage(clink: ctypes.CDLL) -> None:
    rx = CReceiver(clink)
    good = build_frame(0x01, 3, b"abc")
    flipped = bytearray(good)
    flipped[5] ^= 0x10
    body = struct.pack("<BBH", 1, 1, 9) + b"abc"
    wrong_len = cobs_encode(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"
    assert rx.feed(bytes(flipped)) == [("error", ERR["BAD_CRC"])]
    assert rx.feed(good[:3] + b"\x00") == [("error", ERR["BAD_COBS"])]  # truncated inside a COBS block
    assert rx.feed(good[:4] + b"\x00") == [("error", ERR["BAD_LENGTH"])]  # truncated after the header
    assert rx.feed(b"\x02\x05\x00") == [("error", ERR["BAD_LENGTH"])]  # shorter than header + CRC
    assert rx.feed(wrong_len) == [("error", ERR["BAD_LENGTH"])]
    assert rx.feed(b"\x33" * 3000 + b"\x00") == [("error", ERR["TOO_LONG"])]
    # a well-formed frame whose payload exceeds the device's limit
    too_big = cobs_encode(struct.pack("<BBH", 2, 1, MAX_PAYLOAD + 64) + bytes(MAX_PAYLOAD + 64) + b"\0\0\0\0")
    assert rx.feed(too_big + b"\x00") == [("error", ERR["TOO_LONG"])]
    # a payload one byte over the limit: COBS fits it into the buffer, the limit check
    # catches it (the firmware used to echo it and write past its transmit buffer)
    body = struct.pack("<BBH", 8, 1, MAX_PAYLOAD + 1) + bytes(range(1, 256)) * 2 + b"\x01\x02\x03"
    over = cobs_encode(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"
    assert rx.feed(over) == [("error", ERR["TOO_LONG"])]
    # bytes lost in the port's receive ring: the frame is dropped, its delimiter reports it
    rx.feed(good[:5])
    clink.mt_rx_lost(rx.state)
    assert rx.feed(good[5:]) == [("error", ERR["RX_OVERFLOW"])]
    # and after all that, a good frame still gets through
    assert [e[0] for e in rx.feed(good)] == ["frame"]


@settings(max_examples=200)
@given(st.binary(max_size=700))
def test_c_receiver_never_accepts_random_garbage(clink: ctypes.CDLL, garbage: bytes) -> None:
    rx = CReceiver(clink)
    for kind, value in rx.feed(garbage + b"\x00"):
        if kind == "frame":  # only possible if the garbage happens to be a valid frame
            frame = parse_frame(cobs_encode(value))  # type: ignore[arg-type]
            assert frame is not None


# ---- DeviceLink on real pyserial transports ----

def _info_payload(tail: bytes = b"") -> bytes:
    """An INFO reply as the documented layout has it: 1 input, 1 output, empty strings."""
    info = bytearray(32 + 8) + b"\x00\x00\x00"
    info[0] = 1
    struct.pack_into("<H", info, 2, MAX_PAYLOAD)
    struct.pack_into("<HH", info, 20, 1, 1)
    return bytes(info) + tail


def _loop_link(timeout: float = 1.0) -> DeviceLink:
    return DeviceLink.open("loop://", timeout=timeout)


def test_link_skips_stale_replies_and_collects_logs() -> None:
    link = _loop_link()
    info = _info_payload()
    # a stale reply from an older request, a log line, then the reply to seq 1
    link.send_raw(build_frame(CMD_INFO | REPLY, 200, b"old") + build_frame(FRAME_LOG, 0, b"booted")
                  + build_frame(CMD_INFO | REPLY, 1, bytes(info)))
    got = link.info()
    assert got.proto_version == 1 and got.num_inputs == 1 and got.num_outputs == 1
    assert link.logs == ["booted"]
    assert link.stale_frames == 1


def test_link_raises_device_error_message() -> None:
    link = _loop_link()
    link.send_raw(build_frame(FRAME_ERROR, 1, struct.pack("<HB", 7, 2) + b"offset past the end"))
    with pytest.raises(DeviceError, match="OUT_OF_RANGE on WRITE_INPUT: offset past the end") as exc:
        link.request(0x02, b"\x00" * 6)
    assert exc.value.code == 7


class FakeDevice:
    """A TCP peer that answers each request frame the link sends with the bytes
    ``answer(frame)`` returns: the byte streams a device sends, without a device."""

    def __init__(self, answer: "Callable[[Frame], bytes]"):
        self.answer = answer
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.link = DeviceLink.open(f"socket://127.0.0.1:{self.server.getsockname()[1]}", timeout=0.5)

    def _serve(self) -> None:
        self.conn, _ = self.server.accept()
        decoder = FrameDecoder()
        while True:
            try:
                data = self.conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            for item in decoder.feed(data):
                if isinstance(item, Frame):
                    self.conn.sendall(self.answer(item))

    def close(self) -> None:
        self.link.close()
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def _error(seq: int, code: int, cmd: int, text: bytes) -> bytes:
    return build_frame(FRAME_ERROR, seq, struct.pack("<HB", code, cmd) + text)


def test_stray_seq0_error_does_not_fail_the_next_request() -> None:
    # a stray byte before the request: the device answers it with a seq-0 BAD_COBS
    # error, then answers the request itself
    dev = FakeDevice(lambda f: _error(0, 1, 0, b"bad COBS encoding")
                     + build_frame(f.type | REPLY, f.seq, _info_payload()))
    try:
        assert dev.link.info().num_inputs == 1
        assert dev.link.line_errors == 1
    finally:
        dev.close()


def test_seq0_errors_and_garbled_frames_are_named_when_the_request_times_out() -> None:
    garbled = bytearray(build_frame(CMD_INFO | REPLY, 1, b"x" * 10))
    garbled[3] ^= 1
    dev = FakeDevice(lambda f: _error(0, 2, 0, b"bad CRC") + bytes(garbled))
    try:
        with pytest.raises(LinkTimeoutError, match="stopped answering after 0.5 s.*2 unreadable.*BAD_CRC"):
            dev.link.info()
    finally:
        dev.close()


def test_error_with_the_request_seq_fails_it_at_once() -> None:
    dev = FakeDevice(lambda f: _error(f.seq, 6, f.type, b"INVOKE needs a count u32 in 1..10000"))
    try:
        with pytest.raises(DeviceError, match="BAD_ARGUMENT on INVOKE"):
            dev.link.request(0x03, struct.pack("<I", 0))
    finally:
        dev.close()


# FAULT frames as the firmware sent them on QEMU (tests/fixtures/fault_model, kinds 1
# and 4), recorded byte for byte with their leading delimiter.
RECORDED_BUS_FAULT = bytes.fromhex(
    "00027f022a020904030105020103f21904080f0a02080282010101010101010101010101103001637075206661756c743daa34fc00")
RECORDED_STACK_OVERFLOW = bytes.fromhex(
    "00027f022a0209040301050201010101010101010101029201010101010101010105c6fdff1f0e637075206661756c7444e1079b00")


def test_recorded_fault_frame_raises_device_fault_error() -> None:
    dev = FakeDevice(lambda f: RECORDED_BUS_FAULT)
    try:
        with pytest.raises(DeviceFaultError) as exc:
            dev.link.invoke(1)
    finally:
        dev.close()
    err = exc.value
    assert err.layer == 1
    assert err.fault == "BusFault: precise data bus error at 0x30000000"
    assert err.registers == {"pc": 0x080019F2, "lr": 0x08000A0F, "cfsr": 0x8200, "hfsr": 0,
                             "mmfar": 0, "bfar": 0x30000000}
    assert "in layer 1" in str(err) and "PC=0x080019f2" in str(err)


def test_recorded_stack_overflow_fault_has_no_pc() -> None:
    frames = FrameDecoder().feed(RECORDED_STACK_OVERFLOW)
    assert len(frames) == 1 and isinstance(frames[0], Frame) and frames[0].seq == 0
    err = parse_fault(frames[0].payload)
    assert err.layer == 1 and "stacking" in err.fault and "stack overflow" in err.fault
    assert "pc" not in err.registers and err.registers["bfar"] == 0x1FFFFDC6


@pytest.mark.parametrize("exception,cfsr,hfsr,text", [
    (3, 0, 1 << 30, "HardFault: escalated to HardFault"),
    (6, 1 << 16, 0, "UsageFault: undefined instruction"),
    (6, 1 << 24, 0, "UsageFault: unaligned access"),
    (6, 1 << 17, 0, "UsageFault: invalid state (Thumb bit clear)"),
    (4, 0x82, 0, "MemManage: data access violation at 0x00000010"),
    (21, 0, 0, "unexpected interrupt IRQ 5"),
    (2, 0, 0, "unexpected NMI exception"),
])
def test_fault_frame_layout(exception: int, cfsr: int, hfsr: int, text: str) -> None:
    payload = struct.pack("<HBBHH6IB", 9, 0x01, 1, exception, 0xFFFF, 0x100, 0x200, cfsr, hfsr, 0x10, 0,
                          1) + b"cpu fault"
    err = parse_fault(payload)
    assert err.fault == text and err.layer is None
    assert err.registers["pc"] == 0x100 and err.registers["cfsr"] == cfsr
    assert "outside any layer" in str(err)


def test_text_fault_from_older_firmware_is_still_a_fault() -> None:
    err = parse_fault(struct.pack("<HB", 9, 0) + b"hard fault at pc 0x08000123")
    assert isinstance(err, DeviceFaultError) and err.fault == "hard fault at pc 0x08000123"


def test_payload_over_the_limit_is_refused_on_receive() -> None:
    body = struct.pack("<BBH", 0x88, 1, MAX_PAYLOAD + 1) + bytes(MAX_PAYLOAD + 1)
    enc = cobs_encode(body + struct.pack("<I", zlib.crc32(body)))
    assert len(enc) <= max_encoded_size(MAX_PAYLOAD)  # fits the encoded limit, so only this check catches it
    with pytest.raises(FrameError, match="exceeds the 512-byte"):
        parse_frame(enc)


def test_info_reads_appended_overflow_count_and_invoke_max() -> None:
    info = parse_info(_info_payload(struct.pack("<I", 0) + b"\x02ok" + struct.pack("<II", 3, 10000)))
    assert info.port_status_text == "ok" and info.rx_overflows == 3 and info.invoke_max == 10000
    older = parse_info(_info_payload(struct.pack("<I", 0) + b"\x02ok"))
    assert older.rx_overflows == 0 and older.invoke_max == 0


def test_invoke_count_is_checked_before_sending() -> None:
    link = _loop_link()
    for n in (0, INVOKE_MAX + 1, 2**32):
        with pytest.raises(LinkError, match="1..10000"):
            link.invoke(n)


def test_interrupted_invoke_is_an_error() -> None:
    dev = FakeDevice(lambda f: build_frame(f.type | REPLY, f.seq, struct.pack("<IQ", 3, 1234)))
    try:
        with pytest.raises(LinkError, match="stopped after 3 of 10 runs"):
            dev.link.invoke(10)
    finally:
        dev.close()


def test_link_times_out_on_silent_device() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    conns: list[socket.socket] = []
    t = threading.Thread(target=lambda: conns.append(server.accept()[0]), daemon=True)
    t.start()
    link = DeviceLink.open(f"socket://127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(LinkTimeoutError, match="stopped answering after 0.5 s"):
            link.info()
        assert time.monotonic() - start < 2.0
    finally:
        link.close()
        for c in conns:
            c.close()
        server.close()


def test_open_bad_url_says_what_to_do() -> None:
    with pytest.raises(LinkError, match="cannot open"):
        DeviceLink.open("socket://127.0.0.1:1")
