"""Training-free M_e: warp the source mask part by part from the source skeleton to the target one.

Each person pixel of the source mask belongs to its nearest bone (one of the 17 drawn limbs). Each bone
carries its pixels with an affine map taking the source bone to the target bone: the bone's direction
and position follow the target, its length scales along the bone (foreshortening), its width stays the
source's. The union of the warped parts is closed (to heal the seams between parts) and cleaned.
"""

from __future__ import annotations

import cv2
import numpy as np

from mf_backend.masks.source import clean_mask
from mf_backend.pose.keypoints import LIMBS, PoseSequence

_LIMBS = np.array(LIMBS)  # (17,2)
_NECK = 1


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points px (N,2) to segments a→b (K,2) → (N,K)."""
    ab = b - a  # (K,2)
    t = ((px[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-6)[None]
    closest = a[None] + np.clip(t, 0, 1)[..., None] * ab[None]  # (N,K,2)
    return np.linalg.norm(px[:, None] - closest, axis=-1)


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


def geometric_masks(source_masks: np.ndarray, source_poses: PoseSequence, target_poses: PoseSequence) -> np.ndarray:
    """M_e for a clip: source masks (F,H,W) + source/target keypoints (any pixel frame) → float32 (F,H,W) {0,1}.

    Frame f's source mask is warped from source pose f to target pose f.
    """
    f, h, w = source_masks.shape
    if len(source_poses) != f or len(target_poses) != f:
        raise ValueError(f"need one source and one target pose per mask frame ({f}), got "
                         f"{len(source_poses)} and {len(target_poses)}")
    src = source_poses.scaled(w, h).body
    dst = target_poses.scaled(w, h).body
    return np.stack([warp_mask(source_masks[i], src[i], dst[i]) for i in range(f)])
