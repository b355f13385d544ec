"""Training settings (no torch import, so the CLI stays light)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

PHASES = ("vae", "stage1", "stage2")
# share of the remaining time budget each phase may use (unused time rolls over to later phases)
PHASE_SHARE = {"vae": 0.15, "stage1": 0.6, "stage2": 0.25}


@dataclass
class TrainConfig:
    out: str  # output folder: checkpoints/, loss_log.jsonl, model/ (the saved model set)
    config: str = "demo"  # model config to build (models.config), ignored with `init`
    init: Optional[str] = None  # start from a saved model folder instead of random weights
    data: str = "synthetic"  # "synthetic" or a folder of videos
    size: int = 128  # working resolution (square), a multiple of 8 * 2**(blocks-1)
    pairs: int = 256  # synthetic pairs (each gives an edit clip and a reconstruction clip)
    frames: int = 16  # frames per bank clip
    vae_steps: int = 2000
    stage1_steps: int = 4000
    stage2_steps: int = 1000
    vae_batch: int = 32
    batch: int = 32  # stage 1: frames per step
    clip_batch: int = 4  # stage 2: clips per step
    clip_frames: int = 16
    lr: float = 2e-4
    vae_lr: float = 1e-3
    motion_lr: float = 1e-4
    cond_drop: float = 0.1
    time_budget_s: Optional[float] = None  # stop each phase cleanly and save before this total
    device: str = "auto"
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 500
    workers: int = 0  # synthetic data generation processes (0 = one per core)
    cache: Optional[str] = None  # pose cache for video folders (default: <out>/cache)
    progress: bool = True
