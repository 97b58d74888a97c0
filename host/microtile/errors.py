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
