"""Job dispatch: a `prepare`, `edit` or `demo` request → the job's function.

Only the faces import this module (the CLI and the protocol server; the add-on goes through the
protocol), so they share one behaviour (same checks, same errors, same output layout) and no job
module imports the dispatcher back.
"""

from __future__ import annotations

from typing import Any

from mf_backend.errors import InvalidParams
from mf_backend.files import check_output_free
from mf_backend.jobs import JobContext
from mf_backend.params import JobParams

REQUIRED = {"prepare": ("source", "driving", "out"), "edit": ("source", "driving", "out"), "demo": ("out",)}


def check_params(method: str, params: JobParams) -> None:
    """Fail fast (before any work starts) on missing paths and an output folder that is in use."""
    if method not in REQUIRED:
        raise InvalidParams(f"unknown job kind {method!r}")
    params.require_paths(*REQUIRED[method])
    check_output_free(params.out_path)


def run_job(method: str, params: JobParams, ctx: JobContext) -> dict[str, Any]:
    """Run `prepare`, `edit` or `demo`; returns the JSON-able result (paths are absolute strings)."""
    check_params(method, params)
    if method == "prepare":
        from mf_backend.prepare import prepare

        return prepare(params, ctx)
    if method == "edit":
        from mf_backend.edit import edit

        return edit(params, ctx)
    if method == "demo":
        from mf_backend.demo import demo

        return demo(params, ctx)
    raise InvalidParams(f"unknown job kind {method!r}")
