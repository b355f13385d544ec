"""The window worker: a Ray actor on one GPU that holds the models and runs its share of the windows.

The driver (sharded.py) gives each worker a contiguous run of the clip's windows. The worker gets its
frames once (`setup`: images, poses, masks of its frames only); after that, every step, only latents
travel: the driver sends the blended latents (and the SDE noise) of the frames its windows touch, the
worker returns its weighted sums and weights over those frames (MotionEditSampler.blend_step with the
clip's window weights), so the driver's normalised sum is the single-process blend bit for bit.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import numpy as np
import torch

from mf_backend.editing.guidance import RegionMasks
from mf_backend.editing.sampler import EditInputs, StageTimer, checkpointing
from mf_backend.params import JobParams

CLIP_BATCH = 32  # MotionEditSampler.clip_tokens' batch: token batches start at multiples of it


class WindowWorker:
    """Wrapped with ray.remote by the driver (options: cluster.actor_options)."""

    def __init__(self, params: dict[str, Any]):
        from mf_backend.environment import resolve_device, resolve_dtype
        from mf_backend.models.loading import load_models

        self.params = JobParams.from_dict(params)
        device = resolve_device(self.params.device)
        self.models = load_models(self.params.model, self.params.models_dir, device,
                                  resolve_dtype(self.params.precision, device))
        self.sampler = None

    def describe(self) -> dict[str, Any]:
        """What the driver needs without loading models itself."""
        from mf_backend.editing.pipeline import run_info

        cfg = self.models.unet.config
        return {"in_channels": cfg.in_channels, "latent_scale": cfg.latent_scale, "pid": os.getpid(),
                **run_info(self.models, {})}

    def setup(self, inputs: EditInputs, windows: list[range], weights: list[torch.Tensor], touched: range,
              clip_frames: int) -> dict[str, Any]:
        """`inputs`: frames lo..hi of the clip (lo a multiple of CLIP_BATCH, so the CLIP tokens come from
        the same batches as in one process); `windows` and `touched` in those local frame numbers."""
        from mf_backend.editing.pipeline import build_sampler, offload_idle_models

        self.timer = StageTimer(self.models.device)
        self.sampler, plan = build_sampler(self.models, self.params, clip_frames, timer=self.timer)
        with self.timer.section("conditions"):
            inputs.tokens = self.sampler.clip_tokens(inputs.frames, CLIP_BATCH)
        if plan.offload:
            offload_idle_models(self.models, self.sampler, inputs)
        self.inputs, self.windows, self.weights, self.touched = inputs, windows, weights, touched
        scale = self.models.unet.config.latent_scale
        self.latent_hw = (inputs.frames.shape[1] // scale, inputs.frames.shape[2] // scale)
        self.masks = RegionMasks(inputs.M_r.float(), inputs.M_e.float(), self.latent_hw)
        self.cached: dict = {}
        self.memory = plan.to_dict()
        return self.memory

    def _local(self, z: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """(1,C,len(touched),h,w) from the driver -> (1,C,L,h,w) on the device, zero where not touched."""
        if z is None:
            return None
        out = torch.zeros((*z.shape[:2], self.inputs.num_frames, *z.shape[3:]), dtype=torch.float32)
        out[:, :, self.touched.start:self.touched.stop] = z
        return out.to(self.models.device)

    def step(self, index: int, z_edit: torch.Tensor, z_rec: Optional[torch.Tensor], noise: Optional[torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict], float]:
        """Step `index` on this worker's windows: (edit sums, reconstruction sums, weights, guidance log,
        compute seconds) over the touched frames, on the host."""
        t0 = time.perf_counter()
        s = self.sampler
        rows: list[dict] = []
        with checkpointing(s.estimator, s.settings.checkpoint):
            e, r = s.blend_step(s.plan[index], self.inputs, self.masks, self.windows, self._local(z_edit),
                                self._local(z_rec), self._local(noise), self.latent_hw, self.cached, rows,
                                self.weights)
        t = slice(self.touched.start, self.touched.stop)
        out = e.sum[:, :, t].cpu(), None if r is None else r.sum[:, :, t].cpu(), e.norm[t].cpu()  # r: None once stopped
        return (*out, rows, time.perf_counter() - t0)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(1,4,f,h,w) final latents of some frames -> uint8 (f,H,W,3) crops."""
        from mf_backend.editing.pipeline import decode_latents

        with self.timer.section("decode"):
            return decode_latents(self.models, latents, self.memory["decode_batch"])

    def timings(self) -> dict[str, float]:
        return dict(self.timer.seconds)
