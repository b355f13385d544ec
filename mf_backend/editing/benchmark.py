"""Speed of the full edit on random weights (the compute does not depend on the weights).

`benchmark_edit(...)` builds a model config with random weights, makes a random clip with person-like
rectangular masks, runs conditions → reconstruction + editing + guidance → VAE decode with GPU-synchronised
stage timers and returns seconds per stage, frames/min and peak GPU memory. The `bench speed` command
(mf_backend/bench) prints it; tests call it at the tiny config on CPU.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch


def random_inputs(frames: int, size: int, seed: int = 0):
    """A random clip at the working size: noise frames and pose images, M_r / M_e shifted boxes."""
    from mf_backend.editing.sampler import EditInputs

    g = torch.Generator().manual_seed(seed)

    def img() -> torch.Tensor:
        return torch.randint(0, 256, (frames, size, size, 3), generator=g, dtype=torch.uint8)
    M_r = torch.zeros(frames, size, size)
    M_e = torch.zeros(frames, size, size)
    M_r[:, size // 8: 7 * size // 8, size // 4: size // 2] = 1
    M_e[:, size // 8: 7 * size // 8, 3 * size // 8: 5 * size // 8] = 1
    return EditInputs(img(), img(), img(), M_r, M_e)


def benchmark_edit(config: str = "official", frames: int = 24, size: int = 512, steps: int = 50,
                   camera: bool = False, device: str = "auto", precision: str = "auto", window: int = 24,
                   overlap: int = 4, guidance_scale: float = 3.5, seed: int = 0,
                   params_overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Run the whole edit once; returns {"timings": {stage: s}, "total_s", "frames_per_min", "peak_gpu_gb", ...}."""
    from mf_backend.edit import decode_latents, run_sampling
    from mf_backend.editing.sampler import StageTimer
    from mf_backend.environment import resolve_device, resolve_dtype
    from mf_backend.models.loading import build_models
    from mf_backend.params import JobParams

    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    models = build_models(config, seed).to(dev, dtype).eval()
    params = JobParams(steps=steps, size=size, camera=camera, window=window, overlap=overlap,
                       guidance_scale=guidance_scale, seed=seed, **(params_overrides or {}))
    params.validate()
    inputs = random_inputs(frames, size, seed)
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timer = StageTimer(dev, sync=True)
    t0 = time.perf_counter()
    result = run_sampling(models, inputs, params, timer=timer)
    with timer.section("decode"):
        decode_latents(models, result.latents, result.info["memory"]["decode_batch"])
    total = time.perf_counter() - t0
    out: dict[str, Any] = {
        "config": config, "frames": frames, "size": size, "steps": steps, "camera": camera,
        "device": dev, "dtype": str(dtype).replace("torch.", ""),
        "timings": {k: round(v, 3) for k, v in timer.seconds.items()},
        "total_s": round(total, 3), "frames_per_min": round(frames / total * 60, 2),
        "guidance_evaluations": len(result.guidance_log), "memory": result.info["memory"],
    }
    if dev == "cuda":
        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


if __name__ == "__main__":  # python -m mf_backend.editing.benchmark [config frames size steps]
    import json
    import sys

    a = sys.argv[1:]
    print(json.dumps(benchmark_edit(a[0] if a else "tiny", *(int(x) for x in a[1:4])), indent=2))
