"""The diffusion model stack: manifest exactness, tiny forward/backward, early exit, attention hook,
save/load, release-folder loading, safe loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mf_backend.errors import WeightsMissing
from mf_backend.models.config import get_config
from mf_backend.models.controllers import PoseController
from mf_backend.models.estimator import build_estimator
from mf_backend.models.loading import build_models, load_models, save_models
from mf_backend.models.state import load_state_file
from mf_backend.models.unet3d import UNet3DConditionModel

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official_state_dict_manifest.json"
SIZE = 64  # pixels; latent 8x8


def diffusers_unet_config(cfg) -> dict:
    """The diffusers `unet/config.json` of the 2D UNet `cfg` inflates (for fake release folders; the inverse of
    config.config_from_diffusers_unet)."""
    n = cfg.num_blocks
    return {
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": cfg.num_attention_heads,
        "block_out_channels": list(cfg.block_out_channels), "center_input_sample": False,
        "cross_attention_dim": cfg.cross_attention_dim,
        "down_block_types": ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"], "downsample_padding": 1,
        "flip_sin_to_cos": cfg.flip_sin_to_cos, "freq_shift": cfg.freq_shift, "in_channels": cfg.in_channels,
        "layers_per_block": cfg.layers_per_block, "mid_block_scale_factor": 1, "norm_eps": cfg.norm_eps,
        "norm_num_groups": cfg.norm_num_groups, "out_channels": cfg.out_channels, "sample_size": 64,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1),
    }


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny():
    models = build_models("tiny", seed=0)
    # fresh motion modules and PoCtr output are zero-initialised; give them values so tests see them
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for name, p in models.unet.named_parameters():
            if "proj_out" in name and "motion_modules" in name:
                p.normal_(0, 0.05)
        models.pose_controller.conv_out.weight.normal_(0, 0.05)
    return models


def inputs(models, frames: int, batch: int = 1, seed: int = 0):
    cfg = models.config
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, frames, SIZE // 8, SIZE // 8, generator=g)
    ctx = torch.randn(batch, frames, cfg.cross_attention_dim, generator=g)
    pose_img = torch.rand(1, 3, frames, SIZE, SIZE, generator=g)
    frames_img = torch.rand(1, frames, 3, SIZE, SIZE, generator=g) * 2 - 1
    return z, ctx, pose_img, frames_img


def run(models, z, ctx, pose_img, frames_img, levels=None, **kw):
    """The v-prediction, or with `levels` the early-exit features (UNet3DConditionModel.features)."""
    pose = models.pose_controller(pose_img)
    app = models.unet.appearance_adapter(frames_img)
    t = torch.tensor([999] * z.shape[0])
    if levels is not None:
        return models.unet.features(z, t, ctx, pose, app, levels, **kw)
    return models.unet(z, t, ctx, pose, app, **kw)


# ---------------------------------------------------------------- contract with released checkpoints

def test_official_state_dict_equals_manifest():
    manifest = json.loads(FIXTURE.read_text())
    cfg = get_config("official")
    with torch.device("meta"):
        unet, pose = UNet3DConditionModel(cfg), PoseController(cfg)
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    assert ours == manifest["denoising_unet"]
    assert sum(v.numel() for v in unet.state_dict().values()) == manifest["_meta"]["counts"]["denoising_unet_total_elems"]
    assert {k: list(v.shape) for k, v in pose.state_dict().items()} == manifest["pose_guider"]
    assert set(manifest["motion_modules_subset"]) <= set(ours)
    assert {k for k in ours if k.startswith("appearance_adapter.")} == set(manifest["appearance_adapter_subset"])
    pe = [k for k in ours if k.endswith("pos_encoder.pe")]
    assert len(pe) == manifest["_meta"]["counts"]["n_buffers"]


def test_weights_manifest_command_prints_official_manifest(capsys):
    from mf_backend.cli import main

    assert main(["weights", "manifest", "--config", "official"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["denoising_unet"] == json.loads(FIXTURE.read_text())["denoising_unet"]


def test_spatial_keys_and_outputs_match_diffusers_2d_unet(tiny):
    """Our spatial layers ARE diffusers' UNet2DConditionModel: same keys, and with identity motion
    modules and no controls the 1-frame output equals the 2D UNet's."""
    from diffusers import UNet2DConditionModel

    cfg2d = {k: v for k, v in diffusers_unet_config(tiny.config).items() if not k.startswith("_")}
    unet2d = UNet2DConditionModel(**cfg2d)
    ours = {k: v for k, v in tiny.unet.state_dict().items()
            if "motion_modules" not in k and not k.startswith("appearance_adapter.")}
    assert {k: v.shape for k, v in unet2d.state_dict().items()} == {k: v.shape for k, v in ours.items()}
    unet2d.load_state_dict(ours)
    unet3d = UNet3DConditionModel(tiny.config)
    unet3d.load_state_dict(tiny.unet.state_dict())
    for n, p in unet3d.named_parameters():
        if "motion_modules" in n and "proj_out" in n:
            torch.nn.init.zeros_(p)
    z, ctx, _, _ = inputs(tiny, 1, batch=2)
    with torch.no_grad():
        ref = unet2d(z[:, :, 0], torch.tensor([10, 700]), ctx).sample
        out = unet3d(z, torch.tensor([10, 700]), ctx)[:, :, 0]
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------- forward / backward / features

