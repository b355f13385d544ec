"""Per-scene settings: `scene.motionfollower` (the scripting API, docs/blender.md).

Strips are referenced by name (strings survive strip edits, undo and file reloads; the panel offers
them with UILayout.prop_search — a Python `search=` callback makes bpy 4.2 crash at exit); the job
parameters mirror `mf_backend.params.JobParams` and `job_params(mf)` builds its dict.
"""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

TERMS = ("fg", "over", "body", "com")  # the consistency guidance's energies (mf_backend.params.TERMS)


class MotionFollowerSettings(bpy.types.PropertyGroup):
    source_strip: StringProperty(name="Source", description="Strip whose person is edited (empty: the active strip)")
    driving_strip: StringProperty(name="Driving", description="Strip whose motion the person follows "
                                  "(a video, or a strip that already is a pose render)")
    driving_is_pose: BoolProperty(name="Driving is a pose render", default=False,
                                  description="The driving strip already shows DWPose-style skeletons: decode them "
                                              "instead of detecting a person")
    model: EnumProperty(name="Model", default="auto", items=[
        ("auto", "Auto", "The released model when its weights are complete, else the demo model"),
        ("official", "Released", "The released MotionFollower weights (models folder in the preferences)"),
        ("demo", "Demo", "The small embedded demo model"),
        ("folder", "Folder", "A folder of weights trained with this project")])
    model_folder: StringProperty(name="Model folder", subtype="DIR_PATH")
    steps: IntProperty(name="Steps", default=0, min=0, max=1000,
                       description="Denoising steps (DDIM); 0: the model's own (50 for the released weights, "
                                   "25 for the demo model)")
    guidance_scale: FloatProperty(name="Guidance scale", default=3.5, min=0.0, max=30.0,
                                  description="Classifier-free guidance scale (7.0 for people, 3.5 with camera motion)")
    seed: IntProperty(name="Seed", default=42, min=0)
    variations: IntProperty(name="Variations", default=1, min=1, max=16,
                            description="Edits with the seeds seed, seed+1, …: one strip each, the seed in its name")
    queue_selected: BoolProperty(name="All selected strips", default=False,
                                 description="Edit every selected movie/image/meta/scene strip but the driving one, "
                                             "one after another (each can be cancelled)")
    size: IntProperty(name="Resolution", default=0, min=0, max=2048, step=32,
                      description="Working resolution of the model (square, a multiple of 32; the result is "
                                  "scaled back to the scene resolution); 0: the model's own (512 for the released "
                                  "weights, 64 for the demo model)")
    camera: BoolProperty(name="Camera mode", default=False,
                         description="Keep a moving camera's background (K/V injection from the source)")
    memory: EnumProperty(name="GPU memory", default="auto", items=[
        ("auto", "Auto", "The fastest setting that fits the GPU's free memory"),
        ("none", "Fast", "No activation checkpointing (about 26 GB at 24 frames, 512 px)"),
        ("hires", "Balanced", "Checkpoint the high-resolution blocks (about 14 GB, 10 % slower)"),
        ("low", "Low", "Checkpoint every block, decode 2 frames at a time (about 10 GB, 17 % slower)")])
    compile: BoolProperty(name="Compile the model", default=False,
                          description="torch.compile the model layer by layer: the first step takes longer")
    # consistency guidance (the Advanced sub-panel): the reference's weights; 0 turns a term off
    w_fg: FloatProperty(name="Foreground", default=4.0, min=0.0, max=100.0,
                        description="Weight of the foreground energy (0: off, e.g. when the person turns around)")
    w_over: FloatProperty(name="Overlap", default=1.2, min=0.0, max=100.0,
                          description="Weight of the overlap energy (0: off)")
    w_body: FloatProperty(name="Body", default=6.0, min=0.0, max=100.0, description="Weight of the body energy (0: off)")
    w_com: FloatProperty(name="Common", default=1.2, min=0.0, max=100.0,
                         description="Weight of the common-region energy (0: off)")
    timing: EnumProperty(name="Timing", default="hold-last", items=[
        ("hold-last", "Hold last", "A shorter driving clip holds its last pose, so the whole source is edited"),
        ("loop", "Loop", "A shorter driving clip loops"),
        ("stretch", "Stretch", "The driving clip is retimed to the source length"),
        ("trim", "Trim", "Edit only as many frames as the driving clip has")])
    use_frame_range: BoolProperty(name="Limit frame range", default=False,
                                  description="Edit only the source frames inside this timeline range")
    frame_start: IntProperty(name="Start", default=1)
    frame_end: IntProperty(name="End", default=250, description="Last timeline frame (inclusive)")
    output_format: EnumProperty(name="Output", default="auto", items=[
        ("auto", "As source", "The source's format (frames exported from Blender: 8-bit PNG)"),
        ("png", "PNG 8-bit", "sRGB PNG frames; the matte as a separate sequence"),
        ("png16", "PNG 16-bit", "16-bit PNG frames; the matte as a separate sequence"),
        ("exr", "OpenEXR", "Half-float scene-linear EXR frames, the matte in alpha"),
        ("prores", "ProRes 422 HQ", "A ProRes 422 HQ movie at the source's frame rate"),
        ("prores4444", "ProRes 4444", "A ProRes 4444 movie with the matte in alpha"),
        ("dnxhr", "DNxHR HQX", "A 10-bit DNxHR movie (at least 256x120)"),
        ("h264", "H.264", "An H.264 MP4 (even width and height)"),
        ("hevc", "HEVC 10-bit", "An HEVC Main10 MP4; HDR (PQ/HLG) sources stay HDR (even width and height)")])
    keep_inputs: BoolProperty(name="Keep exported inputs", default=False,
                              description="Keep the exported source/driving frames in the job folder")


