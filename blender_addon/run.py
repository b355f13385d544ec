"""The life of one edit, from the Run button to the strip on the timeline (operators.py stays thin).

check the strips (inputs) → job folder in scratch (results) → spawn the backend while the strips
render a slice per call (`advance`) → handshake → `edit` job → import the frames as a strip whose
folder is `//motionfollower/<name>/` (or the job folder until the first save). One progress bar covers
it all (bar.py).
Cancel asks the backend to stop after its current step (`BackendClient.request_cancel`); `tick` kills
the backend tree when that takes longer than the job's grace period (`Job.cancel_grace_s`).
Loading another .blend cancels the run (load_pre); a dead Blender's job folders go at the next start.
Only the main thread touches bpy; the client's reader threads only fill in the Job.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import bpy
from bpy.app.handlers import persistent

from . import bar as mfbar
from . import client as mfclient
from . import inputs, preferences, properties, results, strips
from .inputs import UserError

SETTINGS_KEY = "motionfollower_settings"  # JSON of every panel setting, on each result strip
PREVIEW_FRAMES, PREVIEW_STEPS, PREVIEW_SIZE = 8, 10, 256  # a quick look before the full run


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
    seeds: list[int] = field(default_factory=list)  # variations still to run on the same exported frames
    settings: dict[str, Any] = field(default_factory=dict)  # the panel's settings at Run (stored on the strip)
    preview: bool = False
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    exported_at: Optional[float] = None  # when the last frame was rendered (the export's measured rate)
    jobs_planned: int = 1  # backend jobs on these frames: one per variation; a preview's edit + prepare
    job_times: list[float] = field(default_factory=list)  # seconds each finished job took (the next one's estimate)
    placed: list[Path] = field(default_factory=list)  # result folders inside job_dir (unsaved .blend): kept
    position: tuple[int, int] = (1, 1)  # (k, n): the queue's k-th source strip of n
    bar: mfbar.Bar = field(default_factory=mfbar.Bar)  # the whole run's one progress bar (bar.py)

    @property
    def exported(self) -> tuple[int, int]:
        """(frames rendered, frames to render) over both strips."""
        return sum(e.done for e in self.exports), sum(e.total for e in self.exports)


class State:
    """Runtime state shared by the operators and the panel (never saved in the .blend)."""

    def __init__(self) -> None:
        self.client: Optional[mfclient.BackendClient] = None
        self.client_key: Optional[tuple] = None
        self.backend_info: Optional[dict] = None
        self.run: Optional[EditRun] = None
        self.queue: list[str] = []  # source strips still to edit after the current run
        self.last_error: Optional[tuple[str, str]] = None  # (message, hint)
        self.last_message: str = ""
        self.last_job_dir: Optional[Path] = None
        self.last_cost: Optional[tuple[float, int, int, int]] = None  # (seconds, steps, frames, size) of the last edit

    @property
    def running(self) -> bool:
        return self.run is not None

    def estimate_s(self, steps: int, frames: int, size: int) -> Optional[float]:
        """Seconds an edit should take, scaled from the last one by steps × frames × size² (0: as then)."""
        if self.last_cost is None:
            return None
        seconds, s0, f0, z0 = self.last_cost
        return seconds * ((steps or s0) * frames * (size or z0) ** 2) / max(s0 * f0 * z0 ** 2, 1)

    def progress(self) -> Optional[dict[str, Any]]:
        """The running edit's one bar over export, backend jobs and import (bar.snapshot); None when idle."""
        if self.run is None:
            return None
        run = self.run
        frames = run.count or (run.exports[0].total if run.exports else 0)
        guess = self.estimate_s(run.params.get("steps") or 0, frames, run.params.get("size") or 0) if frames else None
        return mfbar.snapshot(run, guess)


STATE = State()


# ---- backend -----------------------------------------------------------------------------------

