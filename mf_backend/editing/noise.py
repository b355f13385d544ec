"""Gaussian noise drawn per absolute source frame: frame k's draws depend only on (seed, k).

The reference draws z_T as one (1,4,F,h,w) tensor from a single CPU generator, so a frame's noise
depends on the clip's length and on where the clip starts. Chunks of one shot edited separately (a
render farm, docs/flamenco.md) must start from, and add, the same noise on the frames they share, or
their overlaps disagree. Each frame therefore has its own CPU generator (device-independent), seeded
from (seed, k) with NumPy's SeedSequence so that nearby seeds and frames give unrelated streams.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def frame_seed(seed: int, frame: int) -> int:
    """A 64-bit generator seed for absolute frame `frame` of a job seeded with `seed`."""
    entropy = [int(seed) & 0xFFFF_FFFF_FFFF_FFFF, int(frame)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


class FrameNoise:
    """One generator per frame; each draw() is the next (1,C,F,h,w) standard normal tensor (float32, CPU)."""

    def __init__(self, seed: int, frame_index: Sequence[int], shape_chw: tuple[int, int, int]):
        self.shape = tuple(shape_chw)  # (C,h,w) of one frame
        self.generators = [torch.Generator("cpu").manual_seed(frame_seed(seed, int(k))) for k in frame_index]

    def draw(self) -> torch.Tensor:
        # one small draw per frame: a frame's stream must not depend on which other frames are in the clip
        per_frame = [torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(per_frame, dim=1)[None]  # (1,C,F,h,w)
