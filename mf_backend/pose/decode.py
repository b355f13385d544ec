"""Turn pose renders back into keypoints, by the fixed colours of `render.py`.

Lets a user drive an edit with a strip that is already a pose render, and lets us read the reference
cases' poses (including the anti-aliased aligned ones) as keypoints for evaluation.

Every non-black pixel is labelled with its nearest palette colour (joints, limbs, hand edges). A body
joint is the centroid of the best connected blob of its colour: large (a radius-4 disc) and touching
the limbs that meet at that joint (this separates the left knee from the red hand dots, which share a
colour, and the nose from the first hand edge). Hand keypoints come from the rainbow edges: each edge's
visible pixels give the two ends of a bone, averaged over the edges that share a keypoint.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from mf_backend.frames import Frames
from mf_backend.pose.keypoints import HAND_EDGES, LIMBS, NUM_BODY, NUM_HAND, PoseSequence
from mf_backend.pose.render import HAND_EDGE_RGB, JOINT_RADIUS, JOINT_RGB, LIMB_RGB

# Palette labels: 0..17 joints, 18..34 limbs, 35..54 hand edges. Ties (identical colours) go to the
# lower label, i.e. to the body joint; blob scoring sorts out which one is meant.
_PALETTE = np.concatenate([JOINT_RGB, LIMB_RGB, HAND_EDGE_RGB]).astype(np.float32)  # (55,3)
_LIMB0 = NUM_BODY
_HAND0 = NUM_BODY + len(LIMBS)
_BLACK_MAX = 40  # pixels darker than this (max channel) are background
_MAX_DIST = 60.0  # farther than this from every palette colour: unlabelled (anti-aliasing mix)
_INCIDENT = [[_LIMB0 + i for i, (a, b) in enumerate(LIMBS) if j in (a, b)] for j in range(NUM_BODY)]


def label_pixels(image: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 RGB → (H,W) int16 palette label, -1 for background/unknown."""
    img = np.asarray(image)
    labels = np.full(img.shape[:2], -1, np.int16)
    fg = img.max(axis=-1) > _BLACK_MAX
    px = img[fg].astype(np.float32)  # (N,3)
    d = np.linalg.norm(px[:, None, :] - _PALETTE[None], axis=-1)  # (N,55)
    best = d.argmin(axis=1)
    best[d[np.arange(len(px)), best] > _MAX_DIST] = -1
    labels[fg] = best
    return labels


def _disc_pixels(radius: int) -> int:
    canvas = np.zeros((4 * radius + 3, 4 * radius + 3), np.uint8)
    cv2.circle(canvas, (2 * radius + 1, 2 * radius + 1), radius, 1, thickness=-1)
    return int(canvas.sum())


_DISC_PX = _disc_pixels(JOINT_RADIUS)


def stroke_scale(blob_areas: list[int], image_shape: tuple[int, ...]) -> float:
    """How much thicker than `render.py`'s strokes this render's are, from its joint discs.

    DWPose (and render.py) draw fixed-size strokes whatever the frame size, so a 1080p render has
    512-size discs; a 512 render resized to 1080p has discs 2.1x wider. The largest blob of each joint
    colour is (most of) a disc; the upper quartile over joints ignores discs half hidden under limbs."""
    if not blob_areas:
        return max(image_shape[0], image_shape[1]) / 512.0
    return float(np.clip(np.sqrt(np.percentile(blob_areas, 75) / _DISC_PX), 0.25, 16.0))


