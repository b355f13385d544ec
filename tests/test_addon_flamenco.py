"""The add-on's "Submit to Flamenco" in real bpy: the job JSON from the panel's settings and strips, a
Manager reached over HTTP (a local server that answers like Flamenco's POST /api/v3/jobs and, when
node is present, compiles what it receives with the job type script), and the errors without one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy", reason="bpy (Blender as a module) is not installed: install.py installs it")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
NODE = shutil.which("node") or shutil.which("nodejs")

from test_addon_blender import FakeLayout, addon, write_movie  # noqa: E402,F401  (the add-on, layout checks, clips)


@pytest.fixture(scope="module")
def prefs(addon):
    p = bpy.context.preferences.addons["blender_addon"].preferences
    yield p
    p.flamenco_manager = ""


@pytest.fixture
def scene(prefs, tmp_path):
    sc = bpy.data.scenes.new(f"farm-{tmp_path.name}")
    bpy.context.window.scene = sc
    sc.frame_start, sc.frame_end = 1, 60
    ed = sc.sequence_editor_create()
    src = ed.strips.new_movie("source", str(write_movie(tmp_path / "src.avi", 8, (40, 40, 200))), channel=2, frame_start=10)
    src.frame_final_start = 11  # trimmed: the first media frame is not shown
    ed.strips.new_movie("driving", str(write_movie(tmp_path / "drv.avi", 8, (40, 200, 40))), channel=5, frame_start=10)
    mf = sc.motionfollower
    mf.source_strip, mf.driving_strip, mf.steps, mf.size, mf.timing = "source", "driving", 20, 256, "loop"
    yield sc
    bpy.data.scenes.remove(sc)


class Manager(BaseHTTPRequestHandler):
    """Answers like a Flamenco Manager: 200 with the stored job, 400 with a message when the job type is
    not installed (`installed` False) or its script refuses the job (compiled with node when present)."""

    received: list = []
    installed = True

    def do_POST(self):  # noqa: N802 - http.server's naming
        job = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Manager.received.append((self.path, job))
        status, reply = 200, {**job, "id": "2f0e8a1c-0000-4000-8000-000000000001", "status": "queued"}
        if not Manager.installed:
            status, reply = 400, {"code": 400, "message": f"job type {job['type']!r} unknown"}
        elif NODE:
            try:
                reply["tasks"] = compile_with_job_type(job)["tasks"]
            except subprocess.CalledProcessError as exc:
                status, reply = 400, {"code": 400, "message": exc.stderr.strip().splitlines()[-1]}
        body = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output quiet
        pass


def compile_with_job_type(job: dict) -> dict:
    job_file = Path(bpy.app.tempdir or "/tmp") / "submitted.json"
    job_file.write_text(json.dumps(job))
    out = subprocess.run([NODE, str(REPO / "integrations/flamenco/test/flamenco.js"),
                          str(REPO / "integrations/flamenco/motionfollower.js"), str(job_file)],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.fixture
def manager():
    Manager.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Manager)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_without_a_manager_it_says_so_and_saves_the_job(scene, prefs):
    prefs.flamenco_manager = ""
    with pytest.raises(RuntimeError, match="no Flamenco Manager set: the job was saved to (.*flamenco_job.json)") as err:
        bpy.ops.motionfollower.submit_flamenco()
    path = Path(str(err.value).split("saved to ")[1].split(" — ")[0])
    job = json.loads(path.read_text())
    s = job["settings"]
    assert job["type"] == "motionfollower" and job["priority"] == 50 and job["submitter_platform"]
    assert s["source"].endswith("src.avi") and s["driving"].endswith("drv.avi")
    assert (s["frame_start"], s["frame_end"]) == (1, 7)  # media frames 1..7 show (frame 0 is trimmed off)
    assert (s["steps"], s["size"], s["timing"]) == (20, 256, "loop")
    assert "--guidance-scale 3.5" in s["edit_args"] and "--camera" not in s["edit_args"].split()
    assert "--checkpoint auto" in s["edit_args"] and "--w-" not in s["edit_args"]  # advanced flags, defaults left out
    assert Path(s["output"]).parent == path.parent
    assert path.parent.parent == Path(s["source"]).parent / "motionfollower"  # unsaved .blend: beside the source


def test_submits_to_the_manager_and_the_job_type_compiles_it(scene, prefs, manager):
    prefs.flamenco_manager = manager
    scene.motionfollower.use_frame_range = True
    scene.motionfollower.frame_start, scene.motionfollower.frame_end = 13, 15
    assert bpy.ops.motionfollower.submit_flamenco() == {"FINISHED"}
    (path, job), = Manager.received
    assert path == "/api/v3/jobs"
    assert (job["settings"]["frame_start"], job["settings"]["frame_end"]) == (3, 5)
    if NODE:  # what the Manager would run: prepare, one chunk, merge
        tasks = compile_with_job_type(job)["tasks"]
        assert [t["name"] for t in tasks] == ["prepare", "edit-3-5", "merge"]


def test_refusals_are_reported(scene, prefs, manager):
    prefs.flamenco_manager = "http://127.0.0.1:9/"  # nothing listens on the discard port
    with pytest.raises(RuntimeError, match="could not reach the Flamenco Manager at http://127.0.0.1:9/"):
        bpy.ops.motionfollower.submit_flamenco()
    prefs.flamenco_manager = manager
    Manager.installed = False
    try:
        with pytest.raises(RuntimeError, match="Manager refused the job \\(400\\): job type 'motionfollower' unknown"):
            bpy.ops.motionfollower.submit_flamenco()
    finally:
        Manager.installed = True
    scene.motionfollower.timing = "trim"
    with pytest.raises(RuntimeError, match="timing 'trim'"):
        bpy.ops.motionfollower.submit_flamenco()
    scene.motionfollower.timing = "loop"
    scene.motionfollower.use_frame_range = True
    scene.motionfollower.frame_start, scene.motionfollower.frame_end = 40, 50  # after the strip
    with pytest.raises(RuntimeError, match="frame range does not overlap"):
        bpy.ops.motionfollower.submit_flamenco()
    scene.motionfollower.driving_strip = "missing"
    with pytest.raises(RuntimeError, match="driving strip 'missing' not found"):
        bpy.ops.motionfollower.submit_flamenco()


def test_render_farm_panel_draws_with_and_without_a_manager(scene, prefs):
    for url, expected in (("", "No Flamenco Manager set (preferences)"), ("http://farm:8080", "Manager: http://farm:8080")):
        prefs.flamenco_manager = url
        log: list = []
        bpy.types.SEQUENCER_PT_motionfollower_flamenco.draw(type("P", (), {"layout": FakeLayout(log)})(), bpy.context)
        assert log == [("label", expected), ("operator", "motionfollower.submit_flamenco")]
