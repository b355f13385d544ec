"""The parameters of a `prepare`, `edit` or `demo` job: one dataclass shared by the CLI, the protocol and
the add-on.

`JobParams` holds what a video editor sets (at most 25 fields); everything else (overrides of what the
files say, expert speed and memory settings, the consistency guidance's research knobs) lives in ONE
nested group, `JobParams.advanced` (`AdvancedParams`), whose defaults are the reference's.

`JobParams.from_dict` validates a JSON object (protocol `params`, add-on settings) and raises
InvalidParams naming the offending field; the CLI builds the same dict from its flags. Each field
carries its help text, its allowed values, its group and the jobs it applies to (`_f`), so the CLI's
`--help`, the per-command flags and docs/protocol.md all come from here. `validate()` checks every
range and choice before any work starts.
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
# or a comma list of blocks: "down0,up2"; "low-memory" also decodes 2 frames at a time and offloads CLIP/VAE
CHECKPOINT_CHOICES = ("auto", "none", "hires", "down", "all", "low-memory")
COMPILE_SCOPES = ("none", "blocks", "full")
DISTRIBUTED = ("none", "ray")  # docs/scale-out.md
OUTPUT_FORMATS = ("auto", "png", "png16", "exr", "prores", "prores4444", "dnxhr", "h264", "hevc")  # docs/footage.md
_BLOCK_NAME = re.compile(r"^(down\d+|up\d+|mid|down\*|up\*)$")

SEED_MAX = 2**31 - 1  # Blender's IntProperty range, and every RNG we seed accepts it
SIZE_MAX = 2048  # working resolution; the released model is trained at 512
MAX_THREADS = 256
TERMS = ("fg", "over", "body", "com")  # the consistency guidance's energies (method.md §B)

ALL_JOBS = ("prepare", "edit", "demo")
EDITS = ("edit", "demo")  # jobs that sample
FOOTAGE = ("prepare", "edit")  # jobs on the user's clips
GROUPS = ("inputs", "model", "sampling", "footage")  # help sections of the top-level fields, in order
ADVANCED_GROUPS = ("overrides", "speed", "guidance")  # help sections of `advanced`, in order
# the flat keys of earlier releases: still accepted (mapped, with a warning in the job's reply) until 0.3
LEGACY_UNTIL = "0.3"
LEGACY_SWITCHES = {f"use_{t}": f"w_{t}" for t in TERMS}  # use_X false -> w_X 0
LEGACY_LOW_MEMORY = "low_memory"  # true -> checkpoint "low-memory"


def _f(default: Any, help: str, group: str, jobs: tuple[str, ...] = ALL_JOBS,
       choices: tuple[str, ...] = ()) -> Any:
    """A field with its help text, help group, the jobs that use it and its allowed values."""
    meta = {"help": help, "group": group, "jobs": jobs, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass
class AdvancedParams:
    """The advanced group (`params.advanced`, `"advanced": {...}` in the protocol, its own `--help` sections).

    Nothing here needs setting for a normal edit: every default is the reference's (or the file's own
    value). Three kinds of knobs:

    * overrides of what the files say (frame rates, colour space), the mask predictor and its test-time
      adaptation, and `chunk` (set by the Flamenco job type);
    * expert speed and memory: activation `checkpoint`ing (`low-memory` for small GPUs), `compile`, the
      sliding `window`/`overlap` of long clips, and Ray scale-out (`distributed`, `ray_address`,
      `workers`; docs/scale-out.md);
    * the consistency guidance's research knobs (method.md §B): the four energy weights `w_*` (None =
      the chosen semantics' own weight, 0 = the term off), `energy_scale` (0 = no guidance),
      `guidance_semantics` (the reference code's regions or the paper's) and `estimator_weights`.
    """

    # overrides of the files' own values, and the mask predictor
    source_fps: Optional[float] = _f(None, "source frame rate, overriding the file's (e.g. for frame folders)",
                                     "overrides", FOOTAGE)
    driving_fps: Optional[float] = _f(None, "driving frame rate, overriding the file's", "overrides", FOOTAGE)
    input_colorspace: Optional[str] = _f(None, "the source's colour space, an OCIO or Blender name such as 'Linear "
                                               "Rec.709' or 'ACEScg' (default: from the file; EXR scene-linear "
                                               "Rec.709, else sRGB)", "overrides", FOOTAGE)
    mask_predictor: str = _f("auto", "predicted target masks M_e: the shipped model (with test-time "
                                     "adaptation when 'auto') or the geometric warp", "overrides", ALL_JOBS,
                             MASK_PREDICTORS)
    tta_steps: int = _f(0, "test-time adaptation steps of the mask predictor on the source clip, 0..10000 "
                           "(0 with 'auto' = the predictor's own default)", "overrides", ALL_JOBS)
    chunk: bool = _f(False, "write only the edited frames: one chunk of a longer shot, put together by "
                            "merge-chunks (docs/flamenco.md)", "overrides", ("edit",))
    # speed and memory (docs/performance.md)
    checkpoint: str = _f("auto", "activation checkpointing of the guidance pass: auto (fastest that fits the "
                                 "GPU), none, hires, down, all, blocks like 'down0,up2', or low-memory (every "
                                 "block, decode 2 frames at a time, CLIP and the VAE on the host while the UNet "
                                 "runs: about 9.5 GiB at 512²)", "speed", EDITS)
    compile: str = _f("none", "torch.compile the UNet layer by layer ('blocks') or whole ('full'); the first "
                              "step is slower", "speed", EDITS, COMPILE_SCOPES)
    window: int = _f(24, "frames per window for long clips, 1..32 (the motion modules see at most 32)",
                     "speed", EDITS)
    overlap: int = _f(4, "frames shared by neighbouring windows, 0..window-1", "speed", EDITS)
    distributed: str = _f("none", "'ray': the clip's windows split over `workers` Ray actors, one GPU each "
                                  "(docs/scale-out.md)", "speed", ("edit",), DISTRIBUTED)
    ray_address: str = _f("local", "'local' (a 127.0.0.1 cluster on this machine), 'auto', or HOST:PORT", "speed",
                          ("edit",))
    workers: int = _f(1, "Ray workers (one GPU each), 1..256", "speed", ("edit",))
    # consistency guidance: research knobs (method.md §B)
    w_fg: Optional[float] = _f(None, "weight of the foreground energy, >= 0 (0 = off; default 4.0)", "guidance",
                               EDITS)
    w_over: Optional[float] = _f(None, "weight of the overlap energy, >= 0 (0 = off; default 1.2 with code "
                                       "semantics, 6.0 with paper)", "guidance", EDITS)
    w_body: Optional[float] = _f(None, "weight of the body energy, >= 0 (0 = off; default 6.0 with code "
                                       "semantics, 2.4 with paper)", "guidance", EDITS)
    w_com: Optional[float] = _f(None, "weight of the common-region energy, >= 0 (0 = off; default 1.2)",
                                "guidance", EDITS)
    energy_scale: float = _f(4.0, "scale of the consistency guidance, >= 0 (0 = no guidance, no replay)",
                             "guidance", EDITS)
    guidance_semantics: str = _f("code", "energy regions as the reference code has them, or as the paper "
                                         "writes them (with the paper's weights)", "guidance", EDITS,
                                 GUIDANCE_SEMANTICS)
    estimator_weights: str = _f("shared", "the guidance's feature estimator: the denoising UNet itself, or the "
                                          "reference's second UNet (released weights only)", "guidance", EDITS,
                                ESTIMATOR_WEIGHTS)

    def validate(self) -> None:
        _choices(self)
        if self.checkpoint not in CHECKPOINT_CHOICES and not all(
                _BLOCK_NAME.match(n.strip()) for n in self.checkpoint.split(",")):
            raise InvalidParams(f"advanced.checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)} or a comma "
                                f"list of blocks like 'down0,up2'; got {self.checkpoint!r}", "leave it at 'auto'")
        _range("workers", self.workers, 1, 256, "one worker per GPU")
        _range("window", self.window, 1, 32, "the motion modules see at most 32 frames")
        _range("overlap", self.overlap, 0, self.window - 1, "4 is a good overlap")
        _range("tta_steps", self.tta_steps, 0, 10000, "0 uses the mask predictor's default")
        _range("energy_scale", self.energy_scale, 0.0, 1000.0, "4.0 is the reference; 0 turns guidance off")
        for t in TERMS:
            _range(f"w_{t}", getattr(self, f"w_{t}"), 0.0, 1000.0, "0 turns the term off; leave it out for the "
                                                                  "reference's weight")
        for name in ("source_fps", "driving_fps"):
            _range(name, getattr(self, name), 0.001, 1000.0, "e.g. 24, 25, 29.97, 30, 60")


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
    pose_extractor: str = _f("auto", "'auto' = DWPose when its weights are in the models folder, else "
                                     "mediapipe; 'decode' = the driving clip is already pose renders",
                             "footage", FOOTAGE, POSE_EXTRACTORS)
    output_format: str = _f("auto", "output format; 'auto' = the source's (a movie: the same codec family, exact "
                                    "fps and timecode; EXR: EXR; 16-bit: png16; else png)", "footage", ("edit",),
                            OUTPUT_FORMATS)
    preview: bool = _f(False, "also write edit.mp4, a preview video of the result", "footage", ("edit",))
    # the advanced group, and what from_dict could not use
    advanced: AdvancedParams = field(default_factory=AdvancedParams)
    extra: dict = field(default_factory=dict)  # unknown keys: ignored, reported in `warnings`
    warnings: list = field(default_factory=list)  # unknown and deprecated keys, for the job's reply and log

    @classmethod
    def from_dict(cls, d: Any) -> "JobParams":
        """Top-level fields plus "advanced": {...}; the flat keys of earlier releases are mapped (LEGACY_UNTIL)."""
        if not isinstance(d, dict):
            raise InvalidParams("params must be a JSON object", "send params as {\"source\": ..., ...}")
        adv_in = d.get("advanced", {})
        if not isinstance(adv_in, dict):
            raise InvalidParams("parameter 'advanced' must be a JSON object", "send advanced as {\"w_fg\": 4.0, ...}")
        top, adv, unknown, notes = _split(d, adv_in)
        p = cls(**{k: _coerce(k, _HINTS[k], v) for k, v in top.items()},
                advanced=AdvancedParams(**{k: _coerce(f"advanced.{k}", _ADV_HINTS[k], v) for k, v in adv.items()}))
        p.extra = unknown
        p.warnings = notes + [f"unknown parameter '{k}' ignored" for k in unknown]
        p.validate()
        return p

    def to_dict(self) -> dict[str, Any]:
        """The JSON form from_dict reads back (without `extra` and `warnings`)."""
        d = dataclasses.asdict(self)
        del d["extra"], d["warnings"]
        return d

    def with_advanced(self, **changes: Any) -> "JobParams":
        """A copy with some advanced fields changed (dataclasses.replace one level down)."""
        return dataclasses.replace(self, advanced=dataclasses.replace(self.advanced, **changes))

    def validate(self) -> None:
        """Every field's type-independent rules: choices and ranges (types are checked by from_dict)."""
        _choices(self)
        self.advanced.validate()
        _range("steps", self.steps, 1, 1000, "50 is the reference; 25 is faster")
        _range("seed", self.seed, 0, SEED_MAX, "any whole number in this range")
        _range("threads", self.threads, 0, MAX_THREADS, "0 picks a share of the cores")
        _range("guidance_scale", self.guidance_scale, 0.0, 50.0, "3.5 or 7.0 as in the reference")
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