def ensure_client(context: Any, initialize: bool = True) -> mfclient.BackendClient:
    """The running backend, (re)started when it died or the preferences changed. With initialize=False
    it only spawns the process (it imports torch meanwhile); a later call does the handshake."""
    s = preferences.get_settings(context)
    key = (s.python, s.repo, s.models_dir, s.device, s.precision, s.threads)
    if STATE.client is not None and (not STATE.client.alive or STATE.client_key != key):
        STATE.client.close(timeout=5)
        STATE.client = None
    if STATE.client is None:
        if not s.python:
            raise mfclient.BackendError("no backend Python configured",
                                        hint="run install.py, or set the backend Python in the add-on preferences")
        log = str(results.scratch_root(s.jobs_dir) / "backend.log")
        STATE.client = mfclient.BackendClient(s.python, repo=s.repo, models_dir=s.models_dir, device=s.device,
                                              precision=s.precision, log_path=log, threads=s.threads).start()
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
    if STATE.client is not None:
        if STATE.run is not None and STATE.run.job is not None:
            STATE.client.kill()
        STATE.client.close(timeout=5)
    STATE.client = None


# ---- one edit ------------------------------------------------------------------------------------

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "strip"


def begin_edit(context: Any, source: Optional[str] = None, preview: bool = False,
               position: tuple[int, int] = (1, 1)) -> EditRun:
    """Check the strips and folders, create the job folder, spawn the backend (it imports torch while
    the strips export) and set up both exports. Nothing is rendered yet: `advance` does the work.
    preview: the first PREVIEW_FRAMES frames, PREVIEW_STEPS steps, at most PREVIEW_SIZE px, one seed.
    position: (k, n), the queue's k-th source of n (the progress label)."""
    scene = strips.vse_scene(context)
    mf = scene.motionfollower
    source = inputs.sources(context)[0] if source is None else source
    inputs.check_pair(scene, source, mf.driving_strip)
    frame_range = (mf.frame_start, mf.frame_end + 1) if mf.use_frame_range else None
    if preview:
        first, end = strips.content_range(strips.find_strip(scene, source))
        first, end = (max(first, frame_range[0]), min(end, frame_range[1])) if frame_range else (first, end)
        frame_range = (first, min(end, first + PREVIEW_FRAMES))

    settings = preferences.get_settings(context)
    root = results.scratch_root(settings.jobs_dir)
    try:
        if bpy.data.filepath:  # fail now, not after a long edit, when the project folder is read-only
            results.check_writable(Path(bpy.data.filepath).resolve().parent / results.RESULTS)
        results.clean_stale(root)
        job_dir = results.new_job_dir(root, _safe(source))
    except results.PlaceError as exc:
        raise UserError(str(exc), "save the .blend in a folder you can write to, or set a writable job folder "
                                  "in the add-on preferences") from exc
    STATE.last_job_dir = job_dir
    seeds = [mf.seed + k for k in range(1 if preview else mf.variations)]
    run = EditRun(scene.name, source, mf.driving_strip, job_dir, 0, 0,
                  {**properties.job_params(mf), "source": str(job_dir / "source"), "driving": str(job_dir / "driving"),
                   "seed": seeds[0], "out": str(job_dir / f"edited_s{seeds[0]}")}, seeds=seeds[1:],
                  settings=properties.settings_of(mf), preview=preview,
                  jobs_planned=2 if preview else len(seeds), position=position)
    if preview:
        official = (STATE.backend_info or {}).get("weights", {}).get("official_model")
        run.params["steps"] = min(run.params.get("steps") or PREVIEW_STEPS, PREVIEW_STEPS)
        if run.params.get("size") or official:
            run.params["size"] = min(run.params.get("size") or PREVIEW_SIZE, PREVIEW_SIZE)
    try:
        ensure_client(context, initialize=False)
        run.exports.append(strips.StripExport(scene, source, job_dir / "source", frame_range))
        # the driving strip only gives poses: 8-bit PNG whatever its media
        run.exports.append(strips.StripExport(scene, mf.driving_strip, job_dir / "driving", keep_depth=False))
    except BaseException:
        abort_edit(run)
        raise
    for e in run.exports:
        if e.dropped:
            run.warnings.append(f"'{e.strip_name}': animation of {', '.join(e.dropped)} is not exported")
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
        run.exported_at = run.exported_at or time.monotonic()
        if run.handshake is None:
            src, drv = (e.finish() for e in run.exports)
            run.first_frame, run.count = src["first"], src["count"]
            run.params["advanced"].update(source_fps=src["fps"], driving_fps=drv["fps"],
                                          input_colorspace=src["colorspace"])
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
        run.job = STATE.client.start_job("edit", run.params, job_id=f"{run.job_dir.name}_s{run.params['seed']}")
    except BaseException:
        if run.handshake is not None and STATE.backend_info is None and STATE.client is not None:
            STATE.client.kill()  # a backend that fails its handshake is not reused
            STATE.client = None
        abort_edit(run)
        raise


