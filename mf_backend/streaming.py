"""The full-resolution side of an edit, a chunk of frames at a time: host memory independent of clip length.

Only working-resolution (size×size) arrays are kept for the whole clip: the model's crops of the source
frames, pose renders and masks, and keypoints. Full-resolution source and driving frames, pose renders
and masks are read CHUNK frames at a time with the readers' random access by frame range
(media.read_clip): by the pose and mask models (`Footage.frames()`, mf_backend/frames.py), to plan and
crop (read → crop), and once more at write time (read → composite → write). The masks the backend
computes go to a scratch folder as they are made and are read back like the user's own.
`python -m mf_backend bench host-memory` measures the peak RSS by clip length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from mf_backend.crop import CropPlan
from mf_backend.errors import BadInputMedia
from mf_backend.frames import CHUNK, Frames
from mf_backend.masks.stage import mask_reader  # noqa: F401 (a Reader of a mask folder)
from mf_backend.media import Clip

Reader = Callable[[int, int], np.ndarray]  # (a, b) → full-resolution source frames a..b-1 (masks (k,H,W), RGB (k,H,W,3))


@dataclass
class Footage:
    """A clip (source or driving), read a chunk at a time."""

    path: str
    head: Clip  # frame 0: colour space, exact rate, timecode, kind and stored dtype (what the output needs)
    num_frames: int
    fps_arg: Optional[float] = None
    colorspace_arg: Optional[str] = None

    @property
    def height(self) -> int:
        return self.head.height

    @property
    def width(self) -> int:
        return self.head.width

    @property
    def fps(self) -> Optional[float]:
        return self.head.fps

    def read(self, a: int, b: int) -> Clip:
        """Frames a..b-1 (stored and working pixels)."""
        from mf_backend.media import read_clip

        clip = read_clip(self.path, frame_range=(a, b - 1), fps=self.fps_arg, colorspace=self.colorspace_arg)
        if clip.num_frames != b - a:
            raise BadInputMedia(f"'{self.path}': frames {a}..{b - 1} do not all decode ({clip.num_frames} of {b - a})",
                                "the file is truncated or damaged: re-export or re-copy it")
        return clip

    def frames(self) -> Frames:
        """The working (uint8 sRGB) frames, for the pose and mask models."""
        return Frames(self.num_frames, self.height, self.width, self.fps, lambda a, b: self.read(a, b).frames)


def open_footage(path: str, fps: Optional[float] = None, colorspace: Optional[str] = None) -> Footage:
    """A clip by its first frame and frame count. The count is what decodes: a movie whose last frame
    does not decode is counted by decoding it, and refused when fewer frames decode than it claims."""
    from mf_backend.media import probe_clip, read_clip
    from mf_backend.media_movie import read_movie

    n = probe_clip(path).num_frames
    head = read_clip(path, frame_range=(0, 0), fps=fps, colorspace=colorspace)
    if head.kind not in ("png", "png16", "exr") and n > 1:  # a movie: its container's count may not decode
        try:
            read_clip(path, frame_range=(n - 1, n - 1))
        except BadInputMedia:
            n = check_decoded(path, n, sum(len(c) for c in read_movie(path)))
    return Footage(path, head, n, fps, colorspace)


def check_decoded(path: str, claimed: int, decoded: int) -> int:
    """`decoded`, unless fewer frames decode than the file claims: an error (a truncated or damaged file
    would otherwise be edited silently with what is left; containers may round their count by a frame)."""
    if claimed > decoded + max(1, claimed // 50):
        raise BadInputMedia(f"'{path}' says it has {claimed} frames but only {decoded} decode",
                            "the file is truncated or damaged: re-export or re-copy it")
    return decoded


def spans(frames: np.ndarray, chunk: int = CHUNK) -> Iterator[tuple[int, int]]:
    """(a, b) chunks of ≤ `chunk` frames covering the contiguous source frames `frames`."""
    first, stop = int(frames[0]), int(frames[-1]) + 1
    for a in range(first, stop, chunk):
        yield a, min(a + chunk, stop)


def held(array: np.ndarray, first: int) -> Reader:
    """A Reader over an array already in memory whose row 0 is source frame `first`."""
    return lambda a, b: array[a - first : b - first]


def mask_boxes(readers: list[Reader], edited: np.ndarray, frame_hw: tuple[int, int]) -> list[np.ndarray]:
    """The per-frame person box (F_edit,4) of each mask Reader over the edited frames (crop.plan_crop)."""
    from mf_backend.crop import mask_boxes as boxes_of

    return [np.concatenate([boxes_of(read(a, b), frame_hw) for a, b in spans(edited)]) for read in readers]


def crop_chunks(plan: CropPlan, edited: np.ndarray, readers: dict[str, Reader]) -> dict[str, np.ndarray]:
    """Each Reader's edited frames cropped to size×size a chunk at a time: RGB keeps its dtype
    (F_edit,S,S,3), masks become float32 (F_edit,S,S) (CropPlan.apply / apply_masks)."""
    out: dict[str, list] = {k: [] for k in readers}
    for a, b in spans(edited):
        for k, read in readers.items():
            x = read(a, b)
            out[k].append(plan.apply_masks(x) if x.ndim == 3 else plan.apply(x))
    return {k: np.concatenate(v) for k, v in out.items()}


def render_reader(folder: str, n_src: int, edited: np.ndarray, hw: tuple[int, int]) -> Reader:
    """A user pose-render folder with one image per source frame (or per edited frame) as a Reader of
    uint8 (k,H,W,3) at the source size (resized when the folder has another size of the same aspect)."""
    import cv2

    from mf_backend.media import list_frame_files, read_clip

    count = len(list_frame_files(folder))
    if count not in (n_src, len(edited)):
        raise BadInputMedia(f"'{folder}' has {count} frames; the source has {n_src} ({len(edited)} edited)",
                            "give one file per source frame (frame_0.png ...)")
    offset = 0 if count == n_src else int(edited[0])
    h, w = hw

    def read(a: int, b: int) -> np.ndarray:
        data = read_clip(folder, frame_range=(a - offset, b - 1 - offset)).frames
        fh, fw = data.shape[1:3]
        if (fh, fw) == (h, w):
            return data
        if abs(fw / fh - w / h) > 0.01:
            raise BadInputMedia(f"'{folder}' has {fw}x{fh} images; the source is {w}x{h} (another aspect ratio)",
                                "give pose renders at the source's resolution")
        return np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR) for im in data])

    return read


def write_output(footage: Footage, plan: CropPlan, edited: np.ndarray, crops: dict[str, np.ndarray], work: np.ndarray,
                 output_format: str, folder, only_edited: bool = False, preview=None,
                 progress: Optional[Callable[[int, int], None]] = None) -> tuple[dict, float]:
    """Composite the decoded edit (uint8 (F_edit,S,S,3)) into the source in the output's encoding and write
    every source frame (`only_edited`: the edited ones, a farm chunk) with the matte, reading the source
    again a chunk at a time (`crops`: the model's "frames", "M_r", "M_e" of the edited frames). `preview`:
    a path for an 8-bit sRGB movie of the same frames. Returns the output's description and the seconds
    spent compositing."""
    import time

    from mf_backend.composite import matte
    from mf_backend.media import write_video
    from mf_backend.media_colour import to_working
    from mf_backend.media_movie import CODECS
    from mf_backend.media_output import OutputWriter, chunk_encoding, composite_edit, encode_stored, output_encoding

    shot = output_encoding(output_format, footage.head)
    enc = chunk_encoding(shot) if only_edited else shot  # a farm chunk: the shot's image format (merge-chunks)
    pos = np.full(footage.num_frames, -1)
    pos[edited] = np.arange(len(edited))
    frames = edited if only_edited else np.arange(footage.num_frames)
    read = np.arange(footage.num_frames) if preview is not None else frames  # the preview shows every frame
    movie_in = footage.head.kind in CODECS and not only_edited  # the whole movie: its audio fits
    writer = OutputWriter(folder, enc, footage.num_frames, footage.width, footage.height, footage.head.rate,
                          footage.head.timecode, footage.path if movie_in else None, footage.head.exr_attributes)
    seconds = [0.0]

    def chunks() -> Iterator[np.ndarray]:  # composited and written; yields the preview's frames
        for a, b in spans(read):
            src = footage.read(a, b)
            rgb = encode_stored(src.stored, src.colorspace, enc).copy()
            alpha = np.zeros(rgb.shape[:3], np.float32)
            sel = np.flatnonzero(pos[a:b] >= 0)  # chunk rows that are edited
            if len(sel):
                t0 = time.perf_counter()
                k = pos[a + sel]
                M_r, M_e = crops["M_r"][k], crops["M_e"][k]
                rgb[sel] = composite_edit(src, sel, work[k], plan, M_r, M_e, crops["frames"][k], enc)
                alpha[sel] = matte(plan, M_r, M_e)
                seconds[0] += time.perf_counter() - t0
            if only_edited:  # the edited rows of the chunk (contiguous)
                if len(sel):
                    writer.write(rgb[sel[0] : sel[-1] + 1], alpha[sel[0] : sel[-1] + 1], a + int(sel[0]))
            else:
                writer.write(rgb, alpha, a)
            if progress:
                progress(writer.count, len(frames))
            if preview is not None:
                view = src.frames.copy()
                view[sel] = to_working(rgb[sel], enc.colorspace)
                yield from view

    try:
        if preview is not None:
            write_video(chunks(), preview, fps=footage.fps or 24.0)
        else:
            for _ in chunks():
                pass
        return {**writer.close(), **({"shot_format": shot.format} if only_edited else {})}, seconds[0]
    except BaseException:
        writer.abort()
        raise
