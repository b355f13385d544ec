"""Time one UNet3D forward with random weights and report peak memory.

    python -m mf_backend bench forward --config official --frames 24 --size 512 --dtype bf16
    python -m mf_backend bench forward --config tiny --frames 8 --size 64 --dtype fp32   # CPU smoke run
    python -m mf_backend bench forward --config demo --frames 16 --size 128 --batch 2 --flops

Builds the UNet (+ PoCtr, ReCtr features) on the device, runs `--warmup` untimed forwards then
`--repeats` timed ones (batch --batch, e.g. 2 for a CFG pass), and prints one JSON line with the mean
time and the peak CUDA memory (or the process' peak RSS on CPU). `--features` times the guidance
early-exit path (`features`, levels 1,2) with a backward to the latent instead, as the estimator does.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="image size in pixels (latent = size / 8)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--features", action="store_true", help="early-exit feature path + backward (guidance)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    p.add_argument("--flops", action="store_true", help="also count the FLOPs of one step (load-independent)")


def run(a: argparse.Namespace) -> int:
    import torch

    from mf_backend.environment import resolve_device
    from mf_backend.models.config import get_config
    from mf_backend.models.controllers import PoseController
    from mf_backend.models.loading import DTYPES
    from mf_backend.models.unet3d import UNet3DConditionModel

    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    dtype = DTYPES[a.dtype]
    cfg = get_config(a.config)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        unet = UNet3DConditionModel(cfg).to(dtype).eval().requires_grad_(False)
        pose_ctr = PoseController(cfg).to(dtype).eval().requires_grad_(False)
    build_s = time.perf_counter() - t0
    s = cfg.latent_scale
    b, f, h = a.batch, a.frames, a.size // s
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(b, cfg.in_channels, f, h, h, generator=gen).to(device, dtype)
    ctx = torch.randn(b, f, cfg.cross_attention_dim, generator=gen).to(device, dtype)
    with torch.no_grad():
        pose = pose_ctr(torch.rand(1, 3, f, a.size, a.size, generator=gen).to(device, dtype))
        app = unet.appearance_adapter(torch.rand(1, f, 3, a.size, a.size, generator=gen).to(device, dtype) * 2 - 1)

    def step() -> None:
        if a.features:
            zz = z.detach().requires_grad_(True)
            feats = unet.features(zz, 500, ctx, pose, app, (1, 2))
            (feats[1].float().mean() + feats[2].float().mean()).backward()
        else:
            with torch.no_grad():
                unet(z, 500, ctx, pose, app)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    gflops = None
    if a.flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        gflops = round(counter.get_total_flops() / 1e9, 2)
    for _ in range(a.warmup):
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
        peak_what = "cuda_max_allocated_gib"
        gpu = torch.cuda.get_device_name(0)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        peak_what = "host_peak_rss_gib"
        gpu = None
    result = {
        "config": a.config, "mode": "features+backward" if a.features else "forward", "device": device, "gpu": gpu,
        "dtype": a.dtype, "batch": b, "frames": f, "size": a.size,
        "unet_params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
        "build_s": round(build_s, 2), "mean_s": round(sum(times) / len(times), 4), "min_s": round(min(times), 4),
        "gflops": gflops, peak_what: round(peak, 3), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return 0
