"""The `edit` job: prepare (or the user's own poses/masks) → load models → score-guided sampling →
VAE decode → frames back at the source resolution, written atomically.

Output folder: `frame_{k}.png` for every source frame k (frames the driving clip does not reach under
the timing policy are copied from the source unchanged) and `edit.json` (settings, timings).

Working geometry: the model sees square `size`×`size` frames. The source is letterboxed (centred,
black bars) to a square and resized; the edit is resized back and the bars cropped off. Inputs given
as folders (poses, masks) may be at the source resolution (they get the same letterbox) or already
square working frames (resized only).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import cv2
import numpy as np
import torch

from mf_backend.editing.guidance import guidance_from_params
from mf_backend.editing.sampler import EditInputs, MotionEditSampler, SampleResult, SamplerSettings, StageTimer
from mf_backend.errors import BadInputMedia
from mf_backend.jobs import JobContext, atomic_output_dir
from mf_backend.params import JobParams

log = logging.getLogger(__name__)

EDIT_STAGES = ("read", "poses", "masks", "load", "editing", "decode", "write")


# ---------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Letterbox:
    """Source (height, width) ↔ working size×size: centred padding to a square, then a resize."""

    height: int
    width: int
    size: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def offset(self) -> tuple[int, int]:  # (top, left) of the source inside the padded square
        return (self.side - self.height) // 2, (self.side - self.width) // 2

    def to_working(self, images: np.ndarray, nearest: bool = False) -> np.ndarray:
        """(F,h,w[,3]) at the source size, or already square → (F,size,size[,3])."""
        f, h, w = images.shape[:3]
        if (h, w) == (self.height, self.width) and h != w:
            top, left = self.offset
            pad = [(0, 0), (top, self.side - h - top), (left, self.side - w - left)] + [(0, 0)] * (images.ndim - 3)
            images = np.pad(images, pad)
        elif h != w:
            raise BadInputMedia(f"an input of {w}x{h} matches neither the source ({self.width}x{self.height}) nor a "
                                "square working frame", "give poses/masks at the source resolution")
        return _resize(images, self.size, self.size, nearest)

    def to_source(self, images: np.ndarray) -> np.ndarray:
        """(F,size,size,3) → (F,height,width,3)."""
        square = _resize(images, self.side, self.side, nearest=False)
        top, left = self.offset
        return np.ascontiguousarray(square[:, top:top + self.height, left:left + self.width])

    def pose_transform(self, seq):
        """A PoseSequence in source pixels → the same poses in working pixels."""
        from mf_backend.pose.keypoints import PoseSequence

        top, left = self.offset
        s = self.size / self.side
        shift = np.array([left, top, 0.0], np.float32)
        scale = np.array([s, s, 1.0], np.float32)

        def tf(k: np.ndarray) -> np.ndarray:
            out = (k + shift) * scale
            return np.where(k[..., 2:3] > 0, out, 0.0).astype(np.float32)  # missing joints stay zero

        seq = seq.scaled(self.width, self.height)
        return PoseSequence(tf(seq.body), tf(seq.hands), self.size, self.size, seq.fps)


def _resize(images: np.ndarray, h: int, w: int, nearest: bool) -> np.ndarray:
    if images.shape[1:3] == (h, w):
        return images
    down = images.shape[1] > h
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if down else cv2.INTER_LANCZOS4)
    return np.stack([cv2.resize(im, (w, h), interpolation=interp) for im in images])


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class PreparedClip:
    """Everything the sampler needs for the edited frames, plus how to put them back."""

    source_frames: np.ndarray  # uint8 (F_src,H,W,3) the whole source clip at its own resolution
    edited: np.ndarray  # int64 indices of the source frames that are edited (contiguous)
    inputs: EditInputs  # working-resolution inputs of the edited frames
    geometry: Letterbox


def _read_folder(folder: str, n_src: int, edited: np.ndarray, masks: bool) -> np.ndarray:
    """A user folder with one image per source frame (or per edited frame) → the edited frames."""
    from mf_backend.media import read_clip, read_masks

    data = read_masks(folder) if masks else read_clip(folder).frames
    if len(data) == n_src:
        return data[edited]
    if len(data) == len(edited):
        return data
    raise BadInputMedia(f"'{folder}' has {len(data)} frames; the source has {n_src} ({len(edited)} edited)",
                        "give one file per source frame (frame_0.png ...)")


def _masks(source_frames: np.ndarray, prep, params: JobParams, ctx: JobContext,
           edited: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M_r, M_e) float (F_edit,H,W) at the source resolution: the user's folders, else the masks stage
    (`prepare.compute_masks` when the prepare module provides it, else M_r from the source-mask extractor
    and M_e from the target-mask predictor, on the edited frames)."""
    n = len(source_frames)
    M_r = _read_folder(params.source_masks, n, edited, True) if params.source_masks else None
    M_e = _read_folder(params.predicted_masks, n, edited, True) if params.predicted_masks else None
    if M_r is not None and M_e is not None:
        return M_r, M_e
    from mf_backend import prepare as prep_mod

    compute = getattr(prep_mod, "compute_masks", None)
    if compute is not None:  # the shared masks stage: (M_r, M_e) for every source frame
        r, e = compute(source_frames, prep, params, ctx)
        return (np.asarray(r)[edited] if M_r is None else M_r), (np.asarray(e)[edited] if M_e is None else M_e)
    from mf_backend.masks.predict import predict_masks
    from mf_backend.masks.source import source_masks

    frames = source_frames[edited]
    if M_r is None:
        ctx.progress("masks", 0, 2, "source masks")
        M_r = source_masks(frames, "auto", params.models_dir, ctx=ctx)
    if M_e is None:
        M_e, _ = predict_masks(frames, M_r, prep.source.frames(edited), prep.aligned.frames(edited),
                               params.mask_predictor, tta_steps=params.tta_steps, ctx=ctx)
    return M_r, M_e


