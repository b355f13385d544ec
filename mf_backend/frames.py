"""A clip's uint8 RGB frames, read a chunk at a time: what the pose and mask stages take.

The pose and mask models look at every frame of a clip in order (BlazePose tracks one person across
frames), but never need the whole clip at once: `Frames.chunks()` hands them CHUNK frames at a time,
read from the file by `streaming.Footage` or sliced from an array already in memory (`Frames.of`), so
a 600-frame 1080p shot costs the same host memory as a 24-frame one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import numpy as np

CHUNK = 16  # frames per full-resolution chunk: 16 1080p RGB frames are 100 MB as uint8


@dataclass
class Frames:
    """uint8 RGB frames (F,H,W,3) behind `read(a, b)` → frames a..b-1 (b-a,H,W,3)."""

    num_frames: int
    height: int
    width: int
    fps: Optional[float]
    read: Callable[[int, int], np.ndarray]

    def __len__(self) -> int:
        return self.num_frames

    @classmethod
    def of(cls, frames: Union["Frames", np.ndarray], fps: Optional[float] = None) -> "Frames":
        """`frames` as is, or an in-memory (F,H,W,3) uint8 array behind the same interface."""
        if isinstance(frames, Frames):
            return frames
        array = np.asarray(frames)
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"expected RGB frames (F,H,W,3), got shape {array.shape}")
        return cls(len(array), array.shape[1], array.shape[2], fps, lambda a, b: array[a:b])

    def chunks(self, start: int = 0, stop: Optional[int] = None,
               chunk: Optional[int] = None) -> Iterator[tuple[int, np.ndarray]]:
        """(a, frames a..a+k-1) for consecutive chunks of ≤ `chunk` (default CHUNK) frames covering start..stop-1."""
        stop = self.num_frames if stop is None else stop
        chunk = chunk or CHUNK
        for a in range(start, stop, chunk):
            yield a, self.read(a, min(a + chunk, stop))

    def take(self, indices: np.ndarray) -> np.ndarray:
        """A few frames by index (F',H,W,3): samples, not a whole clip."""
        return np.stack([self.read(int(i), int(i) + 1)[0] for i in indices]) if len(indices) else \
            np.zeros((0, self.height, self.width, 3), np.uint8)
