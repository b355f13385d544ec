"""The edit's output: composite the edited person into the source in the output's own encoding, and
write frames (PNG, 16-bit PNG, EXR) or a movie (ProRes 422 HQ / 4444, DNxHR HQX, H.264, HEVC Main10) with
the person's soft matte.

The output encoding (dtype, colour space) follows the format and the source (`output_encoding`): the
source's colour space whenever the format can hold it, so with the matching format (the default,
`auto`) every pixel outside the edit is the source's stored value exactly (EXR halves, 16-bit PNG
values); only the edited pixels are converted back from the model's sRGB (media_colour.from_working).
Integer formats cannot hold scene-linear light: a linear source written to them is converted to sRGB.
HDR video (PQ/HLG) stays HDR in the 10-bit movie formats (tagged so); PNGs carry no HDR tag, so there it is
converted to sRGB, and EXR takes it as scene-linear light (203-nit white = 1.0, highlights above 1).

Layout of the output folder: `frame_{k:04d}.png|exr` for every source frame, or `result.mov|mp4`; the matte
(`composite.matte`, the blend weight of the composite) is the alpha channel of EXR and ProRes 4444, else
a 16-bit grey sequence `matte/frame_{k:04d}.png`. RGB is the full frame, not premultiplied by the matte.
Every EXR frame carries the shot's exact rate (`framesPerSecond`) and its own timecode (`timeCode`: the
source's start timecode + k, as Nuke, Resolve and Blender read them), and what an EXR source's header
said besides (colour space, chromaticities, ...).

A farm chunk (`edit --chunk`) is written in the output's image format, a movie's as an image sequence of
its depth (`chunk_encoding`); merge-chunks (mf_backend/chunks.py) writes the shot with this writer.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from mf_backend import media_colour as colour
from mf_backend.files import frame_pattern
from mf_backend.media import IO_THREADS, Clip
from mf_backend.media_images import EXR_LINEAR, EXR_SPACE_KEYS, exr_timecode, write_grey, write_image
from mf_backend.media_movie import CODECS, MovieWriter

IMAGE_FORMATS = {"png": ".png", "png16": ".png", "exr": ".exr"}
MATTE_DIR = "matte"


@dataclass(frozen=True)
class OutputEncoding:
    """How the output stores pixels: format, dtype and colour space (OCIO name)."""

    format: str
    dtype: np.dtype
    colorspace: str

    @property
    def has_alpha(self) -> bool:
        return self.format == "exr" or (self.format in CODECS and CODECS[self.format].alpha)


def output_encoding(output_format: str, clip: Clip) -> OutputEncoding:
    """The encoding of `output_format` ("auto": the source's kind) for this source."""
    fmt = clip.kind if output_format == "auto" else output_format
    space = clip.colorspace
    if fmt == "exr":
        dtype = np.float32 if clip.stored.dtype == np.float32 else np.float16
        if clip.kind != "exr" and not colour.is_scene_linear(space):
            space = colour.resolve(EXR_LINEAR)  # EXR holds scene-linear light
    else:
        dtype = np.uint8 if fmt in ("png", "h264") else np.uint16  # ProRes/DNxHR/HEVC: 10 bits, carried as 16
        hdr_movie = fmt in CODECS and dtype == np.uint16  # a 10-bit movie, which can be tagged PQ/HLG
        if colour.is_scene_linear(space) or (colour.is_hdr(space) and not hdr_movie):
            space = colour.working_space()
    return OutputEncoding(fmt, np.dtype(dtype), space)


def chunk_encoding(enc: OutputEncoding) -> OutputEncoding:
    """A farm chunk's frames: the output's image format, or for a movie an image sequence of its depth
    (png16 for 10-bit ProRes/DNxHR, png for H.264), which merge-chunks encodes into the movie."""
    if enc.format in IMAGE_FORMATS:
        return enc
    return OutputEncoding("png16" if enc.dtype == np.uint16 else "png", enc.dtype, enc.colorspace)


def matte_path(folder: Path, frame_file: str, enc: OutputEncoding) -> Path:
    """Where the matte of output frame file `frame_file` is: the file itself (its alpha) or matte/<name>.png."""
    if enc.has_alpha:
        return Path(folder) / frame_file
    return Path(folder) / MATTE_DIR / (Path(frame_file).stem + ".png")


def timecode_at(start: str, k: int, rate: Fraction) -> str:
    """The timecode of frame k of a clip whose frame 0 is at `start` ("HH:MM:SS:FF"; ";FF" drop-frame)."""
    from timecode import Timecode

    return str(Timecode(str(rate), start, force_non_drop_frame=";" not in start) + k)


def encode_stored(stored: np.ndarray, space: str, enc: OutputEncoding) -> np.ndarray:
    """Source pixels (k,H,W,3) as stored in `space` → the output encoding (the same array when it matches)."""
    if stored.dtype == enc.dtype and space == enc.colorspace:
        return stored
    x = colour.convert(colour.to_float(stored), space, enc.colorspace)
    return colour.from_float(x, enc.dtype)


def composite_edit(clip: Clip, edited: np.ndarray, work: np.ndarray, plan, M_r: np.ndarray, M_e: np.ndarray,
                   source_crops: np.ndarray, enc: OutputEncoding) -> np.ndarray:
    """The edited source frames (F_edit,H,W,3) in the output encoding: `composite.composite` blending the
    decoded edit `work` (uint8 (F_edit,S,S,3)) into the source frames `edited`, in that encoding."""
    from mf_backend.composite import composite

    base = encode_stored(clip.stored[edited], clip.colorspace, enc)
    plain = enc.dtype == np.uint8 and enc.colorspace == colour.working_space()
    encode = None if plain else (lambda e: colour.from_working(e, enc.colorspace, enc.dtype))
    return composite(base, work, plan, M_r, M_e, source_crops=source_crops, encode=encode)


class OutputWriter:
    """Writes the output frames in order, chunk by chunk, into `folder` (the job's temporary folder,
    renamed into place on success; movies are also written under a temporary name until `close`)."""

    def __init__(self, folder: Path, enc: OutputEncoding, num_frames: int, width: int, height: int,
                 rate: Optional[Fraction], timecode: Optional[str], audio_from: Optional[str] = None,
                 exr_attributes: Optional[dict] = None):
        """`exr_attributes`: an EXR source's header attributes (Clip.exr_attributes), kept in EXR frames."""
        self.folder, self.enc, self.rate, self.timecode = Path(folder), enc, rate, timecode
        kept = {k: enc.colorspace if k in EXR_SPACE_KEYS else v for k, v in (exr_attributes or {}).items()}
        self.exr_attributes = {**kept, **({"framesPerSecond": rate} if rate else {})}  # a named space: the output's
        self.count = 0
        self.pattern = frame_pattern(num_frames, IMAGE_FORMATS.get(enc.format, ".png"))
        self.movie: Optional[MovieWriter] = None
        if enc.format in CODECS:
            if rate is None:
                raise _no_rate(enc.format)
            self.movie = MovieWriter(self.folder / "result", enc.format, width, height, rate, timecode, audio_from,
                                     enc.colorspace)
        if not enc.has_alpha:
            (self.folder / MATTE_DIR).mkdir(parents=True, exist_ok=True)

    def write(self, rgb: np.ndarray, matte: np.ndarray, start: int) -> None:
        """Frames start..start+k-1: rgb (k,H,W,3) in the output encoding, matte float32 (k,H,W) in [0,1]
        (a movie takes them in the order given)."""
        if self.movie is not None:
            self.movie.write(rgb, matte if self.enc.has_alpha else None)

        def write_files(i: int) -> None:
            k = start + i
            name = self.pattern.format(k=k)
            if self.movie is None:
                write_image(self.folder / name, rgb[i], matte[i] if self.enc.has_alpha else None, self._exr_header(k))
            if not self.enc.has_alpha:
                write_grey(matte_path(self.folder, name, self.enc), np.rint(matte[i] * 65535).astype(np.uint16))

        with ThreadPoolExecutor(IO_THREADS) as pool:  # the encoders release the GIL
            list(pool.map(write_files, range(len(rgb))))
        self.count += len(rgb)

    def copy(self, folder: Path, start: int, count: int) -> bool:
        """Frames start..start+count-1 copied file for file (and their mattes) from `folder`, where a writer of
        the same encoding and frame count wrote them (a farm chunk); False, copying nothing, when it cannot."""
        names = [self.pattern.format(k=k) for k in range(start, start + count)]
        files = [(folder / n, self.folder / n) for n in names]
        if not self.enc.has_alpha:
            files += [(matte_path(folder, n, self.enc), matte_path(self.folder, n, self.enc)) for n in names]
        if self.movie is not None or not all(src.is_file() for src, _ in files):
            return False
        with ThreadPoolExecutor(IO_THREADS) as pool:
            list(pool.map(lambda f: shutil.copyfile(*f), files))
        self.count += count
        return True

    def _exr_header(self, k: int) -> Optional[dict]:
        """Frame k's EXR attributes: the rate, its timecode (only with a rate to count frames by), the source's."""
        if self.enc.format != "exr":
            return None
        if self.timecode and self.rate:
            return {**self.exr_attributes, "timeCode": exr_timecode(timecode_at(self.timecode, k, self.rate))}
        return self.exr_attributes

    def close(self) -> dict[str, Any]:
        """Finish the file(s); returns what the add-on needs to import the result (for edit.json too)."""
        movie = self.movie.close() if self.movie is not None else None
        return {"format": self.enc.format, "movie": movie.name if movie else None,
                "frame_pattern": None if movie else self.pattern,
                "frames": self.count, "dtype": str(self.enc.dtype), "colorspace": self.enc.colorspace,
                "blender_colorspace": colour.blender_name(self.enc.colorspace),
                "fps": [self.rate.numerator, self.rate.denominator] if self.rate else None,
                "timecode": self.timecode, "matte": "alpha" if self.enc.has_alpha else MATTE_DIR + "/"}

    def abort(self) -> None:
        if self.movie is not None:
            self.movie.abort()


def output_chunks(clip: Clip, frames: np.ndarray, edited: np.ndarray, edited_out: np.ndarray,
                  edited_matte: np.ndarray, enc: OutputEncoding, chunk: int = 16
                  ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first frame, rgb, matte) for the contiguous source frames `frames`, `chunk` at a time, in the output
    encoding: edited frames from `edited_out`, the others the source's, the matte 0 where nothing was edited."""
    stored = clip.stored
    n, h, w = stored.shape[:3]
    pos = np.full(n, -1)
    pos[edited] = np.arange(len(edited))
    for i in range(0, len(frames), chunk):
        a, b = int(frames[i]), int(frames[min(i + chunk, len(frames)) - 1]) + 1
        rgb = encode_stored(stored[a:b], clip.colorspace, enc).copy()
        matte = np.zeros((b - a, h, w), np.float32)
        sel = np.flatnonzero(pos[a:b] >= 0)
        rgb[sel] = edited_out[pos[a + sel]]
        matte[sel] = edited_matte[pos[a + sel]]
        yield a, rgb, matte


def _no_rate(fmt: str):
    from mf_backend.errors import BadInputMedia

    return BadInputMedia(f"the source has no frame rate, which a {fmt} movie needs",
                         "pass --source-fps (e.g. 23.976 for 24000/1001), or choose png16/exr output")
