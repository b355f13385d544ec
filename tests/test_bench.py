"""Metrics against hand-computable cases, and the `bench` command group."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mf_backend.bench.metrics import frame_metrics, iou, person_silhouette, psnr, ssim


def test_psnr_known_value_and_regions():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = a.copy()
    b[:, :4] = 51  # error 0.2 on the top half only
    mask = np.zeros((2, 8, 8), np.float32)
    mask[:, :4] = 1
    assert psnr(a, b, mask) == pytest.approx(10 * np.log10(1 / 0.04))
    assert psnr(a, b, 1 - mask) == float("inf")
    assert psnr(a, b) == pytest.approx(10 * np.log10(1 / 0.02))


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, noisy) < 0.9


def test_iou():
    x = np.zeros((1, 4, 4)); x[0, :2] = 1
    y = np.zeros((1, 4, 4)); y[0, 1:3] = 1
    assert iou(x, y) == pytest.approx(4 / 12)
    assert iou(np.zeros((1, 2, 2)), np.zeros((1, 2, 2))) == 1.0


def test_silhouette_from_clean_plate():
    bg = np.full((1, 16, 16, 3), 100, np.uint8)
    frame = bg.copy()
    frame[0, 4:12, 6:10] = 250
    gt = np.zeros((1, 16, 16)); gt[0, 4:12, 6:10] = 1
    assert iou(person_silhouette(frame, bg), gt) == 1.0
    m = frame_metrics(frame, frame, gt)
    assert m["psnr_bg"] == float("inf") and m["ssim_person"] == pytest.approx(1.0)


def test_bench_is_a_group_with_quality_action():
    out = subprocess.run([sys.executable, "-m", "mf_backend", "bench", "quality", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--pairs" in out.stdout
    from mf_backend.bench.quality import variants
    from mf_backend.params import JobParams

    v = variants(JobParams(), ["copy_source", "no_guidance", "no_fg", "full_guidance"])
    assert v["copy_source"] is None and v["no_guidance"].advanced.energy_scale == 0 and v["no_fg"].advanced.w_fg == 0


def test_every_benchmark_is_a_bench_action(capsys):
    """forward, crop (and graphs, speed, quality) run through the one `bench` face and print their figures."""
    import json

    from mf_backend.cli import build_parser

    from mf_backend.bench.cli import ACTIONS

    parser = build_parser()
    assert {"quality", "speed", "forward", "graphs", "crop", "poses"} <= set(ACTIONS)
    for action in ACTIONS:
        assert parser.parse_args(["bench", action, *(["--cases", "x"] if action == "poses" else [])]).func is not None
    args = parser.parse_args(["bench", "forward", "--config", "tiny", "--frames", "2", "--size", "64", "--repeats", "1"])
    assert args.func(args) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["mode"] == "forward" and r["frames"] == 2 and r["mean_s"] > 0
    args = parser.parse_args(["bench", "crop", "--height", "120", "--width", "200", "--frames", "2", "--size", "64",
                              "--repeat", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "mode person" in out and "mode letterbox" in out and "ms/frame" in out
