"""Operators: run an edit (modal in the UI, blocking in background), cancel, check/stop the backend.

Thin: the run's lifecycle is in run.py. `motionfollower.edit` has two paths over the same `EditRun`:
- invoke() in the UI: a modal timer calls `run.advance` (the strips render a slice per tick, the
  backend handshake is polled), then polls the job; Blender stays responsive throughout, and Esc
  or the panel's Cancel button cancel at any point.
- execute() — scripts and `blender -b`: blocks until the job ends and returns {'CANCELLED'} with
  an ERROR report on failure (bpy.ops then raises RuntimeError, so scripts fail loudly).
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import bpy

from . import client as mfclient
from . import preferences, properties, strips
from .inputs import UserError, plan
from .run import (SETTINGS_KEY, STATE, EditRun, abort_edit, advance, begin_edit, ensure_client, finish_edit,
                  request_cancel, stop_backend, tick)

TIMER_S = 0.2
EXPORT_SLICE_S = 0.15  # Blender-side work per timer tick while the strips render (the UI gets the rest)


# ---- operators -----------------------------------------------------------------------------------

class MOTIONFOLLOWER_OT_edit(bpy.types.Operator):
    """Edit the source strip's person to follow the driving strip's motion (a new strip is added above)"""

    bl_idname = "motionfollower.edit"
    bl_label = "Run MotionFollower"
    bl_options = {"REGISTER", "UNDO"}

    preview: bpy.props.BoolProperty(name="Preview", default=False, options={"SKIP_SAVE"},
                                    description="A quick look first: the first 8 frames, 10 steps, at most 256 px")

    _timer = None

    @classmethod
    def poll(cls, context):
        if STATE.running:
            cls.poll_message_set("an edit is already running")
            return False
        return True

    def _fail(self, exc: BaseException) -> set[str]:
        if isinstance(exc, (UserError, mfclient.BackendError)):
            message, hint = exc.message, exc.hint
        elif isinstance(exc, OSError):
            message = f"cannot write '{exc.filename}': {exc.strerror}" if exc.filename else f"file error: {exc}"
            hint = "check that the folder exists and that you can write to it (job folder: add-on preferences)"
        elif isinstance(exc, strips.ExportError):
            message, hint = f"export failed: {exc}", "check that the strips play in the sequencer"
        else:
            message, hint = f"{type(exc).__name__}: {exc}", "see the system console for details"
            import traceback

            traceback.print_exc()
        STATE.last_error = (message, hint)
        STATE.run = None
        print(f"MotionFollower error: {message}" + (f"\n  -> {hint}" if hint else ""), file=sys.stderr)
        self.report({"ERROR"}, message + (f" — {hint}" if hint else ""))
        return {"CANCELLED"}

    def _step_done(self, context, run: "EditRun") -> Optional[set[str]]:
        """The job ended: import it, then start the next variation or queued source (None: work goes on)."""
        try:
            ok, msg = finish_edit(run)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, nothing is half-added
            STATE.queue = []
            return self._fail(exc)
        STATE.last_message = msg
        self.report({"WARNING"} if ok is False else {"INFO"}, msg)
        if ok is None:
            return None  # the next variation runs on the same exported frames
        STATE.run = None
        if STATE.queue:
            try:
                STATE.run = begin_edit(context, STATE.queue.pop(0), position=(run.position[0] + 1, run.position[1]))
            except BaseException as exc:  # noqa: BLE001
                STATE.queue = []
                return self._fail(exc)
            return None
        if ok:
            STATE.last_error = None
        return {"FINISHED"} if ok else {"CANCELLED"}

    def _start(self, context) -> Optional[set[str]]:
        STATE.last_error = None
        try:
            first, *STATE.queue = plan(context)
            if self.preview:
                STATE.queue = []
            STATE.run = begin_edit(context, first, preview=self.preview,  # frames are rendered later: advance()
                                   position=(1, 1 + len(STATE.queue)))
        except BaseException as exc:  # noqa: BLE001
            STATE.queue = []
            return self._fail(exc)
        return None

    def execute(self, context):
        """Blocking: for scripts and `blender -b`. Ctrl-C cancels the job and the queue."""
        failed = self._start(context)
        if failed is not None:
            return failed
        while True:
            run = STATE.run
            try:
                if run.job is None:
                    advance(run)
            except BaseException as exc:  # noqa: BLE001 - advance cleaned up; report it
                STATE.queue = []
                return self._fail(exc)
            last = None
            try:
                while not run.job.wait(TIMER_S):
                    tick(run)
                    p = STATE.progress()  # the whole run's bar, as the panel shows it
                    line = f"{p['stage']} {p['done']}/{p['total']}" + (f" ({p['part']})" if p["part"] else "")
                    if line != last and bpy.app.background:
                        eta = f", eta {p['eta_s']:.0f} s" if p["eta_s"] is not None else ""
                        print(f"MotionFollower: {p['fraction'] * 100:5.1f}% {line}{eta}", file=sys.stderr, flush=True)
                        last = line
            except KeyboardInterrupt:
                request_cancel(run, everything=True)
                STATE.client.cancel(run.job)
            result = self._step_done(context, run)
            if result is not None:
                return result

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        failed = self._start(context)
        if failed is not None:
            return failed
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        run = STATE.run
        if run is None:
            return self._end(context, {"CANCELLED"})
        if event.type == "ESC" and event.value == "PRESS":
            request_cancel(run, everything=True)
        if event.type == "TIMER":
            if run.job is None and run.cancel_requested_at is not None:  # cancelled before the job started
                abort_edit(run)
                STATE.run, STATE.queue, STATE.last_message = None, [], "MotionFollower: cancelled"
                self.report({"WARNING"}, STATE.last_message)
                return self._end(context, {"CANCELLED"})
            if run.job is None:
                try:
                    advance(run, EXPORT_SLICE_S)
                except BaseException as exc:  # noqa: BLE001 - advance cleaned up; report it
                    STATE.queue = []
                    return self._end(context, self._fail(exc))
            tick(run)
            for area in context.screen.areas if context.screen else ():
                if area.type == "SEQUENCE_EDITOR":
                    area.tag_redraw()
            if run.job is not None and run.job.finished:
                result = self._step_done(context, run)
                if result is not None:
                    return self._end(context, result)
        return {"PASS_THROUGH"}

    def cancel(self, context):
        """Blender ends the modal operator (file load, window closed): the run goes with it."""
        from .run import drop_run

        drop_run()
        self._end(context, {"CANCELLED"})

    def _end(self, context, result: set[str]) -> set[str]:
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        for area in context.screen.areas if context.screen else ():
            area.tag_redraw()
        return result


class MOTIONFOLLOWER_OT_cancel(bpy.types.Operator):
    """Stop the running edit after its current step (the backend is killed if that takes too long)"""

    bl_idname = "motionfollower.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    everything: bpy.props.BoolProperty(name="Cancel the queue too", default=False,
                                       description="Also drop the source strips still waiting in the queue")

    @classmethod
    def poll(cls, context):
        return STATE.running

    def execute(self, context):
        request_cancel(STATE.run, everything=self.everything)
        return {"FINISHED"}


class MOTIONFOLLOWER_OT_rerun(bpy.types.Operator):
    """Put the settings stored on the active result strip back into the panel and run them again"""

    bl_idname = "motionfollower.rerun"
    bl_label = "Re-run with these settings"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        ed = strips.vse_scene(context).sequence_editor
        return not STATE.running and ed is not None and ed.active_strip is not None and SETTINGS_KEY in ed.active_strip

    def execute(self, context):
        scene = strips.vse_scene(context)
        settings = json.loads(scene.sequence_editor.active_strip[SETTINGS_KEY])
        skipped = properties.apply_settings(scene.motionfollower, settings)
        if skipped:
            self.report({"WARNING"}, f"settings not restored: {', '.join(skipped)}")
        return bpy.ops.motionfollower.edit("INVOKE_DEFAULT" if context.window else "EXEC_DEFAULT")


class MOTIONFOLLOWER_OT_check_backend(bpy.types.Operator):
    """Start the backend and show its device, versions and which weights are missing"""

    bl_idname = "motionfollower.check_backend"
    bl_label = "Check backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return not STATE.running

    def execute(self, context):
        try:
            ensure_client(context)
        except mfclient.BackendError as exc:
            preferences.CHECK_REPORT[:] = [f"ERROR: {exc.message}", f"-> {exc.hint}"]
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        preferences.CHECK_REPORT[:] = describe_backend(STATE.backend_info or {})
        self.report({"INFO"}, preferences.CHECK_REPORT[0])
        return {"FINISHED"}


def describe_backend(info: dict) -> list[str]:
    w = info.get("weights", {})
    lines = [f"Backend {info.get('backendVersion', '?')}: {info.get('device', '?')}"
             + (f" ({info['gpu']})" if info.get("gpu") else "")
             + f", {info.get('dtype', '?')}, torch {info.get('torch', '?')}, python {info.get('python', '?')}",
             f"Models folder: {w.get('models_dir')}" + ("" if w.get("models_dir_exists", True) else " (does not exist)"),
             f"Released model: {'complete' if w.get('official_model') else 'incomplete'}; "
             f"demo model: {'present' if w.get('demo_model') else 'missing'}; default: {w.get('default_model', '?')}"]
    for m in w.get("missing", []):
        lines.append(f"missing {m.get('file')}: {m.get('what', '')} -> put it at {m.get('put_it_at', '?')}")
    return lines


class MOTIONFOLLOWER_OT_stop_backend(bpy.types.Operator):
    """Stop the backend process (frees its GPU memory); the next run starts a new one"""

    bl_idname = "motionfollower.stop_backend"
    bl_label = "Stop backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return STATE.client is not None and not STATE.running

    def execute(self, context):
        stop_backend()
        return {"FINISHED"}


class MOTIONFOLLOWER_OT_copy_error(bpy.types.Operator):
    """Copy the last error and the backend log's last lines to the clipboard"""

    bl_idname = "motionfollower.copy_error"
    bl_label = "Copy error details"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return STATE.last_error is not None

    def execute(self, context):
        message, hint = STATE.last_error
        tail = "\n".join(STATE.client.stderr_tail) if STATE.client else ""
        context.window_manager.clipboard = f"{message}\n-> {hint}\n\nbackend log:\n{tail}"
        return {"FINISHED"}


CLASSES = (MOTIONFOLLOWER_OT_edit, MOTIONFOLLOWER_OT_cancel, MOTIONFOLLOWER_OT_rerun, MOTIONFOLLOWER_OT_check_backend,
           MOTIONFOLLOWER_OT_stop_backend, MOTIONFOLLOWER_OT_copy_error)


register, unregister = bpy.utils.register_classes_factory(CLASSES)  # Blender's own (un)register-in-order
