"""Submit to Flamenco: the panel's settings as a job of the `motionfollower` job type
(integrations/flamenco/motionfollower.js), sent to the Flamenco Manager set in the preferences.

The farm reads the strips' own media files, so both strips must be movie or image strips on storage
the workers share; the result goes to `motionfollower/<source>_farm/edited/` beside the saved .blend
(unsaved: beside the source clip), where the workers write. The job is always written there first as
`flamenco_job.json` (the body of the Manager's `POST /api/v3/jobs`), so it can be submitted by hand
when no Manager is set (docs/flamenco.md).
"""

from __future__ import annotations

import getpass
import json
import platform
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import bpy

from . import preferences, properties, results, strips, ui

JOB_TYPE = "motionfollower"
FARM_TIMINGS = ("hold-last", "loop", "stretch")  # policies that edit every frame of the range (chunkable)
TIMEOUT_S = 10.0


class SubmitError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def _media(scene: Any, name: str, role: str) -> tuple[Any, str]:
    """A strip and the media file (movie) or frame folder (images) the farm reads."""
    strip = strips.find_strip(scene, name) if name else None
    if strip is None:
        raise SubmitError(f"{role} strip '{name}' not found" if name else f"no {role} strip",
                          f"pick the {role} strip in the MotionFollower panel")
    if strip.type == "MOVIE":
        return strip, bpy.path.abspath(strip.filepath)
    if strip.type == "IMAGE":
        return strip, bpy.path.abspath(strip.directory)
    raise SubmitError(f"{role} strip '{name}' is a {strip.type.lower()} strip; the farm reads media files",
                      "use a movie or image strip (render this one to a movie first)")


def job_settings(context: Any) -> dict[str, Any]:
    """The job type's settings from the panel and the strips."""
    scene = strips.vse_scene(context)
    mf = scene.motionfollower
    source_name = mf.source_strip or (scene.sequence_editor.active_strip.name
                                      if scene.sequence_editor and scene.sequence_editor.active_strip else "")
    source, source_path = _media(scene, source_name, "source")
    _, driving_path = _media(scene, mf.driving_strip, "driving")
    if mf.timing not in FARM_TIMINGS:
        raise SubmitError(f"timing '{mf.timing}' can leave frames unedited, which chunks cannot share",
                          "choose Hold last, Loop or Stretch for a farm job")
    first, end = strips.visible_range(source)  # timeline [first, end); media frame 0 sits at frame_start
    if mf.use_frame_range:
        first, end = max(first, mf.frame_start), min(end, mf.frame_end + 1)
    if end <= first:
        raise SubmitError("the frame range does not overlap the source strip", "check Limit frame range")
    offset = int(source.frame_start)
    # results beside the saved .blend, as for local edits; unsaved: beside the source clip (workers reach both)
    job_dir = results.result_dir(bpy.data.filepath or source_path, f"{_safe(source_name)}_farm")
    params = properties.job_params(mf)
    # the CLI has one flag per field, the advanced group's included (--checkpoint, --w-fg ...)
    flat = {**{k: v for k, v in params.items() if k != "advanced"}, **params["advanced"]}
    edit_flags = {k: v for k, v in flat.items() if k not in ("model", "steps", "seed", "size", "timing", "pose_extractor")}
    return {
        "source": source_path, "driving": driving_path, "output": str(job_dir / "edited"),
        "frame_start": first - offset, "frame_end": end - 1 - offset,
        "model": params["model"], "steps": mf.steps, "seed": mf.seed, "size": mf.size, "timing": mf.timing,
        "prepare_args": "--pose-extractor decode" if mf.driving_is_pose else "",
        "edit_args": " ".join(_flag(k, v) for k, v in edit_flags.items()),
    }


def _flag(key: str, value: Any) -> str:
    """A JobParams field as the backend CLI spells it (--camera / --no-camera for booleans)."""
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "strip"


def submitted_job(context: Any) -> dict[str, Any]:
    """The body of the Manager's POST /api/v3/jobs (a SubmittedJob of Flamenco's API)."""
    settings = job_settings(context)
    blend = Path(bpy.data.filepath).stem if bpy.data.filepath else "untitled"
    return {"name": f"{blend} {Path(settings['source']).stem} motion edit", "type": JOB_TYPE, "priority": 50,
            "submitter_platform": platform.system().lower(), "settings": settings,
            "metadata": {"user.name": getpass.getuser(), "project": blend}}


def submit(job: dict[str, Any], manager_url: str) -> dict[str, Any]:
    """POST the job to the Manager → its reply (the stored job, with its id)."""
    url = manager_url.rstrip("/") + "/api/v3/jobs"
    req = urllib.request.Request(url, data=json.dumps(job).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as reply:
            return json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except (ValueError, AttributeError):
            pass
        raise SubmitError(f"the Flamenco Manager refused the job ({exc.code}): {detail}",
                          "is integrations/flamenco/motionfollower.js in the Manager's scripts/ folder?") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SubmitError(f"could not reach the Flamenco Manager at {manager_url} ({reason})",
                          "check that it runs and the URL in the add-on preferences") from exc


class MOTIONFOLLOWER_OT_submit_flamenco(bpy.types.Operator):
    """Send this edit to the Flamenco render farm (the Manager URL is set in the add-on preferences)"""

    bl_idname = "motionfollower.submit_flamenco"
    bl_label = "Submit to Flamenco"

    def execute(self, context):
        try:
            job = submitted_job(context)
            out = Path(job["settings"]["output"]).parent
            out.mkdir(parents=True, exist_ok=True)
            path = out / "flamenco_job.json"
            path.write_text(json.dumps(job, indent=2))
            prefs = preferences.addon_prefs(context)
            url = prefs.flamenco_manager.strip() if prefs else ""
            if not url:
                raise SubmitError(f"no Flamenco Manager set: the job was saved to {path}",
                                  "set the Flamenco Manager URL in the add-on preferences, or POST that file "
                                  "to <manager>/api/v3/jobs")
            reply = submit(job, url)
        except SubmitError as exc:
            self.report({"ERROR"}, f"{exc.message} — {exc.hint}" if exc.hint else exc.message)
            return {"CANCELLED"}
        self.report({"INFO"}, f"Submitted to Flamenco as job {reply.get('id', '?')}: frames go to "
                              f"{job['settings']['output']}")
        return {"FINISHED"}


class SEQUENCER_PT_motionfollower_flamenco(ui.SidebarPanel, bpy.types.Panel):
    bl_label = "Render farm"
    bl_parent_id = ui.SEQUENCER_PT_motionfollower.bl_idname
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        prefs = preferences.addon_prefs(context)
        url = prefs.flamenco_manager if prefs else ""
        self.layout.label(text=f"Manager: {url}" if url else "No Flamenco Manager set (preferences)", icon="NETWORK_DRIVE")
        self.layout.operator(MOTIONFOLLOWER_OT_submit_flamenco.bl_idname, icon="EXPORT")


CLASSES = (MOTIONFOLLOWER_OT_submit_flamenco, SEQUENCER_PT_motionfollower_flamenco)


register, unregister = bpy.utils.register_classes_factory(CLASSES)  # Blender's own (un)register-in-order
