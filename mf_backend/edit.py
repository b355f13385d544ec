"""The `edit` job: prepare (or the user's own poses/masks) → load models → score-guided sampling →
VAE decode → composite back into the full-resolution source frames, written atomically.

Output folder: every source frame at the source's resolution in the output format (`frame_{k:04d}.png|exr`
or `result.mov|mp4`, media_output.py), the matte, and `edit.json` (settings, the crop plan, the timing map,
timings, the output's description). Frames outside the frame range, or not reached by the driving clip
under the timing policy (mf_backend/timing.py), are the source's stored values unchanged.
With `chunk` only the edited frames are written (one chunk of a farm job; mf_backend/chunks.py).

Working geometry (mf_backend/crop.py, composite.py, docs/footage.md): the model sees square `size`×`size` frames.
`crop="person"` plans ONE square per clip around the source person and where the person will be
(source + aligned target keypoints, M_r ∪ M_e); `crop="letterbox"` is the whole frame padded square.
Frames, pose renders and masks all go through the same CropPlan; the edit is composited back only
where M_r ∪ M_e (dilated, feathered) — every other pixel stays bit-exact from the source.
User-supplied folders (poses, masks) hold one image per source frame (pose folders may instead hold
one per edited frame) at the source's aspect ratio; other sizes are resized to the source's.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mf_backend.crop import CropPlan, plan_crop
from mf_backend.editing.pipeline import decode_latents, run_info, run_sampling
from mf_backend.editing.sampler import EditInputs, StageTimer
from mf_backend.files import atomic_output_dir
from mf_backend.jobs import JobContext
from mf_backend.params import JobParams

log = logging.getLogger(__name__)


# stages of the job and their relative cost (overall fraction and ETA; sampling dominates)
STAGES = (("read", 1.0), ("poses", 3.0), ("masks", 6.0), ("load", 2.0), ("editing", 80.0), ("decode", 4.0),
          ("write", 4.0))


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class PreparedClip:
    """Everything the sampler needs for the edited frames, plus how to put them back."""

    footage: Any  # streaming.Footage: the source, read a chunk at a time (frames, stored pixels, rate, timecode)
    edited: np.ndarray  # int64 indices of the source frames that are edited (contiguous)
    positions: np.ndarray  # float64 (F_src,) driving-clip position per source frame, NaN = not edited
    timing: dict  # policy, fps values and frame range the positions come from (for edit.json)
    plan: CropPlan  # full frame ↔ working crop
    inputs: EditInputs  # crop-space (size×size) inputs of the edited frames
    seconds: dict  # wall time of the crop steps: "plan", "crop" (planning + frames, masks and pose inputs)


def prepare_clip(params: JobParams, ctx: JobContext) -> PreparedClip:
    """Read the clips; poses and masks from the user's folders or the prepare stages; the timing map;
    the crop plan; everything the model sees cropped to size×size. Full-resolution frames, renders and
    masks pass a chunk at a time (mf_backend/streaming.py); computed masks go to a temporary folder and
    are read back from it, until they are cropped."""
    with tempfile.TemporaryDirectory(prefix="mf-masks-") as scratch:
        return _prepare_clip(params, ctx, Path(scratch))


def _prepare_clip(params: JobParams, ctx: JobContext, scratch: Path) -> PreparedClip:
    from mf_backend import streaming
    from mf_backend.chunks import shot_crop
    from mf_backend.prepare import compute_masks, compute_poses, open_inputs, timing_positions

    footage, driving = open_inputs(params, ctx)
    n, h, w = footage.num_frames, footage.height, footage.width
    user_poses = bool(params.source_poses and params.target_aligned_poses)
    user_masks = bool(params.source_masks and params.predicted_masks)
    prep = None
    if not (user_poses and user_masks):  # keypoints are needed for the poses and/or the masks
        prep = compute_poses(footage.frames(), driving.frames(), params, ctx, footage.fps, driving.fps)
        pos = prep.driving_index
    else:  # the user's aligned poses hold one pose per source frame: the driving clip's length and
        # fps (probed, not decoded) only decide which frames are edited, as in prepare
        pos = timing_positions(n, footage.fps, driving.num_frames, driving.fps, params)
    timing = {"policy": params.timing, "frame_start": params.frame_start, "frame_end": params.frame_end,
              "source_fps": footage.fps, "driving_fps": driving.fps, "driving_frame_count": int(driving.num_frames)}
    edited = np.flatnonzero(~np.isnan(pos))  # contiguous under every policy (timing.py)

    ctx.progress("masks", 0, 1)
    if user_masks:  # read a chunk at a time, full resolution never held for the clip
        masks = [streaming.mask_reader(f, n, (h, w)) for f in (params.source_masks, params.predicted_masks)]
    else:  # the shared masks stage, written to the scratch folder and read back a chunk at a time
        masks = list(compute_masks(footage.frames(), prep, params, ctx, scratch))
    ctx.progress("masks", 1, 1)

    t0 = time.perf_counter()  # from here on: the crop's own cost (edit.json timings)
    keypoints = None if prep is None else [prep.source.frames(edited), prep.aligned.frames(edited)]
    plan = shot_crop(params.source_masks, (h, w), edited, params.size) if user_masks and params.crop == "person" else None
    if plan is None:  # chunks share the shot's plan (prepare's crop.json)
        boxes = streaming.mask_boxes(masks, edited, (h, w)) if params.crop == "person" else []
        plan = plan_crop(keypoints, None, (h, w), params.size, mode=params.crop, boxes=boxes)
    t_plan = time.perf_counter() - t0
    readers = {"frames": lambda a, b: footage.read(a, b).frames, "M_r": masks[0], "M_e": masks[1]}
    if user_poses:  # the user's pose renders are used as images, cropped like the frames
        for key, folder in (("src_poses", params.source_poses), ("tgt_poses", params.target_aligned_poses)):
            readers[key] = streaming.render_reader(folder, n, edited, (h, w))
    crops = streaming.crop_chunks(plan, edited, readers)  # (F_edit,S,S,3) uint8 RGB, (F_edit,S,S) float32 masks
    if not user_poses:  # rendered at the working size from keypoints in crop pixels (DWPose line widths at `size`)
        from mf_backend.pose.render import render_poses

        crops["src_poses"] = render_poses(plan.apply_keypoints(prep.source.frames(edited)))
        crops["tgt_poses"] = render_poses(plan.apply_keypoints(prep.aligned.frames(edited)))
    t_crop = time.perf_counter() - t0
    inputs = EditInputs(*(torch.from_numpy(crops[k]) for k in ("frames", "src_poses", "tgt_poses", "M_r", "M_e")),
                        frame_index=edited.tolist())
    return PreparedClip(footage, edited, pos, timing, plan, inputs, {"plan": t_plan, "crop": t_crop})


def edit(params: JobParams, ctx: JobContext) -> dict[str, Any]:
    """The `edit` job (see the module docstring)."""
    from mf_backend.model_choice import choose_model
    from mf_backend.streaming import write_output

    params.require_paths("source", "driving", "out")
    ctx.stages = STAGES
    t0 = time.perf_counter()
    choice = choose_model(params.model, params.models_dir)
    params = replace(params, model=choice.name, size=params.size or choice.size, steps=params.steps or choice.steps)
    if choice.notice:
        log.warning(choice.notice)
    final = params.out_path
    with atomic_output_dir(final) as tmp:
        clip = prepare_clip(params, ctx)
        t_prep = time.perf_counter() - t0
        if params.advanced.distributed == "ray":  # sampled and decoded by Ray workers, one GPU each
            from mf_backend.distributed.sharded import edit_on_ray

            work, timer, run = edit_on_ray(clip.inputs, params, ctx)
        else:
            work, timer, run = _sample_and_decode(clip.inputs, params, ctx)
        ctx.progress("write", 0, 1, "compositing into the source frames")
        t0 = time.perf_counter()
        crops = {"frames": clip.inputs.frames.numpy(), "M_r": clip.inputs.M_r.numpy(), "M_e": clip.inputs.M_e.numpy()}
        output, t_comp = write_output(clip.footage, clip.plan, clip.edited, crops, work, params.output_format, tmp,
                                      params.advanced.chunk, tmp / "edit.mp4" if params.preview else None,
                                      lambda d, t: ctx.progress("write", d, t))
        t_write = time.perf_counter() - t0 - t_comp
        per_frame_ms = 1000.0 * (clip.seconds["crop"] + t_comp) / len(clip.edited)
        timings = {"prepare": round(t_prep, 3), **{k: round(v, 3) for k, v in timer.seconds.items()},
                   "crop": round(clip.seconds["crop"], 3), "composite": round(t_comp, 3), "write": round(t_write, 3),
                   "crop_composite_ms_per_frame": round(per_frame_ms, 2)}
        info = {**run, "model": choice.name, "weights": run["model"], "notice": choice.notice,
                "frames": clip.footage.num_frames, "width": clip.footage.width, "height": clip.footage.height, "output": output,
                "edited_frames": [int(clip.edited[0]), int(clip.edited[-1])],
                "crop": clip.plan.to_dict(), "timing": {**clip.timing, **_timing_map(clip.positions)},
                "timings": timings, "params": {k: v for k, v in params.to_dict().items() if k != "extra"}}
        (tmp / "edit.json").write_text(json.dumps(info, indent=2, default=str))
    result = {"out": str(final), "frames": clip.footage.num_frames, "width": clip.footage.width,
              "height": clip.footage.height, "output": output,
              "edited_frames": info["edited_frames"], "model": choice.name, "size": params.size,
              "steps": params.steps, "timings": timings}
    if params.preview:
        result["video"] = str(final / "edit.mp4")
    if choice.notice:
        result["notice"] = choice.notice
    return result


GUIDANCE_COST = 3.0  # a guidance evaluation (forward with grad + backward) in UNet forward passes


def editing_progress(ctx: JobContext, params: JobParams) -> Callable[[int, int, str], None]:
    """The sampler reports steps, but guidance and replay steps run several passes and the last steps one
    or two: progress counts UNet passes instead, so the bar moves evenly and its ETA holds."""
    from mf_backend.editing.guidance import guidance_from_params
    from mf_backend.editing.schedule import build_schedule, last_reconstruction_step

    plan = build_schedule(params.steps, guidance=guidance_from_params(params).enabled, camera=params.camera)
    last = last_reconstruction_step(plan)  # no reconstruction pass after it
    cost = [float(p.index <= last) + p.repeats * (1.0 + GUIDANCE_COST * p.guidance) for p in plan]
    done = np.concatenate([[0.0], np.cumsum(cost)])
    return lambda d, t, m: ctx.progress("editing", int(round(10 * done[d])), int(round(10 * done[-1])), m)


def _sample_and_decode(inputs: EditInputs, params: JobParams, ctx: JobContext
                       ) -> tuple[np.ndarray, StageTimer, dict[str, Any]]:
    """Load the models here, sample and decode: uint8 (F,S,S,3) crops, the stage timer, run_info."""
    from mf_backend.environment import resolve_device, resolve_dtype
    from mf_backend.models.loading import load_models

    ctx.progress("load", 0, 1, f"loading model '{params.model}'")
    device = resolve_device(params.device)
    dtype = resolve_dtype(params.precision, device)
    models = load_models(params.model, params.models_dir, device, dtype)
    ctx.progress("load", 1, 1)
    timer = StageTimer(device, sync=False, should_stop=ctx.check_cancelled)
    result = run_sampling(models, inputs, params, editing_progress(ctx, params), timer)
    with timer.section("decode"):
        work = decode_latents(models, result.latents, result.info["memory"]["decode_batch"],
                              lambda d, t: ctx.progress("decode", d, t))
    return work, timer, run_info(models, result.info["memory"])


def _timing_map(positions: np.ndarray) -> dict[str, list]:
    """For edit.json: the driving frame of each source frame (-1 = not edited, copied from the source)
    and the exact positions (fractional under `stretch`; null = not edited)."""
    from mf_backend.timing import frames_from_positions

    return {"driving_frames": frames_from_positions(positions).tolist(),
            "driving_positions": [None if np.isnan(p) else round(float(p), 4) for p in positions]}
