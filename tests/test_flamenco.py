"""The Flamenco job type end to end on this machine: the job is compiled by the job type script under node
(the stand-in for Flamenco's compiler, integrations/flamenco/test/flamenco.js), then every task's `exec`
command runs as a real subprocess in dependency order, as Flamenco workers would run them: prepare once,
overlapping chunk edits with the tiny model, merge-chunks. The merged shot is checked against the source.

Also the merge on its own: the cross-fade, bit-exact frames, and the refusals (missing chunk, overlaps
of three chunks, an output in use).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "integrations" / "flamenco"))
import run_local  # noqa: E402  (compiles a job with the stand-in and runs its tasks, as workers would)

NODE = run_local.NODE
FRAMES, H, W, SIZE, FPS = 12, 96, 128, 64, 12.0


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from mf_backend.models.loading import build_models, save_models

    return save_models(build_models("tiny", seed=0), tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A synthetic shot: the source as an mp4 at 12 fps, its own pose renders, the driving pose renders."""
    from mf_backend.media import read_clip

    shot = run_local.synthetic_shot(tmp_path_factory.mktemp("shot"), FRAMES, (H, W), fps=FPS)
    return {**shot, "frames": read_clip(shot["source"]).frames}  # as the backend decodes it


@pytest.mark.skipif(NODE is None, reason="node is not installed (Debian: apt-get install nodejs)")
def test_compiled_job_runs_and_merges_the_shot(tmp_path, case, tiny_folder):
    from mf_backend.media import list_frame_files, read_clip, read_masks

    out = tmp_path / "farm" / "edited"
    submitted = run_local.synthetic_job(case, out, FRAMES, frame_start=1, frame_end=10, chunk_length=6, chunk_overlap=2,
                                        model=str(tiny_folder), steps=2, seed=5, size=SIZE)
    submitted["settings"]["prepare_args"] += " --mask-predictor geometric"
    submitted["settings"]["edit_args"] += " --output-format png"  # frames (the source is an mp4: auto = H.264)
    job = run_local.compile_job(submitted, tmp_path)
    times = run_local.run_in_dependency_order(job, env={"OMP_NUM_THREADS": "1"})  # tiny model: threads only fight
    print("  ".join(f"{name} {seconds:.1f} s" for name, seconds in times))
    assert [name for name, _ in times] == ["prepare", "edit-1-6", "edit-5-10", "merge"]

    merged = read_clip(out)
    info = json.loads((out / "edit.json").read_text())
    assert (info["output"]["format"], info["output"]["matte"]) == ("png", "matte/")
    assert len(list_frame_files(out / "matte")) == FRAMES  # the merged matte, every frame
    src = case["frames"]
    assert merged.frames.shape == src.shape  # every source frame, at the source's size
    assert info["frames"] == FRAMES and info["fps"] == pytest.approx(FPS) and info["edited_frames"] == [1, 10]
    assert (info["timing"]["frame_start"], info["timing"]["frame_end"]) == (1, 10) and "driving_frames" not in info["timing"]
    for k in (0, 11):  # outside the range: the source's decoded bytes
        assert np.array_equal(merged.frames[k], src[k]), k

    # inside: only the person region changes (M_r ∪ M_e of the prepare step, plus the composite's reach)
    work = out.parent / [p.name for p in out.parent.iterdir() if "__intermediate-" in p.name][0]
    M_r, M_e = read_masks(work / "prepared" / "source_masks"), read_masks(work / "prepared" / "predicted_masks")
    assert [len(list_frame_files(d)) for d in sorted(work.glob("chunk-*"))] == [6, 6]  # --chunk: its frames only
    crops = [json.loads((d / "edit.json").read_text())["crop"] for d in sorted(work.glob("chunk-*"))]
    shot = json.loads((work / "prepared" / "crop.json").read_text())
    assert shot["edited_frames"] == [1, 10] and all(c == {**crops[0], "size": SIZE} for c in crops)
    assert all(crops[0][k] == shot[k] for k in ("frame_h", "frame_w", "x0", "y0", "side"))  # the shot's crop
    reach = (SIZE / 32 + SIZE / 64 + 2) * crops[0]["side"] / SIZE
    for k in range(1, 11):
        union = (M_r[k] >= 0.5) | (M_e[k] >= 0.5)
        outside = cv2.distanceTransform((~union).astype(np.uint8), cv2.DIST_L2, 5) > reach
        assert np.array_equal(merged.frames[k][outside], src[k][outside]), f"frame {k}: pixels outside the person changed"
        assert (merged.frames[k][union] != src[k][union]).any(), f"frame {k}: not edited"

    overlaps = info["merge"]["overlaps"]
    assert [o["frames"] for o in overlaps] == [[5, 6]]
    for o in overlaps:
        seam = o["seam_error"]
        assert 0 < seam["all_pixels"] < seam["edited_region"] < 255
        print(f"seam error, frames {o['frames']}: {seam}")


