"""Still images in their own precision: 8/16-bit PNG and TIFF through OpenCV, EXR (half/float) through OpenEXR.

`read_image` gives the stored pixels as RGB (H,W,3) of the file's dtype (uint8, uint16, float16 or
float32): grey is expanded to RGB and an alpha channel is dropped (the model sees the picture as shown).
`write_image` writes RGB plus an optional alpha (the edit's matte) in the dtype it is given, and EXR
header attributes (frame rate, timecode, what the source's header said).
"""

from __future__ import annotations

import logging
import os
import struct
from fractions import Fraction
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from mf_backend.errors import BadInputMedia

log = logging.getLogger("mf_backend.media.images")  # under media: one logger for clip reading

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".exr")
MAX_SIDE = 8192  # 8K; larger is almost surely a wrong file, and 24 frames of it would not fit in memory
EXR_LINEAR = "Linear Rec.709 (sRGB)"  # what an EXR holds unless its header names another space
EXR_SPACE_KEYS = ("colorSpace", "oiio:ColorSpace", "colorspace")  # header attributes that name it
_alpha_noted: set[str] = set()


def check_size(h: int, w: int, p: Path) -> None:
    if h <= 0 or w <= 0:
        raise BadInputMedia(f"'{p}' has no picture (size {w}x{h})", "re-export the clip")
    if max(h, w) > MAX_SIDE:
        raise BadInputMedia(f"'{p}' is {w}x{h}; sides above {MAX_SIDE} px are not supported",
                            "downscale the clip (e.g. to 1920x1080 or 3840x2160) first")


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


def _note_alpha(p: Path) -> None:
    key = str(p.parent)
    if key not in _alpha_noted:  # one note per folder, not per frame
        _alpha_noted.add(key)
        log.info("'%s' has an alpha channel; it is ignored (colour used as stored)", p)


def read_image(p: Path) -> np.ndarray:
    """One image file → its stored RGB pixels (H,W,3), dtype as stored."""
    if p.suffix.lower() == ".exr":
        return _read_exr(p)
    hw = _png_size(p)
    if hw is not None:
        check_size(*hw, p)
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadInputMedia(f"cannot decode image '{p}'", "the file is corrupt or not an image; re-export it as PNG")
    check_size(img.shape[0], img.shape[1], p)
    if img.dtype == np.float64:
        img = img.astype(np.float32)
    elif img.dtype not in (np.uint8, np.uint16, np.float32):
        raise BadInputMedia(f"'{p}' has unsupported pixel type {img.dtype}", "re-export as 8- or 16-bit PNG")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 2:  # grey + alpha
        _note_alpha(p)
        return np.repeat(img[:, :, :1], 3, axis=2)
    if img.shape[2] == 4:
        _note_alpha(p)
        img = img[:, :, :3]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_exr(p: Path) -> np.ndarray:
    import OpenEXR

    try:
        with OpenEXR.File(str(p), separate_channels=True) as f:
            channels = {name: ch.pixels for name, ch in f.channels().items()}
    except Exception as exc:  # OpenEXR raises plain RuntimeError/Exception for bad files
        raise BadInputMedia(f"cannot read EXR '{p}': {exc}", "the file is corrupt or not an EXR; re-export it") from exc
    if all(c in channels for c in "RGB"):
        rgb = np.stack([channels[c] for c in "RGB"], axis=-1)
    elif "Y" in channels:
        rgb = np.repeat(channels["Y"][..., None], 3, axis=-1)
    else:
        raise BadInputMedia(f"EXR '{p}' has no R, G, B (or Y) channels (it has {', '.join(sorted(channels))})",
                            "export the beauty pass as plain R, G, B channels")
    if "A" in channels:
        _note_alpha(p)
    check_size(rgb.shape[0], rgb.shape[1], p)
    if rgb.dtype not in (np.float16, np.float32):
        raise BadInputMedia(f"EXR '{p}' stores {rgb.dtype} pixels", "export it as half or float")
    return rgb


def exr_header(p: Path) -> dict:
    """An EXR's header attributes (OpenEXR's names: `framesPerSecond` a Fraction, `timeCode` a TimeCode, ...)."""
    import OpenEXR

    try:
        with OpenEXR.File(str(p), header_only=True) as f:
            return dict(f.header())  # a copy: closing the file empties its header dict
    except Exception as exc:  # OpenEXR raises plain RuntimeError/Exception for bad files
        raise BadInputMedia(f"cannot read EXR '{p}': {exc}", "the file is corrupt or not an EXR; re-export it") from exc


def exr_colorspace(header: dict) -> str:
    """The colour space an EXR header names (`colorSpace`, OIIO's `oiio:ColorSpace`), else scene-linear Rec.709."""
    for key in EXR_SPACE_KEYS:
        if isinstance(header.get(key), str) and header[key]:
            return header[key]
    return EXR_LINEAR


