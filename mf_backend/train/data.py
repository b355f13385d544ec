"""Training data: tuples (reference frames, target pose renders, target frames) from the synthetic
world or from a folder of ordinary videos.

A tuple is what the model sees at inference for one edited clip: per frame, the source frame (ReCtr
and CLIP input), the pose to produce (PoCtr input) and the frame that should come out.

* synthetic: the world gives the answer. Half the tuples are edits (source frames + aligned driving
  poses -> ground-truth edit), half are reconstructions (source frames + source poses -> source
  frames), the two branches of the sampler.
* videos: no ground-truth edit exists, so the self-supervised pairing of pose-guided animation work is
  used: reference = frames of the same video at another time (same person and scene, another pose),
  pose = pose of the target frame (our extractor), target = the frame itself.

Everything is held in memory as uint8 arrays of shape (N, F, S, S, 3) (S = working size).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mf_backend.errors import BadInputMedia
from mf_backend.crop import plan_crop
from mf_backend.pose.keypoints import PoseSequence
from mf_backend.pose.render import render_poses

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif")


@dataclass
class ClipBank:
    """N clips of F frames at S x S: reference, pose and target frames, uint8 (N,F,S,S,3)."""

    reference: np.ndarray
    pose: np.ndarray
    target: np.ndarray

    def __post_init__(self) -> None:
        if not (self.reference.shape == self.pose.shape == self.target.shape) or self.reference.ndim != 5:
            raise ValueError(f"clip bank arrays must share a (N,F,S,S,3) shape, got {self.reference.shape}, "
                             f"{self.pose.shape}, {self.target.shape}")

    @property
    def num_clips(self) -> int:
        return int(self.reference.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.reference.shape[1])

    def sample_frames(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage 1: `batch` single frames -> three (B,1,S,S,3) arrays."""
        n = rng.integers(0, self.num_clips, batch)
        f = rng.integers(0, self.num_frames, batch)
        return self.reference[n, f][:, None], self.pose[n, f][:, None], self.target[n, f][:, None]

    def sample_clips(self, rng: np.random.Generator, batch: int, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage 2: `batch` windows of `frames` consecutive frames -> three (B,frames,S,S,3) arrays."""
        frames = min(frames, self.num_frames)
        n = rng.integers(0, self.num_clips, batch)
        start = rng.integers(0, self.num_frames - frames + 1, batch)
        idx = start[:, None] + np.arange(frames)[None]  # (B, frames)
        return (self.reference[n[:, None], idx], self.pose[n[:, None], idx], self.target[n[:, None], idx])

    def frames(self) -> np.ndarray:
        """Every distinct image (reference and target), (M,S,S,3): VAE training data."""
        return np.concatenate([self.reference.reshape(-1, *self.reference.shape[2:]),
                               self.target.reshape(-1, *self.target.shape[2:])])


# ---------------------------------------------------------------------------------------------- synthetic


def _synthetic_tuples(args: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """One synthetic pair -> (edit tuple, reconstruction tuple), each 3 x (F,S,S,3)."""
    from mf_backend.synthetic import make_pair

    seed, frames, size = args
    pair = make_pair(seed=seed, frames=frames, size=size)
    src, src_pose = pair.source.frames, pair.source.pose_renders
    return (src, pair.target_aligned.pose_renders, pair.gt_edited.frames,  # edit branch
            src, src_pose, src)  # reconstruction branch


def synthetic_bank(num_pairs: int, frames: int, size: int, seed: int = 0, workers: int = 0) -> ClipBank:
    """2 * num_pairs clips from the synthetic world (seeds seed .. seed+num_pairs-1), in parallel."""
    jobs = [(seed + i, frames, size) for i in range(num_pairs)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.map(_synthetic_tuples, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    else:
        results = [_synthetic_tuples(j) for j in jobs]
    ref = np.stack([r[k] for r in results for k in (0, 3)])
    pose = np.stack([r[k] for r in results for k in (1, 4)])
    tgt = np.stack([r[k] for r in results for k in (2, 5)])
    return ClipBank(ref, pose, tgt)


# ---------------------------------------------------------------------------------------------- videos


def video_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputMedia(f"training data folder '{folder}' does not exist", "pass --data synthetic or a folder of videos")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTS)
    if not files:
        raise BadInputMedia(f"no videos ({', '.join(VIDEO_EXTS)}) under '{folder}'",
                            "put training videos (one person each) in the folder, or use --data synthetic")
    return files


def _video_poses(frames: np.ndarray, cache: Optional[Path]) -> PoseSequence:
    """The protagonist's poses in full-resolution `frames` (F,H,W,3), cached by content hash. Extracted
    before cropping, as the edit does: at the training size (64² for the demo) the extractor finds nobody."""
    from mf_backend.pose import extract

    key = hashlib.sha1(frames.tobytes()).hexdigest()[:16]
    path = cache / f"{key}.json" if cache else None
    if path is not None and path.exists():
        return PoseSequence.load(path)
    seq = extract.extract_poses(frames)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        seq.save(path)
    return seq


def video_bank(folder: Path, frames: int, size: int, seed: int = 0, clips_per_video: int = 8,
               cache: Optional[Path] = None, max_video_frames: int = 600) -> ClipBank:
    """Self-supervised clips from ordinary videos: reference = the same video `frames` or more frames
    away (same person and scene, another pose), pose = our extractor's render, target = the frames."""
    rng = np.random.default_rng(seed)
    refs, poses, tgts = [], [], []
    for path in video_files(folder):
        from mf_backend.media import read_clip

        raw = read_clip(path, max_frames=max_video_frames).frames  # (F,H,W,3)
        n = raw.shape[0]
        if n < 2 * frames:
            log.warning("skipping %s: %d frames, need at least %d", path, n, 2 * frames)
            continue
        seq = _video_poses(raw, cache)
        plan = plan_crop(seq, None, raw.shape[1:3], size)  # the person-centred square the edit works in
        video = plan.apply(raw)  # (F,size,size,3)
        renders = render_poses(plan.apply_keypoints(seq))
        for _ in range(clips_per_video):
            a = int(rng.integers(0, n - frames + 1))
            far = [s for s in range(0, n - frames + 1) if abs(s - a) >= frames]
            b = int(rng.choice(far))
            refs.append(video[b:b + frames])
            poses.append(renders[a:a + frames])
            tgts.append(video[a:a + frames])
    if not refs:
        raise BadInputMedia(f"no usable videos under '{folder}' (each needs at least {2 * frames} frames)",
                            "use longer videos or fewer --frames")
    return ClipBank(np.stack(refs), np.stack(poses), np.stack(tgts))
