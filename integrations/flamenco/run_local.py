"""Run a MotionFollower Flamenco job on this machine, without Flamenco: the job is compiled by the job
type script under node (test/flamenco.js, the stand-in for the Manager's compiler) and every task's
`exec` command runs in dependency order, as the farm's workers would run them.

    python integrations/flamenco/run_local.py job.json            # a SubmittedJob (the add-on's flamenco_job.json)
    python integrations/flamenco/run_local.py --synthetic WORKDIR  # a synthetic shot with the demo model: seam errors

The synthetic run prints the seam error of every overlap (mean |chunk A - chunk B| before blending,
docs/flamenco.md) and the time of each task.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NODE = shutil.which("node") or shutil.which("nodejs")


def compile_job(submitted: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """A SubmittedJob → the compiled job (tasks with commands and dependency UUIDs), via node."""
    if NODE is None:
        raise SystemExit("node is not installed (Debian: apt-get install nodejs)")
    job_file = workdir / "submitted_job.json"
    job_file.write_text(json.dumps(submitted))
    out = subprocess.run([NODE, str(HERE / "test" / "flamenco.js"), str(HERE / "motionfollower.js"), str(job_file)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"the job does not compile:\n{out.stderr}")
    return json.loads(out.stdout)


def run_in_dependency_order(job: dict[str, Any], env: Optional[dict[str, str]] = None) -> list[tuple[str, float]]:
    """Run each task's exec commands once all its dependencies are done → [(task name, seconds)]."""
    done: set[str] = set()
    times = []
    pending = list(job["tasks"])
    while pending:
        ready = [t for t in pending if set(t["dependencies"]) <= done]
        if not ready:
            raise RuntimeError(f"dependency cycle among {[t['name'] for t in pending]}")
        for task in ready:
            t0 = time.perf_counter()
            for cmd in task["commands"]:
                if cmd["name"] != "exec":
                    raise RuntimeError(f"task {task['name']}: only exec commands run here, not {cmd['name']}")
                p = cmd["parameters"]
                res = subprocess.run([p["exe"], *p["args"]], cwd=str(REPO), capture_output=True, text=True,
                                     env={**os.environ, **(env or {})})
                if res.returncode != 0:
                    raise RuntimeError(f"task {task['name']} failed:\n{res.stderr[-3000:]}")
            times.append((task["name"], time.perf_counter() - t0))
            done.add(task["uuid"])
            pending.remove(task)
    return times


def synthetic_shot(root: Path, frames: int, size: tuple[int, int], seed: int = 3, fps: float = 12.0) -> dict[str, Path]:
    """A synthetic source (mp4), its exact pose renders, and driving pose renders (no pose model needed)."""
    from mf_backend.media import write_frames, write_video
    from mf_backend.synthetic import make_pair

    pair = make_pair(seed, frames=frames, size=size, x_frac=0.4, height_frac=0.7)
    write_video(pair.source.frames, root / "source.mp4", fps)
    write_frames(pair.source.pose_renders, root / "source_poses")
    write_frames(pair.driving.pose_renders, root / "driving")
    return {"source": root / "source.mp4", "source_poses": root / "source_poses", "driving": root / "driving"}


def synthetic_job(shot: dict[str, Path], out: Path, frames: int, **settings: Any) -> dict[str, Any]:
    """A SubmittedJob editing the whole synthetic shot with this machine's backend."""
    base = {"source": str(shot["source"]), "driving": str(shot["driving"]), "output": str(out),
            "frame_start": 0, "frame_end": frames - 1, "backend_cmd": f"{sys.executable} -m mf_backend",
            "prepare_args": f"--pose-extractor decode --source-poses {shot['source_poses']}",
            "edit_args": "--device cpu --precision fp32 --quiet"}
    return {"name": "synthetic shot", "type": "motionfollower", "priority": 50, "submitter_platform": "linux",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "settings": {**base, **settings}}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", nargs="?", help="a SubmittedJob JSON file")
    ap.add_argument("--synthetic", metavar="WORKDIR", help="make and edit a synthetic shot in WORKDIR (must not exist)")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--chunk-length", type=int, default=16)
    ap.add_argument("--chunk-overlap", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args(argv)
    if args.synthetic:
        root = Path(args.synthetic).resolve()
        root.mkdir(parents=True)
        shot = synthetic_shot(root, args.frames, (96, 128))
        submitted = synthetic_job(shot, root / "edited", args.frames, chunk_length=args.chunk_length,
                                  chunk_overlap=args.chunk_overlap, steps=args.steps, model=args.model, size=args.size)
    elif args.job:
        submitted = json.loads(Path(args.job).read_text())
        root = Path(args.job).resolve().parent
    else:
        ap.error("give a job file or --synthetic WORKDIR")
    job = compile_job(submitted, root)
    for name, seconds in run_in_dependency_order(job):
        print(f"task {name}: {seconds:.1f} s")
    info = json.loads((Path(submitted["settings"]["output"]) / "edit.json").read_text())
    for o in info["merge"]["overlaps"]:
        print(f"overlap frames {o['frames'][0]}..{o['frames'][1]}: seam error {json.dumps(o['seam_error'])}")
    print(f"mean seam error: {json.dumps(info['merge']['seam_error_mean'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
