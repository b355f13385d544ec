"""The Sequencer sidebar panel (tab "MotionFollower"): strips, settings, Run; progress + Cancel; errors."""

from __future__ import annotations

import bpy

from . import run, strips


def _eta(seconds) -> str:
    if seconds is None:
        return "estimating…"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d} left" if seconds >= 60 else f"{seconds} s left"


class SidebarPanel:
    """Where every MotionFollower panel lives: the Sequencer's sidebar, tab "MotionFollower"."""

    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "MotionFollower"


class SEQUENCER_PT_motionfollower(SidebarPanel, bpy.types.Panel):
    bl_label = "MotionFollower"
    bl_idname = "SEQUENCER_PT_motionfollower"

    def draw(self, context):
        layout = self.layout
        scene = strips.vse_scene(context)
        mf = scene.motionfollower
        state = run.STATE

        col = layout.column()
        strip_field(col, scene, mf, "source_strip", "SEQUENCE")
        if not mf.source_strip:
            ed = scene.sequence_editor
            active = ed.active_strip if ed else None
            col.label(text=f"Using the active strip: {active.name}" if active else "No active strip", icon="INFO")
        strip_field(col, scene, mf, "driving_strip", "ARMATURE_DATA")
        col.prop(mf, "driving_is_pose")
        col.prop(mf, "queue_selected")

        if state.running:
            draw_progress(layout, state)
        else:
            row = layout.row()
            row.scale_y = 1.5
            row.operator("motionfollower.edit", icon="PLAY")
            row.operator("motionfollower.edit", text="Preview", icon="HIDE_OFF").preview = True
            draw_estimate(layout, state, scene, mf)
            ed = scene.sequence_editor
            if ed is not None and ed.active_strip is not None and run.SETTINGS_KEY in ed.active_strip:
                layout.operator("motionfollower.rerun", icon="FILE_REFRESH")

        if state.last_error is not None and not state.running:
            box = layout.box()
            message, hint = state.last_error
            for i, line in enumerate(message.splitlines()[:6]):
                box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
            if hint:
                box.label(text=hint, icon="QUESTION")
            box.operator("motionfollower.copy_error", icon="COPYDOWN")
        elif state.last_message and not state.running:
            layout.label(text=state.last_message, icon="CHECKMARK")

        weights = (state.backend_info or {}).get("weights", {})
        if weights and not weights.get("official_model") and mf.model in ("auto", "demo"):
            warn = layout.box()
            warn.label(text="Only the demo model is installed (64 px, synthetic people):", icon="ERROR")
            warn.label(text="real footage needs the released weights — Preferences › Check backend")

        box = layout.box()
        box.label(text="Sampling")
        col = box.column(align=True)
        col.prop(mf, "model")
        if mf.model == "folder":
            col.prop(mf, "model_folder")
        col.prop(mf, "steps")
        col.prop(mf, "guidance_scale")
        col.prop(mf, "seed")
        col.prop(mf, "variations")
        col.prop(mf, "size")
        col.prop(mf, "camera")
        col.prop(mf, "timing")

        box = layout.box()
        box.prop(mf, "use_frame_range")
        if mf.use_frame_range:
            row = box.row(align=True)
            row.prop(mf, "frame_start")
            row.prop(mf, "frame_end")
        box.prop(mf, "output_format")
        box.prop(mf, "keep_inputs")
        if state.client is not None and not state.running:
            layout.operator("motionfollower.stop_backend", icon="X")


class SEQUENCER_PT_motionfollower_advanced(SidebarPanel, bpy.types.Panel):
    """Expert settings (the job's `advanced` group), closed by default: the defaults are the reference's."""

    bl_label = "Advanced"
    bl_idname = "SEQUENCER_PT_motionfollower_advanced"
    bl_parent_id = SEQUENCER_PT_motionfollower.bl_idname
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        mf = strips.vse_scene(context).motionfollower
        col = self.layout.column(align=True)
        col.prop(mf, "memory")
        col.prop(mf, "compile")
        box = self.layout.box()
        box.label(text="Consistency guidance (0: a term off)")
        col = box.column(align=True)
        for term in ("fg", "over", "body", "com"):
            col.prop(mf, f"w_{term}")


def draw_estimate(layout, state, scene, mf) -> None:
    """On CPU, how long Run should take, from the last edit's measured time (Preview gives a first one)."""
    if (state.backend_info or {}).get("device") != "cpu":
        return
    source = strips.find_strip(scene, mf.source_strip) if mf.source_strip else None
    frames = (source.frame_final_duration if source is not None else 0) * mf.variations
    eta = state.estimate_s(mf.steps, frames, mf.size) if frames else None
    layout.label(text=f"CPU: about {_eta(eta).replace(' left', '')} for this run (from the last edit)" if eta
                 else "CPU: runs are slow; Preview measures how slow", icon="TIME")


def strip_field(layout, scene, mf, name: str, icon: str) -> None:
    """A strip-name field with a search list of the scene's strips (Blender's own prop_search)."""
    ed = scene.sequence_editor
    coll = "strips_all" if ed is not None and hasattr(ed, "strips_all") else "sequences_all"
    if ed is None:
        layout.prop(mf, name, icon=icon)
    else:
        layout.prop_search(mf, name, ed, coll, icon=icon)


def draw_progress(layout, state) -> None:
    """One bar for the whole run (export, backend, import: run.State.progress) with what happens now and
    the whole run's ETA; which strip / variation of several; the Cancel button."""
    p = state.progress() or {}
    box = layout.box()
    fraction = float(p.get("fraction") or 0.0)
    text = f"{p.get('stage', '')} {p.get('done', 0)}/{p.get('total', 0)} — {_eta(p.get('eta_s'))}"
    if hasattr(box, "progress"):  # UILayout.progress: 4.0+
        box.progress(factor=fraction, type="BAR", text=text)
    else:
        box.label(text=f"{fraction * 100:.0f}%  {text}")
    if p.get("message"):
        box.label(text=str(p["message"]))
    if p.get("part"):
        box.label(text=str(p["part"]))
    row = box.row()
    row.operator("motionfollower.cancel", icon="CANCEL")
    if state.queue:
        row.operator("motionfollower.cancel", text="Cancel all", icon="CANCEL").everything = True


PANELS = (SEQUENCER_PT_motionfollower, SEQUENCER_PT_motionfollower_advanced)  # parent first


def register() -> None:
    for panel in PANELS:
        bpy.utils.register_class(panel)


def unregister() -> None:
    for panel in reversed(PANELS):
        bpy.utils.unregister_class(panel)
