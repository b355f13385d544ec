"""Jobs as a newcomer meets them: validation before any work, cancel between sub-passes, progress that
moves and never jumps, the model's own defaults and the demo-model notice, output folders (stale
temporaries, permissions, zero-padded names), and frame ranges that keep the alignment anchored."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, assert_matches_docs, write_noise_avi

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from mf_backend.models.loading import build_models, save_models

    return save_models(build_models("tiny", seed=0), tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """8 random 64² frames in the example-case layout (poses and masks given: no pose/mask model runs)."""
    from mf_backend.media import write_frames, write_masks

    root = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    m = np.zeros((8, 64, 64), np.float32)
    m[:, 10:54, 20:40] = 1
    for kind in ("source_images", "source_poses", "target_aligned_poses"):
        write_frames(frames, root / kind)
    write_masks(m, root / "source_masks")
    write_masks(np.roll(m, 8, axis=2), root / "predicted_masks")
    return root


def _params(case, out, **kw) -> dict:
    d = {"source": str(case / "source_images"), "driving": str(case / "target_aligned_poses"), "out": str(out),
         "device": "cpu", "precision": "fp32", "steps": 2, "size": 64, "crop": "letterbox",
         "source_poses": str(case / "source_poses"), "target_aligned_poses": str(case / "target_aligned_poses"),
         "source_masks": str(case / "source_masks"), "predicted_masks": str(case / "predicted_masks")}
    d.update(kw)
    return d


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("field,value,words", [
    ("seed", 99999999999999999999, "seed must be in"),
    ("seed", -1, "seed must be in"),
    ("size", 100000, "size must be a multiple of 32"),
    ("size", 100, "size must be a multiple of 32"),
    ("energy_scale", -1, "energy_scale must be in"),
    ("source_fps", 0, "source_fps must be in"),
    ("driving_fps", -24, "driving_fps must be in"),
    ("tta_steps", -5, "tta_steps must be in"),
    ("steps", 0, "steps must be in"),
    ("guidance_scale", -3, "guidance_scale must be in"),
    ("w_body", -1, "w_body must be in"),
    ("threads", -1, "threads must be in"),
    ("frame_start", -2, "frame_start must be in"),
    ("pose_extractor", "openpose", "pose_extractor must be one of"),
    ("mask_predictor", "sam", "mask_predictor must be one of"),
    ("device", "tpu", "device must be one of"),
    ("precision", "fp8", "precision must be one of"),
    ("checkpoint", "everything", "checkpoint must be one of"),
    ("window", 33, "window must be in"),
    ("w_fg", -0.5, "w_fg must be in"),
    ("guidance_semantics", "both", "guidance_semantics must be one of"),
])
def test_every_range_is_checked_before_any_work(field, value, words):
    from mf_backend.errors import InvalidParams
    from mf_backend.params import JobParams, nest

    with pytest.raises(InvalidParams, match=words):
        JobParams.from_dict(nest({"source": "s", "driving": "d", "out": "o", field: value}))


def test_preflight_names_the_users_files(tmp_path, case):
    """Tiny frames, missing DWPose weights, a size far above the model's, an unwritable output: each is
    refused at once, naming the user's path (never an internal .partial folder), and nothing is created."""
    from mf_backend.dispatch import check_params
    from mf_backend.errors import BadInputMedia, InvalidParams, WeightsMissing
    from mf_backend.media import write_frames
    from mf_backend.params import JobParams

    one_pixel = tmp_path / "one_pixel"
    write_frames(np.zeros((2, 1, 1, 3), np.uint8), one_pixel)
    out = tmp_path / "out"
    p = JobParams.from_dict(_params(case, out, source=str(one_pixel)))
    with pytest.raises(BadInputMedia, match="one_pixel.*1x1"):
        check_params("edit", p)
    p = JobParams.from_dict(_params(case, out, pose_extractor="dwpose", source_poses=None,
                                    models_dir=str(tmp_path / "weights")))
    with pytest.raises(WeightsMissing, match="dwpose.*weights"):
        check_params("prepare", p)
    p = JobParams.from_dict(_params(case, out, model="demo", size=512))
    with pytest.raises(InvalidParams, match="size 512 is more than 4x.*demo.*64"):
        check_params("edit", p)
    from mf_backend.files import atomic_output_dir

    not_a_folder = tmp_path / "notes.txt"  # unwritable for root too: a file where a folder must go
    not_a_folder.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for where in [not_a_folder] + ([] if os.access(locked, os.W_OK) else [locked]):
            p = JobParams.from_dict(_params(case, where / "result"))
            with pytest.raises(InvalidParams, match=f"cannot write the output folder '{where / 'result'}'"):
                check_params("edit", p)
            with pytest.raises(InvalidParams, match="result") as err, atomic_output_dir(where / "result"):
                pass  # the same error if the folder turns unwritable after the check
            assert ".partial" not in str(err.value)
    finally:
        locked.chmod(0o755)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- output folders