def abort_edit(run: EditRun) -> None:
    """Drop an edit: the temporary scenes and the job folder go, all but results already on the timeline."""
    for export in run.exports:
        export.close()
    results.discard_job(run.job_dir, run.placed)


def start_edit(context: Any) -> EditRun:
    """begin_edit + advance to the started job, in one blocking call (scripts and `blender -b`)."""
    run = begin_edit(context)
    advance(run)
    return run


def request_cancel(run: EditRun, everything: bool = False) -> None:
    """Cancel: before the job starts, the next tick drops the run; after, the backend is asked to stop
    after its current step. The queue goes on with the next source unless `everything`."""
    if everything:
        STATE.queue = []
    if run.cancel_requested_at is not None:
        return
    run.cancel_requested_at = time.monotonic()
    if run.job is not None and STATE.client is not None:
        STATE.client.request_cancel(run.job)


def tick(run: EditRun) -> None:
    """Kill the backend tree when a cancel was not honoured within the job's grace period."""
    if (run.cancel_requested_at is not None and run.job is not None and not run.job.finished
            and time.monotonic() - run.cancel_requested_at > run.job.cancel_grace_s and STATE.client):
        STATE.client.kill()


def _place(run: EditRun, folder: Path, name: str) -> Path:
    """A finished result folder: next to the .blend; unsaved, it stays in the job folder until the first save
    (and is kept there if a later job of the run is cancelled or fails: `run.placed`)."""
    if bpy.data.filepath:
        return results.place(folder, results.result_dir(bpy.data.filepath, name))
    run.placed.append(folder)
    return folder


def _import(run: EditRun, scene: Any, folder: Path, what: str, meta: dict[str, Any],
            output: Optional[dict[str, Any]] = None) -> tuple[Any, str]:
    """`output`: the edit result's description of its files (format, colour space; docs/footage.md)."""
    strip = strips.import_frames(scene, folder, f"{run.source} ({what})", run.source, run.first_frame, meta, output)
    results.point_strip(strip, folder)
    n = strip.frame_final_duration
    return strip, (f"MotionFollower: added '{strip.name}' on channel {strip.channel}, {n} frames"
                   + ("" if n == run.count else f" (the source range has {run.count})"))


