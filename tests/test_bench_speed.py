"""Speed switches (feature reuse, fused guidance, checkpointing) are exact; the `bench speed` command runs on CPU."""

from __future__ import annotations

import copy

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


def test_return_features_gives_output_and_estimator_features(tiny64):
    unet = tiny64.unet
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 3, 8, 8, generator=g, dtype=torch.float64)
    ctx = torch.randn(1, 3, unet.config.cross_attention_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        v, feats = unet(z, 400, ctx, return_features=LEVELS)
        assert torch.equal(v, unet(z, 400, ctx))
        ref = unet(z, 400, ctx, up_ft_indices=LEVELS)
    assert set(feats) == set(LEVELS) and all(torch.equal(feats[k], ref[k]) for k in LEVELS)
    zz = z.clone().requires_grad_(True)
    v, feats = unet(zz, 400, ctx, return_features=LEVELS, grad_through_sample=False)
    assert feats[2].requires_grad and not v.requires_grad  # the tail stores no graph
    with pytest.raises(ValueError):
        unet(z, 400, ctx, up_ft_indices=LEVELS, return_features=LEVELS)


def _sample(models, monkeypatch, **kw):
    from mf_backend.editing import sampler as mod
    from mf_backend.bench.inputs import random_inputs

    Gs = []
    orig = mod.MotionEditSampler.__dict__["_step"].__func__
    while hasattr(orig, "orig"):  # not a wrapper of an earlier call's wrapper
        orig = orig.orig

    def step(z, v, p, G=None, *a):
        if G is not None:
            Gs.append(G)
        return orig(z, v, p, G, *a)
    step.orig = orig
    monkeypatch.setattr(mod.MotionEditSampler, "_step", staticmethod(step))
    settings = mod.SamplerSettings(steps=3, seed=1, **kw)
    res = mod.MotionEditSampler(models, ConsistencyGuidance(), settings)(random_inputs(3, 64, 0))
    return res, Gs


def test_reuse_and_fused_guidance_equal_the_separate_passes(tiny64, monkeypatch):
    from mf_backend.editing import sampler as mod

    fused = []
    orig = mod.MotionEditSampler._fused_guidance
    monkeypatch.setattr(mod.MotionEditSampler, "_fused_guidance", lambda self, *a: fused.append(1) or orig(self, *a))
    ref, G_ref = _sample(tiny64, monkeypatch, reuse_features=False, fuse_guidance=False)
    assert not fused and G_ref and G_ref[0].abs().max() > 0  # guidance is really acting
    for kw in ({}, {"checkpoint": "all"}, {"checkpoint": "down0,up2"}):
        fused.clear()
        res, G = _sample(tiny64, monkeypatch, **kw)
        assert len(fused) == len(G_ref)  # every guidance evaluation went through the fused pass
        assert len(G) == len(G_ref) and all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(G, G_ref))
        assert torch.allclose(res.latents, ref.latents, rtol=1e-9, atol=1e-12)
        assert torch.allclose(res.reconstruction, ref.reconstruction, rtol=1e-9, atol=1e-12)
    # checkpointing is switched off again afterwards
    assert not any(b.gradient_checkpointing for b in (*tiny64.unet.down_blocks, *tiny64.unet.up_blocks))


def test_fusion_is_off_where_it_is_not_exact(tiny64):
    from mf_backend.editing.sampler import MotionEditSampler, SamplerSettings

    other = MotionEditSampler(tiny64, ConsistencyGuidance(), SamplerSettings(), estimator=copy.deepcopy(tiny64.unet))
    assert not other.fuse and not other.reuse  # a separate estimator (estimator_weights="official")
    with pytest.raises(ValueError, match="checkpoint"):
        MotionEditSampler(tiny64, ConsistencyGuidance(), SamplerSettings(checkpoint="up9"))


def test_pass_counts_of_the_reference_schedule():
    from mf_backend.bench.flops import count_passes
    from mf_backend.editing.schedule import build_schedule

    plan = build_schedule(50, guidance=True, camera=False)
    base = count_passes(plan, reuse=False, fuse=False, guidance_scale=3.5, n_losses=2)
    # 50 reconstruction + 8 replay re-noise; 58 CFG; 28 estimator passes on z_edit + 20 on z_rec
    assert base == {"fwd1": 58, "fwd2": 58, "partial": 48, "backward": 56}
    fast = count_passes(plan, reuse=True, fuse=True, guidance_scale=3.5, n_losses=2)
    assert fast == {"fwd1": 58 + 2 * 28, "fwd2": 30, "partial": 0, "backward": 56}
    cam = count_passes(build_schedule(50, camera=True), reuse=True, fuse=True, guidance_scale=3.5, n_losses=2)
    assert cam["partial"] == 13  # steps 20..28 (1 + 4 x 3 evaluations) inject K/V: not fused


def test_bench_speed_runs_on_cpu_and_counts_flops(capsys):
    from mf_backend.cli import build_parser

    args = build_parser().parse_args(
        ["bench", "speed", "--config", "tiny", "--frames", "2", "--size", "64", "--steps", "2", "--device", "cpu",
         "--precision", "fp32", "--warmup-steps", "0", "--json"])
    assert args.func(args) == 0
    import json

    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    (r,) = lines
    assert {"prepare", "conditions", "reconstruction", "editing", "guidance", "decode"} <= set(r["stages_s"])
    assert r["stages_s"]["prepare"] == 0.0 and r["frames_per_min"] > 0
    assert r["passes"] == {"fwd1": 4, "fwd2": 1, "partial": 0, "backward": 2} and r["tflop"] > 0
