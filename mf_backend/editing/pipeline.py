"""Sampling on prepared inputs: the part of the edit between `EditInputs` and the decoded crops.

    result = run_sampling(models, inputs, params, progress, timer)   # both branches + guidance
    frames = decode_latents(models, result.latents, result.info["memory"]["decode_batch"])

The `edit` job (mf_backend/edit.py), the demo, the Ray window workers (mf_backend/distributed) and the
benchmarks all sample through these functions, so they share one memory plan, one sampler set-up and
one decode.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable, Optional

import numpy as np
import torch

from mf_backend.editing.guidance import guidance_from_params
from mf_backend.editing.memory import MemoryPlan, resolve_memory_plan
from mf_backend.editing.sampler import EditInputs, MotionEditSampler, SampleResult, SamplerSettings, StageTimer
from mf_backend.params import JobParams

log = logging.getLogger(__name__)


def sampler_settings(params: JobParams, checkpoint: str) -> SamplerSettings:
    """The sampler's settings from the job; `checkpoint` is the resolved preset (memory_plan(...).checkpoint)."""
    return SamplerSettings(steps=params.steps, guidance_scale=params.guidance_scale, seed=params.seed,
                           camera=params.camera, window=params.advanced.window, overlap=params.advanced.overlap,
                           checkpoint=checkpoint)


def memory_plan(models, params: JobParams, num_frames: int) -> MemoryPlan:
    """Checkpointing and decode batch for this job on this device (editing/memory.py)."""
    a = params.advanced
    return resolve_memory_plan(a.checkpoint, models.config, min(num_frames, a.window), params.size, models.device,
                               models.dtype, params.camera)


@torch.no_grad()
def decode_latents(models, latents: torch.Tensor, batch: int = 8,
                   progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """(1,4,F,h,w) → uint8 (F,H,W,3), `batch` frames per VAE call."""
    z = latents[0].transpose(0, 1) / models.vae_scaling_factor  # (F,4,h,w)
    vae = models.vae.to(models.device)  # back from the host after a sequential offload (else a no-op)
    out = []
    for i in range(0, z.shape[0], batch):
        x = vae.decode(z[i:i + batch].to(models.device, models.dtype)).sample.float()
        x = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        out.append(x.permute(0, 2, 3, 1).cpu().numpy())
        if progress:
            progress(min(i + batch, z.shape[0]), z.shape[0])
    return np.concatenate(out)


def offload_idle_models(models, sampler: MotionEditSampler, inputs: EditInputs) -> None:
    """Sequential offload (low memory): CLIP is done once the tokens exist and the VAE is needed only for
    the decode, so both wait on the host while the UNet runs (decode_latents brings the VAE back)."""
    with sampler.timer.section("conditions"):
        if inputs.tokens is None:
            models.image_encoder.to(models.device)
            inputs.tokens = sampler.clip_tokens(inputs.frames)
        models.image_encoder.to("cpu")
        models.vae.to("cpu")
        if models.device.type == "cuda":
            torch.cuda.empty_cache()


def build_sampler(models, params: JobParams, num_frames: int, progress=None, timer: Optional[StageTimer] = None,
                  estimator: Optional[torch.nn.Module] = None) -> tuple[MotionEditSampler, MemoryPlan]:
    """The sampler of this job on these models and its memory plan (shared by run_sampling and the
    Ray window workers, mf_backend/distributed)."""
    from mf_backend.models.compile import compile_unet

    if params.steps is None:  # the model's own default (model_choice)
        from mf_backend.model_choice import choose_model

        params = replace(params, steps=choose_model(str(models.source), None).steps)
    models.requires_grad_(False)  # guidance differentiates w.r.t. the latent only
    if estimator is None and params.advanced.estimator_weights != "shared":
        from mf_backend.models.estimator import build_estimator

        estimator = build_estimator(models, params.advanced.estimator_weights, params.models_dir, params.seed)
        estimator.requires_grad_(False)
    plan = memory_plan(models, params, num_frames)  # after the estimator: its weights are resident
    if params.advanced.compile != "none":
        log.info("torch.compile (%s): the first step compiles and is slower", params.advanced.compile)
        models.unet = compile_unet(models.unet, params.advanced.compile)
    sampler = MotionEditSampler(models, guidance_from_params(params), sampler_settings(params, plan.checkpoint),
                                estimator, progress, timer)
    return sampler, plan


def run_sampling(models, inputs: EditInputs, params: JobParams, progress=None, timer: Optional[StageTimer] = None,
                 estimator: Optional[torch.nn.Module] = None) -> SampleResult:
    """Both branches + guidance on prepared inputs (the part benchmarks and the demo reuse).
    `result.info["memory"]` is the memory plan it ran with (its decode_batch is for decode_latents)."""
    sampler, plan = build_sampler(models, params, inputs.num_frames, progress, timer, estimator)
    if plan.offload:
        offload_idle_models(models, sampler, inputs)
    result = sampler(inputs)
    result.info["memory"] = plan.to_dict()
    return result


def run_info(models, memory: dict) -> dict[str, Any]:
    """What ran the edit, for edit.json: model, config, device, dtype, memory plan."""
    return {"model": models.source if models.source != "random" else models.config_name,
            "config": models.config_name, "device": str(models.device),
            "dtype": str(models.dtype).replace("torch.", ""), "memory": memory}
