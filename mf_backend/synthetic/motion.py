"""Dance-like motion: smooth joint-angle programs → a 3D skeleton → OpenPose-18 points, depths and yaw.

Body-local axes: x = the person's left, y = down, z = away from the camera when the person faces it
(yaw 0). Yaw turns the body about the vertical axis through the hips; the image is a weak-perspective
(orthographic) view, so a joint's image position in body units is its (x, y) and z only orders parts.
Everything is vectorised over frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mf_backend.synthetic.person import Person

# Parts drawn as one piece each, in this order in `part_depth` (F,P). The drawer uses the same list.
PARTS = (
    "hair_back", "torso", "neck", "head",
    "r_upper_arm", "r_forearm", "r_hand", "l_upper_arm", "l_forearm", "l_hand",
    "r_thigh", "r_shin", "r_foot", "l_thigh", "l_shin", "l_foot", "skirt",
)
P = {name: i for i, name in enumerate(PARTS)}

# Face points around the head centre, in head radii (local axes), and the threshold on
# (outward normal · direction to the camera) above which a detector would still see them.
FACE_OFFSETS = np.array([
    (0.0, 0.10, -0.95),  # 0 nose
    (-0.35, -0.15, -0.80),  # 14 r_eye
    (0.35, -0.15, -0.80),  # 15 l_eye
    (-0.90, 0.0, 0.05),  # 16 r_ear
    (0.90, 0.0, 0.05),  # 17 l_ear
], np.float32)
FACE_JOINTS = (0, 14, 15, 16, 17)
FACE_SEEN = np.array([-0.1, 0.05, 0.05, -0.45, -0.45], np.float32)

# 21-point hand template (right hand): (along the forearm, towards the thumb) in hand lengths.
HAND_TEMPLATE = np.array([
    (0.0, 0.0),
    (0.15, 0.22), (0.30, 0.35), (0.45, 0.42), (0.58, 0.47),  # thumb
    (0.45, 0.15), (0.65, 0.17), (0.78, 0.18), (0.90, 0.19),  # index
    (0.47, 0.03), (0.69, 0.03), (0.84, 0.03), (0.97, 0.03),  # middle
    (0.45, -0.08), (0.65, -0.09), (0.78, -0.10), (0.88, -0.11),  # ring
    (0.40, -0.18), (0.55, -0.21), (0.65, -0.23), (0.74, -0.25),  # pinky
], np.float32)
_KNUCKLE = np.array([0, 1, 2, 2, 2, 5, 5, 5, 5, 9, 9, 9, 9, 13, 13, 13, 13, 17, 17, 17, 17])  # each point's knuckle


@dataclass
class Skeleton:
    """A posed body over F frames, in body units relative to the standing point (between the feet, on the floor).

    body:  (F,18,3) x, y (image axes, body units), z (depth, + = farther)
    hands: (F,2,21,3) same, 0 = right, 1 = left
    face_seen: (F,5) bool, which of nose/eyes/ears (FACE_JOINTS order) face the camera enough to be seen
    part_depth: (F,len(PARTS)) depth of each drawn part, larger = farther (painter's order)
    yaw: (F,) radians, 0 = facing the camera
    """

    body: np.ndarray
    hands: np.ndarray
    face_seen: np.ndarray
    part_depth: np.ndarray
    yaw: np.ndarray


def _smooth(rng: np.random.Generator, t: np.ndarray, base: float, amp: float, beat: float) -> np.ndarray:
    """base + a sum of two sinusoids on the beat (and a half/double beat): a smooth, dance-like curve."""
    out = np.full_like(t, base)
    for mult in rng.choice((0.5, 1.0, 2.0), size=2, replace=False):
        out += amp * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * beat * mult * t + rng.uniform(0, 2 * np.pi))
    return out


def sample_program(rng: np.random.Generator, frames: int, fps: float = 24.0,
                   turn: float | None = None) -> dict[str, np.ndarray]:
    """Joint-angle curves (radians, (F,) each) and root motion for one clip.

    turn: probability of a large turn (90°..360°) during the clip; default 0.35.
    """
    t = np.arange(frames, dtype=np.float64) / fps
    beat = rng.uniform(0.6, 1.5)  # Hz
    d = np.radians
    c: dict[str, np.ndarray] = {}
    style = rng.choice(("free", "mirror", "alternate"))
    for side in ("r", "l"):
        if side == "l" and style != "free":
            sign = 1.0 if style == "mirror" else -1.0
            for k in ("abd", "flex", "elbow"):
                base = c[f"r_{k}"].mean()
                c[f"l_{k}"] = base + sign * (c[f"r_{k}"] - base)
            c["l_twist"] = c["r_twist"]
            continue
        c[f"{side}_abd"] = _smooth(rng, t, d(rng.uniform(-15, 110)), d(rng.uniform(10, 60)), beat)
        c[f"{side}_flex"] = _smooth(rng, t, d(rng.uniform(-20, 60)), d(rng.uniform(0, 45)), beat)
        c[f"{side}_elbow"] = np.clip(_smooth(rng, t, d(rng.uniform(0, 90)), d(rng.uniform(0, 50)), beat), 0, d(150))
        c[f"{side}_twist"] = np.full_like(t, rng.uniform(-0.5, 2.0))  # plane the elbow bends in
    squat = rng.random() < 0.35
    knee_common = np.clip(_smooth(rng, t, d(rng.uniform(10, 35)), d(rng.uniform(10, 35)), beat), 0, d(100))
    for i, side in enumerate(("r", "l")):
        c[f"{side}_labd"] = np.clip(_smooth(rng, t, d(rng.uniform(2, 14)), d(rng.uniform(0, 10)), beat), d(-5), d(40))
        step = np.clip(np.sin(2 * np.pi * beat * t + np.pi * i + rng.uniform(-0.3, 0.3)), 0, None)
        lift = d(rng.uniform(0, 45)) * step
        if squat:
            c[f"{side}_knee"] = knee_common
            c[f"{side}_lflex"] = knee_common * 0.55 + lift * 0.3
        else:
            c[f"{side}_knee"] = np.clip(d(rng.uniform(0, 12)) + lift * 1.2, 0, d(120))
            c[f"{side}_lflex"] = d(rng.uniform(-5, 8)) + lift
        c[f"{side}_curl"] = np.clip(_smooth(rng, t, rng.uniform(0.1, 0.6), 0.3, beat), 0, 1)
    c["lean_side"] = _smooth(rng, t, 0.0, d(rng.uniform(0, 12)), beat)
    c["lean_fwd"] = _smooth(rng, t, d(rng.uniform(-4, 10)), d(rng.uniform(0, 8)), beat)
    # Yaw: a sway around a near-frontal heading, sometimes a large turn (eased in and out).
    yaw = _smooth(rng, t, d(rng.normal(0, 20)), d(rng.uniform(0, 25)), beat * 0.5)
    if rng.random() < (0.35 if turn is None else turn):
        total = d(rng.choice((90, 180, 270, 360))) * rng.choice((-1, 1))
        a, b = sorted(rng.uniform(0, 1, size=2))
        b = max(b, a + 0.3)
        s = np.clip((t / max(t[-1], 1e-6) - a) / (b - a), 0, 1)
        yaw = yaw + total * (3 * s**2 - 2 * s**3)
    c["yaw"] = yaw
    drift = rng.uniform(-0.3, 0.3)
    c["root_x"] = drift * (t / max(t[-1], 1e-6)) + _smooth(rng, t, 0.0, rng.uniform(0, 0.06), beat)
    c["jump"] = np.clip(np.sin(2 * np.pi * beat * t), 0, None) * (rng.uniform(0, 0.05) if rng.random() < 0.3 else 0)
    return {k: np.asarray(v, np.float64) for k, v in c.items()}


def _direction(abd: np.ndarray, flex: np.ndarray, side: float) -> np.ndarray:
    """(F,3) unit limb direction: abd 0 = down, π/2 = out to the side, π = up; flex > 0 swings forward."""
    return np.stack([side * np.sin(abd) * np.cos(flex), np.cos(abd) * np.cos(flex), -np.sin(flex)], -1)


def pose_skeleton(person: Person, c: dict[str, np.ndarray]) -> Skeleton:
    """Forward kinematics of `person` following the curves `c` (see sample_program)."""
    frames = len(c["yaw"])
    ls, lf = c["lean_side"], c["lean_fwd"]
    up = np.stack([np.sin(ls), -np.cos(ls) * np.cos(lf), -np.sin(lf)], -1)
    up /= np.linalg.norm(up, axis=-1, keepdims=True)
    across = np.stack([np.cos(ls), np.sin(ls), np.zeros(frames)], -1)  # towards the person's left
    j = np.zeros((frames, 18, 3))
    j[:, 1] = up * person.torso  # neck (root = mid-hip at the origin)
    j[:, 2] = j[:, 1] - across * person.shoulder_half
    j[:, 5] = j[:, 1] + across * person.shoulder_half
    j[:, 8] = (-person.hip_half, 0, 0)
    j[:, 11] = (person.hip_half, 0, 0)
    forearm_dir = {}
    for side, sign, (sh, el, wr, hp, kn, an) in (("r", -1.0, (2, 3, 4, 8, 9, 10)), ("l", 1.0, (5, 6, 7, 11, 12, 13))):
        abd, flex, bend, twist = c[f"{side}_abd"], c[f"{side}_flex"], c[f"{side}_elbow"], c[f"{side}_twist"]
        j[:, el] = j[:, sh] + _direction(abd, flex, sign) * person.upper_arm
        fd = _direction(abd + bend * np.cos(twist), flex + bend * np.sin(twist), sign)
        forearm_dir[side] = fd
        j[:, wr] = j[:, el] + fd * person.forearm
        j[:, kn] = j[:, hp] + _direction(c[f"{side}_labd"], c[f"{side}_lflex"], sign) * person.thigh
        j[:, an] = j[:, kn] + _direction(c[f"{side}_labd"], c[f"{side}_lflex"] - c[f"{side}_knee"], sign) * person.shin
    head = j[:, 1] + up * person.neck
    for k, joint in enumerate(FACE_JOINTS):
        j[:, joint] = head + FACE_OFFSETS[k] * person.head_r
    hands = np.stack([_hand_points(j[:, 4], forearm_dir["r"], c["r_curl"], person.hand, 1.0),
                      _hand_points(j[:, 7], forearm_dir["l"], c["l_curl"], person.hand, -1.0)], 1)  # (F,2,21,3)
    hair = head + np.array([0.0, 0.1, 0.8]) * person.head_r  # back of the head

    yaw = c["yaw"]
    rot = _yaw_matrix(yaw)  # (F,3,3)
    j = np.einsum("fab,fjb->fja", rot, j)
    hands = np.einsum("fab,fhjb->fhja", rot, hands)
    head, hair = np.einsum("fab,fb->fa", rot, head), np.einsum("fab,fb->fa", rot, hair)

    # Feet on the floor (y = 0 is the sole line), lifted by the jump.
    lowest = np.maximum(j[:, 10, 1], j[:, 13, 1]) + person.ankle_h
    shift = np.stack([c["root_x"], -lowest - c["jump"], np.zeros(frames)], -1)  # (F,3)
    j += shift[:, None]
    hands += shift[:, None, None]

    normals = np.einsum("fab,kb->fka", rot, FACE_OFFSETS / np.linalg.norm(FACE_OFFSETS, axis=-1, keepdims=True))
    face_seen = -normals[..., 2] > FACE_SEEN  # toward the camera is -z

    z = j[..., 2]
    depth = np.zeros((frames, len(PARTS)))
    torso_z = z[:, [2, 5, 8, 11]].mean(1)
    depth[:, P["torso"]] = torso_z
    depth[:, P["hair_back"]] = hair[:, 2]
    depth[:, P["head"]] = head[:, 2] - 0.02  # ties with the torso: the head is drawn over it
    depth[:, P["neck"]] = (z[:, 1] + head[:, 2]) / 2 + 0.01
    depth[:, P["skirt"]] = torso_z - 0.005
    # Small biases break ties sensibly: arms over the torso, hands over forearms, legs under the shirt.
    for s, (sh, el, wr, hp, kn, an) in (("r", (2, 3, 4, 8, 9, 10)), ("l", (5, 6, 7, 11, 12, 13))):
        depth[:, P[f"{s}_upper_arm"]] = (z[:, sh] + z[:, el]) / 2 - 0.01
        depth[:, P[f"{s}_forearm"]] = (z[:, el] + z[:, wr]) / 2 - 0.015
        depth[:, P[f"{s}_hand"]] = z[:, wr] - 0.02
        depth[:, P[f"{s}_thigh"]] = (z[:, hp] + z[:, kn]) / 2 + 0.01
        depth[:, P[f"{s}_shin"]] = (z[:, kn] + z[:, an]) / 2 + 0.005
        depth[:, P[f"{s}_foot"]] = z[:, an] - 0.005
    return Skeleton(j.astype(np.float32), hands.astype(np.float32), face_seen, depth.astype(np.float32),
                    yaw.astype(np.float32))


def _yaw_matrix(yaw: np.ndarray) -> np.ndarray:
    """(F,3,3) rotation about the vertical axis; yaw > 0 turns the face towards image right."""
    c, s = np.cos(yaw), np.sin(yaw)
    z, o = np.zeros_like(yaw), np.ones_like(yaw)
    return np.stack([np.stack([c, z, -s], -1), np.stack([z, o, z], -1), np.stack([s, z, c], -1)], -2)


def _hand_points(wrist: np.ndarray, forearm: np.ndarray, curl: np.ndarray, length: float,
                 thumb_side: float) -> np.ndarray:
    """(F,21,3): the hand template in the plane of the forearm and the body's left-right axis, palm to the camera."""
    along = forearm
    across = np.cross(forearm, np.array([0.0, 0.0, -1.0]))
    n = np.linalg.norm(across, axis=-1, keepdims=True)
    across = np.where(n > 1e-3, across / np.maximum(n, 1e-6), np.array([-1.0, 0.0, 0.0]))  # → person's right
    tmpl = HAND_TEMPLATE.astype(np.float64)
    # Curling pulls each finger joint towards its knuckle.
    base = tmpl[_KNUCKLE]
    pts = base[None] + (tmpl - base)[None] * (1.0 - 0.65 * curl[:, None, None])  # (F,21,2)
    return wrist[:, None] + length * (pts[..., :1] * along[:, None] + thumb_side * pts[..., 1:] * across[:, None])
