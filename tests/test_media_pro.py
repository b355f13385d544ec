"""Professional I/O through the edit job: ProRes 4444 at 24000/1001 with timecode, linear EXR half
sequences (values outside the edit unchanged, matte in alpha), 16-bit PNG; PyAV seeking, OCIO colour,
named errors. Tiny synthetic clips (6 frames, 270×480) and the tiny random model, 2 steps.
"""

from __future__ import annotations

import json
from fractions import Fraction

import cv2
import numpy as np
import pytest

from mf_backend import media_colour as colour
from mf_backend.errors import BadInputMedia, InvalidParams

H, W, FRAMES, SIZE = 270, 480, 6, 64
RATE = Fraction(24000, 1001)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The synthetic pair's frames, pose renders and masks in the example-case layout."""
    from mf_backend.media import write_frames, write_masks
    from mf_backend.synthetic import make_pair

    root = tmp_path_factory.mktemp("pro")
    pair = make_pair(0, frames=FRAMES, size=(H, W), x_frac=0.3, height_frac=0.55, driving_size=(H, W))
    write_frames(pair.source.pose_renders, root / "source_poses")
    write_frames(pair.target_aligned_poses, root / "target_aligned_poses")
    write_masks(pair.source.masks, root / "source_masks")
    write_masks(pair.gt_edited.masks, root / "predicted_masks")
    write_frames(pair.driving.pose_renders, root / "driving")
    return {"root": root, "frames": pair.source.frames}


def _edit(case, source, out, model, **kw) -> dict:
    from mf_backend.edit import edit
    from mf_backend.jobs import JobContext
    from mf_backend.params import JobParams, nest

    root = case["root"]
    params = JobParams.from_dict(nest({
        "source": str(source), "driving": str(root / "driving"), "out": str(out), "model": str(model),
        "device": "cpu", "precision": "fp32", "steps": 2, "size": SIZE, "seed": 1, "pose_extractor": "decode",
        "source_poses": str(root / "source_poses"), "target_aligned_poses": str(root / "target_aligned_poses"),
        "source_masks": str(root / "source_masks"), "predicted_masks": str(root / "predicted_masks"), **kw}))
    res = edit(params, JobContext())
    assert json.loads((params.out_path / "edit.json").read_text())["output"] == res["output"]
    return res


def _linear(frames_u8: np.ndarray) -> np.ndarray:
    """sRGB uint8 → scene-linear half, with highlights above 1 in the corner (an HDR plate)."""
    lin = colour.convert(frames_u8 / np.float32(255), colour.resolve("sRGB"), colour.resolve("Linear Rec.709"))
    lin[:, :20, :20] *= 4.0
    return lin.astype(np.float16)


