"""The CLI front: doctor, weights list, errors with exit codes (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "mf_backend", *args], capture_output=True, text=True,
                          cwd=str(REPO), env=env, timeout=300)


def test_doctor_names_missing_files_and_where_to_put_them(tmp_path):
    models = tmp_path / "weights"
    (models / "sd-vae-ft-mse").mkdir(parents=True)
    (models / "poctr.pth").write_bytes(b"x")
    r = run_cli("doctor", "--models-dir", str(models))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "ok       poctr.pth" in out
    for name in ("denoising_unet.pth", "motion_module.pth", "sd-vae-ft-mse/config.json",
                 "sd-image-variations-diffusers/unet/config.json"):
        assert f"MISSING  {name}" in out
        assert f"put it at: {models / name}" in out
    assert "get it from:" in out and "demo model" in out
    # machine-readable form and the MF_MODELS_DIR default
    r = run_cli("doctor", "--json", env_extra={"MF_MODELS_DIR": str(models)})
    info = json.loads(r.stdout)
    assert info["weights"]["models_dir"] == str(models)
    assert not info["weights"]["official_model"]


def test_weights_list_is_json(tmp_path):
    r = run_cli("weights", "list", "--models-dir", str(tmp_path))
    assert r.returncode == 0
    assert json.loads(r.stdout)["models_dir"] == str(tmp_path)


def test_edit_errors_are_actionable_and_exit_nonzero(tmp_path):
    r = run_cli("edit", "--source", str(tmp_path / "missing.mp4"), "--driving", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "missing.mp4" in r.stderr and "->" in r.stderr
    assert r.stdout == ""
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("user data")
    r = run_cli("prepare", "--source", str(tmp_path), "--driving", str(tmp_path), "--out", str(tmp_path / "busy"))
    assert r.returncode == 2 and "not empty" in r.stderr
    assert (tmp_path / "busy" / "keep.txt").read_text() == "user data"
    r = run_cli("edit", "--source", str(tmp_path), "--driving", str(tmp_path), "--out", str(tmp_path / "x"), "--steps", "0")
    assert r.returncode == 2 and "steps" in r.stderr


def test_help_lists_core_commands():
    r = run_cli("--help")
    for cmd in ("serve", "prepare", "edit", "demo", "doctor", "weights"):
        assert cmd in r.stdout
