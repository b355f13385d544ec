"""Movies through PyAV (FFmpeg): probe, read frame ranges in chunks, write ProRes / DNxHR / H.264 / HEVC.

Frames come out as RGB in the movie's own precision: uint8 for 8-bit codecs, uint16 (rgb48) for 10/12-bit
ones (ProRes, DNxHR HQX, 10-bit H.264/H.265), so nothing is lost before the colour step. The frame rate is
the stream's exact rational rate (24000/1001, not 23.976) and the timecode is the container's (a QuickTime
tmcd track, as FFmpeg reports it). Frame k is the frame whose timestamp is k frame durations after the
first one, so seeking to a frame range is exact for intra codecs and long-GOP ones alike.

HDR (Rec.2100): a stream whose transfer tag is PQ (SMPTE ST 2084) or HLG (ARIB STD-B67) is read in that
OCIO colour space, and a writer given that space tags the stream BT.2020 primaries and non-constant-luminance
matrix with the same transfer; FFmpeg's YUV→RGB (swscale) takes the matrix from each decoded frame's tag.

swscale puts deep video's white at 65283 in rgb48 (10/12-bit video range; 65472 for 10-bit full range),
not 65535: 0.4 % dark, 1.4 sRGB levels at PQ diffuse white. Frames are rescaled so that white is 65535,
and writers scale back before encoding, so a decoded value round-trips exactly (`_video_white`).
SUBSAMPLING: 4:2:0 / 4:2:2 chroma is repeated when decoding (swscale's POINT) and box-averaged when encoding
(AREA), the one pairing that gives the decoded chroma back unchanged (bilinear both ways: up to 37 codes).

Writers append chunks and finalise atomically: they write `<name>.partial<ext>` next to the target and
rename it only on `close()`; `abort()` (or an exception inside `with`) removes it. Given the source
movie, a writer copies its audio streams packet for packet (not decoded, not touched).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from mf_backend import media_colour as colour
from mf_backend.errors import BadInputMedia

log = logging.getLogger(__name__)

MOVIE_EXTS = (".mov", ".mp4", ".m4v", ".mkv", ".mxf", ".avi", ".webm")
MP4_AUDIO = ("aac", "mp3", "alac", "ac3", "eac3", "opus", "flac")  # what an MP4 can carry (QuickTime: also PCM)


@dataclass(frozen=True)
class MovieCodec:
    """One output format: FFmpeg encoder, its options, pixel format and container."""

    encoder: str
    pix_fmt: str
    ext: str
    options: tuple[tuple[str, str], ...] = ()
    alpha: bool = False


CODECS = {
    "prores": MovieCodec("prores_ks", "yuv422p10le", ".mov", (("profile", "3"),)),  # 422 HQ
    "prores4444": MovieCodec("prores_ks", "yuva444p10le", ".mov", (("profile", "4"),), alpha=True),
    "dnxhr": MovieCodec("dnxhd", "yuv422p10le", ".mov", (("profile", "dnxhr_hqx"),)),
    "h264": MovieCodec("libx264", "yuv420p", ".mp4", (("crf", "16"), ("preset", "medium"))),
    # HEVC Main10, what phones shoot HDR in and HDR10 is delivered as; lossless, so that what the edit did
    # not touch keeps the source's 10-bit values (CRF 0 still moves them by tens of codes)
    "hevc": MovieCodec("libx265", "yuv420p10le", ".mp4", (("preset", "fast"),
                                                          ("x265-params", "lossless=1:log-level=error"))),
}
# FFmpeg's transfer tag (16 PQ, 18 HLG) → the OCIO space it names (media_colour.HDR_SPACES)
HDR_TRC = dict(zip((16, 18), colour.HDR_SPACES))
SDR_TAGS = (1, 1, 1)  # BT.709 matrix, primaries and transfer


@dataclass
class MovieInfo:
    """What the container says, without decoding pictures (the count comes from the index or packets)."""

    path: str
    num_frames: int
    height: int
    width: int
    rate: Optional[Fraction]  # exact frames per second
    timecode: Optional[str]  # "HH:MM:SS:FF" (";" before FF for drop-frame), None when absent
    codec: str  # FFmpeg decoder name: prores, dnxhd, h264, hevc, ...
    profile: Optional[str]  # e.g. "4444", "HQ", "DNXHR HQX"
    bit_depth: int  # bits per component of the decoded pixels
    has_alpha: bool
    colorspace: str = "sRGB"  # from the transfer tag: linear → "Linear Rec.709", PQ/HLG → Rec.2100, else sRGB

    @property
    def family(self) -> str:
        """The output format that matches this movie: prores4444, prores, dnxhr, hevc (10-bit HEVC or any
        other HDR movie: 8-bit H.264 cannot carry it) or h264."""
        if self.codec == "prores":
            return "prores4444" if self.has_alpha or "4444" in (self.profile or "") else "prores"
        if self.codec == "dnxhd":
            return "dnxhr"
        deep_hevc = self.codec == "hevc" and self.bit_depth > 8
        return "hevc" if deep_hevc or colour.is_hdr(self.colorspace) else "h264"


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise BadInputMedia(f"cannot open '{path}' as a movie: {exc}",
                            "the file is corrupt or not a video; re-export it (ProRes, DNxHR or H.264) or as frames") from exc
    if not container.streams.video:
        container.close()
        raise BadInputMedia(f"'{path}' has no video stream", "point at a video file or a folder of frames")
    return container


def probe_movie(path: str | os.PathLike) -> MovieInfo:
    """Frame count, size, exact rate, timecode and codec of a movie's first video stream."""
    p = Path(path)
    with _open(p) as container:
        v = container.streams.video[0]
        cc = v.codec_context
        n = v.frames
        if n <= 0:  # no index count (e.g. MKV): count the packets, which decodes nothing
            n = sum(1 for pkt in container.demux(v) if pkt.size)
        timecode = v.metadata.get("timecode") or container.metadata.get("timecode")
        if timecode is None:
            timecode = next((s.metadata["timecode"] for s in container.streams if "timecode" in s.metadata), None)
        fmt = v.format
        depth = max((c.bits for c in fmt.components), default=8) if fmt is not None else 8
        alpha = fmt is not None and len(fmt.components) in (2, 4)  # ya, rgba, yuva, gbrap
        rate = v.average_rate or v.guessed_rate or v.base_rate
        trc = int(cc.color_trc or 2)
        return MovieInfo(str(p), int(n), int(cc.height), int(cc.width), Fraction(rate) if rate else None,
                         timecode, cc.name, cc.profile, int(depth), bool(alpha), _tagged_space(p, trc))


