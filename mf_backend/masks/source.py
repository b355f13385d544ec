"""Source person masks M_r (method.md §A.6): 1 on the protagonist of the source clip.

Default extractor ("mediapipe"): the person segmentation of mediapipe 0.10.21's BlazePose
(`enable_segmentation=True`), the same tracker that gives the offline poses, so mask and skeleton belong
to the same person; it is smoothed over time by mediapipe itself. Frames where BlazePose finds nobody fall
back to the selfie segmenter, smoothed over neighbouring frames. Both models ship inside the wheel
(offline). Agreement with the dev cases' SAM masks: BlazePose 0.953, selfie 0.921 (docs/masks.md).
Edges are refined by a guided filter (opencv-contrib). Cleaning keeps the protagonist: the components that hold the protagonist's joints (the largest one when
no poses are given), and fills only small holes (the gap between an arm on the hip and the body is real).
Optional extractor: SAM, used only when its weights are in the models folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from mf_backend.errors import InvalidParams, WeightsMissing
from mf_backend.frames import Frames

log = logging.getLogger(__name__)

SAM_CHECKPOINTS = ("SAM/sam_vit_b_01ec64.pth", "SAM/sam_vit_l_0b3195.pth", "SAM/sam_vit_h_4b8939.pth")
# Temporal smoothing kernel over neighbouring frames (centred, so no lag; edge frames renormalised).
TEMPORAL_KERNEL = (0.25, 0.5, 0.25)
SMALL_HOLE = 0.002  # holes below this fraction of the person's area are segmentation noise: filled
# Edge refinement: guided filter (opencv-contrib) of the probability, guided by the frame, so the 0.5 contour
# snaps to image edges. Radius in pixels at 512 px (scaled with the frame), eps for a [0,1] guide. Chosen
# leave-one-case-out on the dev cases (docs/masks.md): every fold picked radius 4 (2 for case-1), eps 0.01.
GUIDED_RADIUS_512, GUIDED_EPS = 4, 0.01


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
            out[f] = seg.process(frames[f].copy()).segmentation_mask  # a copy: see pose/extract.py blazepose_chunks
            if ctx is not None and f % 8 == 0:
                ctx.progress("masks", f, len(frames), "source masks (mediapipe)")
    return out


def person_chunks(frames: Frames | np.ndarray, ctx=None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(a, float32 (k,H,W) person probability, the uint8 RGB frames (k,H,W,3)) a chunk at a time:
    BlazePose's segmentation of the person it tracks; frames without a detection take the selfie
    segmenter's probability, smoothed over neighbouring frames (the segmenter also sees the frame either
    side of the chunk, so the centred smoothing is what it is over the whole clip)."""
    from mf_backend.pose.extract import blazepose_chunks

    frames = Frames.of(frames)
    for a, landmarks, prob, rgb in blazepose_chunks(frames, segmentation=True, ctx=ctx, stage="masks"):
        missed = landmarks[:, :, 3].max(1) <= 0
        if missed.any():
            prob[missed] = _selfie_of_missed(frames, a, rgb, missed, ctx)
        yield a, prob, rgb


def _selfie_of_missed(frames: Frames, a: int, rgb: np.ndarray, missed: np.ndarray, ctx=None) -> np.ndarray:
    """(k',H,W) selfie probability of the `missed` frames of chunk a..a+k-1, each smoothed with its
    neighbours as `temporal_smooth` does over the whole clip: the segmenter sees only those frames."""
    k = np.asarray(TEMPORAL_KERNEL, np.float32)
    r = len(k) // 2
    targets = a + np.flatnonzero(missed)
    need = np.unique(np.clip((targets[:, None] + np.arange(-r, r + 1)).ravel(), 0, frames.num_frames - 1))
    images = np.stack([rgb[f - a] if a <= f < a + len(rgb) else frames.read(int(f), int(f) + 1)[0] for f in need])
    prob = dict(zip(need.tolist(), mediapipe_probabilities(images, ctx)))
    out = []
    for f in targets.tolist():  # the few missed frames; the same sums, in the same order, as temporal_smooth
        acc, weight = np.zeros(rgb.shape[1:3], np.float32), np.zeros((1, 1), np.float32)
        for o in range(-r, r + 1):
            if 0 <= f + o < frames.num_frames:
                acc += k[o + r] * prob[f + o]
                weight += k[o + r]
        out.append(acc / weight)
    return np.stack(out)


