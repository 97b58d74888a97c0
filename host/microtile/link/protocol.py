"""Host side of the device link (docs/protocol.md): COBS framing with CRC-32, and
``DeviceLink``, the one owner of a board's serial port (``/dev/ttyACM*``) or of
QEMU's UART socket (``socket://127.0.0.1:PORT``)."""
from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

from microtile.errors import DeviceFaultError, LinkError, LinkTimeoutError

PROTO_VERSION = 1
MAX_PAYLOAD = 512  # the firmware's MT_LINK_MAX_PAYLOAD; INFO reports the real value
MIN_PAYLOAD = 64  # a device reporting less cannot even send INFO
INVOKE_MAX = 10000  # the firmware's MT_INVOKE_MAX: INVOKE counts above get BAD_ARGUMENT
HEADER = struct.Struct("<BBH")  # type, seq, payload length
CRC = struct.Struct("<I")

CMD_INFO = 0x01
CMD_WRITE_INPUT = 0x02
CMD_INVOKE = 0x03
CMD_READ_OUTPUT = 0x04
CMD_READ_COUNTERS = 0x05
CMD_RESET = 0x06
CMD_CALIBRATE = 0x07
CMD_ECHO = 0x08
REPLY = 0x80
FRAME_LOG = 0x70
FRAME_ERROR = 0x7F

ERROR_NAMES = {
    1: "BAD_COBS",
    2: "BAD_CRC",
    3: "BAD_LENGTH",
    4: "TOO_LONG",
    5: "UNKNOWN_COMMAND",
    6: "BAD_ARGUMENT",
    7: "OUT_OF_RANGE",
    8: "MODEL",
    9: "FAULT",
    10: "RX_OVERFLOW",
    11: "COUNTER",
}
ERR_FAULT = 9
# INFO/READ_COUNTERS counter unit byte. "none": the firmware has no working counter
# (a board image on QEMU, where there is no DWT): its counts are 0 and mean "n/a".
COUNTER_UNITS = {0: "instructions", 1: "cycles", 2: "none"}

COMMAND_NAMES = {
    CMD_INFO: "INFO",
    CMD_WRITE_INPUT: "WRITE_INPUT",
    CMD_INVOKE: "INVOKE",
    CMD_READ_OUTPUT: "READ_OUTPUT",
    CMD_READ_COUNTERS: "READ_COUNTERS",
    CMD_RESET: "RESET",
    CMD_CALIBRATE: "CALIBRATE",
    CMD_ECHO: "ECHO",
}


class FrameError(LinkError):
    """A received frame that fails COBS, length or CRC checks."""


class DeviceError(LinkError):
    """The device answered with an ERROR frame."""

    def __init__(self, code: int, command: int, message: str):
        name = ERROR_NAMES.get(code, f"code {code}")
        cmd = COMMAND_NAMES.get(command, f"0x{command:02x}") if command else "frame"
        super().__init__(f"device error {name} on {cmd}: {message}")
        self.code = code
        self.code_name = name
        self.command = command
        self.device_message = message


# ---- COBS, CRC, frames ----