def _tagged_space(p: Path, trc: int) -> str:
    """The colour space a transfer tag names: linear, PQ/HLG (when the OCIO config has them), else sRGB."""
    if trc not in HDR_TRC:
        return "Linear Rec.709" if trc == 8 else "sRGB"
    try:
        return colour.resolve(HDR_TRC[trc])
    except BadInputMedia:  # a custom $OCIO config without the Rec.2100 spaces
        log.warning("'%s' is HDR video (%s) but the OCIO config ($OCIO) has no '%s'; it is read as sRGB unless "
                    "you pass --input-colorspace", p, "PQ" if trc == 16 else "HLG", HDR_TRC[trc])
        return "sRGB"


def colour_tags(space: Optional[str]) -> tuple[int, int, int]:
    """(matrix, primaries, transfer) FFmpeg tags for pixels in OCIO space `space`: BT.2020 NCL + PQ/HLG for
    the Rec.2100 spaces, else BT.709 (what every other output is written as)."""
    trc = next((t for t, name in HDR_TRC.items() if name == space), None)
    return (9, 9, trc) if trc else SDR_TAGS


def read_movie(path: str | os.PathLike, start: int = 0, stop: Optional[int] = None,
               chunk: int = 16) -> Iterator[np.ndarray]:
    """Frames start..stop-1 (0-based, stop=None: to the end) as chunks of ≤ `chunk` frames:
    uint8 (k,H,W,3) RGB for 8-bit movies, uint16 (k,H,W,3) for deeper ones. Seeks to `start`."""
    p = Path(path)
    with _open(p) as container:
        v = container.streams.video[0]
        v.thread_type = "AUTO"
        depth = max((c.bits for c in v.format.components), default=8) if v.format is not None else 8
        fmt = "rgb48le" if depth > 8 else "rgb24"
        rate = Fraction(v.average_rate or v.guessed_rate or v.base_rate or 1)
        tb = Fraction(v.time_base)
        first_pts = v.start_time if v.start_time is not None else 0
        index = lambda pts: round((pts - first_pts) * tb * rate)  # noqa: E731 - frame number from a timestamp
        if start > 0:  # seek to the keyframe at or before `start`, then decode forward
            container.seek(first_pts + int(start / rate / tb), stream=v, backward=True)
        buf: list[np.ndarray] = []
        k = None
        for frame in container.decode(v):
            k = index(frame.pts) if frame.pts is not None else (k + 1 if k is not None else 0)
            if k < start:
                continue
            if stop is not None and k >= stop:
                break
            rgb = frame.to_ndarray(format=fmt, interpolation="POINT")  # chroma repeated, see SUBSAMPLING
            white = _video_white(frame.format.name, int(frame.color_range)) if depth > 8 else 65535
            buf.append(rgb if white == 65535 else _rescale(rgb, 65535, white))
            if len(buf) == chunk:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)


