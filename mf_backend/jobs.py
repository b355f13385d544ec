"""Jobs: a `prepare` or `edit` request → stages, with progress events, cancellation and atomic output.

The CLI, the protocol server and (through the protocol) the Blender add-on all run jobs through
`run_job`, so they share one behaviour: same stages, same errors, same output layout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from mf_backend.errors import Cancelled, InvalidParams
from mf_backend.params import JobParams

log = logging.getLogger(__name__)

ProgressSink = Callable[[dict[str, Any]], None]

# Relative cost of each stage, for one overall fraction and ETA. Stages not listed weigh 1.
STAGE_WEIGHTS = {
    "read": 1.0,
    "poses": 3.0,
    "masks": 2.0,
    "load": 2.0,
    "reconstruction": 20.0,
    "editing": 60.0,
    "decode": 4.0,
    "write": 2.0,
}


@dataclass
class JobContext:
    """Carries progress reporting and cancellation into every stage.

    Stages call `ctx.progress(stage, done, total)` at least once per step; it raises Cancelled as
    soon as cancellation was requested, which is how a cancel stops work within one step.
    """

    job_id: str = "job"
    sink: Optional[ProgressSink] = None
    stages: tuple[str, ...] = ()  # the planned stages, in order, for the overall fraction
    cancel_event: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    _fraction: float = 0.0
    _last_emit: float = 0.0

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled(f"job {self.job_id} cancelled")

    def progress(self, stage: str, done: int, total: int, message: str = "") -> None:
        self.check_cancelled()
        total = max(int(total), 1)
        done = min(max(int(done), 0), total)
        fraction = self._overall(stage, done / total)
        # Progress never goes backwards, even if a stage is re-entered (e.g. a second window).
        self._fraction = max(self._fraction, fraction)
        now = time.monotonic()
        elapsed = now - self.started
        eta = None
        if self._fraction > 0.01:
            eta = round(elapsed / self._fraction * (1.0 - self._fraction), 1)
        if self.sink is None:
            return
        # Rate-limit to ~20 events/s, but always send stage ends.
        if done != total and now - self._last_emit < 0.05:
            return
        self._last_emit = now
        self.sink(
            {
                "job_id": self.job_id,
                "stage": stage,
                "done": done,
                "total": total,
                "fraction": round(self._fraction, 4),
                "message": message,
                "eta_s": eta,
                "elapsed_s": round(elapsed, 1),
            }
        )

    def _overall(self, stage: str, stage_fraction: float) -> float:
        if stage not in self.stages:
            return self._fraction
        weights = [STAGE_WEIGHTS.get(s, 1.0) for s in self.stages]
        i = self.stages.index(stage)
        return (sum(weights[:i]) + weights[i] * stage_fraction) / sum(weights)


@contextlib.contextmanager
def atomic_output_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `final` only if the block succeeds.

    Never overwrites the user's data: `final` must not exist, or be an empty folder. On any error
    (cancellation included) the temporary folder is removed and `final` is left as it was.
    """
    final = Path(final).expanduser().resolve()
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise InvalidParams(
            f"output '{final}' already exists and is not empty",
            "choose a new output folder; nothing of yours is overwritten",
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            final.rmdir()  # empty, checked above
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


REQUIRED = {"prepare": ("source", "driving", "out"), "edit": ("source", "driving", "out"), "demo": ("out",)}


def check_params(method: str, params: JobParams) -> None:
    """Fail fast (before any work starts) on missing paths and an output folder that is in use."""
    if method not in REQUIRED:
        raise InvalidParams(f"unknown job kind {method!r}")
    params.require_paths(*REQUIRED[method])
    out = params.out_path
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidParams(f"output '{out}' already exists and is not empty",
                            "choose a new output folder; nothing of yours is overwritten")


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