def test_stale_partials_of_dead_runs_are_removed_and_outputs_get_normal_permissions(tmp_path):
    from mf_backend.files import OWNER_FILE, atomic_output_dir, frame_pattern

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / ".old.partial-1234abcd"
    stale.mkdir()
    (stale / "frame_0.png").write_bytes(b"half written")
    (stale / OWNER_FILE).write_text(f"{os.uname().nodename} {dead.pid}")
    alive = tmp_path / ".busy.partial-feedbeef"  # another run, still going: must survive
    alive.mkdir()
    (alive / OWNER_FILE).write_text(f"{os.uname().nodename} {os.getpid()}")
    foreign = tmp_path / ".user.partial-notours"  # no owner file: not ours to delete
    foreign.mkdir()
    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "result") as tmp:
            (tmp / "a.txt").write_text("x")
    finally:
        os.umask(old)
    assert not stale.exists() and alive.exists() and foreign.exists()
    assert (tmp_path / "result" / "a.txt").exists() and not (tmp_path / "result" / OWNER_FILE).exists()
    assert (tmp_path / "result").stat().st_mode & 0o777 == 0o755
    assert frame_pattern(10).format(k=9) == "frame_0009.png" and frame_pattern(12345).format(k=7) == "frame_00007.png"


# ---------------------------------------------------------------------------------------------- cancel


def test_cancel_stops_at_the_next_sub_pass(tiny_folder):
    """A cancel that arrives in the middle of a sampling step stops the sampler as the next sub-pass
    (reconstruction, CFG half, guidance, window) begins, not at the end of the step."""
    import torch

    from mf_backend.editing.pipeline import run_sampling
    from mf_backend.editing.sampler import EditInputs, StageTimer
    from mf_backend.errors import Cancelled
    from mf_backend.jobs import JobContext
    from mf_backend.models.loading import load_models
    from mf_backend.params import AdvancedParams, JobParams

    g = torch.Generator().manual_seed(0)
    img = lambda: torch.randint(0, 256, (4, 64, 64, 3), generator=g, dtype=torch.uint8)  # noqa: E731
    M = torch.zeros(4, 64, 64)
    M[:, 8:56, 16:32] = 1
    inputs = EditInputs(img(), img(), img(), M, M.roll(8, 2))
    models = load_models(str(tiny_folder), None, "cpu", torch.float32)
    ctx = JobContext()
    entered, steps_done = [], []

    class Timer(StageTimer):  # records which sub-pass begins, and cancels after the first reconstruction
        @contextlib.contextmanager
        def section(self, name):
            entered.append((name, time.perf_counter()))
            with super().section(name):
                yield
            if name == "reconstruction":
                ctx.cancel()

    with pytest.raises(Cancelled):
        run_sampling(models, inputs, JobParams(steps=5, size=64, advanced=AdvancedParams(window=2, overlap=0)),
                     lambda d, t, m: steps_done.append(d) if d > 0 else None, Timer("cpu", should_stop=ctx.check_cancelled))
    names = [n for n, _ in entered]
    assert names.count("reconstruction") == 1 and names[-2] == "reconstruction"  # stopped at the next sub-pass
    assert steps_done == []  # ... inside step 0
    sections = [t for _, t in entered]
    print(f"sub-pass before the cancel took {1000 * (sections[-1] - sections[-2]):.1f} ms; stopped at the next one")


# ---------------------------------------------------------------------------------------------- progress, model


