"""One clip over N GPUs: its windows split over N Ray workers, synchronised exactly at every step.

Each worker gets a contiguous run of the windows and, once, the frames they cover (worker.py). Every
step, each worker blends the frames only its windows touch by itself and returns its weighted sums
and weights at the frames it shares with a neighbour; the driver adds them (in window order) and
normalises, and sends the blend back with the next step. The result equals the single-process edit
bit for bit: same windows, weights, per-frame noise and order of additions. Per step only the latents
of the shared frames travel (float32, about `overlap` frames per pair of neighbours, independent of
the clip's length). The final latents come back once; each worker decodes a contiguous run of frames.
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
from mf_backend.editing.sampler import EditInputs, StageTimer
from mf_backend.editing.schedule import build_schedule
from mf_backend.editing.windows import plan_windows, window_weights
from mf_backend.errors import WorkerLost
from mf_backend.jobs import JobContext
from mf_backend.params import JobParams

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often the driver looks at cancel and at dead workers while waiting


@dataclass
class ShardedResult:
    latents: torch.Tensor  # (1,4,F,h,w) float32 edited latent
    reconstruction: torch.Tensor  # (1,4,F,h,w)
    frames: Optional[np.ndarray]  # uint8 (F,S,S,3) decoded crops (decode=True)
    guidance_log: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # workers, run_info, sync figures
    timer: StageTimer = field(default_factory=StageTimer)


def split_windows(num_windows: int, workers: int) -> list[range]:
    """Contiguous runs of window indices, as even as possible (one run per worker)."""
    bounds = np.linspace(0, num_windows, workers + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def shard_plan(num_frames: int, window: int, overlap: int, workers: int):
    """How a clip is split: (windows, window runs per worker, frames each worker touches, shared frames
    (touched by two workers: all that travels per step), positions of each worker's shared frames)."""
    windows = plan_windows(num_frames, window, overlap)
    groups = split_windows(len(windows), min(workers, len(windows)))
    touched = [range(windows[g.start].start, windows[g.stop - 1].stop) for g in groups]
    cover = np.zeros(num_frames, int)
    for t in touched:
        cover[t.start:t.stop] += 1
    shared = np.flatnonzero(cover > 1)
    pos = [torch.from_numpy(np.flatnonzero((shared >= t.start) & (shared < t.stop))) for t in touched]
    return windows, groups, touched, shared, pos


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


def _blend_shared(parts: list, pos: list[torch.Tensor], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The workers' sums and weights at the shared frames (in worker order = window order, as one
    process adds them) -> the normalised (edit, reconstruction) blend there."""
    e0, rec = parts[0][0], parts[0][1] is not None  # no reconstruction sums once it stopped
    sums = [torch.zeros((*e0.shape[:2], count, *e0.shape[3:])) for _ in range(1 + rec)]
    norm = torch.zeros(count)
    for (e, r, w, *_), k in zip(parts, pos):
        sums[0][:, :, k] += e
        if rec:
            sums[1][:, :, k] += r
        norm[k] += w
    if bool((norm <= 0).any()):
        raise RuntimeError("a shared frame got no weight")
    out = [x / norm[None, None, :, None, None] for x in sums]
    return out[0], out[1] if rec else None


def sample_on_ray(inputs: EditInputs, params: JobParams, ctx: JobContext, decode: bool = True) -> ShardedResult:
    """Both branches over the whole clip on `params.advanced.workers` Ray workers (see the module docstring)."""
    import ray

    from mf_backend.distributed import cluster
    from mf_backend.distributed.worker import CLIP_BATCH, WindowWorker

    F_ = inputs.num_frames
    adv = params.advanced
    windows, groups, touched, shared, pos = shard_plan(F_, adv.window, adv.overlap, adv.workers)
    n = len(groups)
    if n < adv.workers:
        log.warning("the clip has %d windows: %d workers instead of %d", len(windows), n, adv.workers)
    weights = window_weights(windows)
    plan = build_schedule(params.steps, guidance=guidance_from_params(params).enabled, camera=params.camera)
    timer = StageTimer()
    ctx.progress("load", 0, 1, f"reserving {n} GPUs on Ray ({adv.ray_address})")
    cluster.connect(adv.ray_address, n)
    pg = cluster.reserve_gpus(n)  # all n or a clear error, before any work
    actors: list = []
    try:
        remote = ray.remote(WindowWorker)
        worker_params = params.with_advanced(distributed="none").to_dict()
        run_id = uuid.uuid4().hex[:8]  # named actors: visible in `ray list actors`, findable by tests
        actors = [remote.options(name=f"mf-window-{run_id}-{i}", **cluster.actor_options(pg, i)).remote(worker_params)
                  for i in range(n)]
        with timer.section("load"):
            described = _gather([a.describe.remote() for a in actors], ctx, "model loading")
        ctx.progress("load", 1, 1)
        d0 = described[0]
        frame_index = np.arange(F_) if inputs.frame_index is None else np.asarray(inputs.frame_index)
        setups = []
        for a, g, t, k in zip(actors, groups, touched, pos):
            lo = t.start // CLIP_BATCH * CLIP_BATCH  # token batches as in one process
            part = EditInputs(*(x[lo:t.stop] for x in (inputs.frames, inputs.source_poses, inputs.target_poses,
                                                        inputs.M_r, inputs.M_e)), frame_index=frame_index[lo:t.stop])
            local = [range(windows[j].start - lo, windows[j].stop - lo) for j in g]
            setups.append(a.setup.remote(part, local, [weights[j] for j in g], range(t.start - lo, t.stop - lo),
                                         (shared[k.numpy()] - lo).tolist(), F_))
        with timer.section("conditions"):
            memory = _gather(setups, ctx, "setup")[0]

        log_rows: list[dict] = []
        sync_ms: list[float] = []
        sync_bytes: list[int] = []
        blend = None  # (edit, rec) (1,C,S,h,w) at the shared frames, entering the next step
        for p in plan:
            t0 = time.perf_counter()
            msgs = [(None, None) if blend is None else tuple(None if b is None else b[:, :, k] for b in blend)
                    for k in pos]
            parts = _gather([a.step.remote(p.index, *m) for a, m in zip(actors, msgs)], ctx, f"step {p.index + 1}")
            blend = _blend_shared(parts, pos, len(shared))
            for part in parts:
                log_rows += part[3]
            sync_ms.append(1000 * (time.perf_counter() - t0 - max(part[4] for part in parts)))
            sync_bytes.append(sum(x.nbytes for m in msgs for x in m if x is not None)
                              + sum(x.nbytes for part in parts for x in part[:3] if x is not None))
            ctx.progress("editing", p.index + 1, len(plan), f"step {p.index + 1}/{len(plan)} on {n} workers")

        finals = _gather([a.latents.remote() for a in actors], ctx, "latents")
        e0, r0 = finals[0]
        z_edit = torch.zeros((*e0.shape[:2], F_, *e0.shape[3:]))
        z_rec = None if r0 is None else torch.zeros_like(z_edit)
        for t, (e, r) in zip(touched, finals):
            z_edit[:, :, t.start:t.stop] = e
            if z_rec is not None:
                z_rec[:, :, t.start:t.stop] = r
        if len(shared):  # the driver's blend of the last step
            z_edit[:, :, shared] = blend[0]
            if z_rec is not None:
                z_rec[:, :, shared] = blend[1]
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
                "windows_per_worker": [len(g) for g in groups], "ray_address": adv.ray_address,
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
