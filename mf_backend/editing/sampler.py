"""The two-branch score-guided sampler (method.md §A.4, §A.5, §A.8, §B).

Both branches start from the same Gaussian noise z_T:

* The reconstruction branch: source poses, conditional only (no CFG), plain DDIM.
* The editing branch: aligned target poses, CFG with an all-zero CLIP token as the unconditional input,
  ConsistencyGuidance against the reconstruction latent of the same step, replay, masked SDE noise,
  and in camera mode the reconstruction's up-block self-attention K/V (source background) injected.

The reference runs the whole reconstruction first and keeps its 51 latents (and, in camera mode,
~20 GB of K/V in host RAM). The reconstruction does not depend on the edit, so here the two branches
advance in lock-step: at step i the reconstruction pass on z^rec_i gives both z^rec_{i+1} and the K/V
the editing pass of step i needs. Same numbers, nothing stored beyond the current step and window.
The reference's last re-noise pass of every replay step (its result is discarded) is not run.

Passes saved when the estimator shares the denoising UNet's weights (`estimator_weights="shared"`):

* `reuse_features`: the estimator's no-grad pass on z^rec_i has exactly the inputs of the
  reconstruction pass of step i (latent, timestep, CLIP tokens, source poses, appearance), so its
  up-block features are taken from that pass (`forward_with_features`) instead of a third forward.
* `fuse_guidance`: the grad-enabled estimator pass on the editing latent has exactly the inputs of
  the conditional half of the CFG pass (outside camera K/V injection), so at guidance steps that half
  runs once with grad and gives both v_c and the features; the unconditional half runs without grad.
* `checkpoint`: activation checkpointing of the UNet layers inside the grad-enabled pass (which
  blocks: `memory.CHECKPOINT_PRESETS` or a comma list such as "down0,up2"); less memory, extra recompute.

Work saved for any estimator (each equal to the separate passes to fp32 rounding, tests/test_bench_speed.py):

* `stop_reconstruction`: outside camera mode nothing reads the reconstruction branch after the last
  guidance step, so it stops there (21 of 50 reconstruction passes saved at 50 steps); in camera mode
  it runs to the end (its K/V are injected at every step from ref 20 on).
* `batch_passes`: the no-grad passes of a step that need only the step's inputs run as one UNet call
  (batch 3: reconstruction + both CFG halves; batch 2 at fused guidance steps: reconstruction + the
  unconditional half), instead of separate calls. Not in camera-injection steps (the CFG pass needs the
  reconstruction's K/V first) nor in the later repeats of a replay step (their latent is re-noised).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch

from mf_backend.editing.camera import capture_hook, inject_hook
from mf_backend.editing.guidance import LEVELS, ConsistencyGuidance, RegionMasks
from mf_backend.editing.memory import checkpoint_blocks, checkpointing
from mf_backend.editing.noise import FrameNoise
from mf_backend.editing.schedule import (StepPlan, build_schedule, cfg, ddim_invert, ddim_step,
                                         last_reconstruction_step)
from mf_backend.editing.windows import WindowBlender, plan_windows

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]  # (done steps, total steps, message); may raise Cancelled

class StageTimer:
    """Wall time per stage. With `sync` it waits for the GPU at section ends (exact, slightly slower).
    Every sub-pass (reconstruction, CFG halves, guidance, each window) is a section, so `should_stop`,
    called as each one begins, is where a cancel stops the sampler (it raises, e.g. Cancelled)."""

    def __init__(self, device: torch.device | str = "cpu", sync: bool = False,
                 should_stop: Optional[Callable[[], None]] = None):
        self.sync = sync and torch.device(device).type == "cuda"
        self.seconds: dict[str, float] = {}
        self.should_stop = should_stop

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        if self.should_stop is not None:
            self.should_stop()
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class EditInputs:
    """One clip at the working resolution (H = W = size). Images stay uint8 on the host; windows are
    converted and moved to the device when used, so host and GPU memory do not grow with the clip."""

    frames: torch.Tensor  # uint8 (F,H,W,3) source frames (ReCtr input and CLIP tokens)
    source_poses: torch.Tensor  # uint8 (F,H,W,3) source pose renders
    target_poses: torch.Tensor  # uint8 (F,H,W,3) aligned target pose renders
    M_r: torch.Tensor  # float (F,H,W) source person masks
    M_e: torch.Tensor  # float (F,H,W) predicted target person masks
    tokens: Optional[torch.Tensor] = None  # (F,D) CLIP image embeddings; computed when None
    frame_index: Optional[Sequence[int]] = None  # (F,) absolute source frame of each frame (noise seeds); None = 0..F-1

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class _Window:
    """Conditions of one window on the device."""

    tokens: torch.Tensor  # (1,L,D)
    pose_src: torch.Tensor  # (1,C0,L,h,w)
    pose_tgt: torch.Tensor
    appearance: list[torch.Tensor]  # ReCtr of the denoising UNet, 4 x (1,C_k,L,h_k,w_k)
    est_appearance: list[torch.Tensor]  # ReCtr of the estimator (the same list when weights are shared)
    masks: RegionMasks


@dataclass
class SamplerSettings:
    steps: int = 50
    guidance_scale: float = 3.5
    seed: int = 42
    camera: bool = False
    window: int = 24
    overlap: int = 4
    reuse_features: bool = True  # estimator features on z_rec from the reconstruction pass (shared weights)
    fuse_guidance: bool = True  # guidance pass = the conditional CFG half, with grad (shared weights)
    checkpoint: str = "none"  # activation checkpointing in grad-enabled passes (see checkpoint_blocks)
    stop_reconstruction: bool = True  # no reconstruction passes after the last step that reads them
    batch_passes: bool = True  # a step's no-grad passes on its input latents as one UNet call


@dataclass
class SampleResult:
    latents: torch.Tensor  # (1,4,F,h,w) float32 edited latent
    reconstruction: Optional[torch.Tensor]  # (1,4,F,h,w) float32 final reconstruction latent; None when stopped
    timings: dict[str, float] = field(default_factory=dict)
    guidance_log: list[dict] = field(default_factory=list)  # per guidance evaluation: step, S per term, losses
    info: dict = field(default_factory=dict)  # what the caller ran it with (e.g. the memory plan)


def _to_unit(x: torch.Tensor, device, dtype) -> torch.Tensor:
    """uint8 (L,H,W,3) -> float (L,3,H,W) in [0,1]."""
    return x.to(device).permute(0, 3, 1, 2).to(dtype) / 255.0


class MotionEditSampler:
    """Runs both branches over the schedule; see the module docstring."""

    def __init__(self, models, guidance: ConsistencyGuidance, settings: SamplerSettings,
                 estimator: Optional[torch.nn.Module] = None, progress: Optional[ProgressFn] = None,
                 timer: Optional[StageTimer] = None):
        self.models = models
        self.unet = models.unet
        self.estimator = estimator if estimator is not None else models.unet
        self.guidance = guidance
        self.settings = settings
        self.progress = progress
        self.device = models.device
        self.dtype = models.dtype
        self.timer = timer or StageTimer(self.device)
        self.plan = build_schedule(settings.steps, guidance=guidance.enabled, camera=settings.camera)
        checkpoint_blocks(self.estimator, settings.checkpoint)  # validate
        shared = self.estimator is self.unet
        self.reuse = settings.reuse_features and shared
        self.fuse = settings.fuse_guidance and shared
        self.batch = settings.batch_passes
        self.last_reconstruction = last_reconstruction_step(self.plan, settings.stop_reconstruction)

    # ------------------------------------------------------------------ conditions

    @torch.no_grad()
    def clip_tokens(self, frames: torch.Tensor, batch: int = 32) -> torch.Tensor:
        """uint8 (F,H,W,3) -> (F,D): one CLIP image token per frame (its own source frame)."""
        out = [self.models.clip_embed(frames[i:i + batch])
               for i in range(0, frames.shape[0], batch)]
        return torch.cat(out).float()

    @torch.no_grad()
    def window_conditions(self, inputs: EditInputs, masks: RegionMasks, win: range) -> _Window:
        sl = slice(win.start, win.stop)
        dev, dt = self.device, self.dtype
        src = _to_unit(inputs.frames[sl], dev, dt) * 2 - 1  # (L,3,H,W) in [-1,1]
        poses = torch.cat([inputs.source_poses[sl], inputs.target_poses[sl]])
        pose_feat = self.models.pose_controller(_to_unit(poses, dev, dt).transpose(0, 1)[None])
        L = len(win)
        # PoCtr per frame: source and target in one call, split along frames
        pose_src, pose_tgt = pose_feat[:, :, :L], pose_feat[:, :, L:]
        appearance = self.unet.appearance_adapter(src[None])
        est_app = appearance if self.estimator is self.unet else self.estimator.appearance_adapter(src[None])
        tokens = inputs.tokens[sl].to(dev, dt)[None]
        return _Window(tokens, pose_src, pose_tgt, appearance, est_app, masks.frames(sl).to(dev))

    # ------------------------------------------------------------------ network passes

    def _no_grad_pass(self, rows: Sequence[str], z: torch.Tensor, z_rec: Optional[torch.Tensor], t: torch.Tensor,
                      c: _Window, hook=None, features: bool = False) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
        """One no-grad UNet call over `rows` ("rec": z_rec, source poses; "u"/"c": z, target poses, zero /
        real CLIP token), batched in that order. Returns ({row: v (1,4,L,h,w) float}, row 0's features)."""
        spec = {"rec": (z_rec, c.tokens, c.pose_src), "u": (z, torch.zeros_like(c.tokens), c.pose_tgt),
                "c": (z, c.tokens, c.pose_tgt)}
        zs, tokens, poses = zip(*(spec[r] for r in rows))
        pose = poses[0] if all(p is poses[0] for p in poses) else torch.cat(poses)  # batch 1 broadcasts
        args = (torch.cat(zs), t, torch.cat(tokens), pose, c.appearance)
        with torch.no_grad():
            if features:
                v, feats = self.unet.forward_with_features(*args, levels=LEVELS, attention_hook=hook)
                feats = {k: f[:1].clone() for k, f in feats.items()}  # row 0 only: free the other rows' maps
            else:
                v, feats = self.unet(*args, attention_hook=hook), None
        return dict(zip(rows, v.float().chunk(len(rows)))), feats

    def _features(self, z: torch.Tensor, t: torch.Tensor, c: _Window, pose: torch.Tensor) -> dict[int, torch.Tensor]:
        return self.estimator.features(z, t, c.tokens, pose, c.est_appearance, LEVELS)

    def _fused_guidance(self, z: torch.Tensor, t: torch.Tensor, c: _Window, feats_rec, log_row: dict
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, v_c): the conditional CFG half, run once with grad, gives v_c and the editing features."""
        out: dict[str, torch.Tensor] = {}

        def edit_features(zz: torch.Tensor) -> dict[int, torch.Tensor]:
            v_c, feats = self.unet.forward_with_features(zz, t, c.tokens, c.pose_tgt, c.appearance, LEVELS,
                                                         grad_through_sample=False)
            out["v_c"] = v_c.detach().float()
            return feats
        G, report = self.guidance.gradient(edit_features, z, feats_rec, c.masks)
        log_row.update(report)
        return G, out["v_c"]

    def _t(self, timestep: int) -> torch.Tensor:
        """The timestep as a device tensor: a compiled UNet then sees one input, not 50 constants."""
        return torch.tensor(timestep, device=self.device)

    # ------------------------------------------------------------------ the loop

    def initial_noise(self, frame_index: Sequence[int], latent_hw: tuple[int, int]) -> tuple[torch.Tensor, FrameNoise]:
        """z_T (1,C,F,h,w) drawn per absolute frame (editing/noise.py), and the source of the SDE noise."""
        noise = FrameNoise(self.settings.seed, frame_index, (self.unet.config.in_channels, *latent_hw))
        return noise.draw().to(self.device), noise

    def __call__(self, inputs: EditInputs) -> SampleResult:
        F_, H, W = inputs.frames.shape[:3]
        scale = self.unet.config.latent_scale
        latent_hw = (H // scale, W // scale)
        timer = self.timer
        with timer.section("conditions"):
            if inputs.tokens is None:
                inputs.tokens = self.clip_tokens(inputs.frames)
            masks = RegionMasks(torch.as_tensor(inputs.M_r).float(), torch.as_tensor(inputs.M_e).float(), latent_hw)
        windows = plan_windows(F_, self.settings.window, self.settings.overlap)
        cached = {}  # a single window's conditions are computed once; several are recomputed per step
        with checkpointing(self.estimator, self.settings.checkpoint):
            return self._loop(inputs, windows, masks, latent_hw, cached)

    def _loop(self, inputs: EditInputs, windows: Sequence[range], masks: RegionMasks, latent_hw, cached: dict
              ) -> SampleResult:
        F_ = inputs.num_frames
        timer = self.timer
        frame_index = range(F_) if inputs.frame_index is None else inputs.frame_index
        z_edit, frame_noise = self.initial_noise(frame_index, latent_hw)
        z_rec: Optional[torch.Tensor] = z_edit.clone()
        log_rows: list[dict] = []
        total = len(self.plan)
        for p in self.plan:
            noise = sde_noise(p, frame_noise)
            next_edit, next_rec = self.blend_step(p, inputs, masks, windows, z_edit, z_rec,
                                                  None if noise is None else noise.to(self.device),
                                                  latent_hw, cached, log_rows)
            z_edit = next_edit.result()
            z_rec = next_rec.result() if next_rec is not None else None
            if self.progress:
                self.progress(p.index + 1, total, f"step {p.index + 1}/{total}")
        return SampleResult(z_edit, z_rec, dict(timer.seconds), log_rows)

    def blend_step(self, p: StepPlan, inputs: EditInputs, masks: RegionMasks, windows: Sequence[range],
                   z_edit: torch.Tensor, z_rec: Optional[torch.Tensor], noise: Optional[torch.Tensor], latent_hw,
                   cached: dict, log_rows: list, weights: Optional[list[torch.Tensor]] = None
                   ) -> tuple[WindowBlender, Optional[WindowBlender]]:
        """Step i on `windows` (frame ranges of inputs and of the (1,4,F,h,w) latents): the weighted sums
        entering step i+1. Ray workers call it on their share of the windows (`weights`: the clip's).
        After `last_reconstruction` the reconstruction no longer runs: no reconstruction sums (None)."""
        total = len(self.plan)
        if p.index > self.last_reconstruction:
            z_rec = None  # nothing reads the reconstruction any more
        next_edit = WindowBlender(z_edit, windows, weights)
        next_rec = WindowBlender(z_rec, windows, weights) if z_rec is not None else None
        for k, win in enumerate(windows):
            if self.progress:
                self.progress(p.index, total, f"step {p.index + 1}/{total}"
                              + (f", window {k + 1}/{len(windows)}" if len(windows) > 1 else ""))
            sl = slice(win.start, win.stop)
            with self.timer.section("conditions"):
                c = cached.get(k) or self.window_conditions(inputs, masks, win)
                if len(windows) == 1:
                    cached[k] = c
            e, r = self._window_step(p, c, z_edit[:, :, sl], None if z_rec is None else z_rec[:, :, sl],
                                     None if noise is None else noise[:, :, sl], latent_hw, log_rows)
            next_edit.add(k, e)
            if next_rec is not None:
                next_rec.add(k, r)
        return next_edit, next_rec

    def _window_step(self, p: StepPlan, c: _Window, z: torch.Tensor, z_rec: Optional[torch.Tensor],
                     noise: Optional[torch.Tensor], latent_hw, log_rows: list
                     ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Step i on one window: (edit latent, reconstruction latent or None) entering step i+1.

        Sub-passes, in order: (1) the no-grad pass on the step's input latents: the reconstruction
        (when it still runs) batched with the CFG halves of the first repeat that need no grad;
        then per repeat (2) guidance (grad-enabled; with `fuse` it also gives the conditional half),
        (3) the CFG halves not yet run, and the DDIM step, (4) the re-noise before the next repeat."""
        timer, s = self.timer, self.settings.guidance_scale
        t = self._t(p.timestep)
        reuse = p.guidance and self.reuse
        # K/V injection changes the CFG pass's up-block features, so it cannot double as the estimator
        fuse = p.guidance and self.fuse and not p.camera
        no_grad_halves = [h for h in (("c",) if s == 1.0 else ("u", "c")) if not (fuse and h == "c")]
        kv: dict = {}
        feats_rec = rec_next = None
        ready: dict[str, torch.Tensor] = {}  # CFG halves of the first repeat computed in pass (1)
        if z_rec is not None:
            rows = ["rec"] + (no_grad_halves if self.batch and not p.camera else [])
            with timer.section("reconstruction"):  # stage "reconstruction": includes the batched CFG rows
                hook = capture_hook(kv) if p.camera else None
                # the capture hook returns K/V unchanged, so these are the estimator's features
                v, feats_rec = self._no_grad_pass(rows, z, z_rec, t, c, hook, features=reuse)
                rec_next = ddim_step(z_rec, v.pop("rec"), p)
                ready = v
        if p.guidance and not reuse:
            with timer.section("guidance"), torch.no_grad():
                feats_rec = self._features(z_rec, t, c, c.pose_src)  # same for every replay
        m_lat = c.masks.latent_M_e().to(z.device)
        inject = inject_hook(kv, c.masks, latent_hw) if p.camera else None
        z_prev = z
        for rep in range(p.repeats):
            G = None
            if fuse:
                row = {"step": p.index, "repeat": rep}
                with timer.section("guidance"):
                    G, ready["c"] = self._fused_guidance(z, t, c, feats_rec, row)
                log_rows.append(row)
            elif p.guidance:
                with timer.section("guidance"):
                    G, report = self.guidance.gradient(
                        lambda zz: self._features(zz, t, c, c.pose_tgt), z, feats_rec, c.masks)
                    log_rows.append({"step": p.index, "repeat": rep, **report})
            with timer.section("editing"), torch.no_grad():
                missing = [h for h in ("u", "c") if h not in ready and (h == "c" or s != 1.0)]
                if missing:
                    ready.update(self._no_grad_pass(missing, z, None, t, c, inject)[0])
                v = ready["c"] if s == 1.0 else cfg(ready["u"], ready["c"], s)
                z_prev = ddim_step(z, v, p, G, noise, m_lat)
                ready = {}
                if rep + 1 < p.repeats:  # the reference also re-noises after the last repeat, then drops it
                    z = self._renoise(z_prev, p, c)
        return z_prev, rec_next

    def _renoise(self, z_prev: torch.Tensor, p: StepPlan, c: _Window) -> torch.Tensor:
        """Replay: one deterministic DDIM-inversion step t' -> t, conditional pass, target poses, no K/V."""
        v = self.unet(z_prev, self._t(p.prev_timestep), c.tokens, c.pose_tgt, c.appearance).float()
        return ddim_invert(z_prev, v, p)


def sde_noise(p: StepPlan, frame_noise: FrameNoise) -> Optional[torch.Tensor]:
    """Step p's SDE noise (1,C,F,h,w) (float32, CPU), or None (and no draw) when the step adds none."""
    return frame_noise.draw() if p.sde_in > 0 or p.sde_out > 0 else None
