"""The Blender add-on in real bpy (5.0.1): registration, export, import, panel, operator, real backend.

The edit runs against the real backend subprocess (`python -m mf_backend serve`) with a tiny model,
exactly as Blender would start it.
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="bpy (Blender as a module) is not installed: install.py installs it")
import addon_utils  # noqa: E402  (ships with bpy)
import cv2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZE = 64  # scene resolution
N = 8  # frames per clip


# ---- fixtures ----------------------------------------------------------------------------------

def write_movie(path: Path, n: int, base: tuple[int, int, int], fps: float = 24) -> Path:
    """A 64×64 clip whose frame i shows a white bar at x = 4i..4i+12 (so frames can be told apart)."""
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (SIZE, SIZE))
    for i in range(n):
        f = np.zeros((SIZE, SIZE, 3), np.uint8)
        f[:] = base
        f[16:48, i * 4:i * 4 + 12] = 255
        vw.write(f)
    vw.release()
    return path


def bar_position(png: Path) -> float:
    img = cv2.imread(str(png))
    cols = np.where(img[32].min(axis=1) > 200)[0]
    return float(cols.min())


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "backend_config.json"  # the backend runs this checkout's code
    cfg.write_text(json.dumps({"python": sys.executable, "repo": str(REPO)}))
    saved = os.environ.get("MF_BACKEND_CONFIG")
    os.environ["MF_BACKEND_CONFIG"] = str(cfg)
    mod = addon_utils.enable("blender_addon", default_set=True)
    assert mod is not None, "the add-on did not register"
    prefs = bpy.context.preferences.addons["blender_addon"].preferences
    prefs.python = sys.executable
    prefs.jobs_dir = str(tmp_path_factory.mktemp("jobs"))
    yield mod
    mod.run.stop_backend()
    if saved is None:
        os.environ.pop("MF_BACKEND_CONFIG", None)
    else:
        os.environ["MF_BACKEND_CONFIG"] = saved


@pytest.fixture
def scene(addon, tmp_path):
    """A fresh scene with a source movie (channel 2, frames 10..17) and a driving movie (channel 5)."""
    sc = bpy.data.scenes.new(f"test-{tmp_path.name}")
    bpy.context.window.scene = sc
    sc.render.resolution_x = sc.render.resolution_y = SIZE
    sc.render.resolution_percentage = 50  # the export must not depend on the preview percentage
    sc.render.fps, sc.render.fps_base = 24, 1.0
    sc.view_settings.view_transform = "AgX"  # the export must force Standard on its own copy only
    sc.frame_start, sc.frame_end, sc.frame_current = 1, 40, 13
    ed = sc.sequence_editor_create()
    ed.strips.new_movie("source", str(write_movie(tmp_path / "src.avi", N, (40, 40, 200))), channel=2, frame_start=10)
    ed.strips.new_movie("driving", str(write_movie(tmp_path / "drv.avi", N, (40, 200, 40))), channel=5, frame_start=10)
    mf = sc.motionfollower
    mf.source_strip, mf.driving_strip = "source", "driving"
    mf.size, mf.steps, mf.seed = 64, 1, 1  # 64: the tiny model's smallest working size
    yield sc
    addon.run.STATE.run = None
    addon.run.STATE.last_error = None
    bpy.data.scenes.remove(sc)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A tiny random-weight model folder in our own layout (fast on CPU; the pipeline shape is real)."""
    from mf_backend.models.loading import build_models, save_models

    folder = tmp_path_factory.mktemp("model") / "tiny"
    save_models(build_models("tiny", seed=0), folder)
    return str(folder)


