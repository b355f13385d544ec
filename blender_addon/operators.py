"""Operators: run an edit (modal in the UI, blocking in background), cancel, check/stop the backend.

`motionfollower.edit` has two paths over the same `EditRun`:
- invoke() in the UI: a modal timer renders the strips a slice at a time (`advance`), does the
  backend handshake without waiting on it, starts the job and polls it; Blender stays responsive
  throughout, and Esc or the panel's Cancel button cancel at any point.
- execute() — scripts and `blender -b`: blocks until the job ends and returns {'CANCELLED'} with
  an ERROR report on failure (bpy.ops then raises RuntimeError, so scripts fail loudly).
Only the main thread touches bpy; the client's reader threads only fill in the Job.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import bpy

from . import client as mfclient
from . import preferences, strips

CANCEL_GRACE_S = 10.0  # after this long without an answer to cancel, the backend tree is killed
TIMER_S = 0.2
EXPORT_SLICE_S = 0.15  # Blender-side work per timer tick while the strips render (the UI gets the rest)


@dataclass
class EditRun:
    """One edit: the exported inputs, the backend job and where the result goes."""

    scene_name: str
    source: str
    driving: str
    job_dir: Path
    first_frame: int
    count: int
    params: dict[str, Any]
    exports: list[strips.StripExport] = field(default_factory=list)  # source, driving; rendered in slices
    handshake: Optional[mfclient.Request] = None  # `initialize`, sent once the frames are out
    job: Optional[mfclient.Job] = None
    cancel_requested_at: Optional[float] = None
    started: float = field(default_factory=time.monotonic)

    @property
    def exported(self) -> tuple[int, int]:
        """(frames rendered, frames to render) over both strips."""
        return sum(e.done for e in self.exports), sum(e.total for e in self.exports)


class State:
    """Runtime state shared by the operator and the panel (never saved in the .blend)."""

    def __init__(self) -> None:
        self.client: Optional[mfclient.BackendClient] = None
        self.client_key: Optional[tuple] = None
        self.backend_info: Optional[dict] = None
        self.run: Optional[EditRun] = None
        self.last_error: Optional[tuple[str, str]] = None  # (message, hint)
        self.last_message: str = ""
        self.last_job_dir: Optional[Path] = None

    @property
    def running(self) -> bool:
        return self.run is not None

    def progress(self) -> Optional[dict[str, Any]]:
        if self.run is None:
            return None
        run = self.run
        if run.job is None:  # still in Blender: exporting the strips, then the backend handshake
            done, total = run.exported
            elapsed = time.monotonic() - run.started
            exporting = done < total
            eta = elapsed / done * (total - done) if exporting and done else None
            return {"stage": "cancelling" if run.cancel_requested_at is not None else
                    "export" if exporting else "starting", "fraction": done / total if total else 0.0,
                    "eta_s": eta, "done": done, "total": total, "elapsed_s": elapsed, "finished": False,
                    "message": f"rendering the strips to frames ({run.source}, {run.driving})" if exporting
                    else "waiting for the backend"}
        snap = run.job.snapshot()
        if run.cancel_requested_at is not None:
            snap["stage"] = "cancelling"
        return snap


STATE = State()


# ---- backend -----------------------------------------------------------------------------------

def ensure_client(context: Any, initialize: bool = True) -> mfclient.BackendClient:
    """The running backend, (re)started when it died or the preferences changed. With initialize=False
    it only spawns the process (it imports torch meanwhile); a later call does the handshake."""
    s = preferences.get_settings(context)
    key = (s.python, s.repo, s.models_dir, s.device, s.precision)
    if STATE.client is not None and (not STATE.client.alive or STATE.client_key != key):
        STATE.client.close(timeout=5)
        STATE.client = None
    if STATE.client is None:
        if not s.python:
            raise mfclient.BackendError("no backend Python configured",
                                        hint="run install.py, or set the backend Python in the add-on preferences")
        log = str(Path(s.jobs_dir) / "backend.log")
        STATE.client = mfclient.BackendClient(s.python, repo=s.repo, models_dir=s.models_dir, device=s.device,
                                              precision=s.precision, log_path=log).start()
        STATE.client_key, STATE.backend_info = key, None
    if initialize and STATE.backend_info is None:
        try:
            STATE.backend_info = STATE.client.initialize()
        except mfclient.BackendError:
            STATE.client.kill()
            STATE.client = None
            raise
    return STATE.client


def stop_backend() -> None:
    if STATE.run is not None and STATE.run.job is not None and STATE.client is not None:
        STATE.client.kill()
    if STATE.client is not None:
        STATE.client.close(timeout=5)
    STATE.client = None


# ---- one edit ------------------------------------------------------------------------------------

class UserError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "strip"


def begin_edit(context: Any) -> EditRun:
    """Check the settings, create the job folder, spawn the backend (it imports torch while the strips
    export) and set up both exports. Nothing is rendered yet: `advance` does the work."""
    scene = strips.vse_scene(context)
    mf = scene.motionfollower
    source_name = mf.source_strip
    if not source_name:
        active = scene.sequence_editor.active_strip if scene.sequence_editor else None
        source_name = active.name if active is not None else ""
    if not source_name or strips.find_strip(scene, source_name) is None:
        raise UserError(f"source strip '{source_name}' not found" if source_name else "no source strip",
                        "pick the source strip in the MotionFollower panel (or make it the active strip)")
    if not mf.driving_strip or strips.find_strip(scene, mf.driving_strip) is None:
        raise UserError(f"driving strip '{mf.driving_strip}' not found" if mf.driving_strip else "no driving strip",
                        "pick the strip whose motion the person should follow")
    if mf.driving_strip == source_name:
        raise UserError("the source and the driving strip are the same strip", "pick two different strips")
    frame_range = (mf.frame_start, mf.frame_end + 1) if mf.use_frame_range else None

    settings = preferences.get_settings(context)
    job_dir = Path(settings.jobs_dir) / f"{_safe(source_name)}_{time.strftime('%Y%m%d-%H%M%S')}_{int(time.time() * 1000) % 1000:03d}"
    job_dir.mkdir(parents=True, exist_ok=False)
    STATE.last_job_dir = job_dir
    run = EditRun(scene.name, source_name, mf.driving_strip, job_dir, 0, 0,
                  {**mf.job_params(), "source": str(job_dir / "source"), "driving": str(job_dir / "driving"),
                   "out": str(job_dir / "edited")})
    try:
        ensure_client(context, initialize=False)
        run.exports.append(strips.StripExport(scene, source_name, job_dir / "source", frame_range))
        run.exports.append(strips.StripExport(scene, mf.driving_strip, job_dir / "driving"))
    except BaseException:
        abort_edit(run)
        raise
    return run


def advance(run: EditRun, budget_s: Optional[float] = None) -> None:
    """Move the edit on by about `budget_s` seconds of Blender-side work (None: until the backend job is
    started): render frames, then the handshake, then start the job. Cleans up and raises on failure."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    try:
        for export in run.exports:
            while not export.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                # as many frames as fit the time left, at the last measured cost (one frame to measure it)
                n = export.total if left is None else 1 if export.frame_s is None else int(left / export.frame_s)
                export.render(n)
        if run.handshake is None:
            src, drv = (e.finish() for e in run.exports)
            run.first_frame, run.count = src["first"], src["count"]
            run.params.update(source_fps=src["fps"], driving_fps=drv["fps"])
            client = ensure_client(bpy.context, initialize=False)
            if STATE.backend_info is None:
                run.handshake = client.send_initialize()
        if run.handshake is not None:
            if not run.handshake.wait(0 if deadline is not None else mfclient.INITIALIZE_TIMEOUT_S):
                if time.monotonic() - run.handshake.sent < mfclient.INITIALIZE_TIMEOUT_S:
                    return  # not yet: the next tick looks again
                raise mfclient.BackendError(f"the backend did not answer 'initialize' within "
                                            f"{mfclient.INITIALIZE_TIMEOUT_S:.0f} s",
                                            hint="see the backend log; restart the backend")
            STATE.backend_info = STATE.client.check_initialize(run.handshake)
        run.job = STATE.client.start_job("edit", run.params, job_id=run.job_dir.name)
    except BaseException:
        if run.handshake is not None and STATE.backend_info is None and STATE.client is not None:
            STATE.client.kill()  # a backend that fails its handshake is not reused
            STATE.client = None
        abort_edit(run)
        raise


