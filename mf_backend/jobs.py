"""The job context: progress events and cancellation, carried into every stage of a job.

Jobs (`prepare`, `edit`, `demo`) take a JobContext; the faces (CLI, protocol server) create it and
dispatch through `mf_backend.dispatch.run_job`. Output folders: `mf_backend.files`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from mf_backend.errors import Cancelled

ProgressSink = Callable[[dict[str, Any]], None]

Stages = tuple[tuple[str, float], ...]  # a job's planned stages, in order, with their relative cost
MIN_RATE_SECONDS = 1.0  # the ETA extrapolates the current stage's own rate once it has run this long


@dataclass
class JobContext:
    """Carries progress reporting and cancellation into every stage.

    Stages call `ctx.progress(stage, done, total)` at least once per step; it raises Cancelled as
    soon as cancellation was requested, which is how a cancel stops work within one step. Each job
    declares its `stages` next to its code (prepare.STAGES, edit.STAGES, demo.STAGES) and sets them.
    """

    job_id: str = "job"
    sink: Optional[ProgressSink] = None
    stages: Stages = ()
    cancel_event: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    _fraction: float = 0.0
    _last_emit: float = 0.0
    _part: tuple[float, float] = (0.0, 1.0)  # the share of the current stage a sub-step reports into
    _segment: Optional[tuple[str, list]] = None  # (stage, [(t, overall fraction)] since it began) for the ETA

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled(f"job {self.job_id} cancelled")

    @contextlib.contextmanager
    def part(self, lo: float, hi: float) -> Iterator[None]:
        """Inside this block a stage's progress (each sub-step counting from 0 again, e.g. source masks
        then the predictor's adaptation) fills only [lo, hi] of that stage, so the bar keeps moving."""
        outer = self._part
        self._part = (outer[0] + lo * (outer[1] - outer[0]), outer[0] + hi * (outer[1] - outer[0]))
        self._segment = None
        try:
            yield
        finally:
            self._part = outer
            self._segment = None

    def progress(self, stage: str, done: int, total: int, message: str = "") -> None:
        self.check_cancelled()
        total = max(int(total), 1)
        done = min(max(int(done), 0), total)
        lo, hi = self._part
        # Progress never goes backwards, even if a stage is re-entered (e.g. a second window).
        self._fraction = max(self._fraction, self._overall(stage, lo + (hi - lo) * done / total))
        now = time.monotonic()
        eta = self._eta(stage, now)
        if self.sink is None:
            return
        # Rate-limit to ~20 events/s, but always send stage ends.
        if done != total and now - self._last_emit < 0.05:
            return
        self._last_emit = now
        self.sink({"job_id": self.job_id, "stage": stage, "done": done, "total": total,
                   "fraction": round(self._fraction, 4), "message": message, "eta_s": eta,
                   "elapsed_s": round(now - self.started, 1)})

    def _eta(self, stage: str, now: float) -> Optional[float]:
        """Remaining seconds: the current stage's own recent rate (overall fraction per second over the
        later half of its run so far, so a slow start does not linger) extrapolated over the rest, once
        it has run MIN_RATE_SECONDS; before that the whole job's mean rate."""
        if self._segment is None or self._segment[0] != stage:
            self._segment = (stage, [])
        samples = self._segment[1]
        samples.append((now, self._fraction))
        if len(samples) > 512:
            del samples[1:-1:2]  # thin out, keeping the first and the last
        t0 = samples[0][0]
        if now - t0 >= MIN_RATE_SECONDS:
            t_mid, f_mid = next(s for s in samples if s[0] >= (t0 + now) / 2)
            if self._fraction > f_mid and now > t_mid:
                return round((now - t_mid) / (self._fraction - f_mid) * (1.0 - self._fraction), 1)
        elif now - t0 >= MIN_RATE_SECONDS / 4 and self._fraction > samples[0][1]:
            # early in a stage its own rate so far: the job's mean would count earlier stages that were
            # near-instant (user-given poses or masks) and promise far too little
            return round((now - t0) / (self._fraction - samples[0][1]) * (1.0 - self._fraction), 1)
        if self._fraction > 0.01:
            return round((now - self.started) / self._fraction * (1.0 - self._fraction), 1)
        return None

    def _overall(self, stage: str, stage_fraction: float) -> float:
        names = [name for name, _ in self.stages]
        if stage not in names:
            return self._fraction
        weights = [w for _, w in self.stages]
        i = names.index(stage)
        return (sum(weights[:i]) + weights[i] * stage_fraction) / sum(weights)
