"""What a job checks before any work starts, so a bad request fails in a second, not after minutes:
required paths, clips that open and have a usable frame size, an output folder that is free and
writable, the weights the chosen pose extractor / mask predictor / model need, and a working size the
model can use. (Types and ranges of each parameter: JobParams.validate.)"""

from __future__ import annotations

import os
from pathlib import Path

from mf_backend.errors import BadInputMedia, InvalidParams, WeightsMissing
from mf_backend.params import EDITS, FOOTAGE, JobParams

REQUIRED = {"prepare": ("source", "driving", "out"), "edit": ("source", "driving", "out"), "demo": ("out",)}
MIN_SIDE = 32  # pixels; smaller frames hold no person the pose extractor can find


def preflight(method: str, params: JobParams) -> None:
    from mf_backend.files import check_output_free

    if method not in REQUIRED:
        raise InvalidParams(f"unknown job kind {method!r}", f"use one of {', '.join(REQUIRED)}")
    params.require_paths(*REQUIRED[method])
    check_output_free(params.out_path)
    check_writable(params.out_path)
    if method in FOOTAGE:
        for name in ("source", "driving"):
            check_clip(getattr(params, name), name)
        check_extractor_weights(params)
    if method in EDITS:
        from mf_backend.model_choice import check_size, choose_model

        choice = choose_model(params.model, params.models_dir)
        check_size(params.size, choice)
        if choice.name == "official":
            from mf_backend.models.loading import is_release_layout
            from mf_backend.weights import resolve_models_dir

            if not is_release_layout(resolve_models_dir(params.models_dir)):
                raise WeightsMissing(f"the released MotionFollower weights are not in "
                                     f"{resolve_models_dir(params.models_dir)}",
                                     "run `python -m mf_backend doctor` for the list of files and where to get "
                                     "them, or use model 'demo'")


def check_writable(out: Path) -> None:
    """The nearest existing folder above `out` must let us create folders (the temporary output)."""
    parent = Path(out).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidParams(f"cannot write the output folder '{out}': '{parent}' is not writable",
                            "choose an output folder on a disk you can write to")


def check_clip(path: str, name: str) -> None:
    """The clip opens and its frames are at least MIN_SIDE pixels on each side."""
    from mf_backend.media import probe_clip

    info = probe_clip(path)
    if min(info.height, info.width) < MIN_SIDE:
        raise BadInputMedia(f"{name}: '{path}' has {info.width}x{info.height} frames; at least "
                            f"{MIN_SIDE}x{MIN_SIDE} are needed", "give the clip at its real resolution")


def check_extractor_weights(params: JobParams) -> None:
    """An explicitly chosen pose extractor or mask predictor must have its weights ("auto" falls back)."""
    if params.pose_extractor == "dwpose" and not params.source_poses:
        from mf_backend.pose.extract import DWPOSE_FILES, dwpose_available
        from mf_backend.weights import resolve_models_dir

        folder = resolve_models_dir(params.models_dir)
        if not dwpose_available(folder):
            raise WeightsMissing(f"pose_extractor 'dwpose' needs its weights in '{folder / 'DWPose'}'",
                                 f"put {' and '.join(DWPOSE_FILES)} there (huggingface.co/yzd-v/DWPose), or use "
                                 "pose_extractor 'auto' or 'mediapipe'")
    if params.advanced.mask_predictor == "model" and not params.predicted_masks:
        from mf_backend.masks.model import default_weights_dir
        from mf_backend.masks.predict import model_available

        if not model_available():
            raise WeightsMissing(f"mask_predictor 'model' needs its weights in '{default_weights_dir()}'",
                                 "reinstall the package, or use mask_predictor 'auto' or 'geometric'")
