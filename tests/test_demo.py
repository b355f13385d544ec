"""The embedded demo model and the demo job's pieces (the full 16-frame demo runs in the README, not here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mf_backend.weights import ASSETS_DIR


def test_demo_assets_are_small_and_load():
    folder = ASSETS_DIR / "demo"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 50 * 2 ** 20
    from mf_backend.models.loading import load_models

    m = load_models("demo")
    assert m.config_name == "demo" and m.vae.config.scaling_factor != 1.0  # set by VAE training


def test_demo_pipeline_on_a_short_clip(tmp_path):
    """prepare -> guided edit -> metrics on 4 frames with 4 steps: shapes, finiteness, determinism."""
    from mf_backend.demo import edit_inputs, prepare_pair, quality
    from mf_backend.model_choice import choose_model
    from mf_backend.models.loading import load_models
    from mf_backend.params import AdvancedParams, JobParams
    from mf_backend.synthetic import make_pair

    torch.manual_seed(0)
    models = load_models("demo")
    size = choose_model("demo", None).size
    pair = make_pair(seed=7, frames=4, size=size)
    params = JobParams(steps=4, advanced=AdvancedParams(mask_predictor="geometric"))
    inputs, info = prepare_pair(pair, params)
    assert info["predictor"] == "geometric"
    a = edit_inputs(models, inputs, params)
    b = edit_inputs(models, inputs, params)
    assert a.shape == (4, size, size, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    q = quality(a, pair)
    assert all(np.isfinite(v) for v in q.values()) and 0 <= q["silhouette_iou"] <= 1


def test_demo_output_folder_is_refused_when_not_empty(tmp_path):
    from mf_backend.errors import InvalidParams
    from mf_backend.dispatch import run_job
    from mf_backend.jobs import JobContext
    from mf_backend.params import JobParams

    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(InvalidParams):
        run_job("demo", JobParams(out=str(tmp_path)), JobContext())
    assert (tmp_path / "keep.txt").read_text() == "user data"
