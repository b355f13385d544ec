"""`python -m mf_backend queue JOBS.json --ray-address ...`: a queue of shots over a Ray cluster.

Progress lines go to stderr, one per event, prefixed with the job id; the summary (one object per job:
state, attempts, result or error) is printed as JSON on stdout; exit status 0 when every job is done.
While it runs, a line `cancel JOB_ID` on stdin cancels that job and `cancel` cancels them all (Ctrl-C
or `ray job stop` also stops everything, leaving nothing partial).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any


def _print_event(event: dict[str, Any]) -> None:
    if "stage" in event:
        msg = f" {event['message']}" if event.get("message") else ""
        line = f"[{event['fraction'] * 100:5.1f}%] {event['stage']} {event['done']}/{event['total']}{msg}"
    else:
        line = event["state"] + "".join(f" {k}={event[k]}" for k in ("attempt", "reason") if k in event)
    print(f"[{event['job_id']}] {line}", file=sys.stderr, flush=True)


def _read_cancels(queue) -> None:
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["cancel"]:
            queue.cancel(words[1] if len(words) > 1 else None)


def cmd_queue(args: argparse.Namespace) -> int:
    from mf_backend.distributed.shots import ShotQueue, load_jobs

    shots = load_jobs(args.jobs)
    queue = ShotQueue(shots, args.ray_address, args.workers, args.retries, None if args.quiet else _print_event)
    threading.Thread(target=_read_cancels, args=(queue,), daemon=True).start()
    summary = queue.run()
    print(json.dumps(summary, indent=2, default=str))
    return 0 if all(s["state"] == "done" for s in summary) else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("queue", help="a queue of edit jobs over a Ray cluster's GPUs (docs/scale-out.md)")
    p.add_argument("jobs", help="jobs file: JSON list (or TOML [[jobs]]) of edit parameters with source/driving/out")
    p.add_argument("--ray-address", default="local", help="local (a 127.0.0.1 cluster here), auto, or HOST:PORT")
    p.add_argument("--workers", type=int, help="GPUs of a local cluster (default: one per job, at most 4)")
    p.add_argument("--retries", type=int, help="new attempts for a job whose worker died (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_queue)
