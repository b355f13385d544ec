"""Logging set-up. stdout is reserved for protocol messages, so everything else goes to stderr."""

from __future__ import annotations

import logging
import os
import sys

_PROTOCOL_STDOUT = None


def route_logs_to_stderr() -> None:
    """Point sys.stdout at stderr so that library prints (tqdm, diffusers, warnings) never reach the protocol.

    The real stdout is kept for the protocol writer (`protocol_stdout()`). Called before torch is imported.
    """
    global _PROTOCOL_STDOUT
    if _PROTOCOL_STDOUT is None:
        _PROTOCOL_STDOUT = sys.stdout
    logging.basicConfig(
        level=os.environ.get("MF_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
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
