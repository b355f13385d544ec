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
  up-block features are taken from that pass (`return_features`) instead of a third forward.
* `fuse_guidance`: the grad-enabled estimator pass on the editing latent has exactly the inputs of
  the conditional half of the CFG pass (outside camera K/V injection), so at guidance steps that half
  runs once with grad and gives both v_c and the features; the unconditional half runs without grad.
* `checkpoint`: activation checkpointing of the UNet layers inside the grad-enabled pass (which
  blocks: `CHECKPOINT_PRESETS` or a comma list such as "down0,up2"); less memory, extra recompute.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch

from mf_backend.editing.guidance import LEVELS, ConsistencyGuidance, RegionMasks
from mf_backend.editing.noise import FrameNoise
from mf_backend.editing.schedule import StepPlan, build_schedule
from mf_backend.editing.windows import WindowBlender, plan_windows

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]  # (done steps, total steps, message); may raise Cancelled

# blocks whose layers are checkpointed in grad-enabled passes; names: down0.., mid, up0..
CHECKPOINT_PRESETS = {
    "none": (),
    "all": ("down*", "mid", "up*"),
    "hires": ("down0", "down1", "up2"),  # the 64² and 32² levels hold most of the stored activations
    "down": ("down*", "mid"),
}


def checkpoint_blocks(unet: torch.nn.Module, spec: str) -> list[torch.nn.Module]:
    """The UNet blocks named by `spec` (a CHECKPOINT_PRESETS key or a comma list like "down0,up2")."""
    names = CHECKPOINT_PRESETS.get(spec, tuple(n.strip() for n in spec.split(",") if n.strip()))
    blocks = {f"down{i}": b for i, b in enumerate(unet.down_blocks)}
    blocks.update({f"up{i}": b for i, b in enumerate(unet.up_blocks)}, mid=unet.mid_block)
    out = []
    for n in names:
        if n.endswith("*"):
            out += [b for k, b in blocks.items() if k.startswith(n[:-1])]
        elif n in blocks:
            out.append(blocks[n])
        else:
            raise ValueError(f"unknown checkpoint block {n!r}: use {sorted(CHECKPOINT_PRESETS)} "
                             f"or a comma list of {sorted(blocks)}")
    return out


@contextlib.contextmanager
def checkpointing(unet: torch.nn.Module, spec: str) -> Iterator[None]:
    """Per-layer activation checkpointing of the named blocks while inside (grad-enabled passes only)."""
    blocks = checkpoint_blocks(getattr(unet, "_orig_mod", unet), spec)
    before = [b.gradient_checkpointing for b in blocks]
    for b in blocks:
        b.gradient_checkpointing = True
    try:
        yield
    finally:
        for b, was in zip(blocks, before):
            b.gradient_checkpointing = was


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