def person_probabilities(frames: np.ndarray, ctx=None) -> np.ndarray:
    """uint8 RGB (F,H,W,3) → float32 (F,H,W): `person_chunks` put together."""
    return np.concatenate([prob for _, prob, _ in person_chunks(frames, ctx)])


def refine_edges(frames: np.ndarray, prob: np.ndarray, radius_512: float = GUIDED_RADIUS_512,
                 eps: float = GUIDED_EPS) -> np.ndarray:
    """Guided filter of (F,H,W) probabilities by the uint8 RGB frames (F,H,W,3) → float32 (F,H,W)."""
    r = max(1, round(radius_512 * max(prob.shape[1:]) / 512))
    return np.stack([cv2.ximgproc.guidedFilter(f.astype(np.float32) / 255.0, p.astype(np.float32), r, eps)
                     for f, p in zip(frames, prob)])


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


def clean_mask(mask: np.ndarray, keep_largest: bool = True, fill_holes: bool = True,
               body: Optional[np.ndarray] = None, max_hole: Optional[float] = None) -> np.ndarray:
    """Binary (H,W) mask → uint8 {0,1}: the protagonist's 8-connected components, holes filled.

    body: the protagonist's keypoints (18,3) in the mask's pixels; when given, the components that hold
    any of its visible joints are kept (the one person, even beside a larger one), else the largest.
    max_hole: fill only holes smaller than this fraction of the mask's area (None: every enclosed hole).
    """
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if keep_largest and m.any():
        n, comp, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if n > 2:
            keep = _components_with_joints(comp, body) if body is not None else []
            if not keep:
                keep = [1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
            m = np.isin(comp, keep).astype(np.uint8)
    if fill_holes and m.any():
        # Background = what a flood fill from a padded border reaches; everything else is person.
        pad = np.pad(m, 1)
        cv2.floodFill(pad, None, (0, 0), 2)
        holes = (pad[1:-1, 1:-1] == 0).astype(np.uint8)
        if max_hole is not None and holes.any():
            n, comp, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
            small = 1 + np.nonzero(stats[1:, cv2.CC_STAT_AREA] < max_hole * m.sum())[0]
            holes = np.isin(comp, small).astype(np.uint8)
        m[holes > 0] = 1
    return m


def _components_with_joints(comp: np.ndarray, body: np.ndarray) -> list[int]:
    """Labels of `comp` (H,W) under a visible joint of body (18,3) (a 5 px neighbourhood: joints sit on
    the skeleton, which may graze the mask's edge)."""
    h, w = comp.shape
    labels: set[int] = set()
    for x, y, c in body:
        if c <= 0:
            continue
        xi, yi = int(round(x)), int(round(y))
        patch = comp[max(0, yi - 5):min(h, yi + 6), max(0, xi - 5):min(w, xi + 6)]
        labels.update(int(v) for v in np.unique(patch) if v > 0)
    return sorted(labels)


def clean_masks(masks: np.ndarray, keep_largest: bool = True, fill_holes: bool = True,
                bodies: Optional[np.ndarray] = None, max_hole: Optional[float] = None) -> np.ndarray:
    """(F,H,W) → float32 (F,H,W) {0,1}, `clean_mask` per frame (cv2 labelling is per image);
    bodies: optional (F,18,3) protagonist keypoints in the masks' pixels."""
    return np.stack([clean_mask(m, keep_largest, fill_holes, None if bodies is None else bodies[i], max_hole)
                     for i, m in enumerate(masks)]).astype(np.float32)


def soften(masks: np.ndarray, feather_px: float) -> np.ndarray:
    """Soft edges: Gaussian feather of binary (F,H,W) masks, values in [0,1] (0 px: unchanged)."""
    if feather_px <= 0:
        return masks.astype(np.float32)
    sigma = float(feather_px) / 2.0
    return np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), sigma) for m in masks]).clip(0, 1)


