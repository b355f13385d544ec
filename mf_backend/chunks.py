"""Chunked edits of one shot (a render farm, docs/flamenco.md): `merge-chunks` puts the shot together.

A long shot is edited as overlapping chunks, each an ordinary `edit --chunk` with `--frame-start/
--frame-end` that reuses one `prepare` folder (poses and masks computed once for the whole shot) and
writes only its own frames, in the shot's image format (png, png16, exr; a movie's frames as png16 or png
of its depth, media_output.chunk_encoding) with the matte. The merge writes the shot in its output
format, movie included, with the one-piece edit's writer (media_output.OutputWriter: EXR rate and
timecode, movie timecode and audio):

* frames edited by one chunk are its files copied byte for byte (a movie: its stored values, encoded
  once); frames no chunk edited are the source's
  (from a chunk written without `--chunk`, which holds them, else decoded from the source clip and
  encoded as the edit encodes them);
* frames edited by two chunks (the overlap) are cross-faded LINEARLY IN PIXELS, in the stored values
  (float for EXR, 16-bit for png16), and so is the matte: in an overlap of m frames the later chunk's
  weight rises (j+1)/(m+1), j = 0..m-1, so each side fades in from its neighbour. Pixels both chunks
  left untouched are equal in both and stay bit-exact. (Pixels, not latents: each chunk is already
  composited into the full frame.)
* the seam error of each overlap, the mean absolute difference of the two chunks' frames before
  blending (0..255), is reported over all pixels and over the edited region (pixels either chunk
  changed from the source), so a farm run says how well its chunks agree.

Chunks agree where they overlap because they share what can be shared: the noise is drawn per
absolute frame (editing/noise.py), and the person crop is the shot's, planned once by `prepare` over
all its edited frames (`crop.json` beside the prepared folders; `shot_crop`). What still differs is
which neighbouring frames the motion modules see.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from mf_backend.crop import CropPlan, plan_crop
from mf_backend.errors import BadInputMedia, InvalidParams
from mf_backend.files import atomic_output_dir
from mf_backend.frames import CHUNK
from mf_backend.jobs import JobContext
from mf_backend.media import IMAGE_EXTS, Clip, list_frame_files, read_clip
from mf_backend.media_images import exr_clip_attributes, exr_header, read_matte
from mf_backend.media_movie import CODECS
from mf_backend.media_output import IMAGE_FORMATS, OutputEncoding, OutputWriter, encode_stored, matte_path


SHOT_CROP = "crop.json"  # written by prepare beside its pose and mask folders


def write_shot_crop(folder: Path, prep: Any, masks: Sequence[Any], frame_hw: tuple[int, int]) -> None:
    """prepare: the person crop of the whole shot, planned as a one-piece edit of it would plan it
    (keypoints and masks of the edited frames; `masks`: the M_r and M_e Readers of masks/stage.py), for
    its chunks to share. Its working size is the edit's."""
    from mf_backend.streaming import mask_boxes

    edited = np.flatnonzero(~np.isnan(prep.driving_index))
    plan = plan_crop([prep.source.frames(edited), prep.aligned.frames(edited)], None, frame_hw, size=32,
                     boxes=mask_boxes(list(masks), edited, frame_hw))
    geometry = {k: v for k, v in plan.to_dict().items() if k != "size"}
    (Path(folder) / SHOT_CROP).write_text(json.dumps({**geometry, "edited_frames": [int(edited[0]), int(edited[-1])]}))


def shot_crop(masks_folder: str, frame_hw: tuple[int, int], edited: np.ndarray, size: int) -> Optional[CropPlan]:
    """edit: the crop prepare planned for the whole shot (crop.json beside the prepared mask folder) at
    `size`, when it exists and covers the frames this edit edits; else None (the edit plans its own)."""
    path = Path(masks_folder).expanduser().parent / SHOT_CROP
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    first, last = d.pop("edited_frames")
    if (d["frame_h"], d["frame_w"]) != tuple(frame_hw):
        raise BadInputMedia(f"'{path}' is a crop of {d['frame_w']}x{d['frame_h']} frames; the source is "
                            f"{frame_hw[1]}x{frame_hw[0]}", "run prepare again on this source")
    return CropPlan(**d, size=size) if first <= edited[0] and edited[-1] <= last else None


