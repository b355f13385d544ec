"""Draw a synthetic person at given 2D keypoints, parts in painter's order, with exact masks.

The drawer only needs 2D keypoints (pixels), a per-frame scale `px` (pixels per body unit), the yaw
(which way the face and feet point) and a depth per part (which part hides which). That is what makes
the ground-truth edit possible: the source person is drawn at the aligned keypoints with the driver's
depth order and yaw.

Each part is rasterised with its label into a uint8 label map (cv2, sub-pixel precision), then colours
come from a per-label lookup table, and clothing textures are warped onto their parts inside each
part's bounding box only. The mask is `labels > 0`, i.e. exactly the pixels that were drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mf_backend.synthetic.motion import FACE_JOINTS, FACE_OFFSETS, P, PARTS
from mf_backend.synthetic.person import TILE, TILE_DENSITY, Person

FACE_LABEL = len(PARTS) + 1
EYE_LABEL = len(PARTS) + 2
NUM_LABELS = len(PARTS) + 3  # 0 = background
SHIFT = 4  # cv2 fixed-point bits: drawing has 1/16-pixel precision
_ONE = 1 << SHIFT
MIN_RADIUS = 1.0  # pixels: every keypoint stays inside the drawn person, even at tiny sizes
_SEMI = np.linspace(-np.pi / 2, np.pi / 2, 8)
_ELLIPSE = np.linspace(0, 2 * np.pi, 24, endpoint=False)
FAR_SHADE = 0.82  # limbs behind the torso are drawn darker: a depth cue for self-occlusion
_LIMBS = tuple(P[n] for n in PARTS if n.startswith(("r_", "l_")))

# Which labels own each body keypoint (for the occlusion-aware visibility).
_OWNERS = {
    0: ("head",), 14: ("head",), 15: ("head",), 16: ("head",), 17: ("head",),
    1: ("torso", "neck"), 2: ("torso", "r_upper_arm"), 5: ("torso", "l_upper_arm"),
    3: ("r_upper_arm", "r_forearm"), 6: ("l_upper_arm", "l_forearm"),
    4: ("r_forearm", "r_hand"), 7: ("l_forearm", "l_hand"),
    8: ("torso", "r_thigh", "skirt"), 11: ("torso", "l_thigh", "skirt"),
    9: ("r_thigh", "r_shin", "skirt"), 12: ("l_thigh", "l_shin", "skirt"),
    10: ("r_shin", "r_foot"), 13: ("l_shin", "l_foot"),
}
OWNER_TABLE = np.zeros((18, NUM_LABELS), bool)  # (joint, label) → the label belongs to the joint
for _j, _names in _OWNERS.items():
    for _n in _names:
        OWNER_TABLE[_j, P[_n] + 1] = True
OWNER_TABLE[[0, 14, 15], FACE_LABEL] = OWNER_TABLE[[0, 14, 15], EYE_LABEL] = True
OWNER_TABLE[[16, 17], FACE_LABEL] = True


@dataclass
class Drawn:
    frames: np.ndarray  # uint8 (F,H,W,3)
    labels: np.ndarray  # uint8 (F,H,W): 0 background, part index + 1, FACE_LABEL, EYE_LABEL

    @property
    def masks(self) -> np.ndarray:
        return (self.labels > 0).astype(np.float32)


def _cv(xy: np.ndarray) -> np.ndarray:
    """Pixel coordinates (pixel k spans [k, k+1)) → cv2 fixed point (cv2 puts pixel centres on integers)."""
    return np.ascontiguousarray(np.round((xy - 0.5) * _ONE), dtype=np.int32)  # cv2 wants contiguous points


def _unit(v: np.ndarray, fallback=(0.0, 1.0)) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(n > 1e-6, v / np.maximum(n, 1e-6), np.asarray(fallback))


def capsules(p0: np.ndarray, p1: np.ndarray, r0: np.ndarray, r1: np.ndarray) -> np.ndarray:
    """(F,2) ends, (F,) radii → (F,16,2) convex polygon of the rounded segment (a tapered capsule)."""
    u = _unit(p1 - p0)
    n = np.stack([-u[:, 1], u[:, 0]], -1)
    c, s = np.cos(_SEMI)[None, :, None], np.sin(_SEMI)[None, :, None]
    front = p1[:, None] + r1[:, None, None] * (c * u[:, None] + s * n[:, None])
    back = p0[:, None] - r0[:, None, None] * (c * u[:, None] + s * n[:, None])
    return np.concatenate([front, back], 1)


def draw_person(background: np.ndarray, body: np.ndarray, hands: np.ndarray, yaw: np.ndarray,
                part_depth: np.ndarray, px: np.ndarray, person: Person) -> Drawn:
    """Draw `person` over `background` (F,H,W,3) at `body` (F,18,3) and `hands` (F,2,21,3) pixel keypoints.

    A joint with confidence 0 is missing: the parts that need it are not drawn. Face points need only be
    present where seen (their confidence); the head is placed from whichever are present.
    yaw (F,) radians, part_depth (F,len(PARTS)) larger = farther, px (F,) pixels per body unit.
    """
    frames = background.copy()
    n_f, height, width = frames.shape[:3]
    labels = np.zeros((n_f, height, width), np.uint8)
    g = _geometry(body.astype(np.float64), hands.astype(np.float64), yaw.astype(np.float64),
                  px.astype(np.float64), person)
    lut, lut_dark = _luts(person)
    textures = _part_textures(person, float(np.median(px)))
    orders = np.argsort(-part_depth, axis=1, kind="stable")  # (F,P) far to near
    darks = part_depth > part_depth[:, P["torso"], None] + 0.04  # (F,P) limbs behind the torso
    for f in range(n_f):
        lab = labels[f]
        for p in orders[f].tolist():
            if g.ok[p, f]:
                _draw_part(lab, g, p, f)
        # Colours: look up flat colours in the person's bounding box, then warp textures onto their parts.
        x0, y0, x1, y1 = g.bbox[f]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        lab_roi = lab[y0:y1, x0:x1]
        dark = darks[f]
        table = lut.copy()
        for p in _LIMBS:
            if dark[p]:
                table[p + 1] = lut_dark[p + 1]
        rgb = cv2.LUT(cv2.merge([lab_roi, lab_roi, lab_roi]), table)  # (h,w,3) flat colours
        for p, (tex, tex_dark) in textures.items():
            if g.ok[p, f]:
                _texture_part(rgb, lab_roi, tex_dark if dark[p] else tex, g, p, f, x0, y0)
        cv2.copyTo(rgb, (lab_roi > 0).view(np.uint8), frames[f, y0:y1, x0:x1])  # writes into the frame
    return Drawn(frames, labels)


@dataclass
class _Geometry:
    polys: dict  # part → (F,N,2) int32 cv2 fixed-point polygon
    ok: np.ndarray  # (len(PARTS),F) bool: part drawn in frame f
    head: np.ndarray  # (F,N,2) int32 fixed-point points whose hull is the head
    face: np.ndarray  # (F,24,2) int32 fixed point face ellipse
    face_ok: np.ndarray  # (F,)
    eyes: np.ndarray  # (F,2,2) int32 fixed point centres
    eye_ok: np.ndarray  # (F,2)
    eye_r: np.ndarray  # (F,) int fixed point radius
    hands: np.ndarray  # (F,2,21,2) int32 fixed point
    palms: np.ndarray  # (F,2,6,2) int32 fixed point: wrist and knuckles pushed 1 px out of the palm
    hand_ok: np.ndarray  # (F,2,21) keypoint present
    finger_w: np.ndarray  # (F,) int thickness in pixels
    axes: dict  # part → (origin (F,2), along (F,2)) for textures
    px: np.ndarray
    bbox: np.ndarray  # (F,4) int x0,y0,x1,y1 of the whole person
    part_bbox: dict  # part → (F,4)


def _geometry(body: np.ndarray, hands: np.ndarray, yaw: np.ndarray, px: np.ndarray, person: Person) -> _Geometry:
    """Every part's outline for every frame at once (vectorised over frames)."""
    n_f = len(body)
    xy, vis = body[..., :2], body[..., 2] > 0
    polys, axes = {}, {}
    ok = np.zeros((len(PARTS), n_f), bool)

    def rad(units: float) -> np.ndarray:
        return np.maximum(units * px, MIN_RADIUS)

    def capsule(part: str, a: int, b: int, ra: float, rb: float, end: np.ndarray | None = None) -> None:
        p1 = xy[:, b] if end is None else end
        polys[P[part]] = capsules(xy[:, a], p1, rad(ra), rad(rb))
        ok[P[part]] = vis[:, a] & (vis[:, b] if end is None else True)
        axes[P[part]] = (xy[:, a], _unit(p1 - xy[:, a]))

    # Torso: a trapezoid across the shoulders and hips, never thinner than the chest seen side-on.
    m_s, m_h = (xy[:, 2] + xy[:, 5]) / 2, (xy[:, 8] + xy[:, 11]) / 2
    down = _unit(m_h - m_s)
    n = np.stack([-down[:, 1], down[:, 0]], -1)
    depth_half = rad(person.torso_half_depth)
    w_s = np.maximum(np.abs(np.sum((xy[:, 5] - xy[:, 2]) * n, -1)) / 2, depth_half)
    w_h = np.maximum(np.abs(np.sum((xy[:, 11] - xy[:, 8]) * n, -1)) / 2 + rad(0.03), depth_half)
    pelvis = m_h + down * rad(0.05)[:, None]
    collar = m_s - down * rad(0.6 * person.r_upper_arm)[:, None]  # the shoulder line sits on top of the arms
    torso = np.stack([collar - n * w_s[:, None], collar + n * w_s[:, None], m_h + n * w_h[:, None],
                      pelvis + n * 0.8 * w_h[:, None], pelvis - n * 0.8 * w_h[:, None], m_h - n * w_h[:, None]], 1)
    polys[P["torso"]] = torso
    ok[P["torso"]] = vis[:, [2, 5, 8, 11]].all(1)
    axes[P["torso"]] = (m_s, down)

    # Head: placed from the face points that are present (each is a known offset from the centre for this yaw).
    c, s = np.cos(yaw), np.sin(yaw)
    r_head = np.maximum(person.head_r * px, 1.5)
    off = np.stack([FACE_OFFSETS[:, 0][None] * c[:, None] - FACE_OFFSETS[:, 2][None] * s[:, None],
                    np.broadcast_to(FACE_OFFSETS[:, 1], (n_f, 5))], -1) * r_head[:, None, None]  # (F,5,2)
    face_xy, face_vis = xy[:, FACE_JOINTS], vis[:, FACE_JOINTS]
    w = face_vis.astype(np.float64)[..., None]
    up = -down
    fallback = xy[:, 1] + up * (person.neck * px)[:, None]
    centre = np.where(w.sum(1) > 0, (w * (face_xy - off)).sum(1) / np.maximum(w.sum(1), 1), fallback)
    ellipse = centre[:, None] + np.stack([np.cos(_ELLIPSE), 1.15 * np.sin(_ELLIPSE)], -1)[None] * r_head[:, None, None]
    # Face points present are pushed 1.5 px outwards and added to the hull, so they always lie inside the head.
    pushed = face_xy + _unit(face_xy - centre[:, None]) * 1.5
    pushed = np.where(face_vis[..., None], pushed, centre[:, None])
    head = np.concatenate([ellipse, pushed], 1)
    ok[P["head"]] = vis[:, 1] | face_vis.any(1)
    capsule("neck", 1, 1, person.r_neck, person.r_neck, end=centre)
    ok[P["neck"]] = vis[:, 1]
    if person.hair_long:
        end = centre + down * (1.9 * r_head)[:, None]
        polys[P["hair_back"]] = capsules(centre, end, 0.92 * r_head, 0.8 * r_head)
        ok[P["hair_back"]] = ok[P["head"]]
    facing = c > -0.15
    face_c = centre + np.stack([0.4 * s, np.full_like(s, 0.15)], -1) * r_head[:, None]
    face_ax = np.stack([0.5 * (0.55 + 0.45 * np.abs(c)), np.full_like(c, 0.68)], -1) * r_head[:, None]
    face = face_c[:, None] + np.stack([np.cos(_ELLIPSE), np.sin(_ELLIPSE)], -1)[None] * face_ax[:, None]
    eye_ok = face_vis[:, 1:3] & (c > 0.2)[:, None]
    eye_r = np.maximum(0.13 * r_head, 0.6)

    # Limbs.
    for sd, (sh, el, wr, hp, kn, an) in (("r", (2, 3, 4, 8, 9, 10)), ("l", (5, 6, 7, 11, 12, 13))):
        capsule(f"{sd}_upper_arm", sh, el, person.r_upper_arm, person.r_upper_arm * 0.95)
        capsule(f"{sd}_forearm", el, wr, person.r_forearm, person.r_forearm * 0.85)
        capsule(f"{sd}_thigh", hp, kn, person.r_thigh, person.r_thigh * 0.8)
        capsule(f"{sd}_shin", kn, an, person.r_shin, person.r_shin * 0.75)
        toe = xy[:, an] + np.stack([person.foot * s, np.full_like(s, 0.8 * person.ankle_h)], -1) * px[:, None]
        capsule(f"{sd}_foot", an, an, person.r_foot, person.r_foot * 0.9, end=toe)
        # A hand without keypoints: a short rounded block along the forearm.
        tip = xy[:, wr] + _unit(xy[:, wr] - xy[:, el]) * (0.7 * person.hand * px)[:, None]
        capsule(f"{sd}_hand", wr, wr, person.r_forearm * 1.05, person.r_forearm * 1.1, end=tip)
        ok[P[f"{sd}_hand"]] = vis[:, wr] & vis[:, el]
    hand_xy, hand_ok = hands[..., :2], hands[..., 2] > 0
    for h, sd in ((0, "r"), (1, "l")):
        ok[P[f"{sd}_hand"]] |= hand_ok[:, h].any(1)
    if person.bottom == "skirt":
        flare = rad(0.05)
        hem_r = xy[:, 8] + (xy[:, 9] - xy[:, 8]) * 0.75
        hem_l = xy[:, 11] + (xy[:, 12] - xy[:, 11]) * 0.75
        hem_c = (hem_r + hem_l) / 2
        w_hem = np.maximum(np.abs(np.sum((hem_l - hem_r) * n, -1)) / 2, w_h) + flare
        polys[P["skirt"]] = np.stack([m_h - n * w_h[:, None], m_h + n * w_h[:, None],
                                      hem_c + n * w_hem[:, None], hem_c - n * w_hem[:, None]], 1)
        ok[P["skirt"]] = vis[:, [8, 9, 11, 12]].all(1)
        axes[P["skirt"]] = (m_h, _unit(hem_c - m_h))

    palm = hand_xy[:, :, _PALM]  # (F,2,6,2)
    palm_ok = hand_ok[:, :, _PALM, None]
    centroid = (palm * palm_ok).sum(2, keepdims=True) / np.maximum(palm_ok.sum(2, keepdims=True), 1)
    palms = palm + _unit(palm - centroid) * 1.0  # grown by 1 px so the keypoints stay inside

    # Bounding boxes (pixels) of every part and of the whole person.
    part_bbox = {}
    boxes = []
    for p, poly in polys.items():
        bb = np.concatenate([np.floor(poly.min(1)), np.ceil(poly.max(1)) + 1], -1).astype(np.int64)
        part_bbox[p] = bb
        boxes.append(np.where(ok[p][:, None], bb, [1 << 30, 1 << 30, -(1 << 30), -(1 << 30)]))
    finger_w = np.maximum(np.round(0.16 * person.hand * px), 3).astype(np.int64)
    pad = (finger_w + 3)[:, None]
    flat_ok = hand_ok.reshape(n_f, -1, 1)
    flat = hand_xy.reshape(n_f, -1, 2)
    for pts, point_ok, present in ((head, np.ones_like(head[..., :1], bool), ok[P["head"]]),
                                   (flat, flat_ok, flat_ok[..., 0].any(1))):
        lo = np.where(point_ok, pts, np.inf).min(1)  # absent points are ignored
        hi = np.where(point_ok, pts, -np.inf).max(1)
        bb = np.concatenate([np.floor(np.where(present[:, None], lo, 0)) - pad,
                             np.ceil(np.where(present[:, None], hi, 0)) + pad], -1).astype(np.int64)
        boxes.append(np.where(present[:, None], bb, [1 << 30, 1 << 30, -(1 << 30), -(1 << 30)]))
    boxes = np.stack(boxes, 0)
    bbox = np.concatenate([boxes[..., :2].min(0), boxes[..., 2:].max(0)], -1)

    return _Geometry(
        polys={p: _cv(v) for p, v in polys.items()}, ok=ok, head=_cv(head), face=_cv(face), face_ok=facing,
        eyes=_cv(face_xy[:, 1:3]), eye_ok=eye_ok, eye_r=np.round(eye_r * _ONE).astype(np.int64),
        hands=_cv(hand_xy), palms=_cv(palms), hand_ok=hand_ok, finger_w=finger_w, axes=axes, px=px, bbox=bbox,
        part_bbox=part_bbox,
    )


