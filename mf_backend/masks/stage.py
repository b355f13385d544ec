"""The masks stage of `prepare`/`edit`: M_r and M_e for every source frame, and writing them.

    out/source_masks/frame_{k}.png     M_r, 8-bit L {0,255}
    out/predicted_masks/frame_{k}.png  M_e (the source protagonist in the aligned target pose)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def compute_masks(source_frames: np.ndarray, prep, params, ctx) -> tuple[np.ndarray, np.ndarray]:
    """uint8 source frames (F,H,W,3) + `prepare.PosePrep` → (M_r, M_e) float32 (F,H,W) in {0,1}.

    The user's `source_masks` / `predicted_masks` folders are used when given. Frames the driving clip
    does not drive keep the source pose, so their M_e is M_r.
    """
    from mf_backend.masks.predict import predict_masks
    from mf_backend.masks.source import source_masks
    n, h, w = source_frames.shape[:3]
    if params.source_masks:
        M_r = read_mask_range(params.source_masks, n, h, w)
    else:
        with ctx.part(0.0, 0.4):  # measured: M_r ≈ 40% of the stage, M_e 60% (docs/masks.md)
            M_r = source_masks(source_frames, "auto", params.models_dir, poses=prep.source, ctx=ctx)
    if params.predicted_masks:
        return M_r, read_mask_range(params.predicted_masks, n, h, w)
    M_e = M_r.copy()
    edited = np.nonzero(~np.isnan(prep.driving_index))[0]
    if len(edited):
        with ctx.part(0.4, 1.0):
            M_e[edited], _ = predict_masks(source_frames[edited], M_r[edited], prep.source.frames(edited),
                                           prep.aligned.frames(edited), params.advanced.mask_predictor,
                                           tta_steps=params.advanced.tta_steps, ctx=ctx)
    return M_r, M_e


def write_mask_folders(M_r: np.ndarray, M_e: np.ndarray, folder: Path, ctx=None) -> dict[str, Any]:
    """Write source_masks/ and predicted_masks/ into `folder` → {kind: relative folder name}."""
    from mf_backend.media import write_masks

    if ctx is not None:
        ctx.progress("write", 0, 1, "writing masks")
    from mf_backend.files import frame_pattern

    write_masks(M_r, Path(folder) / "source_masks", frame_pattern(len(M_r)))
    write_masks(M_e, Path(folder) / "predicted_masks", frame_pattern(len(M_e)))
    return {"source_masks": "source_masks", "predicted_masks": "predicted_masks"}


def read_mask_range(folder: str, n: int, h: int, w: int, a: int = 0, b: int | None = None) -> np.ndarray:
    """Masks a..b-1 (default: all) of a user mask folder, which must hold one mask per source frame (n),
    → float32 (b-a,H,W) in {0,1}, resized (nearest) to the frame size. The edit reads them a chunk at a
    time (mf_backend/streaming.py): a 1080p clip's masks as float32 are 8 MB a frame."""
    import cv2

    from mf_backend.errors import BadInputMedia
    from mf_backend.media import list_frame_files, read_masks

    if not Path(folder).expanduser().is_dir():
        read_masks(folder)  # its error names the folder
    count = len(list_frame_files(Path(folder).expanduser()))
    if count != n:
        raise BadInputMedia(f"'{folder}' has {count} masks for {n} source frames",
                            "give one mask per source frame (frame_0.png ...)")
    masks = read_masks(folder, frame_range=(a, (n if b is None else b) - 1))
    if masks.shape[1:] != (h, w):
        masks = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in masks])
    return (masks >= 0.5).astype(np.float32)
