"""The sampling schedule: DDIM (v-prediction, zero-terminal-SNR, trailing) and, per step, whether
consistency guidance, replay (re-noise/re-denoise) and masked SDE noise are active (method.md §A.3, §A.5).

The reference hard-codes its schedule by step index for 50 steps. Here every rule is written as a
fraction of the trajectory, `ref = i * 50 / steps` ("where would this step sit in the 50-step
reference"), so 25 or 100 steps keep the same shape and 50 steps reproduce the reference tables:

| reference (50 steps)               | rule at any step count                            |
|------------------------------------|---------------------------------------------------|
| guidance at i < 10                 | ref < 10 (every step)                             |
| guidance at i < 30, i even         | ref < 30 and i even (every other step)            |
| replay x3 at 20 < i < 30, i even   | 20 < ref < 30 and i even                          |
| SDE eta=0.4 inside M_e, 10 < i < 20| 10 < ref < 20                                     |
| camera K/V injection from i >= 20  | ref >= 20                                         |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

REFERENCE_STEPS = 50
REPLAY_REPEATS = 3
SDE_STRENGTH_IN = 0.4  # eta inside the predicted target silhouette M_e
SDE_STRENGTH_OUT = 0.0  # eta outside it

# diffusers DDIMScheduler settings of the reference (configs/inference/inference_v2.yaml).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    clip_sample=False,
    steps_offset=1,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    set_alpha_to_one=True,
)


@dataclass(frozen=True)
class StepPlan:
    """What happens at one sampling step."""

    index: int
    timestep: int  # t_i
    prev_timestep: int  # t_{i+1}, -1 after the last step (alpha_bar = 1)
    alpha: float  # alpha_bar(t_i)
    alpha_prev: float  # alpha_bar(t_{i+1})
    guidance: bool  # ConsistencyGuidance is evaluated at this step
    repeats: int  # 1, or REPLAY_REPEATS on replay steps
    sde_in: float  # SDE eta inside M_e
    sde_out: float  # SDE eta outside M_e
    camera: bool  # K/V injection of the reconstruction branch (camera mode only)


def make_scheduler():
    """The reference's diffusers DDIMScheduler (its alphas_cumprod are what the sampler uses)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def reference_flags(i: int, steps: int) -> tuple[bool, int, bool, bool]:
    """(guidance, repeats, sde, camera) for step i of `steps`, before the energy/camera switches."""
    ref50 = i * REFERENCE_STEPS  # = ref * steps, compared against k * steps to stay in integers
    even = i % 2 == 0
    guidance = ref50 < 10 * steps or (ref50 < 30 * steps and even)
    replay = 20 * steps < ref50 < 30 * steps and even
    sde = 10 * steps < ref50 < 20 * steps
    camera = ref50 >= 20 * steps
    return guidance, (REPLAY_REPEATS if replay else 1), sde, camera


def build_schedule(steps: int, guidance: bool = True, camera: bool = False) -> list[StepPlan]:
    """The per-step plan. `guidance=False` (energy_scale 0) also disables replay, as in the reference."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sched = make_scheduler()
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    acp = sched.alphas_cumprod
    plans = []
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        g, repeats, sde, cam = reference_flags(i, steps)
        plans.append(StepPlan(
            index=i, timestep=t, prev_timestep=prev,
            alpha=float(acp[t]), alpha_prev=float(acp[prev]) if prev >= 0 else float(sched.final_alpha_cumprod),
            guidance=guidance and g, repeats=repeats if guidance else 1,
            sde_in=SDE_STRENGTH_IN if sde else 0.0, sde_out=SDE_STRENGTH_OUT if sde else 0.0,
            camera=camera and cam,
        ))
    return plans


def last_reconstruction_step(plan: list[StepPlan], stop: bool = True) -> int:
    """Index of the last step whose reconstruction pass is read: the last guidance step (its features),
    or the last step in camera mode (its K/V); -1 when nothing reads it. Without `stop`, the last step."""
    if not stop or any(p.camera for p in plan):
        return len(plan) - 1
    return max((p.index for p in plan if p.guidance), default=-1)


# ---------------------------------------------------------------------------------------------- arithmetic (float32)


def cfg(v_u: torch.Tensor, v_c: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: unconditional + scale x (conditional - unconditional)."""
    return v_u + scale * (v_c - v_u)


def predict_x0_eps(z: torch.Tensor, v: torch.Tensor, alpha: float, G: Optional[torch.Tensor] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from a v-prediction at alpha_bar = alpha. Guidance G enters only x̂0 (method.md §A.5)."""
    x0 = math.sqrt(alpha) * z - math.sqrt(1 - alpha) * (v if G is None else v + G)
    eps = math.sqrt(alpha) * v + math.sqrt(1 - alpha) * z
    return x0, eps


def ddim_to(x0: torch.Tensor, eps: torch.Tensor, alpha_to: float, sigma: float = 0.0,
            noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The latent at alpha_bar = alpha_to from (x̂0, ε̂), with SDE noise of std sigma when sigma > 0."""
    out = math.sqrt(alpha_to) * x0 + math.sqrt(max(1 - alpha_to - sigma ** 2, 0.0)) * eps
    return out + sigma * noise if sigma > 0 else out


def ddim_step(z: torch.Tensor, v: torch.Tensor, p: StepPlan, G: Optional[torch.Tensor] = None,
              noise: Optional[torch.Tensor] = None, m_lat: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One DDIM/SDE step t_i -> t_{i+1}; SDE eta p.sde_in inside the latent mask m_lat (L,h,w), p.sde_out outside."""
    a, ap = p.alpha, p.alpha_prev
    x0, eps = predict_x0_eps(z, v, a, G)

    def branch(eta: float) -> torch.Tensor:
        sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap)) if eta > 0 else 0.0
        return ddim_to(x0, eps, ap, sigma, noise)

    if noise is None or (p.sde_in == 0 and p.sde_out == 0):
        return branch(0.0)
    m = m_lat[None, None]  # (1,1,L,h,w)
    return branch(p.sde_out) * (1 - m) + branch(p.sde_in) * m


def ddim_invert(z_prev: torch.Tensor, v: torch.Tensor, p: StepPlan) -> torch.Tensor:
    """Replay re-noise t_{i+1} -> t_i (deterministic DDIM inversion) from v predicted at t_{i+1}."""
    x0, eps = predict_x0_eps(z_prev, v, p.alpha_prev)
    return ddim_to(x0, eps, p.alpha)