# ---- merge-chunks on its own ---------------------------------------------------------------------


def _chunk(folder: Path, frames: np.ndarray, first: int, last: int, fps=24.0, source=None, src=None, n=None,
           fmt: str = "png", shot_format: str = "", timecode=None) -> Path:
    """A chunk output as `edit --chunk` writes it (media_output.OutputWriter): `frames` are source frames
    first.. (or all of them, from 0), the matte 1 where they differ from `src`."""
    from fractions import Fraction

    from mf_backend import media_colour as colour
    from mf_backend.media_output import OutputEncoding, OutputWriter

    start = 0 if n is None else first
    n = n or len(frames)
    enc = OutputEncoding(fmt, frames.dtype, colour.working_space())
    ref = src[start:start + len(frames)] if src is not None else frames
    matte = (frames != ref).any(axis=-1).astype(np.float32)
    rate = Fraction(fps).limit_denominator(1001)
    writer = OutputWriter(folder, enc, n, frames.shape[2], frames.shape[1], rate, timecode)
    writer.write(frames, matte, start)
    output = {**writer.close(), **({"shot_format": shot_format} if shot_format else {})}
    info = {"frames": n, "height": frames.shape[1], "width": frames.shape[2], "edited_frames": [first, last],
            "timing": {"source_fps": fps}, "params": {"source": source}, "output": output}
    (folder / "edit.json").write_text(json.dumps(info))
    return folder


def test_merge_cross_fades_overlaps_and_copies_the_rest(tmp_path):
    from mf_backend.chunks import merge_chunks
    from mf_backend.media import list_frame_files, read_clip, write_frames

    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    write_frames(src, tmp_path / "src")
    a, b = src.copy(), src.copy()
    a[1:7, 2:6, 2:6] = 200  # chunk A edits frames 1..6, chunk B 4..9 (overlap 4..6), same region
    b[4:10, 2:6, 2:6] = 50
    ca = _chunk(tmp_path / "a", a, 1, 6, source=str(tmp_path / "src"), src=src)
    cb = _chunk(tmp_path / "b", b, 4, 9, source=str(tmp_path / "src"), src=src)
    res = merge_chunks([cb, ca], tmp_path / "out")  # any order
    out = read_clip(tmp_path / "out").frames
    assert np.array_equal(out[:4], a[:4]) and np.array_equal(out[7:], b[7:])
    inside = out[4:7, 3, 3, 0].tolist()  # weights of B: 1/4, 2/4, 3/4
    assert inside == [round(200 - 150 * w) for w in (0.25, 0.5, 0.75)] == [162, 125, 88]
    untouched = np.ones((8, 8), bool)
    untouched[2:6, 2:6] = False
    assert np.array_equal(out[4:7][:, untouched], src[4:7][:, untouched])  # both chunks agree: bit-exact
    seam = res["overlaps"][0]["seam_error"]
    assert res["overlaps"][0]["frames"] == [4, 6] and res["fps"] == 24.0 and res["edited_frames"] == [1, 9]
    assert seam["all_pixels"] == pytest.approx(150 * 16 / 64) and seam["edited_region"] == pytest.approx(150)
    # frames one chunk edited are written as it wrote them (the same PNG bytes), named as edit names them
    files = list_frame_files(tmp_path / "out")
    assert [f.name for f in files] == [f"frame_{k:04d}.png" for k in range(10)]
    assert files[2].read_bytes() == (ca / "frame_0002.png").read_bytes()
    assert files[9].read_bytes() == (cb / "frame_0009.png").read_bytes()
    # the matte too: each chunk's where it alone edited, cross-faded in the overlap (16-bit)
    matte = read_clip(tmp_path / "out" / "matte").stored[..., 3, 3, 0]
    assert matte.tolist() == [0] + [65535] * 9 and read_clip(tmp_path / "out" / "matte").stored[:, 0, 0, 0].max() == 0


