"""The add-on's export keeps the strip's precision, in real bpy (5.0.1): 16-bit PNG strips export as 16-bit
PNG, EXR and scene-linear strips as scene-linear EXR (values above 1 kept), 8-bit strips stay 8-bit PNG;
an edit of an EXR strip comes back as EXR, in Linear Rec.709, with the pixels outside the edit as stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="bpy (Blender as a module) is not installed: install.py installs it")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
VENV42 = REPO / ".venv42" / "bin" / "python"  # bpy 4.2 LTS, made by .ci/run (see test_addon_projects.py)

from test_addon_blender import N, SIZE, _geometric, addon, edited_strips, person_clips, scene, small_model  # noqa: E402,F401

from mf_backend.media_images import read_image, write_image  # noqa: E402


def image_strip(sc, name: str, files: list[Path], channel: int = 7):
    s = sc.sequence_editor.strips.new_image(name, str(files[0]), channel=channel, frame_start=10)
    for f in files[1:]:
        s.elements.append(f.name)
    s.frame_final_duration = len(files)
    return s


def write_sequence(folder: Path, frames: list[np.ndarray], ext: str) -> list[Path]:
    folder.mkdir()
    files = [folder / f"img_{k:03d}{ext}" for k in range(len(frames))]
    for f, rgb in zip(files, frames):
        write_image(f, rgb)
    return files


def exported(folder: Path, ext: str) -> list[np.ndarray]:
    files = sorted(folder.glob(f"frame_*{ext}"), key=lambda p: int(p.stem.split("_")[1]))
    assert not any(folder.glob("frame_*.png" if ext == ".exr" else "frame_*.exr"))
    return [read_image(f) for f in files]


def test_16bit_png_strip_exports_16bit_png_without_quantising(scene, tmp_path):
    from blender_addon import strips

    g = np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 16  # 4096 levels
    frames = [np.stack([g, g[::-1], np.full_like(g, 1000 * (k + 1))], -1) for k in range(3)]
    image_strip(scene, "deep", write_sequence(tmp_path / "p16", frames, ".png"))
    info = strips.export_strip(scene, "deep", tmp_path / "out")
    assert (info["depth"], info["colorspace"], info["count"]) == ("16", "sRGB", 3)
    out = exported(tmp_path / "out", ".png")
    assert len(out) == 3 and all(o.dtype == np.uint16 for o in out)
    assert len(np.unique(out[0][..., 0])) == 4096  # an 8-bit export has at most 256
    diff = max(int(np.abs(o.astype(np.int32) - f).max()) for o, f in zip(out, frames))
    assert diff <= 1, f"16-bit values moved by {diff}"  # Blender's float round trip: ±1 of 65535
    meta = scene.sequence_editor.strips.new_meta("meta", channel=9, frame_start=10)  # a meta keeps its content's depth
    scene.sequence_editor.strips["deep"].move_to_meta(meta)
    assert strips.export_strip(scene, "meta", tmp_path / "meta")["depth"] == "16"


def test_exr_strips_export_scene_linear_exr_exactly(scene, tmp_path):
    from blender_addon import strips

    ramp = np.linspace(0, 4, SIZE * SIZE).reshape(SIZE, SIZE)  # scene-linear, up to 4.0
    for dtype, depth in ((np.float16, "half"), (np.float32, "float")):
        frames = [np.stack([ramp * (k + 1) / 3, ramp[::-1], np.full_like(ramp, 0.18)], -1).astype(dtype)
                  for k in range(3)]
        image_strip(scene, depth, write_sequence(tmp_path / depth, frames, ".exr"))
        info = strips.export_strip(scene, depth, tmp_path / f"out_{depth}")
        assert (info["depth"], info["colorspace"]) == (depth, "Linear Rec.709")
        out = exported(tmp_path / f"out_{depth}", ".exr")
        assert [o.dtype for o in out] == [np.dtype(dtype)] * 3
        assert out[2].max() > 3.9  # not clipped to display white
        for o, f in zip(out, frames):
            np.testing.assert_array_equal(o, f)  # the stored values, bit for bit


def test_a_strip_marked_scene_linear_exports_exr(scene, tmp_path):
    from blender_addon import strips

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2)]
    s = image_strip(scene, "linear8", write_sequence(tmp_path / "lin", frames, ".png"))
    s.colorspace_settings.name = "Linear Rec.709"  # data the user says is scene-linear: no display clip
    info = strips.export_strip(scene, "linear8", tmp_path / "out")
    assert (info["depth"], info["colorspace"]) == ("half", "Linear Rec.709")
    out = exported(tmp_path / "out", ".exr")
    np.testing.assert_allclose(out[1].astype(np.float32), frames[1] / 255, atol=1e-3)  # half of v/255


def test_8bit_strips_still_export_8bit_png(scene, tmp_path):
    from blender_addon import strips

    info = strips.export_strip(scene, "source", tmp_path / "movie")  # the fixture's 8-bit MJPEG movie
    assert (info["depth"], info["colorspace"]) == ("8", "sRGB")
    assert all(o.dtype == np.uint8 for o in exported(tmp_path / "movie", ".png"))
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2)]
    image_strip(scene, "png8", write_sequence(tmp_path / "p8", frames, ".png"))
    assert strips.export_strip(scene, "png8", tmp_path / "out")["depth"] == "8"
    out = exported(tmp_path / "out", ".png")
    assert out[0].dtype == np.uint8 and all(np.array_equal(o, f) for o, f in zip(out, frames))
    # a deep strip exported for its poses only (the driving strip) stays 8-bit too
    g = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 16)
    image_strip(scene, "deep", write_sequence(tmp_path / "p16", [np.stack([g] * 3, -1)], ".png"))
    assert strips.export_strip(scene, "deep", tmp_path / "drv", keep_depth=False)["depth"] == "8"
    assert exported(tmp_path / "drv", ".png")[0].dtype == np.uint8


def test_10bit_prores_movie_exports_16bit_png(scene, tmp_path):
    import av

    from blender_addon import strips

    g = (np.arange(SIZE)[None, :] * 1024 + np.arange(SIZE)[:, None] * 16).astype(np.uint16)
    path = tmp_path / "deep.mov"
    with av.open(str(path), "w") as c:
        st = c.add_stream("prores_ks", rate=24)
        st.width, st.height, st.pix_fmt = SIZE, SIZE, "yuv422p10le"
        for _ in range(2):
            c.mux(st.encode(av.VideoFrame.from_ndarray(np.stack([g] * 3, -1), format="rgb48le")))
        c.mux(st.encode())
    scene.sequence_editor.strips.new_movie("prores", str(path), channel=7, frame_start=10)
    info = strips.export_strip(scene, "prores", tmp_path / "out")
    assert info["depth"] == "16"  # Blender 5.x decodes 10-bit video to float
    out = exported(tmp_path / "out", ".png")
    assert out[0].dtype == np.uint16 and len(np.unique(out[0][..., 0])) > 256


def test_edit_of_an_exr_strip_returns_exr_with_the_source_values_outside_the_edit(
        scene, addon, small_model, tmp_path, monkeypatch):
    """Through the operator (blocking in background mode), real backend, tiny model: EXR in, EXR out."""
    from blender_addon import properties
    from mf_backend import media_colour as colour
    from mf_backend.synthetic.pair import make_pair

    job_params = properties.job_params
    monkeypatch.setattr(properties, "job_params", lambda mf: _geometric(job_params(mf)))
    person_clips(scene, tmp_path)  # the driving pose renders; the source becomes an EXR sequence of the person
    pair = make_pair(seed=3, frames=N, size=SIZE)
    linear = colour.convert(pair.source.frames / np.float32(255), colour.resolve("sRGB"), colour.resolve("Linear Rec.709"))
    linear[:, :3] *= 4  # highlights above 1 in the top rows
    frames = list(linear.astype(np.float16))
    coll = scene.sequence_editor.strips
    coll.remove(coll["source"])
    image_strip(scene, "source", write_sequence(tmp_path / "exr", frames, ".exr"), channel=2)
    mf = scene.motionfollower
    mf.model, mf.model_folder = "folder", small_model
    assert bpy.ops.motionfollower.edit() == {"FINISHED"}
    (s,) = edited_strips(scene)
    assert s.colorspace_settings.name == "Linear Rec.709" and s["motionfollower_format"] == "exr"
    assert s.alpha_mode == "STRAIGHT"  # the matte in A, RGB not premultiplied
    files = [Path(bpy.path.abspath(s.directory)) / e.filename for e in s.elements]
    assert len(files) == N and all(f.suffix == ".exr" for f in files)
    import OpenEXR

    # Blender reads the result back as stored: the imported strip, rendered by the export, gives the file's
    # values where the matte is 1 (elsewhere straight alpha over black)
    from blender_addon import strips

    assert strips.export_strip(scene, s.name, tmp_path / "back")["depth"] == "half"
    back = exported(tmp_path / "back", ".exr")
    kept = inside = 0
    for f, src, seen in zip(files, frames, back):
        with OpenEXR.File(str(f), separate_channels=True) as exr:
            ch = {k: v.pixels for k, v in exr.channels().items()}
        rgb, alpha = np.stack([ch[c] for c in "RGB"], -1), ch["A"]
        assert rgb.dtype == np.float16
        outside = alpha == 0
        np.testing.assert_array_equal(rgb[outside], src[outside])  # the source's stored values, > 1 included
        np.testing.assert_array_equal(seen[alpha == 1], rgb[alpha == 1])
        kept, inside = kept + int(outside.sum()), inside + int((alpha == 1).sum())
    assert kept > N * SIZE * SIZE // 4 and inside > 0 and max(float(read_image(f).max()) for f in files) > 1.0


EXPORT_42 = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import bpy
    from blender_addon import strips as S
    sc = bpy.context.scene
    sc.render.resolution_x = sc.render.resolution_y = {size}
    for i, (name, files) in enumerate({sequences!r}.items()):
        s = S.top_collection(sc).new_image(name, files[0], channel=i + 1, frame_start=1)
        for f in files[1:]:
            s.elements.append(f.rsplit("/", 1)[1])
        s.frame_final_duration = len(files)
    print("DEPTHS " + json.dumps({{n: S.export_strip(sc, n, {out!r} + "/" + n)["depth"] for n in {sequences!r}}}))
""")


