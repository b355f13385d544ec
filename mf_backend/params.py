"""The parameters of a `prepare`, `edit` or `demo` job: one dataclass shared by the CLI, the protocol and
the add-on.

`JobParams.from_dict` validates a JSON object (protocol `params`, add-on settings) and raises
InvalidParams naming the offending field; the CLI builds the same dict from its flags. Each field
carries its help text, its allowed values, its group and the jobs it applies to (`FieldInfo`), so the
CLI's `--help`, the per-command flags and docs/protocol.md all come from here. `validate()` checks
every range before any work starts.
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
POSE_EXTRACTORS = ("auto", "mediapipe", "dwpose", "decode")
MASK_PREDICTORS = ("auto", "model", "geometric")
CHECKPOINT_CHOICES = ("auto", "none", "hires", "down", "all")  # or a comma list of blocks: "down0,up2"
COMPILE_SCOPES = ("none", "blocks", "full")
DISTRIBUTED = ("none", "ray")  # docs/scale-out.md
OUTPUT_FORMATS = ("auto", "png", "png16", "exr", "prores", "prores4444", "dnxhr", "h264")  # docs/footage.md
_BLOCK_NAME = re.compile(r"^(down\d+|up\d+|mid|down\*|up\*)$")

SEED_MAX = 2**31 - 1  # Blender's IntProperty range, and every RNG we seed accepts it
SIZE_MAX = 2048  # working resolution; the released model is trained at 512
MAX_THREADS = 256

ALL_JOBS = ("prepare", "edit", "demo")
EDITS = ("edit", "demo")  # jobs that sample
FOOTAGE = ("prepare", "edit")  # jobs on the user's clips
GROUPS = ("inputs", "model", "sampling", "footage", "speed", "advanced")  # help sections, in order


def _f(default: Any, help: str, group: str, jobs: tuple[str, ...] = ALL_JOBS,
       choices: tuple[str, ...] = ()) -> Any:
    """A field with its help text, help group, the jobs that use it and its allowed values."""
    meta = {"help": help, "group": group, "jobs": jobs, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass
class JobParams:
    """Everything a job needs. Paths may be video files or frame folders unless noted."""

    # inputs
    source: str = _f("", "source clip: a video file or a folder of frames (frame_0.png ...)", "inputs", FOOTAGE)
    driving: str = _f("", "driving clip: a video, a folder of frames, or frames that are already pose renders",
                      "inputs", FOOTAGE)
    out: str = _f("", "output folder; must not exist or be empty (written to a temporary sibling, moved on "
                      "success)", "inputs")
    source_poses: Optional[str] = _f(None, "your own source pose renders (folder) instead of extracting them",
                                     "inputs", FOOTAGE)
    target_aligned_poses: Optional[str] = _f(None, "your own aligned target pose renders (folder)", "inputs", FOOTAGE)
    source_masks: Optional[str] = _f(None, "your own source masks M_r (folder, one per source frame)", "inputs", FOOTAGE)
    predicted_masks: Optional[str] = _f(None, "your own predicted masks M_e (folder, one per source frame)",
                                        "inputs", FOOTAGE)
    # model and device
    model: str = _f("auto", "'auto' (the released model if complete, else the embedded demo model), 'official', "
                            "'demo', or a folder of your own weights", "model", EDITS)
    models_dir: Optional[str] = _f(None, "folder with the released weights (default: $MF_MODELS_DIR or "
                                         "~/.local/share/motionfollower/pretrained_weights)", "model")
    device: str = _f("auto", "compute device", "model", ALL_JOBS, DEVICES)
    precision: str = _f("auto", "fp32 on CPU; bf16 (or fp16) on CUDA when 'auto'", "model", EDITS, PRECISIONS)
    threads: int = _f(0, "CPU threads for this job; 0 = half the cores (at most 8), which keeps a shared machine "
                         "responsive", "model")
    # sampling
    steps: Optional[int] = _f(None, "DDIM steps, 1..1000 (default: the model's own: 50 for the released model, "
                                    "25 for the demo model)", "sampling", EDITS)
    size: Optional[int] = _f(None, "working resolution of the model, a multiple of 32 (default: the model's "
                                   "training size: 512 for the released model, 64 for the demo model)",
                             "sampling", ("edit",))
    guidance_scale: float = _f(3.5, "classifier-free guidance scale, 0..50 (reference: 7.0 for still cameras, "
                                    "3.5 for camera motion)", "sampling", EDITS)
    seed: int = _f(42, f"random seed, 0..{SEED_MAX}", "sampling", EDITS)
    camera: bool = _f(False, "camera mode: the source background's attention keys/values are injected "
                             "(moving cameras); also makes align 'auto' follow the source per frame",
                      "sampling", ALL_JOBS)
    # real footage
    align: str = _f("auto", "how the driving skeleton is placed on the source body ('auto': per-frame under "
                            "camera motion, else anchored at the first edited frame)", "footage", FOOTAGE,
                    ALIGN_MODES)
    crop: str = _f("person", "working crop: one square around the person, or the whole frame letterboxed",
                   "footage", ("edit",), CROP_MODES)
    timing: str = _f("trim", "when the clips differ in length or fps (docs/footage.md)", "footage", FOOTAGE,
                     TIMING_POLICIES)
    frame_start: Optional[int] = _f(None, "first source frame to edit (0-based, inclusive)", "footage", FOOTAGE)
    frame_end: Optional[int] = _f(None, "last source frame to edit (inclusive)", "footage", FOOTAGE)
    source_fps: Optional[float] = _f(None, "source frame rate, overriding the file's (e.g. for frame folders)",
                                     "footage", FOOTAGE)
    driving_fps: Optional[float] = _f(None, "driving frame rate, overriding the file's", "footage", FOOTAGE)
    pose_extractor: str = _f("auto", "'auto' = DWPose when its weights are in the models folder, else "
                                     "mediapipe; 'decode' = the driving clip is already pose renders",
                             "footage", FOOTAGE, POSE_EXTRACTORS)
    mask_predictor: str = _f("auto", "predicted target masks M_e: the shipped model (with test-time "
                                     "adaptation when 'auto') or the geometric warp", "footage", ALL_JOBS,
                             MASK_PREDICTORS)
    output_format: str = _f("auto", "output format; 'auto' = the source's (a movie: the same codec family, exact "
                                    "fps and timecode; EXR: EXR; 16-bit: png16; else png)", "footage", ("edit",),
                            OUTPUT_FORMATS)
    input_colorspace: Optional[str] = _f(None, "the source's colour space, an OCIO or Blender name such as 'Linear "
                                               "Rec.709' or 'ACEScg' (default: from the file; EXR scene-linear "
                                               "Rec.709, else sRGB)", "footage", FOOTAGE)
    preview: bool = _f(False, "also write edit.mp4, a preview video of the result", "footage", ("edit",))
    chunk: bool = _f(False, "write only the edited frames: one chunk of a longer shot, put together by "
                            "merge-chunks (docs/flamenco.md)", "footage", ("edit",))
    # speed and memory (docs/performance.md)
    low_memory: bool = _f(False, "checkpoint every block, decode 2 frames at a time, keep CLIP and the VAE on "
                                 "the host while the UNet runs (about 9.5 GiB at 512²); overrides checkpoint",
                          "speed", EDITS)
    checkpoint: str = _f("auto", "activation checkpointing of the guidance pass: auto (fastest that fits the "
                                 "GPU), none, hires, down, all, or blocks like 'down0,up2'", "speed", EDITS)
    compile: str = _f("none", "torch.compile the UNet layer by layer ('blocks') or whole ('full'); the first "
                              "step is slower", "speed", EDITS, COMPILE_SCOPES)
    distributed: str = _f("none", "'ray': the clip's windows split over `workers` Ray actors, one GPU each "
                                  "(docs/scale-out.md)", "speed", ("edit",), DISTRIBUTED)
    ray_address: str = _f("local", "'local' (a 127.0.0.1 cluster on this machine), 'auto', or HOST:PORT", "speed",
                          ("edit",))
    workers: int = _f(1, "Ray workers (one GPU each), 1..256", "speed", ("edit",))
    window: int = _f(24, "frames per window for long clips, 1..32 (the motion modules see at most 32)",
                     "speed", EDITS)
    overlap: int = _f(4, "frames shared by neighbouring windows, 0..window-1", "speed", EDITS)
    # advanced: research knobs (method.md; defaults are the reference's)
    w_fg: float = _f(4.0, "weight of the foreground energy (0 = off)", "advanced", EDITS)
    w_over: float = _f(1.2, "weight of the overlap energy (0 = off)", "advanced", EDITS)
    w_body: float = _f(6.0, "weight of the body energy (0 = off)", "advanced", EDITS)
    w_com: float = _f(1.2, "weight of the common-region energy (0 = off)", "advanced", EDITS)
    use_fg: bool = _f(True, "switch the foreground energy (same as w_fg 0)", "advanced", EDITS)
    use_over: bool = _f(True, "switch the overlap energy", "advanced", EDITS)
    use_body: bool = _f(True, "switch the body energy", "advanced", EDITS)
    use_com: bool = _f(True, "switch the common-region energy", "advanced", EDITS)
    energy_scale: float = _f(4.0, "scale of the consistency guidance, >= 0 (0 = no guidance, no replay)",
                             "advanced", EDITS)
    guidance_semantics: str = _f("code", "energy regions as the reference code has them, or as the paper "
                                         "writes them", "advanced", EDITS, GUIDANCE_SEMANTICS)
    estimator_weights: str = _f("shared", "the guidance's feature estimator: the denoising UNet itself, or the "
                                          "reference's second UNet (released weights only)", "advanced", EDITS,
                                ESTIMATOR_WEIGHTS)
    tta_steps: int = _f(0, "test-time adaptation steps of the mask predictor on the source clip, 0..10000 "
                           "(0 with 'auto' = the predictor's own default)", "advanced", ALL_JOBS)
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
        """Every field's type-independent rules: choices and ranges (types are checked by from_dict)."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices:
                _choice(f.name, getattr(self, f.name), choices)
        if self.checkpoint not in CHECKPOINT_CHOICES and not all(
                _BLOCK_NAME.match(n.strip()) for n in self.checkpoint.split(",")):
            raise InvalidParams(f"checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)} or a comma list of "
                                f"blocks like 'down0,up2'; got {self.checkpoint!r}", "leave it at 'auto'")
        _range("steps", self.steps, 1, 1000, "50 is the reference; 25 is faster")
        _range("seed", self.seed, 0, SEED_MAX, "any whole number in this range")
        _range("threads", self.threads, 0, MAX_THREADS, "0 picks a share of the cores")
        _range("workers", self.workers, 1, 256, "one worker per GPU")
        _range("window", self.window, 1, 32, "the motion modules see at most 32 frames")
        _range("overlap", self.overlap, 0, self.window - 1, "4 is a good overlap")
        _range("tta_steps", self.tta_steps, 0, 10000, "0 uses the mask predictor's default")
        _range("guidance_scale", self.guidance_scale, 0.0, 50.0, "3.5 or 7.0 as in the reference")
        _range("energy_scale", self.energy_scale, 0.0, 1000.0, "4.0 is the reference; 0 turns guidance off")
        for name in ("w_fg", "w_over", "w_body", "w_com"):
            _range(name, getattr(self, name), 0.0, 1000.0, "0 turns the term off; the defaults are the reference's")
        for name in ("source_fps", "driving_fps"):
            _range(name, getattr(self, name), 0.001, 1000.0, "e.g. 24, 25, 29.97, 30, 60")
        for name in ("frame_start", "frame_end"):
            _range(name, getattr(self, name), 0, 10**7, "frames are counted from 0")
        if self.size is not None and (self.size < 32 or self.size > SIZE_MAX or self.size % 32):
            raise InvalidParams(f"size must be a multiple of 32 in 32..{SIZE_MAX}, got {self.size}",
                                "leave it out to use the model's own training size (512 for the released model)")
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


def job_fields(job: str) -> list[dataclasses.Field]:
    """The fields a job uses (its CLI flags), in declaration order."""
    return [f for f in dataclasses.fields(JobParams) if job in f.metadata.get("jobs", ())]


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidParams(f"{name} must be one of {', '.join(choices)}; got {value!r}",
                            f"set {name} to one of {', '.join(choices)}")


def _range(name: str, value: Any, lo: Any, hi: Any, hint: str) -> None:
    if value is not None and not lo <= value <= hi:
        raise InvalidParams(f"{name} must be in {lo}..{hi}, got {value}", hint)


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