# header attributes that describe one file (layout, compression) or one frame (its timecode, capture time):
# an edit's EXR output sets its own; the rest of a source EXR's header (colour space, chromaticities,
# owner, comments, ...) is kept in the output
_PER_FILE_OR_FRAME = {"channels", "compression", "dataWindow", "displayWindow", "lineOrder", "type", "tiles", "name",
                      "version", "chunkCount", "view", "multiView", "preview", "dwaCompressionLevel",
                      "zipCompressionLevel", "timeCode", "keyCode", "capDate", "utcOffset", "framesPerSecond"}


def exr_clip_attributes(header: dict) -> tuple[Optional[Fraction], Optional[str], dict]:
    """From frame 0's EXR header: the exact rate (`framesPerSecond`), the timecode (`timeCode`) and the
    attributes an edit of the clip keeps."""
    rate = header.get("framesPerSecond")
    rate = rate if isinstance(rate, Fraction) and rate > 0 else None
    tc = header.get("timeCode")
    kept = {k: v for k, v in header.items() if k not in _PER_FILE_OR_FRAME}
    return rate, (timecode_text(tc) if tc is not None else None), kept


def timecode_text(tc) -> str:
    """An OpenEXR TimeCode → "HH:MM:SS:FF" (";" before FF for drop-frame, as FFmpeg writes it)."""
    return f"{tc.hours:02d}:{tc.minutes:02d}:{tc.seconds:02d}{';' if tc.dropFrame else ':'}{tc.frame:02d}"


def exr_timecode(text: str):
    """"HH:MM:SS:FF" (or ";FF", drop-frame) → an OpenEXR TimeCode attribute."""
    import OpenEXR

    tc = OpenEXR.TimeCode()
    h, m, s, f = (int(x) for x in text.replace(";", ":").split(":"))
    tc.hours, tc.minutes, tc.seconds, tc.frame, tc.dropFrame = h, m, s, f, ";" in text
    return tc


def image_bits(p: Path) -> int:
    """8, 16 (integer) or 16/32 for EXR half/float, from the first frame (decoded once)."""
    img = read_image(p)
    return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16, np.dtype(np.float16): 16}.get(img.dtype, 32)


def write_image(p: Path, rgb: np.ndarray, alpha: Optional[np.ndarray] = None, exr_attributes: Optional[dict] = None) -> None:
    """RGB (H,W,3) in its stored dtype (+ alpha float (H,W) in 0..1) → p (.png/.tif: uint8/uint16, .exr: half/float,
    with `exr_attributes` in its header)."""
    ext = p.suffix.lower()
    if ext == ".exr":
        import OpenEXR

        dtype = np.float16 if rgb.dtype == np.float16 else np.float32
        channels = {c: np.ascontiguousarray(rgb[..., i], dtype) for i, c in enumerate("RGB")}
        if alpha is not None:
            channels["A"] = np.ascontiguousarray(alpha, dtype)
        header = {**(exr_attributes or {}), "compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
        try:
            OpenEXR.File(header, channels).write(str(p))
        except Exception as exc:
            raise BadInputMedia(f"could not write '{p}': {exc}", "check that the folder is writable and has free space") from exc
        return
    if rgb.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{ext} frames must be uint8 or uint16, got {rgb.dtype}")
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        a = np.rint(np.clip(alpha, 0.0, 1.0) * np.iinfo(rgb.dtype).max).astype(rgb.dtype)
        img = np.dstack([img, a])
    if not cv2.imwrite(str(p), img):
        raise BadInputMedia(f"could not write '{p}'", "check that the folder is writable and has free space")


def read_matte(p: Path) -> np.ndarray:
    """The edit's matte as written by write_image/write_grey → float32 (H,W) in [0,1]: an EXR's A channel,
    else the grey level of an 8/16-bit image."""
    if p.suffix.lower() == ".exr":
        import OpenEXR

        try:
            with OpenEXR.File(str(p), separate_channels=True) as f:
                return np.asarray(f.channels()["A"].pixels, np.float32)
        except Exception as exc:
            raise BadInputMedia(f"cannot read the matte (alpha) of '{p}': {exc}", "re-run the edit that wrote it") from exc
    grey = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if grey is None or grey.ndim != 2 or grey.dtype not in (np.uint8, np.uint16):
        raise BadInputMedia(f"cannot read the matte '{p}' (a grey 8/16-bit image)", "re-run the edit that wrote it")
    return grey.astype(np.float32) / np.iinfo(grey.dtype).max


def write_grey(p: Path, grey: np.ndarray) -> None:
    """One-channel uint8/uint16 (H,W) image (masks, mattes)."""
    if not cv2.imwrite(str(p), np.ascontiguousarray(grey)):
        raise BadInputMedia(f"could not write '{p}'", "check that the folder is writable and has free space")


