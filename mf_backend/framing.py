"""Person-centred working crop of full-resolution footage, and the composite back.

The model works on small square frames (`size`, 512 for the official weights). `plan_crop` chooses ONE
square per clip around everything the edit touches: the source person (keypoints, masks) united with
where the person will be (target aligned keypoints, predicted target masks), each frame's box
median-filtered over time (a glitching detector in a few frames does not blow the crop up), plus a
margin, clamped to the frame. One square for the whole clip keeps the background still in crop
coordinates, which the model and the camera mode rely on (a moving crop is a fake camera move).
Where the square cannot fit (the person spans more than the short side) it extends past the frame
on the short axis and that part is padded black; `mode="letterbox"` is the whole frame, padded square.

`CropPlan.apply` / `apply_masks` / `apply_keypoints` (and the `crop` / `uncrop` helpers) map frames,
masks and poses into crop space and back, all with the same transform x' = (x - x0) * size / side.

`composite` puts the edit back: the edited crop is resized to the crop's full-resolution size and
blended into the source frame only where the edit changes things, M_r ∪ M_e dilated by `dilate_px`
and feathered over `feather_px` (crop pixels). Every pixel outside that region is bit-exact from the
source. Before blending, the crop's low frequencies are matched to the source outside the person
(diffusion drifts in colour a little; without this the seam would show).

Benchmark: `python -m mf_backend.framing --bench` prints the time per 1080p frame.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from mf_backend.errors import InvalidParams

log = logging.getLogger(__name__)

_COLOUR_K = 8  # the colour correction field lives at 1/8 of the crop size (it is smooth anyway)
ArrayOrList = Union[np.ndarray, Sequence[np.ndarray], None]


@dataclass(frozen=True)
class CropPlan:
    """A square [x0, x0+side) x [y0, y0+side) of the full frame (may reach past it: padded), shown at size x size."""

    frame_h: int
    frame_w: int
    x0: int
    y0: int
    side: int
    size: int
    mode: str = "person"

    # --- geometry
    @property
    def scale(self) -> float:
        """Crop pixels per full-resolution pixel."""
        return self.size / self.side

    @property
    def inside(self) -> tuple[int, int, int, int]:
        """(fx0, fy0, fx1, fy1): the part of the square that lies inside the frame."""
        return max(self.x0, 0), max(self.y0, 0), min(self.x0 + self.side, self.frame_w), min(self.y0 + self.side, self.frame_h)

    def valid_mask(self) -> np.ndarray:
        """bool (size,size): crop pixels that show the frame (False on the black padding)."""
        fx0, fy0, fx1, fy1 = self.inside
        u = (np.arange(self.size) + 0.5) / self.scale  # crop pixel centres in full-res units from x0/y0
        cols = (u + self.x0 >= fx0) & (u + self.x0 < fx1)
        rows = (u + self.y0 >= fy0) & (u + self.y0 < fy1)
        return rows[:, None] & cols[None, :]

    def inside_in_crop(self) -> Optional[tuple[int, int, int, int]]:
        """(u0, v0, u1, v1): where `inside` lands in the crop, when that is on whole crop pixels (always
        for a square inside the frame, and for 16:9 / 9:16 letterboxes of 1080p and 4K at 512); else None."""
        fx0, fy0, fx1, fy1 = self.inside
        vals = [(fx0 - self.x0) * self.scale, (fy0 - self.y0) * self.scale,
                (fx1 - self.x0) * self.scale, (fy1 - self.y0) * self.scale]
        rounded = [int(round(v)) for v in vals]
        return tuple(rounded) if all(abs(v - r) < 1e-6 for v, r in zip(vals, rounded)) else None

    def to_inside(self, img: np.ndarray, interp: int) -> np.ndarray:
        """One crop-space image (size,size[,C]) → the full-resolution pixels of `inside` (fy1-fy0, fx1-fx0[,C]).

        Resizes only the part that lands in the frame when it sits on whole crop pixels (letterbox: the
        bars are never upscaled), else the whole square and slices it.
        """
        fx0, fy0, fx1, fy1 = self.inside
        rect = self.inside_in_crop()
        if rect is not None:
            u0, v0, u1, v1 = rect
            return cv2.resize(img[v0:v1, u0:u1], (fx1 - fx0, fy1 - fy0), interpolation=interp)
        big = cv2.resize(img, (self.side, self.side), interpolation=interp)
        return big[fy0 - self.y0 : fy1 - self.y0, fx0 - self.x0 : fx1 - self.x0]

    # --- full resolution -> crop
    def apply(self, frames: np.ndarray) -> np.ndarray:
        """Frames (F,H,W,C) uint8 or masks (F,H,W) float → (F,size,size[,C]), same dtype."""
        frames = np.asarray(frames)
        if frames.shape[1:3] != (self.frame_h, self.frame_w):
            raise ValueError(f"CropPlan is for {self.frame_w}x{self.frame_h} frames, got {frames.shape}")
        fx0, fy0, fx1, fy1 = self.inside
        pad = (fy0 - self.y0, self.y0 + self.side - fy1, fx0 - self.x0, self.x0 + self.side - fx1)  # t, b, l, r
        interp = cv2.INTER_AREA if self.side >= self.size else (cv2.INTER_CUBIC if frames.dtype == np.uint8 else cv2.INTER_LINEAR)
        rect = self.inside_in_crop()
        out = (np.zeros if rect is not None and any(pad) else np.empty)(
            (len(frames), self.size, self.size, *frames.shape[3:]), frames.dtype)
        # cv2 resizes one image per call (INTER_AREA has no batched form); the loop's overhead is
        # microseconds against milliseconds of pixel work per 1080p frame.
        if rect is not None:  # resize the picture straight into its place; the padding stays zero
            u0, v0, u1, v1 = rect
            for f in range(len(frames)):
                dst = out[f, v0:v1, u0:u1]
                dst[...] = cv2.resize(frames[f, fy0:fy1, fx0:fx1], (u1 - u0, v1 - v0), interpolation=interp).reshape(dst.shape)
            return out
        for f in range(len(frames)):
            region = frames[f, fy0:fy1, fx0:fx1]
            if any(pad):
                region = cv2.copyMakeBorder(region, *pad, cv2.BORDER_CONSTANT, value=0)
            out[f] = cv2.resize(region, (self.size, self.size), interpolation=interp).reshape(out.shape[1:])
        return out

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        """Masks (F,H,W) (bool or float) → float32 (F,size,size) in [0,1], soft at the edges."""
        return self.apply(np.asarray(masks, np.float32))

    def apply_keypoints(self, seq: Any) -> Any:
        """Keypoints (..., 3) in full-frame pixels, or a PoseSequence, → crop pixels (missing joints stay zero)."""
        return _map_keypoints(seq, self, inverse=False)

    # --- crop -> full resolution
    def uncrop_keypoints(self, seq: Any) -> Any:
        return _map_keypoints(seq, self, inverse=True)

    def uncrop(self, crops: np.ndarray, background: Optional[np.ndarray] = None) -> np.ndarray:
        """(F,size,size[,C]) → (F,H,W[,C]): the crop resized back onto `background` (zeros when None).

        For masks and previews; `composite` is the blend for edited frames.
        """
        crops = np.asarray(crops)
        out = np.zeros((len(crops), self.frame_h, self.frame_w, *crops.shape[3:]), crops.dtype) if background is None \
            else np.array(background, copy=True)
        fx0, fy0, fx1, fy1 = self.inside
        interp = cv2.INTER_CUBIC if crops.dtype == np.uint8 else cv2.INTER_LINEAR
        for f in range(len(crops)):  # one cv2 call per frame, as in apply()
            target = out[f, fy0:fy1, fx0:fx1]
            target[...] = self.to_inside(crops[f], interp).reshape(target.shape)
        return out

    def uncrop_masks(self, masks: np.ndarray) -> np.ndarray:
        """Crop masks (F,size,size) → float32 (F,H,W), zero outside the crop."""
        return self.uncrop(np.asarray(masks, np.float32))

    # --- persistence (prepare writes it, edit reads it)
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CropPlan":
        return cls(**{k: (v if k == "mode" else int(v)) for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "CropPlan":
        return cls.from_dict(json.loads(Path(path).read_text()))


# ------------------------------------------------------------------------------------------- planning


def plan_crop(
    keypoints: ArrayOrList,
    masks: ArrayOrList,
    frame_hw: tuple[int, int],
    size: int,
    margin: float = 0.15,
    mode: str = "person",
    conf_threshold: float = 0.3,
    smooth_frames: int = 5,
) -> CropPlan:
    """One square crop for the clip.

    keypoints: (F,K,3) (x, y, conf) in full-frame pixels, a PoseSequence, or a list of them (e.g. the
      source body and the target aligned body): every confident joint is inside the crop.
    masks: (F,h,w) in [0,1] (any resolution, e.g. M_r and the predicted target masks M_e), or a list.
    margin: added on each side, as a fraction of the person box's longer side.
    mode: "person" or "letterbox" (the whole frame, padded square; keypoints and masks are ignored).
    """
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if mode == "letterbox":
        return plan_letterbox((h, w), size)
    if mode != "person":
        raise InvalidParams(f"unknown crop mode {mode!r}", "use 'person' or 'letterbox'")
    boxes = [_keypoint_boxes(k, conf_threshold) for k in _as_list(keypoints)]
    boxes += [_mask_boxes(m, (h, w)) for m in _as_list(masks)]
    if not boxes:
        raise InvalidParams("plan_crop needs keypoints or masks", "pass the source poses or masks, or use crop='letterbox'")
    n = max(len(b) for b in boxes)
    per_frame = np.full((n, 4), np.nan)
    for b in boxes:  # union per frame over the sources (a handful of arrays, not frames)
        per_frame[: len(b), :2] = np.fmin(per_frame[: len(b), :2], b[:, :2])
        per_frame[: len(b), 2:] = np.fmax(per_frame[: len(b), 2:], b[:, 2:])
    per_frame = _median_over_time(per_frame, smooth_frames)
    if np.isnan(per_frame).all():
        log.warning("no person found in any frame (no confident keypoints, empty masks); using the letterboxed frame")
        return plan_letterbox((h, w), size)
    x0, y0 = np.nanmin(per_frame[:, 0]), np.nanmin(per_frame[:, 1])
    x1, y1 = np.nanmax(per_frame[:, 2]), np.nanmax(per_frame[:, 3])
    side = int(np.ceil(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)))
    side = int(np.clip(side, 16, max(h, w)))
    return CropPlan(h, w, _place(0.5 * (x0 + x1), side, w), _place(0.5 * (y0 + y1), side, h), side, int(size), "person")


def plan_letterbox(frame_hw: tuple[int, int], size: int) -> CropPlan:
    """The whole frame centred in a square of its longer side (black bars on the short axis)."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    side = max(h, w)
    return CropPlan(h, w, (w - side) // 2, (h - side) // 2, side, int(size), "letterbox")


def _place(centre: float, side: int, extent: int) -> int:
    """Start of a `side` interval centred at `centre`, kept inside [0, extent) when it fits, else centred on it."""
    if side >= extent:
        return (extent - side) // 2
    return int(np.clip(round(centre - side / 2), 0, extent - side))


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, np.ndarray) or hasattr(x, "body"):
        return [x]
    return [v for v in x if v is not None]


