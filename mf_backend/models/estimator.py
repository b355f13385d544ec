"""The guidance feature extractor ("estimator", method.md §B.1, §C.4).

    estimator = build_estimator(models, "shared" | "official", models_dir)

"shared" (our default, JobParams.estimator_weights) is the denoising UNet itself: half the GPU memory
(one 1.39 B-param UNet instead of two) and features from the same fine-tuned network that produces the
edit, which is what the method describes. "official" rebuilds the reference's second UNet: the
sd-image-variations spatial weights + MotionFollower's motion modules, never `denoising_unet.pth`,
and an appearance adapter (ReCtr) left at its random initialisation.

That random adapter is reproduced number for number (`reference_adapter_state`). The reference calls
`seed_everything(seed)` (42 by default), builds the VAE (diffusers with accelerate: empty weights, no random numbers
drawn), then the denoising UNet and the estimator with PyTorch's default initialisation, on the CPU,
in float32. The estimator's adapter is its last module, and inside it the residual blocks come before
`conv_in`. Each default initialisation (kaiming_uniform_ weight, uniform_ bias) draws one number per
element from the CPU generator; the norms draw none; zero-initialised layers (motion-module proj_out)
draw theirs before being zeroed. So the adapter's numbers start after 2U - A draws, U being the
UNet's drawn elements and A the adapter's. What cannot be checked offline: whether the released
motion_module.pth carries `appearance_adapter.*` keys (then they are loaded and nothing is random).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
from torch import nn

from mf_backend.errors import InvalidParams
from mf_backend.models.config import ModelConfig
from mf_backend.models.unet3d import UNet3DConditionModel

REFERENCE_SEED = 42
_DRAW_NONE = (nn.GroupNorm, nn.LayerNorm)  # initialised to ones / zeros


def init_draws(module: nn.Module) -> int:
    """Random numbers the reference's default initialisation of `module` draws: one per element of each
    conv / linear weight and bias (zero-initialised ones included), none for the norms."""
    return sum(p.numel() for m in module.modules() if not isinstance(m, _DRAW_NONE) for p in m.parameters(recurse=False))


def _skip_draws(n: int, chunk: int = 1 << 24) -> None:
    """Advance the CPU generator by n uniform float draws (seconds for the official 2.7 G)."""
    buf = torch.empty(min(n, chunk))
    while n > 0:
        k = min(n, chunk)
        buf[:k].uniform_()
        n -= k


def reference_adapter_state(config: ModelConfig, seed: int = REFERENCE_SEED) -> dict[str, torch.Tensor]:
    """`appearance_adapter.*` float32 weights as the reference's estimator gets them (module docstring)."""
    with torch.device("meta"):
        unet = UNet3DConditionModel(config)
    adapter = unet.appearance_adapter.to_empty(device="cpu")
    skip = 2 * init_draws(unet) - init_draws(adapter)
    convs = [m for n, m in adapter.named_modules() if isinstance(m, nn.Conv2d) and n != "conv_in"] + [adapter.conv_in]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _skip_draws(skip)
        for conv in convs:  # the reference's construction order: body (in_conv, block1, block2), then conv_in
            conv.reset_parameters()
    return {f"appearance_adapter.{k}": v for k, v in adapter.state_dict().items()}


def build_estimator(models, mode: str = "shared", models_dir: Union[str, Path, None] = None,
                    seed: int = REFERENCE_SEED) -> UNet3DConditionModel:
    """The feature extractor for ConsistencyGuidance; "official" only for models from a release folder
    (`seed`: the reference's --seed, which seeds its whole initialisation stream)."""
    from mf_backend.models.loading import is_release_layout, load_release_unet

    if mode == "shared":
        return models.unet
    if mode != "official":
        raise InvalidParams(f"estimator_weights must be 'shared' or 'official', not {mode!r}")
    root = Path(models_dir).expanduser() if models_dir else Path(models.source)
    if not is_release_layout(root):
        raise InvalidParams("estimator_weights 'official' needs the released weights (it rebuilds the reference's "
                            f"second UNet from sd-image-variations + motion_module.pth); {root} is not a release folder",
                            "use estimator_weights 'shared' with this model")
    unet, report = load_release_unet(root, models.dtype, fine_tuned=False, cfg=models.config)
    if any(k.startswith("appearance_adapter.") for k in report["missing"]):
        state = reference_adapter_state(models.config, seed)
        unet.load_state_dict({k: v.to(models.dtype) for k, v in state.items() if k in report["missing"]}, strict=False)
    return unet.to(models.device).eval()
