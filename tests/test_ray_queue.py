"""A queue of shots on a real Ray cluster (`ray start --head`, 127.0.0.1 only, token auth, 3 logical GPUs):
submitted with `ray job submit`, per-job progress, a killed worker retried, a cancelled job, nothing partial."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_edit_params, write_tiny_case

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
GPUS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`ray start --head --block` as our own child: terminating it stops exactly this cluster. Token auth
    with Ray's default token file (made if missing), which this process also uses to join as a driver."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_AUTH_TOKEN", None)
    subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    port, dash = _free_port(), _free_port()
    proc = subprocess.Popen([str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--num-gpus={GPUS}",
                             "--num-cpus=4", f"--object-store-memory={256 * 2**20}", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    gcs, url = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:  # the dashboard (Ray Jobs) answers last
            ok = subprocess.run([str(RAY), "job", "list", "--address", url], env=env, capture_output=True,
                                text=True, timeout=60)
            if ok.returncode == 0:
                break
            assert proc.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, ok.stderr[-2000:]
            time.sleep(1)
        yield {"gcs": gcs, "url": url, "env": env}
    finally:  # the head and every Ray process it started share its session (process group)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from mf_backend.models.loading import build_models, save_models

    return save_models(build_models("tiny", seed=0), tmp_path_factory.mktemp("models") / "tiny")


def _jobs(tmp_path: Path, model: Path, n: int = 3, steps: int = 3) -> dict:
    defaults = tiny_edit_params(write_tiny_case(tmp_path / "case"), model, steps)
    return {"defaults": defaults,
            "jobs": [{"job_id": f"shot{i}", "out": str(tmp_path / f"out{i}"), "seed": i} for i in range(n)]}


def _partials(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_queue_of_three_jobs_submitted_as_a_ray_job(head, tiny_folder, tmp_path):
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps(_jobs(tmp_path, tiny_folder)))
    t0 = time.perf_counter()
    run = subprocess.run([str(RAY), "job", "submit", "--address", head["url"], "--",
                          sys.executable, "-m", "mf_backend", "queue", str(jobs), "--ray-address", "auto"],
                         env=head["env"], capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    print(f"\nray job submit: {time.perf_counter() - t0:.1f} s, exit {run.returncode}")
    assert run.returncode == 0, log[-4000:]
    for i in range(3):
        assert len(list((tmp_path / f"out{i}").glob("frame_*.png"))) == 8, log[-3000:]
        assert f"[shot{i}] done" in log and f"[shot{i}] [" in log and "editing" in log  # per-job progress
    assert not _partials(tmp_path)


def test_killed_worker_is_retried_and_a_cancelled_job_leaves_nothing(head, tiny_folder, tmp_path):
    import ray

    from mf_backend.distributed.shots import ShotQueue, load_jobs

    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps(_jobs(tmp_path, tiny_folder, steps=8)))
    events: list[dict] = []
    queue = ShotQueue(load_jobs(str(jobs)), head["gcs"], retries=1, sink=None)
    acted: dict[str, float] = {}

    def sink(event):
        events.append(event)
        if event.get("stage") != "editing":
            return
        if event["job_id"] == "shot0" and event["attempt"] == 1 and "kill" not in acted:
            acted["kill"] = time.monotonic()
            ray.kill(queue.shots["shot0"].runner, no_restart=True)  # the worker process dies mid-edit
        if event["job_id"] == "shot1" and "cancel" not in acted:
            acted["cancel"] = time.monotonic()
            queue.cancel("shot1")
    queue.sink = sink
    try:
        summary = {s["job_id"]: s for s in queue.run()}
    finally:
        ray.shutdown()
    states = {k: (s["state"], s["attempts"]) for k, s in summary.items()}
    print(f"\nqueue: {states}")
    assert states == {"shot0": ("done", 2), "shot1": ("cancelled", 1), "shot2": ("done", 1)}
    assert any(e.get("reason", "").startswith("worker died") for e in events if e["job_id"] == "shot0")
    assert summary["shot1"]["error"]["type"] == "Cancelled"
    assert (tmp_path / "out0" / "edit.json").exists() and (tmp_path / "out2" / "edit.json").exists()
    assert not (tmp_path / "out1").exists() and not _partials(tmp_path)
