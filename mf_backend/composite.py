"""The composite back: edited crops blended into the full-resolution source frames.

`composite` resizes the edited crop to the crop's full-resolution size and blends it into the source
frame only where the edit changes things, M_r ∪ M_e dilated by `dilate_px` and feathered over
`feather_px` (crop pixels). Every pixel outside that region is bit-exact from the source. Before
blending, the crop's low frequencies are matched to the source outside the person (diffusion drifts
in colour a little; without this the seam would show). The crop itself: `mf_backend.crop`.
"""

from __future__ import annotations

from typing import Callable, Optional

import cv2
import numpy as np

from mf_backend.crop import CropPlan

_COLOUR_K = 8  # the colour correction field lives at 1/8 of the crop size (it is smooth anyway)


def blend_alpha(M_r: np.ndarray, M_e: Optional[np.ndarray], dilate_px: float, feather_px: float) -> np.ndarray:
    """float32 (F,S,S) blend weight: 1 within `dilate_px - feather_px` of M_r ∪ M_e, smooth ramp to 0 at
    `dilate_px + feather_px` (crop pixels), exactly 0 beyond — so the changed region is known exactly."""
    m = np.asarray(M_r) >= 0.5
    if M_e is not None:
        m = m | (np.asarray(M_e) >= 0.5)
    f, h, w = m.shape
    reach = dilate_px + feather_px
    # All frames in one distance transform: frames stacked vertically, separated by background rows
    # wider than `reach`, so no frame's mask reaches into the next one's alpha.
    gap = int(np.ceil(reach)) + 2
    tall = np.pad(~m, ((0, 0), (0, gap), (0, 0)), constant_values=True).reshape(f * (h + gap), w)
    dist = cv2.distanceTransform(tall.astype(np.uint8), cv2.DIST_L2, 5)  # 5x5 mask: within ~2 % of Euclidean, 4x faster
    dist = dist.reshape(f, h + gap, w)[:, :h]
    if feather_px <= 0:
        return (dist <= dilate_px).astype(np.float32)
    t = np.subtract(reach, dist, dtype=np.float32)
    t *= 1.0 / (2.0 * feather_px)
    np.clip(t, 0.0, 1.0, out=t)
    alpha = t * t  # smoothstep t²(3 - 2t), in place: no visible edge at either end of the ramp
    t *= -2.0
    t += 3.0
    alpha *= t
    return alpha


def colour_correction(edited: np.ndarray, source: np.ndarray, weight: np.ndarray, sigma: float, k: int = 8) -> np.ndarray:
    """float32 (F,S/k,S/k,3): a smooth field that, added to the edited crops, matches their low
    frequencies to the source's where weight is True (the background outside the person).

    edited, source: uint8 (F,S,S,3); weight: bool (F,S,S). Measured on k x k blocks that are wholly
    background, then Gaussian-smoothed (sigma in crop pixels) by normalised convolution, so the field is
    defined inside the person too (extrapolated from the background around it). Kept at 1/k
    resolution: composite samples it only where it blends.
    """
    f, s = edited.shape[:2]
    if s % k:
        raise ValueError(f"crop size {s} is not a multiple of {k}")
    n = s // k
    # block means with cv2's INTER_AREA (exact k x k averages here), one call per frame and input
    down = lambda a: np.stack([cv2.resize(x, (n, n), interpolation=cv2.INTER_AREA) for x in a]).astype(np.float32)  # noqa: E731
    den = (down(np.asarray(weight, np.uint8) * 255) == 255).astype(np.float32)[..., None]  # (F,n,n,1) whole-background blocks
    num = (down(source) - down(edited)) * den  # (F,n,n,3)
    sig = max(sigma / k, 0.5)
    num, den = _blur_frames(num, sig), _blur_frames(den, sig)
    # Where the background is far away, fall back to the frame's mean difference rather than ~0/~0.
    total = den.sum(axis=(1, 2), keepdims=True)
    mean = num.sum(axis=(1, 2), keepdims=True) / np.maximum(total, 1e-6)
    eps = 1e-3
    corr = (num + eps * mean) / (den + eps)
    return np.where(total > 1e-6, corr, 0.0).astype(np.float32)


