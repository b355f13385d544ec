"""`python -m mf_backend bench io`: milliseconds per frame to write and read each output format at 1080p.

For each format, `--frames` synthetic 1920×1080 frames (smooth gradients with fine grain, so codecs do
real work) are written the way the edit writes its output (media_output.OutputWriter: conversion to the
output encoding, the matte, the file) and read back the way the edit reads a source (media.read_clip:
decode, then the colour conversion to the model's sRGB). EXR is written from a scene-linear half source,
so it includes no colour conversion on write but an OCIO linear → sRGB one on read. Wall and CPU
milliseconds (all threads of the process) per frame; MB/frame excludes the separate matte sequence.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

FORMATS = ("png", "png16", "exr", "prores", "prores4444", "dnxhr", "h264")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--formats", default=",".join(FORMATS), help="comma list of " + ", ".join(FORMATS))
    p.add_argument("--repeat", type=int, default=2, help="best of this many runs")


def _source(n: int, h: int, w: int, kind: str):
    from mf_backend import media_colour as colour
    from mf_backend.media import Clip

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(0)
    base = np.stack([x / w, y / h, 0.5 + 0.4 * np.sin(x / 37 + y / 53)], -1)  # (H,W,3) in 0..1
    frames = [np.clip(np.roll(base, 9 * i, axis=1) + rng.normal(0, 0.01, base.shape).astype(np.float32), 0, 1)
              for i in range(n)]
    stored = np.stack(frames)
    srgb = colour.resolve("sRGB")
    if kind == "exr":
        space = colour.resolve("Linear Rec.709")
        stored = colour.convert(stored, srgb, space).astype(np.float16)
    else:
        space = srgb
        stored = colour.from_float(stored, np.uint8 if kind in ("png", "h264") else np.uint16)
    work = colour.to_working(stored, space)
    return Clip(frames=work, fps=24000 / 1001, path="bench", native=None if work is stored else stored,
                colorspace=space, rate=Fraction(24000, 1001), timecode="01:00:00:00", kind=kind)


def run(args: argparse.Namespace) -> int:
    from mf_backend.media import read_clip
    from mf_backend.media_output import OutputWriter, output_chunks, output_encoding

    n, h, w = args.frames, args.height, args.width
    print(f"I/O per frame at {w}x{h}, {n} frames, best of {args.repeat} (write = encode + matte + file; "
          f"read = decode + colour to sRGB uint8)")
    print(f"{'format':<11} {'write ms':>9} {'read ms':>8} {'write cpu':>10} {'read cpu':>9} {'MB/frame':>9}")
    for fmt in args.formats.split(","):
        clip = _source(n, h, w, fmt)
        enc = output_encoding("auto", clip)
        matte = np.zeros((n, h, w), np.float32)
        matte[:, h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 1.0
        edited = np.arange(n)
        best_w = best_r = cpu_w = cpu_r = float("inf")
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="mf-bench-io-") as tmp:
                t0, c0 = time.perf_counter(), time.process_time()
                writer = OutputWriter(Path(tmp), enc, n, w, h, clip.rate, clip.timecode)
                for start, rgb, alpha in output_chunks(clip, edited, edited, clip.stored, matte, enc):
                    writer.write(rgb, alpha, start)
                out = writer.close()
                best_w, cpu_w = min(best_w, time.perf_counter() - t0), min(cpu_w, time.process_time() - c0)
                target = Path(tmp) / out["movie"] if out["movie"] else Path(tmp)
                size = sum(f.stat().st_size for f in Path(tmp).glob("*") if f.is_file())
                t0, c0 = time.perf_counter(), time.process_time()
                back = read_clip(target, colorspace=enc.colorspace)
                best_r, cpu_r = min(best_r, time.perf_counter() - t0), min(cpu_r, time.process_time() - c0)
                assert back.num_frames == n
        print(f"{fmt:<11} {1000 * best_w / n:9.1f} {1000 * best_r / n:8.1f} {1000 * cpu_w / n:10.1f} "
              f"{1000 * cpu_r / n:9.1f} {size / n / 1e6:9.2f}", flush=True)
    return 0
