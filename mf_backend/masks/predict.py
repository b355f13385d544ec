"""M_e for an edit, and the rule for which predictor makes it.

Measured on real clips from raw frames (docs/masks.md, self-transfer, leave-one-case-out): warping the
source masks of the k source frames of nearest pose (the geometric *vote*) beats the DiT model trained on
synthetic data alone; the model helps a little averaged with the vote, on some clips only; adapting it to
the clip (TTA) adds little for 10x the time. So (`mask_predictor` job parameter):
  * "auto":      the vote (geometric.vote_probability, TEMPLATES nearest source poses); when the model's
                 weights are present, a per-clip *self-check* decides whether the model joins it
                 (probability (1 - FUSION_WEIGHT)·vote + FUSION_WEIGHT·model): the last third of the
                 source frames is held out, predicted from the other source frames both ways, and compared
                 with its M_r. With `tta_steps` > 0 the model is also adapted on the kept frames and checked
                 after CHECKPOINTS steps (early stopping on held-out frames).
  * "model":     the DiT predictor alone with exactly `tta_steps` of adaptation on the whole source clip
                 (0 = as trained); missing weights are an error.
  * "geometric": the vote alone (training-free).
Whatever made it, every frame then goes through `guard`: a predicted mask that is empty, or far smaller
or larger than the source person (below 1/4 or above 4x M_r's area), is replaced by the geometric warp of
that frame; if that is empty too, by M_r itself, and if the source had no person either, by the target
skeleton dilated to a body. M_e is therefore never empty.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np
import torch

from mf_backend.errors import InvalidParams
from mf_backend.frames import CHUNK
from mf_backend.masks.geometric import (TEMPLATES, geometric_masks, pose_distance, shrink_masks, template_warps,
                                        upsample_vote)
from mf_backend.masks.model import TargetMaskPredictor, default_weights_dir, load_predictor
from mf_backend.masks.source import clean_mask
from mf_backend.pose.keypoints import PoseSequence
from mf_backend.pose.render import render_poses

log = logging.getLogger(__name__)

AREA_RATIO_LIMITS = (0.25, 4.0)  # plausible M_e area / M_r area
FUSION_WEIGHT = 0.3  # the model's share when the self-check fuses it with the vote (3 of 4 LOCO folds)
CHECKPOINTS = (10, 20)  # with tta_steps > 0, the self-check also runs after these steps (and the last one)


def render_for_model(poses: PoseSequence) -> np.ndarray:
    """Pose renders as the model was trained on them: drawn at 512x512 (line widths of the reference
    renders), then resized to the working resolution like the frames → uint8 (F,512,512,3)."""
    from mf_backend.masks.train import RENDER_SIZE

    return render_poses(poses, RENDER_SIZE, RENDER_SIZE)


def model_renders(poses: PoseSequence, resolution: int) -> np.ndarray:
    """`render_for_model` resized to the model's resolution (as `run_model` resizes it), a chunk at a
    time → uint8 (F,r,r,3): what is kept for a whole clip."""
    from mf_backend.masks.train import resize_stack

    return np.concatenate([resize_stack(render_for_model(poses.frames(slice(a, a + CHUNK))), resolution)
                           for a in range(0, len(poses), CHUNK)])


@dataclass
class SourcePool:
    """The source frames M_e is predicted from, for a whole clip at the predictors' small sizes; the
    full-resolution M_r is read back a chunk at a time (`read_masks`), so nothing full-size is held."""

    hw: tuple[int, int]  # the full frame (H, W)
    masks: np.ndarray  # float32 (S,h,w): M_r at the warp's size (geometric.shrink_masks)
    person: np.ndarray  # bool (S,): M_r holds a person
    read_masks: Callable[[int, int], np.ndarray]  # full-resolution M_r of pool frames a..b-1 → (k,H,W)
    frames: Optional[np.ndarray] = None  # uint8 (S,r,r,3): the frames at the model's resolution (with a model)
    masks_r: Optional[np.ndarray] = None  # float32 (S,r,r): M_r at the model's resolution (for adaptation)

    @classmethod
    def build(cls, chunks, hw: tuple[int, int], read_masks: Callable[[int, int], np.ndarray],
              resolution: Optional[int] = None) -> "SourcePool":
        """From (frames uint8 (k,H,W,3), M_r (k,H,W)) chunks in order; `resolution`: the model's (None: no model)."""
        from mf_backend.masks.train import resize_stack

        parts: dict[str, list] = {"masks": [], "person": [], "frames": [], "masks_r": []}
        for rgb, m in chunks:
            parts["masks"].append(shrink_masks(m))
            parts["person"].append(m.reshape(len(m), -1).max(1) >= 0.5)
            if resolution:
                parts["frames"].append(resize_stack(rgb, resolution))
                parts["masks_r"].append(resize_stack(m.astype(np.float32), resolution))
        small = {k: np.concatenate(v) if v else None for k, v in parts.items()}
        return cls(hw, small["masks"], small["person"], read_masks, small["frames"], small["masks_r"])

    @classmethod
    def of(cls, frames: np.ndarray, source_masks: np.ndarray, resolution: Optional[int] = None) -> "SourcePool":
        """A pool of a clip in memory: uint8 (S,H,W,3) frames and M_r (S,H,W)."""
        chunks = ((frames[a:a + CHUNK], source_masks[a:a + CHUNK]) for a in range(0, len(frames), CHUNK))
        return cls.build(chunks, source_masks.shape[1:], lambda a, b: source_masks[a:b], resolution)

    def masks_at(self, index: np.ndarray) -> np.ndarray:
        """Full-resolution M_r (k,H,W) of pool frames `index` (increasing), read as one range."""
        lo, hi = int(index[0]), int(index[-1]) + 1
        return self.read_masks(lo, hi)[index - lo]


