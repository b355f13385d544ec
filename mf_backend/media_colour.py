"""Colour: the source's encoding ↔ the model's working space, through OpenColorIO.

The model works in display-referred sRGB (8-bit, as it was trained). A clip in another colour space
(scene-linear EXR, a camera log curve, ACEScg …) is converted to the working space for the model, and
the edited pixels are converted back to the clip's own space (`from_working`); nothing else is
converted, so the pixels outside the edit stay as they were.

Colour spaces are named as in the OCIO config: `$OCIO` when set, else OCIO's built-in ACES studio config.
Blender's names (`sRGB`, `Linear Rec.709`, `Non-Color`, `ACEScg`, `Rec.1886` …) and a few short aliases
are accepted too. Scene-linear values above 1 (highlights) are clipped in the working space: the model
never saw them, and the edit gives back values in 0..1 of the clip's space.

HDR video (Rec.2100 PQ / HLG display spaces) crosses into scene light through the config's default view
transform (the studio config's 'Un-tone-mapped': a matrix), where the config puts 1.0 at 100 nits. HDR
grades put SDR/diffuse white at 203 nits (ITU-R BT.2408: PQ 58 %, HLG 75 %), so the conversion also scales
by 100/203: diffuse white lands on sRGB white, and only what is brighter than it clips in the working space.

Pixel scales: uint8 0..255, uint16 0..65535, float as stored (1.0 = white for display-referred data).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np

from mf_backend.errors import BadInputMedia

BUILTIN_CONFIG = "studio-config-v2.2.0_aces-v1.3_ocio-v2.4"
# Blender's colour-space names and short aliases → studio-config names (tried before the config's own).
ALIASES = {
    "srgb": "sRGB Encoded Rec.709 (sRGB)",
    "linear": "Linear Rec.709 (sRGB)",
    "linear rec.709": "Linear Rec.709 (sRGB)",
    "scene_linear": "Linear Rec.709 (sRGB)",
    "non-color": "Raw",
    "rec.1886": "Gamma 2.4 Encoded Rec.709",
    "bt709": "Gamma 2.4 Encoded Rec.709",
    "linear rec.2020": "Linear Rec.2020",
    "display p3": "sRGB Encoded P3-D65",
    "acescg": "ACEScg",
    "aces2065-1": "ACES2065-1",
    "rec.2100-pq": "Rec.2100-PQ - Display",
    "pq": "Rec.2100-PQ - Display",
    "rec.2100-hlg": "Rec.2100-HLG - Display",
    "hlg": "Rec.2100-HLG - Display",
}
# HDR video spaces (studio-config names) and where their diffuse white sits in the config's scene light.
HDR_SPACES = ("Rec.2100-PQ - Display", "Rec.2100-HLG - Display")  # PQ, HLG
HDR_WHITE = 203 / 100  # BT.2408 reference white (203 nits) over the config's 1.0 (100 nits)
WORKING_CANDIDATES = ("sRGB Encoded Rec.709 (sRGB)", "srgb_tx", "sRGB - Texture", "Utility - sRGB - Texture", "sRGB")
# What Blender calls each space the backend writes, for the add-on's import (unknown → the OCIO name).
BLENDER_NAMES = {"sRGB Encoded Rec.709 (sRGB)": "sRGB", "Linear Rec.709 (sRGB)": "Linear Rec.709",
                 "Raw": "Non-Color", "ACEScg": "ACEScg", "ACES2065-1": "ACES2065-1",
                 "Gamma 2.4 Encoded Rec.709": "Rec.1886", "Linear Rec.2020": "Linear Rec.2020",
                 "sRGB Encoded P3-D65": "Display P3", "Rec.2100-PQ - Display": "Rec.2100-PQ",
                 "Rec.2100-HLG - Display": "Rec.2100-HLG"}


@functools.lru_cache(maxsize=None)
def config(path: Optional[str] = None):
    """The OCIO config: `path`, else `$OCIO`, else the built-in ACES studio config."""
    import PyOpenColorIO as ocio

    path = path or os.environ.get("OCIO")
    if not path:
        return ocio.Config.CreateFromBuiltinConfig(BUILTIN_CONFIG)
    try:
        return ocio.Config.CreateFromFile(path)
    except Exception as exc:  # OCIO raises its own Exception type for any bad config
        raise BadInputMedia(f"cannot load the OCIO config '{path}' ($OCIO): {exc}",
                            "fix the config or unset OCIO to use the built-in ACES studio config") from exc


def resolve(name: str) -> str:
    """A colour-space name or alias → the config's canonical name; a clear error when unknown."""
    cfg = config()
    for candidate in (ALIASES.get(name.strip().lower()), name):
        cs = cfg.getColorSpace(candidate) if candidate else None
        if cs is not None:
            return cs.getName()
    known = ", ".join(sorted(s.getName() for s in cfg.getColorSpaces()))
    raise BadInputMedia(f"unknown colour space {name!r} in the OCIO config",
                        f"pass --input-colorspace with one of: sRGB, Linear Rec.709, {known}")


