"""Add-on preferences: backend Python, models folder, device, precision, job folder; "Check backend".

Empty fields fall back to the config file install.py writes (config.load_config), so a fresh
install works without touching the preferences. `get_settings()` also works when the add-on is
registered without being enabled through the preferences (bpy module tests, scripts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import config

ADDON_ID = __package__  # "blender_addon", "motionfollower" or "bl_ext.<repo>.motionfollower"

# Result of the last "Check backend": lines to show in the preferences (runtime only).
CHECK_REPORT: list[str] = []


class MotionFollowerPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    python: StringProperty(name="Backend Python", subtype="FILE_PATH",
                           description="The backend venv's interpreter (empty: from install.py's config)")
    models_dir: StringProperty(name="Models folder", subtype="DIR_PATH",
                               description="Folder of the released weights (empty: from install.py's config)")
    jobs_dir: StringProperty(name="Job folder", subtype="DIR_PATH",
                             description="Scratch folder of running jobs: exported strips, frames being edited "
                                         "(empty: the system temp folder). Results go to //motionfollower/ "
                                         "next to the .blend")
    device: EnumProperty(name="Device", default="auto", items=[
        ("auto", "Auto", "CUDA when available, else CPU"), ("cuda", "CUDA", ""), ("cpu", "CPU", "")])
    precision: EnumProperty(name="Precision", default="auto", items=[
        ("auto", "Auto", "bf16/fp16 on GPU, fp32 on CPU"), ("fp32", "fp32", ""), ("fp16", "fp16", ""),
        ("bf16", "bf16", "")])
    flamenco_manager: StringProperty(name="Flamenco Manager", description="URL of the render farm's Flamenco "
                                     "Manager, e.g. http://flamenco.local:8080 (Submit to Flamenco; docs/flamenco.md)")

    threads: IntProperty(name="CPU threads", default=0, min=0, max=256,
                         description="CPU threads the backend may use; 0: half the cores (at most 8), which keeps "
                                     "Blender responsive while a CPU job runs")

    def draw(self, context):  # noqa: ARG002
        layout = self.layout
        cfg = config.load_config()
        col = layout.column()
        col.prop(self, "python")
        if not self.python:
            col.label(text=f"Using: {cfg.python or 'nothing found: run install.py'}"
                           + (f"  ({cfg.source})" if cfg.source else ""), icon="INFO")
        col.prop(self, "models_dir")
        col.prop(self, "jobs_dir")
        row = col.row()
        row.prop(self, "device")
        row.prop(self, "precision")
        col.prop(self, "threads")
        col.prop(self, "flamenco_manager")
        layout.operator("motionfollower.check_backend", icon="CHECKMARK")
        if CHECK_REPORT:
            box = layout.box()
            for line in CHECK_REPORT:
                box.label(text=line)


@dataclass
class Settings:
    python: str
    repo: Optional[str]
    models_dir: Optional[str]
    device: str
    precision: str
    threads: int
    jobs_dir: str  # "": results.scratch_root's default


def addon_prefs(context: Any = None) -> Optional[MotionFollowerPreferences]:
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def get_settings(context: Any = None) -> Settings:
    """Preferences with install.py's config filled in where a field is empty."""
    prefs = addon_prefs(context)
    cfg = config.load_config()
    python = bpy.path.abspath(prefs.python) if prefs and prefs.python else cfg.python
    models_dir = bpy.path.abspath(prefs.models_dir) if prefs and prefs.models_dir else cfg.models_dir
    jobs_dir = bpy.path.abspath(prefs.jobs_dir) if prefs and prefs.jobs_dir else ""
    return Settings(python=python, repo=cfg.repo, models_dir=models_dir or None,
                    device=prefs.device if prefs else "auto", precision=prefs.precision if prefs else "auto",
                    threads=prefs.threads if prefs else 0,
                    jobs_dir=jobs_dir)


def register() -> None:
    bpy.utils.register_class(MotionFollowerPreferences)


def unregister() -> None:
    bpy.utils.unregister_class(MotionFollowerPreferences)
