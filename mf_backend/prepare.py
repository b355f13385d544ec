"""The `prepare` stage: poses (and, later, masks) in the example-case folder layout.

    out/source_poses/frame_{k}.png          renders of the source protagonist
    out/target_poses/frame_{k}.png          renders of the driver, one per source frame (timing applied)
    out/target_aligned_poses/frame_{k}.png  the driver retargeted onto the source body (the edit's pose)
    out/{source,target,target_aligned}_keypoints.json
    out/crop.json                           the person crop of the edited frames (chunked edits share it)

    out/source_masks/frame_{k}.png, out/predicted_masks/frame_{k}.png   M_r and M_e (masks/stage.py)

Built from small stages that `edit()` reuses: `open_inputs` → `compute_poses` → `compute_masks` →
`write_poses`. Frames pass a chunk at a time (mf_backend/frames.py); only keypoints are held for a clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mf_backend.chunks import write_shot_crop
from mf_backend.errors import BadInputMedia
from mf_backend.files import atomic_output_dir, frame_pattern
from mf_backend.frames import CHUNK, Frames
from mf_backend.jobs import JobContext
from mf_backend.masks.stage import compute_masks
from mf_backend.params import JobParams
from mf_backend.pose.align import align_poses
from mf_backend.pose.decode import decode_poses, looks_like_pose_render
from mf_backend.pose.extract import extract_poses
from mf_backend.pose.keypoints import PoseSequence
from mf_backend.pose.render import render_poses
from mf_backend.streaming import Footage, open_footage

# stages of the job and their relative cost (overall fraction and ETA; the masks' adaptation dominates)
STAGES = (("read", 1.0), ("poses", 6.0), ("masks", 12.0), ("write", 2.0))


@dataclass
class PosePrep:
    """Poses of one prepare/edit job, all in the SOURCE frame's pixels and with one frame per source frame."""

    source: PoseSequence  # the source protagonist
    target: PoseSequence  # the driver after the timing map (not aligned)
    aligned: PoseSequence  # the driver retargeted onto the source body: what the edit renders
    driving_index: np.ndarray  # float64 (F_src,) driving position per source frame, NaN = not edited


def open_inputs(params: JobParams, ctx: JobContext) -> tuple[Footage, Footage]:
    """→ (source, driving) Footage of video files or frame folders: counted, not decoded."""
    ctx.progress("read", 0, 2, "opening the source clip")
    source = open_footage(params.source, params.advanced.source_fps, params.advanced.input_colorspace)
    ctx.progress("read", 1, 2, "opening the driving clip")
    driving = open_footage(params.driving, params.advanced.driving_fps)
    ctx.progress("read", 2, 2)
    return source, driving


def resolve_align_mode(params: JobParams) -> str:
    """"auto": under camera motion follow the source's own placement per frame, else anchor at frame 0."""
    if params.align != "auto":
        return params.align
    return "per-frame" if params.camera else "first-frame"


def _poses_of(frames: Frames, params: JobParams, fps: Optional[float], ctx: JobContext,
              user_folder: Optional[str] = None) -> PoseSequence:
    """Keypoints of a clip: a user-supplied pose folder, a clip that is already pose renders, or extraction."""
    if user_folder:
        seq = decode_poses(open_footage(user_folder).frames(), fps, ctx)
        return seq.scaled(frames.width, frames.height)
    if params.pose_extractor == "decode" or (params.pose_extractor == "auto" and looks_like_pose_render(frames)):
        return decode_poses(frames, fps, ctx)  # renders: exact already, no smoothing
    return extract_poses(frames, params.pose_extractor, params.models_dir, fps, ctx)  # filtered over time


def timing_positions(n_source: int, source_fps: Optional[float], n_driving: int, driving_fps: Optional[float],
                     params: JobParams) -> np.ndarray:
    """float64 (n_source,) driving position per source frame (NaN = not edited) under the job's timing
    policy and frame range (mf_backend/timing.py); an error when no frame would be edited."""
    from mf_backend.timing import driving_positions

    pos = driving_positions(n_source, source_fps, n_driving, driving_fps, params.timing,
                            (params.frame_start, params.frame_end))
    if np.isnan(pos).all():
        raise BadInputMedia("no source frame is driven by the driving clip with these timing settings",
                            "check frame_start/frame_end and the timing policy")
    return pos