def prepare_clip(params: JobParams, ctx: JobContext) -> PreparedClip:
    """Read the clips; poses and masks from the user's folders or the prepare stages; to working size."""
    from mf_backend.media import read_clip

    ctx.progress("read", 0, 1, "reading the source clip")
    source = read_clip(params.source, fps=params.source_fps)
    frames = source.frames
    n = len(frames)
    geo = Letterbox(frames.shape[1], frames.shape[2], params.size)
    user_poses = bool(params.source_poses and params.target_aligned_poses)
    user_masks = bool(params.source_masks and params.predicted_masks)
    prep = None
    if not (user_poses and user_masks):  # keypoints are needed for the poses and/or the masks
        from mf_backend.prepare import compute_poses

        ctx.progress("read", 0, 1, "reading the driving clip")
        driving = read_clip(params.driving, fps=params.driving_fps)
        prep = compute_poses(frames, driving.frames, params, ctx, source.fps, driving.fps)
    if user_poses:  # pose renders used as they are (the reference example cases run unchanged)
        a = params.frame_start or 0
        b = n - 1 if params.frame_end is None else min(params.frame_end, n - 1)
        edited = np.arange(a, b + 1)
        src_poses = geo.to_working(_read_folder(params.source_poses, n, edited, False))
        tgt_poses = geo.to_working(_read_folder(params.target_aligned_poses, n, edited, False))
    else:
        from mf_backend.pose.render import render_poses

        edited = np.flatnonzero(~np.isnan(prep.driving_index))
        edited = np.arange(edited[0], edited[-1] + 1)  # the driven span (contiguous under every policy)
        src_poses = render_poses(geo.pose_transform(prep.source.frames(edited)))
        tgt_poses = render_poses(geo.pose_transform(prep.aligned.frames(edited)))
    ctx.progress("read", 1, 1)
    ctx.progress("masks", 0, 1)
    M_r, M_e = _masks(frames, prep, params, ctx, edited)
    M_r, M_e = geo.to_working(M_r.astype(np.float32), nearest=True), geo.to_working(M_e.astype(np.float32), nearest=True)
    ctx.progress("masks", 1, 1)
    work = geo.to_working(frames[edited])
    inputs = EditInputs(torch.from_numpy(work), torch.from_numpy(src_poses), torch.from_numpy(tgt_poses),
                        torch.from_numpy(M_r), torch.from_numpy(M_e))
    return PreparedClip(frames, edited, inputs, geo)


