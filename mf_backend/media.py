"""Read and write clips: movies (PyAV: ProRes, DNxHR, H.264/H.265, ...), folders of frames (PNG/TIFF
8/16-bit, EXR half/float), single images.

In memory a clip is `frames`, uint8 RGB (F,H,W,3) in the model's working space (sRGB), and, when the
source is stored otherwise (16 bits, float, 10/12-bit video, another colour space), `native`: its own
pixels (F,H,W,3) in their own dtype, which the edit composites into so that untouched pixels keep their
exact values (mf_backend/media_output.py). Masks are float32 (F,H,W) in [0,1] and on disk 8-bit L PNG
{0,255}. Frame folders are ordered by the integer k of `frame_{k}.<ext>` when every file has that form
(the example-case layout), else by natural sort ("img2" before "img10"). Grey images are expanded to
RGB and an alpha channel is dropped (with a logged note): the model sees the picture as shown.

Colour (mf_backend/media_colour.py): EXR is scene-linear Rec.709 unless its header names a space (its
header also gives the rate and timecode: `framesPerSecond`, `timeCode`),
a movie by its transfer tag (linear, PQ, HLG: mf_backend/media_movie.py), everything else sRGB;
`colorspace` overrides. Every failure a user can cause raises BadInputMedia
naming the file and what to do.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

from mf_backend import media_colour as colour
from mf_backend.errors import BadInputMedia
from mf_backend.media_images import IMAGE_EXTS, MAX_SIDE, check_size, read_image  # noqa: F401
from mf_backend.media_images import exr_clip_attributes, exr_colorspace, exr_header

log = logging.getLogger(__name__)

MAX_FRAMES = 100_000  # about 70 minutes at 24 fps
_FRAME_K = re.compile(r"^frame_(\d+)$")
IO_THREADS = max(1, min(4, os.cpu_count() or 1))  # cv2/OpenEXR decoding releases the GIL


@dataclass
class Clip:
    """A decoded clip. `start` is the index in the file of frames[0] (non-zero after a frame_range)."""

    frames: np.ndarray  # uint8 (F,H,W,3) RGB in the working space (sRGB)
    fps: Optional[float]  # None for frame folders unless the caller gave one (or an EXR header does)
    path: str
    start: int = 0
    native: Optional[np.ndarray] = None  # (F,H,W,3) the stored pixels when they are not `frames` (None: they are)
    colorspace: str = "sRGB Encoded Rec.709 (sRGB)"  # of the stored pixels (OCIO name)
    rate: Optional[Fraction] = None  # exact fps (24000/1001) when the file has one
    timecode: Optional[str] = None  # of frame 0 of the file, "HH:MM:SS:FF"
    kind: str = "png"  # the output format that matches the source: png, png16, exr, prores, prores4444, dnxhr, h264
    exr_attributes: Optional[dict] = None  # an EXR source's header attributes that an EXR output keeps

    @property
    def stored(self) -> np.ndarray:
        """The source's own pixels: `native`, or `frames` when they are the same."""
        return self.frames if self.native is None else self.native

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


@dataclass
class ClipInfo:
    """What `probe_clip` learns without decoding every frame (video frame counts come from the container)."""

    num_frames: int
    height: int
    width: int
    fps: Optional[float]
    path: str


# ---------------------------------------------------------------------------------------------- reading


