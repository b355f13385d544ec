"""Training of the diffusion model the way the paper describes it (method.md §1), plus the small VAE.

Phases, run in order, each resumable from its own checkpoint:
  vae     the small AutoencoderKL (only when the config builds its own VAE): L1 + MSE + tiny KL on
          training frames; afterwards its latent scaling factor is set to 1/std of the latents.
  stage1  single frames: reference frame + target pose -> target frame. Trainable: UNet (without
          motion modules), PoseController, ReferenceController (inside the UNet) and, when the config
          builds its own, the CLIP image encoder (trained end to end through the cross-attention).
  stage2  clips of `clip_frames` frames: only the motion modules are trainable.

The diffusion loss is the v-prediction MSE under the sampler's own noise schedule (zero-terminal-SNR
DDIM, method.md §A.3). The CLIP token is zeroed with probability `cond_drop`, which is exactly the
unconditional input of classifier-free guidance at inference (§A.7).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from mf_backend.train.conditioning import clip_tokens, to_unit
from mf_backend.train.config import PHASE_SHARE, PHASES, TrainConfig
from mf_backend.train.data import ClipBank

log = logging.getLogger(__name__)



def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class LossLog:
    """Appends one JSON line per logged step to <out>/loss_log.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, **entry: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, mininterval=1.0)


