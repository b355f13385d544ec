"""`python -m mf_backend bench merge`: milliseconds per frame of merge-chunks at 1080p, by output format.

A shot of `--frames` synthetic frames (bench io's gradients with grain) is written as two farm chunks
that share `--overlap` frames, each the way `edit --chunk` writes it (media_output.OutputWriter in
chunk_encoding: the shot's image format, a movie's as 16- or 8-bit PNG, with the matte), the later one
with a different edited box; then chunks.merge_chunks puts the shot together (frames one chunk edited
copied file for file, the overlap decoded and cross-faded, a movie encoded once).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = ("png", "png16", "exr", "prores", "h264")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--overlap", type=int, default=4)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--formats", default=",".join(FORMATS), help="comma list of " + ", ".join(FORMATS))


def _write_chunk(folder: Path, clip, enc, shot_format: str, first: int, last: int, box: slice) -> None:
    from mf_backend.media_output import OutputWriter, encode_stored

    h, w = clip.height, clip.width
    rgb = encode_stored(clip.stored[first:last + 1], clip.colorspace, enc).copy()
    rgb[:, box, box] = rgb[:, box, box] // 2 if rgb.dtype.kind == "u" else rgb[:, box, box] / 2
    matte = np.zeros((last - first + 1, h, w), np.float32)
    matte[:, box, box] = 1.0
    folder.mkdir()
    writer = OutputWriter(folder, enc, clip.num_frames, w, h, clip.rate, clip.timecode)
    writer.write(rgb, matte, first)
    info = {"frames": clip.num_frames, "height": h, "width": w, "edited_frames": [first, last], "params": {},
            "output": {**writer.close(), "shot_format": shot_format}}
    (folder / "edit.json").write_text(json.dumps(info))


def run(args: argparse.Namespace) -> int:
    from mf_backend.bench.io import _source
    from mf_backend.chunks import merge_chunks
    from mf_backend.media_output import chunk_encoding, output_encoding

    n, h, w, m = args.frames, args.height, args.width, args.overlap
    half = (n + m) // 2
    print(f"merge-chunks at {w}x{h}: {n} frames in two chunks 0..{half - 1} and {half - m}..{n - 1} ({m} shared)")
    print(f"{'format':<8} {'chunks':>7} {'merge s':>8} {'ms/frame':>9}")
    for fmt in args.formats.split(","):
        clip = _source(n, h, w, "exr" if fmt == "exr" else ("png" if fmt in ("png", "h264") else "png16"))
        enc = chunk_encoding(output_encoding(fmt, clip))
        with tempfile.TemporaryDirectory(prefix="mf-bench-merge-") as tmp:
            _write_chunk(Path(tmp) / "a", clip, enc, fmt, 0, half - 1, slice(h // 4, h // 2))
            _write_chunk(Path(tmp) / "b", clip, enc, fmt, half - m, n - 1, slice(h // 3, 2 * h // 3))
            t0 = time.perf_counter()
            merge_chunks([Path(tmp) / "a", Path(tmp) / "b"], Path(tmp) / "out")
            dt = time.perf_counter() - t0
        print(f"{fmt:<8} {enc.format:>7} {dt:8.2f} {1000 * dt / n:9.1f}", flush=True)
    return 0