def test_edit_progress_is_monotone_never_jumps_and_reports_the_model_used(tmp_path, case):
    """A whole served-style edit through the dispatcher with the demo model's defaults: progress never goes
    back and never jumps by more than one stage's share; the result and edit.json name the model actually
    used, its default size and steps, and say that the demo model cannot edit real people. A deprecated flat
    key and an unknown one (with the default's value: the same edit) come back as `warnings`."""
    from mf_backend.dispatch import run_job
    from mf_backend.edit import STAGES
    from mf_backend.jobs import JobContext
    from mf_backend.params import JobParams

    events = []
    params = JobParams.from_dict({k: v for k, v in _params(case, tmp_path / "out", model="demo", steps=None,
                                                             size=None, preview=True, window=24,
                                                             colour="blue").items() if v is not None})
    res = run_job("edit", params, JobContext(sink=events.append))
    assert res["model"] == "demo" and (res["size"], res["steps"]) == (64, 25)
    assert_matches_docs("edit", {"job_id": "e", **res}, optional=("video", "notice"))
    assert len(res["warnings"]) == 2 and "advanced.window" in res["warnings"][0] and "'colour'" in res["warnings"][1]
    assert "demo model" in res["notice"] and "cannot edit real people" in res["notice"]
    info = json.loads((tmp_path / "out" / "edit.json").read_text())
    assert info["model"] == "demo" and info["notice"] == res["notice"]
    assert sorted(p.name for p in (tmp_path / "out").glob("frame_*.png"))[:2] == ["frame_0000.png", "frame_0001.png"]
    assert (tmp_path / "out" / "edit.mp4").stat().st_size > 0
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    share = max(w for _, w in STAGES) / sum(w for _, w in STAGES)
    assert max(np.diff([0.0] + fractions)) <= share + 1e-6
    assert {e["stage"] for e in events} <= {name for name, _ in STAGES}


