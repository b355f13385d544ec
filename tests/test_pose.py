"""Poses: keypoint format, DWPose-style renderer, decoder, aligner, smoothing, prepare end-to-end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mf_backend.pose.align import align_poses
from mf_backend.pose.decode import decode_pose, decode_poses, looks_like_pose_render
from mf_backend.pose.extract import blazepose_to_openpose, track_protagonist
from mf_backend.pose.keypoints import BODY_TREE, PoseSequence
from mf_backend.pose.render import HAND_DOT_RGB, JOINT_RGB, LIMB_RGB, render_pose, render_poses
from mf_backend.pose.smooth import fill_gaps

REPO = Path(__file__).resolve().parents[1]
CASES = REPO.parent / "shared" / "real-cases"

# A standing person in a 128x128 frame (pixels).
STAND = np.array([
    [64, 20], [64, 34], [52, 34], [46, 52], [42, 68], [76, 34], [82, 52], [86, 68], [56, 70], [55, 92],
    [54, 114], [72, 70], [73, 92], [74, 114], [58, 13], [70, 13], [51, 16], [77, 16]], np.float32)


def person(frames: int = 4, size: int = 128, shift: float = 0.0, scale: float = 1.0) -> PoseSequence:
    seq = PoseSequence.empty(frames, size, size, 24.0)
    for f in range(frames):
        seq.body[f, :, :2] = (STAND - 64) * scale + 64.5 + [shift + 2 * f, 0]  # pixel centres
        seq.body[f, :, 2] = 1.0
    return seq


def test_json_roundtrip(tmp_path):
    seq = person()
    seq.hands[1, 0, :, :2] = 40.0
    seq.hands[1, 0, :, 2] = 0.9
    seq.save(tmp_path / "k.json")
    back = PoseSequence.load(tmp_path / "k.json")
    assert np.allclose(back.body, seq.body) and np.allclose(back.hands, seq.hands)
    assert (back.width, back.height, back.fps) == (128, 128, 24.0)
    assert json.loads((tmp_path / "k.json").read_text())["body_names"][1] == "neck"


def test_render_style_and_decode_roundtrip():
    seq = person(1)
    img = render_pose(seq.body[0], None, 128, 128)
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert (img.max(-1) == 0).mean() > 0.85  # black background
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert tuple(JOINT_RGB[0]) in colours and tuple(LIMB_RGB[0]) in colours  # full discs, 60% limbs
    body, hands = decode_pose(img)
    assert (body[:, 2] > 0).all()
    assert np.abs(np.floor(body[:, :2]) - np.floor(seq.body[0, :, :2])).max() <= 1.0
    assert np.array_equal(render_pose(body, None, 128, 128), img)  # re-render is pixel-exact
    assert not (hands[..., 2] > 0).any()


def test_render_hands_red_dots_and_rescale():
    seq = person(1)
    hand = np.stack([np.linspace(40, 30, 21), np.linspace(68, 80, 21), np.ones(21)], -1)
    seq.hands[0, 0] = hand
    img = render_poses(seq)[0]
    assert ((img == HAND_DOT_RGB).all(-1)).sum() > 20
    big = render_poses(seq, 256, 256)
    assert big.shape == (1, 256, 256, 3)
    body, _ = decode_pose(big[0])
    err = np.abs(body[:, :2] - seq.body[0, :, :2] * 2).max(-1)
    assert np.delete(err, 4).max() <= 1.0  # the right wrist is partly covered by the hand
    # left knee shares the hand dots' colour; the decoder must still find the knee, not the hand
    assert np.abs(body[12, :2] - seq.body[0, 12, :2] * 2).max() <= 1.5


@pytest.mark.parametrize("height, width, upscale", [(1080, 1920, 1), (720, 1280, 1), (2160, 3840, 1), (1024, 1024, 2)])
def test_decode_large_renders(height, width, upscale):
    """DWPose draws fixed-size strokes at any frame size (1080p/4K renders have 512-size discs); a render
    resized up has thicker strokes. The decoder reads the stroke size from the render itself."""
    import cv2

    seq = person(1, scale=height / 128 * 0.6)
    body = seq.body[0].copy()
    body[:, 0] += width / 2 - 64.5
    body[:, 1] += height / 2 - 64.5
    if upscale == 1:
        img = render_pose(body, None, height, width)
    else:
        small = body.copy()
        small[:, :2] /= upscale
        img = cv2.resize(render_pose(small, None, height // upscale, width // upscale), (width, height),
                         interpolation=cv2.INTER_LINEAR)
    got, _ = decode_pose(img)
    assert (got[:, 2] > 0).all(), f"joints lost at {width}x{height}"
    assert np.abs(got[:, :2] - body[:, :2]).max() <= 1.0 + upscale


def test_missing_joints_not_drawn():
    seq = person(1)
    seq.body[0, 10, 2] = 0  # right ankle missing
    body, _ = decode_pose(render_poses(seq)[0])
    assert body[10, 2] == 0 and body[9, 2] > 0


def test_align_bone_lengths_from_source_and_root_motion():
    src = person(3, scale=1.0)
    drv = person(5, shift=-20, scale=0.6)
    out = align_poses(src, drv, "first-frame")
    assert len(out) == 5 and (out.width, out.height) == (128, 128)
    for a, b in BODY_TREE:
        want = np.linalg.norm(src.body[0, a, :2] - src.body[0, b, :2])
        got = np.linalg.norm(out.body[:, a, :2] - out.body[:, b, :2], axis=-1)
        assert np.allclose(got, want, atol=1e-3)
    # root starts at the source's neck and moves by the driver's motion scaled to the source body
    assert np.allclose(out.body[0, 1, :2], src.body[0, 1, :2], atol=1e-3)
    assert np.allclose(out.body[:, 1, 0] - out.body[0, 1, 0], (np.arange(5) * 2) / 0.6, atol=1e-2)
    same = align_poses(drv, drv, "first-frame")
    assert np.allclose(same.body, drv.body, atol=1e-3)
    none = align_poses(src, drv, "none")
    assert np.allclose(none.body, drv.body)


def test_align_per_frame_follows_source_and_rescales_frame():
    src = person(4, shift=10)
    drv = person(4, scale=0.5).scaled(64, 64)  # another clip size
    out = align_poses(src, drv, "per-frame")
    assert np.allclose(out.body[:, 1, :2], src.body[:, 1, :2], atol=1e-3)


def test_short_gaps_are_filled_and_long_ones_stay_missing():
    rng = np.random.default_rng(0)
    pts = np.zeros((60, 2, 3), np.float32)
    pts[:, :, 0] = 50 + rng.normal(0, 2, (60, 2))
    pts[:, :, 1] = 50
    pts[:, :, 2] = 1
    pts[10:12, 0, 2] = 0
    pts[30:45, 1, 2] = 0  # a long gap stays missing
    filled = fill_gaps(pts, max_gap=3)
    assert (filled[10:12, 0, 2] > 0).all() and (filled[30:45, 1, 2] == 0).all()
    np.testing.assert_allclose(filled[10:12, 0, 0], np.interp([10, 11], [9, 12], pts[[9, 12], 0, 0]), rtol=1e-6)


def test_centred_smoothing_cuts_jitter_without_lag_even_at_gaps_and_ends():
    """The extracted BlazePose landmarks are smoothed by a centred Gaussian over frames: a joint moving
    linearly (any speed) stays exactly where it is — in the middle, at the clip's ends and beside a
    missing frame — while frame-to-frame detector noise shrinks; missing joints stay missing."""
    from mf_backend.pose.smooth import centred_gaussian

    f = 40
    t = np.arange(f, dtype=np.float32)
    pts = np.zeros((f, 2, 3), np.float32)
    pts[:, :, 2] = 1
    pts[:, 0, 0], pts[:, 0, 1] = 12 + 45 * t, 300 - 7 * t  # a fast wrist: 45 px a frame, linear
    pts[17, 0, 2] = 0  # one missed detection
    out = centred_gaussian(pts, sigma=0.8)
    vis = pts[:, 0, 2] > 0
    np.testing.assert_allclose(out[vis, 0, :2], pts[vis, 0, :2], atol=1e-3)  # no lag, no bias at the ends
    assert (out[17, 0] == pts[17, 0]).all() and (out[:, :, 2] == pts[:, :, 2]).all()

    rng = np.random.default_rng(0)
    noisy = pts.copy()
    noisy[:, 1, :2] = 200 + 60 * np.sin(t / 6)[:, None] + rng.normal(0, 3, (f, 2))  # a slow joint + jitter
    truth = 200 + 60 * np.sin(t / 6)
    smooth = centred_gaussian(noisy, sigma=0.5)
    accel = lambda p: np.abs(np.diff(p[:, 1, 0], 2)).mean()  # noqa: E731
    assert accel(smooth) < 0.75 * accel(noisy)
    assert np.abs(smooth[:, 1, 0] - truth).mean() < np.abs(noisy[:, 1, 0] - truth).mean()
    np.testing.assert_array_equal(centred_gaussian(noisy, sigma=0), noisy)


def test_dwpose_keypoints_follow_a_fast_wrist_without_lag(tmp_path, monkeypatch):
    """DWPose (controlnet-aux's Wholebody, replaced here by a stand-in detector: its weights are not in the
    repo) → the protagonist's body and hands in our order, smoothed centred: a wrist sweeping 40 px a frame
    stays on its detections (a One-Euro filter here left it 16-81 px behind on the example cases)."""
    import sys
    import types

    from mf_backend.pose.extract import DWPOSE_FILES, extract_dwpose

    f, size = 12, 256

    class Wholebody:  # controlnet_aux.dwpose.wholebody.Wholebody: BGR image → (N,134,2) keypoints, (N,134) scores
        def __init__(self, det: str, pose: str):
            assert det.endswith(DWPOSE_FILES[0]) and pose.endswith(DWPOSE_FILES[1])

        def __call__(self, bgr):
            t = int(bgr[0, 0, 0])  # the frame index, painted into each frame
            kp = np.zeros((2, 134, 2), np.float32)
            kp[0, :18] = np.stack([40 + 8 * np.arange(18), 60 + 6 * np.arange(18)], -1)  # the protagonist
            kp[0, 4] = (10 + 40 * t / 2, 200 - 3 * t)  # right wrist, fast
            kp[0, 113:134] = kp[0, 7] + np.arange(21)[:, None]  # COCO-WholeBody's right hand
            kp[1, :18] = kp[0, :18] * 0.2 + 5  # a small person in the corner
            scores = np.full((2, 134), 0.9, np.float32)
            scores[:, 92:113] = 0.1  # the left hand is not seen
            return kp, scores

    module = types.ModuleType("controlnet_aux.dwpose.wholebody")
    module.Wholebody = Wholebody
    for name in ("controlnet_aux", "controlnet_aux.dwpose"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "controlnet_aux.dwpose.wholebody", module)
    (tmp_path / "DWPose").mkdir()
    for n in DWPOSE_FILES:
        (tmp_path / "DWPose" / n).write_bytes(b"")
    frames = np.zeros((f, size, size, 3), np.uint8)
    frames[:, 0, 0, 2] = np.arange(f)  # RGB: the detector gets BGR, reads channel 0
    seq = extract_dwpose(frames, tmp_path, fps=24.0)
    t = np.arange(f)
    np.testing.assert_allclose(seq.body[:, 4, :2], np.stack([10 + 20 * t, 200 - 3 * t], -1), atol=1e-3)
    np.testing.assert_allclose(seq.body[:, 0, :2], np.broadcast_to([40, 60], (f, 2)), atol=1e-4)  # the big one
    assert (seq.hands[:, 0, :, 2] > 0).all() and (seq.hands[:, 1, :, 2] == 0).all()  # right hand first
    np.testing.assert_allclose(seq.hands[:, 0, 5, :2], seq.body[:, 7, :2] + 5, atol=1e-3)


def test_blazepose_mapping_and_protagonist():
    lm = np.zeros((1, 33, 4), np.float32)
    lm[0, :, :2] = 0.5
    lm[0, :, 3] = 0.9
    lm[0, 11, :2], lm[0, 12, :2] = (0.6, 0.3), (0.4, 0.3)  # left / right shoulder
    body = blazepose_to_openpose(lm, 100, 200)
    assert np.allclose(body[0, 1, :2], (50, 60)) and np.allclose(body[0, 2, :2], (40, 60))
    big, small = person(1).body[0], person(1, scale=0.3, shift=-40).body[0]
    first = [np.stack([small, big])]
    later = [np.stack([big + 60, big + 3])]
    assert track_protagonist(first + later, 128, 128) == [1, 1]


def test_prepare_end_to_end_with_pose_render_driving(tmp_path):
    from mf_backend.jobs import JobContext
    from mf_backend.media import write_frames
    from mf_backend.params import AdvancedParams, JobParams
    from mf_backend.prepare import prepare

    # source given as pose renders too (no mediapipe accuracy needed), driving: a smaller, moving person
    write_frames(render_poses(person(4)), tmp_path / "src")
    write_frames(render_poses(person(6, shift=-20, scale=0.6)), tmp_path / "drv")
    events = []
    # geometric M_e keeps this pose test fast; the DiT predictor path is covered in test_masks.py
    params = JobParams(source=str(tmp_path / "src"), driving=str(tmp_path / "drv"), out=str(tmp_path / "out"),
                       advanced=AdvancedParams(mask_predictor="geometric"))
    result = prepare(params, JobContext(sink=events.append))
    out = Path(result["out"])
    for kind in ("source_poses", "target_poses", "target_aligned_poses"):
        assert len(list((out / kind).glob("frame_*.png"))) == 4
    aligned = PoseSequence.load(out / "target_aligned_keypoints.json")
    assert len(aligned) == 4
    # the aligned pose has the source's size: its torso matches the source torso, not the driver's
    torso = np.linalg.norm(aligned.body[:, 1, :2] - aligned.body[:, 8, :2], axis=-1)
    src_torso = np.linalg.norm(STAND[1] - STAND[8])
    assert np.allclose(torso, src_torso, atol=1.5)
    assert events and events[-1]["stage"] == "write"
    with pytest.raises(Exception):  # never overwrites
        prepare(params, JobContext())


@pytest.mark.skipif(not CASES.is_dir(), reason="../shared/real-cases not present")
def test_renderer_matches_reference_render():
    import cv2

    img = cv2.imread(str(CASES / "case-1" / "source_poses" / "frame_0.png"))[:, :, ::-1]
    assert looks_like_pose_render(img[None])
    seq = decode_poses(img[None])
    assert (seq.body[0, :, 2] > 0).sum() == 18
    again = render_poses(seq)[0]
    same = (again == img).all(-1)
    fg = (again.max(-1) > 0) | (img.max(-1) > 0)
    assert same.mean() > 0.99 and same[fg].mean() > 0.8
    # body pixels (limbs and joints) agree almost everywhere; hands are approximations
    body_only = render_poses(PoseSequence(seq.body, np.zeros_like(seq.hands), 512, 512))[0]
    code = lambda rgb: (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    body_px = np.isin(code(img), code(np.concatenate([JOINT_RGB, LIMB_RGB])))
    assert (body_only == img).all(-1)[body_px & (body_only.max(-1) > 0)].mean() > 0.9


def test_real_photo_not_a_pose_render():
    rng = np.random.default_rng(0)
    assert not looks_like_pose_render(rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8))


def _about(seq: PoseSequence, scale: np.ndarray, anchor: np.ndarray) -> PoseSequence:
    """seq scaled per frame by scale (F,) about anchor (F,2) (visible points only)."""
    out = seq.copy()
    for pts in (out.body, out.hands):
        s, a = scale.reshape(-1, *(1,) * (pts.ndim - 2), 1), anchor.reshape(-1, *(1,) * (pts.ndim - 2), 2)
        pts[..., :2] = np.where(pts[..., 2:] > 0, a + s * (pts[..., :2] - a), 0)
    return out


def test_align_reference_scales_driver_about_its_ground_point():
    from mf_backend.params import JobParams
    from mf_backend.pose.align import body_box

    src = person(4)
    src.hands[:, 0, :, :2] = src.body[:, 4:5, :2] + np.linspace(0, 6, 21)[:, None]  # a hand at the right wrist
    src.hands[:, 0, :, 2] = 1.0
    top, bottom, cx = body_box(src)
    ground = np.stack([cx, bottom], -1)  # (F,2)
    assert top[0] < src.body[0, [0, 14, 15, 16, 17], 1].min() and bottom[0] > src.body[0, 10, 1]
    # the driver: the source shrunk by a different factor per frame about the source's ground point
    shrink = np.array([0.6, 0.7, 0.8, 0.9], np.float32)
    drv = _about(src, shrink, ground)
    out = align_poses(src, drv, "reference")
    assert np.allclose(out.body, src.body, atol=1e-3) and np.allclose(out.hands, src.hands, atol=1e-3)
    # no retargeting: the output is a uniform scaling of the driver (bone-length ratios are the driver's)
    other = person(4, scale=0.95, shift=-15)  # another source, taller than every driver frame
    out = align_poses(other, drv, "reference")
    d_len = np.linalg.norm(drv.body[:, 1, :2] - drv.body[:, 8, :2], axis=-1)
    o_len = np.linalg.norm(out.body[:, 1, :2] - out.body[:, 8, :2], axis=-1)
    for a, b in BODY_TREE:
        got = np.linalg.norm(out.body[:, a, :2] - out.body[:, b, :2], axis=-1)
        want = np.linalg.norm(drv.body[:, a, :2] - drv.body[:, b, :2], axis=-1) * o_len / d_len
        assert np.allclose(got, want, atol=1e-2)
    # heights match the source's per frame; the driver keeps its placement (its ground point stays put)
    t_o, b_o, c_o = body_box(out)
    t_s, b_s, _ = body_box(other)
    assert np.allclose(b_o - t_o, (b_s - t_s), atol=0.5)
    t_d, b_d, c_d = body_box(drv)
    assert np.allclose(b_o, b_d, atol=0.5) and np.allclose(c_o, c_d, atol=0.5)
    assert JobParams(source="s", driving="d", out="o", align="reference").align == "reference"


def test_align_reference_keeps_driver_when_both_fill_the_frame():
    # Head and legs leave the frame in both clips: equal heights (the frame's), so the driver is unchanged,
    # as in the reference's camera case where aligned == driving poses.
    src, drv = person(2, scale=1.6), person(2, scale=1.9, shift=-10)
    src.body[:, [10, 13]] = 0  # ankles out of the frame
    drv.body[:, [10, 13]] = 0
    assert np.allclose(align_poses(src, drv, "reference").body, drv.body, atol=1e-4)
    # a missing person in a source frame leaves that driver frame as is
    src.body[1] = 0
    out = align_poses(person(2, scale=0.8), drv, "reference")
    assert not np.allclose(out.body[0], drv.body[0], atol=1.0)
    assert np.allclose(align_poses(src, drv, "reference").body[1], drv.body[1])


@pytest.mark.skipif(not CASES.is_dir(), reason="../shared/real-cases not present")
def test_align_reference_matches_reference_aligned_poses():
    from mf_backend.bench.poses import joint_error, read_pose_folder

    case, frames = CASES / "case-1", slice(0, 6)
    src, drv, ref = (decode_poses(read_pose_folder(case / kind)[frames])
                     for kind in ("source_poses", "target_poses", "target_aligned_poses"))
    err = joint_error(align_poses(src, drv, "reference").body, ref.body)[0]
    raw = joint_error(drv.body, ref.body)[0]
    first = joint_error(align_poses(src, drv, "first-frame").body, ref.body)[0]
    assert err < 12.0 and err < 0.3 * raw and err < first, (err, raw, first)