def finish_edit(run: EditRun) -> tuple[Optional[bool], str]:
    """Import the job's result (success) or clean up (failure). Returns (ok, message); ok is None when
    another job has started on the same exported frames (the next variation, or a preview's poses and
    masks): keep polling run.job."""
    assert run.job is not None and run.job.finished
    job = run.job
    if job.error is not None:
        results.discard_job(run.job_dir, run.placed)
        if run.cancel_requested_at is not None:
            return False, "MotionFollower: cancelled"
        raise UserError(f"MotionFollower failed: {job.error.message}", job.error.hint)
    scene = bpy.data.scenes.get(run.scene_name)
    seed, result = run.params["seed"], job.result or {}
    try:
        if scene is None:
            raise UserError(f"scene '{run.scene_name}' is gone", "keep the scene open while an edit runs")
        if job.method == "prepare":  # a preview's poses and masks
            messages = [_import(run, scene, _place(run, Path(result["folders"][sub]), f"{run.job_dir.name}_{what}"),
                                f"MotionFollower preview {what}", {"source": run.source})[1]
                        for sub, what in (("target_aligned_poses", "poses"), ("predicted_masks", "masks"))]
            message = "; ".join(messages)
        else:
            out = _place(run, Path(result.get("out") or run.params["out"]), f"{run.job_dir.name}_s{seed}")
            if result.get("steps") and result.get("size") and result.get("frames"):
                STATE.last_cost = (time.monotonic() - job.started, int(result["steps"]), int(result["frames"]),
                                   int(result["size"]))
            meta = {k: run.params[k] for k in ("seed", "steps", "guidance_scale", "size") if k in run.params}
            meta.update({k: result[k] for k in ("steps", "size") if k in result})  # the values used
            meta.update(source=run.source, driving=run.driving, model=str(result.get("model", run.params.get("model"))))
            for note in [result.get("notice")] + list(result.get("warnings") or []):  # e.g. unknown params keys
                if note and str(note) not in run.warnings:
                    run.warnings.append(str(note))
            strip, message = _import(run, scene, out, f"MotionFollower{' preview' if run.preview else ''} seed {seed}", meta,
                                     result.get("output"))
            strip[SETTINGS_KEY] = json.dumps({**run.settings, "source_strip": run.source, "seed": seed,
                                              "variations": 1, "queue_selected": False})
            nxt = None if run.cancel_requested_at is not None else (
                ("prepare", {**run.params, "out": str(run.job_dir / "prepared")}) if run.preview else
                ("edit", {**run.params, "seed": run.seeds[0], "out": str(run.job_dir / f"edited_s{run.seeds[0]}")})
                if run.seeds else None)
            if nxt is not None:  # the next job on the same exported frames
                run.job_times.append(time.monotonic() - job.started)
                run.seeds = run.seeds[1:]
                run.params = nxt[1] if nxt[0] == "edit" else run.params
                run.job = STATE.client.start_job(nxt[0], nxt[1], job_id=f"{run.job_dir.name}_{nxt[0]}_{nxt[1]['seed']}")
                return None, message
    except BaseException:
        results.discard_job(run.job_dir, run.placed)
        raise
    for sub in ("source", "driving") if not scene.motionfollower.keep_inputs else ():
        shutil.rmtree(run.job_dir / sub, ignore_errors=True)
    if bpy.data.filepath and not scene.motionfollower.keep_inputs:
        shutil.rmtree(run.job_dir, ignore_errors=True)
    return True, message + ("; " + "; ".join(run.warnings) if run.warnings else "")


def drop_run() -> None:
    """Stop whatever runs now, at once (file load, add-on disable): kill the backend, clean up."""
    run, STATE.run, STATE.queue = STATE.run, None, []
    if run is None:
        return
    if run.job is not None and not run.job.finished and STATE.client is not None:
        STATE.client.kill()
    abort_edit(run)


# ---- handlers ------------------------------------------------------------------------------------

@persistent
def _on_load_pre(*_args: Any) -> None:
    if STATE.run is not None:
        drop_run()
        STATE.last_message = "MotionFollower: the edit was cancelled because another file was opened"


@persistent
def _on_save_pre(filepath: str = "", *_args: Any) -> None:
    target = filepath or bpy.data.filepath
    if target:
        results.adopt_unsaved_results(target, results.scratch_root(preferences.get_settings().jobs_dir))


HANDLERS = (("load_pre", _on_load_pre), ("save_pre", _on_save_pre))


def register() -> None:
    for name, fn in HANDLERS:
        getattr(bpy.app.handlers, name).append(fn)
    try:
        results.clean_stale(results.scratch_root(preferences.get_settings().jobs_dir))
    except Exception as exc:  # noqa: BLE001 - a cleanup problem must not stop the add-on from loading
        print(f"MotionFollower: could not clean old job folders: {exc}")


def unregister() -> None:
    drop_run()
    stop_backend()
    for name, fn in HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if fn in handlers:
            handlers.remove(fn)