def read_clip(
    path: str | os.PathLike,
    max_frames: Optional[int] = None,
    frame_range: Optional[tuple[Optional[int], Optional[int]]] = None,
    fps: Optional[float] = None,
    colorspace: Optional[str] = None,
) -> Clip:
    """Decode a movie, a folder of frames or a single image into a Clip.

    frame_range = (a, b) keeps frames a..b of the file, both inclusive and 0-based (None = open end);
    max_frames then caps the count. `fps` overrides what the file says (PNG folders have none of their own, EXR headers may);
    `colorspace` overrides the stored pixels' colour space (OCIO or Blender name).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise BadInputMedia(f"'{p}' does not exist", "check the path; use an absolute path")
    a, b = _normalise_range(frame_range, p)
    rate, timecode, attributes = None, None, None
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTS:
        listed = list_frame_files(p) if p.is_dir() else [p]
        files = listed[a : None if b is None else b + 1]
        if max_frames is not None:
            files = files[:max_frames]
        if not files:
            hint = "use frame range 0..0" if p.is_file() else "check frame_start/frame_end against the clip length"
            raise BadInputMedia(f"'{p}': no frames in the range {a}..{'end' if b is None else b}", hint)
        stored = _read_images(files, folder=p if p.is_dir() else None)
        exr = files[0].suffix.lower() == ".exr"
        space = colorspace or "sRGB"
        if exr:  # frame 0 of the sequence: its rate, timecode (of frame 0, as a movie's) and colour space
            header = exr_header(listed[0])
            rate, timecode, attributes = exr_clip_attributes(header)
            space = colorspace or exr_colorspace(header)
        kind = "exr" if exr else ("png16" if stored.dtype != np.uint8 else "png")
    else:
        stored, rate, timecode, kind, tagged = _read_movie(p, a, b, max_frames)
        space = colorspace or tagged
    space = colour.resolve(space)
    frames = colour.to_working(stored, space)
    native = None if frames is stored else stored
    out_fps = float(fps) if fps else (float(rate) if rate else None)
    if fps and (rate is None or abs(float(rate) - fps) > 1e-6):
        rate = exact_rate(fps)
    return Clip(frames=frames, fps=out_fps, path=str(p), start=a, native=native, colorspace=space,
                rate=rate, timecode=timecode, kind=kind, exr_attributes=attributes)


def exact_rate(fps: float) -> Fraction:
    """A frame rate given as a float → the exact rational: NTSC rates (23.976, 29.97, 59.94; also
    Blender's fps / fps_base = 24 / 1.001) become N·1000/1001, others the nearest fraction with a small
    denominator (25, 12.5)."""
    ntsc = round(fps * 1.001)
    if ntsc in (24, 30, 48, 60, 120) and abs(fps - ntsc / 1.001) < 0.0015:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1000)


def probe_clip(path: str | os.PathLike) -> ClipInfo:
    """Frame count, size and fps of a clip, decoding at most one frame."""
    from mf_backend.media_movie import probe_movie

    p = Path(path).expanduser()
    if not p.exists():
        raise BadInputMedia(f"'{p}' does not exist", "check the path; use an absolute path")
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTS:
        files = list_frame_files(p) if p.is_dir() else [p]
        first = read_image(files[0])
        rate = exr_clip_attributes(exr_header(files[0]))[0] if files[0].suffix.lower() == ".exr" else None
        return ClipInfo(len(files), first.shape[0], first.shape[1], float(rate) if rate else None, str(p))
    info = probe_movie(p)
    check_size(info.height, info.width, p)
    _check_count(info.num_frames, p)
    return ClipInfo(info.num_frames, info.height, info.width, float(info.rate) if info.rate else None, str(p))


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a frame folder in frame order (frame_{k} by integer k, else natural sort)."""
    folder = Path(folder)
    files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")]
    if not files:
        raise BadInputMedia(f"folder '{folder}' contains no images ({', '.join(IMAGE_EXTS)})",
                            "point at a folder of frames such as frame_0.png, frame_1.png, ...")
    _check_count(len(files), folder)
    ks = [_FRAME_K.match(f.stem) for f in files]
    if all(ks):
        order = sorted(zip((int(m.group(1)) for m in ks), files))
        numbers = [k for k, _ in order]
        if len(set(numbers)) != len(numbers):
            raise BadInputMedia(f"folder '{folder}' has two files for the same frame number (e.g. frame_1.png and frame_01.png)",
                                "keep one file per frame")
        if numbers[-1] - numbers[0] + 1 != len(numbers):
            log.warning("frame folder '%s' has gaps in its numbering (%d files for frames %d..%d); frames are taken in order",
                        folder, len(numbers), numbers[0], numbers[-1])
        return [f for _, f in order]
    return sorted(files, key=_natural_key)


def read_masks(
    folder: str | os.PathLike,
    max_frames: Optional[int] = None,
    frame_range: Optional[tuple[Optional[int], Optional[int]]] = None,
) -> np.ndarray:
    """A folder of mask images → float32 (F,H,W) in [0,1] (colour masks are reduced to their grey level);
    8-bit, 16-bit and float (EXR) masks alike: white is the stored value of white of their depth."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise BadInputMedia(f"mask folder '{p}' does not exist or is not a folder", "give a folder of frame_{k}.png masks")
    a, b = _normalise_range(frame_range, p)
    files = list_frame_files(p)[a : None if b is None else b + 1]
    if max_frames is not None:
        files = files[:max_frames]
    if not files:
        raise BadInputMedia(f"mask folder '{p}': no frames in the range", "check frame_start/frame_end")
    frames = _read_images(files, folder=p)  # (F,H,W,3) uint8, uint16 or float
    return np.clip(colour.to_float(frames.max(axis=-1)), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- writing


def write_frames(frames: np.ndarray, folder: str | os.PathLike, pattern: str = "frame_{k}.png", start: int = 0) -> list[Path]:
    """Write uint8 RGB (F,H,W,3) or grey (F,H,W) frames as `pattern.format(k=start+i)`; returns the paths."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[-1] != 3):
        raise ValueError(f"write_frames expects uint8 (F,H,W,3) or (F,H,W), got {frames.dtype} {frames.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / pattern.format(k=start + i) for i in range(len(frames))]

    def write(i: int) -> None:
        img = frames[i] if frames.ndim == 3 else cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(paths[i]), img):
            raise BadInputMedia(f"could not write '{paths[i]}'", "check that the folder is writable and has free space")

    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(write, range(len(frames))))
    return paths


