"""Source person masks M_r (method.md §A.6): 1 on the protagonist of the source clip.

Default extractor: mediapipe 0.10.21's selfie/person segmentation, whose model ships inside the
mediapipe wheel (works offline). Its per-frame probabilities flicker, so they are smoothed over time
before thresholding; then every mask is cleaned (largest person component, holes filled).
Optional extractor: SAM, used only when its weights are in the models folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from mf_backend.errors import InvalidParams, WeightsMissing

log = logging.getLogger(__name__)

SAM_CHECKPOINTS = ("SAM/sam_vit_b_01ec64.pth", "SAM/sam_vit_l_0b3195.pth", "SAM/sam_vit_h_4b8939.pth")
# Temporal smoothing kernel over neighbouring frames (centred, so no lag; edge frames renormalised).
TEMPORAL_KERNEL = (0.25, 0.5, 0.25)


def mediapipe_probabilities(frames: np.ndarray, ctx=None) -> np.ndarray:
    """uint8 RGB (F,H,W,3) → float32 (F,H,W) person probability from mediapipe's selfie segmenter."""
    try:
        from mediapipe.python.solutions import selfie_segmentation
    except ImportError as exc:  # pragma: no cover - mediapipe is a dependency
        raise WeightsMissing("mediapipe is not installed: it provides the default person segmentation",
                             "reinstall the backend (pip install mediapipe==0.10.21)") from exc
    out = np.empty(frames.shape[:3], np.float32)
    # model_selection=0 is the "general" 256x256 model: better for full bodies than the landscape one.
    with selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        for f in range(len(frames)):  # the graph takes one image at a time
            out[f] = seg.process(np.ascontiguousarray(frames[f])).segmentation_mask
            if ctx is not None and f % 8 == 0:
                ctx.progress("masks", f, len(frames), "source masks (mediapipe)")
    return out


def temporal_smooth(prob: np.ndarray, kernel: tuple[float, ...] = TEMPORAL_KERNEL) -> np.ndarray:
    """Centred weighted average of (F,H,W) probabilities over neighbouring frames (removes flicker)."""
    k = np.asarray(kernel, np.float32)
    r = len(k) // 2
    n = len(prob)
    acc = np.zeros_like(prob)
    weight = np.zeros((n, 1, 1), np.float32)
    for o in range(-r, r + 1):  # loop over the few kernel taps, vectorised over frames
        lo, hi = max(0, -o), min(n, n - o)
        if lo >= hi:
            continue
        acc[lo:hi] += k[o + r] * prob[lo + o:hi + o]
        weight[lo:hi] += k[o + r]
    return acc / weight


def clean_mask(mask: np.ndarray, keep_largest: bool = True, fill_holes: bool = True) -> np.ndarray:
    """Binary (H,W) mask → uint8 {0,1}: largest 8-connected component, enclosed holes filled."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if keep_largest and m.any():
        n, comp, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if n > 2:
            m = (comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    if fill_holes and m.any():
        # Background = what a flood fill from a padded border reaches; everything else is person.
        pad = np.pad(m, 1)
        flood = pad.copy()
        cv2.floodFill(flood, None, (0, 0), 1)
        holes = flood[1:-1, 1:-1] == 0
        m[holes] = 1
    return m


def clean_masks(masks: np.ndarray, keep_largest: bool = True, fill_holes: bool = True) -> np.ndarray:
    """(F,H,W) → float32 (F,H,W) {0,1}, `clean_mask` per frame (cv2 labelling is per image)."""
    return np.stack([clean_mask(m, keep_largest, fill_holes) for m in masks]).astype(np.float32)


def soften(masks: np.ndarray, feather_px: float) -> np.ndarray:
    """Soft edges: Gaussian feather of binary (F,H,W) masks, values in [0,1] (0 px: unchanged)."""
    if feather_px <= 0:
        return masks.astype(np.float32)
    sigma = float(feather_px) / 2.0
    return np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), sigma) for m in masks]).clip(0, 1)


def source_masks(frames: np.ndarray, extractor: str = "mediapipe", models_dir: Optional[str] = None,
                 threshold: float = 0.5, feather_px: float = 0.0, ctx=None) -> np.ndarray:
    """M_r for a clip: uint8 RGB (F,H,W,3) → float32 (F,H,W) in [0,1] (binary unless feather_px > 0).

    extractor: "mediapipe" (default, offline), "sam" (needs SAM weights in the models folder) or
    "auto" (SAM when its weights are present, else mediapipe).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidParams(f"source_masks expects uint8 (F,H,W,3) frames, got {frames.dtype} {frames.shape}")
    if extractor == "auto":
        extractor = "sam" if find_sam_checkpoint(models_dir) is not None else "mediapipe"
    prob = temporal_smooth(mediapipe_probabilities(frames, ctx))
    if extractor == "sam":
        prob = sam_masks(frames, prob >= threshold, models_dir, ctx)
    elif extractor != "mediapipe":
        raise InvalidParams(f"unknown source-mask extractor {extractor!r}", "use 'mediapipe', 'sam' or 'auto'")
    masks = clean_masks(prob >= threshold)
    empty = masks.reshape(len(masks), -1).sum(1) == 0
    if empty.any():
        log.warning("no person found in %d source frame(s) (e.g. frame %d); their M_r is empty",
                    int(empty.sum()), int(np.argmax(empty)))
    return soften(masks, feather_px)


# ------------------------------------------------------------------------------------------ SAM (optional)


def find_sam_checkpoint(models_dir: Optional[str]) -> Optional[Path]:
    from mf_backend.weights import resolve_models_dir

    root = resolve_models_dir(models_dir)
    return next((root / c for c in SAM_CHECKPOINTS if (root / c).is_file()), None)


def sam_masks(frames: np.ndarray, coarse: np.ndarray, models_dir: Optional[str], ctx=None) -> np.ndarray:
    """Refine coarse (F,H,W) person masks with SAM, prompted by each coarse mask's bounding box."""
    ckpt = find_sam_checkpoint(models_dir)
    if ckpt is None:
        from mf_backend.weights import resolve_models_dir

        raise WeightsMissing(
            "SAM source masks were requested but no SAM checkpoint is in the models folder",
            f"put one of {', '.join(SAM_CHECKPOINTS)} under {resolve_models_dir(models_dir)} "
            "(from github.com/facebookresearch/segment-anything), or use the default mediapipe extractor")
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError as exc:
        raise WeightsMissing("SAM weights were found but the 'segment_anything' package is not installed",
                             "pip install segment-anything, or use the default mediapipe extractor") from exc
    import torch

    kind = {"b": "vit_b", "l": "vit_l", "h": "vit_h"}[ckpt.stem.split("_")[2]]
    sam = sam_model_registry[kind]()
    sam.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    predictor = SamPredictor(sam.eval())
    out = coarse.astype(np.float32)
    for f in range(len(frames)):
        ys, xs = np.nonzero(coarse[f])
        if len(xs) == 0:
            continue
        predictor.set_image(frames[f])
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        m, _, _ = predictor.predict(box=box, multimask_output=False)
        out[f] = m[0].astype(np.float32)
        if ctx is not None:
            ctx.progress("masks", f, len(frames), "source masks (SAM)")
    return out