def _wav(path, seconds: float) -> str:
    """A mono 48 kHz PCM tone."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=48000)
        s.layout = "mono"
        n = int(48000 * seconds)
        frame = av.AudioFrame.from_ndarray((np.sin(np.arange(n) / 8) * 8000).astype(np.int16)[None], format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return str(path)


def _audio_samples(path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray().ravel() for f in c.decode(c.streams.audio[0])])


def test_prores4444_at_24000_1001_with_timecode_comes_back_as_prores(tmp_path, tiny_folder, case):
    from mf_backend.media_movie import MovieWriter, probe_movie

    src = tmp_path / "plate"
    wav = _wav(tmp_path / "sound.wav", FRAMES / float(RATE))
    with MovieWriter(src, "prores4444", W, H, RATE, "01:00:00:00", audio_from=wav) as w:
        w.write(case["frames"][:3])
        w.write(case["frames"][3:])
    res = _edit(case, w.path, tmp_path / "out", tiny_folder)
    out = res["output"]
    assert (out["format"], out["fps"], out["timecode"], out["matte"]) == ("prores4444", [24000, 1001], "01:00:00:00", "alpha")
    got = probe_movie(tmp_path / "out" / out["movie"])
    assert (got.codec, got.rate, got.timecode, got.num_frames, got.width, got.height, got.has_alpha) == \
        ("prores", RATE, "01:00:00:00", FRAMES, W, H, True)
    sound = _audio_samples(wav)  # the audio is copied, not touched
    assert len(sound) > 0 and np.array_equal(_audio_samples(tmp_path / "out" / out["movie"]), sound)
    assert not list(tmp_path.glob("out/*.partial*"))


# a source EXR sequence's header, as a camera/comp export writes it; frame k's timecode is its own
EXR_START = "00:59:59:22"
EXR_TIMECODES = ["00:59:59:22", "00:59:59:23", "01:00:00:00", "01:00:00:01", "01:00:00:02", "01:00:00:03"]


def _exr_source(folder, lin: np.ndarray) -> None:
    from mf_backend.media_images import exr_timecode, write_image

    folder.mkdir()
    for k, img in enumerate(lin):
        write_image(folder / f"frame_{k}.exr", img, exr_attributes={
            "framesPerSecond": RATE, "timeCode": exr_timecode(EXR_TIMECODES[k]), "owner": "MF test plate",
            "capDate": f"2026:11:30 10:00:{k:02d}"})


def _read_exr(path) -> tuple[dict, dict]:
    """(header, channels) of an EXR."""
    import OpenEXR

    with OpenEXR.File(str(path), separate_channels=True) as f:
        return dict(f.header()), {n: c.pixels for n, c in f.channels().items()}


def _check_exr_header(header: dict, k: int) -> None:
    from mf_backend.media_images import timecode_text

    assert header["framesPerSecond"] == RATE and timecode_text(header["timeCode"]) == EXR_TIMECODES[k], k
    assert header["owner"] == "MF test plate" and "capDate" not in header  # kept / per-frame, not copied


def test_linear_exr_half_keeps_values_outside_the_edit_and_the_matte_is_alpha(tmp_path, tiny_folder, case):
    from mf_backend.media import read_clip

    lin = _linear(case["frames"])
    _exr_source(tmp_path / "exr", lin)
    clip = read_clip(tmp_path / "exr", frame_range=(2, 3))  # rate and timecode (of frame 0) from the headers
    assert (clip.rate, clip.fps, clip.timecode) == (RATE, pytest.approx(23.976, abs=1e-3), EXR_START)
    res = _edit(case, tmp_path / "exr", tmp_path / "out", tiny_folder)
    out = res["output"]
    assert (out["format"], out["dtype"], out["blender_colorspace"], out["matte"], out["fps"], out["timecode"]) == \
        ("exr", "float16", "Linear Rec.709", "alpha", [24000, 1001], EXR_START)
    changed = 0
    for k in range(FRAMES):
        header, ch = _read_exr(tmp_path / "out" / f"frame_{k:04d}.exr")
        _check_exr_header(header, k)
        assert all(ch[c].dtype == np.float16 for c in "RGBA")
        rgb, alpha = np.stack([ch[c] for c in "RGB"], -1), ch["A"]
        outside = alpha == 0
        # bit-exact halves (compared as their bit patterns), HDR corner included
        assert np.array_equal(rgb[outside].view(np.uint16), lin[k][outside].view(np.uint16)), k
        assert outside[:20, :20].all() and rgb[:20, :20].max() > 1.0
        assert 0 < (alpha > 0).mean() < 0.5 and alpha.max() == 1.0
        changed += int((rgb[alpha == 1] != lin[k][alpha == 1]).any())
    assert changed == FRAMES  # the edit landed in every frame


def test_timecode_of_frame_k_and_the_exr_attribute():
    from mf_backend.media_images import exr_timecode, timecode_text
    from mf_backend.media_output import timecode_at

    assert timecode_at("00:59:59:23", 1, RATE) == "01:00:00:00"  # 23.976 counts 24 frames a second
    assert timecode_at("00:00:59;28", 2, Fraction(30000, 1001)) == "00:01:00;02"  # drop-frame skips ;00 and ;01
    assert timecode_at("00:09:59;29", 1, Fraction(30000, 1001)) == "00:10:00;00"  # ... but not every tenth minute
    assert timecode_at("00:00:59:29", 1, Fraction(30000, 1001)) == "00:01:00:00"  # 29.97 non-drop
    assert timecode_at("10:00:00:24", 1, Fraction(25)) == "10:00:01:00"
    tc = exr_timecode("00:01:00;02")
    assert (tc.hours, tc.minutes, tc.seconds, tc.frame, tc.dropFrame) == (0, 1, 0, 2, True)
    assert timecode_text(tc) == "00:01:00;02" and timecode_text(exr_timecode("01:02:03:04")) == "01:02:03:04"


def test_exr_frames_carry_a_rate_only_when_known_and_a_timecode_only_with_one(tmp_path):
    """OutputWriter's EXR header: no rate, no timecode attributes; a rate alone; a timecode needs a rate to
    count frames by; a colour space named by the source's header names the output's."""
    from mf_backend.media import read_clip
    from mf_backend.media_images import timecode_text
    from mf_backend.media_output import OutputEncoding, OutputWriter

    enc = OutputEncoding("exr", np.dtype(np.float16), colour.resolve("ACEScg"))
    rgb, matte = np.zeros((2, 4, 6, 3), np.float16), np.zeros((2, 4, 6), np.float32)
    cases = {"none": (None, None), "rate": (RATE, None), "tc_no_rate": (None, "01:00:00:00"), "both": (RATE, "01:00:00:00")}
    for name, (rate, tc) in cases.items():
        (tmp_path / name).mkdir()  # the edit's temporary folder
        w = OutputWriter(tmp_path / name, enc, 2, 6, 4, rate, tc, exr_attributes={"colorSpace": "ACES - ACEScg"})
        w.write(rgb, matte, 0)
        w.close()
        header = _read_exr(tmp_path / name / "frame_0001.exr")[0]
        assert header.get("framesPerSecond") == rate, name
        assert (timecode_text(header["timeCode"]) if "timeCode" in header else None) == \
            ("01:00:00:01" if name == "both" else None), name
        assert header["colorSpace"] == enc.colorspace
        assert read_clip(tmp_path / name).colorspace == enc.colorspace  # and read back from the header
        assert read_clip(tmp_path / name).rate == rate


def test_chunked_exr_edit_merges_to_exr_with_a_cross_fade(tmp_path, tiny_folder, case):
    """Two farm chunks (frames 0..3 and 2..5) of an EXR shot → merge-chunks → EXR frames: untouched pixels
    the source's halves exactly, the overlap a float cross-fade of the chunks, rate and timecode kept."""
    from mf_backend.chunks import merge_chunks
    from mf_backend.media import list_frame_files

    lin = _linear(case["frames"])
    _exr_source(tmp_path / "exr", lin)
    for name, a, b in (("a", 0, 3), ("b", 2, 5)):
        res = _edit(case, tmp_path / "exr", tmp_path / name, tiny_folder, frame_start=a, frame_end=b, chunk=True)
        assert res["output"]["format"] == "exr" and res["output"]["shot_format"] == "exr"
        assert [f.name for f in list_frame_files(tmp_path / name)] == [f"frame_{k:04d}.exr" for k in range(a, b + 1)]
    merged = merge_chunks([tmp_path / "b", tmp_path / "a"], tmp_path / "out")
    assert merged["output"]["format"] == "exr" and merged["overlaps"][0]["frames"] == [2, 3]

    def rgba(path) -> np.ndarray:
        header, ch = _read_exr(path)
        return np.stack([ch[c] for c in "RGBA"], -1)

    faded = 0
    for k in range(FRAMES):
        header, _ = _read_exr(tmp_path / "out" / f"frame_{k:04d}.exr")
        _check_exr_header(header, k)
        got = rgba(tmp_path / "out" / f"frame_{k:04d}.exr")
        assert got.dtype == np.float16
        ea = rgba(tmp_path / "a" / f"frame_{k:04d}.exr") if k <= 3 else None
        eb = rgba(tmp_path / "b" / f"frame_{k:04d}.exr") if k >= 2 else None
        if k in (2, 3):  # B's weight 1/3, 2/3, in float; equal halves stay as they are
            w = np.float32((k - 1) / 3)
            blend = (ea.astype(np.float32) + (eb.astype(np.float32) - ea.astype(np.float32)) * w).astype(np.float16)
            want = np.where(ea == eb, ea, blend)
            faded += int((want != ea).any() and (want != eb).any())
        else:
            want = ea if k <= 1 else eb
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), k
        outside = got[..., 3] == 0
        assert np.array_equal(got[..., :3][outside].view(np.uint16), lin[k][outside].view(np.uint16)), k
        assert outside.mean() > 0.5
    assert faded == 2  # the chunks differ in both overlap frames, and the merge blends them


