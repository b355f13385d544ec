"""Temporal smoothing of keypoints against extractor jitter.

1. Short gaps (≤ `max_gap` frames) of a joint are linearly interpolated, confidence = the lower
   neighbour's; longer gaps stay missing (the renderer drops them) rather than inventing motion.
2. Extracted BlazePose landmarks: a centred (zero-phase) Gaussian over frames, `centred_gaussian`. The
   clip is whole before it is smoothed, so nothing needs a causal filter, and a causal one lags: a
   One-Euro filter (and mediapipe's own) put fast wrists 40–60 px behind (docs/masks.md).
3. DWPose keypoints: a One-Euro filter (Casiry et al. 2012) forward over frames for every joint at
   once: strong smoothing when a joint is slow (jitter), little lag when it moves fast.
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


POSE_SIGMA = 0.5  # frames; chosen leaving one real case out (docs/masks.md, "Pose jitter")


def centred_gaussian(points: np.ndarray, sigma: float = POSE_SIGMA) -> np.ndarray:
    """(F,J,3) points → copy smoothed over frames by a centred Gaussian (σ in frames), vectorised over
    joints. Frames t-k and t+k count only as a pair, both visible: a symmetric pair leaves linear motion
    exactly where it is (no lag at any speed, also next to gaps and at the clip's ends). Missing joints
    stay missing; confidences are unchanged. sigma 0: no smoothing."""
    if sigma <= 0:
        return points.copy()
    h = max(1, int(np.ceil(2.5 * sigma)))
    weight = np.exp(-0.5 * (np.arange(h + 1) / sigma) ** 2)  # weight[k] for the offset ±k
    f = len(points)
    vis = points[..., 2] > 0  # (F,J)
    xy = points[..., :2].astype(np.float64)
    xy_pad = np.pad(xy, [(h, h)] + [(0, 0)] * (xy.ndim - 1))
    vis_pad = np.pad(vis, [(h, h)] + [(0, 0)] * (vis.ndim - 1))
    num, den = weight[0] * xy, np.full(vis.shape, weight[0])
    for k in range(1, h + 1):  # a few offsets; frames and joints are vectorised
        pair = vis_pad[h - k:h - k + f] & vis_pad[h + k:h + k + f]
        num += weight[k] * pair[..., None] * (xy_pad[h - k:h - k + f] + xy_pad[h + k:h + k + f])
        den += 2 * weight[k] * pair
    out = points.copy()
    out[..., :2] = np.where(vis[..., None], num / den[..., None], xy)
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
