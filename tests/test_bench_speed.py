"""Speed switches (feature reuse, fused guidance, checkpointing) are exact; the `bench speed` command runs on CPU."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mf_backend.editing.guidance import LEVELS, ConsistencyGuidance


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny64():
    from mf_backend.models.loading import build_models

    m = build_models("tiny", seed=0).eval().to("cpu", torch.float64)
    m.requires_grad_(False)
    return m


def test_forward_with_features_gives_output_and_estimator_features(tiny64):
    unet = tiny64.unet
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 3, 8, 8, generator=g, dtype=torch.float64)
    ctx = torch.randn(1, 3, unet.config.cross_attention_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        v, feats = unet.forward_with_features(z, 400, ctx, levels=LEVELS)
        assert torch.equal(v, unet(z, 400, ctx))
        ref = unet.features(z, 400, ctx, levels=LEVELS)
    assert set(feats) == set(LEVELS) and all(torch.equal(feats[k], ref[k]) for k in LEVELS)
    zz = z.clone().requires_grad_(True)
    v, feats = unet.forward_with_features(zz, 400, ctx, levels=LEVELS, grad_through_sample=False)
    assert feats[2].requires_grad and not v.requires_grad  # the tail stores no graph
    with pytest.raises(ValueError, match="levels"):
        unet.features(z, 400, ctx, levels=(9,))


def test_single_token_cross_attention_equals_the_full_attention():
    """One CLIP token per frame: the cross-attention skips the query projection and the attention
    product (the one key's softmax weight is exactly 1); same output, and the same zero gradient
    through the queries, as the full computation."""
    import torch.nn.functional as F

    from mf_backend.models.attention import Attention

    g = torch.Generator().manual_seed(0)
    attn = Attention(32, 4, context_dim=24).double()
    x = torch.randn(6, 50, 32, generator=g, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(6, 1, 24, generator=g, dtype=torch.float64)
    out = attn(x, ctx)

    def heads(t):
        return t.view(6, t.shape[1], 4, 8).transpose(1, 2)
    full = F.scaled_dot_product_attention(heads(attn.to_q(x)), heads(attn.to_k(ctx)), heads(attn.to_v(ctx)))
    ref = attn.to_out[0](full.transpose(1, 2).reshape(6, 50, 32))
    assert out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-12, atol=1e-12)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    assert g_ref.abs().max() < 1e-12  # rounding only
    assert torch.autograd.grad(out.sum(), x, allow_unused=True)[0] is None  # exactly nothing here
    two = torch.randn(6, 2, 24, generator=g, dtype=torch.float64)  # two tokens: the full attention
    assert torch.autograd.grad(attn(x, two).sum(), x)[0].abs().max() > 1e-6


# the path before the speed work: every pass separate, the reconstruction to the last step
SEPARATE = dict(reuse_features=False, fuse_guidance=False, batch_passes=False, stop_reconstruction=False)


def _sample(models, monkeypatch, frames=3, **kw):
    """The sampler's result and every guidance G it applied (captured at the DDIM step)."""
    from mf_backend.editing import sampler as mod
    from mf_backend.bench.inputs import random_inputs
    from mf_backend.editing.schedule import ddim_step

    Gs = []

    def step(z, v, p, G=None, *a):
        if G is not None:
            Gs.append(G)
        return ddim_step(z, v, p, G, *a)
    monkeypatch.setattr(mod, "ddim_step", step)
    settings = mod.SamplerSettings(**{"steps": 3, "seed": 1, **kw})
    res = mod.MotionEditSampler(models, ConsistencyGuidance(), settings)(random_inputs(frames, 64, 0))
    return res, Gs


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to float32 rounding: the UNet runs in float64 here, the DDIM arithmetic in float32, and a
    batched call may round the last float32 bit differently (a real difference is O(0.1), see below)."""
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_reuse_fused_batched_and_stopped_equal_the_separate_passes(tiny64, monkeypatch):
    from mf_backend.editing import sampler as mod

    fused = []
    orig = mod.MotionEditSampler._fused_guidance
    monkeypatch.setattr(mod.MotionEditSampler, "_fused_guidance", lambda self, *a: fused.append(1) or orig(self, *a))
    ref, G_ref = _sample(tiny64, monkeypatch, **SEPARATE)
    assert not fused and G_ref and G_ref[0].abs().max() > 0  # guidance is really acting
    other, _ = _sample(tiny64, monkeypatch, **SEPARATE, guidance_scale=3.0)
    assert not _same(other.latents, ref.latents)  # the tolerance sees a small change of the edit
    for kw in ({}, {"checkpoint": "all"}, {"checkpoint": "down0,up2"}, {"batch_passes": False},
               {**SEPARATE, "batch_passes": True}, {**SEPARATE, "stop_reconstruction": True}):
        fused.clear()
        res, G = _sample(tiny64, monkeypatch, **kw)
        assert len(fused) == (len(G_ref) if kw.get("fuse_guidance", True) else 0)
        assert len(G) == len(G_ref) and all(_same(a, b) for a, b in zip(G, G_ref))
        assert _same(res.latents, ref.latents)
        if kw.get("stop_reconstruction", True):
            assert res.reconstruction is None  # 3 steps: guidance at step 0 only, then it stops
        else:
            assert _same(res.reconstruction, ref.reconstruction)
    # checkpointing is switched off again afterwards
    assert not any(b.gradient_checkpointing for b in (*tiny64.unet.down_blocks, *tiny64.unet.up_blocks))


@pytest.mark.parametrize("kw", [dict(steps=25, guidance_scale=1.0), dict(steps=4, camera=True, window=2, overlap=1)],
                         ids=["replay, no CFG", "camera, windows"])
def test_batched_and_stopped_equal_the_separate_passes_in_replay_and_camera_mode(tiny64, monkeypatch, kw):
    ref, G_ref = _sample(tiny64, monkeypatch, frames=3, **kw, **SEPARATE)
    res, G = _sample(tiny64, monkeypatch, frames=3, **kw)
    assert len(G) == len(G_ref) and all(_same(a, b) for a, b in zip(G, G_ref))
    assert _same(res.latents, ref.latents)
    if kw.get("camera"):  # the K/V are read to the last step
        assert _same(res.reconstruction, ref.reconstruction)


def test_the_reconstruction_stops_after_the_last_guidance_step(tiny64):
    from mf_backend.bench.inputs import random_inputs
    from mf_backend.editing.sampler import MotionEditSampler, SamplerSettings
    from mf_backend.editing.schedule import build_schedule, last_reconstruction_step

    assert last_reconstruction_step(build_schedule(50)) == 28  # 29 of 50 reconstruction passes
    assert last_reconstruction_step(build_schedule(50, camera=True)) == 49
    assert last_reconstruction_step(build_schedule(50, guidance=False)) == -1
    assert last_reconstruction_step(build_schedule(50), stop=False) == 49
    calls = []
    unet = tiny64.unet
    handle = unet.conv_in.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        s = MotionEditSampler(tiny64, ConsistencyGuidance(), SamplerSettings(steps=6, guidance_scale=1.0))
        s(random_inputs(2, 64, 0))
    finally:
        handle.remove()
    # UNet rows (x 2 frames at conv_in): per step one editing row (CFG scale 1: conditional only), plus
    # the reconstruction row up to its last read step, never after
    plan = s.plan
    last = last_reconstruction_step(plan)
    assert 0 <= last < len(plan) - 1
    assert sum(calls) == 2 * (len(plan) + last + 1)  # per step: edit (batch 1) + reconstruction while read


def test_fusion_is_off_where_it_is_not_exact(tiny64):
    from mf_backend.editing.sampler import MotionEditSampler, SamplerSettings

    other = MotionEditSampler(tiny64, ConsistencyGuidance(), SamplerSettings(), estimator=copy.deepcopy(tiny64.unet))
    assert not other.fuse and not other.reuse  # a separate estimator (estimator_weights="official")
    with pytest.raises(ValueError, match="checkpoint"):
        MotionEditSampler(tiny64, ConsistencyGuidance(), SamplerSettings(checkpoint="up9"))


def _reference_rows(steps_flags, default: bool) -> tuple[int, int]:
    """(no-grad, grad) UNet rows of one window over the 50-step reference schedule at CFG 3.5, from
    the schedule table alone (method.md §A.5), independently of the sampler's code."""
    no_grad = grad = 0
    last_guidance = max(i for i, (g, _) in enumerate(steps_flags) if g)
    for i, (guidance, repeats) in enumerate(steps_flags):
        grad += repeats if guidance else 0  # one grad-enabled pass per guidance evaluation
        no_grad += repeats - 1  # replay re-noise (the last one is never run)
        if default:  # rec + CFG halves batched; the conditional half is the grad pass at guidance steps
            rec = i <= last_guidance
            no_grad += (rec + 1 + (repeats - 1)) if guidance else (rec + 2)
        else:  # reconstruction every step, estimator on z_rec at guidance steps, both CFG halves always
            no_grad += 1 + int(guidance) + 2 * repeats
    return no_grad, grad


def test_bench_flops_counts_the_passes_of_the_reference_schedule():
    from mf_backend.bench.flops import BEFORE, count_edit_flops
    from mf_backend.editing.schedule import build_schedule
    from mf_backend.params import JobParams

    assert _reference_rows([(p.guidance, p.repeats) for p in build_schedule(50)], True) == (125, 28)
    assert _reference_rows([(p.guidance, p.repeats) for p in build_schedule(50)], False) == (194, 28)
    # the 25-step schedule has the same shape (guidance, replay, SDE) and half the steps: faster here
    flags = [(p.guidance, p.repeats) for p in build_schedule(25)]
    params = JobParams(steps=25, size=64)
    new = count_edit_flops("tiny", 2, 64, params, device="cpu")  # cpu: computed, fast at tiny size
    old = count_edit_flops("tiny", 2, 64, params, BEFORE, device="cpu")
    for r, default in ((new, True), (old, False)):
        no_grad, grad = _reference_rows(flags, default)
        assert r["unet_frames"] == {"no_grad": 2 * no_grad, "grad": 2 * grad}  # 2 frames per row
        assert r["guidance_evaluations"] == sum(rep for g, rep in flags if g)
    assert new["reconstruction_steps"] == 15 and old["reconstruction_steps"] == 25
    assert 0 < new["flop"] < 0.9 * old["flop"]
    assert {"conditions", "reconstruction", "editing", "guidance", "decode"} <= set(new["stages_tflop"])


def test_bench_flops_counting_each_kind_of_step_once_is_exact():
    from mf_backend.bench.flops import count_edit_flops
    from mf_backend.params import AdvancedParams, JobParams

    # 8 steps: guidance, SDE, replay (step 4), camera K/V injection (from step 4); two windows
    params = JobParams(steps=8, size=64, camera=True, advanced=AdvancedParams(window=2, overlap=1))
    once = count_edit_flops("tiny", 3, 64, params, device="cpu")
    every = count_edit_flops("tiny", 3, 64, params, device="cpu", once_per_kind=False)
    assert once["flop"] == every["flop"] > 0 and once["unet_frames"] == every["unet_frames"]
    assert once["stages_tflop"] == every["stages_tflop"]
    assert once["guidance_evaluations"] == every["guidance_evaluations"] == 2 * 6  # per window


def test_bench_flops_command_on_the_meta_device(capsys):
    from mf_backend.cli import build_parser

    args = build_parser().parse_args(["bench", "flops", "--config", "tiny", "--frames", "2", "--size", "64",
                                      "--steps", "2"])
    assert args.func(args) == 0
    (r,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert r["tflop_per_clip"] >= 0 and r["flop"] > 0 and r["reconstruction_steps"] == 1
    assert r["unet_frames"] == {"no_grad": 2 * (2 + 2), "grad": 2 * 1}


def test_bench_speed_runs_on_cpu_and_counts_flops(capsys):
    from mf_backend.cli import build_parser

    args = build_parser().parse_args(
        ["bench", "speed", "--config", "tiny", "--frames", "2", "--size", "64", "--steps", "2", "--device", "cpu",
         "--precision", "fp32", "--warmup-steps", "0", "--json"])
    assert args.func(args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    (r,) = lines
    assert {"prepare", "conditions", "reconstruction", "editing", "guidance", "decode"} <= set(r["stages_s"])
    assert r["stages_s"]["prepare"] == 0.0 and r["frames_per_min"] > 0
    # step 0: guidance (reconstruction + unconditional half, then the grad pass); step 1: both CFG halves
    assert r["unet_frames"] == {"no_grad": 2 * (2 + 2), "grad": 2 * 1} and r["tflop"] > 0


def test_bench_activations_accounts_the_guidance_pass_per_layer():
    from mf_backend.bench.activations import grad_pass_profile, plan_for_budget

    prof = grad_pass_profile("tiny", 4, 64, "fp32")
    layers = prof["layers"]
    assert {"down0.layer0", "mid", "up2.layer1", "up3.layer0"} <= set(layers)
    assert all(layers[k]["saved_gib"] == 0 for k in layers if k.startswith("up3"))  # no grad after up2
    assert all(layers[k]["saved_gib"] > layers[k]["input_gib"] > 0 for k in layers if k.startswith("down"))
    assert prof["saved_gib"] == pytest.approx(sum(r["saved_gib"] for r in layers.values()))
    # the 64² level keeps the most per layer (the official table in docs/performance.md)
    assert layers["down0.layer0"]["saved_gib"] > layers["down1.layer0"]["saved_gib"]
    half = plan_for_budget(prof, prof["saved_gib"] / 2)
    assert half["enough"] and half["freed_gib"] >= prof["saved_gib"] / 2
    assert plan_for_budget(prof, 10 * prof["saved_gib"])["enough"] is False
