"""Driving-clip time mapping: each policy gives the frame mapping documented in mf_backend/timing.py."""

from __future__ import annotations

import numpy as np
import pytest

from mf_backend.errors import InvalidParams
from mf_backend.timing import driving_positions, map_driving_frames, resample_keypoints, resample_pose_sequence


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("trim", [0, 1, 2, 3, -1, -1]),
        ("loop", [0, 1, 2, 3, 0, 1]),
        ("hold-last", [0, 1, 2, 3, 3, 3]),
        ("stretch", [0, 1, 1, 2, 2, 3]),  # positions 0, .6, 1.2, 1.8, 2.4, 3 rounded
    ],
)
def test_driving_shorter_than_source(policy, expected):
    got = map_driving_frames(6, 24.0, 4, 24.0, policy)
    assert got.tolist() == expected
    assert got.dtype == np.int64


@pytest.mark.parametrize("policy", ["trim", "loop", "hold-last"])
def test_driving_longer_than_source_uses_its_start(policy):
    assert map_driving_frames(4, 30.0, 10, 30.0, policy).tolist() == [0, 1, 2, 3]


def test_stretch_speeds_up_a_longer_driving_clip_and_spans_it_exactly():
    pos = driving_positions(5, 30.0, 9, 60.0, "stretch")
    np.testing.assert_allclose(pos, [0, 2, 4, 6, 8])  # fps ignored: first pose on the first frame, last on the last
    assert map_driving_frames(1, 24.0, 9, 24.0, "stretch").tolist() == [0]


def test_fps_difference_is_handled_by_time_not_index():
    # 24 fps source, 60 fps driving: 2.5 driving frames per source frame, sample and hold
    assert map_driving_frames(5, 24.0, 100, 60.0, "trim").tolist() == [0, 2, 5, 7, 10]
    # 60 fps source, 24 fps driving: each driving frame is shown for 2.5 source frames
    assert map_driving_frames(6, 60.0, 100, 24.0, "trim").tolist() == [0, 0, 0, 1, 1, 2]
    # NTSC rates: 23.976/29.97 = 0.8 exactly; 5 * 0.8 must land on 4, not 3.999...
    assert map_driving_frames(6, 29.97, 100, 23.976, "trim").tolist() == [0, 0, 1, 2, 3, 4]
    # 2 s of 24 fps source against a 1 s clip at 60 fps: trim ends the edit at 1 s
    m = map_driving_frames(48, 24.0, 60, 60.0, "trim")
    assert (m[:24] >= 0).all() and (m[24:] == -1).all() and m[23] == 57
    # loop by time wraps after 1 s too
    m = map_driving_frames(48, 24.0, 60, 60.0, "loop")
    assert m[24] == 0 and m[25] == 2


def test_missing_fps_means_frame_for_frame():
    assert map_driving_frames(4, None, 10, 60.0, "trim").tolist() == [0, 1, 2, 3]
    assert map_driving_frames(4, None, 10, None, "trim").tolist() == [0, 1, 2, 3]


def test_frame_range_edits_only_a_to_b_and_starts_the_driving_clip_at_a():
    m = map_driving_frames(10, 24.0, 2, 24.0, "trim", frame_range=(3, 6))
    assert m.tolist() == [-1, -1, -1, 0, 1, -1, -1, -1, -1, -1]
    m = map_driving_frames(10, 24.0, 2, 24.0, "loop", frame_range=(3, 6))
    assert m.tolist() == [-1, -1, -1, 0, 1, 0, 1, -1, -1, -1]
    pos = driving_positions(10, 24.0, 5, 24.0, "stretch", frame_range=(2, 4))
    assert np.isnan(pos[:2]).all() and np.isnan(pos[5:]).all()
    np.testing.assert_allclose(pos[2:5], [0, 2, 4])
    # open ends
    assert map_driving_frames(5, 24.0, 9, 24.0, "trim", frame_range=(2, None)).tolist() == [-1, -1, 0, 1, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(policy="bounce"),
        dict(n_driving=0),
        dict(frame_range=(5, 2)),
        dict(frame_range=(20, None)),
        dict(source_fps=-24.0),
    ],
)
def test_bad_timing_arguments_raise_invalid_params(kwargs):
    args = dict(n_source=10, source_fps=24.0, n_driving=5, driving_fps=24.0, policy="trim")
    args.update(kwargs)
    with pytest.raises(InvalidParams):
        map_driving_frames(**args)


def test_resample_keypoints_interpolates_and_never_drags_missing_joints_to_zero():
    kps = np.zeros((3, 2, 3), np.float32)
    kps[:, 0] = [[0, 0, 1], [10, 20, 1], [20, 40, 1]]
    kps[:, 1] = [[100, 100, 1], [0, 0, 0], [200, 300, 1]]  # joint 1 missing in the middle frame
    out = resample_keypoints(kps, np.array([0.25, 1.25, 2.0]))
    np.testing.assert_allclose(out[:, 0], [[2.5, 5, 1], [12.5, 25, 1], [20, 40, 1]])
    np.testing.assert_allclose(out[0, 1], [100, 100, 1])  # one neighbour missing: the nearer frame's value
    np.testing.assert_allclose(out[1, 1], [0, 0, 0])  # nearest frame (1) has it missing: stays missing
    np.testing.assert_allclose(out[2, 1], [200, 300, 1])


def test_resample_pose_sequence_changes_length_and_fps():
    from dataclasses import dataclass

    @dataclass
    class Seq:  # the PoseSequence fields this function touches
        body: np.ndarray
        hands: np.ndarray
        width: int = 64
        height: int = 64
        fps: float | None = 30.0

    body = np.random.default_rng(0).uniform(1, 60, (4, 18, 3)).astype(np.float32)
    seq = Seq(body, np.zeros((4, 2, 21, 3), np.float32))
    out = resample_pose_sequence(seq, driving_positions(7, 24.0, 4, 30.0, "stretch"), fps=24.0)
    assert out.body.shape == (7, 18, 3) and out.hands.shape == (7, 2, 21, 3) and out.fps == 24.0
    np.testing.assert_allclose(out.body[0], body[0])
    np.testing.assert_allclose(out.body[-1], body[-1])
    with pytest.raises(ValueError):
        resample_pose_sequence(seq, np.array([0.0, np.nan]))
