"""Build, save and load the MotionFollower model set.

    models = build_models("tiny" | "demo" | "official", seed=0)         # random weights
    models = load_models("official" | "demo" | "auto" | <folder>, models_dir, device="cpu", dtype=torch.float32)
    save_models(models, folder)                                         # our own layout (below)

`MotionFollowerModels(unet, pose_controller, image_encoder, vae, config_name, config, source, load_report)`:
unet = UNet3DConditionModel (ReCtr inside as unet.appearance_adapter), pose_controller = PoseController,
image_encoder = transformers CLIPVisionModelWithProjection, vae = diffusers AutoencoderKL.

Two folder layouts are read:

* the release layout (= the reference's `pretrained_weights/`, see weights.py): the UNet is
  `sd-image-variations-diffusers/unet` (diffusers 2D weights, .safetensors or .bin) merged with
  `motion_module.pth`, then `denoising_unet.pth` on top (the reference's order); `poctr.pth` loads
  strictly; CLIP from `sd-image-variations-diffusers/image_encoder`, VAE from `sd-vae-ft-mse`.
  Any `X.pth` may be replaced by `X.safetensors` (`python -m mf_backend weights convert`).
  The reference loads non-strictly and silently; we log every missing / unexpected key (WARNING on
  the `mf_backend.models` logger) and keep the lists in `models.load_report`. Shape mismatches fail.
* our own layout (tiny/demo/trained models, e.g. mf_backend/assets/demo):

      <folder>/config.json                 {"format": "motionfollower-models", "version": 1,
                                            "config_name": ..., "config": ModelConfig.to_dict()}
      <folder>/unet.safetensors            UNet3DConditionModel state dict (incl. appearance_adapter.*)
      <folder>/pose_controller.safetensors PoseController state dict
      <folder>/vae/                        diffusers AutoencoderKL.save_pretrained
      <folder>/image_encoder/              transformers CLIPVisionModelWithProjection.save_pretrained

  loaded strictly (any missing/unexpected key is an error).

Weights are loaded safely: safetensors, or torch.load(weights_only=True) which refuses pickles that
would run code.

The guidance estimator (the reference's second UNet, or ours shared): `models/estimator.py`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from mf_backend.errors import InvalidParams, WeightsMissing
from mf_backend.models.clip import clip_pixels
from mf_backend.models.config import ModelConfig, config_from_diffusers_unet, get_config
from mf_backend.models.controllers import PoseController
from mf_backend.models.state import find_weights, load_into, load_state_file, save_state_file
from mf_backend.models.unet3d import UNet3DConditionModel

log = logging.getLogger("mf_backend.models")

FORMAT = "motionfollower-models"
SD_IV = "sd-image-variations-diffusers"
VAE_DIR = "sd-vae-ft-mse"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class MotionFollowerModels:
    unet: UNet3DConditionModel
    pose_controller: PoseController
    image_encoder: nn.Module  # transformers CLIPVisionModelWithProjection
    vae: nn.Module  # diffusers AutoencoderKL
    config_name: str
    config: Optional[ModelConfig] = None
    source: str = "random"  # folder the weights came from, or "random"
    load_report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = self.unet.config

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def clip_image_size(self) -> int:
        return int(self.image_encoder.config.image_size)

    def modules(self) -> list[nn.Module]:
        return [self.unet, self.pose_controller, self.image_encoder, self.vae]

    def to(self, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None) -> "MotionFollowerModels":
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    def eval(self) -> "MotionFollowerModels":
        for m in self.modules():
            m.eval()
        return self

    def requires_grad_(self, flag: bool) -> "MotionFollowerModels":
        for m in self.modules():
            m.requires_grad_(flag)
        return self

    @torch.no_grad()
    def clip_embed(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (F,H,W,3) frames -> one CLIP image embedding per frame (F, D) (method.md §A.2: the
        reference's PIL resize + CLIP processor, `models.clip`; then `image_embeds`)."""
        enc = self.image_encoder
        x = clip_pixels(frames, self.clip_image_size).to(device=enc.device, dtype=enc.dtype)
        return enc(pixel_values=x).image_embeds


# ----------------------------------------------------------------------------------------------
# random models


def _build_vae(cfg: ModelConfig) -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**cfg.vae)


def _build_clip(cfg: ModelConfig) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg.image_encoder))


