"""Peak host memory (RSS) of a whole `edit` of a 1080p clip, by clip length.

`python -m mf_backend bench host-memory --frames 24 120 600` writes a 1920×1080 clip of each length (the
frames of a 6-frame synthetic pair, repeated), edits it with a tiny random model at a small working size
(1 step), and prints the peak RSS of each run (a fresh process each, so the figures do not mix) and its
growth per added frame. `--route computed` (the default) is an edit as a user starts it: BlazePose
extracts the source poses, the driving clip (pose renders) is decoded, M_r and M_e are computed;
`--route user` gives the pair's poses and masks as the user's folders, so no pose or mask model runs.
The full-resolution work (read, poses, masks, crop, composite, write) passes a chunk of frames at a
time (mf_backend/streaming.py), so only the working-size crops and latents grow with the clip.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

H, W, BASE = 1080, 1920, 6


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, nargs="+", default=[24, 120], help="clip lengths to measure")
    p.add_argument("--size", type=int, default=64, help="working size of the tiny model")
    p.add_argument("--route", choices=("computed", "user"), default="computed",
                   help="computed: poses and masks by the backend's models; user: the user's pose and mask folders")
    p.add_argument("--keep", help="folder to keep the clips in (default: a temporary folder, removed)")


def write_case(root: Path, frames: int, hw: tuple[int, int] = (H, W)) -> dict[str, str]:
    """The pair's folders at `frames` frames of hw=(H, W): each file of the 6-frame pair copied in a cycle
    (edit params: source, driving and the user's pose and mask folders)."""
    from mf_backend.files import frame_pattern
    from mf_backend.media import write_frames, write_masks
    from mf_backend.synthetic import make_pair

    base = root / "base"
    if not base.exists():
        pair = make_pair(0, frames=BASE, size=hw, x_frac=0.3, height_frac=0.55)
        write_frames(pair.source.frames, base / "source_images")
        write_frames(pair.source.pose_renders, base / "source_poses")
        write_frames(pair.target_aligned_poses, base / "target_aligned_poses")
        write_masks(pair.source.masks, base / "source_masks")
        write_masks(pair.gt_edited.masks, base / "predicted_masks")
    case = root / f"f{frames}"
    pattern = frame_pattern(frames)
    for kind in ("source_images", "source_poses", "target_aligned_poses", "source_masks", "predicted_masks"):
        (case / kind).mkdir(parents=True, exist_ok=True)
        for k in range(frames):
            shutil.copyfile(base / kind / f"frame_{k % BASE}.png", case / kind / pattern.format(k=k))
    return {"source": str(case / "source_images"), "driving": str(case / "target_aligned_poses"),
            **{k: str(case / k) for k in ("source_poses", "target_aligned_poses", "source_masks", "predicted_masks")}}


_CHILD = """
import json, resource, sys, time
from mf_backend.environment import limit_heap_fragmentation
limit_heap_fragmentation()  # as `python -m mf_backend` does
from mf_backend.dispatch import run_job
from mf_backend.jobs import JobContext
from mf_backend.params import JobParams
t0 = time.perf_counter()
run_job("edit", JobParams.from_dict(json.loads(sys.argv[1])), JobContext())
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0}))
"""


def run(args: argparse.Namespace) -> int:
    from mf_backend.models.loading import build_models, save_models

    root = Path(args.keep or tempfile.mkdtemp(prefix="mf-host-memory-"))
    try:
        model = root / "tiny"
        if not model.exists():
            save_models(build_models("tiny", seed=0), model)
        first = None  # (frames, MB) of the first run: the growth per added frame is measured from it
        for n in args.frames:
            case = write_case(root, n)
            if args.route == "computed":  # only the clips: the backend extracts poses and computes masks
                case = {"source": case["source"], "driving": case["driving"]}
            params = {**case, "out": str(root / f"out{n}"), "model": str(model), "size": args.size,
                      "steps": 1, "device": "cpu", "precision": "fp32", "threads": 1}
            shutil.rmtree(params["out"], ignore_errors=True)
            r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(params)], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{n} frames: failed\n{r.stderr[-2000:]}", file=sys.stderr)
                return 1
            m = json.loads(r.stdout.strip().splitlines()[-1])
            mb = m["peak_rss_mb"]
            first = first or (n, mb)
            growth = f"{(mb - first[1]) / (n - first[0]):+6.2f} MB per frame over {first[0]}" if n != first[0] else ""
            print(f"{n:5d} frames at {W}x{H} ({args.route}): peak RSS {mb:8.0f} MB  {m['seconds']:6.1f} s  {growth}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0
