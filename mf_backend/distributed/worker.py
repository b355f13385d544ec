"""The window worker: a Ray actor on one GPU that holds the models and runs its share of the windows.

The driver (sharded.py) gives each worker a contiguous run of the clip's windows and its frames once
(`setup`: images, poses, masks). The worker keeps the latents of the frames its windows touch and
draws their noise itself (noise is per absolute frame, editing/noise.py). Frames that only its own
windows touch are blended here; for frames shared with a neighbouring worker it returns its weighted
sums and weights, and the driver sends back their blend before the next step. So per step only the
latents of the frames where two workers' windows overlap travel, and the result equals the
single-process blend bit for bit (same weights, same order of additions).
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import numpy as np
import torch

from mf_backend.editing.guidance import RegionMasks
from mf_backend.editing.noise import FrameNoise
from mf_backend.editing.sampler import EditInputs, StageTimer, checkpointing, sde_noise
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
              shared: list[int], clip_frames: int) -> dict[str, Any]:
        """`inputs`: frames lo..hi of the clip (lo a multiple of CLIP_BATCH, so the CLIP tokens come from the
        same batches as in one process, and `frame_index` set); `windows`, `touched` (the frames the
        windows cover) and `shared` (touched by another worker too) in those local frame numbers."""
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
        t = slice(touched.start, touched.stop)
        self.noise = FrameNoise(self.params.seed, list(inputs.frame_index[t]),
                                (self.models.unet.config.in_channels, *self.latent_hw))
        self.z_edit = self._local(self.noise.draw())  # z_T of the touched frames, as in one process
        self.z_rec = self.z_edit.clone()
        self.shared = torch.tensor(shared, dtype=torch.long)
        self.own = torch.tensor(sorted(set(range(touched.start, touched.stop)) - set(shared)), dtype=torch.long)
        return self.memory

    def _local(self, z: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """(1,C,len(touched),h,w) -> (1,C,L,h,w) on the device, zero where not touched."""
        if z is None:
            return None
        out = torch.zeros((*z.shape[:2], self.inputs.num_frames, *z.shape[3:]), dtype=torch.float32)
        out[:, :, self.touched.start:self.touched.stop] = z
        return out.to(self.models.device)

    def step(self, index: int, shared_edit: Optional[torch.Tensor], shared_rec: Optional[torch.Tensor]
             ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, list[dict], float]:
        """Step `index`, entered with the driver's blend of the shared frames (None at the first step).
        Returns (edit sums, reconstruction sums or None once it stopped, weights) at the shared frames,
        the guidance log and the compute seconds."""
        t0 = time.perf_counter()
        dev = self.models.device
        if shared_edit is not None:
            self.z_edit[:, :, self.shared.to(dev)] = shared_edit.to(dev)
        if shared_rec is not None and self.z_rec is not None:
            self.z_rec[:, :, self.shared.to(dev)] = shared_rec.to(dev)
        s = self.sampler
        rows: list[dict] = []
        with checkpointing(s.estimator, s.settings.checkpoint):
            p = s.plan[index]
            e, r = s.blend_step(p, self.inputs, self.masks, self.windows, self.z_edit, self.z_rec,
                                self._local(sde_noise(p, self.noise)), self.latent_hw, self.cached, rows,
                                self.weights)
        own, shared = self.own.to(dev), self.shared.to(dev)
        self.z_edit[:, :, own] = e.result(own)
        if r is None:  # the reconstruction has stopped (after the last guidance step)
            self.z_rec = None
        else:
            self.z_rec[:, :, own] = r.result(own)
        out = e.sum[:, :, shared].cpu(), None if r is None else r.sum[:, :, shared].cpu(), e.norm[shared].cpu()
        return (*out, rows, time.perf_counter() - t0)

    def latents(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(edit, reconstruction or None) of the touched frames on the host (shared frames: stale, the
        driver has their blend)."""
        t = slice(self.touched.start, self.touched.stop)
        return self.z_edit[:, :, t].cpu(), None if self.z_rec is None else self.z_rec[:, :, t].cpu()

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(1,4,f,h,w) final latents of some frames -> uint8 (f,H,W,3) crops."""
        from mf_backend.editing.pipeline import decode_latents

        with self.timer.section("decode"):
            return decode_latents(self.models, latents, self.memory["decode_batch"])

    def timings(self) -> dict[str, float]:
        return dict(self.timer.seconds)
