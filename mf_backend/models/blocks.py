"""UNet3D building blocks: ResNet, down/up samplers, down/mid/up blocks (diffusers key names).

Hidden states are folded (B*F, C, h, w), so every spatial op (conv, GroupNorm = the reference's
"inflated" GroupNorm) runs per frame; motion modules unfold the frame axis themselves.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mf_backend.models.attention import AttentionHook, MotionModule, SpatialTransformer
from mf_backend.models.config import ModelConfig


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> + Linear(SiLU(temb)) -> GN -> SiLU -> conv3x3, 1x1 shortcut if channels change."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # x (B*F, C, h, w); temb (B*F, T)
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


def _motion(cfg: ModelConfig, channels: int) -> MotionModule:
    return MotionModule(channels, cfg.motion_num_heads, cfg.norm_num_groups, cfg.motion_max_len,
                        cfg.motion_num_blocks, cfg.motion_num_attention)


class _Block(nn.Module):
    """Shared loop: for each layer, ResNet [-> Transformer] [-> extra] -> motion module."""

    gradient_checkpointing = False

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int,
               hook: Optional[AttentionHook], extra: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.resnets[i](x, temb)
        if self.attentions is not None:
            x = self.attentions[i](x, context, hook)
        if extra is not None:
            x = x + extra
        return self.motion_modules[i](x, num_frames)

    def layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int,
              hook: Optional[AttentionHook] = None, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._layer, i, x, temb, context, num_frames, hook, extra, use_reentrant=False)
        return self._layer(i, x, temb, context, num_frames, hook, extra)


class DownBlock3D(_Block):
    """layers x (ResNet -> [Transformer] -> [+ ReCtr feature after the last layer] -> motion module) -> [downsampler]."""

    def __init__(self, cfg: ModelConfig, cin: int, cout: int, cross_attention: bool, downsample: bool):
        super().__init__()
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList(
            [ResnetBlock(cin if j == 0 else cout, cout, cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps)
             for j in range(n)])
        self.attentions = nn.ModuleList(
            [SpatialTransformer(cout, cfg.num_attention_heads, cfg.cross_attention_dim, cfg.norm_num_groups)
             for _ in range(n)]) if cross_attention else None
        self.motion_modules = nn.ModuleList([_motion(cfg, cout) for _ in range(n)])
        self.downsamplers = nn.ModuleList([Downsample(cout)]) if downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int,
                appearance: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        last = len(self.resnets) - 1
        for i in range(len(self.resnets)):
            x = self.layer(i, x, temb, context, num_frames, extra=appearance if i == last else None)
            skips.append(x)  # taken after the motion module, so it carries the ReCtr injection
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock3D(_Block):
    """(layers+1) x (concat skip -> ResNet -> [Transformer] -> motion module) -> [nearest x2 + conv]."""

    def __init__(self, cfg: ModelConfig, cin: int, prev: int, cout: int, cross_attention: bool, upsample: bool):
        super().__init__()
        n = cfg.layers_per_block + 1
        self.resnets = nn.ModuleList([
            ResnetBlock((prev if j == 0 else cout) + (cin if j == n - 1 else cout), cout, cfg.time_embed_dim,
                        cfg.norm_num_groups, cfg.norm_eps) for j in range(n)])
        self.attentions = nn.ModuleList(
            [SpatialTransformer(cout, cfg.num_attention_heads, cfg.cross_attention_dim, cfg.norm_num_groups)
             for _ in range(n)]) if cross_attention else None
        self.motion_modules = nn.ModuleList([_motion(cfg, cout) for _ in range(n)])
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, context: torch.Tensor,
                num_frames: int, hook: Optional[AttentionHook] = None,
                upsample_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips.pop()], dim=1)
            x = self.layer(i, x, temb, context, num_frames, hook)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size or (x.shape[-2] * 2, x.shape[-1] * 2))
        return x


class MidBlock3D(_Block):
    """ResNet -> Transformer -> motion module -> ResNet."""

    def __init__(self, cfg: ModelConfig, channels: int):
        super().__init__()
        args = (cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps)
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, *args), ResnetBlock(channels, channels, *args)])
        self.attentions = nn.ModuleList(
            [SpatialTransformer(channels, cfg.num_attention_heads, cfg.cross_attention_dim, cfg.norm_num_groups)])
        self.motion_modules = nn.ModuleList([_motion(cfg, channels)])

    def _mid(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        x = self.motion_modules[0](x, num_frames)
        return self.resnets[1](x, temb)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._mid, x, temb, context, num_frames, use_reentrant=False)
        return self._mid(x, temb, context, num_frames)