def job_params(mf: MotionFollowerSettings) -> dict[str, Any]:
    """The backend's JobParams fields the settings `mf` set (paths are added by run.py). A function, not a
    method: a Python method on a PropertyGroup makes bpy 4.2 crash at exit."""
    p: dict[str, Any] = {k: getattr(mf, k) for k in ("guidance_scale", "seed", "camera", "timing", "output_format")}
    p.update({k: getattr(mf, k) for k in ("steps", "size") if getattr(mf, k)})  # 0: the backend picks the model's
    p["model"] = bpy.path.abspath(mf.model_folder) if mf.model == "folder" else mf.model
    if mf.driving_is_pose:
        p["pose_extractor"] = "decode"
    # weights left at their defaults are left out: the backend's exact reference values (the panel's are float32)
    changed = {f"w_{t}": getattr(mf, f"w_{t}") for t in TERMS
               if getattr(mf, f"w_{t}") != mf.bl_rna.properties[f"w_{t}"].default}
    p["advanced"] = {"checkpoint": "low-memory" if mf.memory == "low" else mf.memory,
                     "compile": "blocks" if mf.compile else "none", **changed}
    return p


def settings_of(mf: MotionFollowerSettings) -> dict[str, Any]:
    """Every panel setting, JSON-able: stored on each result strip for "Re-run with these settings"."""
    return {k: getattr(mf, k) for k in mf.bl_rna.properties.keys() if k not in ("rna_type", "name")}


def apply_settings(mf: MotionFollowerSettings, values: dict[str, Any]) -> list[str]:
    """Set the panel from settings_of's dict; returns the keys it could not use (renamed, out of range).
    Strips made by earlier versions have use_fg ... switches: off becomes the weight 0."""
    values = dict(values)
    for t in TERMS:
        if values.pop(f"use_{t}", True) is False:
            values[f"w_{t}"] = 0.0
    skipped = []
    for k, v in values.items():
        try:
            setattr(mf, k, v)
        except (AttributeError, TypeError, ValueError):
            skipped.append(k)
    return skipped


def register() -> None:
    bpy.utils.register_class(MotionFollowerSettings)
    bpy.types.Scene.motionfollower = bpy.props.PointerProperty(type=MotionFollowerSettings)


def unregister() -> None:
    del bpy.types.Scene.motionfollower
    bpy.utils.unregister_class(MotionFollowerSettings)