def composite(
    source_frames: np.ndarray,
    edited_crops: np.ndarray,
    plan: CropPlan,
    M_r: np.ndarray,
    M_e: Optional[np.ndarray] = None,
    dilate_px: Optional[float] = None,
    feather_px: Optional[float] = None,
    colour_match: bool = True,
    source_crops: Optional[np.ndarray] = None,
    encode: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> np.ndarray:
    """Blend edited crops (F,S,S,3) into the full-resolution source frames (F,H,W,3) → (F,H,W,3), the
    source's dtype.

    Only pixels where `blend_alpha(M_r, M_e, dilate_px, feather_px)` > 0 (M_r, M_e: crop-space masks
    (F,S,S)) can change; all others are the source's bytes. dilate_px / feather_px are in crop pixels
    (defaults size/32 and size/64: 16 and 8 at 512). source_crops = plan.apply(source_frames) if the
    caller already has it. Source frames stored otherwise than uint8 sRGB (16-bit, float, another colour
    space) are blended in their own encoding: give `source_crops` (the model's uint8 view of them) and
    `encode`, which maps edited pixels (float32 (h,w,3), sRGB 0..255) to the source's values.
    """
    src = np.asarray(source_frames)
    edited = np.asarray(edited_crops)
    S = plan.size
    if src.shape[1:3] != (plan.frame_h, plan.frame_w) or edited.shape[1:3] != (S, S) or len(src) != len(edited):
        raise ValueError(f"composite: source {src.shape} / edited {edited.shape} do not match the plan "
                         f"({plan.frame_w}x{plan.frame_h} → {S}x{S})")
    if src.dtype != np.uint8 and (source_crops is None or encode is None):
        raise ValueError(f"composite: {src.dtype} source frames need source_crops (uint8) and encode")
    alpha = blend_alpha(M_r, M_e, *_reach(S, dilate_px, feather_px))  # (F,S,S)
    if colour_match:
        if source_crops is None:
            source_crops = plan.apply(src)
        background = (alpha == 0) & plan.valid_mask()[None]
        corr = colour_correction(edited, source_crops, background, sigma=S / 16, k=_COLOUR_K)
    out = src.copy()
    fx0, fy0, fx1, fy1 = plan.inside
    live = alpha > 0
    rows, cols = live.any(axis=2), live.any(axis=1)  # (F,S) each
    inv = 1.0 / plan.scale
    for f in np.flatnonzero(rows.any(axis=1)):  # frames with an edit: a few cv2 calls each
        r0, r1 = rows[f].argmax(), S - rows[f, ::-1].argmax()
        c0, c1 = cols[f].argmax(), S - cols[f, ::-1].argmax()
        # full-res rectangle covering these crop pixels (+1 crop pixel: bilinear reach)
        rx0 = max(fx0, int(np.floor(plan.x0 + (c0 - 1) * inv)))
        ry0 = max(fy0, int(np.floor(plan.y0 + (r0 - 1) * inv)))
        rx1 = min(fx1, int(np.ceil(plan.x0 + (c1 + 1) * inv)))
        ry1 = min(fy1, int(np.ceil(plan.y0 + (r1 + 1) * inv)))
        if rx1 <= rx0 or ry1 <= ry0:
            continue
        e = edited[f]
        if colour_match:
            e = np.clip(e + cv2.resize(corr[f], (S, S), interpolation=cv2.INTER_LINEAR) + 0.5, 0, 255).astype(np.uint8)
        # resizing all of the picture and slicing is several times faster than warping just the rectangle
        sl = np.s_[ry0 - fy0 : ry1 - fy0, rx0 - fx0 : rx1 - fx0]
        a = plan.to_inside(alpha[f], cv2.INTER_LINEAR)[sl][..., None]  # (h,w,1)
        e = plan.to_inside(e, cv2.INTER_CUBIC)[sl].astype(np.float32)
        if encode is not None:
            e = encode(e)
        s_reg = src[f, ry0:ry1, rx0:rx1].astype(np.float32)
        # a == 0 gives s_reg exactly (integers and halves are exact in float32), so the outside stays bit-exact
        out[f, ry0:ry1, rx0:rx1] = _blend(s_reg, a, e, src.dtype)
    return out


def matte(plan: CropPlan, M_r: np.ndarray, M_e: Optional[np.ndarray] = None,
          dilate_px: Optional[float] = None, feather_px: Optional[float] = None) -> np.ndarray:
    """float32 (F,H,W) in [0,1]: `composite`'s blend weight at full resolution (the soft matte of the
    edited person: M_r ∪ M_e dilated and feathered), 0 outside the crop."""
    return plan.uncrop(blend_alpha(M_r, M_e, *_reach(plan.size, dilate_px, feather_px)))  # float: bilinear, as composite


def _reach(S: int, dilate_px: Optional[float], feather_px: Optional[float]) -> tuple[float, float]:
    """The defaults of dilate_px and feather_px: size/32 and size/64 crop pixels (16 and 8 at 512)."""
    return (S / 32 if dilate_px is None else float(dilate_px)), (S / 64 if feather_px is None else float(feather_px))


def _blend(s: np.ndarray, a: np.ndarray, e: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """s + a·(e − s) stored as `dtype` (integers rounded); where a == 0 exactly s, even for inf/NaN floats."""
    if dtype == np.uint8:
        return np.rint(s + a * (e - s)).astype(np.uint8)
    out = np.where(a > 0, s + a * (e - s), s)
    if np.dtype(dtype).kind in "ui":
        out = np.clip(np.rint(out), 0, np.iinfo(dtype).max)
    return out.astype(dtype)


def _blur_frames(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (F,h,w,C) float32 frames, all frames in one call (frames stacked as channels)."""
    f, h, w, c = a.shape
    stacked = np.ascontiguousarray(a.transpose(1, 2, 0, 3).reshape(h, w, f * c))
    out = np.concatenate([_as_hwc(cv2.GaussianBlur(stacked[..., i : i + 500], (0, 0), sigma, borderType=cv2.BORDER_REFLECT))
                          for i in range(0, f * c, 500)], axis=2)  # cv2 takes at most 512 channels
    return out.reshape(h, w, f, c).transpose(2, 0, 1, 3)


def _as_hwc(x: np.ndarray) -> np.ndarray:
    return x[..., None] if x.ndim == 2 else x  # cv2 drops a single channel axis