@functools.lru_cache(maxsize=None)
def _video_white(pix_fmt: str, color_range: int) -> int:
    """The rgb48 value swscale gives video white (max luma, neutral chroma) of `pix_fmt`: measured once, as
    it depends on the FFmpeg build (65535 for RGB formats)."""
    import av

    bits = av.VideoFormat(pix_fmt).components[0].bits
    if not pix_fmt.startswith("yuv") or bits <= 8:
        return 65535
    top = (1 << bits) - 1
    frame = av.VideoFrame(16, 16, pix_fmt)
    for i, plane in enumerate(frame.planes):  # Y, Cb, Cr (, A)
        value = (top if color_range == 2 else 235 << (bits - 8)) if i == 0 else (top if i == 3 else 1 << (bits - 1))
        plane.update(np.full(plane.buffer_size // 2, value, np.uint16).tobytes())
    frame.color_range = color_range
    return int(frame.to_ndarray(format="rgb48le")[8, 8].max())


def _rescale(x: np.ndarray, to: int, white: int) -> np.ndarray:
    """uint16 values × to/white, rounded, clipped at 65535 (integer maths: exact inverses round-trip)."""
    y = (x.astype(np.uint64) * to + white // 2) // white
    return np.minimum(y, 65535).astype(np.uint16)


class MovieWriter:
    """Append RGB chunks (uint8 or uint16, (k,H,W,3)) and an optional alpha (float (k,H,W) in 0..1) to a
    movie; `close()` moves it into place. Timecode and the exact rate are written to the container."""

    def __init__(self, path: str | os.PathLike, output_format: str, width: int, height: int, rate: Fraction,
                 timecode: Optional[str] = None, audio_from: Optional[str | os.PathLike] = None,
                 colorspace: Optional[str] = None):
        """`colorspace`: the OCIO space of the RGB given to write(); a Rec.2100 one makes an HDR movie."""
        import av

        if output_format not in CODECS:
            raise BadInputMedia(f"'{path}': {output_format!r} is not a movie format", f"use one of {', '.join(CODECS)}")
        self.codec = CODECS[output_format]
        self.path = Path(path).with_suffix(self.codec.ext)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.stem + ".partial" + self.codec.ext)
        self.count = 0
        if self.codec.encoder == "dnxhd" and (width < 256 or height < 120):
            raise BadInputMedia(f"'{self.path}': DNxHR needs at least 256x120, the clip is {width}x{height}",
                                "use --output-format prores or png16 for small clips")
        if "420" in self.codec.pix_fmt and (width % 2 or height % 2):
            raise BadInputMedia(f"'{self.path}': {output_format} 4:2:0 needs an even width and height, the clip is {width}x{height}",
                                "use --output-format prores, dnxhr or png16 for odd sizes")
        self._container = av.open(str(self.tmp), "w", format="mov" if self.codec.ext == ".mov" else "mp4")
        if timecode:
            self._container.metadata["timecode"] = timecode  # the mov muxer writes a tmcd track from it
        rate = Fraction(rate).limit_denominator(1_000_000)
        s = self._container.add_stream(self.codec.encoder, rate=rate)
        s.width, s.height, s.pix_fmt = width, height, self.codec.pix_fmt
        s.time_base = 1 / rate
        s.options = dict(self.codec.options)
        cc = s.codec_context  # tag what write() produces (matrix, video range), so readers decode it alike
        matrix, primaries, trc = colour_tags(colorspace)
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = matrix, 1, primaries, trc
        self._matrix = "BT2020" if matrix == 9 else "ITU709"  # swscale's RGB→YUV matrix, as tagged
        self._white = _video_white(self.codec.pix_fmt, 1)  # video range, as tagged
        if self.codec.encoder == "prores_ks":
            s.codec_tag = "ap4h" if self.codec.alpha else "apch"
        elif self.codec.encoder == "libx265":
            s.codec_tag = "hvc1"  # the HEVC tag Apple players and QuickTime accept
        self._stream = s
        self._audio = self._audio_streams(audio_from) if audio_from else []

    def _audio_streams(self, source: str | os.PathLike) -> list:
        """(source container, input stream, output stream) for each audio stream of `source` this container
        can carry; the others are left out with a log line."""
        import av

        try:
            src = av.open(str(source))
        except (av.error.FFmpegError, OSError) as exc:
            raise BadInputMedia(f"cannot read the audio of '{source}': {exc}", "check that the file is readable") from exc
        pairs = []
        for a in src.streams.audio:
            name = a.codec_context.name
            if self.codec.ext == ".mp4" and name not in MP4_AUDIO:
                log.warning("'%s': its %s audio cannot go into an MP4; the result has no copy of it (choose "
                            "prores or dnxhr to keep it)", source, name)
                continue
            pairs.append((src, a, self._container.add_stream_from_template(a)))
        if not pairs:
            src.close()
        return pairs

    def write(self, rgb: np.ndarray, alpha: Optional[np.ndarray] = None) -> None:
        import av

        if rgb.dtype == np.uint16 and self._white != 65535:  # 65535 = white, as read_movie gives it
            rgb = _rescale(rgb, self._white, 65535)
        if self.codec.alpha:
            a = np.ones(rgb.shape[:3], np.float32) if alpha is None else np.asarray(alpha, np.float32)
            rgba = np.empty((*rgb.shape[:3], 4), np.uint16)
            rgba[..., :3] = rgb if rgb.dtype == np.uint16 else _rescale(rgb, self._white * 257, 65535)
            rgba[..., 3] = np.rint(np.clip(a, 0.0, 1.0) * 65535)
            frames, fmt = rgba, "rgba64le"
        else:
            frames, fmt = np.ascontiguousarray(rgb), "rgb48le" if rgb.dtype == np.uint16 else "rgb24"
        for img in frames:
            frame = av.VideoFrame.from_ndarray(img, format=fmt)
            frame = frame.reformat(format=self.codec.pix_fmt, dst_colorspace=self._matrix, interpolation="AREA")
            frame.pts = self.count
            self.count += 1
            self._container.mux(self._stream.encode(frame))

    def close(self) -> Path:
        """Flush the encoder, close the file and move it into place; returns the final path."""
        self._container.mux(self._stream.encode(None))
        for src, a, out in self._audio:  # the source's audio as it is, packet for packet
            for pkt in src.demux(a):
                if pkt.dts is not None:
                    pkt.stream = out
                    self._container.mux(pkt)
        self._container.close()
        self._close_sources()
        os.replace(self.tmp, self.path)
        return self.path

    def _close_sources(self) -> None:
        for src in {id(s): s for s, _, _ in self._audio}.values():
            src.close()
        self._audio = []

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            self._close_sources()
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "MovieWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type is not None else self.close()
