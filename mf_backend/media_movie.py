"""Movies through PyAV (FFmpeg): probe, read frame ranges in chunks, write ProRes / DNxHR / H.264.

Frames come out as RGB in the movie's own precision: uint8 for 8-bit codecs, uint16 (rgb48) for 10/12-bit
ones (ProRes, DNxHR HQX, 10-bit H.264/H.265), so nothing is lost before the colour step. The frame rate is
the stream's exact rational rate (24000/1001, not 23.976) and the timecode is the container's (a QuickTime
tmcd track, as FFmpeg reports it). Frame k is the frame whose timestamp is k frame durations after the
first one, so seeking to a frame range is exact for intra codecs and long-GOP ones alike.

Writers append chunks and finalise atomically: they write `<name>.partial<ext>` next to the target and
rename it only on `close()`; `abort()` (or an exception inside `with`) removes it. Given the source
movie, a writer copies its audio streams packet for packet (not decoded, not touched).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

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
}


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
    colorspace: str = "sRGB"  # from the stream's transfer tag: linear → "Linear Rec.709", else display sRGB

    @property
    def family(self) -> str:
        """The output format that matches this movie: prores4444, prores, dnxhr or h264."""
        if self.codec == "prores":
            return "prores4444" if self.has_alpha or "4444" in (self.profile or "") else "prores"
        return "dnxhr" if self.codec == "dnxhd" else "h264"


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
        if trc in (16, 18):  # PQ, HLG: HDR video
            log.warning("'%s' is HDR video (%s); it is read as sRGB unless you pass --input-colorspace "
                        "(e.g. 'Rec.2100-PQ - Display')", p, "PQ" if trc == 16 else "HLG")
        return MovieInfo(str(p), int(n), int(cc.height), int(cc.width), Fraction(rate) if rate else None,
                         timecode, cc.name, cc.profile, int(depth), bool(alpha),
                         "Linear Rec.709" if trc == 8 else "sRGB")


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
            buf.append(frame.to_ndarray(format=fmt))
            if len(buf) == chunk:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)


class MovieWriter:
    """Append RGB chunks (uint8 or uint16, (k,H,W,3)) and an optional alpha (float (k,H,W) in 0..1) to a
    movie; `close()` moves it into place. Timecode and the exact rate are written to the container."""

    def __init__(self, path: str | os.PathLike, output_format: str, width: int, height: int, rate: Fraction,
                 timecode: Optional[str] = None, audio_from: Optional[str | os.PathLike] = None):
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
        if self.codec.pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise BadInputMedia(f"'{self.path}': H.264 4:2:0 needs an even width and height, the clip is {width}x{height}",
                                "use --output-format prores, dnxhr or png16 for odd sizes")
        self._container = av.open(str(self.tmp), "w", format="mov" if self.codec.ext == ".mov" else "mp4")
        if timecode:
            self._container.metadata["timecode"] = timecode  # the mov muxer writes a tmcd track from it
        rate = Fraction(rate).limit_denominator(1_000_000)
        s = self._container.add_stream(self.codec.encoder, rate=rate)
        s.width, s.height, s.pix_fmt = width, height, self.codec.pix_fmt
        s.time_base = 1 / rate
        s.options = dict(self.codec.options)
        cc = s.codec_context  # tag what write() produces (BT.709 matrix, video range), so readers decode it alike
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = 1, 1, 1, 1
        if self.codec.encoder == "prores_ks":
            s.codec_tag = "ap4h" if self.codec.alpha else "apch"
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

        if self.codec.alpha:
            a = np.ones(rgb.shape[:3], np.float32) if alpha is None else np.asarray(alpha, np.float32)
            rgba = np.empty((*rgb.shape[:3], 4), np.uint16)
            rgba[..., :3] = rgb if rgb.dtype == np.uint16 else rgb.astype(np.uint16) * 257
            rgba[..., 3] = np.rint(np.clip(a, 0.0, 1.0) * 65535)
            frames, fmt = rgba, "rgba64le"
        else:
            frames, fmt = np.ascontiguousarray(rgb), "rgb48le" if rgb.dtype == np.uint16 else "rgb24"
        for img in frames:
            frame = av.VideoFrame.from_ndarray(img, format=fmt)
            frame = frame.reformat(format=self.codec.pix_fmt, dst_colorspace="ITU709")
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
