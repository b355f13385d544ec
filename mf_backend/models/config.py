"""Model configurations: `official` (the released MotionFollower structure), `tiny` (tests), `demo`
(the embedded demo model). One dataclass describes the UNet3D, the PoseController (PoCtr), the
ReferenceController (ReCtr) and, for the small configs, the VAE and CLIP image encoder that
`build_models` creates. The same classes serve every config (method.md §C).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class ModelConfig:
    name: str
    # --- spatial UNet (diffusers UNet2DConditionModel vocabulary) ---
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    num_attention_heads: int = 8  # spatial heads (SD1.5's config calls this `attention_head_dim`)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5  # ResNet GroupNorms; transformer/motion GroupNorms use 1e-6
    cross_attention_dim: int = 768  # CLIP image-embedding size (one token per frame)
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    # --- motion modules (AnimateDiff "Vanilla", method.md §C.1) ---
    motion_num_heads: int = 8
    motion_max_len: int = 32  # length of the sinusoidal `pos_encoder.pe` buffer = max frames per forward
    motion_num_blocks: int = 1
    motion_num_attention: int = 2  # attention_block_types = [Temporal_Self, Temporal_Self]
    # --- PoCtr (PoseGuider): len-1 stride-2 convs => output at 1/2**(len-1) of the image ---
    pose_channels: tuple[int, ...] = (16, 32, 96, 256)
    # --- ReCtr (Appearance_Adapter): PixelUnshuffle(latent_scale) -> 3*s*s channels ---
    adapter_num_res_blocks: int = 2
    # --- latent space ---
    latent_scale: int = 8  # image pixels per latent pixel (VAE down-sampling factor)
    # --- VAE / CLIP configs for build_models (None: they come from the release folder) ---
    vae: Optional[dict[str, Any]] = field(default=None, compare=False)
    image_encoder: Optional[dict[str, Any]] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if 2 ** (len(self.pose_channels) - 1) != self.latent_scale:
            raise ValueError(f"config {self.name!r}: pose_channels {self.pose_channels} down-sample by "
                             f"{2 ** (len(self.pose_channels) - 1)}, latent_scale is {self.latent_scale}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups or c % self.num_attention_heads or c % self.motion_num_heads:
                raise ValueError(f"config {self.name!r}: channels {c} not divisible by groups/heads")
        if len(self.block_out_channels) < 2:
            raise ValueError("need at least 2 UNet blocks")

    @property
    def num_blocks(self) -> int:
        return len(self.block_out_channels)

    @property
    def adapter_in_channels(self) -> int:
        return 3 * self.latent_scale ** 2

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    def feature_shapes(self, height: int, width: int) -> dict[str, Any]:
        """Channels and latent sizes of everything the sampler needs, for an image of height x width."""
        h, w = height // self.latent_scale, width // self.latent_scale
        down = [(c, h // 2 ** i, w // 2 ** i) for i, c in enumerate(self.block_out_channels)]
        rev = list(reversed(self.block_out_channels))
        n = self.num_blocks
        up = [(rev[i], h // 2 ** (n - 2 - i), w // 2 ** (n - 2 - i)) if i < n - 1 else (rev[i], h, w)
              for i in range(n)]
        return {"latent": (self.in_channels, h, w), "pose": (self.block_out_channels[0], h, w),
                "appearance": down, "up_blocks": up}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _vae(channels: tuple[int, ...], latent: int = 4, groups: int = 8, layers: int = 1,
         scaling_factor: float = 1.0) -> dict[str, Any]:
    n = len(channels)
    return {"in_channels": 3, "out_channels": 3, "latent_channels": latent,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(channels), "layers_per_block": layers, "norm_num_groups": groups,
            "sample_size": 64, "scaling_factor": scaling_factor}


def _clip(hidden: int, layers: int, heads: int, proj: int, image_size: int, patch: int) -> dict[str, Any]:
    return {"hidden_size": hidden, "intermediate_size": hidden * 4, "num_hidden_layers": layers,
            "num_attention_heads": heads, "projection_dim": proj, "image_size": image_size,
            "patch_size": patch, "num_channels": 3}


# VAE (sd-vae-ft-mse) and CLIP ViT-L/14 structures are only used by build_models("official") (random
# weights, e.g. for benchmarks); load_models("official") reads them from the release folder.
OFFICIAL = ModelConfig(name="official", vae=_vae((128, 256, 512, 512), groups=32, layers=2, scaling_factor=0.18215),
                       image_encoder=_clip(1024, 24, 16, 768, 224, 14))

# Tests: the same motion-module/adapter settings as official (so a fake release folder described by a
# tiny diffusers unet/config.json maps onto exactly this config), small channels, one layer per block.
TINY = ModelConfig(
    name="tiny", block_out_channels=(32, 64, 64, 64), layers_per_block=1, num_attention_heads=8,
    norm_num_groups=8, cross_attention_dim=32, pose_channels=(8, 8, 16, 16),
    vae=_vae((8, 8, 16, 16), groups=4), image_encoder=_clip(32, 1, 2, 32, 32, 8),
)

# The embedded demo model (trained on synthetic people): ~13 M parameters in all (UNet 11.9 M incl.
# ReCtr 1.05 M, PoCtr 0.08 M, VAE 1.0 M, CLIP 0.12 M).
DEMO = ModelConfig(
    name="demo", block_out_channels=(64, 96, 128, 128), layers_per_block=1, num_attention_heads=4,
    norm_num_groups=16, cross_attention_dim=64, motion_num_heads=4, pose_channels=(16, 16, 32, 64),
    vae=_vae((16, 32, 64, 64), groups=8), image_encoder=_clip(64, 2, 4, 64, 64, 8),
)

CONFIGS = {c.name: c for c in (OFFICIAL, TINY, DEMO)}


def get_config(name: str) -> ModelConfig:
    """"official" | "tiny" | "demo"."""
    try:
        return CONFIGS[name]
    except KeyError:
        from mf_backend.errors import InvalidParams

        raise InvalidParams(f"unknown model config {name!r}", f"use one of {sorted(CONFIGS)}") from None


def config_from_diffusers_unet(unet2d: dict[str, Any], pose_channels: Optional[tuple[int, ...]] = None,
                               name: str = "official") -> ModelConfig:
    """Our config for a release folder: spatial fields from its diffusers `unet/config.json`, motion
    modules and ReCtr as released, PoCtr channels as found in poctr.pth."""
    heads = unet2d.get("attention_head_dim", 8)  # SD1.5 stores the head COUNT under this name
    if isinstance(heads, (list, tuple)):
        heads = heads[0]
    groups = unet2d.get("norm_num_groups", 32)
    channels = tuple(unet2d.get("block_out_channels", OFFICIAL.block_out_channels))
    scale = 2 ** (len(pose_channels) - 1) if pose_channels else 8
    cfg = OFFICIAL.replace(
        name=name, in_channels=unet2d.get("in_channels", 4), out_channels=unet2d.get("out_channels", 4),
        block_out_channels=channels, layers_per_block=unet2d.get("layers_per_block", 2),
        num_attention_heads=int(heads), norm_num_groups=groups, norm_eps=unet2d.get("norm_eps", 1e-5),
        cross_attention_dim=unet2d.get("cross_attention_dim", 768),
        flip_sin_to_cos=unet2d.get("flip_sin_to_cos", True), freq_shift=unet2d.get("freq_shift", 0),
        pose_channels=tuple(pose_channels or OFFICIAL.pose_channels), latent_scale=scale,
    )
    return cfg
