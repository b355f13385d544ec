"""Clips and edit pairs with ground truth: the public API of the synthetic world.

A pair is a source clip (person P, motion A, scene S, camera C), a driving clip (person Q, motion B,
another scene and camera) and the ground-truth edit: P drawn at `align_poses(source, driving)` (the
driver's motion retargeted to P's body and placed as the aligner places it) in S seen through C, with
the driver's depth order and facing. Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from mf_backend.errors import InvalidParams
from mf_backend.pose.keypoints import PoseSequence
from mf_backend.pose.render import render_poses
from mf_backend.synthetic.draw import OWNER_TABLE, draw_person
from mf_backend.synthetic.motion import FACE_JOINTS, PARTS, Skeleton, pose_skeleton, sample_program
from mf_backend.synthetic.person import Person, sample_person
from mf_backend.synthetic.scene import Camera, render_background, sample_camera, sample_scene

DEFAULT_FPS = 24.0


@dataclass
class SyntheticClip:
    """One clip with its ground truth. Shapes: F frames of H×W."""

    frames: np.ndarray  # uint8 (F,H,W,3) RGB
    masks: np.ndarray  # float32 (F,H,W) in {0,1}: exactly the pixels of the person
    poses: PoseSequence  # exact keypoints; confidence 1 = in the frame (and, for the face, turned to the camera)
    pose_renders: np.ndarray  # uint8 (F,H,W,3) pose renders (render_poses of `poses`)
    visible: np.ndarray  # bool (F,18): present and not hidden by another part of the body
    background: np.ndarray  # uint8 (F,H,W,3): the same frames without the person (the clean plate)
    labels: np.ndarray  # uint8 (F,H,W): which body part each pixel shows (0 = background), see draw.py
    part_depth: np.ndarray  # float32 (F,len(PARTS)): painter's order of the parts (larger = farther)
    yaw: np.ndarray  # float32 (F,) radians, 0 = facing the camera
    px: np.ndarray  # float32 (F,) pixels per body unit (a standing person is about 1 unit tall)
    person: Person
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class AlignedPoses:
    poses: PoseSequence  # align_poses(source, driving, "first-frame")
    pose_renders: np.ndarray  # uint8 (F,H,W,3)


@dataclass
class SyntheticPair:
    source: SyntheticClip
    driving: SyntheticClip
    target_aligned: AlignedPoses
    gt_edited: SyntheticClip  # P performing the driver's motion in the source's scene and camera
    seed: int

    @property
    def target_aligned_poses(self) -> np.ndarray:
        """uint8 (F,H,W,3) aligned pose renders: what the folder `target_aligned_poses` holds."""
        return self.target_aligned.pose_renders


def parse_size(size: int | Sequence[int] | str) -> tuple[int, int]:
    """256 → (256,256); (H,W) → (H,W); "1080x1920" → (1080,1920) (height × width)."""
    if isinstance(size, str):
        parts = size.lower().replace("×", "x").split("x")
        try:
            vals = [int(p) for p in parts]
        except ValueError:
            raise InvalidParams(f"size {size!r} is not N or HxW", "e.g. --size 256 or --size 1080x1920") from None
        size = vals[0] if len(vals) == 1 else tuple(vals)
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(v) for v in size)
    if h < 16 or w < 16 or h > 8192 or w > 8192:
        raise InvalidParams(f"size {h}x{w} is out of range", "use a height and width between 16 and 8192 pixels")
    return h, w


def _rngs(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def make_clip(seed: int, frames: int = 24, size: int | Sequence[int] | str = 256, *, hands: bool = True,
              fps: float = DEFAULT_FPS, fit: bool = False, height_frac: Optional[float] = None,
              x_frac: Optional[float] = None, feet_frac: Optional[float] = None,
              camera_strength: float = 1.0, turn: Optional[float] = None) -> SyntheticClip:
    """One clip of one random person dancing in a random scene (e.g. for mask-model training).

    fit: keep the whole body inside every frame (the driving clips use this).
    height_frac: person height / frame height at frame 0 (default random 0.68–0.9).
    x_frac, feet_frac: where the person stands in frame 0, as fractions of width and height.
    """
    r_person, r_motion, r_scene, r_camera, r_place = _rngs(seed, 5)
    return _simulate(r_person, r_motion, r_scene, r_camera, r_place, frames, parse_size(size), hands, fps, fit,
                     height_frac, x_frac, feet_frac, camera_strength, turn)


def make_pair(seed: int, frames: int = 24, size: int | Sequence[int] | str = 256, *, hands: bool = True,
              fps: float = DEFAULT_FPS, height_frac: Optional[float] = None, x_frac: Optional[float] = None,
              feet_frac: Optional[float] = None, camera_strength: float = 1.0,
              driving_size: int | Sequence[int] | str | None = None) -> SyntheticPair:
    """A source clip, a driving clip and the ground-truth edit, all from `seed`.

    size: (H,W) of the source and the edit (int = square); driving_size defaults to the same.
    height_frac / x_frac / feet_frac place the source person (e.g. off-centre in a 1080×1920 frame).
    """
    from mf_backend.pose.align import align_poses

    if frames < 1:
        raise InvalidParams(f"frames must be >= 1, got {frames}", "ask for at least one frame")
    h, w = parse_size(size)
    dh, dw = parse_size(driving_size) if driving_size is not None else (h, w)
    rngs = _rngs(seed, 10)
    source = _simulate(*rngs[0:5], frames, (h, w), hands, fps, False, height_frac, x_frac, feet_frac,
                       camera_strength, None)
    driving = _simulate(*rngs[5:10], frames, (dh, dw), hands, fps, True, None, None, None, 0.3, None)
    aligned = align_poses(source.poses, driving.poses, mode="first-frame")
    # The edit: P at the aligned keypoints, with the driver's part order and facing, and P's median scale
    # (the aligner gives every bone P's median length).
    px = np.full(frames, float(np.median(source.px)), np.float32)
    drawn = draw_person(source.background, aligned.body, aligned.hands, driving.yaw, driving.part_depth, px,
                        source.person)
    aligned_images = render_poses(aligned)
    gt = SyntheticClip(
        frames=drawn.frames, masks=drawn.masks, poses=aligned, pose_renders=aligned_images,
        visible=_visibility(aligned.body, drawn.labels), background=source.background, labels=drawn.labels,
        part_depth=driving.part_depth, yaw=driving.yaw, px=px, person=source.person,
        info={"scene": source.info.get("scene"), "camera": source.info.get("camera")},
    )
    return SyntheticPair(source, driving, AlignedPoses(aligned, aligned_images), gt, int(seed))


def _simulate(r_person: np.random.Generator, r_motion: np.random.Generator, r_scene: np.random.Generator,
              r_camera: np.random.Generator, r_place: np.random.Generator, frames: int, size: tuple[int, int],
              hands: bool, fps: float, fit: bool, height_frac: Optional[float], x_frac: Optional[float],
              feet_frac: Optional[float], camera_strength: float, turn: Optional[float]) -> SyntheticClip:
    h, w = size
    person = sample_person(r_person)
    sk = pose_skeleton(person, sample_program(r_motion, frames, fps, turn))
    camera = sample_camera(r_camera, frames, h, w, strength=camera_strength)
    origin, scale = _place(sk, person, camera, h, w, r_place, fit, height_frac, x_frac, feet_frac)
    horizon = origin[1] - scale * r_scene.uniform(0.2, 0.6)  # the floor line behind the legs
    scene = sample_scene(r_scene, h, w, horizon, frames)
    body_xy = camera.apply(origin + scale * sk.body[..., :2].astype(np.float64))  # (F,18,2) frame pixels
    hand_xy = camera.apply(origin + scale * sk.hands[..., :2].astype(np.float64))  # (F,2,21,2)
    px = (camera.zoom * scale).astype(np.float32)

    face_seen = np.ones((frames, 18), bool)
    face_seen[:, FACE_JOINTS] = sk.face_seen
    draw_body = np.concatenate([body_xy, face_seen[..., None].astype(np.float64)], -1)
    draw_hands = np.concatenate([hand_xy, np.full(hand_xy.shape[:-1] + (1,), float(hands))], -1)
    background = render_background(scene, camera, h, w)
    drawn = draw_person(background, draw_body, draw_hands, sk.yaw, sk.part_depth, px, person)

    body_conf = (_inside(body_xy, h, w) & face_seen).astype(np.float32)
    hand_conf = (_inside(hand_xy, h, w) & hands).astype(np.float32)
    # Missing points (out of the frame, or a face point turned away) are all zeros, as the aligner writes them.
    poses = PoseSequence(np.concatenate([body_xy, np.ones_like(body_xy[..., :1])], -1) * body_conf[..., None],
                         np.concatenate([hand_xy, np.ones_like(hand_xy[..., :1])], -1) * hand_conf[..., None],
                         w, h, fps)
    return SyntheticClip(
        frames=drawn.frames, masks=drawn.masks, poses=poses, pose_renders=render_poses(poses),
        visible=_visibility(poses.body, drawn.labels), background=background, labels=drawn.labels,
        part_depth=sk.part_depth, yaw=sk.yaw, px=px, person=person,
        info={"scene": scene.style, "camera": camera.kind, "top": person.top, "bottom": person.bottom,
              "hair_long": person.hair_long},
    )


def _inside(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    return (xy[..., 0] >= 0) & (xy[..., 0] < w) & (xy[..., 1] >= 0) & (xy[..., 1] < h)


def _place(sk: Skeleton, person: Person, camera: Camera, h: int, w: int, rng: np.random.Generator, fit: bool,
           height_frac: Optional[float], x_frac: Optional[float],
           feet_frac: Optional[float]) -> tuple[np.ndarray, float]:
    """World position of the standing point and world pixels per body unit."""
    stand = person.standing_height
    hf = rng.uniform(0.68, 0.9) if height_frac is None else float(height_frac)
    xf = rng.uniform(0.4, 0.6) if x_frac is None else float(x_frac)
    ff = rng.uniform(0.9, 1.0) if feet_frac is None else float(feet_frac)
    zoom0 = float(camera.zoom[0])
    if not fit:
        hf = min(hf, ff - 0.03)  # keep the head in the frame
        q = hf * h / stand  # frame pixels per unit at frame 0
        return camera.inverse(0, np.array([xf * w, ff * h])), q / zoom0
    # Fit: the body's extent over the whole clip (units) inside the frame with a margin, for every camera frame.
    pts = np.concatenate([sk.body[..., :2].reshape(-1, 2), sk.hands[..., :2].reshape(-1, 2)], 0)
    lo = pts.min(0) - (0.08, person.head_r * 1.3)
    hi = np.maximum(pts.max(0), (0.0, 0.0)) + 0.08
    extent = hi - lo
    zmax, zmin = float(camera.zoom.max()), float(camera.zoom.min())
    q = min(hf * h / stand, 0.8 * h / extent[1], 0.8 * w / extent[0]) * zmin / zmax
    slack = (np.array([w, h]) - q * extent * zmax / zmin) / 2 * 0.5
    centre = np.array([w / 2, h / 2]) + rng.uniform(-1, 1, 2) * np.maximum(slack, 0)
    frame_origin = centre - q * (lo + hi) / 2
    return camera.inverse(0, frame_origin), q / zoom0


def _visibility(body: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(F,18) present, in the frame, and the pixel shows a part that owns the joint (not hidden by another)."""
    n_f, h, w = labels.shape
    x, y = np.floor(body[..., 0]).astype(np.int64), np.floor(body[..., 1]).astype(np.int64)
    ok = (body[..., 2] > 0) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    lab = labels[np.arange(n_f)[:, None], np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)]  # (F,18)
    return ok & OWNER_TABLE[np.arange(18)[None], lab]


