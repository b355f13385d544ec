"""`python -m mf_backend train ...`: the diffusion model (and, for small configs, its VAE and CLIP encoder).

Kept light: torch is imported inside the handler.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def _add(p: argparse.ArgumentParser) -> None:
    from mf_backend.train.config import TrainConfig

    d = TrainConfig(out="")
    p.add_argument("--out", required=True, help="output folder: checkpoints/, loss_log.jsonl, model/")
    p.add_argument("--data", default=d.data, help="'synthetic' or a folder of videos (one person each)")
    p.add_argument("--config", default=d.config, help="model config: demo, tiny (official: use --init)")
    p.add_argument("--init", default=None, help="start from a saved model folder instead of random weights")
    for name in ("size", "pairs", "frames", "vae_steps", "stage1_steps", "stage2_steps", "vae_batch", "batch",
                 "clip_batch", "clip_frames", "seed", "log_every", "ckpt_every", "workers"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "vae_lr", "motion_lr", "cond_drop"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--time-budget", type=float, default=None, dest="time_budget_s",
                   help="seconds; every phase stops cleanly and saves before this total")
    p.add_argument("--device", default=d.device)
    p.add_argument("--cache", default=None, help="pose cache for video folders (default <out>/cache)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--save-to", default=None,
                   help="also copy the trained model set to this folder (e.g. mf_backend/assets/demo)")
    p.add_argument("--save-dtype", default="fp16", choices=("fp16", "fp32"),
                   help="weights dtype of the --save-to copy (fp16 halves the size; loading casts back)")


def cmd_train(args: argparse.Namespace) -> int:
    from mf_backend.train.config import TrainConfig
    from mf_backend.train.trainer import train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    summary = train(cfg)
    if args.save_to:
        from mf_backend.models.loading import load_models, save_models

        import shutil
        from pathlib import Path

        import torch

        models = load_models(summary["model"])
        models.to(dtype=torch.float16 if args.save_dtype == "fp16" else torch.float32)
        save_models(models, args.save_to, overwrite=True)
        for name in ("train_config.json", "loss_log.jsonl", "summary.json"):  # provenance beside the weights
            shutil.copy(Path(args.out) / name, Path(args.save_to) / name)
        summary["saved_to"] = args.save_to
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the diffusion model (stage 1 frames, stage 2 clips) "
                                            "on the synthetic world or a folder of videos")
    _add(p)
    p.set_defaults(func=cmd_train)
