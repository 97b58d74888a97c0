"""Every error a user can meet, each with a message that says what to do next."""


class MicrotileError(Exception):
    """Base class: the CLI prints these as one clear message, without a traceback."""


class ModelFormatError(MicrotileError):
    """The file is not a readable TFLite flatbuffer."""


class UnsupportedOperatorError(MicrotileError):
    """An operator, or a variant of one, that microtile does not implement."""

    def __init__(self, op_index: int, opcode: str, problem: str, supported: str = ""):
        msg = f"operator #{op_index} {opcode}: {problem}"
        if supported:
            msg += f" (supported: {supported})"
        super().__init__(msg)
        self.op_index = op_index
        self.opcode = opcode


class DoesNotFitError(MicrotileError):
    """The model needs more flash or RAM than the board has."""


class ToolMissingError(MicrotileError):
    """A program (compiler, emulator) is not installed."""


class BuildError(MicrotileError):
    """The firmware did not compile or link."""


class BoardNotFoundError(MicrotileError):
    """No board (or emulator) could be reached."""


class LinkError(MicrotileError):
    """The device link failed: garbled frame, error reply, or no answer."""


class LinkTimeoutError(LinkError):
    """The board stopped answering within the time-out."""


class DeviceFaultError(LinkError):
    """The device took a CPU fault (HardFault, MemManage, BusFault, UsageFault).

    The device reports it in a FAULT error frame (docs/protocol.md) and resets; the
    host knows the layer's operator, so the runner fills in ``op`` before printing."""

    REGISTERS = ("pc", "lr", "cfsr", "hfsr", "mmfar", "bfar")

    def __init__(self, fault: str, layer: int | None = None, registers: dict[str, int] | None = None,
                 op: str | None = None):
        self.fault = fault
        self.layer = layer
        self.registers = dict(registers or {})
        self.op = op
        super().__init__(self._text())

    def _text(self) -> str:
        where = "outside any layer" if self.layer is None else f"in layer {self.layer}"
        if self.layer is not None and self.op:
            where += f" ({self.op})"
        regs = " ".join(f"{r.upper()}=0x{self.registers[r]:08x}" for r in self.REGISTERS if r in self.registers)
        return (f"the device faulted {where}: {self.fault}" + (f" [{regs}]" if regs else "")
                + "; this is a microtile bug: try --kernels reference and report it")

    def with_op(self, op: str | None) -> "DeviceFaultError":
        self.op = op
        self.args = (self._text(),)
        return self
