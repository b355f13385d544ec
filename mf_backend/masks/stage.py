"""The masks stage of `prepare`/`edit`: M_r and M_e for every source frame, written a chunk at a time.

    folder/source_masks/frame_{k}.png     M_r, 8-bit L {0,255}
    folder/predicted_masks/frame_{k}.png  M_e (the source protagonist in the aligned target pose)

Full-resolution masks are never held for the whole clip: M_r is written as it is computed, M_e is
predicted from small copies of it (masks/predict.py `SourcePool`) and the full-size M_r read back.
`prepare` writes into its output folder; `edit` into a scratch folder it removes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

Reader = Callable[[int, int], np.ndarray]  # (a, b) → masks of source frames a..b-1, float32 (k,H,W) {0,1}


def compute_masks(source, prep, params, ctx, folder: Path) -> tuple[Reader, Reader]:
    """`source` (frames.Frames, F source frames) + `prepare.PosePrep` → M_r and M_e written into `folder`'s
    source_masks/ and predicted_masks/, returned as Readers of those folders.

    The user's `source_masks` / `predicted_masks` folders are used when given (copied at the frame
    size). Frames the driving clip does not drive keep the source pose, so their M_e is M_r.
    """
    from mf_backend.files import frame_pattern
    from mf_backend.frames import CHUNK
    from mf_backend.masks.predict import SourcePool, mask_model, predict_mask_chunks
    from mf_backend.masks.source import source_mask_chunks
    from mf_backend.media import write_masks

    n, hw = source.num_frames, (source.height, source.width)
    pattern = frame_pattern(n)
    out_r, out_e = Path(folder) / "source_masks", Path(folder) / "predicted_masks"
    edited = np.flatnonzero(~np.isnan(prep.driving_index))  # contiguous (timing.py)
    e0, e1 = (int(edited[0]), int(edited[-1]) + 1) if len(edited) else (0, 0)
    model = None if params.predicted_masks or not len(edited) else mask_model(params.advanced.mask_predictor)

    def m_r_chunks() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:  # (a, M_r (k,H,W), RGB (k,H,W,3))
        if not params.source_masks:
            yield from source_mask_chunks(source, "auto", params.models_dir, poses=prep.source, ctx=ctx)
            return
        user = mask_reader(params.source_masks, n, hw)
        for a, rgb in source.chunks():
            yield a, user(a, a + len(rgb)), rgb

    def written() -> Iterator[tuple[np.ndarray, np.ndarray]]:  # writes every M_r; yields the edited frames'
        for a, M_r, rgb in m_r_chunks():
            write_masks(M_r, out_r, pattern, start=a)
            lo, hi = max(a, e0) - a, min(a + len(M_r), e1) - a
            if lo < hi and not params.predicted_masks:
                yield rgb[lo:hi], M_r[lo:hi]

    with ctx.part(0.0, 0.4):  # measured: M_r ≈ 40% of the stage, M_e 60% (docs/masks.md)
        pool = SourcePool.build(written(), hw, lambda a, b: read_r(e0 + a, e0 + b),  # read once all are written
                                None if model is None else model.config.resolution)
    read_r = mask_reader(str(out_r), n, hw)
    with ctx.part(0.4, 1.0):
        if params.predicted_masks:
            user = mask_reader(params.predicted_masks, n, hw)
            for a in range(0, n, CHUNK):
                write_masks(user(a, min(a + CHUNK, n)), out_e, pattern, start=a)
        else:
            for t, M_e in predict_mask_chunks(pool, prep.source.frames(edited), prep.aligned.frames(edited), model,
                                              params.advanced.mask_predictor, tta_steps=params.advanced.tta_steps, ctx=ctx):
                write_masks(M_e, out_e, pattern, start=e0 + t)
            out_e.mkdir(parents=True, exist_ok=True)
            for k in [*range(e0), *range(e1, n)]:  # not edited: the source pose, so M_e = M_r
                name = pattern.format(k=k)
                shutil.copyfile(out_r / name, out_e / name)
    return read_r, mask_reader(str(out_e), n, hw)


def mask_reader(folder: str, n: int, hw: tuple[int, int]) -> Reader:
    """A mask folder (one mask per source frame, any size) as a Reader of float32 (k,H,W) {0,1} at hw."""
    return lambda a, b: read_mask_range(folder, n, *hw, a, b)


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
