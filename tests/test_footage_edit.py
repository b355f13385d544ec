"""Real footage through the edit job: a 1920×1080 clip with the person off-centre is edited in a person
crop (or letterboxed) by the tiny random model and composited back at full resolution; timing policies
and frame ranges decide which source frames are edited; bad media give named errors.

No pose/mask models run: the synthetic pair's own pose renders and masks are passed as user folders.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

H, W, FRAMES, SIZE = 1080, 1920, 6, 64


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from mf_backend.models.loading import build_models, save_models

    return save_models(build_models("tiny", seed=0), tmp_path_factory.mktemp("models") / "tiny")


def _make_case(root, size: tuple[int, int]) -> dict:
    """A synthetic pair in the example-case layout (the person off-centre), driving renders at 270×480."""
    from mf_backend.media import write_frames, write_masks
    from mf_backend.pose.render import render_poses
    from mf_backend.synthetic import make_pair

    pair = make_pair(0, frames=FRAMES, size=size, x_frac=0.3, height_frac=0.55, driving_size=(270, 480))
    write_frames(pair.source.frames, root / "source_images")
    write_frames(pair.source.pose_renders, root / "source_poses")
    # the pose decoder reads small renders reliably and fast; edit scales their keypoints to the frame
    write_frames(render_poses(pair.source.poses, 270, 480), root / "source_poses_small")
    write_frames(pair.target_aligned_poses, root / "target_aligned_poses")
    write_masks(pair.source.masks, root / "source_masks")
    write_masks(pair.gt_edited.masks, root / "predicted_masks")
    write_frames(pair.driving.pose_renders, root / "driving")
    write_frames(pair.driving.pose_renders[:4], root / "driving4")
    union = (pair.source.masks >= 0.5) | (pair.gt_edited.masks >= 0.5)  # (F,H,W) M_r ∪ M_e at full resolution
    return {"root": root, "frames": pair.source.frames, "union": union}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return _make_case(tmp_path_factory.mktemp("case"), (H, W))


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    """16:9 at 480×270: the timing tests check frame mappings, which do not depend on the resolution."""
    return _make_case(tmp_path_factory.mktemp("small"), (270, 480))


def _params(case, out, model, **kw):
    from mf_backend.params import JobParams, nest

    root = case["root"]
    d = {"source": str(root / "source_images"), "driving": str(root / "driving"), "out": str(out),
         "model": str(model), "device": "cpu", "precision": "fp32", "steps": 2, "size": SIZE, "seed": 1,
         "pose_extractor": "decode",
         "source_poses": str(root / "source_poses"), "target_aligned_poses": str(root / "target_aligned_poses"),
         "source_masks": str(root / "source_masks"), "predicted_masks": str(root / "predicted_masks")}
    d.update(kw)
    return JobParams.from_dict(nest({k: v for k, v in d.items() if v is not None}))


def _run(params):
    from mf_backend.edit import edit
    from mf_backend.jobs import JobContext
    from mf_backend.media import read_clip

    res = edit(params, JobContext())
    info = json.loads((params.out_path / "edit.json").read_text())
    return read_clip(res["out"]).frames, info


def _check_composite(out, case, info, edited):
    """Edited frames change only within the dilated + feathered M_r ∪ M_e (and do change there);
    every other frame, and every pixel outside that region, is the source's bytes."""
    src = case["frames"]
    assert out.shape == src.shape and out.dtype == np.uint8
    assert (info["frames"], info["height"], info["width"]) == src.shape[:3]
    scale = SIZE / info["crop"]["side"]
    # reach of composite's alpha: dilate + feather (size/32 + size/64) plus one crop pixel for resampling
    # the masks and one for the bilinear alpha, in full-resolution pixels
    reach = (SIZE / 32 + SIZE / 64 + 2) / scale
    for f in range(FRAMES):
        if f not in edited:
            assert np.array_equal(out[f], src[f]), f"frame {f} is not edited but changed"
            continue
        dist = cv2.distanceTransform((~case["union"][f]).astype(np.uint8), cv2.DIST_L2, 5)
        outside = dist > reach
        assert np.array_equal(out[f][outside], src[f][outside]), f"frame {f}: pixels outside the mask region changed"
        assert (out[f][case["union"][f]] != src[f][case["union"][f]]).any(), f"frame {f}: the edit did not land"


