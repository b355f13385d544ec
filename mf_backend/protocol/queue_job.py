"""The protocol's `queue` method: a queue of shots (distributed/shots.py) as the server's one job.

The whole request is checked before anything starts, the jobs by the function that reads a jobs file
(`parse_jobs`). Each shot's progress goes out as a `progress` notification and each of its state changes
as `shot_state`, both with the queue's `job_id` and the shot's (`shot`): docs/protocol.md.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from mf_backend.distributed import cluster
from mf_backend.distributed.shots import ShotQueue, parse_jobs
from mf_backend.errors import Cancelled, InvalidParams

KEYS = ("jobs", "defaults", "ray_address", "workers", "retries", "job_id")
Notify = Callable[[str, dict[str, Any]], None]  # (notification method, params)


class QueueJob:
    """A `queue` request, checked; `run()` answers it, `cancel()` stops every shot, `cancel(shot)` one."""

    def __init__(self, job_id: str, params: dict[str, Any], settings: dict[str, Any], notify: Notify):
        unknown = sorted(set(params) - set(KEYS))
        if unknown:  # strict, unlike a job's params: a misspelt `workers` would silently run on one GPU
            raise InvalidParams(f"queue: unknown params {', '.join(unknown)}", f"use {', '.join(KEYS)}")
        cluster.require_ray()
        for key, low in (("workers", 1), ("retries", 0)):
            value = params.get(key)
            if value is not None and (type(value) is not int or value < low):
                raise InvalidParams(f"queue: {key} must be an integer >= {low}; got {value!r}", f"leave {key} out "
                                    "for its default (workers: one per job, at most 4; retries: 1)")
        address = params.get("ray_address", "local")
        cluster.check_address(address)
        defaults = params.get("defaults") or {}
        # the server's settings (serve flags, initialize) under the queue's own defaults, as for a job
        shots = parse_jobs(params.get("jobs"), {**settings, **defaults} if isinstance(defaults, dict) else defaults)
        if job_id in {s.job_id for s in shots}:  # `cancel` could not tell the queue from the shot
            raise InvalidParams(f"queue: its job_id {job_id!r} repeats a job's", "give the queue its own job_id")
        self.job_id, self.notify, self.cancelled = job_id, notify, False
        self.queue = ShotQueue(shots, address, params.get("workers"), params.get("retries"), self._event)

    def cancel(self, job_id: Optional[str] = None) -> bool:
        """The queue's id (or none) cancels all; a shot's id that shot only, while it is queued or running."""
        if job_id in (None, self.job_id):
            self.cancelled = True
            self.queue.cancel()
            return True
        shot = self.queue.shots.get(job_id)
        if shot is None or shot.state not in ("queued", "running"):
            return False
        self.queue.cancel(job_id)
        return True

    def run(self) -> dict[str, Any]:
        shots = self.queue.run()
        if self.cancelled and any(s["state"] == "cancelled" for s in shots):
            raise Cancelled(f"queue {self.job_id} cancelled", data={"shots": shots})
        return {"shots": shots}  # shots that failed carry their error: the queue itself did not fail

    def _event(self, event: dict[str, Any]) -> None:
        shot = {k: v for k, v in event.items() if k != "job_id"}
        self.notify("progress" if "stage" in event else "shot_state",
                    {"job_id": self.job_id, "shot": event["job_id"], **shot})
