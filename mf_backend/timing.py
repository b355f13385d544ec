"""Driving-clip time mapping: which driving frame drives each source frame.

Source frame i is shown at time t_i = (i - a) / source_fps, counted from the first edited frame a
(frame range a..b; the default is the whole clip). Frame rates are handled by TIME, not by frame index:
a 60 fps driving clip drives a 24 fps source at 2.5 driving frames per source frame. The driving frame
shown at time t is the one on screen at t (sample and hold, as an editor's timeline shows it):
j(t) = floor(t * driving_fps). Let n = number of driving frames.

| policy      | j for a source frame at time t                  | when the driving clip is shorter          | longer            |
|-------------|--------------------------------------------------|-------------------------------------------|-------------------|
| `trim`      | floor(t * driving_fps), or -1 when >= n          | source frames after its end are NOT edited | its tail is unused |
|             |                                                  | (-1: copied from the source unchanged)    |                   |
| `loop`      | floor(t * driving_fps) mod n                     | the driving motion repeats from frame 0    | tail unused       |
| `hold-last` | min(floor(t * driving_fps), n - 1)               | the last driving pose is held              | tail unused       |
| `stretch`   | (i - a) * (n - 1) / (b - a), fractional          | slowed down to span a..b exactly           | sped up to fit    |

`stretch` ignores both fps values (the whole driving motion is time-resampled onto the edited span:
first pose on frame a, last pose on frame b) and gives fractional positions; `resample_keypoints`
interpolates the driving poses there, and `map_driving_frames` rounds them to the nearest frame.
Source frames outside a..b get -1 (not edited) under every policy. When an fps is unknown (frame
folders) it is taken equal to the other one, i.e. frame-for-frame.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import numpy as np

from mf_backend.errors import InvalidParams

log = logging.getLogger(__name__)

POLICIES = ("trim", "loop", "hold-last", "stretch")
_EPS = 1e-6  # so that 0.1 * 30 = 2.9999999 still lands on frame 3


def driving_positions(
    n_source: int,
    source_fps: Optional[float],
    n_driving: int,
    driving_fps: Optional[float],
    policy: str = "trim",
    frame_range: Optional[tuple[Optional[int], Optional[int]]] = None,
) -> np.ndarray:
    """float64 (n_source,): the driving-clip position (in driving frames) for each source frame; NaN = not edited.

    Integer-valued except for `stretch`. See the module docstring for the table of policies.
    """
    if policy not in POLICIES:
        raise InvalidParams(f"unknown timing policy {policy!r}", f"use one of {', '.join(POLICIES)}")
    if n_source < 1 or n_driving < 1:
        raise InvalidParams(f"both clips need frames (source {n_source}, driving {n_driving})",
                            "check the source and driving clips")
    a, b = _edit_span(n_source, frame_range)
    pos = np.full(n_source, np.nan)
    i = np.arange(a, b + 1)
    if policy == "stretch":
        pos[a : b + 1] = (i - a) * ((n_driving - 1) / (b - a)) if b > a else 0.0
        return pos
    fs, fd = _resolve_fps(source_fps, driving_fps)
    j = np.floor((i - a) * (fd / fs) + _EPS)
    if policy == "trim":
        j[j >= n_driving] = np.nan
    elif policy == "loop":
        j = np.mod(j, n_driving)
    else:  # hold-last
        j = np.minimum(j, n_driving - 1)
    pos[a : b + 1] = j
    return pos


def map_driving_frames(
    n_source: int,
    source_fps: Optional[float],
    n_driving: int,
    driving_fps: Optional[float],
    policy: str = "trim",
    frame_range: Optional[tuple[Optional[int], Optional[int]]] = None,
) -> np.ndarray:
    """int64 (n_source,): the driving frame index for each source frame, -1 where the frame is not edited.

    `stretch` positions are rounded to the nearest driving frame (use `driving_positions` +
    `resample_keypoints` to interpolate the poses instead).
    """
    return frames_from_positions(driving_positions(n_source, source_fps, n_driving, driving_fps, policy, frame_range))


def frames_from_positions(positions: np.ndarray) -> np.ndarray:
    """Driving positions (NaN = not edited) → int64 nearest driving frame, -1 where not edited."""
    pos = np.asarray(positions, np.float64)
    out = np.full(len(pos), -1, np.int64)
    ok = ~np.isnan(pos)
    out[ok] = np.floor(pos[ok] + 0.5).astype(np.int64)
    return out


def resample_keypoints(kps: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of keypoints (F, ..., 3) = (x, y, confidence) at fractional frame positions (N,).

    Where one of the two neighbouring frames misses a keypoint (confidence 0) the nearer frame's value
    is used as is, so a missing joint is never dragged towards (0, 0). Positions must not be NaN.
    """
    kps = np.asarray(kps, np.float32)
    positions = np.clip(np.asarray(positions, np.float64), 0, len(kps) - 1)
    lo = np.floor(positions).astype(np.int64)
    hi = np.minimum(lo + 1, len(kps) - 1)
    w = (positions - lo).astype(np.float32).reshape(-1, *([1] * (kps.ndim - 1)))  # (N,1,..,1)
    k_lo, k_hi = kps[lo], kps[hi]
    both = (k_lo[..., 2:3] > 0) & (k_hi[..., 2:3] > 0)
    nearest = np.where(w < 0.5, k_lo, k_hi)
    return np.where(both, k_lo + w * (k_hi - k_lo), nearest).astype(np.float32)


def resample_pose_sequence(seq: Any, positions: np.ndarray, fps: Optional[float] = None) -> Any:
    """A PoseSequence (body (F,18,3), hands (F,2,21,3)) resampled at positions (N,) → a new one with N frames."""
    positions = np.asarray(positions, np.float64)
    if np.isnan(positions).any():
        raise ValueError("resample_pose_sequence: drop the NaN (not edited) positions first")
    changes = {"body": resample_keypoints(seq.body, positions)}
    if getattr(seq, "hands", None) is not None:
        changes["hands"] = resample_keypoints(seq.hands, positions)
    if fps is not None:
        changes["fps"] = fps
    return dataclasses.replace(seq, **changes)


def _edit_span(n_source: int, frame_range) -> tuple[int, int]:
    a, b = (None, None) if frame_range is None else frame_range
    a = 0 if a is None else int(a)
    b = n_source - 1 if b is None else min(int(b), n_source - 1)
    if not 0 <= a <= b:
        raise InvalidParams(f"frame range {a}..{b} is outside the source clip (0..{n_source - 1})",
                            "give frame_start <= frame_end within the clip")
    return a, b


def _resolve_fps(source_fps: Optional[float], driving_fps: Optional[float]) -> tuple[float, float]:
    for name, v in (("source_fps", source_fps), ("driving_fps", driving_fps)):
        if v is not None and not (np.isfinite(v) and v > 0):
            raise InvalidParams(f"{name} must be a positive number, got {v}", "e.g. 24, 25, 29.97, 30, 60")
    if source_fps is None and driving_fps is None:
        return 1.0, 1.0
    if source_fps is None or driving_fps is None:
        log.info("one clip has no frame rate (frame folder); mapping frame for frame (pass source_fps/driving_fps)")
        return 1.0, 1.0
    return float(source_fps), float(driving_fps)
