"""The two lightweight, attention-free signal controllers of MotionFollower (method.md §C.2, §C.3).

* PoseController (PoCtr, released as `poctr.pth`, code name PoseGuider): conv encoder of the rendered
  skeleton; its output is added to the UNet's `conv_in` output. Zero-initialised `conv_out`, so an
  untrained PoCtr leaves the UNet unchanged.
* ReferenceController (ReCtr, stored as `unet.appearance_adapter`): PixelUnshuffle + residual conv
  pyramid on the source frames; one feature per UNet down block, added after its last layer.

Both run per frame (frames folded into the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mf_backend.models.config import ModelConfig


class ZeroConv2d(nn.Conv2d):
    """Conv initialised to zero (also when re-initialised after a partial checkpoint load)."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class PoseController(nn.Module):
    """forward(pose (B,3,F,H,W) in [0,1]) -> (B, C0, F, H/s, W/s), s = config.latent_scale."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        ch = config.pose_channels
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        blocks = []
        for a, b in zip(ch[:-1], ch[1:]):
            blocks += [nn.Conv2d(a, a, 3, padding=1), nn.Conv2d(a, b, 3, padding=1, stride=2)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = ZeroConv2d(ch[-1], config.block_out_channels[0], 3, padding=1)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = pose.shape
        x = pose.transpose(1, 2).reshape(b * f, c, h, w)
        x = F.silu(self.conv_in(x))
        for conv in self.blocks:
            x = F.silu(conv(x))
        x = self.conv_out(x)
        return x.reshape(b, f, *x.shape[1:]).transpose(1, 2)


class AdapterResBlock(nn.Module):
    """[AvgPool 2x2] -> [1x1 in_conv if channels change] -> x + conv1x1(ReLU(conv3x3(x)))."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.in_conv = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.block1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.block2 = nn.Conv2d(cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(F.relu(self.block1(x)))


class ReferenceController(nn.Module):
    """forward(frames (B,F,3,H,W) in [-1,1]) -> list of (B, C_k, F, H/(s*2^k), W/(s*2^k)), k = 0..n_blocks-1."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.scale = config.latent_scale
        ch = config.block_out_channels
        self.num_res_blocks = config.adapter_num_res_blocks
        self.conv_in = nn.Conv2d(config.adapter_in_channels, ch[0], 3, padding=1)
        body = []
        for i, c in enumerate(ch):
            for j in range(self.num_res_blocks):
                first = i > 0 and j == 0
                body.append(AdapterResBlock(ch[i - 1] if first else c, c, down=first))
        self.body = nn.ModuleList(body)

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        b, f, c, h, w = frames.shape
        x = F.pixel_unshuffle(frames.reshape(b * f, c, h, w), self.scale)
        x = self.conv_in(x)
        feats = []
        for i, block in enumerate(self.body):
            x = block(x)
            if (i + 1) % self.num_res_blocks == 0:
                feats.append(x.reshape(b, f, *x.shape[1:]).transpose(1, 2))
        return feats
