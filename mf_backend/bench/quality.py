"""`bench quality`: edits of held-out synthetic pairs against the world's ground truth.

Variants (same pairs, same seed, same model): copy the source (baseline), the edit without guidance
(energy_scale 0), with full guidance, and with each guidance term switched off. Metrics per variant,
averaged over pairs: PSNR/SSIM over the whole frame, inside the GT person mask and on the background,
and the silhouette IoU of the edited person against the GT mask (bench/metrics.py).

Held out: the demo model is trained on synthetic seeds 0..pairs-1 (docs/training.md); the default
seeds here start at 100000.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from mf_backend.params import AdvancedParams, JobParams

TERMS = ("fg", "over", "body", "com")


def variants(base: JobParams, which: list[str]) -> dict[str, JobParams | None]:
    """name -> params (None = copy the source)."""
    all_: dict[str, JobParams | None] = {"copy_source": None, "no_guidance": base.with_advanced(energy_scale=0.0),
                                         "full_guidance": base}
    for t in TERMS:
        all_[f"no_{t}"] = base.with_advanced(**{f"w_{t}": 0.0})
    return {k: v for k, v in all_.items() if k in which}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", type=int, default=4, help="held-out synthetic pairs")
    p.add_argument("--first-seed", type=int, default=100000)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--model", default="demo")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance-scale", type=float, default=3.5)
    p.add_argument("--energy-scale", type=float, default=AdvancedParams.energy_scale)
    p.add_argument("--guidance-semantics", default="code", choices=("code", "paper"))
    p.add_argument("--mask-predictor", default="model", choices=("model", "geometric", "gt"),
                   help="M_e: the predictor, the geometric fallback, or the ground-truth mask")
    p.add_argument("--variants", default="all", help="comma list of: copy_source, no_guidance, full_guidance, "
                                                      + ", ".join(f"no_{t}" for t in TERMS))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", help="also write the table as JSON to this file")


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mf_backend.demo import edit_inputs, prepare_pair, quality
    from mf_backend.model_choice import choose_model
    from mf_backend.environment import resolve_device
    from mf_backend.models.loading import load_models
    from mf_backend.synthetic import make_pair

    which = (["copy_source", "no_guidance", "full_guidance"] + [f"no_{t}" for t in TERMS]
             if args.variants == "all" else args.variants.split(","))
    device = resolve_device(args.device)
    models = load_models(args.model, None, device, torch.float32)
    size = choose_model(args.model, None).size
    advanced = AdvancedParams(energy_scale=args.energy_scale, guidance_semantics=args.guidance_semantics,
                              mask_predictor="model" if args.mask_predictor == "gt" else args.mask_predictor)
    base = JobParams(steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed, advanced=advanced)
    table: dict[str, list[dict[str, float]]] = {k: [] for k in which}
    t0 = time.perf_counter()
    for i in range(args.pairs):
        pair = make_pair(seed=args.first_seed + i, frames=args.frames, size=size)
        inputs, _ = prepare_pair(pair, base)
        if args.mask_predictor == "gt":
            inputs.M_e = torch.from_numpy(pair.gt_edited.masks.astype(np.float32))
        for name, params in variants(base, which).items():
            edited = pair.source.frames if params is None else edit_inputs(models, inputs, params)
            table[name].append(quality(edited, pair))
            print(f"pair {i} {name}: {json.dumps(table[name][-1])}", file=sys.stderr, flush=True)
    mean = {name: {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]} for name, rows in table.items()}
    return {"mean": mean, "pairs": args.pairs, "first_seed": args.first_seed, "frames": args.frames, "size": size,
            "steps": args.steps, "model": str(models.source), "mask_predictor": args.mask_predictor,
            "seconds": round(time.perf_counter() - t0, 1)}


def run(args: argparse.Namespace) -> int:
    result = run_quality(args)
    cols = list(next(iter(result["mean"].values())))
    print(f"{'variant':<14}" + "".join(f"{c:>15}" for c in cols))
    for name, row in result["mean"].items():
        print(f"{name:<14}" + "".join(f"{row[c]:>15.4f}" for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