@dataclass
class Chunk:
    """One chunk's `edit` output folder: its edited frames (`--chunk`), or every source frame."""

    folder: Path
    info: dict  # its edit.json
    files: list[Path]  # frame files in frame order, the first one frame `offset`
    offset: int  # 0 when the folder holds every source frame, else the first edited frame

    @property
    def first(self) -> int:
        return int(self.info["edited_frames"][0])

    @property
    def last(self) -> int:
        return int(self.info["edited_frames"][1])

    @property
    def enc(self) -> OutputEncoding:
        """How its frames are stored (the shot's image format)."""
        out = self.info["output"]
        return OutputEncoding(out["format"], np.dtype(out["dtype"]), out["colorspace"])

    def file(self, k: int) -> Path:
        return self.files[k - self.offset]

    def read(self, a: int, b: int) -> tuple[Clip, np.ndarray]:
        """Its frames a..b (stored and working pixels) and their matte float32 (m,H,W)."""
        clip = read_clip(self.folder, frame_range=(a - self.offset, b - self.offset), colorspace=self.enc.colorspace)
        matte = np.stack([read_matte(matte_path(self.folder, self.file(k).name, self.enc)) for k in range(a, b + 1)])
        return clip, matte


def read_chunk(folder: str | Path) -> Chunk:
    folder = Path(folder).expanduser().resolve()
    meta = folder / "edit.json"
    if not meta.is_file():
        raise BadInputMedia(f"chunk '{folder}' is not an edit output (no edit.json)",
                            "run this chunk's `edit` task first; the merge needs every chunk")
    info = json.loads(meta.read_text())
    if (info.get("output") or {}).get("format") not in IMAGE_FORMATS:
        raise BadInputMedia(f"chunk '{folder}' is not a frame sequence written by `edit --chunk`",
                            "re-run this chunk's `edit` task with --chunk")
    files = list_frame_files(folder)
    first, last = info["edited_frames"]
    if len(files) not in (info["frames"], last - first + 1):
        raise BadInputMedia(f"chunk '{folder}' has {len(files)} frames; its edit.json says {info['frames']} "
                            f"(frames {first}..{last} edited)", "re-run this chunk's `edit` task")
    return Chunk(folder, info, files, 0 if len(files) == info["frames"] else int(first))


def coverage(chunks: Sequence[Chunk], n_frames: int) -> list[list[int]]:
    """For every source frame, the chunks (indices, in start order) that edited it: at most two."""
    cover: list[list[int]] = [[] for _ in range(n_frames)]
    for i, c in enumerate(chunks):
        for k in range(c.first, c.last + 1):
            cover[k].append(i)
    for k, cs in enumerate(cover):
        if len(cs) > 2:
            raise InvalidParams(f"frame {k} is edited by {len(cs)} chunks ({', '.join(chunks[i].folder.name for i in cs)})",
                                "overlaps must be at most half a chunk long, so each frame is in at most two chunks")
    return cover


