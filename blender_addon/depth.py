"""The depth a strip's export needs to keep its media: 8-bit, 16-bit or EXR half/float (strips.StripExport).

Blender decodes 16-bit PNG/TIFF, EXR and >8-bit movies (5.x) to float buffers, so `Image.is_float` of the
strip's first file tells 8-bit from deeper media; EXR half from float is read from the EXR header, which
Blender does not expose.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Optional

import bpy

LINEAR = "Linear Rec.709"  # Blender's scene-linear space (4.2–5.0); EXR render output is written in it
# export depth → (file_format, color_depth, file extension, colour space of the written frames)
FORMATS = {"8": ("PNG", "8", ".png", "sRGB"), "16": ("PNG", "16", ".png", "sRGB"),
           "half": ("OPEN_EXR", "16", ".exr", LINEAR), "float": ("OPEN_EXR", "32", ".exr", LINEAR)}
LINEAR_SPACES = ("ACEScg", "ACES2065-1", "scene_linear")  # scene-linear besides every "Linear …" space


def media_file(strip: Any) -> Optional[Path]:
    """The strip's first media file (image strip: its first element), None for scene and other strips."""
    if strip.type == "IMAGE" and len(strip.elements):
        return Path(bpy.path.abspath(strip.directory)) / strip.elements[0].filename
    if strip.type == "MOVIE":
        return Path(bpy.path.abspath(strip.filepath))
    if strip.type == "MOVIECLIP" and strip.clip is not None:
        return Path(bpy.path.abspath(strip.clip.filepath))
    return None


def _exr_is_float(path: Path) -> bool:
    """Whether an EXR stores 32-bit channels (its header's `channels` list; OpenEXR spec, pixel type 2 = FLOAT).
    Blender reads half and float alike, and the add-on has no OpenEXR module: the header is read here."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    pos = 8  # magic number, version
    while pos < len(head) and head[pos] != 0:
        name, _, rest = head[pos:].partition(b"\0")
        kind, _, rest = rest.partition(b"\0")
        size = struct.unpack_from("<i", rest)[0]
        value_at = pos + len(name) + len(kind) + 6
        if name == b"channels" and kind == b"chlist":
            ch, end = value_at, value_at + size - 1
            while ch < end:
                ch = head.index(b"\0", ch) + 1  # channel name
                if struct.unpack_from("<i", head, ch)[0] == 2:
                    return True
                ch += 16  # pixel type, pLinear + 3 reserved, x/y sampling
            return False
        pos = value_at + size
    return False


def _file_depth(path: Path) -> str:
    """"8", "16" (16-bit PNG/TIFF, a >8-bit movie: Blender decodes them to float), "half" or "float" (EXR)."""
    if path.suffix.lower() == ".exr":
        try:
            return "float" if _exr_is_float(path) else "half"
        except (OSError, ValueError, struct.error):  # a header this reader does not follow: float keeps either
            return "float"
    try:
        image = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError:  # a file Blender cannot read renders as Blender shows it (magenta): no depth to keep
        return "8"
    try:
        return "16" if image.is_float else "8"
    finally:
        bpy.data.images.remove(image)


def media_depth(strip: Any) -> str:
    """The export depth that keeps a (non-meta) strip's media, a key of FORMATS: "8" for scene strips (a
    render for the screen) and for media that cannot be read (the strip checks name those)."""
    path = media_file(strip)
    depth = _file_depth(path) if path is not None and path.is_file() else "8"
    name = strip.colorspace_settings.name if hasattr(strip, "colorspace_settings") else ""
    if depth in ("8", "16") and (name.lower().startswith("linear") or name in LINEAR_SPACES):
        return "float" if depth == "16" else "half"  # scene-linear: EXR; 16-bit linear needs more than half
    return depth


def deepest(depths: set[str]) -> str:
    """One export depth that keeps every one of `depths` (a meta's content)."""
    deep = depths - {"8"}
    return "8" if not deep else deep.pop() if len(deep) == 1 else "float"  # 16-bit and half: float keeps both