def person_clips(sc, tmp_path: Path) -> None:
    """Replace the bar clips by a synthetic person (movie) and a driver's pose renders (image strip)."""
    from mf_backend.pose.render import render_poses
    from mf_backend.synthetic.pair import make_pair

    pair = make_pair(seed=3, frames=N, size=SIZE)
    src = tmp_path / "person.avi"
    vw = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 24, (SIZE, SIZE))
    for f in pair.source.frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    poses = tmp_path / "poses"
    poses.mkdir()
    for k, f in enumerate(render_poses(pair.driving.poses)):
        cv2.imwrite(str(poses / f"pose_{k:03d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    coll = sc.sequence_editor.strips
    for name in ("source", "driving"):
        coll.remove(coll[name])
    coll.new_movie("source", str(src), channel=2, frame_start=10)
    d = coll.new_image("driving", str(poses / "pose_000.png"), channel=5, frame_start=10)
    for k in range(1, N):
        d.elements.append(f"pose_{k:03d}.png")
    d.frame_final_duration = N
    sc.motionfollower.driving_is_pose = True


def snapshot(sc) -> dict:
    """Everything of the user's scene that an edit must leave alone."""
    strips = {s.name: (s.type, s.channel, s.frame_start, s.frame_final_start, s.frame_final_end,
                       s.frame_offset_start, s.frame_offset_end, s.mute, s.select)
              for s in sc.sequence_editor.strips_all}
    v, r = sc.view_settings, sc.render
    return {"strips": strips, "view": (v.view_transform, v.look, v.exposure, v.gamma),
            "render": (r.filepath, r.image_settings.file_format, r.resolution_x, r.resolution_percentage, r.fps),
            "frames": (sc.frame_start, sc.frame_end, sc.frame_current),
            "data": (len(bpy.data.scenes), len(bpy.data.images), len(bpy.data.objects), len(bpy.data.movieclips)),
            "prefetch": sc.sequence_editor.use_prefetch}


def edited_strips(sc) -> list:
    return [s for s in sc.sequence_editor.strips_all if "(MotionFollower" in s.name]


# ---- registration, export, import ----------------------------------------------------------------

def test_registers_panel_operators_and_scene_settings(addon):
    assert hasattr(bpy.types, "SEQUENCER_PT_motionfollower")
    for op in ("edit", "cancel", "check_backend", "stop_backend", "copy_error"):
        assert hasattr(bpy.ops.motionfollower, op)
    from blender_addon.properties import job_params

    mf = bpy.context.scene.motionfollower
    p = job_params(mf)
    assert {"seed", "guidance_scale", "camera", "model", "advanced"} <= set(p)
    assert set(p["advanced"]) == {"checkpoint", "compile"}  # weights at their defaults: the backend's exact ones
    assert "steps" not in p and "size" not in p  # 0 by default: the backend uses the model's own
    mf.steps, mf.size = 30, 256
    assert (job_params(mf)["steps"], job_params(mf)["size"]) == (30, 256)
    mf.steps = mf.size = 0
    from mf_backend.params import JobParams  # the add-on's settings are valid backend params

    assert not JobParams.from_dict({**p, "source": "s", "driving": "d", "out": "o"}).warnings  # nothing deprecated
    assert (p["advanced"]["checkpoint"], p["advanced"]["compile"]) == ("auto", "none")
    for memory, checkpoint in (("none", "none"), ("hires", "hires"), ("low", "low-memory")):
        mf.memory = memory
        jp = JobParams.from_dict({**job_params(mf), "source": "s", "driving": "d", "out": "o"})
        assert jp.advanced.checkpoint == checkpoint
    mf.memory, mf.compile, mf.w_body = "auto", True, 0.0
    jp = JobParams.from_dict({**job_params(mf), "source": "s", "driving": "d", "out": "o"})
    assert jp.advanced.compile == "blocks" and jp.advanced.w_body == 0.0 and jp.advanced.w_over is None
    mf.compile, mf.w_body = False, 6.0
    from blender_addon.properties import apply_settings  # a strip made before 0.2: use_body off -> w_body 0

    assert apply_settings(mf, {"use_body": False, "w_body": 6.0, "use_fg": True}) == [] and mf.w_body == 0.0
    mf.w_body = 6.0


def test_export_respects_trims_and_leaves_the_scene_alone(scene, tmp_path):
    from blender_addon import strips

    src = scene.sequence_editor.strips["source"]
    src.frame_offset_start, src.frame_offset_end = 2, 1  # visible: media frames 2..6 at timeline 12..16
    before = snapshot(scene)
    info = strips.export_strip(scene, "source", tmp_path / "exp")
    assert info == {"first": 12, "count": 5, "fps": 24.0, "width": SIZE, "height": SIZE,
                    "depth": "8", "colorspace": "sRGB"}
    files = strips.frame_files(tmp_path / "exp")
    assert [f.name for f in files] == [f"frame_{k}.png" for k in range(5)]
    assert cv2.imread(str(files[0])).shape == (SIZE, SIZE, 3)  # full resolution despite the 50 % preview
    assert [bar_position(f) for f in files] == pytest.approx([4.0 * (k + 2) for k in range(5)], abs=1.5)
    # only the strip itself was rendered: the driving strip above it (green) is not in the frames
    assert cv2.imread(str(files[0]))[5, 5, 1] < 100
    assert snapshot(scene) == before
    # a frame range limits the export
    info = strips.export_strip(scene, "source", tmp_path / "exp2", frame_range=(14, 16))
    assert (info["first"], info["count"]) == (14, 2)


def test_export_uses_standard_view_transform(scene, tmp_path):
    from blender_addon import strips

    img = np.full((SIZE, SIZE, 3), (30, 128, 220), np.uint8)
    for k in range(3):
        cv2.imwrite(str(tmp_path / f"still_{k}.png"), img)
    s = scene.sequence_editor.strips.new_image("stills", str(tmp_path / "still_0.png"), channel=7, frame_start=30)
    for k in (1, 2):
        s.elements.append(f"still_{k}.png")
    s.frame_final_duration = 3
    strips.export_strip(scene, "stills", tmp_path / "exp")
    out = cv2.imread(str(tmp_path / "exp" / "frame_0.png"))
    # sRGB in, Standard out: the pixels come back unchanged (AgX would shift them by tens of levels)
    assert np.abs(out.astype(int) - img).max() <= 2
    assert scene.view_settings.view_transform == "AgX"


def test_import_goes_on_the_first_free_channel_above_the_source(scene, tmp_path):
    from blender_addon import strips

    ed = scene.sequence_editor
    ed.strips.new_effect("blocker", type="COLOR", channel=3, frame_start=15, length=5)  # overlaps the source
    ed.strips.new_effect("elsewhere", type="COLOR", channel=4, frame_start=30, length=5)  # does not
    folder = tmp_path / "edited"
    folder.mkdir()
    for k in range(12):  # frame_10 must come after frame_9
        cv2.imwrite(str(folder / f"frame_{k}.png"), np.full((SIZE, SIZE, 3), k * 10, np.uint8))
    s = strips.import_frames(scene, folder, "source (MotionFollower)", "source", 10, {"seed": 7})
    assert (s.type, s.channel, s.frame_final_start, s.frame_final_duration) == ("IMAGE", 4, 10, 12)
    assert [e.filename for e in s.elements] == [f"frame_{k}.png" for k in range(12)]
    assert s.colorspace_settings.name == "sRGB" and s["motionfollower_seed"] == 7
    assert Path(bpy.path.abspath(s.directory)) == folder


# ---- panel ---------------------------------------------------------------------------------------

ICONS = set(bpy.types.UILayout.bl_rna.functions["prop"].parameters["icon"].enum_items.keys())


def check_call(func: str, kw: dict) -> None:
    """The keyword arguments and icon must be ones the real UILayout accepts (a typo raises in Blender)."""
    params = bpy.types.UILayout.bl_rna.functions[func].parameters
    assert set(kw) <= set(params.keys()), f"{func}() has no argument {set(kw) - set(params.keys())}"
    assert kw.get("icon", "NONE") in ICONS, f"no icon {kw['icon']!r}"


def _geometric(params: dict) -> dict:
    """The add-on's job params with the geometric M_e predictor (no CPU training in tests)."""
    return {**params, "advanced": {**params["advanced"], "mask_predictor": "geometric"}}


class FakeLayout:
    """Records draw calls and checks that every property, operator, argument and icon the panel uses exists."""

    def __init__(self, log: list):
        self.log = log
        self.active = True
        self.scale_y = 1.0

    def _sub(self, *a, **k):
        return FakeLayout(self.log)

    row = column = box = split = _sub

    def prop(self, data, name, **kw):
        check_call("prop", kw)
        assert name in data.bl_rna.properties, f"no property {name!r} on {data}"
        self.log.append(("prop", name))

    def prop_search(self, data, name, search_data, search_name, **kw):
        check_call("prop_search", kw)
        assert name in data.bl_rna.properties, f"no property {name!r} on {data}"
        assert search_name in search_data.bl_rna.properties, f"no collection {search_name!r} on {search_data}"
        self.log.append(("prop", name))

    def operator(self, idname, **kw):
        check_call("operator", kw)
        cat, op = idname.split(".")
        assert hasattr(getattr(bpy.ops, cat), op), idname
        self.log.append(("operator", idname))
        return types.SimpleNamespace()  # operator properties are set on it

    def label(self, text="", **kw):
        check_call("label", kw)
        self.log.append(("label", text))

    def progress(self, factor=0.0, type="BAR", text=""):
        check_call("progress", {"factor": factor, "type": type, "text": text})
        assert 0.0 <= factor <= 1.0
        self.log.append(("progress", factor, text))


def draw_panel(name: str = "SEQUENCER_PT_motionfollower") -> list:
    log: list = []
    panel = type("P", (), {"layout": FakeLayout(log)})()
    getattr(bpy.types, name).draw(panel, bpy.context)
    return log


def test_panel_draws_idle_running_and_failed(scene, addon, monkeypatch):
    from blender_addon import bar, client
    from blender_addon import run as mfrun

    monkeypatch.setattr(mfrun.STATE, "last_cost", None)  # no earlier edit to estimate the job from

    log = draw_panel()
    assert ("operator", "motionfollower.edit") in log and ("prop", "w_body") not in log
    advanced = bpy.types.SEQUENCER_PT_motionfollower_advanced  # a sub-panel, closed until opened
    assert advanced.bl_parent_id == "SEQUENCER_PT_motionfollower" and "DEFAULT_CLOSED" in advanced.bl_options
    assert {("prop", "w_body"), ("prop", "memory"), ("prop", "compile")} <= set(draw_panel(advanced.__name__))
    assert not any(e[0] == "progress" for e in log)

    job = client.Job(job_id="j", method="edit", request_id=1, started=time.monotonic() - 25)  # 25 s in, 75 s to go
    job._progress({"stage": "editing", "done": 3, "total": 10, "fraction": 0.42, "eta_s": 75, "message": "step 3/10"})
    mfrun.STATE.run = mfrun.EditRun("s", "source", "driving", Path("/nonexistent"), 10, N, {}, job=job)
    log = draw_panel()
    bars = [e for e in log if e[0] == "progress"]
    assert bars and bars[0][1] == pytest.approx(0.25, abs=0.01) and "editing 3/10" in bars[0][2] and "1:15" in bars[0][2]
    assert ("operator", "motionfollower.cancel") in log and ("operator", "motionfollower.edit") not in log
    # still exporting: 3 of 16 frames rendered, the queue's second strip of 3, two variations to run; with
    # nothing measured of the backend each job is guessed at JOB_PER_EXPORT × the export
    mfrun.STATE.run = mfrun.EditRun("s", "source", "driving", Path("/nonexistent"), 10, N, {}, jobs_planned=2,
                                    position=(2, 3))
    mfrun.STATE.run.exports = [types.SimpleNamespace(done=3, total=8), types.SimpleNamespace(done=0, total=8)]
    log = draw_panel()
    bars = [e for e in log if e[0] == "progress"]
    assert bars and bars[0][1] == pytest.approx(3 / 16 / (1 + 2 * bar.JOB_PER_EXPORT)) and "export 3/16" in bars[0][2]
    assert "estimating" in bars[0][2]  # a guess moves the bar but promises no time
    assert ("label", "strip 2 of 3 · variation 1 of 2") in log
    mfrun.STATE.run.exports[0].done = mfrun.STATE.run.exports[1].done = 8  # all rendered, waiting for the backend's handshake
    assert [e for e in draw_panel() if e[0] == "progress"][0][2].startswith("starting")

    mfrun.STATE.run = None
    mfrun.STATE.last_error = ("MotionFollower failed: out of memory", "use a lower resolution")
    log = draw_panel()
    assert ("label", "use a lower resolution") in log and ("operator", "motionfollower.copy_error") in log


def test_check_backend_and_preferences_panel(addon, tmp_path):
    from blender_addon import preferences

    from blender_addon import run as mfrun

    prefs = bpy.context.preferences.addons["blender_addon"].preferences
    prefs.threads = 1
    assert bpy.ops.motionfollower.check_backend() == {"FINISHED"}
    assert mfrun.STATE.backend_info["settings"]["threads"] == 1  # the preference reached the backend
    prefs.threads = 0
    report = list(preferences.CHECK_REPORT)
    assert report[0].startswith("Backend ") and "torch" in report[0]
    assert any(line.startswith("Models folder") for line in report)
    log: list = []
    fake = type("Prefs", (), {"layout": FakeLayout(log), "bl_rna": prefs.bl_rna, "python": prefs.python})()
    preferences.MotionFollowerPreferences.draw(fake, bpy.context)
    assert ("operator", "motionfollower.check_backend") in log and ("label", report[0]) in log

    good = prefs.python
    prefs.python = str(tmp_path / "missing-python")
    try:
        with pytest.raises(RuntimeError, match="backend Python not found"):
            bpy.ops.motionfollower.check_backend()
        assert preferences.CHECK_REPORT[0].startswith("ERROR") and "install.py" in preferences.CHECK_REPORT[1]
    finally:
        prefs.python = good


# ---- the operator against the real backend -------------------------------------------------------

def test_operator_reports_a_missing_strip_and_changes_nothing(scene, addon):
    scene.motionfollower.driving_strip = "nope"
    before = snapshot(scene)
    jobs = set(os.listdir(addon.preferences.get_settings().jobs_dir))
    with pytest.raises(RuntimeError, match="driving strip 'nope' not found"):
        bpy.ops.motionfollower.edit()
    assert snapshot(scene) == before
    assert set(os.listdir(addon.preferences.get_settings().jobs_dir)) == jobs
    assert addon.run.STATE.last_error[1]  # a hint for the panel


def test_killed_backend_surfaces_the_error_and_adds_nothing(scene, addon, small_model, tmp_path):
    """Kill the backend mid-job (as the OOM killer would): error, nothing added, job folder gone."""
    from blender_addon import run as mfrun

    person_clips(scene, tmp_path)
    mf = scene.motionfollower
    mf.model, mf.model_folder = "folder", small_model
    mf.steps = 50  # long enough to be killed in the middle
    before = snapshot(scene)
    killed = {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run = mfrun.STATE.run
            if run is not None and run.job is not None and run.job.snapshot()["stage"] != "starting":
                killed.update(stage=run.job.snapshot()["stage"], job_dir=run.job_dir)
                os.killpg(mfrun.STATE.client.pid, signal.SIGKILL)  # as the OOM killer would
                return
            time.sleep(0.01)

    t = threading.Thread(target=killer)
    t.start()
    with pytest.raises(RuntimeError, match="backend stopped"):
        bpy.ops.motionfollower.edit()
    t.join()
    assert killed, "the job ended before any progress arrived"
    assert snapshot(scene) == before and not edited_strips(scene)
    assert not killed["job_dir"].exists()
    assert "backend stopped" in mfrun.STATE.last_error[0] and mfrun.STATE.run is None
    assert not mfrun.STATE.client.alive  # the next run starts a new backend (the modal test below does)



class FakeEvent:
    def __init__(self, type_: str, value: str = "PRESS"):
        self.type, self.value = type_, value


def test_modal_path_esc_cancels_through_the_backend(scene, addon, tmp_path, small_model, monkeypatch):
    """The UI path: invoke's start, timer ticks updating progress, Esc mid-sampling → cancel → clean stop."""
    from blender_addon import operators, properties
    from blender_addon import run as mfrun

    job_params = properties.job_params
    monkeypatch.setattr(properties, "job_params", lambda mf: _geometric(job_params(mf)))
    person_clips(scene, tmp_path)
    scene.motionfollower.steps = 200
    scene.motionfollower.model, scene.motionfollower.model_folder = "folder", small_model
    before = snapshot(scene)
    reports = []
    op_cls = bpy.types.MOTIONFOLLOWER_OT_edit
    fake_op = type("Op", (), {"_timer": None, "_end": op_cls._end, "_step_done": op_cls._step_done, "_fail": op_cls._fail,
                              "report": lambda self, kind, msg: reports.append((kind, msg))})()
    ctx = type("Ctx", (), {"screen": None, "window_manager": bpy.context.window_manager})()
    ticks = []  # seconds each modal() call held Blender's UI thread

    def modal(event):
        t0 = time.perf_counter()
        r = op_cls.modal(fake_op, ctx, FakeEvent(event))
        ticks.append(time.perf_counter() - t0)
        return r

    mfrun.STATE.run = run = mfrun.begin_edit(bpy.context)
    deadline = time.monotonic() + 120
    while (run.job is None or run.job.snapshot()["stage"] != "editing") and time.monotonic() < deadline:
        assert modal("TIMER") == {"PASS_THROUGH"}
        time.sleep(0.02)
    assert any(e[0] == "progress" for e in draw_panel())  # the panel shows the running job
    stage = run.job.snapshot()["stage"]
    t_esc = time.monotonic()
    modal("ESC")
    assert mfrun.STATE.progress()["stage"] == "cancelling"
    assert "stopping after the current step" in mfrun.STATE.progress()["message"]
    result = None
    while result is None and time.monotonic() < deadline:
        r = modal("TIMER")
        result = None if r == {"PASS_THROUGH"} else r
        time.sleep(0.02)
    print(f"cancel latency (Esc during '{stage}' → run ended, CPU, tiny model, longest step {run.job.step_s:.2f} s): {time.monotonic() - t_esc:.2f} s; "
          f"UI thread: longest modal tick {max(ticks) * 1000:.0f} ms over {len(ticks)} ticks "
          f"(export slice {operators.EXPORT_SLICE_S * 1000:.0f} ms)")
    assert result == {"CANCELLED"} and reports == [({"WARNING"}, "MotionFollower: cancelled")]
    assert run.job.error is not None and run.job.error.cancelled  # the backend honoured the cancel
    assert mfrun.STATE.client.alive  # … so it was not killed and is ready for the next run
    assert mfrun.STATE.client_key is not None
    assert mfrun.STATE.run is None and not run.job_dir.exists()
    assert snapshot(scene) == before



def test_export_in_slices_gives_the_same_frames_and_cleans_up(scene, tmp_path):
    """The UI renders a strip a few frames per timer tick: same files as one call, no scene left behind."""
    from blender_addon import strips

    before = snapshot(scene)
    whole = strips.export_strip(scene, "source", tmp_path / "whole")
    exp = strips.StripExport(scene, "source", tmp_path / "sliced")
    assert strips.TMP_SCENE in bpy.data.scenes  # the copy lives while the export does
    calls = 0
    while not exp.finished:
        calls, left = calls + 1, exp.total - exp.done
        assert exp.render(3) == min(3, left) and exp.frame_s > 0
    assert exp.finish() == whole and calls == 3  # 8 frames as 3 + 3 + 2
    for a, b in zip(strips.frame_files(tmp_path / "whole"), strips.frame_files(tmp_path / "sliced")):
        # pixels, not bytes: Blender stamps each PNG with its render time, which differs under load
        assert a.name == b.name
        assert np.array_equal(cv2.imread(str(a), cv2.IMREAD_UNCHANGED), cv2.imread(str(b), cv2.IMREAD_UNCHANGED))
    assert not (tmp_path / "sliced" / ".render").exists()
    # closed half-way (a cancel): the copy goes, the user's scene is as it was
    exp = strips.StripExport(scene, "source", tmp_path / "half")
    exp.render(2)
    exp.close()
    exp.close()
    assert strips.TMP_SCENE not in bpy.data.scenes and snapshot(scene) == before
    with pytest.raises(strips.ExportError, match="closed"):
        exp.render(1)
    # an undo between two slices takes the copy away: a clear error, not a crash
    exp = strips.StripExport(scene, "source", tmp_path / "undone")
    bpy.data.scenes.remove(bpy.data.scenes[strips.TMP_SCENE])
    with pytest.raises(strips.ExportError, match="was removed"):
        exp.render(1)
    exp.close()
    assert snapshot(scene) == before


def _modal(operators):
    """The operator's modal() and a context with no screen, as Blender's event loop would call them."""
    reports = []
    op_cls = bpy.types.MOTIONFOLLOWER_OT_edit
    fake_op = type("Op", (), {"_timer": None, "_end": op_cls._end, "_step_done": op_cls._step_done, "_fail": op_cls._fail,
                              "report": lambda self, kind, msg: reports.append((kind, msg))})()
    ctx = type("Ctx", (), {"screen": None, "window_manager": bpy.context.window_manager})()
    return (lambda event: op_cls.modal(fake_op, ctx, FakeEvent(event))), reports


def test_modal_path_renders_a_frame_per_tick_then_edits(scene, addon, small_model, monkeypatch):
    """invoke() only sets up; every timer tick renders what fits its slice (here one frame), then the
    handshake and the job run while the UI keeps ticking; the result lands on the timeline."""
    from blender_addon import operators, strips
    from blender_addon import run as mfrun

    monkeypatch.setattr(operators, "EXPORT_SLICE_S", 1e-4)  # one frame per tick
    mf = scene.motionfollower
    mf.model, mf.model_folder = "folder", small_model
    modal, reports = _modal(operators)
    mfrun.STATE.run = run = mfrun.begin_edit(bpy.context)
    assert run.exported == (0, 2 * N) and run.job is None
    seen, result = [], None
    deadline = time.monotonic() + 240
    while result is None and time.monotonic() < deadline:
        r = modal("TIMER")
        result = None if r == {"PASS_THROUGH"} else r
        p = mfrun.STATE.progress()
        if p is not None and p["stage"] == "export":
            seen.append(p["done"])
            assert any(e[0] == "progress" and "export" in e[2] for e in draw_panel())
        time.sleep(0.01)
    assert result == {"FINISHED"}, reports
    assert seen == list(range(1, 2 * N))  # one more frame each tick, never all at once
    assert strips.TMP_SCENE not in bpy.data.scenes
    (strip,) = edited_strips(scene)
    assert (strip.frame_final_start, strip.frame_final_duration) == (10, N)


def test_bar_never_goes_back_and_ends_at_1_when_the_estimate_changes():
    from blender_addon.bar import Bar

    b = Bar()
    shown = [b.show(r) for r in (0.0, 0.05, 0.09, 0.03, 0.03, 0.5, 0.4, 0.9, 1.0)]  # 0.03: the backend's first ETA
    assert shown == sorted(shown) and shown[-1] == 1.0
    assert shown[3] == shown[2] == 0.09 and shown[5] > 0.5  # held, then the rest is spread over what is left


def test_one_bar_from_run_to_result_over_export_and_both_variations(scene, addon, small_model, monkeypatch):
    """Run → strips on the timeline: one bar over the export (a frame per tick), the backend's start and
    two variations' jobs: monotone, from near 0 to 1 at the import, not back to 0 where the backend takes
    over, with the whole run's ETA (more than the running job's own) while the jobs run."""
    from blender_addon import operators
    from blender_addon import run as mfrun

    monkeypatch.setattr(operators, "EXPORT_SLICE_S", 1e-4)  # one frame per tick
    monkeypatch.setattr(mfrun.STATE, "last_cost", None)  # nothing measured yet: the first guess's rule
    mf = scene.motionfollower
    mf.model, mf.model_folder, mf.variations = "folder", small_model, 2
    samples = []  # (the panel's progress, the running job's own ETA), in time order

    def sample():
        run = mfrun.STATE.run
        samples.append((mfrun.STATE.progress(), run.job.snapshot()["eta_s"] if run.job is not None else None))

    finish = operators.finish_edit
    monkeypatch.setattr(operators, "finish_edit", lambda run: (sample(), finish(run))[1])  # the bar at each import
    modal, reports = _modal(operators)
    mfrun.STATE.run = mfrun.begin_edit(bpy.context)
    result, deadline = None, time.monotonic() + 240
    while result is None and time.monotonic() < deadline:
        r = modal("TIMER")
        result = None if r == {"PASS_THROUGH"} else r
        if mfrun.STATE.run is not None:
            sample()
        time.sleep(0.01)
    assert result == {"FINISHED"}, reports
    assert len(edited_strips(scene)) == 2
    fractions = [p["fraction"] for p, _ in samples]
    stages = [p["stage"] for p, _ in samples]
    assert fractions == sorted(fractions), [(s, round(f, 3)) for s, f in zip(stages, fractions)]
    assert stages[0] == "export" and 0 < fractions[0] < 0.05
    last_export = max(i for i, s in enumerate(stages) if s == "export")
    first_job = next(i for i, (p, _) in enumerate(samples) if p["stage"] not in ("export", "starting"))
    print("bar at each stage's start: " + ", ".join(f"{s} {f:.3f}" for k, (s, f) in enumerate(zip(stages, fractions))
                                                   if k == 0 or stages[k - 1] != s))
    assert fractions[first_job] >= fractions[last_export] > 0.02  # the backend's 0 % is not the bar's 0 %
    imports = [p for p, _ in samples if p["stage"] == "importing"]
    assert len(imports) == 1 and imports[0]["fraction"] == 1.0  # the second variation's end; the first's is below
    assert {p.get("part") for p, _ in samples} >= {"variation 1 of 2", "variation 2 of 2"}
    first = [(p["eta_s"], job_eta) for p, job_eta in samples if p.get("part") == "variation 1 of 2" and job_eta]
    assert first and all(eta > job_eta for eta, job_eta in first)  # the whole run's remainder: + the second job
    assert any(p["eta_s"] is not None for p, _ in samples if p.get("part") == "variation 2 of 2")


def test_a_cancelled_variation_keeps_the_earlier_results_of_an_unsaved_file(scene, addon, small_model, tmp_path,
                                                                            monkeypatch):
    """Unsaved .blend: variation 1's frames live in the job folder until the first save; cancelling
    variation 2 removes the rest of that folder but never the frames a strip shows."""
    from blender_addon import properties
    from blender_addon import run as mfrun

    job_params = properties.job_params
    monkeypatch.setattr(properties, "job_params", lambda mf: _geometric(job_params(mf)))
    person_clips(scene, tmp_path)
    mf = scene.motionfollower
    mf.model, mf.model_folder, mf.variations, mf.steps = "folder", small_model, 2, 20
    seen = {}

    def cancel_the_second():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run = mfrun.STATE.run
            if run is not None and run.job is not None and "_edit_" in run.job.job_id:  # the second seed's job
                seen["job_dir"] = run.job_dir
                mfrun.request_cancel(run)
                return
            time.sleep(0.01)

    t = threading.Thread(target=cancel_the_second)
    t.start()
    assert bpy.ops.motionfollower.edit() == {"CANCELLED"}
    t.join()
    (strip,) = edited_strips(scene)
    folder = Path(bpy.path.abspath(strip.directory))
    assert all((folder / e.filename).is_file() for e in strip.elements) and len(strip.elements) == N
    assert sorted(p.name for p in seen["job_dir"].iterdir()) == ["edited_s1", "owner.json"]


def test_modal_cancel_while_exporting_leaves_nothing(scene, addon, monkeypatch):
    from blender_addon import operators, strips
    from blender_addon import run as mfrun

    monkeypatch.setattr(operators, "EXPORT_SLICE_S", 1e-4)
    before = snapshot(scene)
    modal, reports = _modal(operators)
    mfrun.STATE.run = run = mfrun.begin_edit(bpy.context)
    modal("TIMER")
    modal("TIMER")
    assert run.exported[0] == 2 and run.job_dir.exists()
    assert bpy.ops.motionfollower.cancel() == {"FINISHED"}  # the panel's button
    assert mfrun.STATE.progress()["stage"] == "cancelling"
    assert modal("TIMER") == {"CANCELLED"} and reports == [({"WARNING"}, "MotionFollower: cancelled")]
    assert run.job is None and run.handshake is None  # nothing was sent to the backend
    assert mfrun.STATE.run is None and not run.job_dir.exists()
    assert strips.TMP_SCENE not in bpy.data.scenes and snapshot(scene) == before


HEADLESS = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import bpy, addon_utils
    addon_utils.enable("blender_addon", default_set=True)
    prefs = bpy.context.preferences.addons["blender_addon"].preferences
    prefs.python, prefs.jobs_dir = {python!r}, {jobs!r}
    from blender_addon import properties as P
    _job_params = P.job_params
    _geo = lambda p: {{**p, "advanced": {{**p["advanced"], "mask_predictor": "geometric"}}}}
    P.job_params = lambda mf: _geo(_job_params(mf))  # M_e without CPU training
    sc = bpy.context.scene
    sc.render.resolution_x = sc.render.resolution_y = 64
    sc.view_settings.view_transform = "AgX"
    ed = sc.sequence_editor_create()
    src = ed.strips.new_movie("source", {src!r}, channel=2, frame_start=10)
    src.frame_offset_start = 1  # visible: timeline 11..17, 7 frames
    ed.strips.new_effect("blocker", type="COLOR", channel=3, frame_start=12, length=2)
    if {with_driving!r}:
        d = ed.strips.new_image("driving", {poses!r} + "/pose_000.png", channel=5, frame_start=1)
        for k in range(1, 8):
            d.elements.append(f"pose_{{k:03d}}.png")
        d.frame_final_duration = 8
    mf = sc.motionfollower
    mf.source_strip, mf.driving_strip, mf.driving_is_pose = "source", "driving", True
    mf.size, mf.steps, mf.seed = 64, 1, 5
    mf.model, mf.model_folder = "folder", {model!r}

    def snapshot():
        v, r = sc.view_settings, sc.render
        return {{"strips": {{s.name: [s.type, s.channel, s.frame_start, s.frame_final_start, s.frame_final_end,
                                      s.mute, s.select] for s in ed.strips_all}},
                "view": [v.view_transform, v.look, v.exposure], "frames": [sc.frame_start, sc.frame_end],
                "render": [r.filepath, r.image_settings.file_format, r.resolution_x, r.fps],
                "data": [len(bpy.data.scenes), len(bpy.data.images), len(bpy.data.objects)]}}

    before = snapshot()
    try:
        result = bpy.ops.motionfollower.edit()
    except RuntimeError as exc:
        print("FAILED:", exc)
        sys.exit(1)
    new = [s for s in ed.strips if "(MotionFollower" in s.name]
    after = snapshot()
    for s in new:
        del after["strips"][s.name]
    s = new[0]
    print("RESULT " + json.dumps({{"result": sorted(result), "n_new": len(new), "name": s.name, "type": s.type,
        "channel": s.channel, "start": s.frame_final_start, "duration": s.frame_final_duration,
        "colorspace": s.colorspace_settings.name, "seed": s["motionfollower_seed"],
        "files": [bpy.path.abspath(s.directory) + e.filename for e in s.elements],
        "unchanged": before == after}}))
""")


def _headless(tmp_path, with_driving: bool, model: str) -> subprocess.CompletedProcess:
    sc = bpy.data.scenes.new("clips")  # person_clips writes the files; this scene is thrown away
    sc.sequence_editor_create()
    for name in ("source", "driving"):
        sc.sequence_editor.strips.new_effect(name, type="COLOR", channel=1 if name == "source" else 2,
                                             frame_start=1, length=1)
    try:
        person_clips(sc, tmp_path)
    finally:
        bpy.data.scenes.remove(sc)
    script = tmp_path / "script.py"
    script.write_text(HEADLESS.format(repo=str(REPO), python=sys.executable, jobs=str(tmp_path / "jobs"),
                                      src=str(tmp_path / "person.avi"), poses=str(tmp_path / "poses"),
                                      with_driving=with_driving, model=model))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)


def test_headless_script_fails_loudly(addon, tmp_path):
    p = _headless(tmp_path, with_driving=False, model="")
    assert p.returncode == 1
    assert "driving strip 'driving' not found" in p.stdout + p.stderr
    assert not any((tmp_path / "jobs").glob("source_*"))  # no job folder left behind


def test_headless_script_edits_and_adds_the_strip(addon, tmp_path, small_model):
    """The end-to-end run, as `blender -b file.blend --python script.py` does it: real backend, tiny model."""
    p = _headless(tmp_path, with_driving=True, model=small_model)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    r = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert r["result"] == ["FINISHED"] and r["n_new"] == 1
    assert (r["name"], r["type"]) == ("source (MotionFollower seed 5)", "IMAGE")
    # first free channel above the source (3 is taken by the blocker), at the source's first visible frame,
    # one frame per visible source frame
    assert (r["channel"], r["start"], r["duration"]) == (4, 11, 7)
    assert r["colorspace"] == "sRGB" and r["seed"] == 5
    files = [Path(f) for f in r["files"]]
    assert len(files) == 7 and all(f.is_file() for f in files)
    assert cv2.imread(str(files[0])).shape == (SIZE, SIZE, 3)  # back at the scene resolution
    assert not (files[0].parent.parent / "source").exists()  # exported inputs cleaned, the result kept
    assert r["unchanged"], "the edit changed the scene beyond adding its strip"
    assert "MotionFollower:" in p.stderr and "% " in p.stderr  # progress lines in background mode (sampled)


# ---- inputs that cannot be edited are refused before anything happens ------------------------------

def _wav(path: Path) -> str:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0" * 8000)
    return str(path)


def _make_bad(scene, tmp_path: Path, case: str) -> tuple[str, str]:
    """Turn the scene's source into a bad one; returns (the source strip's name, expected message)."""
    ed = scene.sequence_editor
    if case == "colour":
        ed.strips.new_effect("bad", type="COLOR", channel=7, frame_start=10, length=8)
        return "bad", "source strip 'bad' is a color strip, not footage"
    if case == "text":
        ed.strips.new_effect("bad", type="TEXT", channel=7, frame_start=10, length=8)
        return "bad", "source strip 'bad' is a text strip, not footage"
    if case == "sound":
        ed.strips.new_sound("bad", _wav(tmp_path / "a.wav"), channel=7, frame_start=10)
        return "bad", "source strip 'bad' is a sound strip: it has no pictures"
    if case == "moved movie":
        moved = tmp_path / "gone.avi"
        write_movie(moved, N, (40, 40, 200))
        ed.strips.new_movie("bad", str(moved), channel=7, frame_start=10)
        moved.unlink()
        return "bad", "source strip 'bad' misses its file"
    if case == "muted strip":
        ed.strips["source"].mute = True
        return "source", "source strip 'source' is muted"
    if case == "muted channel":
        ed.channels[2].mute = True
        return "source", "source strip 'source' is on muted channel 2"
    if case == "scene without camera":
        other = bpy.data.scenes.new(f"nocam-{tmp_path.name}")
        ed.strips.new_scene("bad", other, channel=7, frame_start=10)
        return "bad", "which has no camera"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["colour", "text", "sound", "moved movie", "muted strip", "muted channel",
                                  "scene without camera"])
def test_bad_source_strips_are_refused_with_a_hint(scene, addon, tmp_path, case):
    from blender_addon import run as mfrun

    name, expected = _make_bad(scene, tmp_path, case)
    scene.motionfollower.source_strip = name
    before = snapshot(scene)
    jobs = set(os.listdir(addon.preferences.get_settings().jobs_dir))
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        bpy.ops.motionfollower.edit()
    assert snapshot(scene) == before and set(os.listdir(addon.preferences.get_settings().jobs_dir)) == jobs
    assert mfrun.STATE.last_error[1]  # what to do about it
    assert mfrun.STATE.client is None or mfrun.STATE.run is None


def test_export_reads_the_strip_at_full_opacity_without_fades(scene, tmp_path):
    from blender_addon import strips

    plain = strips.export_strip(scene, "source", tmp_path / "plain")
    src = scene.sequence_editor.strips["source"]
    src.blend_alpha = 0.5
    src.keyframe_insert("blend_alpha", frame=10)  # a fade-in from black over the first frames
    src.blend_alpha = 0.0
    src.keyframe_insert("blend_alpha", frame=10)
    src.blend_alpha = 1.0
    src.keyframe_insert("blend_alpha", frame=14)
    src.blend_alpha = 0.5
    before = snapshot(scene)
    faded = strips.export_strip(scene, "source", tmp_path / "faded")
    assert faded == plain
    for a, b in zip(strips.frame_files(tmp_path / "plain"), strips.frame_files(tmp_path / "faded")):
        assert np.abs(cv2.imread(str(a)).astype(int) - cv2.imread(str(b))).max() <= 1
    assert snapshot(scene) == before and scene.animation_data.action is not None  # the user's fade stays


def test_export_of_a_meta_strip_stops_where_its_content_ends(scene, tmp_path):
    from blender_addon import strips

    ed = scene.sequence_editor
    meta = ed.strips.new_meta("meta", channel=8, frame_start=10)
    ed.strips["source"].move_to_meta(meta)
    meta.frame_final_end = 10 + N + 6  # the meta stretched past its movie
    info = strips.export_strip(scene, meta.name, tmp_path / "meta")
    assert (info["first"], info["count"]) == (10, N)  # no black frames added


def test_queue_and_variations_add_one_strip_per_source_and_seed(scene, addon, small_model, tmp_path, monkeypatch):
    """Two selected source strips × two seeds: four edits one after another, four strips, seeds in the names."""
    from blender_addon import inputs, properties
    from blender_addon import run as mfrun

    job_params = properties.job_params
    monkeypatch.setattr(properties, "job_params", lambda mf: _geometric(job_params(mf)))
    person_clips(scene, tmp_path)
    ed = scene.sequence_editor
    ed.strips.new_movie("second", str(tmp_path / "person.avi"), channel=3, frame_start=30)
    for s in ed.strips:
        s.select = s.name in ("source", "second", "driving")  # the driving strip is never a source
    mf = scene.motionfollower
    mf.model, mf.model_folder = "folder", small_model
    mf.queue_selected, mf.variations, mf.seed = True, 2, 7
    assert inputs.plan(bpy.context) == ["source", "second"]
    assert bpy.ops.motionfollower.edit() == {"FINISHED"}
    made = {s.name: (s.channel, s.frame_final_start, s.frame_final_duration, s["motionfollower_seed"])
            for s in edited_strips(scene)}
    assert made == {"source (MotionFollower seed 7)": (3, 10, N, 7), "source (MotionFollower seed 8)": (4, 10, N, 8),
                    "second (MotionFollower seed 7)": (4, 30, N, 7), "second (MotionFollower seed 8)": (5, 30, N, 8)}
    assert mfrun.STATE.run is None and mfrun.STATE.queue == []
    # every setting is on the strip: "Re-run with these settings" puts them back and runs that one edit
    ed.active_strip = ed.strips["second (MotionFollower seed 8)"]
    assert ("operator", "motionfollower.rerun") in draw_panel()
    mf.seed, mf.guidance_scale, mf.source_strip = 99, 9.0, "source"
    assert bpy.ops.motionfollower.rerun() == {"FINISHED"}
    assert (mf.seed, mf.guidance_scale, mf.source_strip, mf.variations, mf.queue_selected) == (8, 3.5, "second", 1, False)
    assert len(edited_strips(scene)) == 5


def test_an_unwritable_job_folder_is_named_before_any_work(scene, addon, tmp_path):
    from blender_addon import run as mfrun

    prefs = bpy.context.preferences.addons["blender_addon"].preferences
    good, blocker = prefs.jobs_dir, tmp_path / "a-file"
    blocker.write_text("not a folder")
    prefs.jobs_dir = str(blocker / "jobs")  # a folder under a file cannot be made (root ignores chmod)
    before = snapshot(scene)
    try:
        with pytest.raises(RuntimeError, match="cannot create the job folder '.*a-file/jobs/source_"):
            bpy.ops.motionfollower.edit()
        assert "writable job folder" in mfrun.STATE.last_error[1] and "see the system console" not in mfrun.STATE.last_error[1]
    finally:
        prefs.jobs_dir = good
    assert snapshot(scene) == before


def test_preview_is_a_short_low_step_pass(scene, addon, small_model, tmp_path, monkeypatch):
    from blender_addon import properties
    from blender_addon import run as mfrun

    job_params = properties.job_params
    monkeypatch.setattr(properties, "job_params", lambda mf: _geometric(job_params(mf)))
    monkeypatch.setattr(mfrun, "PREVIEW_FRAMES", 3)
    person_clips(scene, tmp_path)
    mf = scene.motionfollower
    mf.model, mf.model_folder, mf.steps, mf.variations = "folder", small_model, 40, 3
    assert ("operator", "motionfollower.edit") in draw_panel()
    assert bpy.ops.motionfollower.edit(preview=True) == {"FINISHED"}
    made = {s.name: s for s in edited_strips(scene)}  # one seed only, then the poses and masks it used
    assert set(made) == {"source (MotionFollower preview seed 1)", "source (MotionFollower preview poses)",
                         "source (MotionFollower preview masks)"}
    strip = made["source (MotionFollower preview seed 1)"]
    assert (strip.frame_final_start, strip.frame_final_duration, strip["motionfollower_steps"]) == (10, 3, 10)
    for what in ("poses", "masks"):
        s = made[f"source (MotionFollower preview {what})"]
        assert (s.frame_final_start, s.frame_final_duration) == (10, 3)
        assert all(os.path.isfile(os.path.join(bpy.path.abspath(s.directory), e.filename)) for e in s.elements)
    assert mf.steps == 40  # the panel keeps the full run's settings
    # on CPU the panel estimates the full run from the preview's measured time (steps × frames × size²)
    seconds, steps, frames, size = mfrun.STATE.last_cost
    assert (steps, frames) == (10, 3) and mfrun.STATE.estimate_s(40, 9, 0) == pytest.approx(seconds * 12)
    assert any(e[0] == "label" and e[1].startswith("CPU: about") for e in draw_panel())
