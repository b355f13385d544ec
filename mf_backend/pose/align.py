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
`keep_placement=True` keeps the driver's own root position (mapped into the source frame) while
still retargeting bone lengths and scale.
"""

from __future__ import annotations

import warnings

import numpy as np

from mf_backend.errors import InvalidParams
from mf_backend.pose.keypoints import BODY_TREE, HAND_TREE, PoseSequence, body_size

ALIGN_MODES = ("first-frame", "per-frame", "none")
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
                            "use 'first-frame' (default), 'per-frame' or 'none'")
    # Work in the source frame's pixels (the driver may come from a clip of another size).
    drv_seq = driving.scaled(source.width, source.height)
    if mode == "none":
        return PoseSequence(drv_seq.body.copy(), drv_seq.hands.copy(), source.width, source.height, driving.fps)
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
