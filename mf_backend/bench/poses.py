"""`bench poses`: the pose tools on reference cases (folders in the example-case layout).

    python -m mf_backend bench poses --cases ../shared/real-cases [--mode all]

Prints, per case, the mean body-joint error in pixels (at the cases' 512² size) between our
`align_poses(decode(source_poses), decode(target_poses))` and the decoded reference
`target_aligned_poses` (joints present in both), and the renderer's pixel agreement with the
shipped `source_poses` when re-rendering their decoded keypoints.

`--jitter`: BlazePose on every case's source and driving clip, smoothed over frames with each σ of
JITTER_SIGMAS (pose.smooth.centred_gaussian; 0 = none): the body-joint error against the case's decoded
DWPose renders, the median joint acceleration (px/frame², the jitter) and the σ a leave-one-case-out
choice by joint error makes for each held-out case.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mf_backend.pose.align import ALIGN_MODES, align_poses
from mf_backend.pose.decode import decode_poses
from mf_backend.pose.render import render_poses


def read_pose_folder(folder: Path) -> np.ndarray:
    """frame_{k}.png sorted by k → (F,H,W,3) uint8 RGB."""
    import cv2

    files = sorted(folder.glob("frame_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    return np.stack([cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1] for p in files])


def joint_error(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Mean distance over joints visible in both (F,J,3) arrays, and how many were compared."""
    both = (a[..., 2] > 0) & (b[..., 2] > 0)
    if not both.any():
        return float("nan"), 0
    return float(np.linalg.norm(a[..., :2] - b[..., :2], axis=-1)[both].mean()), int(both.sum())


def render_agreement(images: np.ndarray) -> tuple[float, float]:
    """Decode then re-render pose images → (all-pixel agreement, agreement on the union of non-black pixels)."""
    rendered = render_poses(decode_poses(images))
    same = (rendered == images).all(-1)
    fg = (rendered.max(-1) > 0) | (images.max(-1) > 0)
    return float(same.mean()), float(same[fg].mean())


def extraction_speed(case: Path) -> tuple[float, float]:
    """BlazePose frames/s on the case's source_images, and its body-joint error vs the decoded source_poses."""
    import time

    from mf_backend.media import read_clip
    from mf_backend.pose.extract import extract_mediapipe

    frames = read_clip(case / "source_images").frames
    t0 = time.perf_counter()
    seq = extract_mediapipe(frames)
    fps = len(frames) / (time.perf_counter() - t0)
    ref = decode_poses(read_pose_folder(case / "source_poses"))
    return round(fps, 2), round(joint_error(seq.body, ref.body)[0], 2)


JITTER_SIGMAS = (0.0, 0.5, 0.6, 0.8, 1.0)


def acceleration(body: np.ndarray) -> float:
    """Median |p[t+1] - 2 p[t] + p[t-1]| over joints visible in the three frames, (F,J,3) → px/frame²."""
    acc = np.linalg.norm(body[2:, :, :2] - 2 * body[1:-1, :, :2] + body[:-2, :, :2], axis=-1)
    vis = body[..., 2] > 0
    seen = vis[2:] & vis[1:-1] & vis[:-2]
    return float(np.median(acc[seen])) if seen.any() else float("nan")


def jitter_rows(cases: list[Path]) -> list[dict]:
    """One row per (case, clip, σ): joint error vs the DWPose renders and median acceleration, then one
    leave-one-case-out row per case (σ chosen on the other cases' mean error)."""
    from mf_backend.media import read_clip
    from mf_backend.pose.extract import extract_mediapipe
    from mf_backend.pose.smooth import centred_gaussian

    rows = []
    for case in cases:
        for clip, renders in (("source_images", "source_poses"), ("target_images", "target_poses")):
            raw = extract_mediapipe(read_clip(case / clip).frames, sigma=0).body
            ref = decode_poses(read_pose_folder(case / renders)).body
            for sigma in JITTER_SIGMAS:
                body = centred_gaussian(raw, sigma)
                rows.append({"case": case.name, "clip": clip, "sigma": sigma,
                             "body_err_px": round(joint_error(body, ref)[0], 3), "accel_px": round(acceleration(body), 3)})
    mean = lambda rs, key: float(np.mean([r[key] for r in rs]))  # noqa: E731
    loco = []
    for case in cases:
        others = [r for r in rows if r["case"] != case.name]
        chosen = min(JITTER_SIGMAS, key=lambda s: mean([r for r in others if r["sigma"] == s], "body_err_px"))
        held = [r for r in rows if r["case"] == case.name]
        loco.append({"held_out": case.name, "chosen_sigma": chosen,
                     "body_err_px": round(mean([r for r in held if r["sigma"] == chosen], "body_err_px"), 3),
                     "unsmoothed_body_err_px": round(mean([r for r in held if r["sigma"] == 0], "body_err_px"), 3),
                     "accel_px": round(mean([r for r in held if r["sigma"] == chosen], "accel_px"), 3),
                     "unsmoothed_accel_px": round(mean([r for r in held if r["sigma"] == 0], "accel_px"), 3)})
    return rows + loco