@pytest.mark.parametrize("crop", ["person", "letterbox"])
def test_1080p_edit_keeps_resolution_and_everything_outside_the_masks(tmp_path, tiny_folder, case, crop):
    out, info = _run(_params(case, tmp_path / "out", tiny_folder, crop=crop))
    _check_composite(out, case, info, edited=range(FRAMES))
    plan = info["crop"]
    assert plan["mode"] == crop and plan["size"] == SIZE and (plan["frame_w"], plan["frame_h"]) == (W, H)
    if crop == "person":  # a square around the off-centre person, inside the frame
        ys, xs = np.nonzero(case["union"].any(axis=0))
        assert plan["side"] < H and 0 <= plan["x0"] <= xs.min() and xs.max() < plan["x0"] + plan["side"]
        assert 0 <= plan["y0"] <= ys.min() and ys.max() < plan["y0"] + plan["side"]
        assert plan["x0"] + plan["side"] < 0.6 * W  # the person stands at 0.3 of the width
    else:
        assert (plan["x0"], plan["y0"], plan["side"]) == (0, (H - W) // 2, W)
    assert info["timing"]["driving_frames"] == list(range(FRAMES)) and info["edited_frames"] == [0, FRAMES - 1]
    assert info["timings"]["crop_composite_ms_per_frame"] > 0


@pytest.mark.parametrize("policy, fps, driving, expected", [
    ("trim", None, "driving4", [0, 1, 2, 3, -1, -1]),
    ("loop", None, "driving4", [0, 1, 2, 3, 0, 1]),
    ("hold-last", None, "driving4", [0, 1, 2, 3, 3, 3]),
    ("stretch", None, "driving4", [0, 1, 1, 2, 2, 3]),
    ("trim", (24, 60), "driving", [0, 2, 5, -1, -1, -1]),  # by time: 2.5 driving frames per source frame
])
def test_timing_policies_through_edit(tmp_path, tiny_folder, small_case, policy, fps, driving, expected):
    """The driving poses are decoded from the driving clip and retargeted here (no user aligned poses),
    so the policy decides both which frames are edited and which driving pose each one gets."""
    case = small_case
    fs, fd = fps or (None, None)
    params = _params(case, tmp_path / "out", tiny_folder, timing=policy, driving=str(case["root"] / driving),
                     source_fps=fs, driving_fps=fd, source_poses=str(case["root"] / "source_poses_small"),
                     target_aligned_poses=None)
    out, info = _run(params)
    assert info["timing"]["driving_frames"] == expected and info["timing"]["policy"] == policy
    edited = [i for i, j in enumerate(expected) if j >= 0]
    assert info["edited_frames"] == [edited[0], edited[-1]]
    _check_composite(out, case, info, edited)


def test_timing_policy_picks_the_driving_pose(small_case):
    """Source frames mapped to the same driving frame get the same target pose; others do not."""
    from mf_backend.edit import prepare_clip
    from mf_backend.jobs import JobContext

    case = small_case
    root = case["root"]
    for policy, same in (("loop", [(0, 4), (1, 5)]), ("hold-last", [(3, 4), (3, 5)])):
        params = _params(case, root / "unused", "tiny", timing=policy, driving=str(root / "driving4"),
                         source_poses=str(root / "source_poses_small"), target_aligned_poses=None)
        tgt = prepare_clip(params, JobContext()).inputs.target_poses.numpy()
        assert len(tgt) == FRAMES
        for a, b in same:
            assert np.array_equal(tgt[a], tgt[b]), (policy, a, b)
        assert not np.array_equal(tgt[0], tgt[1]) and not np.array_equal(tgt[2], tgt[3])


def test_frame_range_edits_only_a_to_b(tmp_path, tiny_folder, case):
    out, info = _run(_params(case, tmp_path / "out", tiny_folder, frame_start=2, frame_end=4))
    assert info["edited_frames"] == [2, 4] and info["timing"]["driving_frames"] == [-1, -1, 0, 1, 2, -1]
    _check_composite(out, case, info, edited=[2, 3, 4])


def test_bad_media_give_named_errors(tmp_path, case):
    from mf_backend.edit import edit
    from mf_backend.errors import BadInputMedia
    from mf_backend.jobs import JobContext
    from mf_backend.media import write_masks

    root = case["root"]
    broken = tmp_path / "broken_clip.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    short_masks = tmp_path / "short_masks"
    write_masks(np.zeros((3, H // 8, W // 8), np.float32), short_masks)
    empty_png = tmp_path / "frames"
    empty_png.mkdir()
    (empty_png / "frame_0.png").write_bytes(b"")
    cases = [({"source": str(broken)}, "broken_clip.mp4"),
             ({"source_masks": str(short_masks)}, "short_masks"),
             ({"source": str(empty_png)}, "frame_0.png"),
             ({"driving": str(tmp_path / "missing_driving")}, "missing_driving")]
    for i, (kw, name) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(BadInputMedia, match=name):
            edit(_params(case, out, "tiny", **kw), JobContext())
        assert not out.exists()
    assert root.exists()
