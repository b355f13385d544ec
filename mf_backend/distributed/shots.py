"""A queue of shots over a Ray cluster: one edit job per GPU, progress and cancel per job, retries.

Each job runs `dispatch.run_job` (the same job as the CLI and the protocol) inside a ShotRunner actor
holding one GPU; the driver starts as many at a time as the cluster has GPUs. A job whose runner dies
(process killed, node lost) is started again on a fresh runner up to `retries` times; what the dead
attempt left (atomic_output_dir's temporary sibling folder) is removed first, so nothing partial is
ever left where an output would go. A job that fails by itself (bad input, cancel) is not retried.

Jobs file (JSON, or TOML with [[jobs]] tables): a list of jobs, or {"defaults": {...}, "jobs": [...]};
each job is a JobParams object (`source`, `driving`, `out`, any edit parameter) with an optional
`job_id` and `method` ("edit" by default; "prepare" also works).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from mf_backend.errors import Cancelled, InvalidParams, MFError, WorkerLost
from mf_backend.files import remove_stale_partials
from mf_backend.params import JobParams

log = logging.getLogger(__name__)

POLL_S = 0.2
CANCEL_GRACE_S = 10.0  # a cancelled job that has not stopped by then is killed (its partial folder removed)
EventSink = Callable[[dict[str, Any]], None]


@dataclass
class Shot:
    job_id: str
    method: str
    params: JobParams
    state: str = "queued"  # queued, running, done, failed, cancelled
    attempts: int = 0
    result: Optional[dict] = None
    error: Optional[dict] = None
    progress: Optional[dict] = None  # the latest progress event
    runner: Any = None
    ref: Any = None
    started: float = 0.0
    cancel_at: Optional[float] = None

    def summary(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state, "attempts": self.attempts,
                **({"result": self.result} if self.result else {}), **({"error": self.error} if self.error else {})}


def load_jobs(path: str) -> list[Shot]:
    """Read and validate a jobs file (see the module docstring); every error names the file and job."""
    p = Path(path)
    try:
        text = p.read_text()
        data = __import__("tomllib").loads(text) if p.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise InvalidParams(f"cannot read jobs file '{p}': {exc}", "give a JSON list of jobs (docs/scale-out.md)")
    defaults, jobs = ({}, data) if isinstance(data, list) else (data.get("defaults", {}), data.get("jobs"))
    return parse_jobs(jobs, defaults, f"jobs file '{p}'")


def parse_jobs(jobs: Any, defaults: Any = None, where: str = "queue") -> list[Shot]:
    """Validate a list of jobs (each a JobParams object with optional `job_id` and `method`) over shared
    `defaults`, before anything starts: the jobs file and the protocol's `queue` both come here, and every
    error names `where` and the job."""
    from mf_backend.dispatch import check_params

    defaults = {} if defaults is None else defaults
    if not isinstance(jobs, list) or not jobs:
        raise InvalidParams(f"{where} has no jobs", 'give a list [{"source": ..., "driving": ..., "out": ...}]')
    if not isinstance(defaults, dict):
        raise InvalidParams(f"{where}: defaults must be an object", 'e.g. {"steps": 25}')
    shots, outs = [], set()
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise InvalidParams(f"{where}, job job{i + 1}: a job must be an object", "give its source, driving, out")
        both = defaults.get("advanced"), job.get("advanced")
        job = {**defaults, **job}
        if all(isinstance(a, dict) for a in both):  # the job's advanced values win key by key
            job["advanced"] = {**both[0], **both[1]}
        job_id, method = str(job.pop("job_id", f"job{i + 1}")), job.pop("method", "edit")
        try:
            params = JobParams.from_dict(job)
            check_params(method, params)
            for note in params.warnings:
                log.warning("%s, job %s: %s", where, job_id, note)
        except MFError as exc:
            raise InvalidParams(f"{where}, job {job_id}: {exc.message}", exc.hint) from exc
        if params.out_path in outs or job_id in {s.job_id for s in shots}:
            raise InvalidParams(f"{where}, job {job_id}: its out folder or job_id repeats another job's",
                                "give every job its own out folder and job_id")
        outs.add(params.out_path)
        shots.append(Shot(job_id, method, params))
    return shots


class ShotRunner:
    """One job on one GPU (wrapped with ray.remote; threaded so progress/cancel answer during run)."""

    def __init__(self):
        self.ctx = None
        self.last: Optional[dict] = None

    def run(self, job_id: str, method: str, params: dict) -> dict[str, Any]:
        from mf_backend.dispatch import run_job
        from mf_backend.jobs import JobContext

        self.ctx = JobContext(job_id=job_id, sink=self._sink)  # the job sets its stages
        return run_job(method, JobParams.from_dict(params), self.ctx)

    def _sink(self, event: dict) -> None:
        self.last = event

    def progress(self) -> Optional[dict]:
        return self.last

    def cancel(self) -> None:
        if self.ctx is not None:
            self.ctx.cancel()


class ShotQueue:
    """Runs `shots` on the cluster at `address`; `sink` gets every job's progress events (with job_id)
    and a {"job_id", "state"} event at each state change. `cancel(job_id)` / `cancel()` from any thread."""

    def __init__(self, shots: list[Shot], address: str = "local", gpus: Optional[int] = None,
                 retries: Optional[int] = None, sink: Optional[EventSink] = None):
        self.shots = {s.job_id: s for s in shots}
        # the defaults of the CLI and the protocol: a local cluster gets one GPU per job (at most 4),
        # a job whose worker died one more attempt
        self.address, self.gpus = address, gpus or min(len(shots), 4)
        self.retries = 1 if retries is None else retries
        self.sink = sink or (lambda event: None)
        self._cancel_requests: set[str] = set()

    def cancel(self, job_id: Optional[str] = None) -> None:
        self._cancel_requests |= set(self.shots) if job_id is None else {job_id}

    def run(self) -> list[dict[str, Any]]:
        """Until every job is done, failed or cancelled; returns each job's summary, in order."""
        import ray

        from mf_backend.distributed import cluster

        resources = cluster.connect(self.address, self.gpus)
        slots = int(resources.get("GPU", 0))
        if slots < 1:
            raise InvalidParams("the Ray cluster has no GPUs", "start it with GPUs (ray start --num-gpus N)")
        remote = ray.remote(ShotRunner).options(num_gpus=1, num_cpus=1, max_restarts=0, max_concurrency=2)
        try:
            while any(s.state in ("queued", "running") for s in self.shots.values()):
                self._apply_cancels(ray)
                running = [s for s in self.shots.values() if s.state == "running"]
                for s in [s for s in self.shots.values() if s.state == "queued"][:max(0, slots - len(running))]:
                    self._start(s, remote)
                self._poll(ray)
        except BaseException:
            for s in self.shots.values():
                if s.state == "running":
                    self._stop(ray, s, "cancelled")
            raise
        finally:
            time.sleep(POLL_S)
            for parent in {s.params.out_path.parent for s in self.shots.values()}:
                remove_stale_partials(parent)
        return [s.summary() for s in self.shots.values()]

    # ---------------------------------------------------------------------------------------- internals

    def _set(self, s: Shot, state: str, **extra) -> None:
        s.state = state
        self.sink({"job_id": s.job_id, "state": state, "attempt": s.attempts, **extra})

    def _start(self, s: Shot, remote) -> None:
        s.attempts += 1
        s.started = time.time()
        s.runner = remote.remote()
        s.ref = s.runner.run.remote(s.job_id, s.method, s.params.to_dict())
        self._set(s, "running")

    def _stop(self, ray, s: Shot, state: str, **extra) -> None:
        """Kill the runner (if any) and remove what its attempt left; then the job's final state."""
        if s.runner is not None:
            ray.kill(s.runner, no_restart=True)
            s.runner = None
        self._remove_partials(s)
        self._set(s, state, **extra)

    def _remove_partials(self, s: Shot) -> None:
        """The dead attempt's temporary output (files.remove_stale_partials: its owner process is gone;
        run() looks again at the end, when every killed process has been reaped). A runner on another
        host leaves it to that host's next write into the same folder."""
        remove_stale_partials(s.params.out_path.parent)

    def _apply_cancels(self, ray) -> None:
        for job_id in list(self._cancel_requests):
            s = self.shots.get(job_id)
            self._cancel_requests.discard(job_id)
            if s is None:
                continue
            if s.state == "queued":
                self._set(s, "cancelled")
            elif s.state == "running" and s.cancel_at is None:
                s.runner.cancel.remote()  # stops at the job's next progress call, cleans up itself
                s.cancel_at = time.monotonic()
        for s in self.shots.values():  # a job that ignores cancel for too long is killed
            if s.state == "running" and s.cancel_at and time.monotonic() - s.cancel_at > CANCEL_GRACE_S:
                self._stop(ray, s, "cancelled")

    def _poll(self, ray) -> None:
        from ray.exceptions import RayActorError

        running = [s for s in self.shots.values() if s.state == "running"]
        if not running:
            return
        ready, _ = ray.wait([s.ref for s in running], num_returns=len(running), timeout=POLL_S)
        for s in running:
            if s.ref in ready:
                try:
                    s.result = ray.get(s.ref)
                    ray.kill(s.runner, no_restart=True)
                    s.runner = None
                    self._set(s, "done", result=s.result)
                except RayActorError as exc:
                    self._lost(ray, s, exc)
                except Exception as exc:  # noqa: BLE001 - the job's own failure: not retried
                    cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the job's exception
                    err = cause if isinstance(cause, MFError) else MFError(f"{type(cause).__name__}: {cause}")
                    s.error = {"message": err.message, **err.to_data()}
                    self._stop(ray, s, "cancelled" if isinstance(cause, Cancelled) else "failed", error=s.error)
            else:
                try:  # latest progress of the running job
                    event = ray.get(s.runner.progress.remote(), timeout=5)
                except Exception:  # noqa: BLE001 - a dying runner shows up in run's result
                    event = None
                if event and event != s.progress:
                    s.progress = event
                    self.sink({**event, "attempt": s.attempts})

    def _lost(self, ray, s: Shot, exc: Exception) -> None:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        if s.attempts <= self.retries and s.job_id not in self._cancel_requests and s.cancel_at is None:
            log.warning("job %s: its worker died (%s); retrying", s.job_id, first)
            self._stop(ray, s, "queued", reason=f"worker died: {first}")
            return
        err = WorkerLost(f"job {s.job_id}: its Ray worker died ({first}) after {s.attempts} attempt(s)",
                         "nothing was written; run the job again")
        s.error = {"message": err.message, **err.to_data()}
        self._stop(ray, s, "failed", error=s.error)
