"""Training of the target-mask predictor (method.md §F): synthetic pairs, real videos, test-time adaptation.

All supervision is a *group*: source frames (F) that may each be combined with any of G (pose render,
mask) targets of the same person. A training sample is (source frame i, pose render j) → mask j.
  * synthetic clip (self-supervision):  frames i of the clip, poses/masks j of the same clip;
  * synthetic pair (the edit itself):   source frames i, and the ground-truth edit's aligned poses/masks
    (plus the source's own poses/masks);
  * real video (self-supervision):      frames i, poses j from the pose extractor, masks j from
    `source.source_masks` — "frame i + pose of frame j → mask of frame j";
  * test-time adaptation: the same on the source clip being edited.

Everything is stored at the model's working resolution, made exactly as at inference: images are
area-downsampled from their full size (pose renders are drawn at 512 px first, like the inputs).

The shipped weights (mf_backend/assets/seg) were made by:
    python -m mf_backend train-seg --out mf_backend/assets/seg --config small --clips 120 --pairs 60 \
        --minutes 13 --batch 12 --threads 1 --seed 0
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import cv2
import numpy as np
import torch

from mf_backend.masks.model import TargetMaskPredictor

log = logging.getLogger(__name__)

RENDER_SIZE = 512  # pose renders are drawn at the reference size, then downsampled like real inputs


@dataclass
class Group:
    """Supervision of one person: uint8 arrays at the working resolution r."""

    frames: np.ndarray  # (F,r,r,3) source frames
    poses: np.ndarray  # (G,r,r,3) pose renders
    masks: np.ndarray  # (G,r,r) {0,255} masks of the person in those poses


def resize_stack(images: np.ndarray, size: int) -> np.ndarray:
    """(N,H,W[,C]) uint8/float → (N,size,size[,C]) with area averaging (the inference path uses the same)."""
    interp = cv2.INTER_AREA if images.shape[1] >= size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (size, size), interpolation=interp) for im in images])


def make_group(frames: np.ndarray, poses: np.ndarray, masks: np.ndarray, size: int) -> Group:
    """Full-size uint8 frames (F,H,W,3), pose renders (G,H',W',3), masks (G,H,W) float/uint8 → Group."""
    m = masks.astype(np.float32)
    m = m / 255.0 if m.max() > 1.0 else m
    small = (resize_stack(m, size) >= 0.5).astype(np.uint8) * 255
    return Group(resize_stack(frames, size), resize_stack(poses, size), small)


def synthetic_groups(clips: int, pairs: int, size: int, seed: int = 0, frames: int = 16, clip_size: int = 128,
                     ctx=None) -> list[Group]:
    """Groups from the synthetic world: `clips` self-supervised clips and `pairs` edit pairs (with GT edit)."""
    from mf_backend.pose.render import render_poses
    from mf_backend.synthetic.pair import make_clip, make_pair

    out = []
    for k in range(clips):
        c = make_clip(seed * 100003 + k, frames=frames, size=clip_size)
        out.append(make_group(c.frames, render_poses(c.poses, RENDER_SIZE, RENDER_SIZE), c.masks, size))
        if ctx is not None:
            ctx.progress("data", k, clips + pairs, "synthetic clips")
    for k in range(pairs):
        p = make_pair(seed * 100003 + 50000 + k, frames=frames, size=clip_size)
        poses = np.concatenate([render_poses(p.source.poses, RENDER_SIZE, RENDER_SIZE),
                                render_poses(p.target_aligned.poses, RENDER_SIZE, RENDER_SIZE)])
        masks = np.concatenate([p.source.masks, p.gt_edited.masks])
        out.append(make_group(p.source.frames, poses, masks, size))
        if ctx is not None:
            ctx.progress("data", clips + k, clips + pairs, "synthetic pairs")
    return out


def case_group(case: Path, size: int, frames_idx: Optional[np.ndarray] = None,
               mask_kind: str = "source_masks") -> Group:
    """A folder in the example-case layout (source_images, source_poses, source_masks) → Group."""
    from mf_backend.media import read_clip, read_masks

    src = read_clip(case / "source_images").frames
    poses = read_clip(case / "source_poses").frames
    masks = read_masks(case / mask_kind)
    idx = np.arange(len(src)) if frames_idx is None else np.asarray(frames_idx)
    return make_group(src[idx], poses[idx], masks[idx], size)


def video_groups(folder: str | Path, size: int, models_dir: Optional[str] = None, max_frames: int = 48,
                 ctx=None) -> list[Group]:
    """Self-supervision on a folder of real videos: every video file / frame folder / example case inside.

    Poses come from the pose extractor, masks from `source.source_masks` (unless a case folder has them).
    """
    from mf_backend.masks.source import source_masks
    from mf_backend.media import read_clip
    from mf_backend.pose.extract import extract_poses
    from mf_backend.pose.render import render_poses

    folder = Path(folder).expanduser()
    items = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    out = []
    for n, item in enumerate(items):
        if item.is_dir() and (item / "source_images").is_dir() and (item / "source_masks").is_dir():
            out.append(case_group(item, size))
            continue
        try:
            clip = read_clip(item, max_frames=max_frames)
        except Exception as exc:  # noqa: BLE001 - skip what is not a video, say so
            log.warning("skipping '%s' (not a readable video or frame folder): %s", item, exc)
            continue
        poses = extract_poses(clip.frames, "auto", models_dir, clip.fps)
        masks = source_masks(clip.frames)
        keep = (poses.body[:, :, 2] > 0).sum(1) >= 8  # frames with a visible body
        keep &= masks.reshape(len(masks), -1).mean(1) > 0.01
        if keep.sum() < 2:
            log.warning("skipping '%s': fewer than 2 frames with a person", item)
            continue
        renders = render_poses(poses)
        out.append(make_group(clip.frames[keep], renders[keep], masks[keep], size))
        if ctx is not None:
            ctx.progress("data", n, len(items), f"real video {item.name}")
    return out


# ---------------------------------------------------------------------------------------------- batches


def to_inputs(frames: np.ndarray, poses: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B,r,r,3) frames and pose renders → source (B,3,r,r) in [-1,1], pose (B,3,r,r) in [0,1]."""
    src = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    pose = torch.from_numpy(np.ascontiguousarray(poses)).permute(0, 3, 1, 2).float() / 255.0
    return src, pose


