"""`bench scale`: what one clip on N Ray workers costs in synchronisation, and a projection for N GPUs.

Measured (tiny model on a local 127.0.0.1 cluster with N logical GPUs, or any cluster): the edit on
one process and on N workers, their largest difference (exactness), the per-step synchronisation
overhead (step wall time minus the slowest worker's compute: Ray calls, transfers, the driver's
blend) and the bytes that travel per step. Projected: a long clip on N GPUs from a measured
single-GPU time per window (default: the H100 figure of docs/performance.md) as the slowest worker's
windows plus, per step, the measured overhead and the shared frames' bytes over `--bandwidth-gbs`.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

H100_WINDOW_S = 27.82  # 24 frames at 512², 50 steps, bf16, default settings (docs/performance.md)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=3, help="Ray window workers (logical GPUs of a local cluster)")
    p.add_argument("--frames", type=int, default=48, help="frames of the measured clip")
    p.add_argument("--size", type=int, default=64, help="working size in pixels (tiny random model)")
    p.add_argument("--steps", type=int, default=4, help="sampling steps measured")
    p.add_argument("--window", type=int, default=16, help="frames per sampler window")
    p.add_argument("--overlap", type=int, default=4, help="frames two neighbouring windows share")
    p.add_argument("--ray-address", default="local", help="local (a 127.0.0.1 cluster here), auto, or HOST:PORT")
    p.add_argument("--project-frames", type=int, default=600, help="clip length of the projection")
    p.add_argument("--project-size", type=int, default=512, help="working size of the projection")
    p.add_argument("--project-gpus", type=int, default=8, help="GPUs of the projection")
    p.add_argument("--project-steps", type=int, default=50, help="sampling steps of the projection")
    p.add_argument("--gpu-window-seconds", type=float, default=H100_WINDOW_S,
                   help="one 24-frame window, all steps, on one GPU (measure it with bench speed)")
    p.add_argument("--bandwidth-gbs", type=float, default=10.0, help="driver <-> worker bandwidth, GB/s")


def run(args: argparse.Namespace) -> int:
    import torch

    from mf_backend.bench.inputs import random_inputs
    from mf_backend.distributed.sharded import sample_on_ray, shard_plan
    from mf_backend.editing.pipeline import run_sampling
    from mf_backend.jobs import JobContext
    from mf_backend.models.loading import build_models, load_models, save_models
    from mf_backend.params import JobParams

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_models(build_models("tiny", seed=0), f"{tmp}/tiny")
        params = JobParams.from_dict({
            "model": str(folder), "device": "cpu", "precision": "fp32", "size": args.size, "steps": args.steps,
            "advanced": {"window": args.window, "overlap": args.overlap, "distributed": "ray",
                         "ray_address": args.ray_address, "workers": args.workers}})
        t0 = time.perf_counter()
        one = run_sampling(load_models(str(folder), None, "cpu", torch.float32),
                           random_inputs(args.frames, args.size), params)
        t1 = time.perf_counter()
        many = sample_on_ray(random_inputs(args.frames, args.size), params, JobContext(), decode=False)
        t2 = time.perf_counter()
    diff = (many.latents - one.latents).abs().max().item()
    info = many.info
    print(f"measured: tiny model, {args.frames} frames at {args.size}², {args.steps} steps, {info['windows']} windows "
          f"on {info['workers']} workers {info['windows_per_worker']}")
    print(f"  1 process {t1 - t0:.1f} s; {info['workers']} workers {t2 - t1:.1f} s (incl. start and model load); "
          f"max |diff| of the edited latent {diff:.1e}")
    print(f"  sync overhead per step: {info['sync_ms_per_step']:.1f} ms (median); "
          f"{info['sync_bytes_per_step']} bytes per step")

    windows, groups, _, shared, _ = shard_plan(args.project_frames, 24, 4, args.project_gpus)
    frame_bytes = 4 * (args.project_size // 8) ** 2 * 4  # one latent frame, float32
    # per shared frame and step: edit + reconstruction to each of its 2 workers, and their 2 sums back
    step_bytes = len(shared) * 2 * 2 * 2 * frame_bytes
    sync_s = info["sync_ms_per_step"] / 1000 + step_bytes / (args.bandwidth_gbs * 1e9)
    per_worker = max(len(g) for g in groups)
    one_gpu = len(windows) * args.gpu_window_seconds
    n_gpu = per_worker * args.gpu_window_seconds + args.project_steps * sync_s
    print(f"projected: {args.project_frames} frames at {args.project_size}², {len(windows)} windows of 24, "
          f"{args.project_steps} steps, {args.gpu_window_seconds:.2f} s per window on one GPU")
    print(f"  1 GPU {one_gpu / 60:.1f} min; {args.project_gpus} GPUs ({per_worker} windows on the busiest) "
          f"{n_gpu / 60:.2f} min = x{one_gpu / n_gpu:.2f} (ideal x{len(windows) / per_worker:.2f}); "
          f"{len(shared)} shared frames, {step_bytes / 1e6:.1f} MB and {1000 * sync_s:.1f} ms of sync per step")
    return 0 if math.isfinite(diff) and diff <= 1e-5 else 1
