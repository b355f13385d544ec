"""The add-on in real projects, each case a separate Blender process (bpy 5.0.1, and bpy 4.2 LTS when
`.venv42` exists — `.ci/run` makes it): results that survive moving the project and removing the
add-on, a file load during a job, Blender killed mid-job, and a clean exit (code 0) every time.

Each script enables a copy of the add-on (as an installed one would be), drives it through the
real backend subprocess with a tiny random-weight model, and prints one `RESULT {json}` line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("bpy", reason="bpy (Blender as a module) is not installed: install.py installs it")

REPO = Path(__file__).resolve().parents[1]
VENV42 = REPO / ".venv42" / "bin" / "python"
N = 8

BLENDERS = [pytest.param(sys.executable, id="bpy5")] + (
    [pytest.param(str(VENV42), id="bpy4.2")] if VENV42.exists() else
    [pytest.param(None, id="bpy4.2", marks=pytest.mark.skip(
        reason="no .venv42 (bpy 4.2 LTS): python3 -m venv .venv42 && .venv42/bin/pip install bpy==4.2.23 "
               "'numpy<2' opencv-python-headless — .ci/run does this"))])


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    """A synthetic person (movie), the driver's pose renders (PNGs), a tiny model, a backend config."""
    import cv2

    from mf_backend.models.loading import build_models, save_models
    from mf_backend.pose.render import render_poses
    from mf_backend.synthetic.pair import make_pair

    d = tmp_path_factory.mktemp("clips")
    pair = make_pair(seed=3, frames=N, size=64)
    vw = cv2.VideoWriter(str(d / "person.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 24, (64, 64))
    for f in pair.source.frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    (d / "poses").mkdir()
    for k, f in enumerate(render_poses(pair.driving.poses)):
        cv2.imwrite(str(d / "poses" / f"pose_{k:03d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    save_models(build_models("tiny", seed=0), d / "tiny")
    (d / "backend.json").write_text(json.dumps({"python": sys.executable, "repo": str(REPO)}))
    return {"movie": str(d / "person.avi"), "poses": str(d / "poses"), "model": str(d / "tiny"),
            "config": str(d / "backend.json")}


PRELUDE = """
import json, os, shutil, sys, time
sys.path.insert(0, {addons!r})
import bpy, addon_utils
assert addon_utils.enable("motionfollower", default_set=True) is not None
# the job folder is the default one, in $TMPDIR (this test's own), so the add-on's start cleans it
from motionfollower import properties as P, run as R, strips as S
_job_params = P.job_params
_geo = lambda p: {{**p, "advanced": {{**p["advanced"], "mask_predictor": "geometric"}}}}
P.job_params = lambda mf: _geo(_job_params(mf))  # M_e without CPU training

def make_scene(steps=1):
    sc = bpy.context.scene
    sc.render.resolution_x = sc.render.resolution_y = 64
    sc.render.fps = 24
    coll = S.top_collection(sc)
    coll.new_movie("source", {movie!r}, channel=2, frame_start=1)
    d = coll.new_image("driving", {poses!r} + "/pose_000.png", channel=5, frame_start=1)
    for k in range(1, {n}):
        d.elements.append(f"pose_{{k:03d}}.png")
    d.frame_final_duration = {n}
    mf = sc.motionfollower
    mf.source_strip, mf.driving_strip, mf.driving_is_pose = "source", "driving", True
    mf.size, mf.steps, mf.seed = 64, steps, 1
    mf.model, mf.model_folder = "folder", {model!r}
    return sc

def results(sc):
    return [s for s in S.all_strips(sc) if "(MotionFollower" in s.name]
"""


def run_script(python: str, tmp_path: Path, clips: dict, body: str, name: str = "script",
               wait: bool = True, timeout: float = 400):
    """Copy the add-on as an installed `motionfollower`, write PRELUDE + body, run it with `python`."""
    addons = tmp_path / "addons"
    if not (addons / "motionfollower").exists():
        shutil.copytree(REPO / "blender_addon", addons / "motionfollower",
                        ignore=shutil.ignore_patterns("__pycache__", "backend_config.json"))
    script = tmp_path / f"{name}.py"
    script.write_text(PRELUDE.format(addons=str(addons), n=N, **clips)
                      + textwrap.dedent(body))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "MF_BACKEND_CONFIG": clips["config"], "TMPDIR": str(tmp_path / "tmp")}
    cmd = [python, str(script)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, f"exit code {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[7:])


def _gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()  # a zombie has exited
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("python", BLENDERS)
def test_results_survive_first_save_moving_the_project_and_removing_the_addon(python, tmp_path, clips):
    r = run_script(python, tmp_path, clips, """
        sc = make_scene()
        assert bpy.ops.motionfollower.edit() == {"FINISHED"}
        unsaved_dir = results(sc)[0].directory
        bpy.ops.wm.save_as_mainfile(filepath=%r)
        sc = bpy.context.scene
        sc.motionfollower.seed = 2
        assert bpy.ops.motionfollower.edit() == {"FINISHED"}
        bpy.ops.wm.save_mainfile()
        dirs = sorted(s.directory for s in results(sc))
        addon_utils.disable("motionfollower", default_set=True)
        shutil.rmtree(%r)  # the add-on is removed, as Blender does on uninstall
        print("RESULT " + json.dumps({"unsaved": unsaved_dir, "dirs": dirs,
                                      "scratch": sorted(os.listdir(prefs_dir)) if os.path.isdir(prefs_dir := %r) else []}))
        """ % (str(tmp_path / "proj" / "p.blend"), str(tmp_path / "addons"), str(tmp_path / "tmp" / "motionfollower-jobs")))
    assert r["unsaved"].startswith(str(tmp_path / "tmp" / "motionfollower-jobs"))  # before the first save: the job folder
    assert all(d.startswith("//motionfollower/") for d in r["dirs"]) and len(set(r["dirs"])) == 2
    assert [p for p in r["scratch"] if p != "backend.log"] == []  # nothing left in scratch
    shutil.move(str(tmp_path / "proj"), str(tmp_path / "moved"))
    check = tmp_path / "check.py"
    check.write_text(textwrap.dedent("""
        import json, os, bpy
        bpy.ops.wm.open_mainfile(filepath=%r)
        out = []
        for sc in bpy.data.scenes:
            ed = sc.sequence_editor
            for s in (getattr(ed, "strips_all", None) or ed.sequences_all) if ed else ():
                if "(MotionFollower" in s.name:
                    folder = bpy.path.abspath(s.directory)
                    out.append([s.directory, len(s.elements), sum(os.path.isfile(os.path.join(folder, e.filename))
                                                                  for e in s.elements)])
        print("RESULT " + json.dumps(out))
        """ % str(tmp_path / "moved" / "p.blend")))
    p = subprocess.run([python, str(check)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    found = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len(found) == 2 and all(n == N and present == N for _, n, present in found), found


@pytest.mark.parametrize("python", BLENDERS)
def test_loading_a_file_cancels_the_job_and_killing_blender_stops_the_backend(python, tmp_path, clips):
    proc = run_script(python, tmp_path, clips, """
        sc = make_scene(steps=200)
        bpy.ops.wm.save_as_mainfile(filepath=%r)

        def started():
            run = R.STATE.run = R.start_edit(bpy.context)
            while run.job.snapshot()["stage"] == "starting":
                time.sleep(0.05)
            return run, R.STATE.client

        run, client = started()
        t0 = time.monotonic()
        bpy.ops.wm.open_mainfile(filepath=%r)  # another file, mid-job
        client.proc.wait(timeout=5)
        print("LOADED " + json.dumps({"run": R.STATE.run is None, "job_dir": run.job_dir.exists(),
                                      "backend_s": time.monotonic() - t0,
                                      "can_run": bpy.ops.motionfollower.edit.poll()}), flush=True)
        run, client = started()  # the loaded file has the same strips and settings
        print("READY " + json.dumps({"pid": client.pid, "job_dir": str(run.job_dir)}), flush=True)
        time.sleep(600)
        """ % (str(tmp_path / "a.blend"), str(tmp_path / "a.blend")), wait=False)
    lines = {}
    deadline = time.monotonic() + 400
    while "READY" not in lines and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.split(" ", 1)[0] in ("LOADED", "READY"):
            lines[line.split(" ", 1)[0]] = json.loads(line.split(" ", 1)[1])
    if "READY" not in lines:
        proc.kill()
        pytest.fail(f"the script ended early: {lines}\n{proc.stdout.read()[-3000:]}")
    loaded, ready = lines["LOADED"], lines["READY"]
    assert loaded["run"] and not loaded["job_dir"] and loaded["can_run"], loaded
    os.kill(proc.pid, signal.SIGKILL)  # Blender dies mid-job (crash, kill -9)
    t0 = time.monotonic()
    proc.wait()
    while not _gone(ready["pid"]) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    backend_exit_s = time.monotonic() - t0
    print(f"backend exit after Blender was killed: {backend_exit_s:.2f} s")
    assert _gone(ready["pid"]) and backend_exit_s < 2.0
    assert Path(ready["job_dir"]).exists()  # left behind by the dead Blender …
    run_script(python, tmp_path, clips, 'print("RESULT {}")', name="restart")
    assert not Path(ready["job_dir"]).exists()  # … and removed when the add-on starts again


def test_extension_zip_holds_no_machine_paths_and_passes_blenders_validator(tmp_path):
    import zipfile

    import bpy

    sys.path.insert(0, str(REPO))
    import install

    z = install.build_extension_zip(tmp_path)
    names = zipfile.ZipFile(z).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names and "backend_config.json" not in names
    blob = b"".join(zipfile.ZipFile(z).read(n) for n in names)
    assert str(REPO).encode() not in blob and sys.executable.encode() not in blob
    validator = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    p = subprocess.run([sys.executable, str(validator), "validate", str(z)], capture_output=True, text=True)
    assert p.returncode == 0 and "Success" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("python", BLENDERS)
def test_bad_strips_are_refused_in_each_blender(python, tmp_path, clips):
    """The input checks under both Blender versions (4.2 names its collections differently)."""
    r = run_script(python, tmp_path, clips, """
        import wave
        sc = make_scene()
        ed, coll = sc.sequence_editor, S.top_collection(sc)
        with wave.open(%r, "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
            w.writeframes(bytes(16000))
        coll.new_effect("colour", type="COLOR", channel=7, frame_start=1,
                        **({"frame_end": 9} if bpy.app.version < (4, 4) else {"length": 8}))
        try:
            coll.new_sound("sound", %r, channel=8, frame_start=1)
        except RuntimeError:  # the bpy 4.2 wheel is built without audio
            pass
        coll.new_scene("scene", bpy.data.scenes.new("empty"), channel=9, frame_start=1)
        coll.new_movie("moved", %r, channel=10, frame_start=1).filepath = "//nowhere.avi"
        coll.new_movie("muted", %r, channel=11, frame_start=1).mute = True
        coll.new_movie("channel", %r, channel=12, frame_start=1)
        ed.channels[12].mute = True
        out = {}
        for name in ("colour", "sound", "scene", "moved", "muted", "channel"):
            if S.find_strip(sc, name) is None:
                continue
            sc.motionfollower.source_strip = name
            try:
                bpy.ops.motionfollower.edit()
                out[name] = "ran"
            except RuntimeError as exc:
                out[name] = str(exc)
        print("RESULT " + json.dumps(out))
        """ % ((str(tmp_path / "a.wav"),) * 2 + (clips["movie"],) * 3))
    expected = {"colour": "is a color strip, not footage", "sound": "is a sound strip: it has no pictures",
                "scene": "which has no camera", "moved": "misses its file", "muted": "'muted' is muted",
                "channel": "is on muted channel 12"}
    if "sound" not in r and python != sys.executable:
        del expected["sound"]  # no sound strips without audio support (the 4.2 wheel); bpy 5 checks it
    for name, text in expected.items():
        assert text in r[name], (name, r[name])


@pytest.mark.parametrize("python", BLENDERS)
def test_queue_and_variations_in_each_blender(python, tmp_path, clips):
    r = run_script(python, tmp_path, clips, """
        sc = make_scene()
        S.top_collection(sc).new_movie("second", %r, channel=3, frame_start=20)
        for s in S.top_strips(sc):
            s.select = s.name in ("source", "second")
        mf = sc.motionfollower
        mf.queue_selected, mf.variations, mf.seed = True, 2, 4
        assert bpy.ops.motionfollower.edit() == {"FINISHED"}
        print("RESULT " + json.dumps(sorted([s.name, s.frame_final_start, len(s.elements)] for s in results(sc))))
        """ % clips["movie"])
    assert r == [["second (MotionFollower seed 4)", 20, N], ["second (MotionFollower seed 5)", 20, N],
                 ["source (MotionFollower seed 4)", 1, N], ["source (MotionFollower seed 5)", 1, N]]


@pytest.mark.parametrize("python", BLENDERS)
def test_a_cancelled_or_failed_run_leaves_no_empty_folder_in_the_project(python, tmp_path, clips):
    """A saved project: Run checks `//motionfollower/` can be written, but a run cancelled while
    exporting, cancelled mid-job or failed leaves neither that folder (empty) nor a job folder behind."""
    r = run_script(python, tmp_path, clips, """
        import threading
        sc = make_scene(steps=200)
        proj, scratch = %r, %r
        os.makedirs(proj)
        bpy.ops.wm.save_as_mainfile(filepath=proj + "/p.blend")
        left = lambda: [sorted(os.listdir(proj)), sorted(p for p in os.listdir(scratch) if p != "backend.log")]
        out = {}
        run = R.STATE.run = R.begin_edit(bpy.context)  # what the panel's Run does, then a tick or two …
        R.advance(run, 1e-4)
        R.request_cancel(run)  # … and Cancel: the next tick drops the run before the backend job starts
        R.abort_edit(run)
        R.STATE.run = None
        out["cancelled exporting"] = left()

        def cancel_when_sampling():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                run = R.STATE.run
                if run is not None and run.job is not None and run.job.snapshot()["stage"] == "editing":
                    return R.request_cancel(run)
                time.sleep(0.01)

        t = threading.Thread(target=cancel_when_sampling)
        t.start()
        out["cancelled job"] = [sorted(bpy.ops.motionfollower.edit())] + left()
        t.join()
        sc.motionfollower.model_folder = proj + "/no-model"
        try:
            bpy.ops.motionfollower.edit()
            out["failed"] = ["ran"] + left()
        except RuntimeError as exc:
            out["failed"] = [str(exc)[:80]] + left()
        print("RESULT " + json.dumps(out))
        """ % (str(tmp_path / "proj"), str(tmp_path / "tmp" / "motionfollower-jobs")))
    assert r["cancelled exporting"] == [["p.blend"], []], r
    assert r["cancelled job"] == [["CANCELLED"], ["p.blend"], []], r
    assert r["failed"][0] != "ran" and r["failed"][1:] == [["p.blend"], []], r
