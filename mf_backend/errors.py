"""Error types shared by the library, the CLI and the protocol.

Each application error carries a JSON-RPC code (documented in docs/protocol.md) and a `hint` that
tells the user what to do about it.
"""

from __future__ import annotations

from typing import Any

# Standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Application codes (-32000..-32099 is the range JSON-RPC reserves for servers).
WEIGHTS_MISSING = -32001
BAD_INPUT_MEDIA = -32002
CANCELLED = -32003
OUT_OF_MEMORY = -32004
BUSY = -32005
JOB_FAILED = -32006


class MFError(Exception):
    """Base class: a failure the user can act on."""

    code = JOB_FAILED

    def __init__(self, message: str, hint: str = "", data: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.data = dict(data or {})

    def to_data(self) -> dict[str, Any]:
        d = {"type": type(self).__name__, **self.data}
        if self.hint:
            d["hint"] = self.hint
        return d

    def __str__(self) -> str:
        return f"{self.message}\n  -> {self.hint}" if self.hint else self.message


class InvalidParams(MFError):
    code = INVALID_PARAMS


class WeightsMissing(MFError):
    code = WEIGHTS_MISSING


class BadInputMedia(MFError):
    code = BAD_INPUT_MEDIA


class Cancelled(MFError):
    code = CANCELLED

    def __init__(self, message: str = "job cancelled", hint: str = "", data: dict[str, Any] | None = None):
        super().__init__(message, hint, data)


class OutOfMemory(MFError):
    code = OUT_OF_MEMORY


class Busy(MFError):
    code = BUSY


class ClusterTooSmall(MFError):
    """The Ray cluster cannot give the job the GPUs it asked for (raised before any work)."""


class WorkerLost(MFError):
    """A Ray worker of the job died (process killed, node lost); the job stopped and left no output."""


def translate_exception(exc: BaseException) -> MFError:
    """Map library exceptions (torch OOM, OS errors) to MFError with an actionable hint."""
    if isinstance(exc, MFError):
        return exc
    name = type(exc).__name__
    text = str(exc)
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return OutOfMemory(
            f"out of memory: {text.splitlines()[0] if text else name}",
            "use fewer frames per window, a lower resolution, --precision fp16/bf16 or --checkpoint low-memory",
        )
    if isinstance(exc, FileNotFoundError):
        return BadInputMedia(f"file not found: {exc.filename or text}", "check the path and try again")
    if isinstance(exc, MemoryError):
        return OutOfMemory("host out of memory", "use fewer frames or a lower resolution")
    return MFError(f"{name}: {text}", "see the backend log (stderr) for the traceback")