@pytest.mark.skipif(not VENV42.exists(), reason="no .venv42 (bpy 4.2 LTS): .ci/run makes it")
def test_bpy42_exports_16bit_png_and_exr_without_quantising(tmp_path):
    """The same export under Blender 4.2 LTS (its own process): 16-bit within ±1, half and float EXR bit for bit."""
    g = np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 16
    ramp = np.linspace(0, 4, SIZE * SIZE).reshape(SIZE, SIZE)
    sources = {"p16": [np.stack([g, g[::-1], g], -1)] * 2, "half": [np.stack([ramp] * 3, -1).astype(np.float16)] * 2,
               "float": [np.stack([ramp, ramp / 3, ramp], -1).astype(np.float32)] * 2}
    sequences = {n: [str(f) for f in write_sequence(tmp_path / n, frames, ".png" if n == "p16" else ".exr")]
                 for n, frames in sources.items()}
    script = tmp_path / "export42.py"
    script.write_text(EXPORT_42.format(repo=str(REPO), size=SIZE, sequences=sequences, out=str(tmp_path / "out")))
    p = subprocess.run([str(VENV42), str(script)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    depths = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("DEPTHS "))[7:])
    assert depths == {"p16": "16", "half": "half", "float": "float"}
    for name, frames in sources.items():
        out = exported(tmp_path / "out" / name, ".png" if name == "p16" else ".exr")
        assert len(out) == 2 and out[0].dtype == frames[0].dtype
        if name == "p16":
            assert int(np.abs(out[1].astype(np.int32) - frames[1]).max()) <= 1
        else:
            np.testing.assert_array_equal(out[1], frames[1])