def test_cli_help_describes_each_commands_own_flags():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "mf_backend", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=str(REPO), env=env, timeout=120).stdout
    prepare, edit = run("prepare", "--help"), run("edit", "--help")
    sampling = ("--steps", "--guidance-scale", "--seed", "--model ", "--precision", "--size", "--w-fg", "--energy-scale",
                "--guidance-semantics", "--estimator-weights", "--checkpoint", "--compile", "--window", "--workers",
                "--output-format", "--preview", "--chunk")
    assert not [flag for flag in sampling if flag in prepare], prepare  # prepare samples nothing
    assert "--tta-steps" in prepare and "--mask-predictor" in prepare and "--source-fps" in prepare
    assert "{auto,mediapipe,dwpose,decode}" in prepare and "source clip: a video file" in prepare
    assert "--guidance-scale" in edit and "{trim,loop,hold-last,stretch}" in edit
    # the advanced group: its own help sections, after the everyday ones, with allowed values
    sections = [line for line in edit.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert [s.split(":")[0] for s in sections[-3:]] == ["advanced"] * 3 and "real footage:" in sections
    assert edit.index("advanced: consistency-guidance") < edit.index("--w-fg") and "{code,paper}" in edit
    assert "low-memory" in edit.split("--checkpoint CHECKPOINT")[1]
    from mf_backend.params import job_fields

    for job, text in (("edit", edit), ("prepare", prepare)):  # every flag has a description
        for f in job_fields(job):
            assert f.metadata["help"] and "--" + f.name.replace("_", "-") in text


def test_frame_range_keeps_the_alignment_anchored_to_the_edited_frames_at_1080p(tmp_path):
    """With frame_start 2..frame_end 4 the aligned driving skeleton starts on the source person at frame 2
    (first-frame alignment), as it does at frame 0 without a range — not where frame 0 would put it."""
    from mf_backend.media import write_frames
    from mf_backend.params import JobParams
    from mf_backend.pose.render import render_poses
    from mf_backend.prepare import compute_poses
    from mf_backend.synthetic import make_pair

    pair = make_pair(3, frames=6, size=(1080, 1920), x_frac=0.3, height_frac=0.55, driving_size=(270, 480))
    write_frames(render_poses(pair.source.poses, 270, 480), tmp_path / "source_poses")
    frames = np.zeros((6, 1080, 1920, 3), np.uint8)  # only the size matters: the poses come from the folder
    neck = 1
    for a, b in ((None, None), (2, 4)):
        params = JobParams(source="s", driving="d", out="o", source_poses=str(tmp_path / "source_poses"),
                           pose_extractor="decode", frame_start=a, frame_end=b)
        prep = compute_poses(frames, pair.driving.pose_renders, params, _NoCtx())
        first = a or 0
        src, aligned = prep.source.body[:, neck, :2], prep.aligned.body[:, neck, :2]
        gap = np.linalg.norm(aligned[first] - src[first])
        print(f"range {a}..{b}: aligned neck {aligned[first].round()} vs source {src[first].round()} ({gap:.1f} px)")
        assert gap < 3.0
        if a is not None:  # frames outside the range keep the source pose
            assert np.array_equal(prep.aligned.body[:a], prep.source.body[:a])
            assert np.array_equal(prep.aligned.body[b + 1:], prep.source.body[b + 1:])


class _NoCtx:
    def progress(self, *a, **k):
        pass


def test_cli_edit_terminal_shows_progress_not_third_party_noise(tmp_path, case, tiny_folder):
    """A CLI edit prints progress and our own messages; library warnings (diffusers' float32 note, weight
    loading bars) stay off the terminal; the log file gets our records."""
    log = tmp_path / "backend.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MF_LOG_FILE": str(log)}
    args = [f"--{k.replace('_', '-')}={v}" for k, v in _params(case, tmp_path / "out", model=str(tiny_folder)).items()]
    r = subprocess.run([sys.executable, "-m", "mf_backend", "edit", *args, "--threads", "1"], capture_output=True,
                       text=True, cwd=str(REPO), env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == str(tiny_folder)
    lines = r.stderr.splitlines()
    assert any(line.startswith("[") and "editing" in line for line in lines)
    noisy = [line for line in lines if not line.startswith("[") and " mf_backend" not in line]
    assert noisy == [], noisy
    assert "mf_backend" in log.read_text()


def test_a_truncated_video_is_refused_not_edited_with_what_decodes(tmp_path, case):
    """An AVI cut in half still claims 24 frames; only 12 decode: the job names the file and stops."""
    from mf_backend.errors import BadInputMedia
    from mf_backend.jobs import JobContext
    from mf_backend.params import JobParams
    from mf_backend.prepare import prepare

    whole = write_noise_avi(tmp_path / "whole.avi", 24, (64, 64))
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    params = JobParams.from_dict(_params(case, tmp_path / "out", source=str(cut), predicted_masks=None))
    with pytest.raises(BadInputMedia, match=r"cut.avi' says it has 24 frames but only 1\d decode"):
        prepare(params, JobContext())
    assert not (tmp_path / "out").exists()


def test_eta_is_within_2x_of_the_truth_after_the_first_tenth(tmp_path, case, tiny_folder):
    """Every ETA sent after 10 % of the job's time is within 2x of the time that really remained (the last
    two seconds aside, where the decode/write share of a tiny model is noise). 60 steps: on an idle machine
    12 steps ended in 1.6 s, leaving no ETA to check."""
    from mf_backend.dispatch import run_job
    from mf_backend.jobs import JobContext
    from mf_backend.params import JobParams

    events = []
    t0 = time.monotonic()
    run_job("edit", JobParams.from_dict(_params(case, tmp_path / "out", model=str(tiny_folder), steps=60, threads=1)),
            JobContext(sink=lambda e: events.append((time.monotonic(), e))))
    t1 = time.monotonic()
    ratios = [(e["eta_s"] / (t1 - t), e["stage"]) for t, e in events
              if t - t0 > 0.1 * (t1 - t0) and t1 - t > 2.0 and e["eta_s"] is not None]
    assert ratios, f"job {t1 - t0:.1f} s: no ETA between its first tenth and its last 2 s"
    print(f"job {t1 - t0:.1f} s; ETA/true over {len(ratios)} events: "
          f"{min(r for r, _ in ratios):.2f}..{max(r for r, _ in ratios):.2f}")
    assert ratios and all(0.5 <= r <= 2.0 for r, _ in ratios), ratios


def test_progress_moves_through_a_stage_made_of_sub_steps():
    """The masks stage: source masks count 0..F, then the predictor's adaptation counts 0..steps again.
    Inside ctx.part each fills its share of the stage, so the bar moves through the adaptation too."""
    from mf_backend.jobs import JobContext
    from mf_backend.prepare import STAGES

    events = []
    ctx = JobContext(sink=events.append, stages=STAGES)
    ctx.progress("poses", 1, 1)
    with ctx.part(0.0, 0.2):
        for f in range(11):
            ctx.progress("masks", f, 10)
    before = round(ctx._fraction, 4)  # events carry 4 decimals
    with ctx.part(0.2, 1.0):
        seen = []
        for step in range(61):
            ctx._last_emit = 0.0  # every event, not rate-limited
            ctx.progress("masks", step, 60)
            seen.append(events[-1]["fraction"])
    assert seen[0] == before and seen[-1] > before
    assert len(set(seen)) > 50  # it moves at (almost) every adaptation step
    weights = dict(STAGES)
    share = weights["masks"] / sum(weights.values())
    assert abs(seen[-1] - before - 0.8 * share) < 1e-3
