"""Temporal smoothing of keypoints against extractor jitter.

1. Short gaps (≤ `max_gap` frames) of a joint are linearly interpolated, confidence = the lower
   neighbour's; longer gaps stay missing (the renderer drops them) rather than inventing motion.
2. A centred (zero-phase) Gaussian over frames, `centred_gaussian`, against the detector's jitter. The
   clip is whole before it is smoothed, so nothing needs a causal filter, and a causal one lags: a
   One-Euro filter (and mediapipe's own) put fast wrists 40–60 px behind BlazePose's detections, and
   16–81 px behind the example cases' DWPose keypoints (docs/masks.md, "Pose jitter").
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


def smooth_poses(seq: PoseSequence, sigma: float = POSE_SIGMA, max_gap: int = 3) -> PoseSequence:
    """Extracted keypoints (BlazePose, DWPose) → short gaps filled, body and hands smoothed over frames."""
    body = centred_gaussian(fill_gaps(seq.body, max_gap), sigma)
    hands = centred_gaussian(fill_gaps(seq.hands, max_gap), sigma)
    return PoseSequence(body, hands, seq.width, seq.height, seq.fps)
