"""Model FLOPs of the edit for `bench speed`'s MFU: torch.utils.flop_counter on a meta-device copy of the
UNet at the exact config, frames and size (no compute), times the passes the chosen switches run.
Activation-checkpoint recompute is not counted (MFU counts model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

import json
from typing import Any, Callable


def _count(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


_FLOP_CACHE: dict[tuple, dict[str, float]] = {}


def unet_call_flops(config, frames: int, size: int) -> dict[str, float]:
    """FLOPs of one call of each kind at (frames, size), counted on the meta device (no compute):
    fwd1 / fwd2 = forward at batch 1 / 2 (CFG), partial = forward up to the guidance features,
    backward = one backward of that partial forward to the latent, conditions = PoCtr (2F) + ReCtr."""
    import torch

    from mf_backend.models.controllers import PoseController
    from mf_backend.models.unet3d import UNet3DConditionModel

    key = (json.dumps(config.to_dict(), sort_keys=True, default=str), frames, size)
    if key in _FLOP_CACHE:
        return _FLOP_CACHE[key]
    s, lv = config.latent_scale, (1, 2)
    with torch.device("meta"):
        unet = UNet3DConditionModel(config).requires_grad_(False)
        pose = PoseController(config).requires_grad_(False)
        h = size // s
        ctx = torch.zeros(1, frames, config.cross_attention_dim)
        z = torch.zeros(1, config.in_channels, frames, h, h)
        out = {"fwd1": _count(lambda: unet(z, 500, ctx)),
               "fwd2": _count(lambda: unet(torch.cat([z, z]), 500, torch.cat([ctx, ctx])))}
        zz = z.clone().requires_grad_(True)
        feats: dict = {}
        out["partial"] = _count(lambda: feats.update(unet(zz, 500, ctx, up_ft_indices=lv)))
        loss = sum(f.float().sum() for f in feats.values())
        out["backward"] = _count(lambda: torch.autograd.grad(loss, zz))
        out["conditions"] = (_count(lambda: pose(torch.zeros(1, 3, 2 * frames, size, size)))
                             + _count(lambda: unet.appearance_adapter(torch.zeros(1, frames, 3, size, size))))
    _FLOP_CACHE[key] = out
    return out


def count_passes(plan, reuse: bool, fuse: bool, guidance_scale: float, n_losses: int) -> dict[str, int]:
    """How many UNet calls of each kind the sampler runs over `plan` for one window (mirrors
    MotionEditSampler._window_step)."""
    n = dict(fwd1=0, fwd2=0, partial=0, backward=0)
    cfg = "fwd1" if guidance_scale == 1.0 else "fwd2"
    for p in plan:
        n["fwd1"] += 1  # reconstruction (returns the features too when reused)
        if p.guidance and not reuse:
            n["partial"] += 1  # estimator on z_rec
        fused = p.guidance and fuse and not p.camera
        for rep in range(p.repeats):
            if fused:  # conditional half with grad (full forward), unconditional half without
                n["fwd1"] += 1 if guidance_scale == 1.0 else 2
                n["backward"] += n_losses
            else:
                n[cfg] += 1
                if p.guidance:
                    n["partial"] += 1
                    n["backward"] += n_losses
            if rep + 1 < p.repeats:
                n["fwd1"] += 1  # replay re-noise
    return n


def flop_model(models, frames: int, size: int, params, variant: Any) -> dict[str, Any]:
    """Model FLOPs of the whole edit as run with `variant` (a bench.speed.Variant: its reuse and fuse
    switches), summed over UNet passes per window, conditions (PoCtr, ReCtr, CLIP) and the VAE."""
    import torch

    from mf_backend.editing.guidance import guidance_from_params
    from mf_backend.editing.schedule import build_schedule
    from mf_backend.editing.windows import plan_windows

    guid = guidance_from_params(params)
    w = guid.weights
    n_losses = int(w.active("fg")) + int(any(w.active(t) for t in ("com", "body", "over")))
    plan = build_schedule(params.steps, guidance=guid.enabled, camera=params.camera)
    shared = params.estimator_weights == "shared"
    n = count_passes(plan, variant.reuse and shared, variant.fuse and shared, params.guidance_scale, n_losses)
    per_len: dict[int, dict[str, float]] = {}
    unet_f = cond_f = 0.0
    for win in plan_windows(frames, params.window, params.overlap):
        L = len(win)
        if L not in per_len:
            per_len[L] = unet_call_flops(models.config, L, size)
        c = per_len[L]
        unet_f += sum(n[k] * c[k] for k in n)
        cond_f += c["conditions"]
    dev = models.device
    with torch.no_grad():
        lat = torch.zeros(1, models.config.in_channels, size // models.config.latent_scale,
                          size // models.config.latent_scale, device=dev, dtype=models.dtype)
        vae_f = _count(lambda: models.vae.decode(lat)) * frames
        img = torch.zeros(1, size, size, 3, dtype=torch.uint8)
        clip_f = _count(lambda: models.clip_embed(img)) * frames
    total = unet_f + cond_f + vae_f + clip_f
    return {"passes": n, "n_losses": n_losses, "unet_tflop": unet_f / 1e12, "decode_tflop": vae_f / 1e12,
            "conditions_tflop": (cond_f + clip_f) / 1e12, "total_tflop": total / 1e12,
            "per_call_tflop": {L: {k: round(v / 1e12, 3) for k, v in c.items()} for L, c in per_len.items()}}