def test_merge_of_chunks_holding_only_their_frames(tmp_path):
    """`edit --chunk` writes only the edited frames; the merge takes the others from the source clip."""
    from mf_backend.chunks import merge_chunks
    from mf_backend.media import read_clip, write_frames

    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    write_frames(src, tmp_path / "src")
    a, b = src.copy(), src.copy()
    a[2:8, :4] = 10  # chunk A: frames 2..7, chunk B: 6..9 (frames 0, 1, 10, 11 edited by none)
    b[6:10, :4] = 90
    for name, frames, first, last in (("a", a, 2, 7), ("b", b, 6, 9)):
        _chunk(tmp_path / name, frames[first:last + 1], first, last, source=str(tmp_path / "src"), src=src, n=12)
    res = merge_chunks([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    out = read_clip(tmp_path / "out").frames
    assert out.shape == src.shape and res["frames"] == 12
    for k in (0, 1, 10, 11):
        assert np.array_equal(out[k], src[k]), k
    assert np.array_equal(out[2:6], a[2:6]) and np.array_equal(out[8:10], b[8:10])
    assert out[6, 0, 0, 0] == round(10 + 80 / 3) and out[7, 0, 0, 0] == round(10 + 160 / 3)
    assert res["overlaps"][0]["seam_error"]["edited_region"] == pytest.approx(80)


def test_merge_of_a_prores_shot_encodes_its_16_bit_chunks_as_prores(tmp_path):
    """A ProRes shot's chunks are 16-bit PNG (its 10 bits); merge-chunks cross-fades them in 16 bits and
    writes the shot as ProRes with its exact rate and timecode, the matte beside it."""
    from fractions import Fraction

    from mf_backend.chunks import merge_chunks
    from mf_backend.media import read_clip
    from mf_backend.media_movie import probe_movie

    y, x = np.mgrid[0:64, 0:96]
    src = np.stack([np.stack([x * 600 + 900 * f, y * 900, np.full_like(x, 20000)], -1) for f in range(8)]).astype(np.uint16)
    a, b = src.copy(), src.copy()
    a[0:5, 16:48, 24:72] = 60000  # chunk A: frames 0..4, chunk B: 3..7 (overlap 3..4)
    b[3:8, 16:48, 24:72] = 6000
    for name, frames, first, last in (("a", a, 0, 4), ("b", b, 3, 7)):
        _chunk(tmp_path / name, frames[first:last + 1], first, last, fps=24000 / 1001, src=src, n=8, fmt="png16",
               shot_format="prores", timecode="01:00:00:00")
    res = merge_chunks([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert (res["output"]["format"], res["output"]["movie"], res["output"]["matte"]) == ("prores", "result.mov", "matte/")
    got = probe_movie(tmp_path / "out" / "result.mov")
    assert (got.codec, got.rate, got.timecode, got.num_frames, got.width, got.height) == \
        ("prores", Fraction(24000, 1001), "01:00:00:00", 8, 96, 64)
    movie = read_clip(tmp_path / "out" / "result.mov").stored.astype(np.float32)  # 10-bit ProRes decoded to 16
    want = np.concatenate([a[:3], [(a[k] + (b[k].astype(np.float32) - a[k]) * w) for k, w in ((3, 1 / 3), (4, 2 / 3))],
                           b[5:]]).astype(np.float32)
    assert np.abs(movie - want).mean() < 200  # lossy 10-bit: a few hundred of 65535 at most on average
    assert np.abs(movie[3:5, 32, 48] - want[3:5, 32, 48]).max() < 1500  # the cross-fade, not either chunk
    matte = read_clip(tmp_path / "out" / "matte").stored[:, 32, 48, 0]
    assert matte.tolist() == [65535] * 8 and read_clip(tmp_path / "out" / "matte").stored[:, 0, 0].max() == 0


def test_merge_refuses_missing_chunks_triple_overlaps_and_used_outputs(tmp_path):
    from mf_backend.chunks import merge_chunks
    from mf_backend.errors import BadInputMedia, InvalidParams

    f = np.zeros((9, 4, 4, 3), np.uint8)
    chunks = [_chunk(tmp_path / n, f, s, e) for n, s, e in (("a", 0, 4), ("b", 2, 6), ("c", 4, 8))]
    with pytest.raises(InvalidParams, match="frame 4 is edited by 3 chunks"):
        merge_chunks(chunks, tmp_path / "out")
    (tmp_path / "d").mkdir()
    with pytest.raises(BadInputMedia, match="no edit.json"):
        merge_chunks([chunks[0], tmp_path / "d"], tmp_path / "out")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidParams, match="already exists"):
        merge_chunks(chunks[:1], tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_noise_is_drawn_per_absolute_frame():
    """Two chunks of one shot draw the same initial and SDE noise on the frames they share."""
    import torch

    from mf_backend.editing.noise import FrameNoise

    a, b = FrameNoise(42, range(10, 16), (4, 8, 8)), FrameNoise(42, range(13, 20), (4, 8, 8))
    for _ in range(3):  # z_T, then two SDE draws
        za, zb = a.draw(), b.draw()
        assert za.shape == (1, 4, 6, 8, 8)
        assert torch.equal(za[:, :, 3:], zb[:, :, :3])  # frames 13..15
        assert not torch.equal(za[:, :, 0], za[:, :, 1])
    assert not torch.equal(FrameNoise(43, [13], (4, 8, 8)).draw()[:, :, 0], FrameNoise(42, [13], (4, 8, 8)).draw()[:, :, 0])
    z = FrameNoise(0, range(64), (4, 16, 16)).draw()
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02  # still standard normal


def test_shot_crop_is_used_only_inside_the_prepared_range(tmp_path):
    from mf_backend.chunks import shot_crop
    from mf_backend.errors import BadInputMedia

    (tmp_path / "source_masks").mkdir()
    d = {"frame_h": 96, "frame_w": 128, "x0": 7, "y0": -8, "side": 111, "mode": "person", "edited_frames": [10, 49]}
    (tmp_path / "crop.json").write_text(json.dumps(d))
    masks = str(tmp_path / "source_masks")
    plan = shot_crop(masks, (96, 128), np.arange(10, 20), 64)
    assert (plan.x0, plan.y0, plan.side, plan.size) == (7, -8, 111, 64)
    assert shot_crop(masks, (96, 128), np.arange(45, 55), 64) is None  # past the prepared frames: its own crop
    with pytest.raises(BadInputMedia, match="crop of 128x96 frames; the source is 256x192"):
        shot_crop(masks, (192, 256), np.arange(10, 20), 64)
    assert shot_crop(str(tmp_path / "elsewhere" / "masks"), (96, 128), np.arange(10, 20), 64) is None


def test_bench_merge_runs_and_prints_its_figures(capsys):
    from mf_backend.cli import build_parser

    args = build_parser().parse_args(["bench", "merge", "--height", "48", "--width", "64", "--frames", "6",
                                      "--overlap", "2", "--formats", "exr,prores"])
    assert args.func(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("exr", "prores"))]
    assert [r[:2] for r in rows] == [["exr", "exr"], ["prores", "png16"]] and all(float(r[3]) > 0 for r in rows)
