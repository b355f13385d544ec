"""Read and write clips: video files (any codec OpenCV reads), folders of frames, single images.

In memory a clip is numpy uint8 RGB (F,H,W,3); masks are float32 (F,H,W) in [0,1] and on disk 8-bit L
PNG {0,255}. Frame folders are ordered by the integer k of `frame_{k}.<ext>` when every file has that
form (the example-case layout), else by natural sort ("img2" before "img10"). 16-bit images are scaled
to 8 bit, grey images are expanded to RGB, and an alpha channel is dropped (with a logged note): the
model sees the person and background as composited on screen.

Every failure a user can cause raises BadInputMedia naming the file and what to do.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from mf_backend.errors import BadInputMedia

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_SIDE = 8192  # 8K; larger is almost surely a wrong file, and 24 frames of it would not fit in memory
MAX_FRAMES = 100_000  # about 70 minutes at 24 fps
_FRAME_K = re.compile(r"^frame_(\d+)$")
_IO_THREADS = max(1, min(4, os.cpu_count() or 1))  # cv2 decoding releases the GIL


@dataclass
class Clip:
    """A decoded clip. `start` is the index in the file of frames[0] (non-zero after a frame_range)."""

    frames: np.ndarray  # uint8 (F,H,W,3) RGB
    fps: Optional[float]  # None for frame folders unless the caller gave one
    path: str
    start: int = 0

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
) -> Clip:
    """Decode a video file, a folder of frames or a single image into a Clip.

    frame_range = (a, b) keeps frames a..b of the file, both inclusive and 0-based (None = open end);
    max_frames then caps the count. `fps` overrides what the file says (folders have none of their own).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise BadInputMedia(f"'{p}' does not exist", "check the path; use an absolute path")
    a, b = _normalise_range(frame_range, p)
    if p.is_dir():
        files = list_frame_files(p)
        files = files[a : None if b is None else b + 1]
        if max_frames is not None:
            files = files[:max_frames]
        if not files:
            raise BadInputMedia(f"'{p}': no frames in the range {a}..{'end' if b is None else b}",
                                "check frame_start/frame_end against the clip length")
        frames = _read_images(files, folder=p)
        media_fps = None
    elif p.suffix.lower() in IMAGE_EXTS:
        if a > 0:
            raise BadInputMedia(f"'{p}' is a single image; frame {a} does not exist", "use frame range 0..0")
        frames = _read_images([p], folder=None)
        media_fps = None
    else:
        frames, media_fps = _read_video(p, a, b, max_frames)
    out_fps = float(fps) if fps else media_fps
    return Clip(frames=frames, fps=out_fps, path=str(p), start=a)


def probe_clip(path: str | os.PathLike) -> ClipInfo:
    """Frame count, size and fps of a clip, decoding at most one frame."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BadInputMedia(f"'{p}' does not exist", "check the path; use an absolute path")
    if p.is_dir():
        files = list_frame_files(p)
        first = _read_image(files[0])
        return ClipInfo(len(files), first.shape[0], first.shape[1], None, str(p))
    if p.suffix.lower() in IMAGE_EXTS:
        first = _read_image(p)
        return ClipInfo(1, first.shape[0], first.shape[1], None, str(p))
    cap = _open_video(p)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = _video_fps(cap)
    finally:
        cap.release()
    _check_size(h, w, p)
    _check_count(n, p)
    return ClipInfo(n, h, w, fps, str(p))


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
    """A folder of mask images → float32 (F,H,W) in [0,1] (colour masks are reduced to their grey level)."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise BadInputMedia(f"mask folder '{p}' does not exist or is not a folder", "give a folder of frame_{k}.png masks")
    a, b = _normalise_range(frame_range, p)
    files = list_frame_files(p)[a : None if b is None else b + 1]
    if max_frames is not None:
        files = files[:max_frames]
    if not files:
        raise BadInputMedia(f"mask folder '{p}': no frames in the range", "check frame_start/frame_end")
    frames = _read_images(files, folder=p)  # uint8 (F,H,W,3)
    return frames.max(axis=-1).astype(np.float32) / 255.0


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

    with ThreadPoolExecutor(_IO_THREADS) as pool:
        list(pool.map(write, range(len(frames))))
    return paths


def write_masks(masks: np.ndarray, folder: str | os.PathLike, pattern: str = "frame_{k}.png", start: int = 0) -> list[Path]:
    """float (F,H,W) masks in [0,1] → 8-bit L PNGs {0,255} (thresholded at 0.5, the on-disk convention)."""
    binary = (np.asarray(masks) >= 0.5).astype(np.uint8) * 255
    return write_frames(binary, folder, pattern, start)


