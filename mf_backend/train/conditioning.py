"""Model inputs from uint8 frames, batched over frames, with gradients (training).

The CLIP preprocessing is the reference's (`models.clip.clip_pixels`), the same as inference's
`MotionFollowerModels.clip_embed`; that one runs without gradients, this one lets stage 1 train the
small encoder (the gradient flows to the encoder's weights, not to the pixels).
"""

from __future__ import annotations

import numpy as np
import torch

from mf_backend.models.clip import clip_pixels


def to_unit(frames: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 (B,F,H,W,3) -> float (B,F,3,H,W) in [0,1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return x.permute(0, 1, 4, 2, 3).float() / 255.0


def clip_tokens(image_encoder, reference: np.ndarray) -> torch.Tensor:
    """One CLIP image token per frame: uint8 (B,F,H,W,3) -> (B,F,D)."""
    b, f = reference.shape[:2]
    param = next(image_encoder.parameters())
    pixels = clip_pixels(reference.reshape(b * f, *reference.shape[2:]), int(image_encoder.config.image_size))
    return image_encoder(pixel_values=pixels.to(param.device, param.dtype)).image_embeds.reshape(b, f, -1)