def _keypoint_boxes(kps: Any, conf_threshold: float) -> np.ndarray:
    """(F,4) float x0,y0,x1,y1 of the confident joints of each frame (NaN where none)."""
    if hasattr(kps, "body"):  # PoseSequence: body and hands
        kps = np.concatenate([kps.body, kps.hands.reshape(len(kps.body), -1, 3)], axis=1)
    kps = np.asarray(kps, np.float64).reshape(len(kps), -1, 3)
    ok = kps[..., 2] > conf_threshold
    x = np.where(ok, kps[..., 0], np.nan)
    y = np.where(ok, kps[..., 1], np.nan)
    with np.errstate(all="ignore"), _quiet_nan():
        return np.stack([np.nanmin(x, 1), np.nanmin(y, 1), np.nanmax(x, 1), np.nanmax(y, 1)], axis=1)


def _mask_boxes(masks: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """(F,4) float box of mask >= 0.5 per frame in full-frame pixels (masks of any resolution); NaN when empty."""
    m = np.asarray(masks) >= 0.5  # (F,h,w)
    f, mh, mw = m.shape
    rows, cols = m.any(axis=2), m.any(axis=1)  # (F,h), (F,w)
    sx, sy = frame_hw[1] / mw, frame_hw[0] / mh
    box = np.stack([cols.argmax(1) * sx, rows.argmax(1) * sy,
                    (mw - cols[:, ::-1].argmax(1)) * sx, (mh - rows[:, ::-1].argmax(1)) * sy], axis=1).astype(np.float64)
    box[~rows.any(axis=1)] = np.nan
    return box


def _median_over_time(boxes: np.ndarray, window: int) -> np.ndarray:
    """Median of each box coordinate over `window` frames (edge-padded), ignoring frames with no person."""
    if window <= 1 or len(boxes) < 3:
        return boxes
    r = window // 2
    padded = np.pad(boxes, ((r, r), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (F,4,window)
    with _quiet_nan():
        return np.nanmedian(windows, axis=2)


class _quiet_nan:
    """Silence numpy's all-NaN-slice warnings: empty frames are expected (person out of view)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _map_keypoints(seq: Any, plan: CropPlan, inverse: bool) -> Any:
    if hasattr(seq, "body"):  # PoseSequence
        size = (plan.size, plan.size) if not inverse else (plan.frame_w, plan.frame_h)
        return dataclasses.replace(seq, body=_map_keypoints(seq.body, plan, inverse),
                                   hands=_map_keypoints(seq.hands, plan, inverse), width=size[0], height=size[1])
    kps = np.array(seq, np.float32, copy=True)
    s = plan.scale
    if inverse:
        xy = kps[..., :2] / s + np.array([plan.x0, plan.y0], np.float32)
    else:
        xy = (kps[..., :2] - np.array([plan.x0, plan.y0], np.float32)) * s
    kps[..., :2] = np.where(kps[..., 2:3] > 0, xy, 0.0)
    return kps


def crop(x: Any, plan: CropPlan) -> Any:
    """Frames (F,H,W,3), masks (F,H,W) or a PoseSequence → crop space (keypoint arrays: plan.apply_keypoints)."""
    return plan.apply_keypoints(x) if hasattr(x, "body") else plan.apply(x)


def uncrop(x: Any, plan: CropPlan) -> Any:
    """Inverse of `crop` (frames are pasted on black; use `composite` for edited frames)."""
    return plan.uncrop_keypoints(x) if hasattr(x, "body") else plan.uncrop(x)


# ------------------------------------------------------------------------------------------- composite


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
) -> np.ndarray:
    """Blend edited crops (F,S,S,3) into the full-resolution source frames (F,H,W,3) → (F,H,W,3) uint8.

    Only pixels where `blend_alpha(M_r, M_e, dilate_px, feather_px)` > 0 (M_r, M_e: crop-space masks
    (F,S,S)) can change; all others are the source's bytes. dilate_px / feather_px are in crop pixels
    (defaults size/32 and size/64: 16 and 8 at 512). source_crops = plan.apply(source_frames) if the
    caller already has it.
    """
    src = np.asarray(source_frames)
    edited = np.asarray(edited_crops)
    S = plan.size
    if src.shape[1:3] != (plan.frame_h, plan.frame_w) or edited.shape[1:3] != (S, S) or len(src) != len(edited):
        raise ValueError(f"composite: source {src.shape} / edited {edited.shape} do not match the plan "
                         f"({plan.frame_w}x{plan.frame_h} → {S}x{S})")
    dilate_px = S / 32 if dilate_px is None else float(dilate_px)
    feather_px = S / 64 if feather_px is None else float(feather_px)
    alpha = blend_alpha(M_r, M_e, dilate_px, feather_px)  # (F,S,S)
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
        s_reg = src[f, ry0:ry1, rx0:rx1].astype(np.float32)
        # a == 0 gives s_reg exactly (integers are exact in float32), so the outside stays bit-exact
        out[f, ry0:ry1, rx0:rx1] = np.rint(s_reg + a * (e - s_reg)).astype(np.uint8)
    return out


def changed_region(plan: CropPlan, M_r: np.ndarray, M_e: Optional[np.ndarray] = None,
                   dilate_px: Optional[float] = None, feather_px: Optional[float] = None) -> np.ndarray:
    """bool (F,H,W): the full-resolution pixels `composite` may change with these masks and settings."""
    S = plan.size
    dilate_px = S / 32 if dilate_px is None else float(dilate_px)
    feather_px = S / 64 if feather_px is None else float(feather_px)
    alpha = blend_alpha(M_r, M_e, dilate_px, feather_px)
    return plan.uncrop(alpha) > 0


def _blur_frames(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (F,h,w,C) float32 frames, all frames in one call (frames stacked as channels)."""
    f, h, w, c = a.shape
    stacked = np.ascontiguousarray(a.transpose(1, 2, 0, 3).reshape(h, w, f * c))
    out = np.concatenate([_as_hwc(cv2.GaussianBlur(stacked[..., i : i + 500], (0, 0), sigma, borderType=cv2.BORDER_REFLECT))
                          for i in range(0, f * c, 500)], axis=2)  # cv2 takes at most 512 channels
    return out.reshape(h, w, f, c).transpose(2, 0, 1, 3)


def _as_hwc(x: np.ndarray) -> np.ndarray:
    return x[..., None] if x.ndim == 2 else x  # cv2 drops a single channel axis


# ------------------------------------------------------------------------------------------- benchmark


def _bench(h: int, w: int, frames: int, size: int, repeat: int) -> None:
    import time

    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8)
    # an off-centre "person": a box about 0.6 of the height, moving a little
    t = np.arange(frames)
    cx, cy, ph, pw = int(w * 0.7), int(h * 0.55), int(h * 0.6), int(h * 0.25)
    masks = np.zeros((frames, h, w), np.float32)
    for f in t:  # test data only
        x = cx + int(20 * np.sin(f / 4))
        masks[f, cy - ph // 2 : cy + ph // 2, x - pw // 2 : x + pw // 2] = 1.0
    kps = np.zeros((frames, 18, 3), np.float32)
    kps[:, :, 0] = cx + rng.uniform(-pw / 2, pw / 2, (frames, 18))
    kps[:, :, 1] = cy + rng.uniform(-ph / 2, ph / 2, (frames, 18))
    kps[:, :, 2] = 1.0

    def timed(fn):
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = fn()
            best = min(best, time.perf_counter() - t0)
        return r, best

    for mode in ("person", "letterbox"):
        plan, t_plan = timed(lambda: plan_crop(kps, masks, (h, w), size, mode=mode))
        crops, t_frames = timed(lambda: plan.apply(src))
        m_crop, t_masks = timed(lambda: plan.apply_masks(masks))
        _, t_kps = timed(lambda: plan.apply_keypoints(kps))
        edited = np.clip(crops.astype(np.int16) + 7, 0, 255).astype(np.uint8)
        m_e = np.roll(m_crop, size // 20, axis=2)
        _, t_comp = timed(lambda: composite(src, edited, plan, m_crop, m_e, source_crops=crops))
        _, t_comp_full = timed(lambda: composite(src, edited, plan, m_crop, m_e))
        per = lambda s: 1000.0 * s / frames  # noqa: E731
        print(f"{w}x{h}, {frames} frames, size {size}, mode {mode}: crop side {plan.side} px at ({plan.x0},{plan.y0})")
        print(f"  plan_crop {per(t_plan):.2f} ms/frame | crop frames {per(t_frames):.2f} | crop masks {per(t_masks):.2f} "
              f"| crop keypoints {per(t_kps):.3f}")
        print(f"  composite (colour match, source crops given) {per(t_comp):.2f} ms/frame | "
              f"composite incl. cropping the source {per(t_comp_full):.2f} ms/frame")
        total = t_plan + t_frames + t_masks + t_kps + t_comp
        print(f"  total crop + composite added per frame: {per(total):.2f} ms")


def main(argv: Optional[Sequence[str]] = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mf_backend.framing", description=__doc__.splitlines()[0])
    ap.add_argument("--bench", action="store_true", help="time crop + composite per frame on synthetic footage")
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.bench:
        ap.print_help()
        return
    _bench(args.height, args.width, args.frames, args.size, args.repeat)


if __name__ == "__main__":
    main()
