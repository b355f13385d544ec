"""Overlapping frame windows for clips longer than one forward pass (the motion modules see at most
32 frames, method.md §A.9).

Every window has `window` frames; the fewest windows whose neighbours share at least `overlap`
frames are spread evenly from the first frame to the last. Each sampling step runs every window and blends the results
with weights that ramp linearly across each overlap, so neighbouring windows agree at every step and
the GPU never holds more than one window: memory does not depend on the clip length.
"""

from __future__ import annotations

from typing import Optional

import torch


def plan_windows(num_frames: int, window: int, overlap: int) -> list[range]:
    """Frame ranges covering 0..num_frames-1; a single range when the clip fits in one window."""
    if num_frames < 1:
        raise ValueError("a clip needs at least one frame")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in 0..window-1, got overlap={overlap}, window={window}")
    if num_frames <= window:
        return [range(num_frames)]
    stride = window - overlap
    n = -(-(num_frames - window) // stride) + 1  # ceil division: fewest windows with >= overlap shared
    span = num_frames - window
    starts = [round(k * span / (n - 1)) for k in range(n)]
    return [range(s, s + window) for s in starts]


def window_weights(windows: list[range]) -> list[torch.Tensor]:
    """Per window, float32 (len,) blending weights: 1 inside, linear ramps over the frames shared with
    the previous / next window (so a frame's weights over all windows sum to a positive number)."""
    out = []
    for k, win in enumerate(windows):
        w = torch.ones(len(win))
        if k > 0:
            left = windows[k - 1].stop - win.start  # frames shared with the previous window
            if left > 0:
                w[:left] = torch.arange(1, left + 1) / (left + 1)
        if k + 1 < len(windows):
            right = win.stop - windows[k + 1].start
            if right > 0:
                w[len(win) - right:] = torch.minimum(w[len(win) - right:], torch.arange(right, 0, -1) / (right + 1))
        out.append(w)
    return out


class WindowBlender:
    """Accumulates per-window results (B,C,L,h,w) into a whole-clip tensor (B,C,F,h,w)."""

    def __init__(self, like: torch.Tensor, windows: list[range], weights: Optional[list[torch.Tensor]] = None):
        """`weights`: per window (default window_weights(windows)); a subset of a clip's windows passes
        the clip's weights for them."""
        self.windows = windows
        self.weights = [w.to(like.device) for w in (window_weights(windows) if weights is None else weights)]
        self.sum = torch.zeros_like(like, dtype=torch.float32)
        self.norm = torch.zeros(like.shape[2], device=like.device)

    def add(self, k: int, value: torch.Tensor) -> None:
        win, w = self.windows[k], self.weights[k]
        self.sum[:, :, win.start:win.stop] += value.float() * w[None, None, :, None, None]
        self.norm[win.start:win.stop] += w

    def result(self, frames: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The blend (B,C,F,h,w), or only at the frame indices `frames` (a Ray worker's own frames)."""
        total, norm = (self.sum, self.norm) if frames is None else (self.sum[:, :, frames], self.norm[frames])
        if norm.device.type != "meta" and bool((norm <= 0).any()):  # meta: FLOP counting
            raise RuntimeError("some frames were not covered by any window")
        return total / norm[None, None, :, None, None]
