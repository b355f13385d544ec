"""Model inputs from uint8 frames, batched over frames, with gradients (training).

The CLIP preprocessing is the one of `MotionFollowerModels.clip_embed` (method.md §A.2), which the
sampler uses; that one runs without gradients, this one lets stage 1 train the small encoder.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mf_backend.models.loading import CLIP_MEAN, CLIP_STD


def to_unit(frames: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 (B,F,H,W,3) -> float (B,F,3,H,W) in [0,1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return x.permute(0, 1, 4, 2, 3).float() / 255.0


def clip_pixels(frames01: torch.Tensor, image_size: int) -> torch.Tensor:
    """(N,3,H,W) in [0,1] -> CLIP input (N,3,S,S): bicubic resize to the encoder's size, CLIP mean/std."""
    x = F.interpolate(frames01, size=(image_size, image_size), mode="bicubic", align_corners=False,
                      antialias=True).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_tokens(image_encoder, reference01: torch.Tensor) -> torch.Tensor:
    """One CLIP image token per frame: (B,F,3,H,W) in [0,1] -> (B,F,D)."""
    b, f = reference01.shape[:2]
    size = int(image_encoder.config.image_size)
    pixels = clip_pixels(reference01.flatten(0, 1), size).to(next(image_encoder.parameters()).dtype)
    return image_encoder(pixel_values=pixels).image_embeds.reshape(b, f, -1)
