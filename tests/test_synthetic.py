"""The synthetic motion world: determinism, exact masks, keypoints inside masks, GT edit = aligned pose, CLI layout."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mf_backend.pose.align import align_poses
from mf_backend.pose.keypoints import PoseSequence
from mf_backend.pose.render import render_poses
from mf_backend.synthetic import make_clip, make_pair, preview_sheet
from mf_backend.synthetic.draw import draw_person
from mf_backend.synthetic.motion import pose_skeleton, sample_program
from mf_backend.synthetic.person import sample_person

SEEDS = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def pairs():
    return [make_pair(s, 5, 64) for s in SEEDS]


def _clips(pair):
    return {"source": pair.source, "driving": pair.driving, "gt_edited": pair.gt_edited}


def test_same_seed_same_pair_and_different_seed_differs():
    a, b, c = make_pair(7, 3, 48), make_pair(7, 3, 48), make_pair(8, 3, 48)
    for name in ("source", "driving", "gt_edited"):
        x, y, z = getattr(a, name), getattr(b, name), getattr(c, name)
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.masks, y.masks)
        np.testing.assert_array_equal(x.poses.body, y.poses.body)
        np.testing.assert_array_equal(x.poses.hands, y.poses.hands)
        assert not np.array_equal(x.frames, z.frames)
        assert not np.allclose(x.poses.body, z.poses.body)


def test_shapes_types_and_pose_renders(pairs):
    for pair in pairs:
        for name, clip in _clips(pair).items():
            assert clip.frames.shape == (5, 64, 64, 3) and clip.frames.dtype == np.uint8, name
            assert clip.masks.shape == (5, 64, 64) and clip.masks.dtype == np.float32, name
            assert set(np.unique(clip.masks)) <= {0.0, 1.0}, name
            assert clip.masks.reshape(5, -1).sum(1).min() > 20, f"{name}: a frame without a person"
            assert isinstance(clip.poses, PoseSequence) and (clip.poses.width, clip.poses.height) == (64, 64)
            np.testing.assert_array_equal(clip.pose_renders, render_poses(clip.poses))
        np.testing.assert_array_equal(pair.target_aligned.pose_renders, render_poses(pair.target_aligned.poses))


def test_frame_is_background_outside_the_mask(pairs):
    for pair in pairs:
        for name, clip in _clips(pair).items():
            outside = clip.masks == 0
            np.testing.assert_array_equal(clip.frames[outside], clip.background[outside], err_msg=name)
        # The edit happens in the source's scene and camera: same background plate.
        np.testing.assert_array_equal(pair.gt_edited.background, pair.source.background)


def test_mask_covers_exactly_the_drawn_person():
    clip = make_clip(11, 4, 56, fit=True)
    body, hands = clip.poses.body, clip.poses.hands
    args = (body, hands, clip.yaw, clip.part_depth, clip.px, clip.person)
    black = draw_person(np.zeros((4, 56, 56, 3), np.uint8), *args)
    white = draw_person(np.full((4, 56, 56, 3), 255, np.uint8), *args)
    noise = draw_person(np.random.default_rng(0).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8), *args)
    np.testing.assert_array_equal(black.labels, clip.labels)  # same drawing as inside make_clip
    inside = black.masks > 0
    # Inside the mask the pixels are the person's whatever the background; outside they are the background.
    np.testing.assert_array_equal(black.frames[inside], white.frames[inside])
    np.testing.assert_array_equal(black.frames[inside], noise.frames[inside])
    assert (black.frames[~inside] == 0).all() and (white.frames[~inside] == 255).all()
    np.testing.assert_array_equal(black.frames[inside], clip.frames[inside])


def _assert_points_in_mask(points: np.ndarray, masks: np.ndarray, what: str) -> int:
    """points (F,N,3) with confidence; every present point inside the frame must fall on the mask."""
    n_f, h, w = masks.shape
    x, y = np.floor(points[..., 0]).astype(int), np.floor(points[..., 1]).astype(int)
    present = (points[..., 2] > 0) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    f_idx = np.broadcast_to(np.arange(n_f)[:, None], present.shape)
    on_mask = masks[f_idx[present], y[present], x[present]] > 0
    assert on_mask.all(), f"{what}: {np.count_nonzero(~on_mask)} of {on_mask.size} keypoints off the mask"
    return int(present.sum())


def test_keypoints_lie_inside_the_masks(pairs):
    checked = 0
    for pair in pairs:
        for name, clip in _clips(pair).items():
            checked += _assert_points_in_mask(clip.poses.body, clip.masks, f"seed {pair.seed} {name} body")
            checked += _assert_points_in_mask(clip.poses.hands.reshape(5, -1, 3), clip.masks,
                                              f"seed {pair.seed} {name} hands")
            assert not (clip.visible & (clip.poses.body[..., 2] == 0)).any(), "visible but missing"
            assert clip.visible.mean() > 0.5, name
    assert checked > 1000


def test_gt_edit_is_drawn_at_the_aligned_pose(pairs):
    for pair in pairs:
        expected = align_poses(pair.source.poses, pair.driving.poses, mode="first-frame")
        for seq in (pair.gt_edited.poses, pair.target_aligned.poses):
            np.testing.assert_array_equal(seq.body, expected.body)
            np.testing.assert_array_equal(seq.hands, expected.hands)
        # The GT person is the source person (same appearance), moving like the driver.
        assert pair.gt_edited.person is pair.source.person
        np.testing.assert_array_equal(pair.gt_edited.yaw, pair.driving.yaw)


def test_driving_body_stays_in_frame_so_the_edit_is_complete(pairs):
    non_face = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    for pair in pairs:
        assert (pair.driving.poses.body[:, non_face, 2] > 0).all(), f"seed {pair.seed}"
        assert (pair.gt_edited.poses.body[:, non_face, 2] > 0).all(), f"seed {pair.seed}"


def test_turning_swaps_left_and_right_and_hides_the_face():
    rng = np.random.default_rng(0)
    person = sample_person(rng)
    curves = sample_program(rng, 2, turn=0.0)
    curves["yaw"] = np.array([0.0, np.pi])
    sk = pose_skeleton(person, curves)
    r_sh, l_sh = sk.body[:, 2, 0], sk.body[:, 5, 0]
    assert r_sh[0] < l_sh[0] and r_sh[1] > l_sh[1]  # facing: the right shoulder is on image left; turned: swapped
    assert sk.face_seen[0, 0] and not sk.face_seen[1, 0]  # the nose is seen from the front only
    curves["yaw"] = np.array([0.0, np.pi / 2])
    sk = pose_skeleton(person, curves)
    width = np.abs(sk.body[:, 5, 0] - sk.body[:, 2, 0])
    assert width[1] < 0.3 * width[0]  # side-on, the shoulders narrow


def test_non_square_frame_with_the_person_off_centre():
    pair = make_pair(3, 2, (36, 64), x_frac=0.25, height_frac=0.7)
    for clip in (pair.source, pair.gt_edited):
        assert clip.frames.shape == (2, 36, 64, 3) and clip.masks.shape == (2, 36, 64)
    assert pair.source.poses.width == 64 and pair.source.poses.height == 36
    cols = np.nonzero(pair.source.masks[0].any(0))[0]
    assert cols.mean() < 32  # the person stands in the left half


def test_write_pair_layout_and_cli(tmp_path):
    from mf_backend.cli import main

    out = tmp_path / "pair"
    sheet = tmp_path / "sheet.png"
    assert main(["synth", "--out", str(out), "--seed", "2", "--frames", "3", "--size", "40",
                 "--preview", str(sheet)]) == 0
    for kind in ("source_images", "source_poses", "source_masks", "target_images", "target_poses",
                 "target_aligned_poses", "target_masks", "gt_edited_images", "gt_edited_masks"):
        files = sorted(p.name for p in (out / kind).iterdir())
        assert files == ["frame_0.png", "frame_1.png", "frame_2.png"], kind
    mask = cv2.imread(str(out / "gt_edited_masks" / "frame_1.png"), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    pair = make_pair(2, 3, 40)
    img = cv2.cvtColor(cv2.imread(str(out / "source_images" / "frame_2.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(img, pair.source.frames[2])
    aligned = PoseSequence.load(out / "target_aligned_keypoints.json")
    np.testing.assert_allclose(aligned.body, pair.target_aligned.poses.body, atol=1e-3)
    for name in ("source_keypoints.json", "target_keypoints.json"):
        assert len(PoseSequence.load(out / name)) == 3
    info = json.loads((out / "synthetic_info.json").read_text())
    assert info["seed"] == 2 and len(info["visible"]["gt_edited"]) == 3
    assert cv2.imread(str(sheet)).shape[2] == 3
    # Never overwrites: a second write into the same (non-empty) folder is refused.
    assert main(["synth", "--out", str(out), "--seed", "3", "--frames", "2", "--size", "32"]) == 2


def test_preview_sheet_is_an_rgb_image(pairs):
    sheet = preview_sheet(pairs[0], columns=3, tile=32)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    assert sheet.shape[0] >= 7 * 32  # one row per stream


def test_side_view_hides_the_far_shoulder():
    from mf_backend.synthetic.pair import _visibility

    rng = np.random.default_rng(1)
    person = sample_person(rng)
    curves = sample_program(rng, 3, turn=0.0)
    curves["yaw"] = np.full(3, np.pi / 2)  # facing image right: the person's left side is away from the camera
    sk = pose_skeleton(person, curves)
    px = np.full(3, 48.0, np.float32)
    body = np.concatenate([sk.body[..., :2] * 48.0 + (32, 60), np.ones((3, 18, 1), np.float32)], -1)
    body[:, [0, 14, 15, 16, 17], 2] = sk.face_seen
    drawn = draw_person(np.zeros((3, 64, 64, 3), np.uint8), body, np.zeros((3, 2, 21, 3)), sk.yaw,
                        sk.part_depth, px, person)
    visible = _visibility(body, drawn.labels)
    assert visible[:, 2].all() and not visible[:, 5].any()  # near (right) shoulder seen, far (left) hidden
    assert not visible[:, 15].any()  # the left eye is turned away
