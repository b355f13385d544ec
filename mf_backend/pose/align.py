"""Retarget the driving skeleton onto the source body (the edit's target pose, "aligned" poses).

Every bone gets the driver's direction and the source's length (median over the source clip); the
root (neck) sits at the source's position, moved by the driver's relative motion scaled to the
source body size. The synthetic world draws its ground-truth edit at exactly `align_poses(...)` of
its own keypoints, so keep this function deterministic and free of smoothing.

Modes:
  "first-frame"  root = source neck in its first visible frame + s·(driver neck(t) − driver neck(t0))
  "per-frame"    root = source neck at frame t (clamped to the source length): the source's own
                 placement per frame, e.g. under camera motion; the driver only gives the body pose
  "none"         the driver unchanged, only mapped into the source frame's pixel size
  "reference"    what the reference example cases' `target_aligned_poses` show (fitted on real cases 1,
                 2, 3, 6): no retargeting; each driver frame is scaled uniformly about its own ground
                 point (bottom-centre of its body box) so that its height matches the source's height at
                 the same frame (`keep_placement` does not apply). See `reference_align`.
`keep_placement=True` keeps the driver's own root position (mapped into the source frame) while
still retargeting bone lengths and scale.
"""

from __future__ import annotations

import warnings

import numpy as np

from mf_backend.errors import InvalidParams
from mf_backend.pose.keypoints import BODY_TREE, HAND_TREE, PoseSequence, body_size

ALIGN_MODES = ("first-frame", "per-frame", "none", "reference")
ROOT = 1  # neck


def _visible(p: np.ndarray) -> np.ndarray:
    return p[..., 2] > 0


def _median_lengths(points: np.ndarray, tree: tuple[tuple[int, int], ...]) -> np.ndarray:
    """points (F,J,3) → (len(tree),) median bone length over frames where both ends are visible (NaN if never)."""
    out = np.full(len(tree), np.nan, np.float64)
    for i, (a, b) in enumerate(tree):
        ok = _visible(points[:, a]) & _visible(points[:, b])
        if ok.any():
            out[i] = np.median(np.linalg.norm(points[ok, a, :2] - points[ok, b, :2], axis=-1))
    return out


