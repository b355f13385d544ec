"""One clip over several Ray workers on a real local cluster (3 logical GPUs on the CPU, 127.0.0.1):
exact equality with the single-process edit, a killed worker, cancel, a cluster too small."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import torch

pytest.importorskip("ray")

pytestmark = pytest.mark.usefixtures("torch_one_thread")

GPUS = 3


@pytest.fixture(scope="module")
def cluster():
    from mf_backend.distributed.cluster import connect, stop_local

    connect("local", GPUS)  # one cluster for the module
    import ray

    yield ray
    stop_local()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from mf_backend.models.loading import build_models, save_models

    return save_models(build_models("tiny", seed=0), tmp_path_factory.mktemp("models") / "tiny")


def _inputs(frames: int, size: int = 64):
    from mf_backend.editing.sampler import EditInputs

    g = torch.Generator().manual_seed(0)
    img = lambda: torch.randint(0, 256, (frames, size, size, 3), generator=g, dtype=torch.uint8)  # noqa: E731
    M_r, M_e = torch.zeros(frames, size, size), torch.zeros(frames, size, size)
    M_r[:, 16:48, 8:32] = 1
    M_e[:, 16:48, 24:48] = 1
    return EditInputs(img(), img(), img(), M_r, M_e)


def _params(model, **kw):
    from mf_backend.params import JobParams, nest

    return JobParams.from_dict(nest({"model": str(model), "device": "cpu", "precision": "fp32", "size": 64,
                                     "steps": 4, "seed": 5, "window": 16, "overlap": 4, "distributed": "ray",
                                     "ray_address": "local", "workers": GPUS, **kw}))


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def test_local_cluster_listens_on_loopback_only_with_token_auth(cluster):
    """Every listening socket of this cluster (all its processes descend from this test process)."""
    import os
    import re

    assert cluster.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert os.environ.get("RAY_AUTH_MODE", "token") == "token"  # Ray's default for local clusters stays on
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True)
    if ss.returncode != 0:
        pytest.skip("ss is not available")
    ours = [ln for ln in ss.stdout.splitlines()
            if any(_descends_from(int(p), os.getpid()) for p in re.findall(r"pid=(\d+)", ln))]
    assert len(ours) >= 3, ss.stdout  # gcs, raylet, workers at least
    assert all(re.match(r"\[?(::ffff:)?127\.0\.0\.1\]?:", ln.split()[3]) for ln in ours), ours


def test_three_workers_equal_one_process(cluster, tiny_folder):
    """48 frames, 4 windows over 3 workers (2+1+1); guidance, SDE noise and replay steps all run."""
    from mf_backend.distributed.sharded import sample_on_ray
    from mf_backend.editing.pipeline import run_sampling
    from mf_backend.jobs import JobContext
    from mf_backend.models.loading import load_models

    params = _params(tiny_folder)
    t0 = time.perf_counter()
    one = run_sampling(load_models(str(tiny_folder), None, "cpu", torch.float32), _inputs(48), params)
    t1 = time.perf_counter()
    events = []
    many = sample_on_ray(_inputs(48), params, JobContext(sink=events.append, stages=(("load", 1.0), ("editing", 1.0))),
                         decode=False)
    t2 = time.perf_counter()
    diff = (many.latents - one.latents).abs().max().item()
    print(f"\n1 process {t1 - t0:.1f} s, 3 workers {t2 - t1:.1f} s; max |diff| edit {diff:.2e}; "
          f"sync {many.info['sync_ms_per_step']} ms, {many.info['sync_bytes_per_step']} bytes per step")
    assert sorted(many.info["windows_per_worker"]) == [1, 1, 2]
    assert diff <= 1e-5
    assert many.reconstruction is None and one.reconstruction is None  # stopped after the last guidance step
    assert len(many.guidance_log) == len(one.guidance_log)
    assert [e["done"] for e in events if e["stage"] == "editing"][-1] == 4


def _case(root, frames: int, size: int = 64):
    """An example-case folder (user poses and masks: no pose extraction) at 64x64."""
    from mf_backend.media import write_frames, write_masks

    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)  # noqa: E731
    m = np.zeros((frames, size, size), np.float32)
    m[:, 16:48, 10:30] = 1
    for name in ("source_images", "source_poses", "target_aligned_poses"):
        write_frames(img(), root / name)
    write_masks(m, root / "source_masks")
    write_masks(np.roll(m, 12, axis=2), root / "predicted_masks")
    return root


def _edit_params(case, out, model, **kw):
    return _params(model, source=str(case / "source_images"), driving=str(case / "target_aligned_poses"),
                   out=str(out), source_poses=str(case / "source_poses"),
                   target_aligned_poses=str(case / "target_aligned_poses"), source_masks=str(case / "source_masks"),
                   predicted_masks=str(case / "predicted_masks"), crop="letterbox", window=8, overlap=2, **kw)


def _gpus_free(ray, n: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("GPU", 0) >= n:
            return True
        time.sleep(0.1)
    return False


def _no_output(tmp_path) -> bool:
    return not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_edit_job_on_ray_writes_frames(cluster, tiny_folder, tmp_path):
    import json

    from mf_backend.edit import edit
    from mf_backend.jobs import JobContext
    from mf_backend.media import read_clip

    case = _case(tmp_path / "case", 20)
    res = edit(_edit_params(case, tmp_path / "out", tiny_folder, steps=2), JobContext())
    assert read_clip(res["out"]).frames.shape == (20, 64, 64, 3)
    info = json.loads((tmp_path / "out" / "edit.json").read_text())
    assert info["workers"] == GPUS and info["windows"] == 3 and info["memory"]["decode_batch"] >= 1
    assert _gpus_free(cluster, GPUS)


def _run_and_act(params, act):
    """Run the edit job; at the first finished step call act(ctx). Returns (exception, seconds from act)."""
    from mf_backend.edit import edit
    from mf_backend.jobs import JobContext

    ctx = JobContext(stages=(("load", 1.0), ("editing", 1.0)))
    acted = {}

    def sink(event):
        if event["stage"] == "editing" and event["done"] >= 1 and not acted:
            acted["t"] = time.monotonic()
            act(ctx)
    ctx.sink = sink
    try:
        edit(params, ctx)
    except Exception as exc:  # noqa: BLE001
        return exc, time.monotonic() - acted.get("t", time.monotonic())
    return None, 0.0


def test_killed_worker_fails_the_job_with_a_named_error(cluster, tiny_folder, tmp_path):
    from mf_backend.errors import WorkerLost

    case = _case(tmp_path / "case", 24)

    def kill_one(ctx):
        workers = [a for a in cluster.util.list_named_actors() if a.startswith("mf-window-")]
        cluster.kill(cluster.get_actor(sorted(workers)[1]), no_restart=True)
    exc, seconds = _run_and_act(_edit_params(case, tmp_path / "out", tiny_folder, steps=6), kill_one)
    print(f"\nkilled worker -> {type(exc).__name__} after {seconds:.2f} s: {exc}")
    assert isinstance(exc, WorkerLost) and seconds < 10
    assert _no_output(tmp_path)
    assert _gpus_free(cluster, GPUS)  # the other workers were released


def test_cancel_stops_every_worker(cluster, tiny_folder, tmp_path):
    from mf_backend.errors import Cancelled

    case = _case(tmp_path / "case", 24)
    exc, seconds = _run_and_act(_edit_params(case, tmp_path / "out", tiny_folder, steps=6), lambda ctx: ctx.cancel())
    print(f"\ncancel -> {type(exc).__name__} after {seconds:.2f} s")
    assert isinstance(exc, Cancelled) and seconds < 10
    assert _no_output(tmp_path)
    assert _gpus_free(cluster, GPUS) and not [a for a in cluster.util.list_named_actors()
                                              if a.startswith("mf-window-")]


def test_cluster_too_small_fails_before_any_work(cluster, tiny_folder):
    from mf_backend.distributed.sharded import sample_on_ray
    from mf_backend.errors import ClusterTooSmall
    from mf_backend.jobs import JobContext

    events = []
    t0 = time.perf_counter()
    with pytest.raises(ClusterTooSmall, match="needs 4"):
        sample_on_ray(_inputs(48), _params(tiny_folder, workers=4, window=8, overlap=2),
                      JobContext(sink=events.append, stages=(("load", 1.0), ("editing", 1.0))))
    assert time.perf_counter() - t0 < 5 and not [e for e in events if e["stage"] == "editing"]


def test_protocol_edit_on_ray_reports_progress_and_cancels(tiny_folder, tmp_path):
    """The add-on's path: `serve` as a real subprocess, `edit` with the Ray parameters (its own local
    cluster), progress notifications per step, then `cancel`: the job ends cancelled, nothing is left."""
    from conftest import BackendProcess

    case = _case(tmp_path / "case", 24)
    params = {**_edit_params(case, tmp_path / "out", tiny_folder, steps=30, workers=2).to_dict(), "job_id": "r1"}
    b = BackendProcess()
    try:
        b.send({"jsonrpc": "2.0", "id": "edit", "method": "edit", "params": params})
        steps = []
        while len(steps) < 2:
            msg = b.next_message(timeout=240)
            assert "method" in msg, msg
            if msg["params"]["stage"] == "editing":
                steps.append(msg["params"]["message"])
        t0 = time.monotonic()
        answers = b.cancel("r1", "edit")
        err, t_end = answers["edit"]
        print(f"\nprotocol: {steps[-1]!r}; cancel -> {err['error']['data']['type']} after {t_end - t0:.2f} s")
        assert "on 2 workers" in steps[-1]
        assert err["error"]["code"] == -32003 and t_end - t0 < 10
        assert _no_output(tmp_path)
    finally:
        b.close()
