"""One clip over N GPUs: its windows split over N Ray workers, synchronised exactly at every step.

The driver owns the schedule and the noise (the same seeded CPU generator as one process). Every
step it sends each worker the blended latents of the frames its windows touch, gathers the weighted
sums and weights, adds them and normalises: the result equals the single-process edit (same
windows, same weights, same order of additions for frames shared by two windows). Only latents
travel per step (float32, kept exact); frames are sent once at setup, crops come back at decode.
A worker that dies fails the job with WorkerLost within a poll interval; cancel kills all workers.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from mf_backend.editing.guidance import guidance_from_params
from mf_backend.editing.noise import FrameNoise
from mf_backend.editing.sampler import EditInputs, StageTimer, sde_noise
from mf_backend.editing.schedule import build_schedule
from mf_backend.editing.windows import WindowBlender, plan_windows, window_weights
from mf_backend.errors import WorkerLost
from mf_backend.jobs import JobContext
from mf_backend.params import JobParams

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often the driver looks at cancel and at dead workers while waiting


@dataclass
class ShardedResult:
    latents: torch.Tensor  # (1,4,F,h,w) float32 edited latent
    reconstruction: Optional[torch.Tensor]  # (1,4,F,h,w); None when it stopped after the last guidance step
    frames: Optional[np.ndarray]  # uint8 (F,S,S,3) decoded crops (decode=True)
    guidance_log: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # workers, run_info, sync figures
    timer: StageTimer = field(default_factory=StageTimer)


def split_windows(num_windows: int, workers: int) -> list[range]:
    """Contiguous runs of window indices, as even as possible (one run per worker)."""
    bounds = np.linspace(0, num_windows, workers + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _gather(refs: list, ctx: JobContext, what: str) -> list:
    """ray.get of every ref, looking at cancel and at failures every POLL_S (a dead worker is reported
    as soon as Ray knows, not after the others finish their step)."""
    import ray
    from ray.exceptions import RayActorError

    out: dict[int, Any] = {}
    index = {r: i for i, r in enumerate(refs)}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        for r in ready:
            try:
                out[index[r]] = ray.get(r)
            except RayActorError as exc:
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                raise WorkerLost(f"Ray worker {index[r]} died during {what}: {lines[0] if lines else exc}",
                                 "the job stopped and left no output; run it again (a queue retries it)",
                                 {"worker": index[r]}) from exc
        ctx.check_cancelled()
    return [out[i] for i in range(len(refs))]


def sample_on_ray(inputs: EditInputs, params: JobParams, ctx: JobContext, decode: bool = True) -> ShardedResult:
    """Both branches over the whole clip on `params.workers` Ray workers (see the module docstring)."""
    import ray

    from mf_backend.distributed import cluster
    from mf_backend.distributed.worker import CLIP_BATCH, WindowWorker

    F_ = inputs.num_frames
    windows = plan_windows(F_, params.window, params.overlap)
    n = min(params.workers, len(windows))
    if n < params.workers:
        log.warning("the clip has %d windows: %d workers instead of %d", len(windows), n, params.workers)
    groups = split_windows(len(windows), n)
    weights = window_weights(windows)
    plan = build_schedule(params.steps, guidance=guidance_from_params(params).enabled, camera=params.camera)
    timer = StageTimer()
    ctx.progress("load", 0, 1, f"reserving {n} GPUs on Ray ({params.ray_address})")
    cluster.connect(params.ray_address, n)
    pg = cluster.reserve_gpus(n)  # all n or a clear error, before any work
    actors: list = []
    try:
        remote = ray.remote(WindowWorker)
        worker_params = {**params.to_dict(), "distributed": "none", "extra": {}}
        run_id = uuid.uuid4().hex[:8]  # named actors: visible in `ray list actors`, findable by tests
        actors = [remote.options(name=f"mf-window-{run_id}-{i}", **cluster.actor_options(pg, i)).remote(worker_params)
                  for i in range(n)]
        with timer.section("load"):
            described = _gather([a.describe.remote() for a in actors], ctx, "model loading")
        ctx.progress("load", 1, 1)
        touched = [range(windows[g.start].start, windows[g.stop - 1].stop) for g in groups]
        setups = []
        for a, g, t in zip(actors, groups, touched):
            lo, hi = t.start // CLIP_BATCH * CLIP_BATCH, t.stop  # token batches as in one process
            part = EditInputs(*(x[lo:hi] for x in (inputs.frames, inputs.source_poses, inputs.target_poses,
                                                    inputs.M_r, inputs.M_e)))
            local = [range(windows[k].start - lo, windows[k].stop - lo) for k in g]
            setups.append(a.setup.remote(part, local, [weights[k] for k in g], range(t.start - lo, t.stop - lo), F_))
        with timer.section("conditions"):
            memory = _gather(setups, ctx, "setup")[0]

        d0 = described[0]
        hw = (inputs.frames.shape[1] // d0["latent_scale"], inputs.frames.shape[2] // d0["latent_scale"])
        frame_index = range(F_) if inputs.frame_index is None else inputs.frame_index
        frame_noise = FrameNoise(params.seed, frame_index, (d0["in_channels"], *hw))
        z_edit = frame_noise.draw()
        z_rec = z_edit.clone()
        log_rows: list[dict] = []
        sync_ms: list[float] = []
        sync_bytes: list[int] = []
        for p in plan:
            t0 = time.perf_counter()
            noise = sde_noise(p, frame_noise)
            msgs = [(z_edit[:, :, t.start:t.stop], None if z_rec is None else z_rec[:, :, t.start:t.stop],
                     None if noise is None else noise[:, :, t.start:t.stop]) for t in touched]
            refs = [a.step.remote(p.index, *m) for a, m in zip(actors, msgs)]
            parts = _gather(refs, ctx, f"step {p.index + 1}")
            next_edit, next_rec = WindowBlender(z_edit, windows, weights), WindowBlender(z_edit, windows, weights)
            for t, (e, r, norm, rows, _) in zip(touched, parts):
                next_edit.add_sums(t, e, norm)
                if r is not None:  # None once the reconstruction has stopped (after the last guidance step)
                    next_rec.add_sums(t, r, norm)
                log_rows += rows
            z_edit, z_rec = next_edit.result(), next_rec.result() if parts[0][1] is not None else None
            wall = time.perf_counter() - t0
            sync_ms.append(1000 * (wall - max(part[4] for part in parts)))
            sync_bytes.append(sum(x.nbytes for m in msgs for x in m if x is not None)
                              + sum(x.nbytes for part in parts for x in part[:3] if x is not None))
            ctx.progress("editing", p.index + 1, len(plan), f"step {p.index + 1}/{len(plan)} on {n} workers")

        frames = None
        if decode:
            chunks = split_windows(F_, n)  # contiguous frame runs, one per worker
            refs = [a.decode.remote(z_edit[:, :, c.start:c.stop]) for a, c in zip(actors, chunks)]
            with timer.section("decode"):
                frames = np.concatenate(_gather(refs, ctx, "decode"))
            ctx.progress("decode", 1, 1)
        worker_timings = _gather([a.timings.remote() for a in actors], ctx, "timings")
        for k in ("reconstruction", "editing", "guidance"):  # the slowest worker's figure per stage
            timer.seconds[k] = max(w.get(k, 0.0) for w in worker_timings)
        info = {**d0, "memory": memory, "workers": n, "windows": len(windows),
                "windows_per_worker": [len(g) for g in groups], "ray_address": params.ray_address,
                "sync_ms_per_step": round(float(np.median(sync_ms)), 2),
                "sync_bytes_per_step": int(np.median(sync_bytes))}
        info.pop("pid", None)
        return ShardedResult(z_edit, z_rec, frames, log_rows, info, timer)
    finally:
        cluster.release(pg, actors)


def edit_on_ray(inputs: EditInputs, params: JobParams, ctx: JobContext
                ) -> tuple[np.ndarray, StageTimer, dict[str, Any]]:
    """The edit job's sampling and decode on Ray (edit.py): uint8 crops, the stage timer, run info."""
    res = sample_on_ray(inputs, params, ctx, decode=True)
    return res.frames, res.timer, res.info