# ---------------------------------------------------------------------------------------------- output


def write_pair(pair: SyntheticPair, out_dir: str | Path) -> Path:
    """Write a pair in the example-case layout (plus gt_edited_*), atomically: out_dir must not exist or be empty."""
    from mf_backend.files import atomic_output_dir
    from mf_backend.media import write_frames, write_masks

    with atomic_output_dir(Path(out_dir)) as tmp:
        s, d, g = pair.source, pair.driving, pair.gt_edited
        write_frames(s.frames, tmp / "source_images")
        write_frames(s.pose_renders, tmp / "source_poses")
        write_masks(s.masks, tmp / "source_masks")
        write_frames(d.frames, tmp / "target_images")
        write_frames(d.pose_renders, tmp / "target_poses")
        write_masks(d.masks, tmp / "target_masks")
        write_frames(pair.target_aligned.pose_renders, tmp / "target_aligned_poses")
        write_frames(g.frames, tmp / "gt_edited_images")
        write_masks(g.masks, tmp / "gt_edited_masks")
        s.poses.save(tmp / "source_keypoints.json")
        d.poses.save(tmp / "target_keypoints.json")
        pair.target_aligned.poses.save(tmp / "target_aligned_keypoints.json")
        info = {
            "generator": "mf_backend.synthetic", "seed": pair.seed, "frames": len(s), "parts": list(PARTS),
            "source": s.info, "driving": d.info,
            "visible": {"source": s.visible.astype(int).tolist(), "target": d.visible.astype(int).tolist(),
                        "gt_edited": g.visible.astype(int).tolist()},
            "yaw": {"source": np.round(s.yaw, 4).tolist(), "target": np.round(d.yaw, 4).tolist()},
        }
        (tmp / "synthetic_info.json").write_text(json.dumps(info))
    return Path(out_dir)


