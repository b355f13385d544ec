"""Reading clips: frame folders, PNG bit depths, alpha, videos, frame ranges, and named errors for bad media."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from mf_backend import media
from mf_backend.errors import BadInputMedia
from mf_backend.media import list_frame_files, probe_clip, read_clip, read_masks, write_frames, write_masks, write_video


def _frames(n=4, h=24, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_frame_folder_roundtrip_is_exact_and_sorted_by_integer(tmp_path):
    frames = _frames(12)
    paths = write_frames(frames, tmp_path / "clip")
    assert paths[10].name == "frame_10.png"
    clip = read_clip(tmp_path / "clip")
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (12, 24, 40, 3)
    np.testing.assert_array_equal(clip.frames, frames)  # frame_10 after frame_9, not after frame_1
    assert clip.fps is None and clip.start == 0
    assert read_clip(tmp_path / "clip", fps=25).fps == 25.0


def test_other_names_use_natural_sort(tmp_path):
    frames = _frames(11)
    write_frames(frames, tmp_path, pattern="shot_{k}.png")
    assert [p.name for p in list_frame_files(tmp_path)][:3] == ["shot_0.png", "shot_1.png", "shot_2.png"]
    np.testing.assert_array_equal(read_clip(tmp_path).frames, frames)


def test_frame_range_and_max_frames_on_a_folder(tmp_path):
    frames = _frames(8)
    write_frames(frames, tmp_path)
    clip = read_clip(tmp_path, frame_range=(2, 5))
    np.testing.assert_array_equal(clip.frames, frames[2:6])
    assert clip.start == 2
    np.testing.assert_array_equal(read_clip(tmp_path, max_frames=3).frames, frames[:3])
    np.testing.assert_array_equal(read_clip(tmp_path, frame_range=(6, None)).frames, frames[6:])


def test_16bit_png_becomes_rounded_uint8_rgb(tmp_path):
    rgb16 = np.zeros((1, 8, 8, 3), np.uint16)
    rgb16[0, :, :, 0] = 65535  # red, full
    rgb16[0, :, :, 1] = 257 * 100  # green 100
    rgb16[0, :, :, 2] = 257 * 7 + 100  # blue 7.39 -> 7
    cv2.imwrite(str(tmp_path / "frame_0.png"), cv2.cvtColor(rgb16[0], cv2.COLOR_RGB2BGR))
    assert cv2.imread(str(tmp_path / "frame_0.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    got = read_clip(tmp_path).frames
    assert got.dtype == np.uint8
    assert got[0, 0, 0].tolist() == [255, 100, 7]


def test_alpha_is_ignored_with_a_note_and_grey_becomes_rgb(tmp_path, caplog):
    bgra = np.zeros((6, 6, 4), np.uint8)
    bgra[..., 2] = 200  # red in BGR order
    bgra[..., 3] = 0  # fully transparent: colour kept as stored
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "frame_0.png"), bgra)
    cv2.imwrite(str(tmp_path / "a" / "frame_1.png"), bgra)
    with caplog.at_level(logging.INFO, logger="mf_backend.media"):
        clip = read_clip(tmp_path / "a")
    assert clip.frames.shape == (2, 6, 6, 3) and clip.frames[0, 0, 0].tolist() == [200, 0, 0]
    notes = [r for r in caplog.records if "alpha" in r.getMessage()]
    assert len(notes) == 1  # once per folder, not per frame
    grey = np.full((5, 7), 42, np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    one = read_clip(tmp_path / "g.png")
    assert one.frames.shape == (1, 5, 7, 3) and (one.frames == 42).all()


def test_video_roundtrip_with_fps_and_frame_range(tmp_path):
    # smooth content so the lossy codec stays close
    y, x = np.mgrid[0:48, 0:64]
    frames = np.stack([np.stack([(x * 4 + 10 * f) % 256, y * 5, np.full_like(x, 128)], -1) for f in range(6)]).astype(np.uint8)
    path = write_video(frames, tmp_path / "clip.avi", fps=25.0, fourcc="MJPG")
    clip = read_clip(path)
    assert clip.frames.shape == (6, 48, 64, 3) and clip.fps == pytest.approx(25.0)
    assert np.abs(clip.frames.astype(int) - frames).mean() < 6  # RGB order kept (a swap would be ~100)
    part = read_clip(path, frame_range=(2, 3))
    assert part.frames.shape[0] == 2 and part.start == 2
    np.testing.assert_array_equal(part.frames, clip.frames[2:4])
    assert read_clip(path, max_frames=3).num_frames == 3
    info = probe_clip(path)
    assert (info.num_frames, info.height, info.width) == (6, 48, 64) and info.fps == pytest.approx(25.0)


def test_masks_roundtrip(tmp_path):
    m = np.zeros((3, 16, 16), np.float32)
    m[:, 4:9, 2:12] = 0.9
    write_masks(m, tmp_path)
    assert cv2.imread(str(tmp_path / "frame_0.png"), cv2.IMREAD_UNCHANGED).ndim == 2  # 8-bit L on disk
    got = read_masks(tmp_path)
    assert got.dtype == np.float32 and got.shape == (3, 16, 16)
    np.testing.assert_array_equal(got, (m >= 0.5).astype(np.float32))


def test_masks_of_any_depth_read_on_the_same_scale(tmp_path):
    """16-bit PNG and float EXR mattes (compositing packages export them) mean what 8-bit ones do: a soft
    edge at 30 % is off, at 70 % on (they were divided by 255: 16-bit edges all on, EXR masks empty)."""
    from mf_backend.media_images import write_image

    soft = np.zeros((16, 16), np.float32)
    soft[4:9, 2:12], soft[9:11, 2:12] = 0.7, 0.3
    cv2.imwrite(str((tmp_path / "png16").mkdir() or tmp_path / "png16" / "frame_0.png"),
                np.rint(soft * 65535).astype(np.uint16))
    (tmp_path / "exr").mkdir()
    write_image(tmp_path / "exr" / "frame_0.exr", np.repeat(soft[..., None], 3, -1))
    for kind in ("png16", "exr"):
        got = read_masks(tmp_path / kind)
        np.testing.assert_allclose(got[0], soft, atol=1e-4, err_msg=kind)
        np.testing.assert_array_equal(got[0] >= 0.5, soft >= 0.5)


# ----------------------------------------------------------------------------------------- bad media


def _raises_naming(path_part: str, fn, *args, **kwargs) -> BadInputMedia:
    with pytest.raises(BadInputMedia) as err:
        fn(*args, **kwargs)
    assert path_part in str(err.value), str(err.value)
    assert err.value.hint
    return err.value


def test_missing_path_and_empty_folder(tmp_path):
    _raises_naming("nope", read_clip, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    _raises_naming("empty", read_clip, tmp_path / "empty")


def test_corrupt_image_is_named(tmp_path):
    write_frames(_frames(3), tmp_path)
    (tmp_path / "frame_1.png").write_bytes(b"not a png at all")
    _raises_naming("frame_1.png", read_clip, tmp_path)


def test_mismatched_sizes_in_a_folder_are_named(tmp_path):
    write_frames(_frames(3, 24, 40), tmp_path)
    write_frames(_frames(1, 24, 41), tmp_path, start=2)  # replaces frame_2 with another size
    err = _raises_naming("frame_2.png", read_clip, tmp_path)
    assert "41x24" in str(err) and "40x24" in str(err)


def test_absurd_sizes_are_refused(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "wide.png"), np.zeros((1, media.MAX_SIDE + 1), np.uint8))
    err = _raises_naming("wide.png", read_clip, tmp_path / "wide.png")
    assert str(media.MAX_SIDE) in str(err)
    monkeypatch.setattr(media, "MAX_FRAMES", 3)
    write_frames(_frames(5, 8, 8), tmp_path / "long")
    _raises_naming("long", read_clip, tmp_path / "long")


def test_unreadable_and_zero_frame_videos_are_named(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    _raises_naming("broken.mp4", read_clip, bad)
    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (32, 32))
    writer.release()  # a container with no frames
    _raises_naming("empty.avi", read_clip, empty)
    short = write_video(_frames(3, 32, 32), tmp_path / "short.avi", 25.0, "MJPG")
    _raises_naming("short.avi", read_clip, short, frame_range=(5, None))


def test_clip_too_big_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    write_frames(_frames(3, 16, 16), tmp_path)
    video = write_video(_frames(3, 16, 16), tmp_path.parent / "v.avi", 25.0, "MJPG")
    monkeypatch.setattr(media.os, "sysconf", lambda name: 1024 if name == "SC_PHYS_PAGES" else 1)  # 1 KiB of RAM
    err = _raises_naming(str(tmp_path), read_clip, tmp_path)
    assert "GiB" in str(err) and "frame range" in err.hint
    _raises_naming("v.avi", read_clip, video)