def _nanmedian(x: np.ndarray, default: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        v = float(np.nanmedian(x)) if len(x) else float("nan")
    return default if not np.isfinite(v) else v


def _first_visible(points: np.ndarray, j: int) -> int | None:
    idx = np.nonzero(_visible(points[:, j]))[0]
    return int(idx[0]) if len(idx) else None


def _retarget_chain(drv: np.ndarray, out: np.ndarray, tree, src_len: np.ndarray, drv_len: np.ndarray,
                    scale: float, fallback) -> None:
    """Place children along the driver's bone directions with the source's bone lengths.

    drv, out: (F,J,3); out must already hold the root(s). Children whose parent is missing in a frame
    are placed by `fallback(points (F,2)) -> (F,2)` (the global similarity map) instead.
    """
    for i, (a, b) in enumerate(tree):
        length = src_len[i] if np.isfinite(src_len[i]) else drv_len[i] * scale
        vec = drv[:, b, :2] - drv[:, a, :2]  # (F,2)
        norm = np.linalg.norm(vec, axis=-1, keepdims=True)
        direction = vec / np.maximum(norm, 1e-6)
        chain = _visible(drv[:, b]) & _visible(drv[:, a]) & _visible(out[:, a])
        alone = _visible(drv[:, b]) & ~chain
        if np.isfinite(length):
            out[chain, b, :2] = out[chain, a, :2] + direction[chain] * length
        else:
            alone |= chain
        out[alone, b, :2] = fallback(drv[:, b, :2])[alone]
        vis = chain | alone
        out[vis, b, 2] = drv[vis, b, 2]


def align_poses(source: PoseSequence, driving: PoseSequence, mode: str = "first-frame",
                keep_placement: bool = False) -> PoseSequence:
    """Driver's motion on the source's body → PoseSequence with the driver's length in the source's frame."""
    if mode not in ALIGN_MODES:
        raise InvalidParams(f"align mode must be one of {ALIGN_MODES}, got {mode!r}",
                            "use 'first-frame' (default), 'per-frame', 'none' or 'reference'")
    # Work in the source frame's pixels (the driver may come from a clip of another size).
    drv_seq = driving.scaled(source.width, source.height)
    if mode == "none":
        return PoseSequence(drv_seq.body.copy(), drv_seq.hands.copy(), source.width, source.height, driving.fps)
    if mode == "reference":
        return reference_align(source, drv_seq)
    drv, src = drv_seq.body.astype(np.float64), source.body.astype(np.float64)  # (F_d,18,3), (F_s,18,3)
    frames = len(drv)

    src_size = _nanmedian(body_size(source.body), np.nan)
    drv_size = _nanmedian(body_size(drv_seq.body), np.nan)
    scale = src_size / drv_size if np.isfinite(src_size) and np.isfinite(drv_size) and drv_size > 0 else 1.0

    # Root trajectory.
    t0_d = _first_visible(drv, ROOT)
    t0_s = _first_visible(src, ROOT)
    if t0_d is None or t0_s is None:
        # No neck anywhere: a plain similarity map of the whole skeleton about the image centres.
        centre = np.array([source.width / 2, source.height / 2])
        return _similarity(drv_seq, centre, centre, scale, driving.fps)
    drv_root0 = drv[t0_d, ROOT, :2]
    if keep_placement:
        root = drv[:, ROOT, :2].copy()
        anchor_src, anchor_drv = np.repeat(drv_root0[None], frames, 0), np.repeat(drv_root0[None], frames, 0)
    elif mode == "first-frame":
        src_root0 = src[t0_s, ROOT, :2]
        root = src_root0 + scale * (drv[:, ROOT, :2] - drv_root0)
        anchor_src, anchor_drv = np.repeat(src_root0[None], frames, 0), np.repeat(drv_root0[None], frames, 0)
    else:  # per-frame: the source's own neck at each frame (held where the source lacks it)
        src_root = _hold_missing(src[:, ROOT])  # (F_s,2)
        ts = np.minimum(np.arange(frames), len(src_root) - 1)
        root = src_root[ts]
        drv_root = _hold_missing(drv[:, ROOT])
        anchor_src, anchor_drv = root, drv_root

    def fallback(p: np.ndarray) -> np.ndarray:  # (F,2): the similarity map used where a chain breaks
        return anchor_src + scale * (p - anchor_drv)

    out = np.zeros_like(drv)
    has_root = _visible(drv[:, ROOT])
    out[has_root, ROOT, :2] = root[has_root]
    out[has_root, ROOT, 2] = drv[has_root, ROOT, 2]
    _retarget_chain(drv, out, BODY_TREE, _median_lengths(src, BODY_TREE), _median_lengths(drv, BODY_TREE),
                    scale, fallback)

    hands = np.zeros_like(drv_seq.hands, dtype=np.float64)  # (F,2,21,3)
    for h, wrist in ((0, 4), (1, 7)):
        dh = drv_seq.hands[:, h].astype(np.float64)
        sh = source.hands[:, h].astype(np.float64)
        # Hand root: the driver's wrist→hand offset, scaled, from the retargeted body wrist.
        ok_w = _visible(dh[:, 0]) & _visible(drv[:, wrist]) & _visible(out[:, wrist])
        only = _visible(dh[:, 0]) & ~ok_w
        hands[ok_w, h, 0, :2] = out[ok_w, wrist, :2] + scale * (dh[ok_w, 0, :2] - drv[ok_w, wrist, :2])
        hands[only, h, 0, :2] = fallback(dh[:, 0, :2])[only]
        vis = ok_w | only
        hands[vis, h, 0, 2] = dh[vis, 0, 2]
        hand_out = hands[:, h]
        _retarget_chain(dh, hand_out, HAND_TREE, _median_lengths(sh, HAND_TREE), _median_lengths(dh, HAND_TREE),
                        scale, fallback)
        hands[:, h] = hand_out
    return PoseSequence(out.astype(np.float32), hands.astype(np.float32), source.width, source.height, driving.fps)


# Head top ≈ highest face keypoint − HEAD_TOP·torso. Fitted end-to-end on the real cases against the
# reference aligned poses (the reference measured mask boxes; we only have keypoints).
HEAD_TOP = 0.33
FOOT = 0.15  # sole below the lowest ankle, in torso lengths (the real cases never show feet: not fitted)
FACE = [0, 14, 15, 16, 17]
ANKLES = [10, 13]


def body_box(seq: PoseSequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame person box estimated from keypoints → (top (F,), bottom (F,), centre_x (F,)), NaN where empty.

    top: head top (above the face keypoints) or the highest joint (e.g. raised hands); bottom: the soles when
    an ankle is the lowest joint, else the frame's bottom edge; both clipped to the frame.
    centre_x: middle of the body+hand keypoints' x extent.
    """
    body, hands = seq.body.astype(np.float64), seq.hands.astype(np.float64)  # (F,18,3), (F,2,21,3)
    frames = len(body)
    size = body_size(seq.body).astype(np.float64)  # (F,) torso length
    size = np.where(np.isfinite(size), size, _nanmedian(size, 0.0))
    y = np.where(_visible(body), body[..., 1], np.nan)  # (F,18)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        face_top = np.nanmin(y[:, FACE], axis=1) - HEAD_TOP * size
        top = np.fmin(face_top, np.nanmin(y, axis=1))
        ankle = np.nanmax(y[:, ANKLES], axis=1)
        # Feet only count when an ankle is the lowest joint (else legs leave the frame or are occluded).
        sole = np.where(ankle >= np.nanmax(y, axis=1), ankle + FOOT * size, np.nan)
        xs = np.concatenate([np.where(_visible(body), body[..., 0], np.nan),
                             np.where(_visible(hands), hands[..., 0], np.nan).reshape(frames, -1)], axis=1)
        centre_x = (np.nanmin(xs, axis=1) + np.nanmax(xs, axis=1)) / 2
    bottom = np.where(np.isnan(sole), float(seq.height), np.minimum(sole, seq.height))
    bottom = np.where(np.isnan(top), np.nan, bottom)
    return np.clip(top, 0, seq.height), bottom, centre_x


def reference_align(source: PoseSequence, driving: PoseSequence) -> PoseSequence:
    """The reference aligner: each driver frame t scaled uniformly by s(t) = height_src(t) / height_drv(t)
    about the driver's ground point (box bottom, box centre x); no bone retargeting, driver placement kept.

    `driving` must already be in the source frame's pixels. Source frames are matched by index (the last
    one held when the source is shorter); frames without a usable box in either clip keep the driver as is.
    """
    top_s, bottom_s, _ = body_box(source)
    top_d, bottom_d, cx_d = body_box(driving)
    ts = np.minimum(np.arange(len(driving)), len(source) - 1)
    height_s, height_d = (bottom_s - top_s)[ts], bottom_d - top_d  # (F,)
    ok = np.isfinite(height_s) & np.isfinite(height_d) & (height_s > 0) & (height_d > 0)
    scale = np.where(ok, height_s / np.where(ok, height_d, 1.0), 1.0)  # (F,)
    anchor = np.stack([np.where(ok, cx_d, 0.0), np.where(ok, bottom_d, 0.0)], axis=-1)  # (F,2)

    def move(pts: np.ndarray) -> np.ndarray:  # (F,...,3): scale every visible point about the frame's anchor
        extra = (1,) * (pts.ndim - 2)
        a, s = anchor.reshape(len(pts), *extra, 2), scale.reshape(len(pts), *extra, 1)
        out = pts.astype(np.float64).copy()
        out[..., :2] = np.where(_visible(pts)[..., None], a + s * (pts[..., :2] - a), 0.0)
        return out.astype(np.float32)

    return PoseSequence(move(driving.body), move(driving.hands), source.width, source.height, driving.fps)


def _hold_missing(joint: np.ndarray) -> np.ndarray:
    """(F,3) → (F,2) positions with missing frames filled from the nearest visible frame."""
    ok = _visible(joint)
    if not ok.any():
        return np.zeros((len(joint), 2))
    idx = np.nonzero(ok)[0]
    nearest = idx[np.abs(np.arange(len(joint))[:, None] - idx[None]).argmin(axis=1)]
    return joint[nearest, :2]


def _similarity(seq: PoseSequence, src_anchor: np.ndarray, drv_anchor: np.ndarray, scale: float,
                fps) -> PoseSequence:
    body, hands = seq.body.copy(), seq.hands.copy()
    for pts in (body, hands):
        vis = pts[..., 2] > 0
        pts[..., :2] = np.where(vis[..., None], src_anchor + scale * (pts[..., :2] - drv_anchor), 0)
    return PoseSequence(body, hands, seq.width, seq.height, fps)