def preview_sheet(pair: SyntheticPair, columns: int = 6, tile: int = 160) -> np.ndarray:
    """uint8 RGB contact sheet: rows = source, its poses, driving, its poses, aligned poses, GT edit, GT mask."""
    f = len(pair.source)
    idx = np.unique(np.linspace(0, f - 1, min(columns, f)).round().astype(int))
    gt_overlay = pair.gt_edited.frames.astype(np.float32)
    gt_overlay = (gt_overlay * 0.35 + pair.gt_edited.masks[..., None] * np.array([255, 60, 60]) * 0.65)
    rows = [
        ("source", pair.source.frames), ("source pose", pair.source.pose_renders),
        ("driving", pair.driving.frames), ("driving pose", pair.driving.pose_renders),
        ("aligned pose", pair.target_aligned.pose_renders), ("GT edit", pair.gt_edited.frames),
        ("GT mask", gt_overlay.clip(0, 255).astype(np.uint8)),
    ]
    label_w = 110
    out_rows = []
    for name, clip in rows:
        h, w = clip.shape[1:3]
        th, tw = tile, max(1, int(round(tile * w / h)))
        tiles = [cv2.resize(clip[i], (tw, th), interpolation=cv2.INTER_AREA) for i in idx]
        label = np.full((th, label_w, 3), 255, np.uint8)
        cv2.putText(label, name, (4, th // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        sep = np.full((th, 2, 3), 255, np.uint8)
        out_rows.append(np.concatenate([label] + [x for t in tiles for x in (t, sep)], 1))
    width = max(r.shape[1] for r in out_rows)
    out_rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in out_rows]
    return np.concatenate(out_rows, 0)
