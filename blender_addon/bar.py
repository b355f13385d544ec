"""One progress bar for a whole run: export → backend start → the backend's job(s) → import, 0 → 1 once.

A run is one source strip: its export and every backend job on those frames (one per variation; a
preview's `prepare` after its edit). The queue's next source is a new run with a new bar; the label
says "strip 2 of 3".

How the parts are weighed: by seconds, spent / (spent + left), so the bar moves with the clock.
- The export: its measured wall-clock rate (seconds since Run / frames rendered) × its frames left.
  Before the first frame nothing is measured: the bar stays at 0 and the ETA is unknown.
- A finished job: its measured time. The running job: a variation as long as the one before it on
  the same frames took (measured); else the backend's own ETA (its elapsed time over its fraction
  when it gives none yet). A job not started yet: like the last one measured or running.
- Before the backend has reported anything: the last edit's cost scaled to this one
  (`State.estimate_s`, passed in as guess_job_s), else JOB_PER_EXPORT × the export's time (sampling
  every frame is far slower than rendering it), and never past half of the running job. Such a pure
  guess moves the bar but shows no ETA ("estimating…").
- The import is one timer tick after the last job: the bar is at 1 once that job has finished.
When a better estimate (the backend's first ETA) moves the raw fraction back, the bar keeps its place
and spreads the rest over what is left (`Bar.show`): it never goes back, and still ends at 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

JOB_PER_EXPORT = 10.0  # with no measurement: one backend job ≈ 10 × the export (export ≈ 9 % of a one-seed run)


@dataclass
class Bar:
    """What the bar shows; kept on the run so that the shown fraction is monotone."""

    shown: float = 0.0
    anchor: tuple[float, float] = (0.0, 0.0)  # (shown, raw) from where the rest of the bar is spread

    def show(self, raw: float) -> float:
        """The fraction to draw for the raw (estimated) fraction: never below the last one, 1 at raw = 1."""
        raw = min(max(float(raw), 0.0), 1.0)
        at, from_raw = self.anchor
        value = 1.0 if from_raw >= 1.0 else at + (1.0 - at) * (raw - from_raw) / (1.0 - from_raw)
        if value < self.shown:  # the estimate grew: stay here, what is left fills the rest of the bar
            self.anchor, value = (self.shown, raw), self.shown
        self.shown = value
        return value


def _job_left(snap: dict[str, Any], same_s: Optional[float]) -> Optional[float]:
    """Seconds the running job still needs: none once finished; as long as the same job took before on
    these frames (a variation, measured); else the backend's ETA, or its elapsed time over its
    fraction; None while the backend cannot tell."""
    elapsed, f, eta = float(snap["elapsed_s"]), float(snap["fraction"] or 0.0), snap["eta_s"]
    if snap["finished"]:
        return 0.0
    if same_s is not None and elapsed < same_s:
        return same_s - elapsed
    if eta is not None:
        return float(eta)
    return elapsed * (1.0 - f) / f if f > 0.0 else None


def snapshot(run: Any, guess_job_s: Optional[float] = None, now: Optional[float] = None) -> dict[str, Any]:
    """The whole run's bar: stage, fraction (monotone, via run.bar), eta_s of everything left (None:
    unknown), done/total of the stage, message, and `part` ("strip 2 of 3 · variation 1 of 2")."""
    now = time.monotonic() if now is None else now
    done, total = run.exported
    x_end = run.exported_at if run.exported_at is not None else now
    export_s = (x_end - run.started) / done * total if done else (0.0 if not total else None)
    export_left = export_s * (1.0 - done / total) if export_s is not None and total else 0.0

    times = list(run.job_times)  # the finished jobs of this run
    job, snap, elapsed, left = run.job, None, 0.0, None
    if job is not None:
        snap = job.snapshot()
        elapsed = float(snap["elapsed_s"])
        # a preview's second job (poses and masks) is no repeat of its edit: only variations are
        left = _job_left(snap, times[-1] if times and not run.preview else None)
    per_job = times[-1] if times else elapsed + left if left is not None else guess_job_s
    known = export_s is not None and per_job is not None  # the ETA rests on measurements, not on a guess
    if per_job is None and export_s is not None:
        per_job = JOB_PER_EXPORT * export_s
    future = max(run.jobs_planned - len(times) - (job is not None), 0)

    if export_s is None or per_job is None:
        raw, eta = 0.0, None
    else:
        if job is not None and left is None:  # the backend cannot tell yet: as guessed, and not past half-way
            left = max(per_job - elapsed, elapsed)
        left = left or 0.0
        spent = export_s - export_left + sum(times) + elapsed
        rest = export_left + left + future * per_job
        raw = spent / (spent + rest) if spent + rest > 0 else 1.0
        eta = rest if known else None
    out = {"fraction": run.bar.show(raw), "eta_s": eta, "elapsed_s": now - run.started, "finished": False,
           "part": _part(run, len(times) + 1)}
    if run.cancel_requested_at is not None:
        grace = f" (up to {job.cancel_grace_s:.0f} s)" if job is not None else ""
        return {**out, "stage": "cancelling", "done": snap["done"] if snap else done,
                "total": snap["total"] if snap else total, "message": f"stopping after the current step{grace}"}
    if job is None:
        exporting = done < total
        return {**out, "stage": "export" if exporting else "starting", "done": done, "total": total,
                "message": f"rendering the strips to frames ({run.source}, {run.driving})" if exporting
                else "waiting for the backend"}
    if snap["finished"] and snap["error"] is None and not future:
        return {**out, "stage": "importing", "done": 1, "total": 1, "message": "adding the result to the timeline"}
    return {**out, "stage": snap["stage"], "done": snap["done"], "total": snap["total"], "message": snap["message"]}


def _part(run: Any, job_number: int) -> str:
    """Which of several: the queue's strip, the variation (a preview's two jobs are one step to the user)."""
    parts = []
    k, n = run.position
    if n > 1:
        parts.append(f"strip {k} of {n}")
    if run.jobs_planned > 1 and not run.preview:
        parts.append(f"variation {min(job_number, run.jobs_planned)} of {run.jobs_planned}")
    return " · ".join(parts)
