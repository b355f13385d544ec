"""`python -m mf_backend eval-seg`: IoU of M_e predictors and timing.

Self-transfer protocol on real cases (no ground truth for real edits exists): the mask of source frame j
is predicted from another source frame i = j - F/2 and frame j's pose render; the ground truth is
`source_masks/frame_j`. Targets j are the second half of the clip; test-time adaptation (TTA) may only
use the first half (frames and M_r), so it never sees a target pose or mask.
Synthetic ground truth: held-out pairs (seeds not used in training); source frame f + aligned target
pose f → the ground-truth edit's mask f; TTA uses the whole source clip (which never shows those poses).
Rows: geometric fallback, model (trained on synthetic only), model + TTA; "guarded" = after `guard`.
Also: mediapipe source masks vs the cases' SAM masks, and timing for 24 frames at 512² on the CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from mf_backend.pose.keypoints import PoseSequence


def iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame IoU of (F,H,W) masks thresholded at 0.5 (1.0 where both are empty)."""
    p, g = pred >= 0.5, gt >= 0.5
    inter = (p & g).reshape(len(p), -1).sum(1)
    union = (p | g).reshape(len(p), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _rows(model, frames_ref, renders_tgt, masks_ref, poses_ref: PoseSequence, poses_tgt: PoseSequence,
          gt, tta_frames, tta_renders, tta_masks, tta_steps: int) -> dict[str, float]:
    """IoU of every predictor for one set of (reference frame, target pose) → target mask problems."""
    from mf_backend.masks.geometric import geometric_masks
    from mf_backend.masks.predict import guard, model_masks
    from mf_backend.masks.train import adapt

    out: dict[str, float] = {}
    geo = geometric_masks(masks_ref, poses_ref, poses_tgt)
    out["geometric"] = float(iou(geo, gt).mean())
    if model is None:
        return out
    pred = model_masks(model, frames_ref, renders_tgt)
    out["model"] = float(iou(pred, gt).mean())
    out["model_guarded"] = float(iou(guard(pred, masks_ref, poses_ref, poses_tgt)[0], gt).mean())
    if tta_steps > 0:
        tuned = adapt(model, tta_frames, tta_renders, tta_masks, steps=tta_steps)
        pred = model_masks(tuned, frames_ref, renders_tgt)
        out["model_tta"] = float(iou(pred, gt).mean())
        out["model_tta_guarded"] = float(iou(guard(pred, masks_ref, poses_ref, poses_tgt)[0], gt).mean())
    return out


def eval_case(case: Path, model, tta_steps: int) -> dict[str, float]:
    from mf_backend.masks.source import source_masks
    from mf_backend.media import read_clip, read_masks
    from mf_backend.pose.decode import decode_poses

    frames = read_clip(case / "source_images").frames
    renders = read_clip(case / "source_poses").frames
    masks = read_masks(case / "source_masks")
    poses = decode_poses(renders).scaled(frames.shape[2], frames.shape[1])
    n = len(frames)
    j = np.arange(n // 2, n)
    i = j - n // 2
    half = np.arange(n // 2)
    res = _rows(model, frames[i], renders[j], masks[i], poses.frames(i), poses.frames(j), masks[j],
                frames[half], renders[half], masks[half], tta_steps)
    res["source_mediapipe_vs_sam"] = float(iou(source_masks(frames), masks).mean())
    return res


def eval_synthetic(seed: int, model, tta_steps: int, size: int = 256) -> dict[str, float]:
    from mf_backend.pose.render import render_poses
    from mf_backend.synthetic.pair import make_pair

    p = make_pair(seed, frames=16, size=size)
    # Pose renders drawn at 512 px like real inputs (and the training data), whatever the clip size.
    src_renders = render_poses(p.source.poses, 512, 512)
    tgt_renders = render_poses(p.target_aligned.poses, 512, 512)
    return _rows(model, p.source.frames, tgt_renders, p.source.masks, p.source.poses,
                 p.target_aligned.poses, p.gt_edited.masks, p.source.frames, src_renders, p.source.masks,
                 tta_steps)


def timing(model, threads: int) -> dict[str, float]:
    """Seconds for 24 frames at 512x512: model inference (+ clean), geometric warp, one TTA step."""
    import torch

    from mf_backend.masks.geometric import geometric_masks
    from mf_backend.masks.predict import model_masks
    from mf_backend.pose.render import render_poses
    from mf_backend.synthetic.pair import make_pair

    torch.set_num_threads(threads)
    p = make_pair(1234, frames=24, size=512)
    out = {}
    t = time.perf_counter()
    geometric_masks(p.source.masks, p.source.poses, p.target_aligned.poses)
    out["geometric_s"] = time.perf_counter() - t
    if model is not None:
        model_masks(model, p.source.frames[:2], p.target_aligned.pose_renders[:2])  # warm-up
        t = time.perf_counter()
        model_masks(model, p.source.frames, p.target_aligned.pose_renders)
        out["model_s"] = time.perf_counter() - t
        from mf_backend.masks.train import adapt

        t = time.perf_counter()
        adapt(model, p.source.frames, render_poses(p.source.poses), p.source.masks, steps=10)
        out["tta_10_steps_s"] = time.perf_counter() - t
    return out


def evaluate(cases: Optional[str], weights: Optional[str], tta_steps: int = 60, synthetic: int = 8,
             synthetic_seed: int = 9000, do_timing: bool = True, threads: int = 2) -> dict:
    """Run everything and print a table to stdout; returns the numbers."""
    import torch

    from mf_backend.masks.model import default_weights_dir, load_predictor
    from mf_backend.masks.predict import model_available

    torch.manual_seed(0)
    folder = Path(weights) if weights else default_weights_dir()
    model = load_predictor(folder) if model_available(folder) else None
    if model is None:
        print(f"no mask model in '{folder}': only the geometric fallback is evaluated", file=sys.stderr)
    results: dict = {"weights": str(folder), "tta_steps": tta_steps, "real": {}, "synthetic": {}}
    if cases and Path(cases).expanduser().is_dir():
        for case in sorted(p for p in Path(cases).expanduser().iterdir() if (p / "source_masks").is_dir()):
            results["real"][case.name] = eval_case(case, model, tta_steps)
            print(f"{case.name}: " + "  ".join(f"{k} {v:.3f}" for k, v in results["real"][case.name].items()), flush=True)
    elif cases:
        print(f"cases folder '{cases}' not found: real-case rows skipped", file=sys.stderr)
    for k in range(synthetic):
        results["synthetic"][str(synthetic_seed + k)] = r = eval_synthetic(synthetic_seed + k, model, tta_steps)
        print(f"synthetic {synthetic_seed + k}: " + "  ".join(f"{a} {b:.3f}" for a, b in r.items()), flush=True)
    for name in ("real", "synthetic"):
        rows = results[name]
        if rows:
            keys = list(next(iter(rows.values())))
            results[name + "_mean"] = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
            print(f"MEAN IoU {name} ({len(rows)}): " + "  ".join(f"{k} {v:.3f}" for k, v in results[name + '_mean'].items()))
    if do_timing:
        results["timing_24x512"] = t = timing(model, threads)
        print(f"timing, 24 frames at 512x512, {threads} CPU threads: " + "  ".join(f"{k} {v:.2f}" for k, v in t.items()))
    return results
