"""The job context: progress events and cancellation, carried into every stage of a job.

Jobs (`prepare`, `edit`, `demo`) take a JobContext; the faces (CLI, protocol server) create it and
dispatch through `mf_backend.dispatch.run_job`. Output folders: `mf_backend.files`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from mf_backend.errors import Cancelled

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
