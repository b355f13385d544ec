"""`bench flops`: the FLOPs of one edit as it actually runs, counted without computing anything.

    python -m mf_backend bench flops --config official --frames 24 --size 512 --steps 50 [--camera]

The real sampler (`MotionEditSampler`) runs on the `meta` device (tensors with shapes, no data) under
`torch.utils.flop_counter`, so every pass the edit runs is counted at the exact config, clip length
and size: CLIP tokens, PoCtr/ReCtr, the reconstruction, CFG, the guidance forward and backward
passes, replay re-noising, the DDIM arithmetic, and the VAE decode. No GPU and no weights are needed
(a minute or two on a CPU at the official config). 1 FLOP = one multiply or one add.
Activation-checkpoint recompute is not counted (model FLOPs: the plan is counted with checkpoint
"none"), so MFU = these FLOPs / time / peak.

`--before` counts the path before the speed work (every pass separate, reconstruction to the last
step, estimator features recomputed), for comparison.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
from dataclasses import replace
from typing import Any, Iterator, Optional

# the speed switches of the sampler, all off = the path before the speed work
BEFORE = dict(reuse_features=False, fuse_guidance=False, batch_passes=False, stop_reconstruction=False)


class _Tally:
    """A StageTimer stand-in: FLOPs counted inside each sampler section, and frames through the UNet."""

    def __init__(self, counter):
        self.counter = counter
        self.seconds: dict[str, float] = {}  # the sampler copies this into its result
        self.flops: dict[str, float] = {}
        self.unet_frames = {"no_grad": 0, "grad": 0}  # batch rows x window frames, per grad mode

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        before = self.counter.get_total_flops()
        try:
            yield
        finally:
            self.flops[name] = self.flops.get(name, 0.0) + self.counter.get_total_flops() - before

    def snapshot(self) -> dict[str, float]:
        return {**self.flops, **{f"unet_{k}": v for k, v in self.unet_frames.items()}}


def _count_each_step_kind_once(sampler, tally: _Tally, repeated: dict[str, float]) -> None:
    """Run `sampler._window_step` for real the first time each kind of step comes (guidance, replay,
    SDE, camera, reconstruction running, window length) and add its tally again for each later step
    of the same kind (into `repeated`): FLOPs do not depend on the timestep or on the values, and a
    meta-device step of the official UNet takes seconds on a CPU."""
    first = sampler._window_step
    memo: dict[tuple, tuple[dict[str, float], list[dict]]] = {}

    def window_step(p, c, z, z_rec, noise, latent_hw, log_rows):
        key = (p.guidance, p.repeats, p.camera, p.sde_in, p.sde_out, z_rec is None, noise is None, tuple(z.shape))
        if key not in memo:
            before, n_rows = tally.snapshot(), len(log_rows)
            out = first(p, c, z, z_rec, noise, latent_hw, log_rows)
            memo[key] = ({k: v - before.get(k, 0) for k, v in tally.snapshot().items()}, log_rows[n_rows:])
            return out
        delta, rows = memo[key]
        for k, v in delta.items():
            repeated[k] = repeated.get(k, 0) + v
        log_rows += [dict(r, step=p.index) for r in rows]
        return z, z_rec

    sampler._window_step = window_step


def count_edit_flops(config: str = "official", frames: int = 24, size: int = 512, params=None,
                     settings_overrides: Optional[dict[str, Any]] = None, decode_batch: int = 8,
                     device: str = "meta", once_per_kind: bool = True) -> dict[str, Any]:
    """FLOPs of one edit of `frames` frames at `size`² with the job `params` (JobParams; default
    settings when None). On the meta device nothing is computed; `device="cpu"` computes for real
    (the same count; fast at the tiny config, used by tests). Returns the total, FLOPs per sampler
    stage and the frames through the UNet."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mf_backend.bench.inputs import random_inputs
    from mf_backend.editing.pipeline import sampler_settings
    from mf_backend.editing.guidance import guidance_from_params
    from mf_backend.editing.sampler import MotionEditSampler
    from mf_backend.models.loading import build_models

    params = params or _default_params(size)
    with torch.device(device):
        models = build_models(config).eval()
    models.requires_grad_(False)
    estimator = None if params.advanced.estimator_weights == "shared" else copy.deepcopy(models.unet)
    settings = replace(sampler_settings(params, "none"), **(settings_overrides or {}))
    t0 = time.perf_counter()
    repeated: dict[str, float] = {}
    with FlopCounterMode(display=False) as counter:
        tally = _Tally(counter)

        def on_conv_in(module, args) -> None:  # every pass kind starts here
            tally.unet_frames["grad" if torch.is_grad_enabled() else "no_grad"] += int(args[0].shape[0])

        hooks = [u.conv_in.register_forward_pre_hook(on_conv_in) for u in {models.unet, estimator} - {None}]
        try:
            sampler = MotionEditSampler(models, guidance_from_params(params), settings, estimator, timer=tally)
            if once_per_kind:
                _count_each_step_kind_once(sampler, tally, repeated)
            result = sampler(random_inputs(frames, size, params.seed))
            with tally.section("decode"):
                z = result.latents[0].transpose(0, 1) / models.vae_scaling_factor  # (F,4,h,w)
                for i in range(0, frames, decode_batch):
                    models.vae.decode(z[i:i + decode_batch].to(models.dtype))
        finally:
            for h in hooks:
                h.remove()
    totals = {k: v + repeated.get(k, 0) for k, v in tally.snapshot().items()}
    stages = {k: v for k, v in totals.items() if not k.startswith("unet_")}
    total = counter.get_total_flops() + sum(v for k, v in repeated.items() if k in stages)
    return {"config": config, "frames": frames, "size": size, "steps": settings.steps, "camera": settings.camera,
            "tflop_per_clip": round(total / 1e12, 1),
            "stages_tflop": {k: round(v / 1e12, 1) for k, v in stages.items()},
            "unet_frames": {k: int(totals[f"unet_{k}"]) for k in ("no_grad", "grad")},
            "guidance_evaluations": len(result.guidance_log),
            "reconstruction_steps": sampler.last_reconstruction + 1,
            "switches": {k: getattr(settings, k) for k in BEFORE}, "count_s": round(time.perf_counter() - t0, 1),
            "flop": total}


_CACHE: dict[tuple, dict[str, Any]] = {}


def cached_edit_flops(config: str, frames: int, params, switches: dict[str, bool]) -> dict[str, Any]:
    """count_edit_flops, once per (config, clip, schedule, switches) in this process (bench speed's MFU)."""
    key = (config, frames, params.size, params.steps, params.camera, tuple(sorted(switches.items())))
    if key not in _CACHE:
        _CACHE[key] = count_edit_flops(config, frames, params.size, params, switches)
    return _CACHE[key]


def _default_params(size: int):
    from mf_backend.params import JobParams

    return JobParams(size=size)


def add_arguments(p) -> None:
    """Arguments of `bench flops` (wired by mf_backend/bench/cli.py)."""
    p.add_argument("--config", default="official", help="model config: official, demo, tiny")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--camera", action="store_true", help="camera mode (K/V injection from step 20)")
    p.add_argument("--before", action="store_true", help="the path before the speed work (every pass separate)")


def run(a) -> int:
    from mf_backend.params import JobParams

    params = JobParams(steps=a.steps, size=a.size, camera=a.camera)
    params.validate()
    out = count_edit_flops(a.config, a.frames, a.size, params, BEFORE if a.before else None)
    print(json.dumps(out), file=sys.stdout, flush=True)
    return 0