def test_a_chunk_of_a_prores_shot_is_16_bit_png_frames(tmp_path, tiny_folder, case):
    """`edit --chunk` of a ProRes shot: its frames as 16-bit PNG (the 10 bits kept) and the matte, and the
    shot's format and timecode in edit.json for merge-chunks."""
    from mf_backend.media import list_frame_files, read_clip
    from mf_backend.media_movie import MovieWriter

    with MovieWriter(tmp_path / "plate", "prores", W, H, RATE, "01:00:00:00") as w:
        w.write(case["frames"])
    res = _edit(case, w.path, tmp_path / "chunk", tiny_folder, frame_start=2, frame_end=4, chunk=True)
    out = res["output"]
    assert (out["format"], out["shot_format"], out["dtype"], out["fps"], out["timecode"], out["matte"]) == \
        ("png16", "prores", "uint16", [24000, 1001], "01:00:00:00", "matte/")
    files = list_frame_files(tmp_path / "chunk")
    assert [f.name for f in files] == ["frame_0002.png", "frame_0003.png", "frame_0004.png"]
    assert len(list_frame_files(tmp_path / "chunk" / "matte")) == 3
    frames, src = read_clip(tmp_path / "chunk").stored, read_clip(w.path, frame_range=(2, 4)).stored
    assert frames.dtype == src.dtype == np.uint16
    matte = read_clip(tmp_path / "chunk" / "matte").stored[..., 0]
    assert np.array_equal(frames[matte == 0], src[matte == 0])  # the decoded 10-bit values outside the edit


