"""Image and mask metrics over clips, vectorised over frames (numpy only).

Frames are uint8 RGB (F,H,W,3) or float in [0,1]; masks float (F,H,W) in [0,1] (thresholded at 0.5
where a region is needed). Regional PSNR/SSIM average only over the pixels of the region, so the
person and the background are judged separately (the paper's claim is about background fidelity).
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np


def _float(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames.astype(np.float64) / 255.0
    return frames.astype(np.float64)


def _region(mask: Optional[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """(F,H,W) boolean region; None = whole frame."""
    if mask is None:
        return np.ones(shape[:3], dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape[:3]):
        raise ValueError(f"mask shape {mask.shape} does not match frames {shape[:3]}")
    return mask > 0.5


def psnr(pred: np.ndarray, target: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """PSNR in dB over the pixels of `mask` (all frames pooled), images in [0,1]. inf when identical."""
    a, b = _float(pred), _float(target)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    region = _region(mask, a.shape)
    if not region.any():
        return float("nan")
    mse = float(((a - b) ** 2)[region].mean())
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def ssim_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (F,H,W) with the standard 11x11 Gaussian window (sigma 1.5), averaged over RGB."""
    a, b = _float(pred), _float(target)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    f, h, w = a.shape[:3]
    # fold frames and channels into cv2's channel axis is limited to 512; blur frame-by-channel planes instead
    a2 = a.reshape(f, h, w, -1).transpose(1, 2, 0, 3).reshape(h, w, -1)  # (H,W,F*C)
    b2 = b.reshape(f, h, w, -1).transpose(1, 2, 0, 3).reshape(h, w, -1)

    def blur(x: np.ndarray) -> np.ndarray:
        chunks = [cv2.GaussianBlur(x[..., i:i + 500], (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)
                  for i in range(0, x.shape[-1], 500)]
        return np.concatenate([c.reshape(h, w, -1) for c in chunks], axis=-1)

    mu_a, mu_b = blur(a2), blur(b2)
    var_a = blur(a2 * a2) - mu_a ** 2
    var_b = blur(b2 * b2) - mu_b ** 2
    cov = blur(a2 * b2) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.reshape(h, w, f, -1).mean(axis=-1).transpose(2, 0, 1)


def ssim(pred: np.ndarray, target: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean SSIM over the pixels of `mask` (whole frame when None)."""
    region = _region(mask, np.asarray(pred).shape)
    if not region.any():
        return float("nan")
    return float(ssim_map(pred, target)[region].mean())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (F,H,W) masks pooled over frames (1.0 when both are empty)."""
    x, y = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    union = np.logical_or(x, y).sum()
    return 1.0 if union == 0 else float(np.logical_and(x, y).sum() / union)


def person_silhouette(edited: np.ndarray, background: np.ndarray, threshold: float = 0.12) -> np.ndarray:
    """(F,H,W) float mask of where `edited` differs from a clean background plate (mean abs RGB diff).

    Used to read the person's silhouette off an edit when the scene's empty background is known
    (the synthetic world gives it), so silhouette IoU needs no segmentation model.
    """
    diff = np.abs(_float(edited) - _float(background)).mean(axis=-1)  # (F,H,W)
    return (diff > threshold).astype(np.float32)


def frame_metrics(pred: np.ndarray, target: np.ndarray, person_mask: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM over the whole frame, inside the ground-truth person mask and on the background."""
    bg = 1.0 - (np.asarray(person_mask) > 0.5)
    smap = ssim_map(pred, target)
    fg_r, bg_r = np.asarray(person_mask) > 0.5, bg > 0.5
    return {
        "psnr": psnr(pred, target), "psnr_person": psnr(pred, target, person_mask), "psnr_bg": psnr(pred, target, bg),
        "ssim": float(smap.mean()),
        "ssim_person": float(smap[fg_r].mean()) if fg_r.any() else float("nan"),
        "ssim_bg": float(smap[bg_r].mean()) if bg_r.any() else float("nan"),
    }