@pytest.mark.parametrize("frames", [8, 24])
def test_tiny_forward_backward(tiny, frames):
    z, ctx, pose_img, frames_img = inputs(tiny, frames)
    tiny.unet.zero_grad(set_to_none=True)
    tiny.pose_controller.zero_grad(set_to_none=True)
    z.requires_grad_(True)
    out = run(tiny, z, ctx, pose_img, frames_img)
    assert out.shape == (1, 4, frames, SIZE // 8, SIZE // 8)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in [("conv_in.weight", tiny.unet.conv_in.weight),
                    ("appearance_adapter.conv_in.weight", tiny.unet.appearance_adapter.conv_in.weight),
                    ("mm proj_in", tiny.unet.down_blocks[0].motion_modules[0].temporal_transformer.proj_in.weight),
                    ("pose conv_out", tiny.pose_controller.conv_out.weight),
                    ("pose conv_in", tiny.pose_controller.conv_in.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert z.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    z, ctx, pose_img, frames_img = inputs(tiny, 2)
    grads = []
    for enabled in (False, True):
        tiny.unet.enable_gradient_checkpointing(enabled)
        zz = z.clone().requires_grad_(True)
        run(tiny, zz, ctx, pose_img, frames_img).square().mean().backward()
        grads.append(zz.grad)
    tiny.unet.enable_gradient_checkpointing(False)
    torch.testing.assert_close(grads[0], grads[1])


def test_zero_initialised_pose_controller_and_motion_modules_are_identity():
    cfg = get_config("tiny")
    torch.manual_seed(0)
    pose, unet = PoseController(cfg), UNet3DConditionModel(cfg)
    assert pose(torch.rand(1, 3, 2, SIZE, SIZE)).abs().max() == 0
    # identity motion modules + per-frame spatial ops => frames do not interact
    z = torch.randn(1, 4, 2, 8, 8)
    ctx = torch.randn(1, 2, cfg.cross_attention_dim)
    z2 = z.clone()
    z2[:, :, 0] += 1
    with torch.no_grad():
        a, b = unet(z, 500, ctx), unet(z2, 500, ctx)
    assert torch.equal(a[:, :, 1:], b[:, :, 1:]) and not torch.equal(a[:, :, 0], b[:, :, 0])


def test_motion_modules_mix_frames(tiny):
    z, ctx, pose_img, frames_img = inputs(tiny, 2)
    z2 = z.clone()
    z2[:, :, 0] += 1
    with torch.no_grad():
        a, b = run(tiny, z, ctx, pose_img, frames_img), run(tiny, z2, ctx, pose_img, frames_img)
    assert (a[:, :, 1] - b[:, :, 1]).abs().max() > 1e-4


def test_controller_shapes_follow_config(tiny):
    cfg = tiny.config
    shapes = cfg.feature_shapes(SIZE, SIZE)
    _, _, pose_img, frames_img = inputs(tiny, 3)
    assert tuple(tiny.pose_controller(pose_img).shape) == (1, shapes["pose"][0], 3, *shapes["pose"][1:])
    feats = tiny.unet.appearance_adapter(frames_img)
    assert [tuple(f.shape) for f in feats] == [(1, c, 3, h, w) for c, h, w in shapes["appearance"]]
    assert get_config("official").feature_shapes(512, 512)["up_blocks"][1:3] == [(1280, 32, 32), (640, 64, 64)]


def test_early_exit_features(tiny):
    z, ctx, pose_img, frames_img = inputs(tiny, 3, batch=2)
    calls = []
    handle = tiny.unet.up_blocks[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            feats = run(tiny, z, ctx, pose_img, frames_img, levels=[1, 2])
        assert calls == []  # stopped after up_blocks[2]
        with torch.no_grad():
            full = run(tiny, z, ctx, pose_img, frames_img, levels=[0, 1, 2, 3])
        assert calls == [1]
    finally:
        handle.remove()
    shapes = tiny.config.feature_shapes(SIZE, SIZE)["up_blocks"]
    assert sorted(feats) == [1, 2]
    for i in (1, 2):
        c, h, w = shapes[i]
        assert feats[i].shape == (2, c, 3, h, w)
        assert torch.equal(feats[i], full[i])
    # gradient w.r.t. the latent through the feature path (what guidance needs)
    zz = z[:1].clone().requires_grad_(True)
    f = run(tiny, zz, ctx[:1], pose_img, frames_img, levels=[1, 2])
    (f[1].mean() + f[2].mean()).backward()
    assert zz.grad.abs().sum() > 0


def test_attention_hook(tiny):
    z, ctx, pose_img, frames_img = inputs(tiny, 2)
    seen = []

    def identity(name, hidden, k, v):
        seen.append((name, tuple(hidden.shape), tuple(k.shape)))
        return k, v

    with torch.no_grad():
        base = run(tiny, z, ctx, pose_img, frames_img)
        same = run(tiny, z, ctx, pose_img, frames_img, attention_hook=identity)
        doubled = run(tiny, z, ctx, pose_img, frames_img,
                      attention_hook=lambda n, h, k, v: (torch.cat([k, k.flip(0)], 1), torch.cat([v, -v], 1)))
    assert torch.equal(base, same)
    cfg = tiny.config
    n_up_attn = (cfg.num_blocks - 1) * (cfg.layers_per_block + 1)
    assert len(seen) == n_up_attn
    assert all(n.startswith("up_blocks.") and n.endswith(".attn1") for n, _, _ in seen)
    assert all(h[0] == 2 and h == k for _, h, k in seen)  # (B*F, N, C)
    assert not torch.allclose(base, doubled)


def test_low_precision_and_frame_limit(tiny):
    z, ctx, pose_img, frames_img = inputs(tiny, 2)
    with torch.no_grad():
        ref = run(tiny, z, ctx, pose_img, frames_img)
        unet_bf16 = UNet3DConditionModel(tiny.config)
        unet_bf16.load_state_dict(tiny.unet.state_dict())
        unet_bf16.to(torch.bfloat16)
        out = unet_bf16(z, 999, ctx, tiny.pose_controller(pose_img), tiny.unet.appearance_adapter(frames_img))
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
    with pytest.raises(ValueError, match="at most 32"):
        tiny.unet(torch.zeros(1, 4, 33, 8, 8), 1, torch.zeros(1, 33, tiny.config.cross_attention_dim))


# ---------------------------------------------------------------- save / load

def _outputs(models, frames=2):
    z, ctx, pose_img, frames_img = inputs(models, frames)
    with torch.no_grad():
        v = run(models, z, ctx, pose_img, frames_img)
        img = models.vae.decode(z[:, :, 0]).sample
        emb = models.clip_embed(torch.randint(0, 256, (2, 40, 40, 3), generator=torch.Generator().manual_seed(3),
                                              dtype=torch.uint8))
    return v, img, emb


def test_save_load_round_trip_is_exact(tiny, tmp_path):
    folder = save_models(tiny, tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "image_encoder", "pose_controller.safetensors",
                                                       "unet.safetensors", "vae"]
    loaded = load_models(str(folder), None, "cpu", torch.float32)
    assert loaded.config == tiny.config and loaded.config_name == "tiny"
    for a, b in zip(_outputs(tiny), _outputs(loaded)):
        assert torch.equal(a, b)
    with pytest.raises(Exception, match="already exists"):
        save_models(tiny, folder)  # never overwrites without being asked
    save_models(tiny, folder, overwrite=True)
    assert (folder / "unet.safetensors").is_file()


def write_fake_release_folder(models, root: Path, fine_tuned_offset: float = 0.01) -> dict:
    """The reference's pretrained_weights/ layout at tiny size, same file names and formats:
    sd-image-variations-diffusers/{unet,image_encoder}, sd-vae-ft-mse, motion_module.pth,
    denoising_unet.pth (= spatial weights fine-tuned (+offset) + ReCtr), poctr.pth."""
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in models.unet.state_dict().items()}
    motion = {k: v for k, v in sd.items() if "motion_modules" in k}
    spatial = {k: v for k, v in sd.items() if "motion_modules" not in k and not k.startswith("appearance_adapter.")}
    base = {k: v - fine_tuned_offset for k, v in spatial.items()}  # the SD-IV "pre-training" weights
    unet_dir = root / "sd-image-variations-diffusers" / "unet"
    unet_dir.mkdir(parents=True)
    (unet_dir / "config.json").write_text(json.dumps(diffusers_unet_config(models.config)))
    save_file({k: v.contiguous() for k, v in base.items()}, str(unet_dir / "diffusion_pytorch_model.safetensors"))
    torch.save(motion, root / "motion_module.pth")
    torch.save({k: v for k, v in sd.items() if k not in motion}, root / "denoising_unet.pth")
    torch.save(models.pose_controller.state_dict(), root / "poctr.pth")
    models.image_encoder.save_pretrained(str(root / "sd-image-variations-diffusers" / "image_encoder"))
    models.vae.save_pretrained(str(root / "sd-vae-ft-mse"))
    return base


def test_release_folder_loads_through_the_official_path(tiny, tmp_path, caplog):
    root = tmp_path / "pretrained_weights"
    base = write_fake_release_folder(tiny, root)
    loaded = load_models("official", str(root), "cpu", "fp32")
    assert loaded.config == tiny.config.replace(name="official")
    assert loaded.load_report["unet"]["missing"] == [] and loaded.load_report["unet"]["unexpected"] == []
    for a, b in zip(_outputs(tiny), _outputs(loaded)):
        assert torch.equal(a, b)

    # the reference's estimator: SD-IV spatial weights, released motion modules, random ReCtr
    est = build_estimator(loaded, "official")
    assert torch.equal(est.conv_in.weight, base["conv_in.weight"])
    assert not torch.equal(est.conv_in.weight, loaded.unet.conv_in.weight)
    mm = "down_blocks.0.motion_modules.0.temporal_transformer.proj_out.weight"
    assert torch.equal(est.state_dict()[mm], loaded.unet.state_dict()[mm])
    assert not torch.equal(est.appearance_adapter.conv_in.weight, loaded.unet.appearance_adapter.conv_in.weight)
    from mf_backend.models.estimator import reference_adapter_state

    ref = reference_adapter_state(loaded.config)  # the adapter is not in the files: the reference's random one
    assert all(torch.equal(v, ref[f"appearance_adapter.{k}"]) for k, v in est.appearance_adapter.state_dict().items())
    assert build_estimator(loaded, "shared") is loaded.unet

    # a partial checkpoint is reported loudly, not silently
    sd = torch.load(root / "denoising_unet.pth", weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("appearance_adapter.")}, root / "denoising_unet.pth")
    with caplog.at_level("WARNING", logger="mf_backend.models"):
        partial = load_models(str(root), None, "cpu", torch.float32)
    n_adapter = sum(k.startswith("appearance_adapter.") for k in tiny.unet.state_dict())
    assert len(partial.load_report["unet"]["missing"]) == n_adapter
    assert "missing keys" in caplog.text and "appearance_adapter" in caplog.text


def test_weights_verify_and_convert(tiny, tmp_path, capsys):
    from mf_backend.cli import main

    root = tmp_path / "pretrained_weights"
    write_fake_release_folder(tiny, root)
    assert main(["weights", "verify", "--models-dir", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["weights", "convert", "--models-dir", str(root)]) == 0
    capsys.readouterr()
    for name in ("denoising_unet", "motion_module", "poctr"):
        assert (root / f"{name}.safetensors").is_file()
        os.remove(root / f"{name}.pth")  # the loader must now use the safetensors copies
    loaded = load_models("official", str(root), "cpu", torch.float32)
    for a, b in zip(_outputs(tiny), _outputs(loaded)):
        assert torch.equal(a, b)
    # a wrong-shape file fails verify
    bad = dict(tiny.pose_controller.state_dict())
    bad["conv_out.weight"] = torch.zeros(5, *bad["conv_out.weight"].shape[1:])
    os.remove(root / "poctr.safetensors")
    torch.save(bad, root / "poctr.pth")
    assert main(["weights", "verify", "--models-dir", str(root)]) == 1
    assert json.loads(capsys.readouterr().out)["pose_controller"]["mismatched"]["count"] == 1


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "executed.txt"
    evil = tmp_path / "poctr.pth"
    torch.save({"conv_in.weight": torch.zeros(1), "payload": _RunsCode(str(marker))}, evil)
    with pytest.raises(WeightsMissing, match="refused"):
        load_state_file(evil)
    assert not marker.exists()
    # the same file in a release folder stops the load with the same error
    root = tmp_path / "release"
    root.mkdir()
    (root / "denoising_unet.pth").write_bytes(evil.read_bytes())
    with pytest.raises(WeightsMissing):
        load_models(str(root), None, "cpu", torch.float32)
    assert not marker.exists()


def test_missing_release_files_say_what_to_do(tmp_path):
    with pytest.raises(WeightsMissing) as err:
        load_models("official", str(tmp_path), "cpu", torch.float32)
    assert "doctor" in err.value.hint


def test_clip_preprocessing_is_the_references(tiny):
    """The reference: PIL frame .resize((224, 224)) (bicubic), then transformers' CLIP image processor
    (/255, OpenAI mean/std); clip_pixels gives the same tensor bit for bit, and clip_embed feeds it."""
    import numpy as np
    import transformers
    from PIL import Image

    from mf_backend.models.clip import clip_pixels

    processor = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor  # PIL backend
    frames = np.random.default_rng(0).integers(0, 256, (3, 300, 200, 3), dtype=np.uint8)
    reference = torch.cat([processor().preprocess(Image.fromarray(f).resize((224, 224)), return_tensors="pt").pixel_values
                           for f in frames])
    assert torch.equal(clip_pixels(frames, 224), reference)
    # a float antialiased resize (what clip_embed did before) is visibly different
    x = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, size=(224, 224),
                                        mode="bicubic", antialias=True).clamp(0, 1)
    mean, std = torch.tensor(processor().image_mean)[:, None, None], torch.tensor(processor().image_std)[:, None, None]
    assert ((x - mean) / std - reference).abs().max() > 0.05
    s = tiny.clip_image_size
    with torch.no_grad():
        expected = tiny.image_encoder(pixel_values=clip_pixels(frames, s)).image_embeds
    torch.testing.assert_close(tiny.clip_embed(torch.from_numpy(frames)), expected, rtol=0, atol=0)


def test_default_initialisation_draws_one_number_per_element():
    """The count reference_adapter_state relies on: building a UNet draws one CPU random number per
    element of every conv / linear weight and bias and none for the norms (our zero-initialised layers
    skip their draw; the reference's draw and then zero, which init_draws counts)."""
    from mf_backend.models.attention import ZeroLinear
    from mf_backend.models.estimator import _skip_draws, init_draws

    cfg = get_config("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        unet = UNet3DConditionModel(cfg)
        after_build = torch.rand(4)
        zero = sum(p.numel() for m in unet.modules() if isinstance(m, ZeroLinear) for p in m.parameters())
        assert zero > 0
        torch.manual_seed(7)
        _skip_draws(init_draws(unet) - zero, chunk=1000)
        assert torch.equal(torch.rand(4), after_build)


def test_official_estimator_adapter_follows_the_reference_stream():
    """seed 42; the denoising UNet and the estimator minus its adapter draw 2U - A numbers; then the
    adapter, body blocks (in_conv, block1, block2) before conv_in, each conv with its default init."""
    import math

    from mf_backend.models.estimator import init_draws, reference_adapter_state

    cfg = get_config("tiny")
    with torch.device("meta"):
        unet = UNet3DConditionModel(cfg)
    U, A = init_draws(unet), init_draws(unet.appearance_adapter)
    expected, ch = {}, cfg.block_out_channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(42)
        torch.empty(2 * U - A).uniform_()
        for i, c in enumerate(ch):  # the reference's Appearance_Adapter.__init__, literally
            for j in range(cfg.adapter_num_res_blocks):
                cin = ch[i - 1] if i > 0 and j == 0 else c
                k = f"appearance_adapter.body.{i * cfg.adapter_num_res_blocks + j}"
                convs = ([("in_conv", torch.nn.Conv2d(cin, c, 1))] if cin != c else []) + \
                    [("block1", torch.nn.Conv2d(c, c, 3, 1, 1)), ("block2", torch.nn.Conv2d(c, c, 1))]
                expected.update({f"{k}.{n}.{p}": t for n, conv in convs for p, t in conv.state_dict().items()})
        conv_in = torch.nn.Conv2d(cfg.adapter_in_channels, ch[0], 3, 1, 1)
    expected.update({f"appearance_adapter.conv_in.{p}": t for p, t in conv_in.state_dict().items()})
    state = reference_adapter_state(cfg)
    assert state.keys() == expected.keys()
    for k in state:
        assert torch.equal(state[k], expected[k]), k
    w = state["appearance_adapter.conv_in.weight"]
    assert w.abs().max() <= 1 / math.sqrt(w[0].numel())  # kaiming_uniform(a=√5): bound 1/√fan_in