def cross_fade(earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """Linear cross-fade of two versions (m,H,W[,3]) of the same m frames, in their dtype (integers rounded:
    8/16-bit; EXR half/float as float): equal values stay bit-exact."""
    m = len(earlier)
    w = (np.arange(1, m + 1, dtype=np.float32) / (m + 1)).reshape(m, *[1] * (earlier.ndim - 1))  # the later's weight
    e = earlier.astype(np.float32)
    x = e + (later.astype(np.float32) - e) * w
    if np.issubdtype(earlier.dtype, np.integer):
        x = np.clip(np.rint(x), 0, np.iinfo(earlier.dtype).max)
    return np.where(earlier == later, earlier, x.astype(earlier.dtype))


def seam_error(earlier: np.ndarray, later: np.ndarray, source: Optional[np.ndarray]) -> dict[str, Any]:
    """Mean |earlier - later| (0..255) over the overlap, over all pixels and over the edited region."""
    diff = np.abs(earlier - later)  # (m,H,W,3)
    out: dict[str, Any] = {"all_pixels": round(float(diff.mean()), 4)}
    if source is not None and source.shape == earlier.shape:
        region = ((earlier != source) | (later != source)).any(axis=-1)  # (m,H,W) pixels either chunk changed
        out["edited_region"] = round(float(diff[region].mean()), 4) if region.any() else 0.0
        out["edited_region_fraction"] = round(float(region.mean()), 5)
    return out


def _read_source(chunks: Sequence[Chunk], a: int, b: int) -> Clip:
    """The source clip's frames a..b, read as the edit read them."""
    params = chunks[0].info.get("params", {})
    if not params.get("source"):
        raise BadInputMedia(f"'{chunks[0].folder / 'edit.json'}' does not name the source clip",
                            "re-run this chunk's `edit` task")
    return read_clip(params["source"], frame_range=(a, b),
                     colorspace=params.get("advanced", {}).get("input_colorspace"))


def _unedited(chunks: Sequence[Chunk], a: int, b: int, enc: OutputEncoding) -> np.ndarray:
    """Frames a..b as the edit writes them outside its range: the source's pixels in the output encoding."""
    full = next((c for c in chunks if c.offset == 0), None)  # a chunk written with every frame holds them
    if full is not None:
        return full.read(a, b)[0].stored
    src = _read_source(chunks, a, b)
    return encode_stored(src.stored, src.colorspace, enc)


def _source_range(chunks: Sequence[Chunk], a: int, b: int) -> Optional[np.ndarray]:
    """The source clip's working frames a..b (for the seam error inside the edited region); None when unreadable here."""
    try:
        return _read_source(chunks, a, b).frames.astype(np.float32)
    except Exception:  # noqa: BLE001 - only a report figure depends on it
        return None


def _blocks(cover: list[list[int]]) -> Iterator[tuple[int, int, tuple[int, ...]]]:
    """(first, last, chunks) runs of frames edited by the same chunks, in frame order; a run of one chunk or
    none at most CHUNK frames (host memory), an overlap whole (its cross-fade weights and seam error)."""
    k = 0
    while k < len(cover):
        cs, last = tuple(cover[k]), k
        while last + 1 < len(cover) and tuple(cover[last + 1]) == cs and (len(cs) == 2 or last + 1 - k < CHUNK):
            last += 1
        yield k, last, cs
        k = last + 1


def _shot_output(chunk: Chunk) -> tuple[OutputEncoding, Optional[Fraction], Optional[str], Optional[str], Optional[dict]]:
    """The shot's encoding, rate, timecode, audio source and EXR attributes, from a chunk."""
    out, enc = chunk.info["output"], chunk.enc
    shot = OutputEncoding(out.get("shot_format", enc.format), enc.dtype, enc.colorspace)
    source = chunk.info.get("params", {}).get("source")
    movie_in = bool(source) and Path(source).is_file() and Path(source).suffix.lower() not in IMAGE_EXTS
    attrs = exr_clip_attributes(exr_header(chunk.files[0]))[2] if enc.format == "exr" else None
    return (shot, Fraction(*out["fps"]) if out.get("fps") else None, out.get("timecode"),
            source if shot.format in CODECS and movie_in else None, attrs)


def merge_chunks(chunk_folders: Sequence[str | Path], out: str | Path, ctx: Optional[JobContext] = None) -> dict[str, Any]:
    """Chunk outputs of one shot → the shot in its output format in `out` (written atomically) and its edit.json."""
    ctx = ctx or JobContext(job_id="merge-chunks")
    if not chunk_folders:
        raise InvalidParams("no chunk folders given", "pass the chunk output folders of one shot")
    chunks = sorted((read_chunk(f) for f in chunk_folders), key=lambda c: (c.first, c.last))
    n, h, w = chunks[0].info["frames"], chunks[0].info["height"], chunks[0].info["width"]
    for c in chunks[1:]:
        if (c.info["frames"], c.info["height"], c.info["width"], c.enc) != (n, h, w, chunks[0].enc):
            raise BadInputMedia(f"chunk '{c.folder}' is {c.info['width']}x{c.info['height']} {c.enc.format} with "
                                f"{c.info['frames']} frames; '{chunks[0].folder}' is {w}x{h} {chunks[0].enc.format} "
                                f"with {n}", "merge chunks of the same shot (and output format) only")
    cover = coverage(chunks, n)
    overlaps = []
    enc, rate, timecode, audio, attrs = _shot_output(chunks[0])
    with atomic_output_dir(Path(out)) as tmp:
        writer = OutputWriter(tmp, enc, n, w, h, rate, timecode, audio, attrs)
        try:
            for a, b, cs in _blocks(cover):
                ctx.progress("write", a, n, "merging frames")
                if not cs:  # frames no chunk edited: the source's
                    rgb, matte = _unedited(chunks, a, b, enc), np.zeros((b - a + 1, h, w), np.float32)
                elif len(cs) == 1:  # frames one chunk edited: its files (frames of the shot's format), else its values
                    if writer.copy(chunks[cs[0]].folder, a, b - a + 1):
                        continue
                    clip, matte = chunks[cs[0]].read(a, b)
                    rgb = clip.stored
                else:  # an overlap: cross-faded (pixels and matte)
                    (earlier, m_e), (later, m_l) = chunks[cs[0]].read(a, b), chunks[cs[1]].read(a, b)
                    rgb, matte = cross_fade(earlier.stored, later.stored), cross_fade(m_e, m_l)
                    seam = seam_error(earlier.frames.astype(np.float32), later.frames.astype(np.float32),
                                      _source_range(chunks, a, b))
                    overlaps.append({"frames": [a, b], "chunks": [chunks[i].folder.name for i in cs], "seam_error": seam})
                writer.write(rgb, matte, a)
            output = writer.close()
        except BaseException:
            writer.abort()
            raise
        edited = [min(c.first for c in chunks), max(c.last for c in chunks)]
        merge = {"blend": "linear in pixels", "overlaps": overlaps, "seam_error_mean": _mean_seam(overlaps),
                 "chunks": [{"folder": str(c.folder), "edited_frames": [c.first, c.last],
                             "timings": c.info.get("timings")} for c in chunks]}
        # the shot's edit.json: the first chunk's settings and crop (the shot's, shared); a chunk's per-frame
        # driving map is relative to its own range (its poses come from prepare), so only the policy is kept
        timing = {k: v for k, v in chunks[0].info.get("timing", {}).items()
                  if k not in ("driving_frames", "driving_positions")}
        info = {**{k: v for k, v in chunks[0].info.items() if k != "timings"}, "edited_frames": edited,
                "fps": timing.get("source_fps"), "timing": {**timing, "frame_start": edited[0], "frame_end": edited[1]},
                "output": output, "merge": merge}
        (tmp / "edit.json").write_text(json.dumps(info, indent=2, default=str))
        ctx.progress("write", n, n)
    return {"out": str(Path(out).expanduser().resolve()), "frames": n, "width": w, "height": h,
            "edited_frames": edited, "fps": info["fps"], "output": output, "chunks": len(chunks),
            "overlaps": overlaps, "seam_error_mean": merge["seam_error_mean"]}


def _mean_seam(overlaps: list[dict]) -> Optional[dict[str, float]]:
    if not overlaps:
        return None
    keys = set.intersection(*(set(o["seam_error"]) for o in overlaps))
    return {k: round(float(np.mean([o["seam_error"][k] for o in overlaps])), 4) for k in sorted(keys)}


# ---------------------------------------------------------------------------------------------- CLI


def cmd_merge_chunks(args: argparse.Namespace) -> int:
    result = merge_chunks(args.chunks, args.out)
    print(json.dumps(result, indent=2))
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("merge-chunks", help="put a shot together from its chunk edits (cross-fades the overlaps)",
                       description="Merge the `edit` outputs of overlapping chunks of one shot (docs/flamenco.md).")
    p.add_argument("chunks", nargs="+", help="the chunk output folders (any order)")
    p.add_argument("--out", required=True, help="output folder for the whole shot (must not exist or be empty)")
    p.set_defaults(func=cmd_merge_chunks)