class Trainer:
    def __init__(self, cfg: TrainConfig, bank: ClipBank, models=None,
                 on_step: Optional[Callable[[str, int, int], None]] = None):
        from mf_backend.environment import resolve_device

        self.cfg = cfg
        self.bank = bank
        self.out = Path(cfg.out)
        (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.device = torch.device(resolve_device(cfg.device))
        self.models = models if models is not None else self._build_models()
        for m in self._modules().values():
            m.to(self.device)
        from mf_backend.editing.schedule import make_scheduler

        self.scheduler = make_scheduler()  # the sampler's own schedule (v-prediction, zero-terminal SNR)
        self.alphas = self.scheduler.alphas_cumprod.to(self.device)
        self.loss_log = LossLog(self.out / "loss_log.jsonl")
        self.on_step = on_step
        self.started = time.monotonic()
        self.amp = self.device.type == "cuda"

    # ------------------------------------------------------------------ setup

    def _build_models(self):
        from mf_backend.models.loading import build_models, load_models

        if self.cfg.init:
            return load_models(self.cfg.init, None, "cpu", torch.float32)
        return build_models(self.cfg.config, seed=self.cfg.seed)

    def _modules(self) -> dict[str, torch.nn.Module]:
        m = self.models
        return {"unet": m.unet, "pose_controller": m.pose_controller, "image_encoder": m.image_encoder, "vae": m.vae}

    @property
    def own_encoders(self) -> bool:
        """True when the config builds its own VAE/CLIP (demo, tiny): then we train them too."""
        return self.models.config.vae is not None

    def _trainable(self, phase: str) -> list[torch.nn.Parameter]:
        m = self.models
        if phase == "vae":
            return list(m.vae.parameters())
        if phase == "stage1":
            params = [p for n, p in m.unet.named_parameters() if ".motion_modules." not in n]
            params += list(m.pose_controller.parameters())
            if self.own_encoders:
                params += list(m.image_encoder.parameters())
            return params
        return [p for n, p in m.unet.named_parameters() if ".motion_modules." in n]

    def _lr(self, phase: str) -> float:
        return {"vae": self.cfg.vae_lr, "stage1": self.cfg.lr, "stage2": self.cfg.motion_lr}[phase]

    def _steps(self, phase: str) -> int:
        if phase == "vae" and not self.own_encoders:
            return 0
        return {"vae": self.cfg.vae_steps, "stage1": self.cfg.stage1_steps, "stage2": self.cfg.stage2_steps}[phase]

    # ------------------------------------------------------------------ checkpoints

    def _ckpt_path(self, phase: str) -> Path:
        return self.out / "checkpoints" / f"{phase}.pt"

    def _save(self, phase: str, step: int, opt: torch.optim.Optimizer, done: bool) -> None:
        state = {name: mod.state_dict() for name, mod in self._modules().items()}
        _atomic_save({"phase": phase, "step": step, "done": done, "models": state, "optimizer": opt.state_dict(),
                      "vae_scaling_factor": float(self.models.vae.config.scaling_factor)}, self._ckpt_path(phase))

    def _latest_checkpoint(self) -> Optional[dict]:
        """The checkpoint of the furthest phase reached, loaded safely (weights_only)."""
        for phase in reversed(PHASES):
            p = self._ckpt_path(phase)
            if p.exists():
                return torch.load(p, map_location="cpu", weights_only=True)
        return None

    def _restore(self, ckpt: dict) -> None:
        for name, mod in self._modules().items():
            mod.load_state_dict(ckpt["models"][name])
        self.models.vae.register_to_config(scaling_factor=ckpt["vae_scaling_factor"])

    # ------------------------------------------------------------------ batches

    def _time_left(self) -> float:
        if self.cfg.time_budget_s is None:
            return math.inf
        return self.cfg.time_budget_s - (time.monotonic() - self.started)

    def _phase_deadline(self, phase: str) -> float:
        left = self._time_left()
        if math.isinf(left):
            return math.inf
        rest = PHASES[PHASES.index(phase):]
        share = PHASE_SHARE[phase] / sum(PHASE_SHARE[p] for p in rest if self._steps(p) > 0)
        return time.monotonic() + max(0.0, left * share - 5.0)  # 5 s kept for saving

    def _encode(self, frames01: torch.Tensor) -> torch.Tensor:
        """(B,F,3,H,W) in [0,1] -> scaled latents (B,4,F,h,w), no grad."""
        b, f = frames01.shape[:2]
        vae = self.models.vae
        with torch.no_grad():
            z = vae.encode(frames01.flatten(0, 1) * 2 - 1).latent_dist.sample() * vae.config.scaling_factor
        return z.reshape(b, f, *z.shape[1:]).transpose(1, 2)

    def diffusion_loss(self, reference: np.ndarray, pose: np.ndarray, target: np.ndarray,
                       gen: torch.Generator) -> torch.Tensor:
        """v-prediction MSE for one batch; arrays uint8 (B,F,S,S,3)."""
        m, dev = self.models, self.device
        ref01, pose01, tgt01 = to_unit(reference, dev), to_unit(pose, dev), to_unit(target, dev)
        b = ref01.shape[0]
        latents = self._encode(tgt01)  # (B,4,F,h,w)
        noise = torch.randn(latents.shape, generator=gen, device=dev)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=gen, device=dev)
        a = self.alphas[t].view(b, 1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        v_target = a.sqrt() * noise - (1 - a).sqrt() * latents
        # torch 2.13 CPU segfaults in GroupNorm's backward when only its weights need a gradient and its
        # input is channels-last (the motion modules' norms in stage 2); a grad-carrying input avoids it.
        noisy.requires_grad_(True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
            tokens = clip_tokens(m.image_encoder, reference)  # (B,F,D)
            keep = (torch.rand(b, generator=gen, device=dev) >= self.cfg.cond_drop).to(tokens.dtype)
            tokens = tokens * keep.view(b, 1, 1)  # dropped = all-zero token, the CFG unconditional input
            pose_feat = m.pose_controller(pose01.transpose(1, 2))  # (B,C0,F,h,w)
            appearance = m.unet.appearance_adapter(ref01 * 2 - 1)  # 4 x (B,C_k,F,h_k,w_k)
            v = m.unet(noisy, t, tokens, pose_features=pose_feat, appearance_features=appearance)
        return F.mse_loss(v.float(), v_target)

    def vae_loss(self, frames: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        x = to_unit(frames[:, None], self.device)[:, 0] * 2 - 1  # (B,3,S,S) in [-1,1]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            post = self.models.vae.encode(x).latent_dist
            z = post.sample(generator=gen)
            rec = self.models.vae.decode(z).sample.float()
        kl = post.kl().mean() / x[0].numel()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl

    # ------------------------------------------------------------------ loop

    def run(self) -> dict[str, Any]:
        ckpt = self._latest_checkpoint()
        first = 0
        resume_step = 0
        resume_opt = None
        if ckpt is not None:
            self._restore(ckpt)
            first = PHASES.index(ckpt["phase"]) + (1 if ckpt["done"] else 0)
            if not ckpt["done"]:
                resume_step, resume_opt = ckpt["step"], ckpt["optimizer"]
            log.info("resuming at %s step %d", PHASES[min(first, 2)], resume_step)
        summary: dict[str, Any] = {}
        for phase in PHASES[first:]:
            summary[phase] = self._run_phase(phase, resume_step, resume_opt)
            resume_step, resume_opt = 0, None
        return summary

    def _run_phase(self, phase: str, start: int, opt_state: Optional[dict]) -> dict[str, Any]:
        total = self._steps(phase)
        params = self._trainable(phase)
        for mod in self._modules().values():
            mod.requires_grad_(False)
            mod.train(phase != "vae" or mod is self.models.vae)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=self._lr(phase), weight_decay=0.0 if phase == "vae" else 1e-2)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        if total == 0:
            self._save(phase, 0, opt, done=True)
            return {"steps": 0}
        deadline = self._phase_deadline(phase)
        frames_pool = self.bank.frames() if phase == "vae" else None
        warmup = min(100, total // 10 + 1)
        bar = _bar(total, start, phase, self.cfg.progress)
        completed, losses, t0 = start, [], time.monotonic()
        for step in range(start, total):
            if time.monotonic() > deadline:
                log.info("%s: time budget reached at step %d/%d", phase, step, total)
                break
            rng = np.random.default_rng([self.cfg.seed, PHASES.index(phase), step])
            gen = torch.Generator(self.device).manual_seed(int(rng.integers(2 ** 62)))
            for g in opt.param_groups:  # linear warm-up, then constant
                g["lr"] = self._lr(phase) * min(1.0, (step + 1) / warmup)
            if phase == "vae":
                loss = self.vae_loss(frames_pool[rng.integers(0, len(frames_pool), self.cfg.vae_batch)], gen)
            elif phase == "stage1":
                loss = self.diffusion_loss(*self.bank.sample_frames(rng, self.cfg.batch), gen)
            else:
                loss = self.diffusion_loss(*self.bank.sample_clips(rng, self.cfg.clip_batch, self.cfg.clip_frames), gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{phase}: loss is {loss.item()} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            completed = step + 1
            bar.update(1)
            if (step + 1) % self.cfg.log_every == 0 or step + 1 == total:
                mean = float(np.mean(losses[-self.cfg.log_every:]))
                bar.set_postfix(loss=f"{mean:.4f}")
                self.loss_log.write(phase=phase, step=step + 1, loss=mean, lr=opt.param_groups[0]["lr"],
                                    elapsed_s=round(time.monotonic() - self.started, 1))
            if (step + 1) % self.cfg.ckpt_every == 0:
                self._save(phase, step + 1, opt, done=False)
            if self.on_step:
                self.on_step(phase, step + 1, total)
        bar.close()
        if phase == "vae":
            self._set_vae_scale()
        # a phase cut by the time budget counts as done: the next phase starts from what it reached
        self._save(phase, completed, opt, done=True)
        return {"steps": completed - start, "of": total, "final_loss": float(np.mean(losses[-50:])) if losses else None,
                "seconds": round(time.monotonic() - t0, 1)}

    @torch.no_grad()
    def _set_vae_scale(self) -> None:
        """scaling_factor = 1/std of the latents, so the diffusion model sees unit-variance latents."""
        vae = self.models.vae
        vae.register_to_config(scaling_factor=1.0)
        frames = self.bank.frames()
        rng = np.random.default_rng(self.cfg.seed)
        x = to_unit(frames[rng.integers(0, len(frames), min(256, len(frames)))][:, None], self.device)[:, 0]
        vae.eval()
        z = torch.cat([vae.encode(c * 2 - 1).latent_dist.mean for c in x.split(64)])
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        log.info("VAE latent scaling factor %.4f", vae.config.scaling_factor)

    def save(self, folder: Path) -> Path:
        from mf_backend.models.loading import save_models

        for mod in self._modules().values():
            mod.eval().requires_grad_(False)
        save_models(self.models, folder, overwrite=True)
        return folder


def train(cfg: TrainConfig, on_step=None) -> dict[str, Any]:
    """Build the data, run every phase (resuming if checkpoints exist), save <out>/model. Returns a summary."""
    from mf_backend.train.data import synthetic_bank, video_bank

    t0 = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if cfg.data == "synthetic":
        bank = synthetic_bank(cfg.pairs, cfg.frames, cfg.size, seed=cfg.seed, workers=cfg.workers)
    else:
        bank = video_bank(Path(cfg.data), cfg.frames, cfg.size, seed=cfg.seed,
                          cache=Path(cfg.cache) if cfg.cache else out / "cache")
    data_s = time.monotonic() - t0
    print(f"data: {bank.num_clips} clips x {bank.num_frames} frames at {cfg.size}px in {data_s:.1f}s", file=sys.stderr)
    if cfg.time_budget_s is not None:
        cfg = TrainConfig(**{**asdict(cfg), "time_budget_s": cfg.time_budget_s - data_s})
    trainer = Trainer(cfg, bank, on_step=on_step)
    summary = trainer.run()
    model_dir = trainer.save(out / "model")
    summary.update(model=str(model_dir), data_seconds=round(data_s, 1),
                   total_seconds=round(time.monotonic() - t0, 1), device=str(trainer.device))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
