"""`bench crop`: time of the person-centred crop and the composite back, per full-resolution frame.

    python -m mf_backend bench crop [--height 1080 --width 1920 --frames 24 --size 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def bench_crop(h: int, w: int, frames: int, size: int, repeat: int) -> None:
    """Print the time per frame of planning, cropping and compositing synthetic footage of h x w."""
    from mf_backend.composite import composite
    from mf_backend.crop import plan_crop

    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8)
    # an off-centre "person": a box about 0.6 of the height, moving a little
    t = np.arange(frames)
    cx, cy, ph, pw = int(w * 0.7), int(h * 0.55), int(h * 0.6), int(h * 0.25)
    masks = np.zeros((frames, h, w), np.float32)
    for f in t:  # test data only
        x = cx + int(20 * np.sin(f / 4))
        masks[f, cy - ph // 2 : cy + ph // 2, x - pw // 2 : x + pw // 2] = 1.0
    kps = np.zeros((frames, 18, 3), np.float32)
    kps[:, :, 0] = cx + rng.uniform(-pw / 2, pw / 2, (frames, 18))
    kps[:, :, 1] = cy + rng.uniform(-ph / 2, ph / 2, (frames, 18))
    kps[:, :, 2] = 1.0

    def timed(fn):
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = fn()
            best = min(best, time.perf_counter() - t0)
        return r, best

    for mode in ("person", "letterbox"):
        plan, t_plan = timed(lambda: plan_crop(kps, masks, (h, w), size, mode=mode))
        crops, t_frames = timed(lambda: plan.apply(src))
        m_crop, t_masks = timed(lambda: plan.apply_masks(masks))
        _, t_kps = timed(lambda: plan.apply_keypoints(kps))
        edited = np.clip(crops.astype(np.int16) + 7, 0, 255).astype(np.uint8)
        m_e = np.roll(m_crop, size // 20, axis=2)
        _, t_comp = timed(lambda: composite(src, edited, plan, m_crop, m_e, source_crops=crops))
        _, t_comp_full = timed(lambda: composite(src, edited, plan, m_crop, m_e))
        per = lambda s: 1000.0 * s / frames  # noqa: E731
        print(f"{w}x{h}, {frames} frames, size {size}, mode {mode}: crop side {plan.side} px at ({plan.x0},{plan.y0})")
        print(f"  plan_crop {per(t_plan):.2f} ms/frame | crop frames {per(t_frames):.2f} | crop masks {per(t_masks):.2f} "
              f"| crop keypoints {per(t_kps):.3f}")
        print(f"  composite (colour match, source crops given) {per(t_comp):.2f} ms/frame | "
              f"composite incl. cropping the source {per(t_comp_full):.2f} ms/frame")
        total = t_plan + t_frames + t_masks + t_kps + t_comp
        print(f"  total crop + composite added per frame: {per(total):.2f} ms")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--height", type=int, default=1080, help="source frame height in pixels")
    p.add_argument("--width", type=int, default=1920, help="source frame width in pixels")
    p.add_argument("--frames", type=int, default=24, help="frames in the synthetic clip")
    p.add_argument("--size", type=int, default=512, help="working (crop) size in pixels")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions; the fastest is reported")


def run(a: argparse.Namespace) -> int:
    bench_crop(a.height, a.width, a.frames, a.size, a.repeat)
    return 0
