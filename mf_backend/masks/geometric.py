"""Training-free M_e: warp the source mask part by part from the source skeleton to the target one.

Each person pixel of the source mask belongs to its nearest bone (one of the 17 drawn limbs). Each bone
carries its pixels with an affine map taking the source bone to the target bone: the bone's direction
and position follow the target, its length scales along the bone (foreshortening), its width stays the
source's. The union of the warped parts is closed (to heal the seams between parts) and cleaned.

A target pose is best reached from the source frames whose pose is nearest (less to bend, fewer
occluded parts to invent): `vote_probability` warps the k nearest source frames and averages them.
"""

from __future__ import annotations

import cv2
import numpy as np

from mf_backend.masks.source import clean_mask
from mf_backend.pose.keypoints import LIMBS, PoseSequence, body_size

_LIMBS = np.array(LIMBS)  # (17,2)
_NECK = 1
WARP_SIZE = 256  # warps run at most at this size (px of the longer side), then are upsampled
TEMPLATES = 3  # source frames of nearest pose warped and averaged per target (LOCO folds chose 3 or 5)


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance of points px (N,2) to segments a→b (K,2) → (N,K) float32 (per coordinate: no
    (N,K,2) temporaries, the hot spot of the warp)."""
    px, a, b = px.astype(np.float32), a.astype(np.float32), b.astype(np.float32)
    abx, aby = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]  # (K,)
    dx, dy = px[:, :1] - a[None, :, 0], px[:, 1:] - a[None, :, 1]  # (N,K)
    t = np.clip((dx * abx + dy * aby) / np.maximum(abx * abx + aby * aby, 1e-6), 0.0, 1.0)
    ex, ey = dx - t * abx, dy - t * aby
    return ex * ex + ey * ey


def bone_affine(a: np.ndarray, b: np.ndarray, a2: np.ndarray, b2: np.ndarray,
                length_clamp: tuple[float, float] = (0.5, 1.6)) -> np.ndarray:
    """2x3 affine taking bone a→b onto a2→b2: rotation + along-bone scale, width kept."""
    d, d2 = b - a, b2 - a2
    n, n2 = np.linalg.norm(d), np.linalg.norm(d2)
    if n < 1e-3 or n2 < 1e-3:  # degenerate bone: translate only
        return np.array([[1, 0, a2[0] - a[0]], [0, 1, a2[1] - a[1]]], np.float64)
    u, u2 = d / n, d2 / n2
    rot = np.stack([u, [-u[1], u[0]]], axis=1)  # columns: along, across (source)
    rot2 = np.stack([u2, [-u2[1], u2[0]]], axis=1)
    scale = np.diag([np.clip(n2 / n, *length_clamp), 1.0])
    m = rot2 @ scale @ rot.T
    return np.concatenate([m, (a2 - m @ a)[:, None]], axis=1)


def warp_mask(mask: np.ndarray, src_body: np.ndarray, dst_body: np.ndarray, close_px: int | None = None) -> np.ndarray:
    """One frame: source mask (H,W) + source/target body keypoints (18,3) in its pixels → warped (H,W) {0,1}."""
    h, w = mask.shape
    binary = (mask >= 0.5).astype(np.uint8)
    ys, xs = np.nonzero(binary)
    src_ok = (src_body[_LIMBS[:, 0], 2] > 0) & (src_body[_LIMBS[:, 1], 2] > 0)
    if len(xs) == 0 or not src_ok.any():
        return binary.astype(np.float32)  # nothing to warp with: keep the source mask
    dst_ok = (dst_body[_LIMBS[:, 0], 2] > 0) & (dst_body[_LIMBS[:, 1], 2] > 0)
    bones = np.nonzero(src_ok)[0]
    px = np.stack([xs, ys], axis=1).astype(np.float32)
    dist = _segment_distance(px, src_body[_LIMBS[bones, 0], :2], src_body[_LIMBS[bones, 1], :2])
    owner = bones[dist.argmin(axis=1)]  # (N,) bone index per person pixel
    # A bone the target lost moves rigidly with the neck (or stays, without one).
    if src_body[_NECK, 2] > 0 and dst_body[_NECK, 2] > 0:
        shift = dst_body[_NECK, :2] - src_body[_NECK, :2]
    else:
        shift = np.zeros(2, np.float32)
    out = np.zeros((h, w), np.uint8)
    part = np.zeros((h, w), np.uint8)
    for k in np.unique(owner):
        part[:] = 0
        sel = owner == k
        part[ys[sel], xs[sel]] = 1
        i, j = _LIMBS[k]
        if dst_ok[k]:
            m = bone_affine(src_body[i, :2], src_body[j, :2], dst_body[i, :2], dst_body[j, :2])
        else:
            m = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float64)
        out |= cv2.warpAffine(part, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    k = close_px if close_px is not None else max(3, int(round(0.02 * max(h, w))) | 1)
    out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return clean_mask(out).astype(np.float32)


def pose_distance(source_body: np.ndarray, target_body: np.ndarray) -> np.ndarray:
    """Body keypoints (S,18,3) and (T,18,3) → (S,T): mean distance of the joints visible in both, each
    pose taken relative to its neck and divided by its body size (placement and scale do not count)."""
    def normalise(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = body_size(b)
        size = np.where(np.isfinite(size) & (size > 0), size, np.nanmax(np.append(size, 1.0)))
        return (b[:, :, :2] - b[:, _NECK:_NECK + 1, :2]) / size[:, None, None], b[:, :, 2] > 0

    a, va = normalise(source_body)
    b, vb = normalise(target_body)
    both = va[:, None] & vb[None]  # (S,T,18)
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return np.where(both.any(-1), (d * both).sum(-1) / np.maximum(both.sum(-1), 1), np.inf)


def warp_scale(hw: tuple[int, int]) -> float:
    """The factor masks of frame size hw=(H,W) are shrunk by for warping (masks are smooth: same IoU,
    3.5x faster at 512²)."""
    return min(1.0, WARP_SIZE / max(hw))


def shrink_masks(masks: np.ndarray) -> np.ndarray:
    """M_r (k,H,W) → float32 (k,h,w) at the warp's size (area-averaged; unchanged up to WARP_SIZE px).
    Kept for the whole clip instead of the full-resolution masks."""
    h, w = masks.shape[1:]
    s = warp_scale((h, w))
    if s == 1.0:
        return masks.astype(np.float32)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.stack([cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_AREA) for m in masks])


def template_warps(small: np.ndarray, person: np.ndarray, source_body: np.ndarray, target_body: np.ndarray,
                   hw: tuple[int, int], templates: int = TEMPLATES) -> list[np.ndarray]:
    """Per target pose, the `templates` source frames with the nearest poses warped onto it, at the warp's
    size: shrunk source masks (S,h,w) (`shrink_masks`), person (S,) bool (M_r holds a person: source
    frames without one are never templates), bodies (S,18,3) and (T,18,3) in the full frame's (H,W)
    pixels → T binary uint8 arrays (k_t,h,w)."""
    s = warp_scale(hw)
    scale = np.array([s, s, 1.0], np.float32)
    d = pose_distance(source_body, target_body)
    d[~person] = np.inf
    order = np.argsort(d, axis=0, kind="stable")[:max(1, templates)]  # (k,T)
    out = []
    for t in range(len(target_body)):
        picks = [int(k) for k in order[:, t] if np.isfinite(d[k, t])] or [int(order[0, t])]
        dst = target_body[t] if s == 1.0 else target_body[t] * scale
        out.append(np.stack([warp_mask(small[k], source_body[k] if s == 1.0 else source_body[k] * scale, dst)
                             for k in picks]).astype(np.uint8))
    return out


def upsample_vote(warps: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """`template_warps` of T targets → their average at the full frame size (T,H,W) float32 in [0,1]."""
    h, w = hw
    out = np.zeros((len(warps), h, w), np.float32)
    for t, picks in enumerate(warps):
        full = [p.astype(np.float32) if p.shape == (h, w) else
                cv2.resize(p.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for p in picks]
        out[t] = np.mean(full, axis=0)
    return out


def vote_probability(source_masks: np.ndarray, source_body: np.ndarray, target_body: np.ndarray,
                     templates: int = TEMPLATES) -> np.ndarray:
    """Per target pose, the `templates` source frames with the nearest poses are warped onto it and
    averaged: source masks (S,H,W) + bodies (S,18,3), (T,18,3) in the masks' pixels → (T,H,W) in [0,1].
    Source frames without a person are never templates. (The edit streams the same steps a chunk of
    targets at a time: masks/predict.py.)"""
    hw = source_masks.shape[1:]
    person = source_masks.reshape(len(source_masks), -1).max(1) >= 0.5
    return upsample_vote(template_warps(shrink_masks(source_masks), person, source_body, target_body, hw, templates), hw)


def geometric_masks(source_masks: np.ndarray, source_poses: PoseSequence, target_poses: PoseSequence,
                    templates: int = 0) -> np.ndarray:
    """M_e by warping: source masks (S,H,W) + source/target keypoints (any pixel frame) → float32 (T,H,W) {0,1}.

    templates = 0: target f is warped from source frame f (S = T); templates = k > 0: from the k source
    frames of nearest pose, averaged (`vote_probability`), then thresholded at 0.5 and cleaned.
    """
    f, h, w = source_masks.shape
    if len(source_poses) != f or (templates <= 0 and len(target_poses) != f):
        raise ValueError(f"need one source pose per mask ({f}) and, without templates, one target pose per mask; "
                         f"got {len(source_poses)} and {len(target_poses)}")
    src = source_poses.scaled(w, h).body
    dst = target_poses.scaled(w, h).body
    if templates > 0:
        prob = vote_probability(source_masks, src, dst, templates)
        return np.stack([clean_mask(p >= 0.5) for p in prob]).astype(np.float32)
    return np.stack([warp_mask(source_masks[i], src[i], dst[i]) for i in range(f)])