def abort_edit(run: EditRun) -> None:
    """Drop an edit that has no backend job yet: the temporary scenes and the job folder go."""
    for export in run.exports:
        export.close()
    shutil.rmtree(run.job_dir, ignore_errors=True)


def start_edit(context: Any) -> EditRun:
    """begin_edit + advance to the started job, in one blocking call (scripts and `blender -b`)."""
    run = begin_edit(context)
    advance(run)
    return run


def request_cancel(run: EditRun) -> None:
    """Cancel: before the job starts, the next tick drops the run; after, the backend is asked to stop."""
    if run.cancel_requested_at is None and run.job is None:
        run.cancel_requested_at = time.monotonic()
    elif run.cancel_requested_at is None and not run.job.finished and STATE.client:
        run.cancel_requested_at = time.monotonic()
        try:
            STATE.client._send({"jsonrpc": "2.0", "method": "cancel", "params": {"job_id": run.job.job_id}})
        except mfclient.BackendError:
            pass


def tick(run: EditRun) -> None:
    """Kill the backend tree when a cancel was not honoured in time."""
    if (run.cancel_requested_at is not None and run.job is not None and not run.job.finished
            and time.monotonic() - run.cancel_requested_at > CANCEL_GRACE_S and STATE.client):
        STATE.client.kill()