def write_video(frames: np.ndarray, path: str | os.PathLike, fps: float, fourcc: str = "mp4v") -> Path:
    """uint8 RGB (F,H,W,3) → a video file (mp4v in .mp4 by default: readable everywhere, lossy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f, h, w = frames.shape[:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
    if not writer.isOpened():
        raise BadInputMedia(f"could not open '{path}' for writing with codec {fourcc}",
                            "write a frame folder instead, or use .mp4/.avi")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
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


def _check_size(h: int, w: int, p: Path) -> None:
    if h <= 0 or w <= 0:
        raise BadInputMedia(f"'{p}' has no picture (size {w}x{h})", "re-export the clip")
    if max(h, w) > MAX_SIDE:
        raise BadInputMedia(f"'{p}' is {w}x{h}; sides above {MAX_SIDE} px are not supported",
                            "downscale the clip (e.g. to 1920x1080 or 3840x2160) first")


def _check_count(n: int, p: Path) -> None:
    if n > MAX_FRAMES:
        raise BadInputMedia(f"'{p}' has {n} frames; at most {MAX_FRAMES} are supported",
                            "cut the clip, or pass a frame range")


def _check_memory(n: int, h: int, w: int, p: Path) -> None:
    """Refuse before decoding a clip whose frames cannot fit in memory (minutes of decoding, then a crash)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this OS
        return
    need = n * h * w * 3
    if need > 0.8 * ram:
        raise BadInputMedia(f"'{p}': {n} frames of {w}x{h} need {need / 2**30:.1f} GiB, this machine has {ram / 2**30:.1f} GiB",
                            "pass a frame range (frame_start/frame_end) or a shorter clip")


def _png_size(p: Path) -> Optional[tuple[int, int]]:
    """(h, w) from a PNG header, so absurd images are refused before decoding them."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(24)
    except OSError as exc:
        raise BadInputMedia(f"cannot read '{p}': {exc.strerror}", "check the file's permissions") from exc
    if len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return h, w
    return None


_alpha_noted: set[str] = set()


def _read_image(p: Path) -> np.ndarray:
    """One image file → uint8 (H,W,3) RGB."""
    hw = _png_size(p)
    if hw is not None:
        _check_size(*hw, p)
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadInputMedia(f"cannot decode image '{p}'", "the file is corrupt or not an image; re-export it as PNG")
    _check_size(img.shape[0], img.shape[1], p)
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)  # exact 0..65535 → 0..255 rounding
    elif img.dtype in (np.float32, np.float64):
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise BadInputMedia(f"'{p}' has unsupported pixel type {img.dtype}", "re-export as 8- or 16-bit PNG")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        key = str(p.parent)
        if key not in _alpha_noted:  # one note per folder, not per frame
            _alpha_noted.add(key)
            log.info("'%s' has an alpha channel; it is ignored (colour used as stored)", p)
        img = img[:, :, :3]
    elif img.shape[2] == 2:  # grey + alpha
        return np.repeat(img[:, :, :1], 3, axis=2)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_images(files: Sequence[Path], folder: Optional[Path]) -> np.ndarray:
    first = _read_image(files[0])
    _check_memory(len(files), first.shape[0], first.shape[1], folder or files[0])
    out = np.empty((len(files), *first.shape), np.uint8)
    out[0] = first

    def load(i: int) -> None:
        img = _read_image(files[i])
        if img.shape != first.shape:
            raise BadInputMedia(
                f"'{files[i]}' is {img.shape[1]}x{img.shape[0]} but '{files[0].name}' is {first.shape[1]}x{first.shape[0]}"
                + (f" (folder '{folder}')" if folder else ""),
                "all frames of a clip must have the same size; re-export the folder",
            )
        out[i] = img

    with ThreadPoolExecutor(_IO_THREADS) as pool:
        list(pool.map(load, range(1, len(files))))
    return out


def _open_video(p: Path) -> "cv2.VideoCapture":
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        cap.release()
        raise BadInputMedia(f"cannot open '{p}' as a video", "the file is corrupt or its codec is not supported by OpenCV; "
                            "convert it to H.264 MP4 or export a PNG frame folder")
    return cap


def _video_fps(cap) -> Optional[float]:
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if np.isfinite(fps) and 0.0 < fps < 1000.0 else None


def _read_video(p: Path, a: int, b: Optional[int], max_frames: Optional[int]) -> tuple[np.ndarray, Optional[float]]:
    cap = _open_video(p)
    try:
        fps = _video_fps(cap)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))  # from the container: may be approximate or 0
        _check_count(n, p)
        if w > 0 and h > 0:
            _check_size(h, w, p)
            wanted = max(0, n - a) if b is None else min(max(0, n - a), b - a + 1)
            _check_memory(wanted if max_frames is None else min(wanted, max_frames), h, w, p)
        for _ in range(a):  # grab() without retrieve(): no colour conversion; exact, unlike seeking
            if not cap.grab():
                raise BadInputMedia(f"'{p}' ends before frame {a}", "check frame_start against the clip length")
        limit = MAX_FRAMES if b is None else b - a + 1
        if max_frames is not None:
            limit = min(limit, max_frames)
        frames: list[np.ndarray] = []
        while len(frames) < limit:
            ok, bgr = cap.read()
            if not ok:
                break
            if frames and bgr.shape != frames[0].shape:
                raise BadInputMedia(f"'{p}': frame {a + len(frames)} changes size", "re-encode the clip at one size")
            frames.append(bgr)
    finally:
        cap.release()
    if not frames:
        raise BadInputMedia(f"'{p}' has no decodable frames" + (f" from frame {a}" if a else ""),
                            "the file is empty or corrupt; re-export it")
    _check_size(frames[0].shape[0], frames[0].shape[1], p)
    out = np.stack(frames)
    cv2.cvtColor(out.reshape(-1, out.shape[2], 3), cv2.COLOR_BGR2RGB, dst=out.reshape(-1, out.shape[2], 3))
    return out, fps