def model_available(weights: Optional[str | Path] = None) -> bool:
    folder = Path(weights) if weights else default_weights_dir()
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


@torch.no_grad()
def run_model(model: TargetMaskPredictor, frames: np.ndarray, pose_renders: np.ndarray, batch: int = 24,
              out_hw: Optional[tuple[int, int]] = None) -> np.ndarray:
    """uint8 frames (F,H,W,3) + pose renders (F,H',W',3) → probabilities float32 (F,H,W) at the frame size
    (or out_hw: frames may come at the model's resolution already, SourcePool.frames)."""
    from mf_backend.masks.train import iter_chunks, resize_stack, to_inputs

    f = len(frames)
    h, w = out_hw or frames.shape[1:3]
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


def model_masks(model: TargetMaskPredictor, frames: np.ndarray, pose_renders: np.ndarray,
                out_hw: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Binary cleaned M_e (F,H,W) float32 from the model."""
    prob = run_model(model, frames, pose_renders, out_hw=out_hw)
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
    return out, report


def iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame IoU of (F,H,W) masks thresholded at 0.5 (1.0 where both are empty)."""
    p, g = pred >= 0.5, gt >= 0.5
    inter = (p & g).reshape(len(p), -1).sum(1)
    union = (p | g).reshape(len(p), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def self_check(model: TargetMaskPredictor, pool: SourcePool, source_poses: PoseSequence, steps: int = 0,
               templates: int = TEMPLATES, weight: float = FUSION_WEIGHT,
               ctx=None) -> tuple[Optional[TargetMaskPredictor], dict]:
    """Does the model improve the geometric vote on this clip? Decided on the clip's own frames.

    The last third of the source frames is held out: each is predicted by the vote from the other source
    frames, alone and fused with the model (source frame = the kept frame of nearest pose), and scored
    against its M_r. With steps > 0 the model is adapted on the kept frames and checked again at each
    CHECKPOINTS step. Returns (the model to fuse, at its best step, or None when the vote alone wins;
    {"scores": {"vote": iou, "fusion@s": iou, ...}, "step": adaptation steps of the chosen model}).
    """
    from mf_backend.masks.train import adapt

    n, (h, w) = len(pool.person), pool.hw
    source_body = source_poses.scaled(w, h).body
    keep = np.arange(n - max(1, n // 3))
    held = np.arange(len(keep), n)
    person = pool.person
    if person[keep].sum() < 1 or not person[held].any():
        return None, {"scores": {}, "step": 0, "skipped": "too few source frames with a person"}
    held = held[person[held]]
    warps = template_warps(pool.masks[keep], person[keep], source_body[keep], source_body[held], pool.hw, templates)
    d = pose_distance(source_body[keep], source_body[held])
    d[~person[keep]] = np.inf
    nearest = keep[np.argmin(d, axis=0)]
    renders = model_renders(source_poses, model.config.resolution)

    def score(candidate: Optional[TargetMaskPredictor]) -> float:  # mean IoU over the held-out frames, by chunks
        ious = []
        for a in range(0, len(held), CHUNK):
            sl = slice(a, a + CHUNK)
            prob = upsample_vote(warps[sl], pool.hw)
            if candidate is not None:
                prob = (1 - weight) * prob + weight * run_model(candidate, pool.frames[nearest[sl]], renders[held[sl]],
                                                                out_hw=pool.hw)
            ious.append(iou(clean_stack(prob), pool.masks_at(held[sl])))
        return float(np.concatenate(ious).mean())

    scores = {"vote": score(None)}
    best: dict = {"score": scores["vote"], "model": None, "step": 0}

    def check(candidate: TargetMaskPredictor, step: int) -> None:
        if step and step not in CHECKPOINTS and step != steps:
            return
        scores[f"fusion@{step}"] = s = score(candidate)
        if s > best["score"]:
            best.update(score=s, step=step, model=candidate if step == 0 else copy.deepcopy(candidate))

    check(model, 0)
    if steps > 0:
        adapt(model, pool.frames[keep], renders[keep], pool.masks_r[keep], steps=steps, ctx=ctx, callback=check)
    return best["model"], {"scores": scores, "step": best["step"]}


def clean_stack(prob: np.ndarray) -> np.ndarray:
    """(F,H,W) probabilities → cleaned binary masks float32 (threshold 0.5, protagonist, holes filled)."""
    return np.stack([clean_mask(p >= 0.5) for p in prob]).astype(np.float32)


def mask_model(predictor: str = "auto", weights: Optional[str | Path] = None) -> Optional[TargetMaskPredictor]:
    """The DiT predictor `predictor` uses ("model": required; "auto": when its weights are present), or None."""
    if predictor not in ("auto", "model", "geometric"):
        raise InvalidParams(f"unknown mask_predictor {predictor!r}", "use auto, model or geometric")
    if predictor == "model" or (predictor == "auto" and model_available(weights)):
        return load_predictor(weights or default_weights_dir())
    return None


def predict_mask_chunks(pool: SourcePool, source_poses: PoseSequence, target_poses: PoseSequence,
                        model: Optional[TargetMaskPredictor], predictor: str = "auto", tta_steps: int = 0,
                        templates: int = TEMPLATES, fusion_weight: float = FUSION_WEIGHT, ctx=None,
                        info: Optional[dict] = None, target_renders: Optional[np.ndarray] = None
                        ) -> Iterator[tuple[int, np.ndarray]]:
    """M_e a chunk of target frames at a time: (t, float32 (k,H,W) {0,1} of targets t..t+k-1), one target
    per pool frame (`model`: `mask_model`'s; `target_renders`: the model's target pose renders (T,r,r,3)
    when they exist already, else drawn from target_poses). `info` is filled with {"predictor": "fusion"|"model"|"geometric",
    "guard": {...}, "tta_steps": n, "self_check": {...}}."""
    info = {} if info is None else info
    info.update(predictor="geometric", tta_steps=0)
    if ctx is not None:
        ctx.progress("masks", 0, 2, "predicted masks")
    (h, w), n = pool.hw, len(pool.person)
    src_body = source_poses.scaled(w, h).body
    dst_body = target_poses.scaled(w, h).body
    chosen = None
    if predictor == "model":
        if tta_steps > 0:
            from mf_backend.masks.train import adapt

            model = adapt(model, pool.frames, model_renders(source_poses, model.config.resolution), pool.masks_r,
                          steps=tta_steps, ctx=ctx)
            info["tta_steps"] = tta_steps
        info["predictor"] = "model"
    elif model is not None:
        chosen, info["self_check"] = self_check(model, pool, source_poses, tta_steps, templates, fusion_weight, ctx)
        if chosen is not None:
            info.update(predictor="fusion", tta_steps=info["self_check"]["step"])
    report: dict[str, list[int]] = {"geometric": [], "source": [], "skeleton": []}
    def renders_of(sl: slice, resolution: int) -> np.ndarray:
        return target_renders[sl] if target_renders is not None else model_renders(target_poses.frames(sl), resolution)

    for a in range(0, n, CHUNK):
        sl = slice(a, min(a + CHUNK, n))
        if predictor == "model":
            pred = model_masks(model, pool.frames[sl], renders_of(sl, model.config.resolution), out_hw=pool.hw)
        else:
            prob = upsample_vote(template_warps(pool.masks, pool.person, src_body, dst_body[sl], pool.hw, templates),
                                 pool.hw)
            if chosen is not None:
                prob = (1 - fusion_weight) * prob + fusion_weight * run_model(
                    chosen, pool.frames[sl], renders_of(sl, chosen.config.resolution), out_hw=pool.hw)
            pred = clean_stack(prob)
        pred, replaced = guard(pred, pool.read_masks(sl.start, sl.stop), source_poses.frames(sl),
                               target_poses.frames(sl), pred_is_geometric=info["predictor"] == "geometric")
        for kind, frames in replaced.items():
            report[kind] += [a + k for k in frames]
        yield a, pred
    info["guard"] = report
    if any(report.values()):
        log.warning("M_e guard replaced %d frame(s): %s", sum(map(len, report.values())),
                    {k: v for k, v in report.items() if v})
    if ctx is not None:
        ctx.progress("masks", 2, 2)


def predict_masks(frames: np.ndarray, source_masks: np.ndarray, source_poses: PoseSequence,
                  target_poses: PoseSequence, predictor: str = "auto", weights: Optional[str | Path] = None,
                  tta_steps: int = 0, target_renders: Optional[np.ndarray] = None, templates: int = TEMPLATES,
                  fusion_weight: float = FUSION_WEIGHT, ctx=None) -> tuple[np.ndarray, dict]:
    """M_e (F,H,W) float32 {0,1} for source frames (F,H,W,3) uint8, M_r (F,H,W) and keypoints, all in
    memory (`predict_mask_chunks` put together; target_renders: the target pose renders (F,H',W',3) if
    they exist already, else drawn from target_poses). Returns (masks, info)."""
    from mf_backend.masks.train import resize_stack

    model = mask_model(predictor, weights)
    r = None if model is None else model.config.resolution
    pool = SourcePool.of(frames, source_masks, r)
    small = None if target_renders is None or r is None else resize_stack(target_renders, r)
    info: dict = {}
    pred = np.concatenate([m for _, m in predict_mask_chunks(pool, source_poses, target_poses, model, predictor,
                                                             tta_steps, templates, fusion_weight, ctx, info, small)])
    return pred, info
