"""HDR movies (Rec.2100 PQ and HLG): detected from the stream's transfer tag, converted to the model's sRGB
with diffuse white (203 nits) on sRGB white, and written back as a tagged 10-bit HEVC whose pixels outside
the edit are the source's.

The clips are built here from known display light (nits, BT.2020 primaries) with the standard formulas
(ST 2084, BT.2100 HLG with the 1000-nit OOTF, the BT.2020 Y'CbCr matrix) and encoded losslessly by x265, so
the expected working-sRGB values are computed without OCIO or swscale.
"""

from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np
import pytest

from mf_backend import media_colour as colour

H, W, B = 48, 64, 8  # 8×6 flat patches of 8×8 pixels (4:2:0 chroma of a patch is exact)
PQ, HLG = "Rec.2100-PQ - Display", "Rec.2100-HLG - Display"
TRC = {PQ: 16, HLG: 18}
M709_TO_2020 = np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]])
TOL_WORKING = 2  # uint8 levels: the clip's 10-bit quantisation (measured 1.76 PQ, 1.22 HLG; 3.8 with swscale's dark white)


def _patches() -> np.ndarray:
    """Display light in nits, Rec.709 primaries, (6, 8, 3): greys up to 1000 nits, colours up to 203."""
    greys = np.array([0, 1, 5, 26, 58, 100, 150, 203, 300, 1000])
    colours = np.random.default_rng(3).random((38, 3)) * 203
    return np.concatenate([np.repeat(greys[:, None], 3, 1), colours]).reshape(6, 8, 3)


def _expected_working(nits709: np.ndarray) -> np.ndarray:
    """sRGB working values (0..255 float): 203 nits = white, brighter clipped (docs/footage.md)."""
    x = np.clip(nits709 / 203, 0, 1)
    return 255 * np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def _signal(nits2020: np.ndarray, space: str) -> np.ndarray:
    """Display light (nits, BT.2020) → the non-linear R'G'B' signal in 0..1."""
    if space == PQ:  # SMPTE ST 2084 inverse EOTF
        m1, m2, c1, c2, c3 = 0.1593017578125, 78.84375, 0.8359375, 18.8515625, 18.6875
        y = (np.clip(nits2020, 0, None) / 10000) ** m1
        return ((c1 + c2 * y) / (1 + c3 * y)) ** m2
    fd = np.clip(nits2020, 0, None) / 1000  # HLG on a 1000-nit display: inverse OOTF (gamma 1.2), then OETF
    yd = fd @ np.array([0.2627, 0.6780, 0.0593])
    ys = yd ** (1 / 1.2)
    e = fd / np.where(ys > 0, ys ** 0.2, 1)[..., None]
    a, b = 0.17883277, 1 - 4 * 0.17883277
    c = 0.5 - a * np.log(4 * a)
    return np.where(e <= 1 / 12, np.sqrt(3 * e), a * np.log(np.maximum(12 * e - b, 1e-12)) + c)


