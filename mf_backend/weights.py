"""Where weights live and which are present.

The models folder uses the reference implementation's `pretrained_weights/` layout unchanged, so a
user can point us at the folder they already downloaded for the official code:

    <models_dir>/
      denoising_unet.pth            MotionFollower (stage-1 UNet + ReCtr)
      motion_module.pth             MotionFollower (stage-2 motion modules)
      poctr.pth                     MotionFollower (PoseController)
      sd-image-variations-diffusers/  lambdalabs (unet/ + image_encoder/)
      sd-vae-ft-mse/                stabilityai VAE
      DWPose/                       optional: dw-ll_ucoco_384.onnx, yolox_l.onnx

The embedded demo model and the mask predictor ship inside the package (mf_backend/assets).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
OFFICIAL_URL = "https://github.com/Francis-Rings/MotionFollower (README: 'Download weights')"


def default_models_dir() -> Path:
    env = os.environ.get("MF_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "motionfollower" / "pretrained_weights"


def resolve_models_dir(models_dir: Optional[str]) -> Path:
    return Path(models_dir).expanduser() if models_dir else default_models_dir()


@dataclass(frozen=True)
class WeightFile:
    name: str  # path relative to the models folder
    group: str  # "official" (needed for the released model), "optional"
    what: str
    source: str
    alternatives: tuple[str, ...] = ()  # any of these counts as present (e.g. .safetensors next to .bin)

    def present(self, root: Path) -> bool:
        return any((root / n).exists() for n in (self.name, *self.alternatives))


EXPECTED: tuple[WeightFile, ...] = (
    WeightFile("denoising_unet.pth", "official", "MotionFollower denoising UNet + ReCtr (stage 1)", OFFICIAL_URL,
               ("denoising_unet.safetensors",)),
    WeightFile("motion_module.pth", "official", "MotionFollower motion modules (stage 2)", OFFICIAL_URL,
               ("motion_module.safetensors",)),
    WeightFile("poctr.pth", "official", "MotionFollower PoseController", OFFICIAL_URL, ("poctr.safetensors",)),
    WeightFile("sd-image-variations-diffusers/unet/config.json", "official",
               "SD image-variations UNet config (base of the denoising UNet)",
               "huggingface.co/lambdalabs/sd-image-variations-diffusers (folder unet/)"),
    WeightFile("sd-image-variations-diffusers/unet/diffusion_pytorch_model.safetensors", "official",
               "SD image-variations UNet weights (spatial layers of the denoising UNet)",
               "huggingface.co/lambdalabs/sd-image-variations-diffusers (folder unet/)",
               ("sd-image-variations-diffusers/unet/diffusion_pytorch_model.bin",)),
    WeightFile("sd-image-variations-diffusers/image_encoder/config.json", "official",
               "CLIP ViT-L/14 image encoder config", "huggingface.co/lambdalabs/sd-image-variations-diffusers (folder image_encoder/)"),
    WeightFile("sd-image-variations-diffusers/image_encoder/model.safetensors", "official",
               "CLIP ViT-L/14 image encoder weights", "huggingface.co/lambdalabs/sd-image-variations-diffusers (folder image_encoder/)",
               ("sd-image-variations-diffusers/image_encoder/pytorch_model.bin",)),
    WeightFile("sd-vae-ft-mse/config.json", "official", "VAE config", "huggingface.co/stabilityai/sd-vae-ft-mse"),
    WeightFile("sd-vae-ft-mse/diffusion_pytorch_model.safetensors", "official", "VAE weights",
               "huggingface.co/stabilityai/sd-vae-ft-mse", ("sd-vae-ft-mse/diffusion_pytorch_model.bin",)),
    WeightFile("DWPose/dw-ll_ucoco_384.onnx", "optional", "DWPose keypoints (better poses than the default mediapipe)",
               "huggingface.co/yzd-v/DWPose"),
    WeightFile("DWPose/yolox_l.onnx", "optional", "DWPose person detector", "huggingface.co/yzd-v/DWPose"),
)


def weights_report(models_dir: Optional[str] = None) -> dict[str, Any]:
    """Which weights are present or missing, with where to put and get each missing file."""
    root = resolve_models_dir(models_dir)
    present, missing = [], []
    for wf in EXPECTED:
        entry = {"file": wf.name, "group": wf.group, "what": wf.what}
        if wf.present(root):
            present.append(entry)
        else:
            missing.append({**entry, "put_it_at": str(root / wf.name), "get_it_from": wf.source})
    demo_dir = ASSETS_DIR / "demo"
    seg_dir = ASSETS_DIR / "seg"
    official_ok = not any(m["group"] == "official" for m in missing)
    return {
        "models_dir": str(root),
        "models_dir_exists": root.is_dir(),
        "present": present,
        "missing": missing,
        "official_model": official_ok,
        "demo_model": (demo_dir / "config.json").is_file(),
        "mask_model": (seg_dir / "config.json").is_file(),
        "default_model": "official" if official_ok else "demo",
    }
