"""Host memory of an edit does not grow with the clip: the full-resolution stages (read → poses → masks
→ crop → composite → write) pass a chunk of frames at a time (mf_backend/streaming.py, frames.py), and
only working-size arrays and keypoints are kept for the whole clip.

The peak of Python-tracked allocations (numpy arrays, cv2 images; tracemalloc) of a whole `edit` is
measured at two clip lengths with the tiny random model: with the user's pose and mask folders (no pose
or mask model), 16 and 80 frames of 360×640; as a user starts it (BlazePose poses, the driving clip's
renders decoded, M_r and M_e computed), 32 and 96 frames of 720×1280 (both several chunks; at 720p the
≈ 0.25 MB a frame that is kept on purpose, the masks shrunk for the warp and the working-size crops, is
far from a full-resolution frame). Holding the clip, or any full-resolution mask, would add at least a
frame's bytes for every further frame; the streamed edit adds only its small copies.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
from conftest import write_noise_avi

ROUTES = {"user": ((360, 640), 16, 80), "computed": ((720, 1280), 32, 96)}  # frame size, short, long

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _edit_peak(root, frames: int, model, route: str, hw: tuple[int, int]) -> tuple[int, dict]:
    """Peak bytes traced during an edit of `frames` frames, and its result."""
    from mf_backend.bench.host_memory import write_case
    from mf_backend.dispatch import run_job
    from mf_backend.jobs import JobContext
    from mf_backend.params import JobParams

    case = write_case(root, frames, hw)
    if route == "computed":  # the clips only: poses extracted, masks computed
        case = {"source": case["source"], "driving": case["driving"]}
    params = JobParams.from_dict({**case, "out": str(root / f"out{frames}"), "model": str(model), "size": 64,
                                  "steps": 1, "device": "cpu", "precision": "fp32", "threads": 1})
    gc.collect()  # the previous run's garbage does not count
    tracemalloc.start()
    try:
        result = run_job("edit", params, JobContext())
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("route", ["user", "computed"])
def test_edit_peak_memory_does_not_grow_with_frames(tmp_path, tiny_folder, route):
    from mf_backend.media import read_clip

    hw, SHORT, LONG = ROUTES[route]
    _edit_peak(tmp_path / "warm-up", SHORT, tiny_folder, route, hw)  # first-run costs (imports, caches) do not count
    short, _ = _edit_peak(tmp_path, SHORT, tiny_folder, route, hw)
    long, result = _edit_peak(tmp_path, LONG, tiny_folder, route, hw)
    frame_bytes = hw[0] * hw[1] * 3  # one full-resolution RGB frame, uint8
    growth = (long - short) / (LONG - SHORT)
    print(f"{route}: traced peak: {SHORT} frames {short / 2**20:.1f} MB, {LONG} frames {long / 2**20:.1f} MB "
          f"({growth / 1024:.0f} KB per added frame; a full-resolution frame is {frame_bytes / 1024:.0f} KB)")
    assert growth < 0.25 * frame_bytes, "the edit holds full-resolution data for the whole clip"
    # and the streamed output is complete: every frame, the unedited pixels the source's
    out = read_clip(result["out"]).frames
    src = read_clip(tmp_path / f"f{LONG}" / "source_images").frames
    assert out.shape == src.shape and result["edited_frames"] == [0, LONG - 1]
    assert np.array_equal(out[:, :, :100], src[:, :, :100])  # the person stands right of x=100 (x_frac 0.3)


def test_footage_counts_the_frames_that_decode_without_holding_them(tmp_path):
    """A movie whose container claims more frames than decode is refused up front (as a whole read is),
    and a chunk read past what decodes is a named error, not a short clip."""
    from mf_backend.errors import BadInputMedia
    from mf_backend.streaming import Footage, open_footage

    whole = write_noise_avi(tmp_path / "whole.avi", 24, (48, 64))
    footage = open_footage(str(whole))
    assert (footage.num_frames, footage.height, footage.width, footage.fps) == (24, 48, 64, 24.0)
    assert footage.read(16, 24).num_frames == 8
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(BadInputMedia, match=r"cut.avi' says it has 24 frames but only 1\d decode"):
        open_footage(str(cut))
    short = Footage(str(cut), footage.head, 24)  # as if the container's count had been believed
    with pytest.raises(BadInputMedia, match=r"cut.avi.* (no decodable frames|do not all decode)"):
        short.read(16, 24)


def test_masks_a_chunk_at_a_time_equal_the_whole_clip(monkeypatch, tmp_path):
    """M_r (BlazePose tracking one person across chunks, the selfie fallback smoothed across a chunk's
    edge) and M_e (vote at the warp's size, self-check, the model, guard) are the same arrays whether the
    clip passes as one chunk or in chunks of 3 frames."""
    import torch

    import mf_backend.frames
    import mf_backend.masks.predict as predict
    from mf_backend.masks.model import TargetMaskPredictor, get_seg_config, save_predictor
    from mf_backend.masks.source import person_probabilities, source_masks
    from mf_backend.synthetic import make_pair

    pair = make_pair(1, frames=10, size=(288, 512), x_frac=0.4, height_frac=0.6)  # > 256 px: masks shrunk to warp
    frames = pair.source.frames.copy()
    frames[5:7] = frames[0, :4, :4].mean((0, 1)).astype(np.uint8)  # nobody in frames 5-6: the selfie fallback
    src, tgt = pair.source.poses, pair.target_aligned.poses
    torch.manual_seed(0)
    save_predictor(TargetMaskPredictor(get_seg_config("tiny")), tmp_path / "seg")

    def masks() -> list[np.ndarray]:
        M_r = source_masks(frames, poses=src)
        return [M_r, person_probabilities(frames)] + [predict.predict_masks(frames, M_r, src, tgt, p, weights=tmp_path / "seg")[0]
                        for p in ("auto", "model")]

    whole = masks()
    monkeypatch.setattr(mf_backend.frames, "CHUNK", 3)
    monkeypatch.setattr(predict, "CHUNK", 3)
    chunked = masks()
    assert whole[0][5:7].sum() == 0 and whole[0][:5].sum() > 0  # the blanked frames have no person
    for a, b in zip(whole, chunked):
        assert np.array_equal(a, b)
