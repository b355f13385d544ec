"""Training: a real optimisation on tiny models (loss goes down), every phase, checkpoints, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mf_backend.train.config import TrainConfig
from mf_backend.train.data import ClipBank, synthetic_bank
from mf_backend.train.trainer import Trainer


def _bank(n=2, f=4, s=64) -> ClipBank:
    return synthetic_bank(n, f, s, seed=0, workers=1)


def test_synthetic_bank_shapes_and_sampling():
    bank = _bank()
    assert bank.reference.shape == (4, 4, 64, 64, 3)  # edit + reconstruction clip per pair
    rng = np.random.default_rng(0)
    r, p, t = bank.sample_frames(rng, 3)
    assert r.shape == (3, 1, 64, 64, 3) and p.dtype == np.uint8
    r, p, t = bank.sample_clips(rng, 2, 3)
    assert r.shape == (2, 3, 64, 64, 3)
    # the reconstruction clip's target is its own reference
    assert np.array_equal(bank.reference[1], bank.target[1])


def test_all_phases_checkpoint_and_resume(tmp_path):
    torch.manual_seed(0)
    bank = _bank(1, 2)
    cfg = TrainConfig(out=str(tmp_path), config="tiny", size=64, vae_steps=1, stage1_steps=1, stage2_steps=1,
                      batch=1, vae_batch=1, clip_batch=1, clip_frames=2, log_every=1, device="cpu", progress=False)
    summary = Trainer(cfg, bank).run()
    assert [summary[p]["steps"] for p in ("vae", "stage1", "stage2")] == [1, 1, 1]
    log = [json.loads(line) for line in (tmp_path / "loss_log.jsonl").read_text().splitlines()]
    assert [e["phase"] for e in log] == ["vae", "stage1", "stage2"]
    assert all(np.isfinite(e["loss"]) for e in log)
    ck = torch.load(tmp_path / "checkpoints" / "stage2.pt", weights_only=True)
    assert ck["done"] and ck["step"] == 1
    # a second run resumes after the last finished phase: nothing left to do, weights unchanged
    t2 = Trainer(cfg, bank)
    assert t2.run() == {}
    assert torch.equal(t2.models.unet.conv_in.weight.cpu(), ck["models"]["unet"]["conv_in.weight"])


def test_stage_trainable_sets():
    t = Trainer(TrainConfig(out="/tmp/unused-e9", config="tiny", device="cpu", progress=False), _bank(1, 2))
    s1 = {id(p) for p in t._trainable("stage1")}
    s2 = {id(p) for p in t._trainable("stage2")}
    mm = {id(p) for n, p in t.models.unet.named_parameters() if ".motion_modules." in n}
    assert s2 == mm and not (s1 & mm)
    assert {id(p) for p in t.models.pose_controller.parameters()} <= s1
    assert {id(p) for p in t.models.unet.appearance_adapter.parameters()} <= s1


def test_vae_loss_decreases_on_a_fixed_batch(tmp_path):
    """Real learning: repeated steps on one batch lower the VAE reconstruction loss."""
    torch.manual_seed(0)
    bank = _bank(1, 2)
    t = Trainer(TrainConfig(out=str(tmp_path), config="tiny", size=64, device="cpu", progress=False), bank)
    vae = t.models.vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    frames = bank.frames()[:4]
    losses = []
    for _ in range(15):
        loss = t.vae_loss(frames, torch.Generator().manual_seed(0))
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_stage1_gradients_reach_every_trainable_part(tmp_path):
    """One stage-1 loss: PoCtr, ReCtr, the spatial UNet and the small CLIP encoder all get gradients."""
    torch.manual_seed(0)
    bank = _bank(1, 2)
    t = Trainer(TrainConfig(out=str(tmp_path), config="tiny", size=64, device="cpu", progress=False,
                            cond_drop=0.0), bank)
    t.models.pose_controller.conv_out.weight.data.normal_(0, 0.01)  # zero-init output would block the rest of PoCtr
    for p in t._trainable("stage1"):
        p.requires_grad_(True)
    t.diffusion_loss(*bank.sample_frames(np.random.default_rng(0), 2), torch.Generator().manual_seed(0)).backward()
    m = t.models
    for name, mod in (("PoCtr", m.pose_controller.conv_in), ("ReCtr", m.unet.appearance_adapter.conv_in),
                      ("UNet", m.unet.conv_in), ("CLIP", m.image_encoder.visual_projection)):
        g = mod.weight.grad
        assert g is not None and g.abs().sum() > 0, name


def test_train_cli_parses():
    from mf_backend.cli import build_parser

    args = build_parser().parse_args(["train", "--out", "x", "--size", "64", "--time-budget", "10"])
    assert args.size == 64 and args.time_budget_s == 10.0


def test_training_from_a_folder_of_videos(tmp_path, monkeypatch):
    """The real-video branch end to end: mp4 -> square clips + our pose renders (cached) -> every phase
    -> a model folder that loads; references come from elsewhere in the same video."""
    import mf_backend.pose.extract as extract
    from mf_backend.errors import BadInputMedia
    from mf_backend.media import read_clip, write_video
    from mf_backend.models.loading import load_models
    from mf_backend.synthetic.pair import make_clip
    from mf_backend.crop import plan_crop
    from mf_backend.pose.keypoints import PoseSequence
    from mf_backend.train.data import video_bank
    from mf_backend.train.trainer import train

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(make_clip(3, frames=8, size=(96, 128)).frames, videos / "dance.mp4", 24)
    write_video(make_clip(4, frames=3, size=(96, 128)).frames, videos / "short.mp4", 24)  # < 2 x frames: skipped

    cfg = TrainConfig(out=str(tmp_path / "run"), data=str(videos), config="tiny", size=64, frames=2, vae_steps=1,
                      stage1_steps=1, stage2_steps=1, batch=1, vae_batch=1, clip_batch=1, clip_frames=2,
                      log_every=1, device="cpu", progress=False)
    summary = train(cfg)
    assert [summary[p]["steps"] for p in ("vae", "stage1", "stage2")] == [1, 1, 1]
    load_models(summary["model"])

    cache = tmp_path / "run" / "cache"
    (seq_file,) = cache.glob("*.json")  # the short video was skipped before pose extraction
    seq = PoseSequence.load(seq_file)
    assert (seq.body[:, :, 2] > 0).sum(axis=1).min() >= 12  # found in every frame of the full-size video
    raw = read_clip(videos / "dance.mp4").frames
    video = plan_crop(seq, None, raw.shape[1:3], 64).apply(raw)  # (8,64,64,3), the edit's person crop
    monkeypatch.setattr(extract, "extract_poses", lambda *a, **k: pytest.fail("cache not used"))
    bank = video_bank(videos, 2, 64, seed=1, cache=cache)
    assert bank.reference.shape == (8, 2, 64, 64, 3) and bank.pose.shape == bank.target.shape
    assert bank.pose.max() > 0  # the person was found: the renders are not blank
    start = {video[i].tobytes(): i for i in range(len(video))}
    for ref, tgt in zip(bank.reference, bank.target):
        a, b = start[tgt[0].tobytes()], start[ref[0].tobytes()]
        assert abs(a - b) >= 2 and np.array_equal(tgt, video[a:a + 2]) and np.array_equal(ref, video[b:b + 2])

    with pytest.raises(BadInputMedia, match="at least 16 frames"):
        video_bank(videos, 8, 64, cache=cache)
