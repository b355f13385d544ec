"""Random edit inputs for the benchmarks (the compute does not depend on the content).

`random_inputs(frames, size)` is a random clip at the working size with person-like rectangular masks
M_r / M_e; `bench speed`, `bench graphs` and the speed tests run the whole edit on it.
"""

from __future__ import annotations

import torch


def random_inputs(frames: int, size: int, seed: int = 0):
    """A random clip at the working size: noise frames and pose images, M_r / M_e shifted boxes."""
    from mf_backend.editing.sampler import EditInputs

    g = torch.Generator().manual_seed(seed)

    def img() -> torch.Tensor:
        return torch.randint(0, 256, (frames, size, size, 3), generator=g, dtype=torch.uint8)
    M_r = torch.zeros(frames, size, size)
    M_e = torch.zeros(frames, size, size)
    M_r[:, size // 8: 7 * size // 8, size // 4: size // 2] = 1
    M_e[:, size // 8: 7 * size // 8, 3 * size // 8: 5 * size // 8] = 1
    return EditInputs(img(), img(), img(), M_r, M_e)
