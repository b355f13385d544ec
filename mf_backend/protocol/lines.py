"""Line framing: one UTF-8 JSON object per line, with a size cap so no input can exhaust memory."""

from __future__ import annotations

import json
import threading
from typing import Any, BinaryIO, Iterator, TextIO, Union

MAX_LINE_BYTES = 4 * 1024 * 1024  # requests carry paths and parameters, never frames


class LineTooLong(Exception):
    pass


def read_lines(stream: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> Iterator[Union[bytes, LineTooLong]]:
    """Yield each line (without the newline); an oversized line is consumed and yielded as LineTooLong."""
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        if len(line) > max_bytes and not line.endswith(b"\n"):
            # Drain the rest of this line in bounded chunks.
            while True:
                rest = stream.readline(max_bytes)
                if not rest or rest.endswith(b"\n"):
                    break
            yield LineTooLong(f"line longer than {max_bytes} bytes")
            continue
        yield line.rstrip(b"\r\n")


class Writer:
    """Writes one JSON object per line to the protocol stream; safe to call from several threads."""

    def __init__(self, stream: Union[TextIO, BinaryIO]):
        self._stream = stream
        self._lock = threading.Lock()
        self._binary = not hasattr(stream, "encoding")

    def send(self, message: dict[str, Any]) -> None:
        # ensure_ascii keeps every line pure ASCII, so no host can mis-decode it; allow_nan=False keeps it JSON.
        text = json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=str)
        with self._lock:
            if self._binary:
                self._stream.write(text.encode("ascii") + b"\n")
            else:
                self._stream.write(text + "\n")
            self._stream.flush()
