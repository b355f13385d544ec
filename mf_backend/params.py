"""The parameters of a `prepare` or `edit` job: one dataclass shared by the CLI, the protocol and the add-on.

`JobParams.from_dict` validates a JSON object (protocol `params`, add-on settings) and raises
InvalidParams naming the offending field; the CLI builds the same dict from its flags.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mf_backend.errors import InvalidParams

ALIGN_MODES = ("auto", "first-frame", "per-frame", "none", "reference")
TIMING_POLICIES = ("trim", "loop", "hold-last", "stretch")
CROP_MODES = ("person", "letterbox")
GUIDANCE_SEMANTICS = ("code", "paper")
ESTIMATOR_WEIGHTS = ("shared", "official")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
CHECKPOINT_CHOICES = ("auto", "none", "hires", "down", "all")  # or a comma list of blocks: "down0,up2"
COMPILE_SCOPES = ("none", "blocks", "full")
DISTRIBUTED = ("none", "ray")  # docs/scale-out.md
_BLOCK_NAME = re.compile(r"^(down\d+|up\d+|mid|down\*|up\*)$")


@dataclass
class JobParams:
    """Everything a job needs. Paths may be video files or frame folders unless noted."""

    source: str = ""  # source clip: video file or folder of frames
    driving: str = ""  # driving clip (video, frames, or frames that are already pose renders)
    out: str = ""  # output folder (created atomically; must not exist or be empty)
    models_dir: Optional[str] = None  # folder with released weights; None = default (see weights.py)
    model: str = "auto"  # "auto" (official if present, else demo), "official", "demo", or a folder of our own weights
    device: str = "auto"
    precision: str = "auto"
    # sampling
    steps: int = 50
    guidance_scale: float = 3.5  # CFG scale (reference README: 7.0 for cases 1-5, 3.5 for camera cases)
    seed: int = 42
    size: int = 512  # working resolution of the model (square)
    camera: bool = False  # camera mode: K/V injection of the source background
    window: int = 24  # frames per window for long clips (motion modules see at most 32)
    overlap: int = 4
    # consistency guidance: weights (reference values) and switches
    w_fg: float = 4.0
    w_over: float = 1.2
    w_body: float = 6.0
    w_com: float = 1.2
    use_fg: bool = True
    use_over: bool = True
    use_body: bool = True
    use_com: bool = True
    energy_scale: float = 4.0
    guidance_semantics: str = "code"
    estimator_weights: str = "shared"
    # pose and masks
    align: str = "auto"
    pose_extractor: str = "auto"  # "auto", "mediapipe", "dwpose", "decode" (driving is already a pose render)
    mask_predictor: str = "auto"  # "auto", "model", "geometric"
    tta_steps: int = 0  # test-time adaptation steps of the mask predictor on the source clip
    # user-supplied intermediate files (folders in the example-case layout); skip computing them
    source_poses: Optional[str] = None
    target_aligned_poses: Optional[str] = None
    source_masks: Optional[str] = None
    predicted_masks: Optional[str] = None
    # real footage: crops, timing, frame range
    crop: str = "person"
    timing: str = "trim"
    frame_start: Optional[int] = None  # first source frame to edit (0-based, inclusive)
    frame_end: Optional[int] = None  # last source frame to edit (inclusive)
    source_fps: Optional[float] = None  # overrides what the media says (e.g. frame folders)
    driving_fps: Optional[float] = None
    # speed and memory (docs/performance.md)
    low_memory: bool = False  # checkpoint every block and decode 2 frames at a time (about 9.5 GiB at 512²)
    checkpoint: str = "auto"  # activation checkpointing of the guidance pass; "auto" = fastest that fits the GPU
    compile: str = "none"  # torch.compile of the UNet: "blocks" (layer by layer) or "full"; first step slower
    # scale-out (docs/scale-out.md): the clip's windows split over `workers` Ray actors, one GPU each
    distributed: str = "none"  # "none" or "ray"
    ray_address: str = "local"  # "local" (a 127.0.0.1 cluster on this machine), "auto", or HOST:PORT
    workers: int = 1
    extra: dict = field(default_factory=dict)  # forward-compatible, ignored keys are reported

    @classmethod
    def from_dict(cls, d: Any) -> "JobParams":
        if not isinstance(d, dict):
            raise InvalidParams("params must be a JSON object", "send params as {\"source\": ..., ...}")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        unknown = {}
        for key, value in d.items():
            if key not in hints or key == "extra":
                unknown[key] = value
                continue
            kwargs[key] = _coerce(key, hints[key], value)
        p = cls(**kwargs)
        p.extra = unknown
        p.validate()
        return p

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        _choice("align", self.align, ALIGN_MODES)
        _choice("timing", self.timing, TIMING_POLICIES)
        _choice("crop", self.crop, CROP_MODES)
        _choice("guidance_semantics", self.guidance_semantics, GUIDANCE_SEMANTICS)
        _choice("estimator_weights", self.estimator_weights, ESTIMATOR_WEIGHTS)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("compile", self.compile, COMPILE_SCOPES)
        _choice("distributed", self.distributed, DISTRIBUTED)
        if not 1 <= self.workers <= 256:
            raise InvalidParams(f"workers must be in 1..256, got {self.workers}", "one worker per GPU")
        if self.checkpoint not in CHECKPOINT_CHOICES and not all(
                _BLOCK_NAME.match(n.strip()) for n in self.checkpoint.split(",")):
            raise InvalidParams(f"checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)} or a comma list of "
                                f"blocks like 'down0,up2'; got {self.checkpoint!r}", "leave it at 'auto'")
        if not 1 <= self.steps <= 1000:
            raise InvalidParams(f"steps must be in 1..1000, got {self.steps}", "50 is the reference; 25 is faster")
        if self.size < 32 or self.size % 32:
            raise InvalidParams(f"size must be a multiple of 32 and >= 32, got {self.size}", "use 512 for the official model")
        if not 1 <= self.window <= 32:
            raise InvalidParams(f"window must be in 1..32, got {self.window}", "the motion modules see at most 32 frames")
        if not 0 <= self.overlap < self.window:
            raise InvalidParams(f"overlap must be in 0..window-1, got {self.overlap}", "4 is a good overlap")
        if self.frame_start is not None and self.frame_end is not None and self.frame_end < self.frame_start:
            raise InvalidParams("frame_end is before frame_start", "give an inclusive range a..b with a <= b")

    def require_paths(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not value:
                raise InvalidParams(f"missing required parameter '{name}'", f"pass {name} (a path)")
            if name != "out" and not os.path.exists(value):
                from mf_backend.errors import BadInputMedia

                raise BadInputMedia(f"{name}: '{value}' does not exist", "check the path; use an absolute path")

    @property
    def out_path(self) -> Path:
        return Path(self.out).expanduser().resolve()


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidParams(f"{name} must be one of {', '.join(choices)}; got {value!r}", f"set {name} to one of {choices}")


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check the JSON type of one field; ints are accepted for floats, nothing else is converted."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    ok = {
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        dict: isinstance(value, dict),
    }.get(hint, True)
    if not ok:
        name = getattr(hint, "__name__", str(hint))
        raise InvalidParams(f"parameter '{key}' must be of type {name}, got {type(value).__name__}",
                            f"send {key} as a JSON {name}")
    if hint is float:
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidParams(f"parameter '{key}' must be finite", f"send a finite number for {key}")
    return value
