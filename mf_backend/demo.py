"""The `demo` job: a synthetic source clip and driving clip, edited end to end with the embedded demo
model, judged against the synthetic world's ground truth.

Pipeline: synthetic pair (source, driving, exact keypoints) → prepare (aligned target poses, source
masks M_r, predicted masks M_e from the mask predictor) → score-guided two-branch sampling → VAE
decode. Writes edited/frame_k.png, edit.mp4, sheet.png (rows: source | driving pose | edit | ground
truth) and metrics.json. The demo works at the demo model's own resolution (its training size).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any, Optional

import cv2
import numpy as np

from mf_backend.files import atomic_output_dir, frame_pattern
from mf_backend.jobs import JobContext
from mf_backend.model_choice import choose_model
from mf_backend.params import JobParams

DEMO_FRAMES = 16
# stages of the job and their relative cost (overall fraction and ETA)
STAGES = (("load", 1.0), ("masks", 4.0), ("editing", 20.0), ("write", 1.0))


def prepare_pair(pair, params: JobParams, ctx: Optional[JobContext] = None) -> tuple[Any, dict]:
    """EditInputs of a synthetic pair: the world's exact keypoints stand in for the pose extractor;
    the aligned target poses are the aligner's; M_e comes from the target-mask predictor."""
    import torch

    from mf_backend.editing.sampler import EditInputs
    from mf_backend.masks.predict import predict_masks

    from mf_backend.masks.predict import model_available

    src = pair.source
    predictor, tta_steps = params.advanced.mask_predictor, params.advanced.tta_steps
    if predictor == "auto" and tta_steps == 0:  # "auto" adds test-time adaptation: minutes on a CPU
        predictor = "model" if model_available() else "geometric"
    M_e, info = predict_masks(src.frames, src.masks, src.poses, pair.target_aligned.poses,
                              predictor=predictor, tta_steps=tta_steps,
                              target_renders=pair.target_aligned.pose_renders, ctx=ctx)
    inputs = EditInputs(torch.from_numpy(np.ascontiguousarray(src.frames)),
                        torch.from_numpy(np.ascontiguousarray(src.pose_renders)),
                        torch.from_numpy(np.ascontiguousarray(pair.target_aligned.pose_renders)),
                        torch.from_numpy(src.masks.astype(np.float32)), torch.from_numpy(M_e.astype(np.float32)))
    return inputs, info


def edit_inputs(models, inputs, params: JobParams, ctx: Optional[JobContext] = None) -> np.ndarray:
    """Score-guided sampling + decode → uint8 (F,H,W,3)."""
    from mf_backend.editing.pipeline import decode_latents, run_sampling
    from mf_backend.editing.sampler import StageTimer

    progress = (lambda d, t, m: ctx.progress("editing", d, t, m)) if ctx is not None else None
    timer = StageTimer(models.device, should_stop=ctx.check_cancelled if ctx is not None else None)
    result = run_sampling(models, inputs, params, progress, timer)
    return decode_latents(models, result.latents)


def quality(edited: np.ndarray, pair) -> dict[str, float]:
    """Ground-truth metrics of an edit of a synthetic pair (see bench/metrics.py)."""
    from mf_backend.bench.metrics import frame_metrics, iou, person_silhouette

    gt = pair.gt_edited
    m = frame_metrics(edited, gt.frames, gt.masks)
    m["silhouette_iou"] = iou(person_silhouette(edited, gt.background), gt.masks)
    return {k: round(float(v), 4) for k, v in m.items()}


def _sheet(rows: list[np.ndarray], n_cols: int = 8, scale: int = 2) -> np.ndarray:
    """Rows of clips (F,H,W,3) → one image: n_cols evenly spaced frames per row, upscaled."""
    f = rows[0].shape[0]
    idx = np.linspace(0, f - 1, min(n_cols, f)).round().astype(int)
    grid = np.concatenate([np.concatenate(list(r[idx]), axis=1) for r in rows], axis=0)
    return cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def demo(params: JobParams, ctx: JobContext) -> dict[str, Any]:
    import torch

    from mf_backend.environment import resolve_device, resolve_dtype
    from mf_backend.media import write_frames, write_video
    from mf_backend.models.loading import load_models
    from mf_backend.synthetic import make_pair

    t0 = time.perf_counter()
    ctx.stages = STAGES
    choice = choose_model("demo" if params.model == "auto" else params.model, params.models_dir)
    size = choice.size  # the synthetic world is drawn at the model's own training size
    params = replace(params, size=size, steps=params.steps or choice.steps)
    with atomic_output_dir(params.out_path) as tmp:
        ctx.progress("load", 0, 1, f"loading model '{choice.name}'")
        device = resolve_device(params.device)
        models = load_models(choice.name, params.models_dir, device, resolve_dtype(params.precision, device))
        torch.manual_seed(params.seed)
        pair = make_pair(seed=params.seed, frames=DEMO_FRAMES, size=size)
        ctx.progress("load", 1, 1)
        t_prep = time.perf_counter()
        inputs, mask_info = prepare_pair(pair, params, ctx)
        t_edit = time.perf_counter()
        edited = edit_inputs(models, inputs, params, ctx)
        t_done = time.perf_counter()

        ctx.progress("write", 0, 1)
        write_frames(edited, tmp / "edited", frame_pattern(len(edited)))
        write_video(edited, tmp / "edit.mp4", fps=pair.source.poses.fps or 8.0)
        sheet = _sheet([pair.source.frames, pair.target_aligned.pose_renders, edited, pair.gt_edited.frames])
        cv2.imwrite(str(tmp / "sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        metrics = {
            "edit": quality(edited, pair),
            "copy_source": quality(pair.source.frames, pair),
            "frames": DEMO_FRAMES, "size": size, "steps": params.steps, "seed": params.seed,
            "guidance_scale": params.guidance_scale, "mask_predictor": mask_info.get("predictor"),
            "predicted_mask_iou": round(float(
                (np.logical_and(inputs.M_e.numpy() > 0.5, pair.gt_edited.masks > 0.5).sum()
                 / max(1, np.logical_or(inputs.M_e.numpy() > 0.5, pair.gt_edited.masks > 0.5).sum()))), 4),
            "seconds": {"load_and_synth": round(t_prep - t0, 2), "masks": round(t_edit - t_prep, 2),
                        "sampling_and_decode": round(t_done - t_edit, 2), "total": round(time.perf_counter() - t0, 2)},
            "device": str(device), "model": choice.name, "weights": str(models.source),
        }
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        ctx.progress("write", 1, 1)
    out = params.out_path
    return {"out": str(out), "model": choice.name, "frames": DEMO_FRAMES, "sheet": str(out / "sheet.png"), "video": str(out / "edit.mp4"),
            "metrics": metrics}