# ---------------------------------------------------------------------------------------------- core


def sampler_settings(params: JobParams) -> SamplerSettings:
    return SamplerSettings(steps=params.steps, guidance_scale=params.guidance_scale, seed=params.seed,
                           camera=params.camera, window=params.window, overlap=params.overlap)


@torch.no_grad()
def decode_latents(models, latents: torch.Tensor, batch: int = 8,
                   progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """(1,4,F,h,w) → uint8 (F,H,W,3), `batch` frames per VAE call."""
    z = latents[0].transpose(0, 1) / models.vae_scaling_factor  # (F,4,h,w)
    vae = models.vae
    out = []
    for i in range(0, z.shape[0], batch):
        x = vae.decode(z[i:i + batch].to(models.device, models.dtype)).sample.float()
        x = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        out.append(x.permute(0, 2, 3, 1).cpu().numpy())
        if progress:
            progress(min(i + batch, z.shape[0]), z.shape[0])
    return np.concatenate(out)


def run_sampling(models, inputs: EditInputs, params: JobParams, progress=None, timer: Optional[StageTimer] = None,
                 estimator: Optional[torch.nn.Module] = None) -> SampleResult:
    """Both branches + guidance on prepared inputs (the part benchmarks and the demo reuse)."""
    models.requires_grad_(False)  # guidance differentiates w.r.t. the latent only
    if estimator is None and params.estimator_weights != "shared":
        from mf_backend.models.loading import build_estimator

        estimator = build_estimator(models, params.estimator_weights, params.models_dir)
        estimator.requires_grad_(False)
    sampler = MotionEditSampler(models, guidance_from_params(params), sampler_settings(params), estimator,
                                progress, timer)
    return sampler(inputs)


def edit(params: JobParams, ctx: JobContext) -> dict[str, Any]:
    """The `edit` job (see the module docstring)."""
    from mf_backend.environment import resolve_device, resolve_dtype
    from mf_backend.media import write_frames
    from mf_backend.models.loading import load_models

    params.require_paths("source", "driving", "out")
    ctx.stages = ctx.stages or EDIT_STAGES
    t0 = time.perf_counter()
    final = params.out_path
    with atomic_output_dir(final) as tmp:
        clip = prepare_clip(params, ctx)
        t_prep = time.perf_counter() - t0
        ctx.progress("load", 0, 1, f"loading model '{params.model}'")
        device = resolve_device(params.device)
        dtype = resolve_dtype(params.precision, device)
        models = load_models(params.model, params.models_dir, device, dtype)
        ctx.progress("load", 1, 1)
        timer = StageTimer(device, sync=False)
        result = run_sampling(models, clip.inputs, params,
                              lambda d, t, m: ctx.progress("editing", d, t, m), timer)
        with timer.section("decode"):
            work = decode_latents(models, result.latents, 2 if params.low_memory else 8,
                                  lambda d, t: ctx.progress("decode", d, t))
        out_frames = clip.source_frames.copy()
        out_frames[clip.edited] = clip.geometry.to_source(work)
        ctx.progress("write", 0, 1)
        write_frames(out_frames, tmp)
        timings = {"prepare": round(t_prep, 3), **{k: round(v, 3) for k, v in timer.seconds.items()}}
        info = {"model": models.source if models.source != "random" else models.config_name,
                "config": models.config_name, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                "frames": len(out_frames), "edited_frames": [int(clip.edited[0]), int(clip.edited[-1])],
                "timings": timings, "params": {k: v for k, v in params.to_dict().items() if k != "extra"}}
        (tmp / "edit.json").write_text(json.dumps(info, indent=2, default=str))
        ctx.progress("write", 1, 1)
    h, w = clip.source_frames.shape[1:3]
    return {"out": str(final), "frames": len(out_frames), "width": int(w), "height": int(h),
            "model": params.model, "timings": timings}