def sample_batch(groups: list[Group], batch: int, rng: np.random.Generator, jitter: bool = True):
    """Random (frame i, pose j, mask j) triples, i != j where possible → (source, pose, mask (B,1,r,r))."""
    g_idx = rng.integers(0, len(groups), batch)
    fr, po, ma = [], [], []
    for g in g_idx:
        grp = groups[g]
        j = rng.integers(0, len(grp.poses))
        i = rng.integers(0, len(grp.frames))
        fr.append(grp.frames[i]), po.append(grp.poses[j]), ma.append(grp.masks[j])
    src, pose = to_inputs(np.stack(fr), np.stack(po))
    if jitter:  # brightness/contrast/colour jitter: the synthetic world is cleaner than real footage
        gain = torch.from_numpy(rng.uniform(0.7, 1.3, (batch, 3, 1, 1))).float()
        bias = torch.from_numpy(rng.uniform(-0.2, 0.2, (batch, 1, 1, 1))).float()
        src = ((src + 1) * gain - 1 + bias).clamp(-1, 1)
    mask = torch.from_numpy(np.stack(ma)).float()[:, None] / 255.0
    return src, pose, mask


def train_steps(model: TargetMaskPredictor, groups: list[Group], steps: Optional[int] = None,
                minutes: Optional[float] = None, batch: int = 16, lr: float = 2e-3, seed: int = 0,
                jitter: bool = True, ctx=None, log_every: int = 25, stage: str = "train",
                callback: Optional[Callable[[int], None]] = None) -> list[float]:
    """AdamW on the MSE between the predicted probability and the mask; stops at `steps` or `minutes`.
    callback(step) runs after every step (e.g. a held-out check for early stopping).

    Returns the loss per step. The learning rate follows a cosine decay over the planned steps (by time
    when only `minutes` is given: the schedule is re-estimated from the measured step time).
    """
    if not groups:
        raise ValueError("no training data (0 groups)")
    if steps is None and minutes is None:
        raise ValueError("give steps or minutes")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, foreach=True)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    deadline = None if minutes is None else start + 60.0 * minutes
    step = 0
    while True:
        if steps is not None and step >= steps:
            break
        now = time.perf_counter()
        if deadline is not None and now >= deadline:
            break
        if steps is not None:
            progress = step / steps
        else:
            progress = (now - start) / (deadline - start)
        for g in opt.param_groups:  # short warm-up, then cosine to 5% of lr
            warm = min(1.0, (step + 1) / 20)
            g["lr"] = lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        src, pose, mask = sample_batch(groups, batch, rng, jitter)
        loss = torch.nn.functional.mse_loss(model(src, pose), mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if ctx is not None:
            ctx.progress(stage, step, steps or step + 1, f"loss {np.mean(losses[-log_every:]):.4f}")
        if step % log_every == 0:
            log.info("step %d  loss %.4f  %.1fs", step, np.mean(losses[-log_every:]), time.perf_counter() - start)
        if callback is not None:
            callback(step)
            model.train()
    model.eval()
    return losses


def adapt(model: TargetMaskPredictor, frames: np.ndarray, pose_renders: np.ndarray, masks: np.ndarray,
          steps: int = 40, lr: float = 5e-4, batch: int = 8, seed: int = 0, ctx=None,
          callback: Optional[Callable[[TargetMaskPredictor, int], None]] = None) -> TargetMaskPredictor:
    """Test-time adaptation: a copy of `model` fine-tuned on the source clip itself.

    frames uint8 (F,H,W,3), pose_renders uint8 (F,H,W,3) of the SOURCE poses, masks (F,H,W) = M_r.
    The protagonist's body and clothes are known from the source, so (frame i, pose j) → mask j pairs of
    the clip teach the model this person. Frames whose mask is empty are left out.
    callback(tuned model, step) runs after every step.
    """
    keep = masks.reshape(len(masks), -1).max(1) > 0
    if keep.sum() < 2 or steps <= 0:
        return model
    group = make_group(frames[keep], pose_renders[keep], masks[keep], model.config.resolution)
    tuned = copy.deepcopy(model)
    hook = None if callback is None else (lambda step: callback(tuned, step))
    train_steps(tuned, [group], steps=steps, batch=batch, lr=lr, seed=seed, jitter=True, ctx=ctx, stage="masks",
                callback=hook)
    return tuned


def iter_chunks(n: int, size: int) -> Iterable[slice]:
    for a in range(0, n, size):
        yield slice(a, min(n, a + size))
