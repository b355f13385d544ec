"""Score-guided editing: schedule, ConsistencyGuidance, windows, the two-branch sampler, the edit job."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mf_backend.editing.guidance import ConsistencyGuidance, GuidanceWeights, RegionMasks, PULL, PUSH
from mf_backend.editing.schedule import build_schedule
from mf_backend.editing.windows import WindowBlender, plan_windows, window_weights

TERMS = ("fg", "over", "body", "com")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny():
    from mf_backend.models.loading import build_models

    m = build_models("tiny", seed=0).eval()
    m.requires_grad_(False)
    return m


def _masks(frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    M_r = torch.zeros(frames, size, size)
    M_e = torch.zeros(frames, size, size)
    M_r[:, size // 4: 3 * size // 4, size // 8: size // 2] = 1
    M_e[:, size // 4: 3 * size // 4, 3 * size // 8: 3 * size // 4] = 1
    return M_r, M_e


# ---------------------------------------------------------------------------------------------- schedule


def test_schedule_50_steps_is_the_reference_table():
    plan = build_schedule(50, guidance=True, camera=True)
    assert [p.timestep for p in plan] == [999 - 20 * i for i in range(50)]
    assert [p.prev_timestep for p in plan] == [979 - 20 * i for i in range(49)] + [-1]
    assert [p.index for p in plan if p.guidance] == list(range(10)) + [10, 12, 14, 16, 18, 20, 22, 24, 26, 28]
    assert {p.index: p.repeats for p in plan if p.repeats > 1} == {22: 3, 24: 3, 26: 3, 28: 3}
    assert [p.index for p in plan if p.sde_in > 0] == list(range(11, 20))
    assert all(p.sde_in == 0.4 and p.sde_out == 0.0 for p in plan if p.sde_in > 0)
    assert [p.index for p in plan if p.camera] == list(range(20, 50))
    # guidance evaluations counting replays: 28 (method.md §A.5)
    assert sum(p.repeats for p in plan if p.guidance) == 28
    # zero-terminal-SNR alphas (method.md §A.3)
    assert plan[0].alpha == 0.0 and plan[-1].alpha_prev == 1.0
    assert math.isclose(plan[1].alpha, 2.8e-5, rel_tol=0.02)
    assert math.isclose(plan[20].alpha, 0.064, rel_tol=0.01)  # t = 599
    assert math.isclose(plan[49].alpha, 0.980, rel_tol=0.001)  # t = 19
    assert not any(p.camera for p in build_schedule(50, camera=False))
    off = build_schedule(50, guidance=False)
    assert not any(p.guidance or p.repeats > 1 for p in off)


def test_schedule_25_steps_keeps_the_shape():
    plan = build_schedule(25, guidance=True, camera=True)
    assert [p.timestep for p in plan] == [999 - 40 * i for i in range(25)]
    assert [p.index for p in plan if p.guidance] == [0, 1, 2, 3, 4, 6, 8, 10, 12, 14]
    assert [p.index for p in plan if p.repeats > 1] == [12, 14]
    assert [p.index for p in plan if p.sde_in > 0] == [6, 7, 8, 9]
    assert [p.index for p in plan if p.camera][0] == 10


# ---------------------------------------------------------------------------------------------- guidance


def _conv_features(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(16, 4, 3, 3, generator=g) * 0.3, torch.randn(8, 4, 3, 3, generator=g) * 0.3

    def feats(z):  # (1,4,F,h,w) -> {1: (1,16,F,h/2,w/2), 2: (1,8,F,h,w)}
        x = z[0].transpose(0, 1)
        f1 = torch.tanh(F.conv2d(F.avg_pool2d(x, 2), w1, padding=1))
        f2 = torch.tanh(F.conv2d(x, w2, padding=1))
        return {1: f1.transpose(0, 1)[None], 2: f2.transpose(0, 1)[None]}
    return feats


def _sign_check(feats, z, z_rec, masks, semantics):
    fr = {k: v.detach() for k, v in feats(z_rec).items()}
    for term in TERMS:
        w = GuidanceWeights(**{t: None if t == term else 0.0 for t in TERMS})  # the others off
        g = ConsistencyGuidance(w, semantics=semantics)
        G, before = g.gradient(feats, z, fr, masks)
        assert torch.isfinite(G).all() and G.abs().max() > 0, term
        step = 1e-2 / G.abs().max()
        _, _, after = g.energy(feats(z - step * G), fr, masks)
        change = sum(after[term]) - sum(before[term])
        if term in PULL[semantics]:
            assert change > 0, f"{semantics}: pull term {term} did not rise ({change})"
        else:
            assert term in PUSH[semantics]
            assert change < 0, f"{semantics}: push term {term} did not fall ({change})"


@pytest.mark.parametrize("semantics", ["code", "paper"])
def test_guidance_sign_on_random_features(semantics):
    torch.manual_seed(0)
    masks = RegionMasks(*_masks(3, 32), latent_hw=(8, 8))
    _sign_check(_conv_features(), torch.randn(1, 4, 3, 8, 8), torch.randn(1, 4, 3, 8, 8), masks, semantics)


def test_guidance_sign_on_tiny_unet(tiny):
    torch.manual_seed(1)
    f, size = 3, 64
    unet = tiny.unet
    tokens = torch.randn(1, f, 32)
    app = unet.appearance_adapter(torch.rand(1, f, 3, size, size) * 2 - 1)
    pose = tiny.pose_controller(torch.rand(1, 3, f, size, size))

    def feats(z):
        return unet.features(z, 500, tokens, pose, app, (1, 2))
    masks = RegionMasks(*_masks(f, size), latent_hw=(8, 8))
    _sign_check(feats, torch.randn(1, 4, f, 8, 8), torch.randn(1, 4, f, 8, 8), masks, "code")


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_guidance_finite_with_empty_and_full_masks(tiny, fill):
    f, size = 2, 64
    unet = tiny.unet
    tokens = torch.randn(1, f, 32)
    app = unet.appearance_adapter(torch.rand(1, f, 3, size, size) * 2 - 1)

    def feats(z):
        return unet.features(z, 999, tokens, None, app, (1, 2))
    full = torch.full((f, size, size), fill)
    for M_r, M_e in ((full, full), (full, 1 - full)):
        masks = RegionMasks(M_r, M_e, latent_hw=(8, 8))
        fr = feats(torch.randn(1, 4, f, 8, 8))
        G, report = ConsistencyGuidance().gradient(feats, torch.randn(1, 4, f, 8, 8), fr, masks)
        assert torch.isfinite(G).all()
        assert all(math.isfinite(v) for vals in report.values() for v in vals)


def test_region_means_equal_the_reference_upsampling():
    """Area-weighted means at feature resolution == nearest x2/x4 up-sampling to 2x latent, as coded."""
    torch.manual_seed(0)
    M_r, M_e = _masks(2, 64)
    M_e[1, :, 40:] = 0
    masks = RegionMasks(M_r, M_e, latent_hw=(8, 8))
    fe = {1: torch.randn(1, 5, 2, 4, 4), 2: torch.randn(1, 5, 2, 8, 8)}
    fr = {1: torch.randn(1, 5, 2, 4, 4), 2: torch.randn(1, 5, 2, 8, 8)}
    sims = ConsistencyGuidance().similarities(fe, fr, masks)
    r = masks.regions()
    for li, k in enumerate((1, 2)):
        up_e = F.interpolate(fe[k][0].transpose(0, 1), size=(16, 16), mode="nearest")  # (F,C,16,16)
        up_r = F.interpolate(fr[k][0].transpose(0, 1), size=(16, 16), mode="nearest")
        cos = F.cosine_similarity(up_e, up_r, dim=1)
        body = (cos * r["M_body"]).sum((1, 2)) / r["M_body"].sum((1, 2))
        assert torch.allclose(sims["body"][li][0], body, atol=1e-5)
        pe = (up_e * r["M_e"][:, None]).sum((2, 3)) / r["M_e"].sum((1, 2))[:, None]
        pr = (up_r * r["M_r"][:, None]).sum((2, 3)) / r["M_r"].sum((1, 2))[:, None]
        assert torch.allclose(sims["fg"][li][0], F.cosine_similarity(pe, pr, dim=1), atol=1e-5)


def test_paper_semantics_uses_paper_weights_by_default():
    g = ConsistencyGuidance(GuidanceWeights(), semantics="paper")
    assert (g.weights.over, g.weights.body) == (6.0, 2.4)
    g = ConsistencyGuidance(GuidanceWeights(over=3.0), semantics="paper")
    assert (g.weights.over, g.weights.body) == (3.0, 2.4)  # an explicit weight wins, the others stay the paper's
    g = ConsistencyGuidance(GuidanceWeights(), semantics="code")
    assert (g.weights.fg, g.weights.over, g.weights.body, g.weights.com) == (4.0, 1.2, 6.0, 1.2)


def test_paper_semantics_with_the_body_term_off_keeps_the_papers_overlap_weight():
    """w_body=0 under "paper" used to leave w_over at the code's 1.2 (the swap needed both at the code's)."""
    from mf_backend.editing.guidance import guidance_from_params
    from mf_backend.params import JobParams

    p = JobParams.from_dict({"advanced": {"guidance_semantics": "paper", "w_body": 0}})
    g = guidance_from_params(p)
    assert (g.weights.fg, g.weights.over, g.weights.body, g.weights.com) == (4.0, 6.0, 0.0, 1.2)
    assert not g.weights.active("body") and g.weights.active("over") and g.enabled
    legacy = guidance_from_params(JobParams.from_dict({"guidance_semantics": "paper", "use_body": False}))
    assert legacy.weights == g.weights  # the deprecated switch maps to the same weights
    off = guidance_from_params(JobParams.from_dict({"advanced": {"w_fg": 0, "w_over": 0, "w_body": 0, "w_com": 0}}))
    assert not off.enabled


# ---------------------------------------------------------------------------------------------- windows


def test_windows_of_a_70_frame_clip_cover_and_blend():
    wins = plan_windows(70, 24, 4)
    assert all(len(w) == 24 for w in wins) and wins[0].start == 0 and wins[-1].stop == 70
    covered = np.zeros(70, int)
    for w in wins:
        covered[w.start:w.stop] += 1
    assert (covered >= 1).all()
    assert all(a.stop - b.start >= 4 for a, b in zip(wins, wins[1:]))  # neighbours share >= overlap frames
    # blending constant windows: overlaps get a convex mix, ramps are monotone, the rest is exact
    like = torch.zeros(1, 1, 70, 1, 1)
    bl = WindowBlender(like, wins)
    for k, w in enumerate(wins):
        bl.add(k, torch.full((1, 1, len(w), 1, 1), float(k)))
    out = bl.result()[0, 0, :, 0, 0]
    assert out[0] == 0 and out[-1] == len(wins) - 1
    shared = range(wins[1].start, wins[0].stop)
    vals = out[shared.start:shared.stop]
    assert ((vals > 0) & (vals < 1)).all() and (vals[1:] > vals[:-1]).all()
    assert plan_windows(20, 24, 4) == [range(20)]
    ws = window_weights(wins)
    assert all((w > 0).all() for w in ws)


# ---------------------------------------------------------------------------------------------- sampler


def _inputs(frames: int, size: int = 64, seed: int = 0):
    from mf_backend.editing.sampler import EditInputs

    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.randint(0, 256, (frames, size, size, 3), generator=g, dtype=torch.uint8)  # noqa: E731
    M_r, M_e = _masks(frames, size)
    return EditInputs(img(), img(), img(), M_r, M_e)


def _run(tiny, frames=4, **kw):
    from mf_backend.editing.sampler import MotionEditSampler, SamplerSettings

    settings = SamplerSettings(**{"steps": 5, "seed": 3, **kw})
    return MotionEditSampler(tiny, ConsistencyGuidance(), settings)(_inputs(frames))


def test_sampler_is_deterministic_and_seeded(tiny):
    a, b = _run(tiny), _run(tiny)
    assert torch.equal(a.latents, b.latents) and torch.isfinite(a.latents).all()
    assert a.reconstruction is None  # stopped after the last guidance step: nothing reads it
    r = _run(tiny, stop_reconstruction=False)
    assert torch.equal(r.latents, a.latents) and not torch.equal(a.latents, r.reconstruction)
    c = _run(tiny, seed=4)
    assert not torch.allclose(a.latents, c.latents)
    assert a.guidance_log and {"fg", "over", "body", "com"} <= set(a.guidance_log[0])
    assert {"reconstruction", "editing", "guidance"} <= set(a.timings)


def test_sampler_windows_and_camera_mode(tiny):
    one = _run(tiny, frames=5, window=24, camera=True)
    win = _run(tiny, frames=5, window=4, overlap=2, camera=True)  # 2 windows, blended every step
    assert win.latents.shape == one.latents.shape and torch.isfinite(win.latents).all()
    assert not torch.allclose(_run(tiny, frames=5, camera=False).latents, one.latents)


def test_camera_hook_concatenates_background_keys(tiny):
    from mf_backend.editing.camera import inject_hook
    from mf_backend.editing.sampler import MotionEditSampler, SamplerSettings

    s = MotionEditSampler(tiny, ConsistencyGuidance(), SamplerSettings(steps=2, camera=True))
    inputs = _inputs(2)
    inputs.tokens = s.clip_tokens(inputs.frames)
    masks = RegionMasks(inputs.M_r, inputs.M_e, (8, 8))
    c = s.window_conditions(inputs, masks, range(2))
    store = {}
    k_rec = torch.randn(2, 16, 8)
    store["x"] = (k_rec, k_rec)
    hook = inject_hook(store, c.masks, (8, 8))
    key = torch.ones(4, 16, 8)  # CFG batch of 2 x 2 frames, 4x4 tokens
    k, v = hook("x", None, key, key)
    assert k.shape == (4, 32, 8)
    m_e = c.masks.nearest("M_e", (4, 4)).reshape(2, 16, 1)
    m_bg = 1 - c.masks.nearest("M_r", (4, 4)).reshape(2, 16, 1)
    assert torch.equal(k[:2, :16], m_e.expand(2, 16, 8)) and torch.equal(k[2:, 16:], k_rec * m_bg)


def test_replay_skips_the_wasted_renoise_pass(tiny, monkeypatch):
    from mf_backend.editing import sampler as mod

    calls = []
    orig = mod.MotionEditSampler._renoise
    monkeypatch.setattr(mod.MotionEditSampler, "_renoise", lambda self, *a: calls.append(1) or orig(self, *a))
    plan = build_schedule(25)
    res = _run(tiny, frames=1, steps=25, guidance_scale=1.0)
    assert len(calls) == sum(p.repeats - 1 for p in plan) == 4
    assert len(res.guidance_log) == sum(p.repeats for p in plan if p.guidance)


# ---------------------------------------------------------------------------------------------- edit job


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny):
    from mf_backend.models.loading import save_models

    return save_models(tiny, tmp_path_factory.mktemp("models") / "tiny")


def _case(root, frames=4, h=48, w=64):
    """A user case in the example-case layout, non-square to exercise the letterbox."""
    from mf_backend.media import write_frames, write_masks

    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8)  # noqa: E731
    m = np.zeros((frames, h, w), np.float32)
    m[:, 10:40, 10:30] = 1
    write_frames(img(), root / "source_images")
    write_frames(img(), root / "source_poses")
    write_frames(img(), root / "target_aligned_poses")
    write_masks(m, root / "source_masks")
    write_masks(np.roll(m, 12, axis=2), root / "predicted_masks")
    return root


def _params(case, out, model, **kw):
    from mf_backend.params import JobParams

    return JobParams.from_dict({
        "source": str(case / "source_images"), "driving": str(case / "target_aligned_poses"), "out": str(out),
        "model": str(model), "device": "cpu", "precision": "fp32", "steps": 4, "size": 64, "seed": 1,
        "source_poses": str(case / "source_poses"), "target_aligned_poses": str(case / "target_aligned_poses"),
        "source_masks": str(case / "source_masks"), "predicted_masks": str(case / "predicted_masks"), **kw})


def test_edit_job_end_to_end(tmp_path, tiny_folder):
    from mf_backend.edit import edit
    from mf_backend.jobs import JobContext
    from mf_backend.media import read_clip

    case = _case(tmp_path / "case")
    events = []
    ctx = JobContext(sink=events.append)
    res = edit(_params(case, tmp_path / "out", tiny_folder), ctx)
    out = read_clip(res["out"]).frames
    assert out.shape == (4, 48, 64, 3) and (res["width"], res["height"]) == (64, 48)
    info = json.loads((tmp_path / "out" / "edit.json").read_text())
    assert info["frames"] == 4 and info["memory"]["checkpoint"] == "none"  # CPU: nothing to plan
    assert any(e["stage"] == "editing" for e in events) and any(e["stage"] == "decode" for e in events)
    # deterministic for a fixed seed
    res2 = edit(_params(case, tmp_path / "out2", tiny_folder), JobContext())
    assert np.array_equal(out, read_clip(res2["out"]).frames)


def test_cancel_mid_run_leaves_no_output(tmp_path, tiny_folder):
    from mf_backend.edit import edit
    from mf_backend.errors import Cancelled
    from mf_backend.jobs import JobContext

    case = _case(tmp_path / "case")
    ctx = JobContext()

    def sink(event):
        if event["stage"] == "editing" and event["done"] >= 1:
            ctx.cancel()
    ctx.sink = sink
    with pytest.raises(Cancelled):
        edit(_params(case, tmp_path / "out", tiny_folder), ctx)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
