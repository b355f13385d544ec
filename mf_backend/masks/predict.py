"""M_e for an edit, and the rule for which predictor makes it.

Rule (`mask_predictor` job parameter), from the measurements in docs/masks.md (real cases, self-transfer
IoU: geometric 0.832, model trained on synthetic data only 0.803, model + 60 TTA steps 0.872):
  * "auto":      the DiT predictor adapted to the source clip (`tta_steps`, or AUTO_TTA_STEPS when that
                 is 0) when its weights are present; else the geometric warp.
  * "model":     the DiT predictor with exactly `tta_steps` of adaptation (0 = as trained); missing
                 weights are an error (shipped weights: mf_backend/assets/seg, or a folder `weights`).
  * "geometric": the training-free part-by-part warp (geometric.py).
Whatever made it, every frame then goes through `guard`: a predicted mask that is empty, or far smaller
or larger than the source person (below 1/4 or above 4x M_r's area), is replaced by the geometric warp of
that frame; if that is empty too, by M_r itself, and if the source had no person either, by the target
skeleton dilated to a body. M_e is therefore never empty.

The model sees (source frame f, target pose render f); with `tta_steps` > 0 it is first fine-tuned on
the source clip (train.adapt).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from mf_backend.errors import InvalidParams
from mf_backend.masks.geometric import geometric_masks
from mf_backend.masks.model import TargetMaskPredictor, default_weights_dir, load_predictor
from mf_backend.masks.source import clean_mask
from mf_backend.pose.keypoints import PoseSequence
from mf_backend.pose.render import render_poses

log = logging.getLogger(__name__)

AREA_RATIO_LIMITS = (0.25, 4.0)  # plausible M_e area / M_r area
AUTO_TTA_STEPS = 60  # the synthetic-only model loses to the geometric warp on real footage; adapted, it wins


def render_for_model(poses: PoseSequence) -> np.ndarray:
    """Pose renders as the model was trained on them: drawn at 512x512 (line widths of the reference
    renders), then resized to the working resolution like the frames → uint8 (F,512,512,3)."""
    from mf_backend.masks.train import RENDER_SIZE

    return render_poses(poses, RENDER_SIZE, RENDER_SIZE)


def model_available(weights: Optional[str | Path] = None) -> bool:
    folder = Path(weights) if weights else default_weights_dir()
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


@torch.no_grad()
def run_model(model: TargetMaskPredictor, frames: np.ndarray, pose_renders: np.ndarray, batch: int = 24) -> np.ndarray:
    """uint8 frames (F,H,W,3) + pose renders (F,H',W',3) → probabilities float32 (F,H,W) at the frame size."""
    from mf_backend.masks.train import iter_chunks, resize_stack, to_inputs

    f, h, w = frames.shape[:3]
    r = model.config.resolution
    src_small, pose_small = resize_stack(frames, r), resize_stack(pose_renders, r)
    out = np.empty((f, h, w), np.float32)
    model.eval()
    for sl in iter_chunks(f, batch):
        src, pose = to_inputs(src_small[sl], pose_small[sl])
        logits = model.logits(src, pose)  # (B,1,r,r)
        # Upsample logits (not probabilities) so the 0.5 contour is interpolated smoothly.
        out[sl] = torch.sigmoid(torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear",
                                                                align_corners=False))[:, 0].numpy()
    return out


def model_masks(model: TargetMaskPredictor, frames: np.ndarray, pose_renders: np.ndarray) -> np.ndarray:
    """Binary cleaned M_e (F,H,W) float32 from the model."""
    prob = run_model(model, frames, pose_renders)
    return np.stack([clean_mask(p >= 0.5) for p in prob]).astype(np.float32)


def skeleton_body(poses: PoseSequence, height: int, width: int) -> np.ndarray:
    """Last resort M_e: the target skeleton render, dilated to roughly a body's width → (F,H,W) {0,1}."""
    renders = render_poses(poses, height, width).max(axis=-1) > 0
    k = max(3, int(0.06 * max(height, width)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return np.stack([cv2.dilate(r.astype(np.uint8), kernel) for r in renders]).astype(np.float32)


def guard(pred: np.ndarray, source_masks: np.ndarray, source_poses: PoseSequence, target_poses: PoseSequence,
          pred_is_geometric: bool = False) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Replace implausible frames of M_e (see the module docstring) → (masks, {"geometric": [...], ...})."""
    f, h, w = pred.shape
    area = (pred >= 0.5).reshape(f, -1).sum(1).astype(np.float64)
    src_area = (source_masks >= 0.5).reshape(f, -1).sum(1).astype(np.float64)
    lo, hi = AREA_RATIO_LIMITS
    bad = (area == 0) | ((src_area > 0) & ((area < lo * src_area) | (area > hi * src_area)))
    out = pred.copy()
    report: dict[str, list[int]] = {"geometric": [], "source": [], "skeleton": []}
    if not bad.any():
        return out, report
    idx = np.nonzero(bad)[0]
    geo = None if pred_is_geometric else geometric_masks(source_masks[idx], source_poses.frames(idx),
                                                         target_poses.frames(idx))
    skel = skeleton_body(target_poses.frames(idx), h, w)
    for n, k in enumerate(idx):
        if geo is not None and geo[n].sum() > lo * src_area[k] and geo[n].max() >= 0.5:
            out[k], which = geo[n], "geometric"
        elif src_area[k] > 0:
            out[k], which = (source_masks[k] >= 0.5).astype(np.float32), "source"
        else:
            out[k], which = skel[n], "skeleton"
            if out[k].max() < 0.5:  # no person and no skeleton: the whole frame may change
                out[k] = 1.0
        report[which].append(int(k))
    log.warning("M_e guard replaced %d frame(s): %s", len(idx), {k: v for k, v in report.items() if v})
    return out, report


def predict_masks(frames: np.ndarray, source_masks: np.ndarray, source_poses: PoseSequence,
                  target_poses: PoseSequence, predictor: str = "auto", weights: Optional[str | Path] = None,
                  tta_steps: int = 0, target_renders: Optional[np.ndarray] = None, ctx=None) -> tuple[np.ndarray, dict]:
    """M_e (F,H,W) float32 {0,1} for source frames (F,H,W,3) uint8, M_r (F,H,W) and keypoints.

    target_renders: the target pose renders (F,H',W',3) if they exist already (else drawn from target_poses).
    Returns (masks, info) with info = {"predictor": "model"|"geometric", "guard": {...}, "tta_steps": n}.
    """
    f, h, w = source_masks.shape
    if predictor not in ("auto", "model", "geometric"):
        raise InvalidParams(f"unknown mask_predictor {predictor!r}", "use auto, model or geometric")
    use_model = predictor == "model" or (predictor == "auto" and model_available(weights))
    if predictor == "auto" and tta_steps <= 0:
        tta_steps = AUTO_TTA_STEPS
    info: dict = {"predictor": "model" if use_model else "geometric", "tta_steps": 0}
    if ctx is not None:
        ctx.progress("masks", 0, 2, f"predicted masks ({info['predictor']})")
    if use_model:
        model = load_predictor(weights or default_weights_dir())
        if tta_steps > 0:
            from mf_backend.masks.train import adapt

            model = adapt(model, frames, render_for_model(source_poses), source_masks, steps=tta_steps, ctx=ctx)
            info["tta_steps"] = tta_steps
        renders = target_renders if target_renders is not None else render_for_model(target_poses)
        pred = model_masks(model, frames, renders)
        pred, info["guard"] = guard(pred, source_masks, source_poses, target_poses)
    else:
        geo = geometric_masks(source_masks, source_poses, target_poses)
        pred, info["guard"] = guard(geo, source_masks, source_poses, target_poses, pred_is_geometric=True)
    if ctx is not None:
        ctx.progress("masks", 2, 2)
    return pred, info
