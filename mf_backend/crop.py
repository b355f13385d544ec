"""Person-centred working crop of full-resolution footage (the square the model works on).

The model works on small square frames (`size`, 512 for the official weights). `plan_crop` chooses ONE
square per clip around everything the edit touches: the source person (keypoints, masks) united with
where the person will be (target aligned keypoints, predicted target masks), each frame's box
median-filtered over time (a glitching detector in a few frames does not blow the crop up), plus a
margin, clamped to the frame. One square for the whole clip keeps the background still in crop
coordinates, which the model and the camera mode rely on (a moving crop is a fake camera move).
Where the square cannot fit (the person spans more than the short side) it extends past the frame
on the short axis and that part is padded black; `mode="letterbox"` is the whole frame, padded square.

`CropPlan.apply` / `apply_masks` / `apply_keypoints` map frames, masks and poses into crop space (and
`uncrop` / `uncrop_keypoints` back), all with the same transform x' = (x - x0) * size / side.
`mf_backend.composite` puts the edited crops back into the full-resolution frames.

Benchmark: `python -m mf_backend bench crop` prints the time per 1080p frame (crop + composite).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from mf_backend.errors import InvalidParams

log = logging.getLogger(__name__)

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

    def to_dict(self) -> dict:
        """For edit.json (the crop the edit used)."""
        return dataclasses.asdict(self)


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
    boxes: Sequence[np.ndarray] = (),
) -> CropPlan:
    """One square crop for the clip.

    keypoints: (F,K,3) (x, y, conf) in full-frame pixels, a PoseSequence, or a list of them (e.g. the
      source body and the target aligned body): every confident joint is inside the crop.
    masks: (F,h,w) in [0,1] (any resolution, e.g. M_r and the predicted target masks M_e), or a list.
    margin: added on each side, as a fraction of the person box's longer side.
    mode: "person" or "letterbox" (the whole frame, padded square; keypoints and masks are ignored).
    boxes: per-frame boxes (F,4) of masks already measured with `mask_boxes` (masks read a chunk at a time).
    """
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if mode == "letterbox":
        return plan_letterbox((h, w), size)
    if mode != "person":
        raise InvalidParams(f"unknown crop mode {mode!r}", "use 'person' or 'letterbox'")
    boxes = [_keypoint_boxes(k, conf_threshold) for k in _as_list(keypoints)] + list(boxes)
    boxes += [mask_boxes(m, (h, w)) for m in _as_list(masks)]
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


def mask_boxes(masks: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
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
