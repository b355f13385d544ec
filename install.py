#!/usr/bin/env python3
"""One-command install of MotionFollower: backend venv, Blender add-on, and the add-on's backend config.

    python3 install.py                     # .venv at the repo root, torch chosen automatically
    python3 install.py --torch cpu         # CPU build of torch (pinned), e.g. for CI or laptops
    python3 install.py --torch cuda        # CUDA build of torch from the package index
    python3 install.py --venv ~/mf-venv --blender-config ~/.config/blender/4.2 --extension-zip

Idempotent: run it again to repair or update; an existing venv is reused. Every step prints what it
did; on failure it exits non-zero with what to do. Nothing is downloaded except packages from the
package index (no model weights: see README "Released weights").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
ADDON_SRC = REPO / "blender_addon"
ADDON_NAME = "motionfollower"
CONFIG_NAME = "backend_config.json"
CPU_TORCH = "torch==2.13.0"  # a CPU build is available for this exact version; never let it float
BPY = "bpy==5.0.1"  # Blender as a Python module, for the add-on tests (needs Python 3.11)
MEDIAPIPE = "mediapipe==0.10.21"  # the last release whose wheel ships the pose + segmentation models
RAY = "ray[default]==2.60.0"  # scale-out (docs/scale-out.md); token auth on by default for local clusters


class InstallError(Exception):
    pass


def step(msg: str) -> None:
    print(f"[install] {msg}", flush=True)


def run(cmd: list[str], what: str, hint: str) -> None:
    step(f"{what}: {' '.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
        raise InstallError(f"{what} failed (exit {proc.returncode}):\n{tail}\n-> {hint}")


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def choose_torch(kind: str) -> str:
    if kind == "auto":
        kind = "cuda" if shutil.which("nvidia-smi") else "cpu"
        step(f"--torch auto: {'an NVIDIA driver was found' if kind == 'cuda' else 'no NVIDIA driver found'} -> {kind}")
    return kind


def installed_torch(py: Path) -> str | None:
    proc = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def install_backend(venv: Path, torch_kind: str, with_dwpose: bool, with_bpy: bool, with_ray: bool = False) -> Path:
    if not venv_python(venv).exists():
        step(f"creating venv at {venv}")
        run([sys.executable, "-m", "venv", str(venv)], "create venv", "check that the venv module is installed (Debian: apt install python3-venv)")
    else:
        step(f"reusing venv at {venv}")
    py = venv_python(venv)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]

    have = installed_torch(py)
    want_cpu = torch_kind == "cpu"
    if have and want_cpu == ("+cpu" in have):
        step(f"torch {have} already installed")
    else:
        spec = CPU_TORCH if want_cpu else "torch"
        switch = ["--force-reinstall"] if have else []  # replacing a CPU build by a CUDA one or back
        run(pip + switch + [spec], f"install {spec}", "check the package index is reachable; try --torch cpu")
        have = installed_torch(py)
    if not have:
        raise InstallError("torch does not import in the venv -> delete the venv folder and run install.py again")

    # Pin the torch we have, so that no dependency can drag in a second, multi-GB CUDA torch.
    constraints = venv / "mf-constraints.txt"
    # protobuf<5: mediapipe's pin (Ray's telemetry would otherwise pull protobuf 7)
    constraints.write_text(f"torch=={have}\nnumpy<2\nprotobuf<5\n")
    pipc = pip + ["-c", str(constraints)]
    run(pipc + ["-e", str(REPO)], "install mf_backend (editable) and its dependencies",
        "read the pip output above; the package index must be reachable")
    extras = [MEDIAPIPE, "pytest>=7"]
    if with_bpy:
        if sys.version_info[:2] == (3, 11):
            extras.append(BPY)
        else:
            step(f"skipping {BPY}: it needs Python 3.11 (this is {platform.python_version()}); add-on tests will be skipped")
    run(pipc + extras, f"install {', '.join(extras)}", "check the package index is reachable")
    if with_ray:
        run(pipc + [RAY], f"install {RAY} (scale-out on Ray)", "check the package index is reachable")
    if with_dwpose:
        try:
            run(pipc + ["controlnet-aux"], "install controlnet-aux (DWPose)", "DWPose is optional")
            check = subprocess.run([str(py), "-c", "import controlnet_aux"], capture_output=True, text=True)
            if check.returncode != 0:
                step("controlnet-aux installed but does not import with this torch; DWPose stays off (mediapipe is used)")
        except InstallError as exc:
            step(f"DWPose (controlnet-aux) not installed: {str(exc).splitlines()[0]}; mediapipe poses are used")
    else:
        step("DWPose (controlnet-aux) not requested: poses come from mediapipe (pass --with-dwpose to try)")

    run([str(py), "-c", "import mf_backend, torch, diffusers, transformers, cv2, numpy, mediapipe, av, OpenEXR, PyOpenColorIO, timecode"],
        "check the backend imports", "delete the venv folder and run install.py again")
    return py


def blender_config_dirs() -> list[Path]:
    """Version folders of the Blender user configs on this machine (e.g. ~/.config/blender/4.2)."""
    if sys.platform == "darwin":
        base = Path.home() / "Library/Application Support/Blender"
    elif os.name == "nt":
        base = Path(os.environ.get("APPDATA", Path.home())) / "Blender Foundation/Blender"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "blender"
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and p.name[:1].isdigit())


def backend_config(py: Path, models_dir: str | None) -> dict:
    return {"python": str(py), "repo": str(REPO), "models_dir": models_dir}


def install_addon(config: dict, targets: list[Path]) -> None:
    if not targets:
        step("no Blender user config found: add-on not installed into Blender "
             "(pass --blender-config DIR, or install the zip from --extension-zip via Preferences > Add-ons)")
    for version_dir in targets:
        # 4.2+ loads extensions from extensions/user_default; older versions from scripts/addons.
        try:
            major_minor = tuple(int(x) for x in version_dir.name.split(".")[:2])
        except ValueError:
            major_minor = (4, 2)
        sub = Path("extensions/user_default") if major_minor >= (4, 2) else Path("scripts/addons")
        dest = version_dir / sub / ADDON_NAME
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".installing")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ADDON_SRC, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", CONFIG_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        step(f"add-on installed: {dest} (enable 'MotionFollower' in Preferences > Add-ons)")


def build_extension_zip(dest: Path = REPO / "dist") -> Path:
    """dist/motionfollower-<version>.zip for Install from Disk. It holds no config file: no path of this
    machine travels with it (the add-on finds the backend through the user config file, docs/blender.md)."""
    manifest = (ADDON_SRC / "blender_manifest.toml").read_text()
    version = next(line.split("=")[1].strip().strip('"') for line in manifest.splitlines() if line.startswith("version"))
    out = Path(dest) / f"{ADDON_NAME}-{version}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(ADDON_SRC.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc" and f.name != CONFIG_NAME:
                zf.write(f, f.relative_to(ADDON_SRC).as_posix())
    step(f"extension zip: {out} (Blender 4.2+: Preferences > Get Extensions > Install from Disk)")
    return out


def user_config_file() -> Path:
    """What an add-on installed from the zip reads: blender_addon/config.py's user config file (loaded by
    path: the add-on package itself needs bpy)."""
    spec = importlib.util.spec_from_file_location("mf_addon_config", ADDON_SRC / "config.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module.user_config_dir() / CONFIG_NAME


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", default=str(REPO / ".venv"), help="where to create the backend venv (default: .venv)")
    ap.add_argument("--torch", choices=("cpu", "cuda", "auto"), default="auto")
    ap.add_argument("--models-dir", help="folder of the released weights (written into the add-on config)")
    ap.add_argument("--blender-config", action="append", default=None,
                    help="a Blender user config version folder (e.g. ~/.config/blender/4.2); repeatable. "
                         "Default: every one found")
    ap.add_argument("--no-blender", action="store_true", help="do not install the add-on into Blender")
    ap.add_argument("--extension-zip", action="store_true", help="also build dist/motionfollower-<version>.zip")
    ap.add_argument("--with-dwpose", action="store_true", help="try to install controlnet-aux for DWPose poses")
    ap.add_argument("--with-ray", action="store_true", help="install Ray for scale-out over many GPUs (docs/scale-out.md)")
    ap.add_argument("--no-bpy", action="store_true", help="skip bpy (Blender as a module; only the add-on tests need it)")
    args = ap.parse_args(argv)

    if sys.version_info < (3, 10):
        print(f"[install] error: Python 3.10+ is needed (this is {platform.python_version()}). "
              "Run install.py with python3.11.", file=sys.stderr)
        return 2
    try:
        py = install_backend(Path(args.venv).expanduser().resolve(), choose_torch(args.torch),
                             args.with_dwpose, not args.no_bpy, args.with_ray)
        config = backend_config(py, args.models_dir)
        (ADDON_SRC / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        step(f"backend config written: {ADDON_SRC / CONFIG_NAME} (python = {py})")
        if not args.no_blender:
            targets = [Path(p).expanduser() for p in args.blender_config] if args.blender_config else blender_config_dirs()
            install_addon(config, targets)
        if args.extension_zip:
            build_extension_zip()
            cfg_file = user_config_file()
            cfg_file.parent.mkdir(parents=True, exist_ok=True)
            cfg_file.write_text(json.dumps(config, indent=2))
            step(f"backend config for the installed zip written: {cfg_file}")
    except InstallError as exc:
        print(f"[install] error: {exc}", file=sys.stderr)
        return 1
    step(f"done. Try:  {py} -m mf_backend demo --out out/demo   and   {py} -m mf_backend doctor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
