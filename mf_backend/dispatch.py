"""Job dispatch: a `prepare`, `edit` or `demo` request → the job's function.

Only the faces import this module (the CLI and the protocol server; the add-on goes through the
protocol), so they share one behaviour (same checks, same errors, same output layout) and no job
module imports the dispatcher back.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from mf_backend.errors import InvalidParams
from mf_backend.jobs import JobContext
from mf_backend.logs import log_file
from mf_backend.params import JobParams
from mf_backend.preflight import preflight

log = logging.getLogger(__name__)

MAX_AUTO_THREADS = 8


def check_params(method: str, params: JobParams) -> None:
    """Fail fast, before any work starts (mf_backend/preflight.py)."""
    preflight(method, params)


def use_threads(threads: int) -> int:
    """Set torch's CPU threads for this job: `threads`, or (0) half the cores, at most 8: with other work on
    a machine, all cores per process make every process slower (docs/performance.md)."""
    import torch

    n = threads or max(1, min(MAX_AUTO_THREADS, (os.cpu_count() or 2) // 2))
    torch.set_num_threads(n)
    return n


def run_job(method: str, params: JobParams, ctx: JobContext) -> dict[str, Any]:
    """Run `prepare`, `edit` or `demo`; returns the JSON-able result (paths are absolute strings), with
    `warnings` (unknown or deprecated params keys, also logged) when there are any."""
    check_params(method, params)
    for note in params.warnings:
        log.warning("%s: %s", method, note)
    threads = use_threads(params.threads)
    log.info("%s → %s (%d CPU threads; log file: %s)", method, params.out_path, threads, log_file())
    result = _job(method)(params, ctx)
    return {**result, "warnings": list(params.warnings)} if params.warnings else result


def _job(method: str) -> Callable[[JobParams, JobContext], dict[str, Any]]:
    if method == "prepare":
        from mf_backend.prepare import prepare

        return prepare
    if method == "edit":
        from mf_backend.edit import edit

        return edit
    if method == "demo":
        from mf_backend.demo import demo

        return demo
    raise InvalidParams(f"unknown job kind {method!r}")
