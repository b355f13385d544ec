"""Procedural people: body proportions, skin/hair/clothing colours and tileable clothing textures.

Lengths are in body units (a standing person is about 1.0 tall, sole to crown); the drawer turns them
into pixels with a per-frame scale `px` (pixels per body unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TILE = 64  # clothing texture tile (pixels), tileable so warpAffine can wrap it
TILE_DENSITY = 4.0  # tiles per body unit: one tile covers a quarter of the body height

SKIN_TONES = np.array([  # RGB, light to dark
    (255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96), (160, 104, 70), (110, 70, 45), (80, 52, 36),
], np.float32)
HAIR_COLOURS = np.array([
    (20, 16, 14), (45, 30, 20), (90, 60, 35), (150, 110, 60), (205, 170, 110), (140, 60, 30), (170, 170, 170),
], np.float32)
TOPS = ("tank", "short", "long")  # sleeves: none, upper arm, whole arm
BOTTOMS = ("pants", "shorts", "skirt")


@dataclass
class Person:
    """One synthetic person: proportions (body units) and appearance."""

    # segment lengths
    torso: float  # mid-hip → neck
    neck: float  # neck keypoint → head centre
    head_r: float  # head radius
    shoulder_half: float
    hip_half: float
    upper_arm: float
    forearm: float
    hand: float  # wrist → middle fingertip
    thigh: float
    shin: float
    foot: float  # ankle → toe
    ankle_h: float  # ankle height above the sole
    # half-widths (radii)
    r_neck: float
    r_upper_arm: float
    r_forearm: float
    r_thigh: float
    r_shin: float
    r_foot: float
    torso_half_depth: float  # half the chest thickness: the torso's width seen from the side
    # appearance
    skin: np.ndarray  # (3,) uint8 RGB
    hair: np.ndarray
    shoes: np.ndarray
    eyes: np.ndarray
    hair_long: bool
    top: str  # one of TOPS
    bottom: str  # one of BOTTOMS
    shirt_tex: np.ndarray  # (TILE,TILE,3) uint8
    pants_tex: np.ndarray  # (TILE,TILE,3) uint8

    @property
    def standing_height(self) -> float:
        return self.ankle_h + self.shin + self.thigh + self.torso + self.neck + self.head_r


def sample_person(rng: np.random.Generator) -> Person:
    """A random person; every draw comes from `rng`, so the same generator state gives the same person."""

    def v(x: float, spread: float = 0.12) -> float:
        return float(x * rng.uniform(1 - spread, 1 + spread))

    limb_w = rng.uniform(0.8, 1.25)  # slim ↔ broad, shared by all limbs so the body stays coherent
    skin = _mix(rng, SKIN_TONES)
    hair = _mix(rng, HAIR_COLOURS)
    top, bottom = str(rng.choice(TOPS)), str(rng.choice(BOTTOMS, p=[0.5, 0.25, 0.25]))
    shirt_rgb, pants_rgb = _cloth_colour(rng), _cloth_colour(rng)
    return Person(
        torso=v(0.30), neck=v(0.10, 0.08), head_r=v(0.066, 0.08), shoulder_half=v(0.11), hip_half=v(0.08),
        upper_arm=v(0.18), forearm=v(0.15), hand=v(0.10, 0.08), thigh=v(0.25), shin=v(0.25),
        foot=v(0.12, 0.08), ankle_h=0.04,
        r_neck=0.028 * limb_w, r_upper_arm=0.036 * limb_w, r_forearm=0.029 * limb_w, r_thigh=0.056 * limb_w,
        r_shin=0.040 * limb_w, r_foot=0.026 * limb_w, torso_half_depth=v(0.065) * limb_w,
        skin=skin, hair=hair, shoes=_cloth_colour(rng, dark=True), eyes=np.array((30, 25, 25), np.uint8),
        hair_long=bool(rng.random() < 0.5), top=top, bottom=bottom,
        shirt_tex=make_texture(rng, shirt_rgb), pants_tex=make_texture(rng, pants_rgb, denim=rng.random() < 0.3),
    )


def _mix(rng: np.random.Generator, palette: np.ndarray) -> np.ndarray:
    """A colour between two neighbouring palette entries."""
    i = int(rng.integers(0, len(palette) - 1))
    t = rng.random()
    return np.clip(palette[i] * (1 - t) + palette[i + 1] * t, 0, 255).astype(np.uint8)


def _cloth_colour(rng: np.random.Generator, dark: bool = False) -> np.ndarray:
    import colorsys

    h, s = rng.random(), rng.uniform(0.2, 0.95)
    val = rng.uniform(0.1, 0.4) if dark else rng.uniform(0.25, 1.0)
    return (np.array(colorsys.hsv_to_rgb(h, s, val)) * 255).astype(np.uint8)


def make_texture(rng: np.random.Generator, base: np.ndarray, denim: bool = False) -> np.ndarray:
    """A tileable (TILE,TILE,3) cloth pattern: plain, stripes, checks, dots or blotchy noise, plus fine grain."""
    yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float32)
    second = _cloth_colour(rng).astype(np.float32)
    kind = "noise" if denim else str(rng.choice(("plain", "stripes", "checks", "dots", "noise")))
    period = float(rng.choice((8, 16, 32)))  # divides TILE, so the tile wraps seamlessly
    if kind == "stripes":
        coord = xx if rng.random() < 0.35 else yy
        if rng.random() < 0.3:
            coord = (xx + yy) % TILE  # diagonal, still tileable
        alpha = (np.floor(coord / (period / 2)) % 2).astype(np.float32)
    elif kind == "checks":
        alpha = ((np.floor(xx / (period / 2)) + np.floor(yy / (period / 2))) % 2).astype(np.float32)
    elif kind == "dots":
        c = period / 2
        d2 = ((xx % period) - c) ** 2 + ((yy % period) - c) ** 2
        alpha = (d2 < (period * 0.22) ** 2).astype(np.float32)
    elif kind == "noise":
        alpha = _tileable_noise(rng, 6.0 if denim else 3.0)
        second = base.astype(np.float32) * (0.55 if denim else 0.6)
    else:
        alpha = np.zeros((TILE, TILE), np.float32)
    tex = base.astype(np.float32)[None, None] * (1 - alpha[..., None]) + second[None, None] * alpha[..., None]
    grain = _tileable_noise(rng, 20.0) - 0.5
    tex *= 1.0 + 0.12 * grain[..., None]
    return np.clip(tex, 0, 255).astype(np.uint8)


def _tileable_noise(rng: np.random.Generator, cutoff: float) -> np.ndarray:
    """(TILE,TILE) float32 in [0,1]: low-passed white noise through the FFT, hence periodic (tileable)."""
    f = np.fft.fftfreq(TILE) * TILE
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    spec = np.fft.fft2(rng.standard_normal((TILE, TILE))) * np.exp(-(r / cutoff) ** 2)
    n = np.real(np.fft.ifft2(spec))
    n = (n - n.min()) / max(float(n.max() - n.min()), 1e-6)
    return n.astype(np.float32)