def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result has no 0x00 bytes."""
    out = bytearray()
    start = 0
    n = len(data)
    while True:
        run = 0
        while start + run < n and run < 254 and data[start + run] != 0:
            run += 1
        out.append(run + 1)
        out += data[start:start + run]
        start += run
        if run == 254:
            if start == n:
                break
            continue  # a full block carries no implied zero
        if start >= n:
            break
        start += 1  # the zero the code byte stands for
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode; raises FrameError on malformed input."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        i += 1
        if code == 0:
            raise FrameError("COBS: zero byte inside a frame")
        run = code - 1
        if run > n - i:
            raise FrameError("COBS: block runs past the end of the frame (truncated)")
        block = data[i:i + run]
        if 0 in block:
            raise FrameError("COBS: zero byte inside a frame")
        out += block
        i += run
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes


def build_frame(ftype: int, seq: int, payload: bytes = b"", max_payload: int = MAX_PAYLOAD) -> bytes:
    """Encoded frame including the trailing 0x00 delimiter."""
    if len(payload) > max_payload:
        raise LinkError(f"payload of {len(payload)} bytes exceeds the {max_payload}-byte frame limit; chunk it")
    body = HEADER.pack(ftype & 0xFF, seq & 0xFF, len(payload)) + bytes(payload)
    return cobs_encode(body + CRC.pack(crc32(body))) + b"\x00"


def parse_frame(encoded: bytes, max_payload: int = MAX_PAYLOAD) -> Frame:
    """Decode one frame given without its delimiter; checks length, CRC and the
    payload limit."""
    raw = cobs_decode(encoded)
    if len(raw) < HEADER.size + CRC.size:
        raise FrameError(f"frame of {len(raw)} bytes is shorter than header + CRC")
    body, (crc,) = raw[:-CRC.size], CRC.unpack(raw[-CRC.size:])
    if crc32(body) != crc:
        raise FrameError(f"CRC mismatch (got 0x{crc:08x}, computed 0x{crc32(body):08x})")
    ftype, seq, length = HEADER.unpack(body[:HEADER.size])
    if length != len(body) - HEADER.size:
        raise FrameError(f"length field {length} does not match the {len(body) - HEADER.size}-byte payload")
    if length > max_payload:
        raise FrameError(f"payload of {length} bytes exceeds the {max_payload}-byte frame limit")
    return Frame(ftype, seq, body[HEADER.size:])


def max_encoded_size(max_payload: int) -> int:
    """Longest encoded frame (without delimiter) for a payload limit."""
    raw = HEADER.size + max_payload + CRC.size
    return raw + raw // 254 + 1


class FrameDecoder:
    """Splits a byte stream at 0x00 delimiters. ``feed`` returns Frames and, for
    garbled input, FrameError instances (not raised: the stream goes on)."""

    def __init__(self, max_encoded: int = max_encoded_size(MAX_PAYLOAD)):
        self.max_encoded = max_encoded
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        out: list[Frame | FrameError] = []
        for chunk_end in _split_keep(data):
            piece, delimited = chunk_end
            if not self._overflow:
                self._buf += piece
                if len(self._buf) > self.max_encoded:
                    self._overflow = True
                    self._buf.clear()
            if delimited:
                if self._overflow:
                    out.append(FrameError(f"frame longer than {self.max_encoded} encoded bytes"))
                elif self._buf:
                    try:
                        out.append(parse_frame(bytes(self._buf)))
                    except FrameError as exc:
                        out.append(exc)
                self._buf.clear()
                self._overflow = False
        return out

    def pending(self) -> int:
        return len(self._buf)


def _split_keep(data: bytes) -> list[tuple[bytes, bool]]:
    parts = bytes(data).split(b"\x00")
    return [(p, i < len(parts) - 1) for i, p in enumerate(parts)]


# ---- decoded replies ----

@dataclass(frozen=True)
class DeviceInfo:
    proto_version: int
    counter_unit: str
    max_payload: int
    clock_hz: int
    model_hash: int
    arena_size: int
    stack_size: int
    num_layers: int
    max_layers: int
    model_arena_size: int
    input_sizes: list[int]
    output_sizes: list[int]
    build_id: str
    model_name: str
    board: str
    port_status: int = 0  # MT_PORT_FAIL_* bits (firmware/include/mt_port.h); 0: board up as configured
    port_status_text: str = ""  # e.g. "hse-timeout pll-timeout; running on the reset clock"
    rx_overflows: int = 0  # times the device's receive buffer overflowed since boot
    invoke_max: int = 0  # largest INVOKE count (0: older firmware that does not say)

    @property
    def num_inputs(self) -> int:
        return len(self.input_sizes)

    @property
    def num_outputs(self) -> int:
        return len(self.output_sizes)


@dataclass(frozen=True)
class Counters:
    unit: str
    layers: list[int]  # per layer, last invoke
    total: int  # sum of layers
    stack_bytes: int  # max stack used during the last INVOKE (stack painting)
    invokes: int  # N of the last INVOKE (0: none yet)


def parse_info(p: bytes) -> DeviceInfo:
    if len(p) < 32:
        raise LinkError(f"INFO reply of {len(p)} bytes is too short; firmware and host versions differ?")
    (ver, unit, max_payload, clock, mhash, arena, stack, n_in, n_out, n_layers, max_layers,
     model_arena) = struct.unpack_from("<BBHIIIIHHHHI", p, 0)
    if ver != PROTO_VERSION:
        raise LinkError(f"device speaks protocol v{ver}, host v{PROTO_VERSION}: rebuild the firmware")
    off = 32
    sizes = list(struct.unpack_from(f"<{n_in + n_out}I", p, off))
    off += 4 * (n_in + n_out)
    strings = []
    for _ in range(3):
        n = p[off]
        strings.append(p[off + 1:off + 1 + n].decode("utf-8", "replace"))
        off += 1 + n
    status, status_text, overflows, invoke_max = 0, "", 0, 0
    if len(p) >= off + 5:  # appended by newer firmware: port status u32 + text
        status = struct.unpack_from("<I", p, off)[0]
        n = p[off + 4]
        status_text = p[off + 5:off + 5 + n].decode("utf-8", "replace")
        off += 5 + n
    if len(p) >= off + 8:  # appended after it: receive overflows u32, INVOKE maximum u32
        overflows, invoke_max = struct.unpack_from("<II", p, off)
    return DeviceInfo(ver, COUNTER_UNITS.get(unit, f"unit{unit}"), max_payload, clock, mhash, arena, stack,
                      n_layers, max_layers, model_arena, sizes[:n_in], sizes[n_in:], *strings,
                      port_status=status, port_status_text=status_text, rx_overflows=overflows,
                      invoke_max=invoke_max)


# ---- FAULT frames ----

FAULT_LAYOUT = struct.Struct("<HBBHH6IB")  # code, command, layout, exception, layer, 6 registers, flags
FAULT_NO_LAYER = 0xFFFF
FAULT_FRAME_VALID = 0x01  # PC and LR were read from a stacked frame inside the stack
EXCEPTION_NAMES = {2: "NMI", 3: "HardFault", 4: "MemManage", 5: "BusFault", 6: "UsageFault",
                   11: "SVCall", 12: "DebugMonitor", 14: "PendSV", 15: "SysTick"}
# CFSR bits (ARMv7-M Architecture Reference Manual, B3.2.15): MMFSR 0-7, BFSR 8-15, UFSR 16-31
CFSR_CAUSES = {
    0: "instruction access violation", 1: "data access violation",
    3: "MemManage fault on exception return (unstacking)", 4: "MemManage fault on exception entry (stacking)",
    5: "MemManage fault during lazy FP state preservation",
    8: "instruction bus error", 9: "precise data bus error", 10: "imprecise data bus error",
    11: "bus fault on exception return (unstacking)", 12: "bus fault on exception entry (stacking)",
    13: "bus fault during lazy FP state preservation",
    16: "undefined instruction", 17: "invalid state (Thumb bit clear)",
    18: "invalid PC on exception return", 19: "no coprocessor (FPU disabled)",
    24: "unaligned access", 25: "divide by zero",
}
CFSR_MMARVALID, CFSR_BFARVALID = 1 << 7, 1 << 15
HFSR_CAUSES = {1: "vector table read fault", 30: "escalated to HardFault", 31: "debug event"}


def fault_text(exception: int, cfsr: int, hfsr: int, mmfar: int, bfar: int) -> str:
    """e.g. "BusFault: precise data bus error at 0x30000000"."""
    if exception == 0:
        name = "CPU fault"
    elif exception >= 16:
        name = f"unexpected interrupt IRQ {exception - 16}"
    else:
        name = EXCEPTION_NAMES.get(exception, f"exception {exception}")
        if exception not in (3, 4, 5, 6):
            name = f"unexpected {name} exception"
    causes = [text for bit, text in CFSR_CAUSES.items() if cfsr >> bit & 1]
    if cfsr & CFSR_MMARVALID:
        causes.append(f"at 0x{mmfar:08x}")
    if cfsr & CFSR_BFARVALID:
        causes.append(f"at 0x{bfar:08x}")
    causes += [text for bit, text in HFSR_CAUSES.items() if hfsr >> bit & 1]
    return name + (": " + ", ".join(causes).replace(", at ", " at ") if causes else "")


def parse_fault(payload: bytes) -> DeviceFaultError:
    """The DeviceFaultError a FAULT frame (ERROR code 9, seq 0) describes."""
    if len(payload) < FAULT_LAYOUT.size or payload[3] != 1:  # older firmware: a text message
        return DeviceFaultError(payload[3:].decode("utf-8", "replace") or "CPU fault")
    (_, _, _, exception, layer, pc, lr, cfsr, hfsr, mmfar, bfar,
     flags) = FAULT_LAYOUT.unpack_from(payload)
    text = fault_text(exception, cfsr, hfsr, mmfar, bfar)
    registers = {"cfsr": cfsr, "hfsr": hfsr, "mmfar": mmfar, "bfar": bfar}
    if flags & FAULT_FRAME_VALID:
        registers.update(pc=pc, lr=lr)
    else:
        text += " (stacked PC and LR unreadable: the stack pointer left the stack, e.g. a stack overflow)"
    return DeviceFaultError(text, None if layer == FAULT_NO_LAYER else layer, registers)


# ---- the link ----

class DeviceLink:
    """Request/response client for the microtile device app.

    ``port`` is any pyserial-like object (read(n) honouring .timeout, write, close);
    use ``DeviceLink.open(url)`` for a URL or device path."""

    def __init__(self, port: Any, timeout: float = 5.0, name: str = "",
                 on_log: Callable[[str], None] | None = None):
        self.port = port
        self.timeout = timeout
        self.name = name or getattr(port, "name", None) or getattr(port, "port", None) or "device"
        self.on_log = on_log
        self.logs: list[str] = []
        self.stale_frames = 0  # replies to earlier requests, skipped
        self.line_errors = 0  # garbled frames and seq-0 errors, skipped (see request)
        self._decoder = FrameDecoder()
        self._pending: list[Frame | FrameError] = []
        self._seq = 0
        self._info: DeviceInfo | None = None
        self._max_payload = MAX_PAYLOAD

    @classmethod
    def open(cls, target: str | Any, baudrate: int = 115200, timeout: float = 5.0,
             **kwargs: Any) -> "DeviceLink":
        """``target``: ``socket://host:port``, ``/dev/ttyACM0``, or an open serial object."""
        if not isinstance(target, str):
            return cls(target, timeout=timeout, **kwargs)
        import serial

        try:
            port = serial.serial_for_url(target, baudrate=baudrate, timeout=0.05, write_timeout=timeout)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open {target}: {exc}; check the board is connected (or QEMU is running) "
                            "and that no other program holds the port") from None
        return cls(port, timeout=timeout, name=target, **kwargs)

    # -- context manager --
    def __enter__(self) -> "DeviceLink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.port.close()
        except Exception:  # closing a dead socket must not mask the real error
            pass

    # -- raw frames --
    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests use this to send garbled frames)."""
        try:
            self.port.write(data)
            flush = getattr(self.port, "flush", None)
            if flush:
                flush()
        except Exception as exc:
            raise LinkError(f"writing to {self.name} failed: {exc}; the board or QEMU went away") from None

    def send_frame(self, ftype: int, seq: int, payload: bytes = b"") -> None:
        # A leading 0x00 ends any half-received garbage on the device first.
        self.send_raw(b"\x00" + build_frame(ftype, seq, payload, self._max_payload))

    def receive(self, timeout: float | None = None, what: str = "a frame") -> Frame | FrameError:
        """Next frame (or FrameError for a garbled one); LOG frames are collected."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            while self._pending:
                item = self._pending.pop(0)
                if isinstance(item, Frame) and item.type == FRAME_LOG:
                    text = item.payload.decode("utf-8", "replace")
                    self.logs.append(text)
                    if self.on_log:
                        self.on_log(text)
                    continue
                return item
            if time.monotonic() >= deadline:
                raise LinkTimeoutError(
                    f"board stopped answering after {limit:.1f} s: no reply to {what} on {self.name}. "
                    "Check that the board runs microtile firmware and is not stuck (reset it or restart "
                    "QEMU), or raise the time-out for long invokes")
            try:
                data = self._read_available()
            except Exception as exc:
                raise LinkError(f"reading from {self.name} failed: {exc}; the board or QEMU went away") from None
            if data:
                self._pending.extend(self._decoder.feed(data))

    def _read_available(self) -> bytes:
        """Block up to the port's short timeout for one byte, then take whatever else
        has arrived, so a reply is not read byte by byte."""
        data = self.port.read(1)
        if not data:
            return b""
        sock = getattr(self.port, "_socket", None)  # pyserial socket://: in_waiting is only 0/1
        if sock is not None:
            import select

            chunks = [data]
            while select.select([sock], [], [], 0)[0]:
                more = sock.recv(65536)
                if not more:
                    break
                chunks.append(more)
            return b"".join(chunks)
        waiting = getattr(self.port, "in_waiting", 0)
        return data + self.port.read(waiting) if waiting else data

    def _next_seq(self) -> int:
        self._seq = self._seq % 255 + 1  # 1..255; 0 marks unsolicited frames
        return self._seq

    def request(self, cmd: int, payload: bytes = b"", timeout: float | None = None) -> bytes:
        """Send one command, return the reply payload.

        A request fails only on its own reply (an ERROR frame with its seq raises
        DeviceError) or its own time-out. Everything else is skipped: replies to earlier
        (timed-out) requests, garbled frames, and seq-0 errors, which answer a frame the
        device could not read, such as a stray byte before this request; those are
        named in the time-out message. The one exception is a FAULT (seq 0): the device
        resets, so the request can never be answered, and DeviceFaultError is raised."""
        seq = self._next_seq()
        name = COMMAND_NAMES.get(cmd, f"command 0x{cmd:02x}")
        self.send_frame(cmd, seq, payload)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        noise: list[str] = []
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                item = self.receive(remaining, what=f"{name} (seq {seq})")
            except LinkTimeoutError as exc:
                if not noise:
                    raise
                raise LinkTimeoutError(f"{exc}. Meanwhile the line carried {len(noise)} unreadable frame(s), "
                                       f"e.g. {noise[0]}: check the baud rate and cable") from None
            if isinstance(item, FrameError):
                self.line_errors += 1
                noise.append(f"a garbled frame from the device ({item})")
                continue
            if item.type == FRAME_ERROR:
                code, command = struct.unpack_from("<HB", item.payload.ljust(3, b"\0"))
                if code == ERR_FAULT and item.seq == 0:
                    raise parse_fault(item.payload)
                err = DeviceError(code, command, item.payload[3:].decode("utf-8", "replace"))
                if item.seq == seq:
                    raise err
                if item.seq == 0:
                    self.line_errors += 1
                    noise.append(f"the device's {err.code_name} error for a frame it could not read")
                else:
                    self.stale_frames += 1
                continue
            if item.seq != seq:
                self.stale_frames += 1  # a late reply to an earlier request
                continue
            if item.type != cmd | REPLY:
                raise LinkError(f"{name} (seq {seq}) got a reply of type 0x{item.type:02x}; "
                                "host and firmware disagree on the protocol: rebuild the firmware")
            return item.payload

    # -- commands --
    def info(self, timeout: float | None = None) -> DeviceInfo:
        info = parse_info(self.request(CMD_INFO, timeout=timeout))
        if info.max_payload < MIN_PAYLOAD:
            raise LinkError(f"the device reports a maximum payload of {info.max_payload} bytes, below the "
                            f"protocol's {MIN_PAYLOAD}: rebuild the firmware")
        self._info = info
        # never more than this host decodes, whatever the device claims
        self._max_payload = min(info.max_payload, MAX_PAYLOAD)
        return info

    def _ensure_info(self) -> DeviceInfo:
        return self._info if self._info is not None else self.info()

    def write_input(self, index: int, data: bytes) -> None:
        info = self._ensure_info()
        if not 0 <= index < info.num_inputs:
            raise LinkError(f"input index {index} out of range: the model has {info.num_inputs} inputs")
        if len(data) != info.input_sizes[index]:
            raise LinkError(f"input {index} takes {info.input_sizes[index]} bytes, got {len(data)}")
        chunk = self._max_payload - 6
        for off in range(0, len(data), chunk):
            self.request(CMD_WRITE_INPUT, struct.pack("<HI", index, off) + bytes(data[off:off + chunk]))

    def invoke(self, n: int = 1, timeout: float | None = None) -> int:
        """Run the model n times; returns the counter total of the last run."""
        if not 1 <= n <= INVOKE_MAX:
            raise LinkError(f"invoke count must be in 1..{INVOKE_MAX}, got {n}")
        payload = self.request(CMD_INVOKE, struct.pack("<I", n), timeout=timeout)
        done, total = struct.unpack("<IQ", payload[:12])
        if done != n:  # a byte from the host stopped it between two runs (docs/protocol.md)
            raise LinkError(f"INVOKE stopped after {done} of {n} runs: something else was sent on "
                            f"{self.name} meanwhile; only one program may use the port")
        return total

    def read_output(self, index: int) -> bytes:
        info = self._ensure_info()
        if not 0 <= index < info.num_outputs:
            raise LinkError(f"output index {index} out of range: the model has {info.num_outputs} outputs")
        size = info.output_sizes[index]
        out = bytearray()
        while len(out) < size:
            n = min(self._max_payload, size - len(out))
            part = self.request(CMD_READ_OUTPUT, struct.pack("<HIH", index, len(out), n))
            if len(part) != n:
                raise LinkError(f"READ_OUTPUT returned {len(part)} bytes, asked for {n}")
            out += part
        return bytes(out)

    def read_counters(self) -> Counters:
        layers: list[int] = []
        while True:
            p = self.request(CMD_READ_COUNTERS, struct.pack("<H", len(layers)))
            unit, _, num_layers, first, count, invokes, stack, total = struct.unpack_from("<BBHHHIIQ", p, 0)
            if first != len(layers):
                raise LinkError(f"READ_COUNTERS answered from layer {first}, asked for {len(layers)}")
            layers += struct.unpack_from(f"<{count}Q", p, 24)
            if len(layers) >= num_layers or count == 0:
                return Counters(COUNTER_UNITS.get(unit, f"unit{unit}"), layers, total, stack, invokes)

    def calibrate(self, iterations: int) -> int:
        """Counter units measured for a loop of exactly 2 * iterations instructions."""
        p = self.request(CMD_CALIBRATE, struct.pack("<I", iterations), timeout=max(self.timeout, 30.0))
        return struct.unpack_from("<Q", p, 0)[0]

    def echo(self, payload: bytes) -> bytes:
        return self.request(CMD_ECHO, payload)

    def reset(self, timeout: float | None = None) -> DeviceInfo:
        """Reset the MCU and wait until the app answers INFO again."""
        self.request(CMD_RESET)
        return self.wait_ready(self.timeout if timeout is None else timeout)

    def wait_ready(self, timeout: float) -> DeviceInfo:
        """Poll INFO until the device answers (after boot or reset)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                return self.info(timeout=min(0.5, max(0.05, deadline - time.monotonic())))
            except LinkTimeoutError as exc:
                last = exc
            except (DeviceError, FrameError) as exc:  # noise from a half-booted device
                last = exc
            except LinkError as exc:
                last = exc
        raise LinkTimeoutError(f"board stopped answering after {timeout:.1f} s: no INFO reply on {self.name} "
                               f"({last}). Check the firmware booted (QEMU log, or reset the board)")