def _draw_part(lab: np.ndarray, g: _Geometry, p: int, f: int) -> None:
    label = p + 1
    if p == P["head"]:
        hull = cv2.convexHull(g.head[f])
        cv2.fillConvexPoly(lab, hull, label, cv2.LINE_8, SHIFT)
        if g.face_ok[f]:
            cv2.fillConvexPoly(lab, g.face[f], FACE_LABEL, cv2.LINE_8, SHIFT)
            for e in range(2):
                if g.eye_ok[f, e]:
                    centre = (int(g.eyes[f, e, 0]), int(g.eyes[f, e, 1]))
                    cv2.circle(lab, centre, int(g.eye_r[f]), EYE_LABEL, -1, cv2.LINE_8, SHIFT)
        return
    if p in (P["r_hand"], P["l_hand"]):
        h = 0 if p == P["r_hand"] else 1
        present = g.hand_ok[f, h]
        if present.any():
            _draw_hand(lab, g.hands[f, h], g.palms[f, h], present, int(g.finger_w[f]), label)
            return
    cv2.fillConvexPoly(lab, g.polys[p][f], label, cv2.LINE_8, SHIFT)


_PALM = np.array([0, 1, 5, 9, 13, 17])
_FINGERS = ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20))


def _draw_hand(lab: np.ndarray, pts: np.ndarray, palm: np.ndarray, present: np.ndarray, width: int, label: int) -> None:
    """A palm (hull of the wrist and knuckles) and fingers as thick lines; pts/palm in cv2 fixed point."""
    if present.all():  # the usual case: no per-point bookkeeping
        cv2.fillConvexPoly(lab, cv2.convexHull(palm), label, cv2.LINE_8, SHIFT)
        cv2.polylines(lab, [pts[list(f)] for f in _FINGERS], False, label, width, cv2.LINE_8, SHIFT)
        return
    palm_ok = present[_PALM]
    if palm_ok.sum() >= 3:
        cv2.fillConvexPoly(lab, cv2.convexHull(palm[palm_ok]), label, cv2.LINE_8, SHIFT)
    lines, dots = [], list(palm[palm_ok]) if palm_ok.sum() < 3 else []
    for finger in _FINGERS:
        idx = [j for j in finger if present[j]]
        if len(idx) >= 2:
            lines.append(pts[idx])
        elif idx:
            dots.append(pts[idx[0]])
    if lines:
        cv2.polylines(lab, lines, False, label, width, cv2.LINE_8, SHIFT)
    for q in dots:  # lone points still get covered
        cv2.circle(lab, (int(q[0]), int(q[1])), _ONE * max(width // 2, 1), label, -1, cv2.LINE_8, SHIFT)


def _luts(person: Person) -> tuple[np.ndarray, np.ndarray]:
    """(256,1,3) uint8 flat colour per label (a cv2.LUT table), and the darker variant for far-side limbs."""
    lut = np.zeros((256, 3), np.uint8)
    shirt = person.shirt_tex.reshape(-1, 3).mean(0).astype(np.uint8)
    pants = person.pants_tex.reshape(-1, 3).mean(0).astype(np.uint8)
    for name in PARTS:
        lut[P[name] + 1] = person.skin
    lut[P["hair_back"] + 1] = lut[P["head"] + 1] = person.hair
    lut[P["torso"] + 1] = shirt
    lut[P["skirt"] + 1] = pants
    for sd in ("r", "l"):
        lut[P[f"{sd}_foot"] + 1] = person.shoes
        if person.top != "tank":
            lut[P[f"{sd}_upper_arm"] + 1] = shirt
        if person.top == "long":
            lut[P[f"{sd}_forearm"] + 1] = shirt
        if person.bottom != "skirt":
            lut[P[f"{sd}_thigh"] + 1] = pants
        if person.bottom == "pants":
            lut[P[f"{sd}_shin"] + 1] = pants
    lut[FACE_LABEL] = np.clip(person.skin.astype(np.int32) + 8, 0, 255)
    lut[EYE_LABEL] = person.eyes
    return lut[:, None], (lut * FAR_SHADE).astype(np.uint8)[:, None]


def _part_textures(person: Person, px: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """part → (texture tile, its darker variant) for the clothed parts, resampled once for this clip's scale.

    The tile is resized so one tile pixel is about one frame pixel: the per-frame warps can then use
    nearest-neighbour sampling (3x cheaper than bilinear) without blocks when magnified or moiré when shrunk.
    """
    side = max(8, int(round(px / TILE_DENSITY)))
    interp = cv2.INTER_AREA if side < TILE else cv2.INTER_CUBIC

    def tiles(tex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = cv2.resize(tex, (side, side), interpolation=interp)
        return t, (t * FAR_SHADE).astype(np.uint8)

    shirt, pants = tiles(person.shirt_tex), tiles(person.pants_tex)
    out = {P["torso"]: shirt}
    for sd in ("r", "l"):
        if person.top != "tank":
            out[P[f"{sd}_upper_arm"]] = shirt
        if person.top == "long":
            out[P[f"{sd}_forearm"]] = shirt
        if person.bottom != "skirt":
            out[P[f"{sd}_thigh"]] = pants
        if person.bottom == "pants":
            out[P[f"{sd}_shin"]] = pants
    if person.bottom == "skirt":
        out[P["skirt"]] = pants
    return out


def _texture_part(rgb: np.ndarray, lab_roi: np.ndarray, tex: np.ndarray, g: _Geometry, p: int, f: int,
                  x0: int, y0: int) -> None:
    """Warp the tile onto part p (body-attached: it follows the part's axis and scale) inside its box."""
    bx0, by0, bx1, by1 = g.part_bbox[p][f]
    h_roi, w_roi = lab_roi.shape
    bx0, by0 = max(int(bx0) - x0, 0), max(int(by0) - y0, 0)
    bx1, by1 = min(int(bx1) - x0, w_roi), min(int(by1) - y0, h_roi)
    if bx1 <= bx0 or by1 <= by0:
        return
    sel = (lab_roi[by0:by1, bx0:bx1] == p + 1).view(np.uint8)
    if not sel.any():
        return
    origin, along = g.axes[p][0][f], g.axes[p][1][f]
    across = np.array([-along[1], along[0]])
    side = tex.shape[0]
    k = side * TILE_DENSITY / g.px[f]  # tile pixels per frame pixel (about 1)
    corner = np.array([x0 + bx0 + 0.5, y0 + by0 + 0.5]) - origin
    m = np.array([[k * across[0], k * across[1], k * corner @ across + side / 2],
                  [k * along[0], k * along[1], k * corner @ along]], np.float64)
    patch = cv2.warpAffine(tex, m, (bx1 - bx0, by1 - by0), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_WRAP)
    cv2.copyTo(patch, sel, rgb[by0:by1, bx0:bx1])  # writes into rgb
