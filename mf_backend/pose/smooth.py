"""Temporal smoothing of keypoints against extractor jitter.

1. Short gaps (≤ `max_gap` frames) of a joint are linearly interpolated, confidence = the lower
   neighbour's; longer gaps stay missing (the renderer drops them) rather than inventing motion.
2. A One-Euro filter (Casiry et al. 2012) runs forward over frames for every joint at once: strong
   smoothing when a joint is slow (jitter), little lag when it moves fast.
"""

from __future__ import annotations

import numpy as np

from mf_backend.pose.keypoints import PoseSequence


def fill_gaps(points: np.ndarray, max_gap: int = 3) -> np.ndarray:
    """points (F,J,3) → copy with missing runs of ≤ max_gap frames interpolated between visible frames."""
    out = points.copy()
    frames = np.arange(len(points))
    flat = out.reshape(len(points), -1, 3)
    for j in range(flat.shape[1]):
        vis = flat[:, j, 2] > 0
        if vis.all() or vis.sum() < 2:
            continue
        idx = np.nonzero(vis)[0]
        prev = np.maximum.accumulate(np.where(vis, frames, -1))  # last visible frame at or before t
        nxt = np.minimum.accumulate(np.where(vis, frames, len(frames))[::-1])[::-1]
        fill = ~vis & (prev >= 0) & (nxt < len(frames)) & (nxt - prev - 1 <= max_gap)
        if not fill.any():
            continue
        for c in (0, 1):
            flat[fill, j, c] = np.interp(frames[fill], idx, flat[idx, j, c])
        flat[fill, j, 2] = np.minimum(flat[prev[fill], j, 2], flat[nxt[fill], j, 2])
    return out


def one_euro(points: np.ndarray, fps: float = 30.0, min_cutoff: float = 1.0, beta: float = 0.05,
             d_cutoff: float = 1.0) -> np.ndarray:
    """One-Euro filter over frames of (F,J,3) points; missing joints restart the filter and stay missing."""
    out = points.copy()
    flat = out.reshape(len(points), -1, 3)
    src = points.reshape(len(points), -1, 3)
    dt = 1.0 / fps

    def alpha(cutoff: np.ndarray | float) -> np.ndarray | float:
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    prev = src[0, :, :2].astype(np.float64)
    dprev = np.zeros_like(prev)
    seen = src[0, :, 2] > 0
    for t in range(1, len(points)):  # a recursive filter: sequential in t, vectorised over joints
        x = src[t, :, :2].astype(np.float64)
        vis = src[t, :, 2] > 0
        dx = (x - prev) / dt
        dhat = dprev + alpha(d_cutoff) * (dx - dprev)
        cutoff = min_cutoff + beta * np.linalg.norm(dhat, axis=-1, keepdims=True)
        xhat = prev + alpha(cutoff) * (x - prev)
        live = vis & seen  # continue the filter only where the joint was visible just before
        new = np.where(live[:, None], xhat, x)
        flat[t, vis, :2] = new[vis]
        prev = np.where(vis[:, None], new, prev)
        dprev = np.where(live[:, None], dhat, 0.0)
        seen = vis
    return out


def smooth_poses(seq: PoseSequence, max_gap: int = 3, min_cutoff: float = 1.0, beta: float = 0.05) -> PoseSequence:
    """Fill short gaps and One-Euro-filter body and hands. Coordinates are normalised by the frame
    height first, so the parameters mean the same at any resolution."""
    fps = seq.fps or 30.0
    norm = np.array([seq.height, seq.height, 1.0], np.float32)
    body = one_euro(fill_gaps(seq.body, max_gap) / norm, fps, min_cutoff, beta) * norm
    hands = one_euro(fill_gaps(seq.hands, max_gap) / norm, fps, min_cutoff, beta) * norm
    return PoseSequence(body.astype(np.float32), hands.astype(np.float32), seq.width, seq.height, seq.fps)