def compute_poses(source_frames: Frames | np.ndarray, driving_frames: Frames | np.ndarray, params: JobParams,
                  ctx: JobContext, source_fps: Optional[float] = None, driving_fps: Optional[float] = None) -> PosePrep:
    """Source and driving frames (F,H,W,3) uint8, read a chunk at a time → PosePrep (extract/decode,
    timing map, align)."""
    from mf_backend.timing import resample_pose_sequence

    source_frames, driving_frames = Frames.of(source_frames), Frames.of(driving_frames)
    src = _poses_of(source_frames, params, source_fps, ctx, params.source_poses)
    drv = _poses_of(driving_frames, params, driving_fps, ctx)
    pos = timing_positions(len(src), source_fps, len(drv), driving_fps, params)
    edited = ~np.isnan(pos)
    # One driver pose per source frame; frames outside the edit keep the source's own pose.
    target = resample_pose_sequence(drv, np.where(edited, pos, 0.0), fps=source_fps)
    target = target.scaled(src.width, src.height)
    target.body[~edited], target.hands[~edited] = src.body[~edited], src.hands[~edited]
    if params.target_aligned_poses:
        aligned = _poses_of(source_frames, params, source_fps, ctx, params.target_aligned_poses)
    else:  # aligned on the edited frames only: the anchor is the source person at the first EDITED frame
        idx = np.flatnonzero(edited)
        aligned = src.frames(np.arange(len(src)))  # a copy; frames outside the edit keep the source pose
        part = align_poses(src.frames(idx), target.frames(idx), resolve_align_mode(params))
        aligned.body[idx], aligned.hands[idx] = part.body, part.hands
    ctx.progress("poses", 1, 1)
    return PosePrep(src, target, aligned, pos)


def write_poses(prep: PosePrep, folder: Path, ctx: JobContext) -> dict[str, Any]:
    """Render and write the three pose folders + keypoint JSON into `folder` → paths and counts."""
    from mf_backend.media import write_frames

    out: dict[str, Any] = {}
    items = (("source_poses", "source_keypoints.json", prep.source),
             ("target_poses", "target_keypoints.json", prep.target),
             ("target_aligned_poses", "target_aligned_keypoints.json", prep.aligned))
    for i, (kind, json_name, seq) in enumerate(items):
        ctx.progress("write", i, len(items), f"writing {kind}")
        for a in range(0, len(seq), CHUNK):  # full-resolution renders, a chunk at a time
            write_frames(render_poses(seq.frames(slice(a, a + CHUNK))), folder / kind, frame_pattern(len(seq)), start=a)
        seq.save(folder / json_name)
        out[kind] = kind
        out[kind.replace("poses", "keypoints")] = json_name
    ctx.progress("write", len(items), len(items))
    return out


def prepare(params: JobParams, ctx: JobContext) -> dict[str, Any]:
    """The `prepare` job: poses and masks of source and driving in the example-case layout under params.out."""
    params.require_paths("source", "driving", "out")
    ctx.stages = STAGES
    source, driving = open_inputs(params, ctx)
    prep = compute_poses(source.frames(), driving.frames(), params, ctx, source.fps, driving.fps)
    final = params.out_path
    with atomic_output_dir(final) as tmp:
        # masks: M_r and M_e for every source frame, written as they are made (mf_backend/masks/stage.py)
        masks = compute_masks(source.frames(), prep, params, ctx, tmp)
        written = write_poses(prep, tmp, ctx)
        written.update({"source_masks": "source_masks", "predicted_masks": "predicted_masks"})
        write_shot_crop(tmp, prep, masks, (source.height, source.width))  # crop.json, shared by chunked edits
    edited = np.flatnonzero(~np.isnan(prep.driving_index))
    return {"out": str(final), "frames": len(prep.source), "edited_frames": [int(edited[0]), int(edited[-1])],
            "align": resolve_align_mode(params),
            "folders": {k: str(final / v) for k, v in written.items() if not v.endswith(".json")},
            "keypoints": {k: str(final / v) for k, v in written.items() if v.endswith(".json")}}
