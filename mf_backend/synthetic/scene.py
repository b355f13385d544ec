"""Scenes and cameras: a textured world larger than the frame, moving background things, camera paths.

World coordinates are the pixels of the scene image. A camera is one affine map per frame, world →
frame (zoom about the frame centre plus pan and shake), so the background of frame f is one
`cv2.warpAffine` of the world image, and a point of the person goes through the same map.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORLD_MARGIN = 1.6  # the world image is this many frames wide and tall: room for pan and zoom-out


@dataclass
class Mover:
    """A background object moving in world coordinates (always behind the person)."""

    kind: str  # "ball" or "box"
    colour: tuple[int, int, int]
    size: float  # world pixels (radius or half side)
    start: np.ndarray  # (2,)
    velocity: np.ndarray  # (2,) world pixels per frame
    bob: float  # vertical oscillation amplitude, world pixels
    freq: float  # radians per frame

    def positions(self, frames: int) -> np.ndarray:
        t = np.arange(frames, dtype=np.float64)[:, None]
        pos = self.start[None] + self.velocity[None] * t
        pos[:, 1] -= self.bob * np.abs(np.sin(self.freq * t[:, 0]))
        return pos


@dataclass
class Scene:
    image: np.ndarray  # uint8 (Hw,Ww,3) RGB world
    movers: list[Mover]
    style: str


@dataclass
class Camera:
    affine: np.ndarray  # (F,2,3) world → frame pixels
    zoom: np.ndarray  # (F,) frame pixels per world pixel
    kind: str

    def apply(self, pts: np.ndarray) -> np.ndarray:
        """World points (F,...,2) → frame pixels (F,...,2)."""
        a = self.affine
        shape = pts.shape
        flat = pts.reshape(shape[0], -1, 2)
        out = np.einsum("fij,fnj->fni", a[:, :, :2], flat) + a[:, None, :, 2]
        return out.reshape(shape)

    def inverse(self, f: int, pt: np.ndarray) -> np.ndarray:
        """One frame point (2,) → world (2,)."""
        a = self.affine[f]
        return np.linalg.solve(a[:, :2], pt - a[:, 2])


def world_size(height: int, width: int) -> tuple[int, int]:
    return int(round(height * WORLD_MARGIN)), int(round(width * WORLD_MARGIN))


def sample_camera(rng: np.random.Generator, frames: int, height: int, width: int, strength: float = 1.0,
                  kind: str | None = None) -> Camera:
    """A camera path: static, pan, zoom, pan+zoom or handheld shake, scaled by `strength` (0..1)."""
    wh, ww = world_size(height, width)
    kind = kind or str(rng.choice(("static", "pan", "zoom", "pan+zoom", "handheld"), p=[0.3, 0.25, 0.15, 0.15, 0.15]))
    if strength <= 0:
        kind = "static"
    t = np.linspace(0.0, 1.0, frames)
    ease = 3 * t**2 - 2 * t**3
    zoom0 = rng.uniform(1.0, 1.12)
    zoom = np.full(frames, zoom0)
    centre = np.tile(np.array([ww / 2, wh / 2]) + rng.uniform(-0.04, 0.04, 2) * (width, height), (frames, 1))
    if "pan" in kind:
        centre += ease[:, None] * rng.uniform(-1, 1, 2) * (0.15 * width, 0.05 * height) * strength
    if "zoom" in kind:
        zoom *= 1.0 + ease * rng.uniform(-0.18, 0.2) * strength
    if kind == "handheld" or rng.random() < 0.2:
        walk = np.cumsum(rng.standard_normal((frames, 2)), 0)
        walk = cv2.GaussianBlur(walk.astype(np.float64), (1, 5), 0) if frames >= 5 else walk
        centre += walk * 0.004 * min(height, width) * strength
    affine = np.zeros((frames, 2, 3))
    affine[:, 0, 0] = affine[:, 1, 1] = zoom
    affine[:, :, 2] = np.array([width / 2, height / 2])[None] - zoom[:, None] * centre
    return Camera(affine, zoom, kind)


def sample_scene(rng: np.random.Generator, height: int, width: int, horizon: float, frames: int) -> Scene:
    """A world for a (height,width) frame; `horizon` is the world y of the floor line behind the person."""
    wh, ww = world_size(height, width)
    style = str(rng.choice(("room", "street", "studio")))
    img = {"room": _room, "street": _street, "studio": _studio}[style](rng, wh, ww, int(np.clip(horizon, 2, wh - 2)))
    grain = (rng.standard_normal((128, 128, 1)) * 4).astype(np.float32)  # tiled: cheap at 1080p too
    img += np.tile(grain, (wh // 128 + 1, ww // 128 + 1, 1))[:wh, :ww]
    img = np.clip(img, 0, 255).astype(np.uint8)
    movers = []
    unit = min(height, width)
    for _ in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(("ball", "box")))
        size = unit * rng.uniform(0.03, 0.09)
        start = np.array([rng.uniform(0.15, 0.85) * ww, rng.uniform(0.2, 0.95) * wh])
        speed = unit * rng.uniform(0.004, 0.02) * rng.choice((-1, 1))
        velocity = np.array([speed, rng.uniform(-0.3, 0.3) * abs(speed)])
        colour = tuple(int(v) for v in rng.integers(30, 256, 3))
        bob = unit * rng.uniform(0, 0.12) if kind == "ball" else 0.0
        movers.append(Mover(kind, colour, size, start, velocity, bob, rng.uniform(0.1, 0.4)))
    return Scene(img, movers, style)


def render_background(scene: Scene, camera: Camera, height: int, width: int) -> np.ndarray:
    """(F,H,W,3) uint8: the world seen through the camera, with the moving objects."""
    frames = len(camera.zoom)
    out = np.empty((frames, height, width, 3), np.uint8)
    mover_pos = [camera.apply(m.positions(frames)) for m in scene.movers]
    for f in range(frames):
        cv2.warpAffine(scene.image, camera.affine[f], (width, height), dst=out[f], flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT)
        for m, pos in zip(scene.movers, mover_pos):
            c = (int(round(pos[f, 0] * 16)), int(round(pos[f, 1] * 16)))
            r = int(round(m.size * camera.zoom[f] * 16))
            if m.kind == "ball":
                cv2.circle(out[f], c, r, m.colour, -1, cv2.LINE_AA, 4)
            else:
                cv2.rectangle(out[f], (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), m.colour, -1, cv2.LINE_AA, 4)
    return out


# ---------------------------------------------------------------------------------------------- worlds


def _noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """(h,w) smooth noise in [0,1] from a coarse random grid."""
    ch, cw = max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))
    return cv2.resize(rng.random((ch, cw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _colour(rng: np.random.Generator, lo: float = 40, hi: float = 230) -> np.ndarray:
    return rng.uniform(lo, hi, 3).astype(np.float32)


def _shade(base: np.ndarray, h: int, w: int, noise: np.ndarray, amount: float) -> np.ndarray:
    return base[None, None] * (1 + np.float32(amount) * (noise[..., None] - np.float32(0.5)))


def _room(rng: np.random.Generator, h: int, w: int, horizon: int) -> np.ndarray:
    wall = _shade(_colour(rng, 90, 235), horizon, w, _noise(rng, horizon, w, 6), 0.25)
    yy, xx = np.arange(horizon)[:, None], np.arange(w)[None, :]
    pattern = rng.choice(("plain", "stripes", "bricks"))
    if pattern == "stripes":
        period = max(4, int(w * rng.uniform(0.02, 0.06)))
        wall *= np.where((xx // period) % 2 == 0, 1.0, 0.88).astype(np.float32)[..., None]
    elif pattern == "bricks":
        bh = max(3, int(h * rng.uniform(0.02, 0.04)))
        bw = bh * 3
        row = yy // bh
        mortar = (yy % bh < max(1, bh // 6)) | (((xx + (row % 2) * bw // 2) % bw) < max(1, bh // 6))
        wall = np.where(mortar[..., None], wall * 0.6 + 90, wall)
    floor_h = h - horizon
    floor = _shade(_colour(rng, 50, 200), floor_h, w, _noise(rng, floor_h, w, 10), 0.3)
    if rng.random() < 0.6:  # planks
        plank = max(2, int(h * rng.uniform(0.015, 0.04)))
        bands = rng.uniform(0.85, 1.1, floor_h // plank + 1)
        floor *= np.repeat(bands, plank)[:floor_h, None, None].astype(np.float32)
    else:  # tiles
        tile = max(4, int(w * rng.uniform(0.04, 0.1)))
        fy, fx = np.arange(floor_h)[:, None], np.arange(w)[None, :]
        floor *= np.where(((fx // tile) + (fy // tile)) % 2 == 0, 1.0, 0.8).astype(np.float32)[..., None]
    img = np.concatenate([wall, floor], 0)
    img[max(horizon - max(2, h // 80), 0):horizon] *= 0.55  # skirting board
    for _ in range(int(rng.integers(2, 6))):  # windows, posters, doors
        rw, rh = int(w * rng.uniform(0.05, 0.18)), int(h * rng.uniform(0.08, 0.3))
        x0, y0 = int(rng.uniform(0, w - rw)), int(rng.uniform(0, max(horizon - rh, 1)))
        img[y0:y0 + rh, x0:x0 + rw] = _shade(_colour(rng), rh, rw, _noise(rng, rh, rw, 4), 0.4)[:rh, :rw]
        cv2.rectangle(img, (x0, y0), (x0 + rw - 1, y0 + rh - 1), (40.0, 40.0, 40.0), max(1, h // 200))
    return img


def _street(rng: np.random.Generator, h: int, w: int, horizon: int) -> np.ndarray:
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    top, bottom = np.array([70, 130, 210], np.float32), np.array([190, 215, 240], np.float32)
    sky = np.broadcast_to(top * (1 - t) + bottom * t, (horizon, w, 3)).copy()
    x = 0
    while x < w:  # buildings standing on the horizon
        bw = int(w * rng.uniform(0.08, 0.25))
        bh = int(horizon * rng.uniform(0.3, 0.95))
        colour = _colour(rng, 60, 220)
        block = _shade(colour, bh, bw, _noise(rng, bh, bw, 4), 0.2)
        yy, xx = np.arange(bh)[:, None], np.arange(bw)[None, :]
        win = max(3, int(h * rng.uniform(0.02, 0.04)))
        windows = ((yy % (2 * win)) > win // 2) & ((xx % (2 * win)) > win // 2)
        block = np.where(windows[..., None], block * np.float32(rng.uniform(0.4, 0.7)), block)
        sky[horizon - bh:horizon, x:x + bw] = block[:, : max(0, min(bw, w - x))]
        x += bw
    ground_h = h - horizon
    ground = _shade(_colour(rng, 60, 140), ground_h, w, _noise(rng, ground_h, w, 16), 0.35)
    line_y = int(ground_h * rng.uniform(0.3, 0.7))
    ground[line_y:line_y + max(1, h // 100)] = 225.0
    return np.concatenate([sky, ground], 0)


def _studio(rng: np.random.Generator, h: int, w: int, horizon: int) -> np.ndarray:
    a, b = _colour(rng, 120, 240), _colour(rng, 60, 200)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).copy()
    img *= 1 + 0.2 * (_noise(rng, h, w, 5)[..., None] - 0.5)
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    vignette = 1 - 0.25 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 4
    img[horizon:] *= 0.9
    img *= vignette[..., None]
    return img