def build_models(config_name: Union[str, ModelConfig], seed: int = 0) -> MotionFollowerModels:
    """All four components with random (seeded, reproducible) weights, fp32 on CPU."""
    cfg = config_name if isinstance(config_name, ModelConfig) else get_config(config_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet3DConditionModel(cfg)
        pose = PoseController(cfg)
        vae = _build_vae(cfg)
        clip = _build_clip(cfg)
    return MotionFollowerModels(unet, pose, clip, vae, cfg.name, cfg, "random").eval()


# ----------------------------------------------------------------------------------------------
# our own layout


def save_models(models: MotionFollowerModels, folder: Union[str, Path], overwrite: bool = False) -> Path:
    """Write `models` in our own layout (module docstring). The folder appears complete or not at all;
    an existing non-empty folder is replaced only with overwrite=True (after the new one is written)."""
    from mf_backend.files import atomic_output_dir

    folder = Path(folder).expanduser().resolve()
    target = folder
    if overwrite and folder.exists() and any(folder.iterdir()):
        target = folder.with_name(f".{folder.name}.new-{os.getpid()}")
    with atomic_output_dir(target) as tmp:
        meta = {"format": FORMAT, "version": 1, "config_name": models.config_name, "config": models.config.to_dict()}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        save_state_file(models.unet.state_dict(), tmp / "unet.safetensors")
        save_state_file(models.pose_controller.state_dict(), tmp / "pose_controller.safetensors")
        models.vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        models.image_encoder.save_pretrained(str(tmp / "image_encoder"), safe_serialization=True)
    if target != folder:
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(target, folder)
        shutil.rmtree(old, ignore_errors=True)
    return folder


def is_own_layout(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def is_release_layout(folder: Path) -> bool:
    return any((folder / f"denoising_unet{s}").is_file() for s in (".pth", ".safetensors"))


def _load_vae_clip(vae_dir: Path, clip_dir: Path, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModelWithProjection

    for d, what in ((vae_dir, "VAE"), (clip_dir, "CLIP image encoder")):
        if not (d / "config.json").is_file():
            raise WeightsMissing(f"{what} folder missing or incomplete: {d}",
                                 "run `python -m mf_backend weights list` to see which files go where")
    vae = AutoencoderKL.from_pretrained(str(vae_dir), torch_dtype=dtype, low_cpu_mem_usage=False)
    clip = CLIPVisionModelWithProjection.from_pretrained(str(clip_dir), dtype=dtype)
    return vae, clip


def load_own_folder(folder: Path, dtype: torch.dtype = torch.float32) -> MotionFollowerModels:
    meta = json.loads((folder / "config.json").read_text())
    if meta.get("format") != FORMAT:
        raise WeightsMissing(f"{folder / 'config.json'} is not a MotionFollower model folder",
                             "pass the folder written by save_models / training, or 'official' / 'demo'")
    cfg = ModelConfig.from_dict(meta["config"])
    unet, _ = load_into(lambda: UNet3DConditionModel(cfg), load_state_file(folder / "unet.safetensors"),
                        dtype, str(folder / "unet.safetensors"), strict=True)
    pose, _ = load_into(lambda: PoseController(cfg), load_state_file(folder / "pose_controller.safetensors"),
                        dtype, str(folder / "pose_controller.safetensors"), strict=True)
    vae, clip = _load_vae_clip(folder / "vae", folder / "image_encoder", dtype)
    return MotionFollowerModels(unet, pose, clip, vae, meta.get("config_name", cfg.name), cfg, str(folder))


# ----------------------------------------------------------------------------------------------
# release layout


def release_config(root: Path) -> ModelConfig:
    """Our config for a release folder: spatial structure from its diffusers unet/config.json, PoCtr
    channels from poctr.pth, motion modules and ReCtr as released."""
    cfg_path = root / SD_IV / "unet" / "config.json"
    if not cfg_path.is_file():
        raise WeightsMissing(f"missing {cfg_path}", "download lambdalabs/sd-image-variations-diffusers into the models folder")
    unet2d = json.loads(cfg_path.read_text())
    pose = load_state_file(find_weights(root / "poctr"))
    ch = [pose["conv_in.weight"].shape[0]] + [pose[f"blocks.{i}.weight"].shape[0]
                                               for i in range(1, 99, 2) if f"blocks.{i}.weight" in pose]
    return config_from_diffusers_unet(unet2d, tuple(ch))


def _base_unet_state(root: Path) -> tuple[dict[str, torch.Tensor], str]:
    d = root / SD_IV / "unet"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"):
        if (d / name).is_file():
            return load_state_file(d / name), str(d / name)
    raise WeightsMissing(f"missing {d}/diffusion_pytorch_model.safetensors (or .bin)",
                         "download lambdalabs/sd-image-variations-diffusers (folder unet/) into the models folder")


def load_release_unet(root: Union[str, Path], dtype: torch.dtype = torch.float32, fine_tuned: bool = True,
                      cfg: Optional[ModelConfig] = None, seed: int = 42) -> tuple[UNet3DConditionModel, dict[str, Any]]:
    """The UNet3D from a release folder: SD-IV 2D UNet <- motion_module.pth <- denoising_unet.pth
    (later files win, as in the reference). fine_tuned=False skips denoising_unet.pth: the reference's
    estimator (random ReCtr, seeded)."""
    root = Path(root)
    cfg = cfg or release_config(root)
    state, base_file = _base_unet_state(root)
    files = [base_file]
    mm_file = find_weights(root / "motion_module")
    mm = load_state_file(mm_file)
    files.append(str(mm_file))
    state.update(mm)
    if fine_tuned:
        du_file = find_weights(root / "denoising_unet")
        state.update(load_state_file(du_file))
        files.append(str(du_file))
    unet, report = load_into(lambda: UNet3DConditionModel(cfg), state, dtype,
                             "UNet3D from " + " + ".join(Path(f).name for f in files), strict=False, seed=seed)
    report["files"] = files
    return unet, report


def load_release_folder(root: Union[str, Path], dtype: torch.dtype = torch.float32) -> MotionFollowerModels:
    root = Path(root).expanduser()
    cfg = release_config(root)
    unet, report = load_release_unet(root, dtype, True, cfg)
    poctr_file = find_weights(root / "poctr")
    pose, _ = load_into(lambda: PoseController(cfg), load_state_file(poctr_file), dtype, str(poctr_file), strict=True)
    vae, clip = _load_vae_clip(root / VAE_DIR, root / SD_IV / "image_encoder", dtype)
    return MotionFollowerModels(unet, pose, clip, vae, "official", cfg, str(root), {"unet": report})


# ----------------------------------------------------------------------------------------------
# entry points


def load_models(model: str, models_dir: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu",
                dtype: Union[torch.dtype, str] = torch.float32) -> MotionFollowerModels:
    """model: "official" (release folder = models_dir), "demo" (mf_backend/assets/demo), "auto" (official
    if complete, else demo), or a folder (our layout, or a release layout). Returns eval-mode models on
    `device` in `dtype` ("fp32"/"fp16"/"bf16"/"auto" accepted)."""
    from mf_backend.environment import resolve_device, resolve_dtype
    from mf_backend.weights import ASSETS_DIR, resolve_models_dir, weights_report

    device = resolve_device(device) if isinstance(device, str) else device
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, str(device))
    if model == "auto":
        model = "official" if weights_report(str(models_dir) if models_dir else None)["official_model"] else "demo"
    if model == "official":
        root = resolve_models_dir(str(models_dir) if models_dir else None)
        if not is_release_layout(root):
            raise WeightsMissing(f"the released MotionFollower weights are not in {root}",
                                 "run `python -m mf_backend doctor` for the list of files and where to get them, "
                                 "or use --model demo")
        models = load_release_folder(root, dtype)
    elif model == "demo":
        folder = ASSETS_DIR / "demo"
        if not is_own_layout(folder):
            raise WeightsMissing(f"the embedded demo model is missing ({folder})",
                                 "reinstall the package, or train it with `python -m mf_backend train`")
        models = load_own_folder(folder, dtype)
    else:
        folder = Path(model).expanduser()
        if is_own_layout(folder):
            models = load_own_folder(folder, dtype)
        elif is_release_layout(folder):
            models = load_release_folder(folder, dtype)
        else:
            raise InvalidParams(f"model {model!r} is neither 'official', 'demo', 'auto' nor a model folder",
                                "pass a folder with config.json written by save_models, or a release folder "
                                "with denoising_unet.pth")
    return models.to(device).eval()