_INTERNAL = ("advanced", "extra", "warnings")
_HINTS = {k: v for k, v in typing.get_type_hints(JobParams).items() if k not in _INTERNAL}
_ADV_HINTS = typing.get_type_hints(AdvancedParams)


def user_fields() -> list[dataclasses.Field]:
    """The top-level fields a user sets (not `advanced`, `extra`, `warnings`)."""
    return [f for f in dataclasses.fields(JobParams) if f.name not in _INTERNAL]


def advanced_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(AdvancedParams))


def job_fields(job: str) -> list[dataclasses.Field]:
    """The fields a job uses (its CLI flags): the top-level ones, then the advanced ones, in declaration order."""
    return [f for f in user_fields() + advanced_fields() if job in f.metadata["jobs"]]


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{name: value} over both levels (the CLI's flags) -> from_dict's form, the advanced names nested."""
    top = {k: v for k, v in flat.items() if k not in _ADV_HINTS}
    adv = {k: v for k, v in flat.items() if k in _ADV_HINTS}
    return {**top, "advanced": adv} if adv else top


def _split(d: dict, adv_in: dict) -> tuple[dict, dict, dict, list[str]]:
    """(top-level, advanced, unknown, deprecation notes) of a params object; legacy flat keys moved."""
    top, adv, forced, unknown, notes = {}, {}, {}, {}, []
    for key, value in d.items():
        if key in _HINTS:
            top[key] = value
        elif key in _ADV_HINTS:
            adv[key] = value
            notes.append(f"'{key}' at the top level of params is deprecated (accepted until {LEGACY_UNTIL}): "
                         f"send it as advanced.{key}")
        elif key in LEGACY_SWITCHES:
            w = LEGACY_SWITCHES[key]
            if value is False:
                forced[w] = 0.0  # wins over a flat w_X (old clients sent both)
            elif value is not True:
                raise InvalidParams(f"parameter '{key}' must be of type bool, got {type(value).__name__}",
                                    f"leave {key} out and set advanced.{w} (0 = off)")
            notes.append(f"'{key}' is deprecated (accepted until {LEGACY_UNTIL}): set advanced.{w} to 0 to turn "
                         f"the term off")
        elif key == LEGACY_LOW_MEMORY:
            if value is True:
                forced["checkpoint"] = "low-memory"  # low_memory overrode checkpoint
            elif value is not False:
                raise InvalidParams(f"parameter '{key}' must be of type bool, got {type(value).__name__}",
                                    "leave it out and set advanced.checkpoint to 'low-memory'")
            notes.append(f"'{key}' is deprecated (accepted until {LEGACY_UNTIL}): set advanced.checkpoint to "
                         f"'low-memory'")
        elif key != "advanced":
            unknown[key] = value
    adv.update(forced)
    for key, value in adv_in.items():  # the nested form wins over the legacy flat keys
        if key in _ADV_HINTS:
            adv[key] = value
        else:
            unknown[f"advanced.{key}"] = value
    return top, adv, unknown, notes


def _choices(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        if f.metadata.get("choices"):
            _choice(f.name, getattr(obj, f.name), f.metadata["choices"])


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