def _frame_planes(signal: np.ndarray) -> list[np.ndarray]:
    """R'G'B' (H,W,3) in 0..1 → 10-bit video-range Y, Cb, Cr planes (4:2:0) with the BT.2020 NCL matrix."""
    kr, kb = 0.2627, 0.0593
    y = kr * signal[..., 0] + (1 - kr - kb) * signal[..., 1] + kb * signal[..., 2]
    cb, cr = (signal[..., 2] - y) / (2 * (1 - kb)), (signal[..., 0] - y) / (2 * (1 - kr))
    sub = lambda p: p.reshape(H // 2, 2, W // 2, 2).mean((1, 3))  # noqa: E731 - flat patches: exact
    return [np.rint(64 + 876 * y), np.rint(512 + 896 * sub(cb)), np.rint(512 + 896 * sub(cr))]


def _hdr_movie(path, space: str, frames: int = 3) -> np.ndarray:
    """A lossless 10-bit HEVC .mov tagged BT.2020 / `space`, as a phone writes it; returns the frames' display
    light (frames, H, W, 3) in nits, Rec.709 primaries (frame k: the patches rolled by k columns)."""
    import av

    nits = np.stack([np.roll(_patches(), k, axis=1).repeat(B, 0).repeat(B, 1) for k in range(frames)])
    with av.open(str(path), "w", format="mov") as c:
        s = c.add_stream("libx265", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p10le"
        s.options = {"x265-params": "lossless=1:log-level=error"}
        s.codec_context.colorspace, s.codec_context.color_range = 9, 1
        s.codec_context.color_primaries, s.codec_context.color_trc = 9, TRC[space]
        for k, img in enumerate(nits):
            frame = av.VideoFrame(W, H, "yuv420p10le")
            for plane, values in zip(frame.planes, _frame_planes(_signal(img @ M709_TO_2020.T, space))):
                padded = np.zeros((values.shape[0], plane.line_size // 2), np.uint16)
                padded[:, : values.shape[1]] = values
                plane.update(padded.tobytes())
            frame.pts = k
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return nits


@pytest.mark.parametrize("space", [PQ, HLG])
def test_an_hdr_movie_is_read_in_its_colour_space_with_diffuse_white_on_srgb_white(tmp_path, space):
    from mf_backend.media import read_clip
    from mf_backend.media_movie import probe_movie

    nits = _hdr_movie(tmp_path / "phone.mov", space)
    info = probe_movie(tmp_path / "phone.mov")
    assert (info.colorspace, info.bit_depth, info.family) == (space, 10, "hevc")
    clip = read_clip(tmp_path / "phone.mov")
    assert clip.colorspace == space and clip.native.dtype == np.uint16 and clip.kind == "hevc"
    centres = (slice(None), slice(B // 2, None, B), slice(B // 2, None, B))  # one pixel inside each patch
    err = np.abs(clip.frames[centres].astype(float) - _expected_working(nits[centres]))
    assert err.max() <= TOL_WORKING, (space, err.max())
    assert read_clip(tmp_path / "phone.mov", colorspace="sRGB").colorspace == colour.working_space()  # override wins


def test_hdr_falls_back_to_srgb_when_the_ocio_config_lacks_rec2100(tmp_path, monkeypatch, caplog):
    from mf_backend import media_movie
    from mf_backend.media_movie import probe_movie

    _hdr_movie(tmp_path / "pq.mov", PQ, frames=1)
    monkeypatch.setitem(media_movie.HDR_TRC, 16, "Rec.2100-PQ (not in this config)")
    with caplog.at_level(logging.WARNING):
        assert probe_movie(tmp_path / "pq.mov").colorspace == "sRGB"
    assert "pq.mov" in caplog.text and "--input-colorspace" in caplog.text


@pytest.mark.parametrize("space", [PQ, HLG])
def test_hdr_output_keeps_unedited_pixels_and_the_tags(tmp_path, space):
    import av

    from mf_backend.media import read_clip
    from mf_backend.media_output import OutputWriter, encode_stored, output_encoding

    _hdr_movie(tmp_path / "src.mov", space)
    clip = read_clip(tmp_path / "src.mov")
    enc = output_encoding("auto", clip)
    assert (enc.format, enc.dtype, enc.colorspace) == ("hevc", np.uint16, space)
    assert output_encoding("png16", clip).colorspace == colour.working_space()  # PNG has no HDR tag
    edit = np.zeros((H, W), bool)
    edit[8:40, 8:32] = True  # the "person": a block the edit paints orange
    rgb = encode_stored(clip.stored, clip.colorspace, enc).copy()
    painted = colour.from_working(np.float32([[230, 140, 40]]), enc.colorspace, enc.dtype)
    rgb[:, edit] = np.rint(painted).astype(np.uint16)
    matte = np.broadcast_to(edit, rgb.shape[:3]).astype(np.float32)
    writer = OutputWriter(tmp_path / "out", enc, clip.num_frames, W, H, clip.rate, None)
    writer.write(rgb, matte, 0)
    result = writer.close()
    assert result["movie"] == "result.mp4" and result["blender_colorspace"] in ("Rec.2100-PQ", "Rec.2100-HLG")
    with av.open(str(tmp_path / "out" / "result.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.name, cc.profile, cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == \
            ("hevc", "Main 10", 9, 9, TRC[space], 1)
    back = read_clip(tmp_path / "out" / "result.mp4")
    assert back.colorspace == space
    diff = np.abs(back.native[:, ~edit].astype(int) - clip.native[:, ~edit].astype(int))
    assert diff.max() == 0  # lossless HEVC, chroma repeated on reading and averaged on writing: exact
    assert np.abs(back.frames[:, 12:36, 12:28].astype(int) - [230, 140, 40]).max() <= 3