@functools.lru_cache(maxsize=None)
def working_space() -> str:
    """The model's space: sRGB-encoded Rec.709 in the active config."""
    cfg = config()
    for name in WORKING_CANDIDATES:
        cs = cfg.getColorSpace(name)
        if cs is not None:
            return cs.getName()
    raise BadInputMedia("the OCIO config ($OCIO) has no sRGB texture colour space",
                        "add an 'sRGB - Texture' space to the config or unset OCIO")


def blender_name(space: str) -> str:
    """The name Blender's own OCIO config uses for `space` (the add-on sets it on imported strips)."""
    return BLENDER_NAMES.get(space, space)


def is_scene_linear(space: str) -> bool:
    """True for linear spaces (values above 1 are meaningful: store them as float)."""
    return space.startswith("Linear") or space in ("ACEScg", "ACES2065-1") or "linear" in space.lower()


def is_hdr(space: str) -> bool:
    """True for the Rec.2100 PQ / HLG video spaces (stored as 10-bit or deeper, diffuse white at 203 nits)."""
    return space in HDR_SPACES


@functools.lru_cache(maxsize=64)
def _processor(src: str, dst: str):
    import PyOpenColorIO as ocio

    cfg = config()
    if not (is_hdr(src) or is_hdr(dst)):
        return cfg.getProcessor(src, dst).getDefaultCPUProcessor()
    # through scene-linear light, rescaled so that 203-nit white is 1.0 there (see the module docstring)
    lin = cfg.getColorSpace(ocio.ROLE_SCENE_LINEAR).getName()
    scale = lambda k: ocio.MatrixTransform.Scale([k, k, k, 1.0])  # noqa: E731 - uniform, so any linear space
    steps = []
    if is_hdr(src):
        steps += [ocio.ColorSpaceTransform(src, lin), scale(1 / HDR_WHITE)]
        src = lin
    if is_hdr(dst):
        steps += [ocio.ColorSpaceTransform(src, lin), scale(HDR_WHITE), ocio.ColorSpaceTransform(lin, dst)]
    else:
        steps.append(ocio.ColorSpaceTransform(src, dst))
    return cfg.getProcessor(ocio.GroupTransform(steps)).getDefaultCPUProcessor()


def convert(rgb: np.ndarray, src: str, dst: str) -> np.ndarray:
    """float32 (...,3) from colour space `src` to `dst` (canonical names), as a new array."""
    out = np.ascontiguousarray(rgb, dtype=np.float32).copy()
    if src != dst and out.size:
        _processor(src, dst).applyRGB(out.reshape(-1, 3))  # in place, all pixels in one call
    return out


def scale_of(dtype: np.dtype) -> float:
    """The stored value of white: 255, 65535, or 1.0 for float."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def to_float(pixels: np.ndarray) -> np.ndarray:
    """Stored pixels → float32, 1.0 = the stored value of white."""
    return np.asarray(pixels, np.float32) / np.float32(scale_of(pixels.dtype))


def from_float(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 with 1.0 = white → stored pixels of `dtype` (integers rounded and clipped)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.asarray(x).astype(dtype)
    s = scale_of(dtype)
    return np.clip(np.rint(np.asarray(x, np.float32) * s), 0, s).astype(dtype)


def to_working(pixels: np.ndarray, space: str) -> np.ndarray:
    """Stored RGB (..,3) of any dtype in `space` → uint8 sRGB, what the model sees."""
    if space == working_space() and pixels.dtype in (np.uint8, np.uint16):  # no colour change: integers only
        if pixels.dtype == np.uint8:
            return np.ascontiguousarray(pixels)
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)  # exact 0..65535 → 0..255 rounding
    return from_float(np.clip(convert(to_float(pixels), space, working_space()), 0.0, 1.0), np.uint8)


def from_working(rgb255: np.ndarray, space: str, dtype: np.dtype) -> np.ndarray:
    """float32 working-space RGB in 0..255 (composite's edited pixels) → float32 in `dtype`'s stored
    scale and `space` (not rounded: composite blends, then rounds once)."""
    x = convert(np.asarray(rgb255, np.float32) * np.float32(1 / 255), working_space(), space)
    x *= np.float32(scale_of(dtype))
    return np.clip(x, 0.0, scale_of(dtype), out=x) if np.dtype(dtype).kind in "ui" else x
