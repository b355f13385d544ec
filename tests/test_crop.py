"""Person-centred crop (mf_backend.crop), crop/uncrop of frames, masks and poses, and the composite back
into full-res frames (mf_backend.composite)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mf_backend.errors import InvalidParams
from mf_backend.composite import blend_alpha, composite
from mf_backend.crop import CropPlan, plan_crop, plan_letterbox


def changed_region(plan: CropPlan, M_r: np.ndarray, M_e=None, dilate_px=None, feather_px=None) -> np.ndarray:
    """bool (F,H,W): the full-resolution pixels `composite` may change (its defaults: size/32, size/64)."""
    S = plan.size
    dilate_px = S / 32 if dilate_px is None else dilate_px
    feather_px = S / 64 if feather_px is None else feather_px
    return plan.uncrop(blend_alpha(M_r, M_e, dilate_px, feather_px)) > 0


def _person(f: int, h: int, w: int, cx: float, cy: float, ph: int, pw: int, drift: float = 0.0):
    """Box 'person' masks (F,H,W) and 18 keypoints spread over the box (F,18,3), moving right by `drift` px/frame."""
    masks = np.zeros((f, h, w), np.float32)
    kps = np.zeros((f, 18, 3), np.float32)
    grid = np.linspace(-0.45, 0.45, 18)
    for i in range(f):  # test data only
        x = cx + drift * i
        masks[i, int(cy - ph / 2) : int(cy + ph / 2), int(x - pw / 2) : int(x + pw / 2)] = 1.0
        kps[i, :, 0] = x + grid * pw
        kps[i, :, 1] = cy + grid[::-1] * ph
        kps[i, :, 2] = 0.9
    return masks, kps


def test_plan_is_square_contains_the_person_and_stays_in_the_frame():
    h, w = 270, 480
    masks, kps = _person(5, h, w, cx=380, cy=150, ph=120, pw=50, drift=4)
    plan = plan_crop(kps, masks, (h, w), size=64, margin=0.1)
    assert plan.mode == "person" and plan.size == 64
    assert 0 <= plan.x0 and plan.x0 + plan.side <= w and 0 <= plan.y0 and plan.y0 + plan.side <= h
    ys, xs = np.nonzero(masks.any(axis=0))
    assert plan.x0 <= xs.min() and xs.max() < plan.x0 + plan.side
    assert plan.y0 <= ys.min() and ys.max() < plan.y0 + plan.side
    assert plan.side == pytest.approx(120 * 1.2, abs=3)  # longer side (height) plus 10 % margin each side
    assert plan.x0 > w / 2 - plan.side / 2  # off-centre person → off-centre crop


def test_plan_unites_source_and_target_and_ignores_a_one_frame_glitch():
    h, w = 200, 400
    src_m, src_k = _person(7, h, w, cx=100, cy=100, ph=100, pw=40)
    _, tgt_k = _person(7, h, w, cx=180, cy=100, ph=100, pw=40)
    plan = plan_crop([src_k, tgt_k], src_m, (h, w), size=64, margin=0.0)
    assert plan.x0 <= 100 - 20 and plan.x0 + plan.side >= 180 + 18
    glitch = src_k.copy()
    glitch[3, 0] = [395, 5, 0.99]  # detector glitch in one frame, far corner
    assert plan_crop(glitch, None, (h, w), size=64) == plan_crop(src_k, None, (h, w), size=64)


def test_wide_person_overflows_the_short_axis_and_letterbox_geometry():
    h, w = 108, 192
    masks = np.zeros((2, h, w), np.float32)
    masks[:, 40:60, 10:180] = 1  # lying down across the frame: wider than the frame is tall
    plan = plan_crop(None, masks, (h, w), size=32, margin=0.05)
    assert plan.side > h and plan.side <= w
    assert plan.y0 == (h - plan.side) // 2  # centred on the short axis, padded black
    lb = plan_letterbox((h, w), 32)
    assert (lb.x0, lb.y0, lb.side) == (0, -42, 192)
    assert plan_crop(None, masks, (h, w), 32, mode="letterbox") == lb
    crops = lb.apply(np.full((1, h, w, 3), 200, np.uint8))
    assert (crops[0, :5] == 0).all() and (crops[0, 16] == 200).all()  # bars, picture
    valid = lb.valid_mask()
    assert not valid[:5].any() and valid[16].all()
    with pytest.raises(InvalidParams):
        plan_crop(None, None, (h, w), 32)
    with pytest.raises(InvalidParams):
        plan_crop(None, masks, (h, w), 32, mode="zoom")


def test_no_person_found_falls_back_to_letterbox():
    kps = np.zeros((3, 18, 3), np.float32)
    assert plan_crop(kps, None, (90, 160), 32).mode == "letterbox"


def test_frames_masks_and_keypoints_get_the_same_transform():
    h, w, S = 240, 320, 64
    plan = CropPlan(h, w, x0=150, y0=40, side=160, size=S)
    frames = np.zeros((1, h, w, 3), np.uint8)
    kp = np.array([[[230.0, 120.0, 1.0], [0.0, 0.0, 0.0]]], np.float32)  # one joint and one missing
    cv2.circle(frames[0], (230, 120), 6, (255, 255, 255), -1)
    c = plan.apply(frames)[0, :, :, 0].astype(np.float64)
    ys, xs = np.mgrid[0:S, 0:S]
    centroid = ((xs * c).sum() / c.sum(), (ys * c).sum() / c.sum())  # in pixel-index units
    ck = plan.apply_keypoints(kp)
    assert centroid == pytest.approx((ck[0, 0, 0] - 0.5, ck[0, 0, 1] - 0.5), abs=0.3)
    assert ck[0, 1].tolist() == [0.0, 0.0, 0.0]  # missing joints stay missing at zero
    np.testing.assert_allclose(plan.uncrop_keypoints(ck), kp, atol=1e-4)
    m = np.zeros((1, h, w), np.float32)
    m[0, 80:160, 190:270] = 1
    back = plan.uncrop(plan.apply_masks(m))
    assert back.shape == (1, h, w)
    assert np.abs(back - m)[0, 60:180, 150:310].mean() < 0.02 and back[0, :, :150].max() == 0


def test_pose_sequence_crop_sets_its_size():
    from mf_backend.pose.keypoints import PoseSequence

    body = np.zeros((2, 18, 3), np.float32)
    body[:, :, :2] = 100
    body[:, :, 2] = 1
    seq = PoseSequence(body=body, hands=np.zeros((2, 2, 21, 3), np.float32), width=320, height=240, fps=25.0)
    plan = CropPlan(240, 320, 50, 20, 200, 64)
    c = plan.apply_keypoints(seq)
    assert (c.width, c.height, c.fps) == (64, 64, 25.0)
    np.testing.assert_allclose(c.body[0, 0, :2], [(100 - 50) * 0.32, (100 - 20) * 0.32], rtol=1e-5)
    assert (c.hands == 0).all()
    back = plan.uncrop_keypoints(c)
    assert (back.width, back.height) == (320, 240)
    np.testing.assert_allclose(back.body, body, atol=1e-4)


def test_blend_alpha_support_is_exact_and_frames_are_independent():
    m = np.zeros((3, 64, 64), np.float32)
    m[0, 20:30, 20:30] = 1
    m[2, 60:64, 0:64] = 1  # touches the bottom edge: must not reach frame 3 (there is none) or frame 1
    a = blend_alpha(m, None, dilate_px=6, feather_px=3)
    assert (a[0, 20:30, 20:30] == 1).all()
    yy, xx = np.mgrid[0:64, 0:64]
    dist = np.hypot(np.maximum(0, np.maximum(20 - xx, xx - 29)), np.maximum(0, np.maximum(20 - yy, yy - 29)))
    assert (a[0][dist > 9.5] == 0).all() and (a[0][dist <= 3] == 1).all()
    assert (a[1] == 0).all()  # empty frame between two masked ones
    assert a[2, :50].max() == 0


def _scene(f, h, w, seed=0):
    """Textured background with gradients (so resampling errors would show), uint8 (F,H,W,3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 200 + 20, y / h * 180 + 30, (x + y) / (w + h) * 150 + 50], -1)
    noise = rng.normal(0, 6, (f, h, w, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def _planned_scene(seed: int, cx: int):
    """Two 160×240 frames with a person centred at (cx, 80), their masks, crop plan at 64² and crops."""
    src = _scene(2, 160, 240, seed=seed)
    masks, kps = _person(2, 160, 240, cx=cx, cy=80, ph=80, pw=30)
    plan = plan_crop(kps, masks, (160, 240), 64)
    return src, masks, plan, plan.apply(src)


@pytest.mark.parametrize("mode", ["person", "letterbox", "overflow"])
def test_composite_changes_only_the_dilated_mask_region(mode):
    f, h, w, S = 3, 180, 320, 64
    src = _scene(f, h, w)
    masks, kps = _person(f, h, w, cx=240, cy=90, ph=90, pw=36, drift=3)
    if mode == "overflow":  # a square past the top and bottom, not on whole crop pixels: the general path
        plan = CropPlan(h, w, x0=140, y0=-13, side=207, size=S)
        assert plan.inside_in_crop() is None
    else:
        plan = plan_crop(kps, masks, (h, w), S, mode=mode)
        assert plan.inside_in_crop() is not None
    crops = plan.apply(src)
    M_r = plan.apply_masks(masks)
    M_e = np.roll(M_r, 6, axis=2)  # the person moves right in the edit
    edited = crops.copy()
    edited[M_e >= 0.5] = (255, 0, 255)  # the stand-in edit: a magenta person at the target
    out = composite(src, edited, plan, M_r, M_e, dilate_px=4, feather_px=2)
    assert out.shape == src.shape and out.dtype == np.uint8
    region = changed_region(plan, M_r, M_e, dilate_px=4, feather_px=2)
    np.testing.assert_array_equal(out[~region], src[~region])
    # independent bound: the union mask at full res, dilated by (dilate + feather + 1 crop px) + 2 px
    full = plan.uncrop(np.maximum(M_r, M_e)) >= 0.5
    r = int(np.ceil((4 + 2 + 1) / plan.scale)) + 2
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    grown = np.stack([cv2.dilate(m.astype(np.uint8), kernel) for m in full]).astype(bool)
    np.testing.assert_array_equal(out[~grown], src[~grown])
    assert (out != src).any(axis=-1)[grown].mean() > 0.2  # it did change inside
    # deep inside the target person the edit's colour arrives
    core = cv2.erode((plan.uncrop(M_e)[0] >= 0.5).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert core.sum() > 50
    assert np.abs(out[0][core].astype(int) - [255, 0, 255]).mean() < 12


def test_composite_of_an_unchanged_crop_returns_the_source_closely():
    src, masks, plan, crops = _planned_scene(seed=1, cx=80)
    out = composite(src, crops, plan, plan.apply_masks(masks), None)
    # inside the blend region the crop's resampling blur shows, but no shift or colour change
    diff = out.astype(int) - src
    assert abs(diff.mean()) < 0.5 and np.abs(diff).mean() < 3


def test_colour_match_removes_a_global_colour_drift_at_the_seam():
    src, masks, plan, crops = _planned_scene(seed=2, cx=120)
    M_r = plan.apply_masks(masks)
    drifted = np.clip(crops.astype(int) + [18, -12, 10], 0, 255).astype(np.uint8)  # diffusion colour drift
    region = changed_region(plan, M_r)
    person = plan.uncrop(M_r) >= 0.5
    seam = region & ~person  # background pixels that get blended
    plain = composite(src, drifted, plan, M_r, colour_match=False)
    matched = composite(src, drifted, plan, M_r, colour_match=True)
    err = lambda o: np.abs(o.astype(int) - src)[seam].mean()  # noqa: E731
    floor = err(composite(src, crops, plan, M_r))  # resampling error alone (no drift)
    assert err(plain) > floor + 4
    assert err(matched) < floor + 1
    np.testing.assert_array_equal(matched[~region], src[~region])


def test_composite_rejects_mismatched_inputs():
    plan = CropPlan(100, 100, 0, 0, 100, 32)
    with pytest.raises(ValueError):
        composite(np.zeros((2, 100, 100, 3), np.uint8), np.zeros((2, 64, 64, 3), np.uint8), plan, np.zeros((2, 64, 64)))


def test_1080p_clip_through_crop_and_composite_keeps_size_count_and_outside_pixels():
    f, h, w, S = 2, 1080, 1920, 64
    src = _scene(f, h, w, seed=3)
    masks, kps = _person(f, h, w, cx=1500, cy=600, ph=700, pw=260, drift=10)  # off-centre
    plan = plan_crop(kps, masks, (h, w), S)
    assert plan.x0 > w // 2
    crops = plan.apply(src)
    M_r = plan.apply_masks(masks)
    M_e = np.roll(M_r, -5, axis=2)
    edited = np.where((M_e >= 0.5)[..., None], 255 - crops, crops).astype(np.uint8)  # stand-in edit
    out = composite(src, edited, plan, M_r, M_e)
    assert out.shape == (f, 1080, 1920, 3)
    region = changed_region(plan, M_r, M_e)
    assert region[:, :, : w // 2].sum() == 0  # far from the person
    np.testing.assert_array_equal(out[~region], src[~region])
    assert (out[region] != src[region]).any()


def test_synthetic_1080p_clip_edited_through_crop_and_composite():
    """The synthetic world at 1920x1080 with the person off-centre; the stand-in edit is the world's own
    ground-truth edit cropped with the plan (what a perfect model would output at the model size)."""
    synthetic = pytest.importorskip("mf_backend.synthetic")
    f, h, w, S = 2, 1080, 1920, 128
    pair = synthetic.make_pair(5, frames=f, size=(h, w), x_frac=0.75)
    src, gt = pair.source, pair.gt_edited
    plan = plan_crop([src.poses, pair.target_aligned.poses], [src.masks, gt.masks], (h, w), S)
    assert plan.x0 + plan.side / 2 > w * 0.55  # the crop follows the off-centre person
    M_r, M_e = plan.apply_masks(src.masks), plan.apply_masks(gt.masks)
    edited = plan.apply(gt.frames)  # (F,S,S,3) stand-in for the model's output
    out = composite(src.frames, edited, plan, M_r, M_e)
    assert out.shape == (f, h, w, 3) and out.dtype == np.uint8
    # outside M_r ∪ M_e dilated (by dilate + feather + 1 crop px, in full-res px, + 2) nothing changed
    full = np.maximum(src.masks, gt.masks) >= 0.5
    r = int(np.ceil((S / 32 + S / 64 + 1) / plan.scale)) + 2
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    grown = np.stack([cv2.dilate(m.astype(np.uint8), kernel) for m in full]).astype(bool)
    np.testing.assert_array_equal(out[~grown], src.frames[~grown])
    assert grown.mean() < 0.4  # the untouched part is most of the frame
    # inside, the edit arrived: the output is much closer to the ground-truth edit than the source is
    person = gt.masks >= 0.5
    err_out = np.abs(out.astype(int) - gt.frames)[person].mean()
    err_src = np.abs(src.frames.astype(int) - gt.frames)[person].mean()
    assert err_out < 0.3 * err_src, (err_out, err_src)