def finish_edit(run: EditRun) -> tuple[bool, str]:
    """Import the result (success) or clean up (failure). Returns (ok, message)."""
    assert run.job is not None and run.job.finished
    job = run.job
    if job.error is not None:
        shutil.rmtree(run.job_dir, ignore_errors=True)
        if run.cancel_requested_at is not None:
            return False, "MotionFollower: cancelled"
        raise UserError(f"MotionFollower failed: {job.error.message}", job.error.hint)
    scene = bpy.data.scenes.get(run.scene_name)
    try:
        if scene is None:
            raise UserError(f"scene '{run.scene_name}' is gone", "keep the scene open while an edit runs")
        out = Path((job.result or {}).get("out") or run.params["out"])
        mf = scene.motionfollower
        meta = {k: run.params[k] for k in ("seed", "steps", "guidance_scale", "size") if k in run.params}
        meta.update(source=run.source, driving=run.driving, model=str((job.result or {}).get("model", run.params.get("model"))))
        strip = strips.import_frames(scene, out, f"{run.source} (MotionFollower)", run.source, run.first_frame, meta)
        if not mf.keep_inputs:
            for sub in ("source", "driving"):
                shutil.rmtree(run.job_dir / sub, ignore_errors=True)
    except BaseException:
        shutil.rmtree(run.job_dir, ignore_errors=True)
        raise
    n = len(strip.elements)
    note = "" if n == run.count else f" (the source range has {run.count})"
    return True, f"MotionFollower: added '{strip.name}' on channel {strip.channel}, {n} frames{note}"


# ---- operators -----------------------------------------------------------------------------------

class MOTIONFOLLOWER_OT_edit(bpy.types.Operator):
    """Edit the source strip's person to follow the driving strip's motion (a new strip is added above)"""

    bl_idname = "motionfollower.edit"
    bl_label = "Run MotionFollower"
    bl_options = {"REGISTER", "UNDO"}

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

    def _finish(self, run: EditRun) -> set[str]:
        try:
            ok, msg = finish_edit(run)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, nothing is half-added
            return self._fail(exc)
        STATE.run = None
        STATE.last_message = msg
        if ok:
            STATE.last_error = None
            self.report({"INFO"}, msg)
            return {"FINISHED"}
        self.report({"WARNING"}, msg)
        return {"CANCELLED"}

    def execute(self, context):
        """Blocking: for scripts and `blender -b`. Ctrl-C cancels the job."""
        STATE.last_error = None
        try:
            STATE.run = run = start_edit(context)
        except BaseException as exc:  # noqa: BLE001
            return self._fail(exc)
        last = None
        try:
            while not run.job.wait(TIMER_S):
                tick(run)
                snap = run.job.snapshot()
                line = f"{snap['stage']} {snap['done']}/{snap['total']}"
                if line != last and bpy.app.background:
                    eta = f", eta {snap['eta_s']:.0f} s" if snap["eta_s"] is not None else ""
                    print(f"MotionFollower: {snap['fraction'] * 100:5.1f}% {line}{eta}", file=sys.stderr, flush=True)
                    last = line
        except KeyboardInterrupt:
            request_cancel(run)
            if not run.job.wait(CANCEL_GRACE_S) and STATE.client:
                STATE.client.kill()
            run.job.wait(10)
        return self._finish(run)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        STATE.last_error = None
        try:
            STATE.run = begin_edit(context)  # the frames are rendered by the timer ticks: Blender stays usable
        except BaseException as exc:  # noqa: BLE001
            return self._fail(exc)
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        run = STATE.run
        if run is None:
            return self._end(context, {"CANCELLED"})
        if event.type == "ESC" and event.value == "PRESS":
            request_cancel(run)
        if event.type == "TIMER":
            if run.job is None and run.cancel_requested_at is not None:  # cancelled before the job started
                abort_edit(run)
                STATE.run, STATE.last_message = None, "MotionFollower: cancelled"
                self.report({"WARNING"}, STATE.last_message)
                return self._end(context, {"CANCELLED"})
            if run.job is None:
                try:
                    advance(run, EXPORT_SLICE_S)
                except BaseException as exc:  # noqa: BLE001 - advance cleaned up; report it
                    return self._end(context, self._fail(exc))
            tick(run)
            for area in context.screen.areas if context.screen else ():
                if area.type == "SEQUENCE_EDITOR":
                    area.tag_redraw()
            if run.job is not None and run.job.finished:
                return self._end(context, self._finish(run))
        return {"PASS_THROUGH"}

    def _end(self, context, result: set[str]) -> set[str]:
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        for area in context.screen.areas if context.screen else ():
            area.tag_redraw()
        return result


class MOTIONFOLLOWER_OT_cancel(bpy.types.Operator):
    """Stop the running edit (the backend is killed if it does not stop within a few seconds)"""

    bl_idname = "motionfollower.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return STATE.running

    def execute(self, context):
        request_cancel(STATE.run)
        return {"FINISHED"}


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


CLASSES = (MOTIONFOLLOWER_OT_edit, MOTIONFOLLOWER_OT_cancel, MOTIONFOLLOWER_OT_check_backend,
           MOTIONFOLLOWER_OT_stop_backend, MOTIONFOLLOWER_OT_copy_error)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    if STATE.run is not None and STATE.client is not None:
        request_cancel(STATE.run)
    stop_backend()
    STATE.run = None
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
