"""CLIP image preprocessing, as the reference does it (method.md §A.2).

The reference resizes each source frame (a PIL image) to 224² with PIL's bicubic filter, then runs
transformers' CLIPImageProcessor: shortest edge 224 and centre crop 224 (no-ops on a 224² image),
x/255 (in float64, stored as float32), then (x - mean) / std in float32 with OpenAI's CLIP mean/std.
`clip_pixels` does the same steps at the encoder's input size, so the CLIP tokens match the
reference's to fp32 rounding (a float antialiased resize is off by up to 0.19 in normalised pixels).
Inference (`MotionFollowerModels.clip_embed`) and training (`train.conditioning`) both call it.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)


def clip_pixels(frames: Union[torch.Tensor, np.ndarray], size: int) -> torch.Tensor:
    """uint8 (N,H,W,3) RGB frames → float32 (N,3,size,size) CLIP encoder input (CPU)."""
    frames = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"clip_pixels takes uint8 (N,H,W,3) frames, got {frames.dtype} {frames.shape}")
    # PIL resizes one image per call (no batched form); a fraction of a millisecond per frame
    resized = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in frames])
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
