"""The add-on imports the backend's results in real bpy (5.0.1): a linear EXR sequence as a `Linear Rec.709`
image strip with the matte as straight alpha, a ProRes movie as a movie strip at its frame rate, an sRGB
PNG sequence as sRGB. The results are written by the backend's own output step (media_output).
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="bpy (Blender as a module) is not installed: install.py installs it")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

H, W, N = 48, 64, 5


def _result(folder: Path, output_format: str, source_kind: str, colorspace: str) -> dict:
    """Write N frames as the edit's output step does, from a source of `source_kind` in `colorspace`."""
    from mf_backend import media_colour as colour
    from mf_backend.media import Clip
    from mf_backend.media_output import OutputWriter, output_chunks, output_encoding

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    clip = Clip(frames=frames, fps=24000 / 1001, path="src", colorspace=colour.resolve(colorspace),
                rate=Fraction(24000, 1001), timecode="01:00:00:00", kind=source_kind)
    if source_kind == "exr":
        clip.native = (frames / np.float32(255)).astype(np.float16)
    enc = output_encoding(output_format, clip)
    folder.mkdir()
    writer = OutputWriter(folder, enc, N, W, H, clip.rate, clip.timecode)
    edited = np.array([1, 2])
    matte = np.zeros((2, H, W), np.float32)
    matte[:, 10:30, 20:40] = 1.0
    for start, rgb, alpha in output_chunks(clip, np.arange(N), edited, encode_like(clip, enc)[edited], matte, enc):
        writer.write(rgb, alpha, start)
    return writer.close()


def encode_like(clip, enc):
    from mf_backend.media_output import encode_stored

    return encode_stored(clip.stored, clip.colorspace, enc)


@pytest.fixture
def scene(tmp_path):
    sc = bpy.data.scenes.new(f"import-{tmp_path.name}")
    sc.render.fps, sc.render.fps_base = 24, 1.001
    sc.sequence_editor_create()
    yield sc
    bpy.data.scenes.remove(sc)


def test_linear_exr_result_is_imported_as_linear_rec709_with_straight_alpha(scene, tmp_path):
    from blender_addon import strips

    out = _result(tmp_path / "exr", "auto", "exr", "Linear Rec.709")
    assert (out["format"], out["blender_colorspace"], out["matte"]) == ("exr", "Linear Rec.709", "alpha")
    s = strips.import_frames(scene, tmp_path / "exr", "edit", "source", 10, {"seed": 1}, out)
    assert (s.type, s.frame_final_start, s.frame_final_duration) == ("IMAGE", 10, N)
    assert [e.filename for e in s.elements] == [f"frame_{k:04d}.exr" for k in range(N)]
    assert s.colorspace_settings.name == "Linear Rec.709" and s.alpha_mode == "STRAIGHT"
    assert (s["motionfollower_fps"], s["motionfollower_timecode"], s["motionfollower_seed"]) == ("24000/1001", "01:00:00:00", 1)
    img = bpy.data.images.load(str(tmp_path / "exr" / "frame_0001.exr"))  # Blender reads our EXR as float RGBA
    try:
        assert img.is_float and img.channels == 4 and tuple(img.size) == (W, H)
    finally:
        bpy.data.images.remove(img)


def test_prores_result_is_a_movie_strip_at_the_source_rate_and_png_stays_srgb(scene, tmp_path):
    from blender_addon import strips

    out = _result(tmp_path / "mov", "prores", "png", "sRGB")
    s = strips.import_frames(scene, tmp_path / "mov", "edit", "source", 1, None, out)
    assert (s.type, s.frame_final_duration, s.colorspace_settings.name) == ("MOVIE", N, "sRGB")
    assert s.fps == pytest.approx(24000 / 1001, abs=1e-4) == pytest.approx(scene.render.fps / scene.render.fps_base, abs=1e-4)
    out = _result(tmp_path / "png", "png16", "png", "sRGB")
    s = strips.import_frames(scene, tmp_path / "png", "edit png", "source", 1, None, out)
    assert (s.type, s.frame_final_duration, s.colorspace_settings.name, s.channel) == ("IMAGE", N, "sRGB", 2)
