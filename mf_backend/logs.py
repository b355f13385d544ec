"""Logging set-up. stdout is reserved for protocol messages, so everything else goes to stderr; third-party
noise (diffusers, transformers, mediapipe/absl, Python warnings) goes only to the log file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

_PROTOCOL_STDOUT = None
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file() -> Path:
    """$MF_LOG_FILE, or ~/.cache/motionfollower/backend.log: every log record, ours and third-party."""
    env = os.environ.get("MF_LOG_FILE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "motionfollower" / "backend.log"


class _OursOrSevere(logging.Filter):
    """On the terminal: our own records, and others' only when they are errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("mf_backend") or record.name == "__main__" or record.levelno >= logging.ERROR


def route_logs_to_stderr() -> None:
    """Point sys.stdout at stderr so that library prints (tqdm, diffusers, warnings) never reach the protocol.

    The real stdout is kept for the protocol writer (`protocol_stdout()`). Called before torch is imported.
    """
    global _PROTOCOL_STDOUT
    if _PROTOCOL_STDOUT is None:
        _PROTOCOL_STDOUT = sys.stdout
        root = logging.getLogger()
        root.setLevel(os.environ.get("MF_LOG_LEVEL", "INFO"))
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setFormatter(logging.Formatter(FORMAT))
        terminal.addFilter(_OursOrSevere())
        root.addHandler(terminal)
        try:
            path = log_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            to_file = logging.FileHandler(path, encoding="utf-8")
            to_file.setFormatter(logging.Formatter(FORMAT))
            root.addHandler(to_file)
        except OSError:
            pass  # a read-only home: the terminal still gets our own messages
        logging.captureWarnings(True)  # warnings.warn → the "py.warnings" logger → the log file only
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def protocol_stdout():
    """The real stdout, for protocol messages only."""
    return _PROTOCOL_STDOUT or sys.__stdout__


def use_stderr_for_prints() -> None:
    """For the server: from now on print() goes to stderr."""
    route_logs_to_stderr()
    sys.stdout = sys.stderr