@dataclass
class SampleResult:
    latents: torch.Tensor  # (1,4,F,h,w) float32 edited latent
    reconstruction: torch.Tensor  # (1,4,F,h,w) float32 reconstruction latent
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
        checkpoint_blocks(getattr(self.estimator, "_orig_mod", self.estimator), settings.checkpoint)  # validate
        shared = self.estimator is self.unet
        self.reuse = settings.reuse_features and shared
        self.fuse = settings.fuse_guidance and shared

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

    def _v_cfg(self, z: torch.Tensor, t: torch.Tensor, c: _Window, hook=None) -> torch.Tensor:
        """CFG-combined v (1,4,L,h,w): batch [uncond (zero CLIP token), cond]; poses/appearance shared."""
        s = self.settings.guidance_scale
        if s == 1.0:
            return self.unet(z, t, c.tokens, c.pose_tgt, c.appearance, attention_hook=hook).float()
        tokens = torch.cat([torch.zeros_like(c.tokens), c.tokens])
        v_u, v_c = self.unet(torch.cat([z, z]), t, tokens, c.pose_tgt, c.appearance, attention_hook=hook).float().chunk(2)
        return v_u + s * (v_c - v_u)

    def _features(self, z: torch.Tensor, t: torch.Tensor, c: _Window, pose: torch.Tensor) -> dict[int, torch.Tensor]:
        return self.estimator(z, t, c.tokens, pose, c.est_appearance, up_ft_indices=LEVELS)

    def _fused_guidance(self, z: torch.Tensor, t: torch.Tensor, c: _Window, feats_rec, log_row: dict
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, v_c): the conditional CFG half, run once with grad, gives v_c and the editing features."""
        out: dict[str, torch.Tensor] = {}

        def edit_features(zz: torch.Tensor) -> dict[int, torch.Tensor]:
            v_c, feats = self.unet(zz, t, c.tokens, c.pose_tgt, c.appearance, return_features=LEVELS,
                                   grad_through_sample=False)
            out["v_c"] = v_c.detach().float()
            return feats
        G, report = self.guidance.gradient(edit_features, z, feats_rec, c.masks)
        log_row.update(report)
        return G, out["v_c"]

    # ------------------------------------------------------------------ camera mode K/V

    def _capture_hook(self, store: dict):
        def hook(name, hidden, key, value):
            store[name] = (key.detach(), value.detach())  # recon batch: (L,N,C), kept on the device
            return key, value
        return hook

    def _inject_hook(self, store: dict, c: _Window, latent_hw: tuple[int, int]):
        """Editing pass: keys/values = [edit ⊙ M_e ; rec ⊙ (1-M_r)] (2N tokens), as the reference does
        (multiplicative masking: zeroed keys keep softmax mass at logit 0)."""
        cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def masks_for(n_tokens: int, L: int):
            if n_tokens not in cache:
                h, w = latent_hw
                while h * w > n_tokens and h > 1:
                    h, w = h // 2, w // 2
                if h * w != n_tokens:
                    raise ValueError(f"cannot map {n_tokens} attention tokens onto the latent grid {latent_hw}")
                m_e = c.masks.nearest("M_e", (h, w)).reshape(L, n_tokens, 1)
                m_bg = 1 - c.masks.nearest("M_r", (h, w)).reshape(L, n_tokens, 1)
                cache[n_tokens] = (m_e, m_bg)
            return cache[n_tokens]

        def hook(name, hidden, key, value):
            if name not in store:
                return key, value
            k_rec, v_rec = store[name]
            L = k_rec.shape[0]
            b = key.shape[0] // L
            m_e, m_bg = (m.to(key.dtype) for m in masks_for(key.shape[1], L))  # (L,N,1)
            m_e = m_e.repeat(b, 1, 1)  # both CFG halves
            key = torch.cat([key * m_e, (k_rec * m_bg).repeat(b, 1, 1)], dim=1)
            value = torch.cat([value * m_e, (v_rec * m_bg).repeat(b, 1, 1)], dim=1)
            return key, value
        return hook

    def _t(self, timestep: int) -> torch.Tensor:
        """The timestep as a device tensor: a compiled UNet then sees one input, not 50 constants."""
        return torch.tensor(timestep, device=self.device)

    # ------------------------------------------------------------------ DDIM arithmetic (float32)

    @staticmethod
    def _step(z: torch.Tensor, v: torch.Tensor, p: StepPlan, G: Optional[torch.Tensor] = None,
              noise: Optional[torch.Tensor] = None, m_lat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One DDIM/SDE step. Guidance enters only x̂0; ε̂ comes from the unguided v (method.md §A.5)."""
        a, ap = p.alpha, p.alpha_prev
        x0 = math.sqrt(a) * z - math.sqrt(1 - a) * (v if G is None else v + G)
        eps = math.sqrt(a) * v + math.sqrt(1 - a) * z

        def branch(eta: float) -> torch.Tensor:
            sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap)) if eta > 0 else 0.0
            out = math.sqrt(ap) * x0 + math.sqrt(max(1 - ap - sigma ** 2, 0.0)) * eps
            return out + sigma * noise if sigma > 0 else out

        if noise is None or (p.sde_in == 0 and p.sde_out == 0):
            return branch(0.0)
        m = m_lat[None, None]  # (1,1,L,h,w)
        return branch(p.sde_out) * (1 - m) + branch(p.sde_in) * m

    def _renoise(self, z_prev: torch.Tensor, p: StepPlan, c: _Window) -> torch.Tensor:
        """Replay: one deterministic DDIM-inversion step t' -> t, conditional pass, target poses, no K/V."""
        ap, a = p.alpha_prev, p.alpha
        v = self.unet(z_prev, self._t(p.prev_timestep), c.tokens, c.pose_tgt, c.appearance).float()
        x0 = math.sqrt(ap) * z_prev - math.sqrt(1 - ap) * v
        eps = math.sqrt(ap) * v + math.sqrt(1 - ap) * z_prev
        return math.sqrt(a) * x0 + math.sqrt(1 - a) * eps

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
        z_rec = z_edit.clone()
        log_rows: list[dict] = []
        total = len(self.plan)
        for p in self.plan:
            noise = sde_noise(p, frame_noise)
            next_edit, next_rec = self.blend_step(p, inputs, masks, windows, z_edit, z_rec,
                                                  None if noise is None else noise.to(self.device),
                                                  latent_hw, cached, log_rows)
            z_edit, z_rec = next_edit.result(), next_rec.result()
            if self.progress:
                self.progress(p.index + 1, total, f"step {p.index + 1}/{total}")
        return SampleResult(z_edit, z_rec, dict(timer.seconds), log_rows)

    def blend_step(self, p: StepPlan, inputs: EditInputs, masks: RegionMasks, windows: Sequence[range],
                   z_edit: torch.Tensor, z_rec: torch.Tensor, noise: Optional[torch.Tensor], latent_hw,
                   cached: dict, log_rows: list, weights: Optional[list[torch.Tensor]] = None
                   ) -> tuple[WindowBlender, WindowBlender]:
        """Step i on `windows` (frame ranges of inputs and of the (1,4,F,h,w) latents): the weighted sums
        entering step i+1. Ray workers call it on their share of the windows (`weights`: the clip's)."""
        total = len(self.plan)
        next_edit, next_rec = WindowBlender(z_edit, windows, weights), WindowBlender(z_rec, windows, weights)
        for k, win in enumerate(windows):
            if self.progress:
                self.progress(p.index, total, f"step {p.index + 1}/{total}"
                              + (f", window {k + 1}/{len(windows)}" if len(windows) > 1 else ""))
            sl = slice(win.start, win.stop)
            with self.timer.section("conditions"):
                c = cached.get(k) or self.window_conditions(inputs, masks, win)
                if len(windows) == 1:
                    cached[k] = c
            e, r = self._window_step(p, c, z_edit[:, :, sl], z_rec[:, :, sl],
                                     None if noise is None else noise[:, :, sl], latent_hw, log_rows)
            next_edit.add(k, e)
            next_rec.add(k, r)
        return next_edit, next_rec

    def _window_step(self, p: StepPlan, c: _Window, z: torch.Tensor, z_rec: torch.Tensor,
                     noise: Optional[torch.Tensor], latent_hw, log_rows: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Step i on one window: returns (edit latent, reconstruction latent) entering step i+1."""
        timer = self.timer
        kv: dict = {}
        feats_rec = None
        reuse = p.guidance and self.reuse
        t = self._t(p.timestep)
        with timer.section("reconstruction"), torch.no_grad():
            hook = self._capture_hook(kv) if p.camera else None
            v_rec = self.unet(z_rec, t, c.tokens, c.pose_src, c.appearance, attention_hook=hook,
                              return_features=LEVELS if reuse else ())
            if reuse:  # the capture hook returns K/V unchanged, so these are the estimator's features
                v_rec, feats_rec = v_rec
            v_rec = v_rec.float()
            rec_next = self._step(z_rec, v_rec, p)
        if p.guidance and not reuse:
            with timer.section("guidance"), torch.no_grad():
                feats_rec = self._features(z_rec, t, c, c.pose_src)  # same for every replay
        m_lat = c.masks.latent_M_e().to(z.device)
        inject = self._inject_hook(kv, c, latent_hw) if p.camera else None
        # K/V injection changes the CFG pass's up-block features, so it cannot double as the estimator
        fuse = p.guidance and self.fuse and not p.camera
        s = self.settings.guidance_scale
        z_prev = z
        for rep in range(p.repeats):
            G = None
            if fuse:
                row = {"step": p.index, "repeat": rep}
                with timer.section("guidance"):
                    G, v_c = self._fused_guidance(z, t, c, feats_rec, row)
                log_rows.append(row)
                with timer.section("editing"), torch.no_grad():
                    if s == 1.0:
                        v = v_c
                    else:
                        v_u = self.unet(z, t, torch.zeros_like(c.tokens), c.pose_tgt, c.appearance).float()
                        v = v_u + s * (v_c - v_u)
            else:
                with timer.section("editing"), torch.no_grad():
                    v = self._v_cfg(z, t, c, inject)
                if p.guidance:
                    with timer.section("guidance"):
                        G, report = self.guidance.gradient(
                            lambda zz: self._features(zz, t, c, c.pose_tgt), z, feats_rec, c.masks)
                        log_rows.append({"step": p.index, "repeat": rep, **report})
            with timer.section("editing"), torch.no_grad():
                z_prev = self._step(z, v, p, G, noise, m_lat)
                if rep + 1 < p.repeats:  # the reference also re-noises after the last repeat, then drops it
                    z = self._renoise(z_prev, p, c)
        return z_prev, rec_next


def sde_noise(p: StepPlan, frame_noise: FrameNoise) -> Optional[torch.Tensor]:
    """Step p's SDE noise (1,C,F,h,w) (float32, CPU), or None (and no draw) when the step adds none."""
    return frame_noise.draw() if p.sde_in > 0 or p.sde_out > 0 else None