def test_16bit_png_keeps_16_bits(tmp_path, tiny_folder, case):
    deep = case["frames"].astype(np.uint16) * 257 + np.arange(W, dtype=np.uint16)[None, None, :, None] % 200
    (tmp_path / "png16").mkdir()
    for k, img in enumerate(deep):
        cv2.imwrite(str(tmp_path / "png16" / f"frame_{k}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    res = _edit(case, tmp_path / "png16", tmp_path / "out", tiny_folder)
    assert (res["output"]["format"], res["output"]["dtype"], res["output"]["matte"]) == ("png16", "uint16", "matte/")
    for k in range(FRAMES):
        img = cv2.imread(str(tmp_path / "out" / f"frame_{k:04d}.png"), cv2.IMREAD_UNCHANGED)
        matte = cv2.imread(str(tmp_path / "out" / "matte" / f"frame_{k:04d}.png"), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and matte.dtype == np.uint16 and matte.shape == (H, W)
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        assert np.array_equal(rgb[matte == 0], deep[k][matte == 0])
        assert (rgb[matte == 65535] != deep[k][matte == 65535]).any()
        assert (rgb % 257 != 0).any()  # not 8-bit values scaled up


def test_format_conversion_png_to_exr_and_h264(tmp_path, tiny_folder, case):
    from mf_backend.media import write_frames
    from mf_backend.media_movie import probe_movie

    write_frames(case["frames"], tmp_path / "png")
    res = _edit(case, tmp_path / "png", tmp_path / "h264", tiny_folder, output_format="h264", source_fps=23.976)
    got = probe_movie(tmp_path / "h264" / res["output"]["movie"])
    assert (got.codec, got.rate, got.num_frames, got.timecode) == ("h264", RATE, FRAMES, None)
    assert len(list((tmp_path / "h264" / "matte").glob("frame_*.png"))) == FRAMES
    with pytest.raises(BadInputMedia, match="frame rate"):  # a frame folder has no rate of its own
        _edit(case, tmp_path / "png", tmp_path / "prores", tiny_folder, output_format="prores")
    assert not (tmp_path / "prores").exists()


def test_movie_frame_ranges_seek_exactly(tmp_path):
    from mf_backend.media import read_clip
    from mf_backend.media_movie import MovieWriter, read_movie

    y, x = np.mgrid[0:64, 0:96]
    frames = np.stack([np.stack([(x * 2 + 40 * f) % 256, y * 3, np.full_like(x, 90)], -1) for f in range(12)]).astype(np.uint8)
    for fmt in ("prores", "h264"):
        with MovieWriter(tmp_path / fmt, fmt, 96, 64, Fraction(25)) as w:
            w.write(frames)
        whole = np.concatenate(list(read_movie(w.path)))
        assert len(whole) == 12
        for a, b in ((0, 3), (5, 9), (9, 12)):
            part = np.concatenate(list(read_movie(w.path, a, b, chunk=2)))
            assert np.array_equal(part, whole[a:b]), (fmt, a, b)
        clip = read_clip(w.path, frame_range=(4, 7))
        assert (clip.start, clip.num_frames, clip.rate) == (4, 4, Fraction(25))
        assert np.abs(clip.frames.astype(int) - frames[4:8]).mean() < 4  # the right frames, RGB order


def test_colour_round_trip_and_named_errors(tmp_path):
    lin = colour.resolve("Linear Rec.709")
    assert lin == "Linear Rec.709 (sRGB)" and colour.blender_name(lin) == "Linear Rec.709"
    grey = np.linspace(0, 255, 256, dtype=np.float32)[:, None].repeat(3, 1)
    back = colour.to_working(colour.from_working(grey, lin, np.float32), lin)
    assert np.array_equal(back[:, 0], np.arange(256))  # working → linear → working is exact in 8 bits
    assert abs(colour.convert(np.full((1, 3), 0.5, np.float32), colour.working_space(), lin)[0, 0] - 0.214) < 1e-3
    with pytest.raises(BadInputMedia, match="unknown colour space 'Kodak 2383'") as err:
        colour.resolve("Kodak 2383")
    assert "input-colorspace" in err.value.hint
    with pytest.raises(InvalidParams, match="output_format"):
        from mf_backend.params import JobParams

        JobParams.from_dict({"output_format": "gif"})
    with pytest.raises(BadInputMedia, match="DNxHR needs at least 256x120"):
        from mf_backend.media_movie import MovieWriter

        MovieWriter(tmp_path / "small", "dnxhr", 64, 48, Fraction(24))
    (tmp_path / "bad.mov").write_bytes(b"\0\0\0\x14ftypqt  " + b"junk" * 50)
    with pytest.raises(BadInputMedia, match="bad.mov"):
        from mf_backend.media import read_clip

        read_clip(tmp_path / "bad.mov")


def test_a_movie_tagged_linear_is_read_as_scene_linear(tmp_path):
    from mf_backend.media import read_clip
    from mf_backend.media_movie import MovieWriter

    frames = np.full((2, 32, 48, 3), 128, np.uint8)
    w = MovieWriter(tmp_path / "lin", "prores", 48, 32, Fraction(25))
    w._stream.codec_context.color_trc = 8  # "linear" transfer, as some camera/CG exports tag it
    w.write(frames)
    clip = read_clip(w.close())
    assert clip.colorspace == colour.resolve("Linear Rec.709")
    assert clip.native is not None and abs(int(clip.frames[0, 0, 0, 0]) - 188) <= 2  # linear 0.5 → sRGB 188
    assert read_clip(w.path, colorspace="sRGB").colorspace == colour.working_space()  # the override wins