def write_masks(masks: np.ndarray, folder: str | os.PathLike, pattern: str = "frame_{k}.png", start: int = 0) -> list[Path]:
    """float (F,H,W) masks in [0,1] → 8-bit L PNGs {0,255} (thresholded at 0.5, the on-disk convention)."""
    binary = (np.asarray(masks) >= 0.5).astype(np.uint8) * 255
    return write_frames(binary, folder, pattern, start)


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float, fourcc: str = "mp4v") -> Path:
    """uint8 RGB frames (H,W,3) (an (F,H,W,3) array or any iterable, e.g. a generator of a long clip's
    frames) → a video file (mp4v in .mp4 by default: readable everywhere, lossy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for frame in frames:
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
                if not writer.isOpened():
                    raise BadInputMedia(f"could not open '{path}' for writing with codec {fourcc}",
                                        "write a frame folder instead, or use .mp4/.avi")
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        if writer is not None:
            writer.release()
    return path


# ---------------------------------------------------------------------------------------------- internals


def _normalise_range(frame_range, p: Path) -> tuple[int, Optional[int]]:
    if frame_range is None:
        return 0, None
    a, b = frame_range
    a = 0 if a is None else int(a)
    if a < 0 or (b is not None and int(b) < a):
        raise BadInputMedia(f"'{p}': bad frame range {frame_range}", "give 0 <= a <= b (inclusive, 0-based)")
    return a, None if b is None else int(b)


def _natural_key(f: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", f.name)]


def _check_count(n: int, p: Path) -> None:
    if n > MAX_FRAMES:
        raise BadInputMedia(f"'{p}' has {n} frames; at most {MAX_FRAMES} are supported",
                            "cut the clip, or pass a frame range")


def _check_memory(n: int, h: int, w: int, p: Path, bytes_per_value: int = 1) -> None:
    """Refuse before decoding a clip whose frames cannot fit in memory (minutes of decoding, then a crash).
    Deeper pixels are held twice: as stored and as the model's 8-bit frames."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this OS
        return
    need = n * h * w * 3 * (1 + bytes_per_value if bytes_per_value > 1 else 1)
    if need > 0.8 * ram:
        raise BadInputMedia(f"'{p}': {n} frames of {w}x{h} need {need / 2**30:.1f} GiB, this machine has {ram / 2**30:.1f} GiB",
                            "pass a frame range (frame_start/frame_end) or a shorter clip")


def _read_images(files: Sequence[Path], folder: Optional[Path]) -> np.ndarray:
    """Image files → their stored pixels (F,H,W,3) in the first file's dtype."""
    first = read_image(files[0])
    _check_memory(len(files), first.shape[0], first.shape[1], folder or files[0], first.itemsize)
    out = np.empty((len(files), *first.shape), first.dtype)
    out[0] = first

    def load(i: int) -> None:
        img = read_image(files[i])
        if img.dtype != first.dtype:
            raise BadInputMedia(f"'{files[i]}' stores {img.dtype} pixels but '{files[0].name}' stores {first.dtype}",
                                "all frames of a clip must have the same bit depth; re-export the folder")
        if img.shape != first.shape:
            raise BadInputMedia(
                f"'{files[i]}' is {img.shape[1]}x{img.shape[0]} but '{files[0].name}' is {first.shape[1]}x{first.shape[0]}"
                + (f" (folder '{folder}')" if folder else ""),
                "all frames of a clip must have the same size; re-export the folder",
            )
        out[i] = img

    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(load, range(1, len(files))))
    return out




def _read_movie(p: Path, a: int, b: Optional[int], max_frames: Optional[int]):
    """Frames a..b of a movie (stored pixels), its exact rate, timecode, matching output format and the
    colour space its transfer tag names."""
    from mf_backend.media_movie import probe_movie, read_movie

    info = probe_movie(p)
    _check_count(info.num_frames, p)
    check_size(info.height, info.width, p)
    if a >= info.num_frames:
        raise BadInputMedia(f"'{p}' ends before frame {a} (it has {info.num_frames})" if info.num_frames else
                            f"'{p}' has no decodable frames", "check frame_start against the clip length")
    stop = info.num_frames if b is None else min(b + 1, info.num_frames)
    if max_frames is not None:
        stop = min(stop, a + max_frames)
    _check_memory(stop - a, info.height, info.width, p, 2 if info.bit_depth > 8 else 1)
    chunks = list(read_movie(p, a, stop))
    if not chunks:
        raise BadInputMedia(f"'{p}' has no decodable frames" + (f" from frame {a}" if a else ""),
                            "the file is empty or corrupt; re-export it")
    return np.concatenate(chunks), info.rate, info.timecode, info.family, info.colorspace