# `--mode all`: every aligner mode, plus first-frame with the driver's placement kept.
ALL_MODES = tuple((m, False) for m in ALIGN_MODES) + (("first-frame", True),)


def evaluate_case_modes(case: Path, modes) -> list[dict]:
    """One row per (mode, keep_placement), decoding the case's pose folders once."""
    src = decode_poses(read_pose_folder(case / "source_poses"))
    drv = decode_poses(read_pose_folder(case / "target_poses"))
    ref = decode_poses(read_pose_folder(case / "target_aligned_poses"))
    raw_err, _ = joint_error(drv.body, ref.body)  # the unaligned driver, as a baseline
    rows = []
    for mode, keep_placement in modes:
        ours = align_poses(src, drv, mode, keep_placement=keep_placement)
        body_err, n_body = joint_error(ours.body, ref.body)
        hand_err, n_hand = joint_error(ours.hands, ref.hands)
        rows.append({"case": case.name, "mode": mode + ("+keep-placement" if keep_placement else ""),
                     "body_err_px": round(body_err, 2), "body_joints": n_body, "hand_err_px": round(hand_err, 2),
                     "hand_joints": n_hand, "unaligned_body_err_px": round(raw_err, 2)})
    return rows


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--cases", required=True, help="folder holding case-*/ in the example-case layout")
    ap.add_argument("--mode", default="first-frame", choices=ALIGN_MODES + ("all",),
                    help="aligner mode; 'all' prints every mode (and first-frame+keep-placement) per case")
    ap.add_argument("--keep-placement", action="store_true", help="keep the driver's root position")
    ap.add_argument("--extract-speed", action="store_true",
                    help="also time BlazePose extraction on each case's source_images (frames/s)")
    ap.add_argument("--render", action="store_true", help="also report re-render pixel agreement")
    ap.add_argument("--jitter", action="store_true",
                    help="only the pose smoothing: joint error vs the DWPose renders and jitter per σ, and its LOCO choice")


def run(args: argparse.Namespace) -> int:
    cases = sorted(p for p in Path(args.cases).glob("case-*") if (p / "target_aligned_poses").is_dir())
    if not cases:
        print(f"no cases with target_aligned_poses under {args.cases}", file=sys.stderr)
        return 2
    if args.jitter:
        for row in jitter_rows(cases):
            print(json.dumps(row))
        return 0
    modes = ALL_MODES if args.mode == "all" else ((args.mode, args.keep_placement),)
    rows = []
    for case in cases:
        case_rows = evaluate_case_modes(case, modes)
        if args.render:
            case_rows[0]["render_agree_all"], case_rows[0]["render_agree_fg"] = (
                round(v, 4) for v in render_agreement(read_pose_folder(case / "source_poses")))
        if args.extract_speed:
            case_rows[0]["blazepose_fps"], case_rows[0]["blazepose_vs_ref_body_err_px"] = extraction_speed(case)
        for row in case_rows:
            print(json.dumps(row))
        rows += case_rows
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        print(json.dumps({"mode": mode, "mean_body_err_px": round(float(np.mean([r["body_err_px"] for r in mine])), 2),
                          "mean_unaligned_body_err_px": round(float(np.mean([r["unaligned_body_err_px"] for r in mine])), 2)}))
    return 0
