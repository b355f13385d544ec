"""`python -m mf_backend weights manifest|verify|convert` (the `list` action lives in weights.py).

* manifest --config official|tiny|demo : key -> shape of the UNet3D and PoseController state dicts
  (built on the meta device; at `official` this equals the released checkpoints' manifest).
* verify [--models-dir D]              : reads only the tensor headers/shapes of every weight file in a
  release folder (or one of our model folders) and reports missing / unexpected / mismatched keys
  against our model structure. Exit code 0 = loadable, 1 = problems.
* convert [--models-dir D] [--out O]   : writes a .safetensors next to (or under O, same relative path)
  every .pth/.bin of a release folder, loaded safely; existing files are never overwritten. The loader
  prefers the .safetensors copies (faster, memory-mapped, no pickle).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def model_manifest(config_name: str) -> dict[str, Any]:
    import torch

    from mf_backend.models.config import get_config
    from mf_backend.models.controllers import PoseController
    from mf_backend.models.unet3d import UNet3DConditionModel

    cfg = get_config(config_name)
    with torch.device("meta"):
        unet, pose = UNet3DConditionModel(cfg), PoseController(cfg)
    usd, psd = unet.state_dict(), pose.state_dict()
    return {
        "_meta": {"config": config_name, "denoising_unet_keys": len(usd),
                  "denoising_unet_elems": sum(v.numel() for v in usd.values()),
                  "pose_guider_keys": len(psd), "pose_guider_elems": sum(v.numel() for v in psd.values())},
        "denoising_unet": {k: list(v.shape) for k, v in usd.items()},
        "pose_guider": {k: list(v.shape) for k, v in psd.items()},
    }


def state_shapes(path: Path) -> dict[str, list[int]]:
    """Key -> shape of a weights file without reading the tensors (safetensors header / mmap)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    from mf_backend.models.state import load_state_file

    return {k: list(v.shape) for k, v in load_state_file(path).items()}


def _compare(found: dict[str, list[int]], expected: dict[str, list[int]]) -> dict[str, list[str]]:
    return {
        "missing": [k for k in expected if k not in found],
        "unexpected": [k for k in found if k not in expected],
        "mismatched": [f"{k}: file {found[k]} vs model {expected[k]}" for k in found
                       if k in expected and found[k] != expected[k]],
    }


def verify_folder(root: Path) -> dict[str, Any]:
    import torch

    from mf_backend.models import loading
    from mf_backend.models.state import find_weights
    from mf_backend.models.controllers import PoseController
    from mf_backend.models.unet3d import UNet3DConditionModel

    def expected_for(cfg):
        with torch.device("meta"):
            u, p = UNet3DConditionModel(cfg), PoseController(cfg)
        return ({k: list(v.shape) for k, v in u.state_dict().items()},
                {k: list(v.shape) for k, v in p.state_dict().items()})

    report: dict[str, Any] = {"folder": str(root)}
    if loading.is_own_layout(root):
        from mf_backend.models.config import ModelConfig

        cfg = ModelConfig.from_dict(json.loads((root / "config.json").read_text())["config"])
        eu, ep = expected_for(cfg)
        report["layout"] = "own"
        report["unet"] = _compare(state_shapes(root / "unet.safetensors"), eu)
        report["pose_controller"] = _compare(state_shapes(root / "pose_controller.safetensors"), ep)
        sub = {"vae": root / "vae", "image_encoder": root / "image_encoder"}
    else:
        report["layout"] = "release"
        cfg = loading.release_config(root)
        eu, ep = expected_for(cfg)
        found: dict[str, list[int]] = {}
        files = {}
        base_dir = root / loading.SD_IV / "unet"
        base = next((base_dir / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
                     if (base_dir / n).is_file()), None)
        for name, path in (("base_unet", base), ("motion_module", find_weights(root / "motion_module")),
                           ("denoising_unet", find_weights(root / "denoising_unet"))):
            if path is None:
                report.setdefault("errors", []).append(f"missing {base_dir}/diffusion_pytorch_model.safetensors")
                continue
            shapes = state_shapes(path)
            files[name] = {"file": str(path), "keys": len(shapes),
                           "unexpected": [k for k in shapes if k not in eu][:20]}
            found.update(shapes)
        report["files"] = files
        report["config_equals_official"] = cfg == loading.get_config("official").replace(name=cfg.name)
        report["unet"] = _compare(found, eu)
        report["pose_controller"] = _compare(state_shapes(find_weights(root / "poctr")), ep)
        sub = {"vae": root / loading.VAE_DIR, "image_encoder": root / loading.SD_IV / "image_encoder"}
    report["folders"] = {k: (v / "config.json").is_file() for k, v in sub.items()}
    problems = (sum(len(v) for v in report["unet"].values()) + sum(len(v) for v in report["pose_controller"].values())
                + len(report.get("errors", [])) + sum(not ok for ok in report["folders"].values()))
    report["ok"] = problems == 0
    for part in ("unet", "pose_controller"):  # keep the printout readable
        for k, v in report[part].items():
            report[part][k] = {"count": len(v), "first": v[:10]}
    return report


def convert_folder(root: Path, out: Path) -> list[dict[str, str]]:
    from mf_backend.models.loading import SD_IV
    from mf_backend.models.state import load_state_file, save_state_file

    sources = [root / f"{n}.pth" for n in ("denoising_unet", "motion_module", "poctr")]
    sources.append(root / SD_IV / "unet" / "diffusion_pytorch_model.bin")
    done = []
    for src in sources:
        if not src.is_file():
            continue
        dst = out / src.relative_to(root).with_suffix(".safetensors")
        if dst.exists():
            done.append({"file": str(src), "safetensors": str(dst), "status": "exists, kept"})
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
        try:
            save_state_file(load_state_file(src), tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        done.append({"file": str(src), "safetensors": str(dst), "status": "written"})
    return done


def weights_command(args: argparse.Namespace) -> int:
    from mf_backend.weights import resolve_models_dir

    if args.action == "manifest":
        print(json.dumps(model_manifest(args.config or "official"), indent=1))
        return 0
    root = resolve_models_dir(args.models_dir)
    if not root.is_dir():
        from mf_backend.errors import WeightsMissing

        raise WeightsMissing(f"models folder {root} does not exist",
                             "pass --models-dir (or set MF_MODELS_DIR); `python -m mf_backend doctor` lists the files")
    if args.action == "verify":
        report = verify_folder(root)
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    if args.action == "convert":
        out = Path(args.out).expanduser() if args.out else root
        print(json.dumps({"converted": convert_folder(root, out)}, indent=2))
        return 0
    raise ValueError(f"unknown weights action {args.action!r}")