def source_mask_chunks(frames: Frames | np.ndarray, extractor: str = "mediapipe", models_dir: Optional[str] = None,
                       threshold: float = 0.5, feather_px: float = 0.0, poses=None,
                       ctx=None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """M_r a chunk at a time: (a, float32 (k,H,W) in [0,1] of frames a..a+k-1, binary unless feather_px > 0;
    the uint8 RGB frames (k,H,W,3) it was computed from).

    extractor: "mediapipe" (default, offline), "sam" (needs SAM weights in the models folder) or
    "auto" (SAM when its weights are present, else mediapipe). poses: the protagonist's PoseSequence
    (any pixel frame), whose joints choose the person's components when the mask has several.
    The probability is `person_chunks`', its edges refined by a guided filter.
    """
    frames = Frames.of(frames)
    if extractor == "auto":
        extractor = "sam" if find_sam_checkpoint(models_dir) is not None else "mediapipe"
    if extractor not in ("mediapipe", "sam"):
        raise InvalidParams(f"unknown source-mask extractor {extractor!r}", "use 'mediapipe', 'sam' or 'auto'")
    sam = load_sam(models_dir) if extractor == "sam" else None
    bodies = None if poses is None else poses.scaled(frames.width, frames.height).body
    empty = []
    for a, prob, rgb in person_chunks(frames, ctx):
        prob = refine_edges(rgb, prob)
        if sam is not None:
            prob = sam_masks(rgb, prob >= threshold, sam, ctx)
        masks = clean_masks(prob >= threshold, bodies=None if bodies is None else bodies[a:a + len(rgb)],
                            max_hole=SMALL_HOLE)
        empty += [a + int(i) for i in np.flatnonzero(masks.reshape(len(masks), -1).sum(1) == 0)]
        yield a, soften(masks, feather_px), rgb
    if empty:
        log.warning("no person found in %d source frame(s) (e.g. frame %d); their M_r is empty", len(empty), empty[0])


def source_masks(frames: np.ndarray, extractor: str = "mediapipe", models_dir: Optional[str] = None,
                 threshold: float = 0.5, feather_px: float = 0.0, poses=None, ctx=None) -> np.ndarray:
    """M_r for a clip in memory: uint8 RGB (F,H,W,3) → float32 (F,H,W) (`source_mask_chunks` put together)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidParams(f"source_masks expects uint8 (F,H,W,3) frames, got {frames.dtype} {frames.shape}")
    return np.concatenate([m for _, m, _ in source_mask_chunks(frames, extractor, models_dir, threshold, feather_px,
                                                               poses, ctx)])


# ------------------------------------------------------------------------------------------ SAM (optional)


def find_sam_checkpoint(models_dir: Optional[str]) -> Optional[Path]:
    from mf_backend.weights import resolve_models_dir

    root = resolve_models_dir(models_dir)
    return next((root / c for c in SAM_CHECKPOINTS if (root / c).is_file()), None)


def load_sam(models_dir: Optional[str]):
    """SAM's predictor from the models folder (an error that says where to put the weights)."""
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
    return SamPredictor(sam.eval())


def sam_masks(frames: np.ndarray, coarse: np.ndarray, predictor, ctx=None) -> np.ndarray:
    """Refine coarse (F,H,W) person masks with SAM (`load_sam`), prompted by each coarse mask's bounding box."""
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