def decode_pose(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pose render (H,W,3) uint8 RGB → body (18,3), hands (2,21,3) in pixels (confidence 1 or 0)."""
    ys, xs = np.nonzero(np.asarray(image).max(axis=-1) > _BLACK_MAX)
    if len(ys) and (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) < 0.5 * image.shape[0] * image.shape[1]:
        # decode the part with strokes only (a person is a small part of a 1080p/4K frame)
        y0, x0 = max(0, ys.min() - 8), max(0, xs.min() - 8)
        body, hands = decode_pose(image[y0:ys.max() + 9, x0:xs.max() + 9])
        for kp in (body, hands):
            kp[..., 0] += x0 * (kp[..., 2] > 0)
            kp[..., 1] += y0 * (kp[..., 2] > 0)
        return body, hands
    labels = label_pixels(image)
    comps = [cv2.connectedComponentsWithStats((labels == j).astype(np.uint8), connectivity=8)
             for j in range(NUM_BODY)]
    scale = stroke_scale([int(st[1:, cv2.CC_STAT_AREA].max()) for n, _, st, _ in comps if n > 1], image.shape)
    min_area = max(3, int(10 * scale * scale))
    disc_area = np.pi * (JOINT_RADIUS * scale) ** 2  # a blob bigger than one disc is not more likely
    ring = max(3, int(round(6 * scale)))
    body = np.zeros((NUM_BODY, 3), np.float32)
    used = np.zeros(labels.shape, bool)  # pixels claimed by a body joint (not hand dots)
    for j, (n, comp, stats, cents) in enumerate(comps):
        best, best_score = 0, 0.0
        for c in range(1, n):
            area = stats[c, cv2.CC_STAT_AREA]
            if area < min_area:
                continue
            x, y, w, h = stats[c, :4]
            y0, y1 = max(0, y - ring), min(labels.shape[0], y + h + ring)
            x0, x1 = max(0, x - ring), min(labels.shape[1], x + w + ring)
            touching = np.isin(labels[y0:y1, x0:x1], _INCIDENT[j]).sum()
            score = min(area, disc_area) + 3.0 * touching
            if score > best_score:
                best, best_score = c, score
        if best:
            # Pixel i covers [i, i+1): a disc drawn at floor(x) has its pixel centroid at floor(x).
            body[j] = (cents[best][0] + 0.5, cents[best][1] + 0.5, 1.0)
            used |= comp == best
    hands = _decode_hands(labels, used, body, scale)
    return body, hands


def _decode_hands(labels: np.ndarray, used: np.ndarray, body: np.ndarray, scale: float) -> np.ndarray:
    """Hand keypoints from the rainbow edge pixels, split between the two body wrists."""
    hands = np.zeros((2, NUM_HAND, 3), np.float32)
    edge_px = (labels >= _HAND0) & ~used
    if not edge_px.any():
        return hands
    # Split the hand pixels into the two hands: blobs of (edges + red dots) go to the nearer wrist.
    dots = (labels == 12) & ~used
    hand_mask = (edge_px | dots).astype(np.uint8)
    grow = max(1, int(round(3 * scale)))
    n, comp = cv2.connectedComponents(cv2.dilate(hand_mask, np.ones((2 * grow + 1,) * 2, np.uint8)))
    wrists = [(body[4], 0), (body[7], 1)]
    owner = np.full(n, -1)
    for c in range(1, n):
        ys, xs = np.nonzero((comp == c) & edge_px)
        if len(xs) == 0:
            continue
        centre = np.array([xs.mean(), ys.mean()])
        dists = [np.linalg.norm(w[:2] - centre) if w[2] > 0 else np.inf for w, _ in wrists]
        if np.isfinite(min(dists)):
            owner[c] = wrists[int(np.argmin(dists))][1]
        else:
            owner[c] = 0 if centre[0] < labels.shape[1] / 2 else 1  # no wrists: image left = right hand
    ext = JOINT_RADIUS * scale  # the dots hide this much of each bone end
    for h in (0, 1):
        region = np.isin(comp, np.nonzero(owner == h)[0]) & edge_px
        if not region.any():
            continue
        wrist = body[4 if h == 0 else 7]
        hands[h] = _hand_from_edges(labels, region, wrist, ext)
    return hands


def _hand_from_edges(labels: np.ndarray, region: np.ndarray, wrist: np.ndarray, ext: float) -> np.ndarray:
    sums = np.zeros((NUM_HAND, 2), np.float64)
    counts = np.zeros(NUM_HAND)
    ends = {}
    for i, (a, b) in enumerate(HAND_EDGES):
        ys, xs = np.nonzero(region & (labels == _HAND0 + i))
        if len(xs) < 2:
            continue
        pts = np.stack([xs, ys], 1).astype(np.float64) + 0.5  # pixel centres
        mean = pts.mean(0)
        u = np.linalg.svd(pts - mean, full_matrices=False)[2][0]
        t = (pts - mean) @ u
        p0, p1 = mean + u * (t.min() - ext), mean + u * (t.max() + ext)
        ends[i] = (p0, p1)
    if not ends:
        return np.zeros((NUM_HAND, 3), np.float32)
    # Orientation: the parent end of each bone is the one nearer the wrist (body wrist, else the hand
    # centre, which is nearer the palm than the finger tips).
    allp = np.concatenate([np.stack(e) for e in ends.values()])
    anchor = wrist[:2] if wrist[2] > 0 else allp.mean(0)
    for i, (p0, p1) in ends.items():
        a, b = HAND_EDGES[i]
        if np.linalg.norm(p1 - anchor) < np.linalg.norm(p0 - anchor):
            p0, p1 = p1, p0
        sums[a] += p0
        counts[a] += 1
        sums[b] += p1
        counts[b] += 1
    out = np.zeros((NUM_HAND, 3), np.float32)
    ok = counts > 0
    out[ok, :2] = sums[ok] / counts[ok, None]
    out[ok, 2] = 1.0
    return out


def decode_poses(frames: Frames | np.ndarray, fps: Optional[float] = None, ctx=None) -> PoseSequence:
    """Pose renders (F,H,W,3) uint8 RGB, read a chunk at a time → PoseSequence in the renders' pixel frame."""
    frames = Frames.of(frames)
    seq = PoseSequence.empty(frames.num_frames, frames.width, frames.height, fps)
    for a, rgb in frames.chunks():
        for i, img in enumerate(rgb):
            if ctx is not None:
                ctx.progress("poses", a + i, frames.num_frames, "decoding pose renders")
            seq.body[a + i], seq.hands[a + i] = decode_pose(img)
    return seq


def looks_like_pose_render(frames: Frames | np.ndarray) -> bool:
    """True when the frames are mostly black with palette-coloured strokes (i.e. already pose renders)."""
    frames = Frames.of(frames)
    sample = frames.take(np.arange(frames.num_frames)[:: max(1, frames.num_frames // 4)][:4])
    dark = (sample.max(axis=-1) <= _BLACK_MAX).mean()
    if dark < 0.85:
        return False
    labelled = [(label_pixels(img) >= 0).sum() / max(1, (img.max(-1) > _BLACK_MAX).sum()) for img in sample]
    return float(np.mean(labelled)) > 0.8
