"""Attention layers of the UNet3D: spatial transformer (per frame) and AnimateDiff motion module
(temporal, per pixel). Module/parameter names follow diffusers/AnimateDiff so released checkpoints
load unchanged (method.md §D.2). All attention goes through F.scaled_dot_product_attention.

Internal layout: hidden states are "folded" (B*F, C, h, w); `num_frames` says how to unfold.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

# attention_hook(name, hidden_states (B*F,N,C), key (B*F,N,C), value (B*F,N,C)) -> (key, value)
AttentionHook = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class ZeroLinear(nn.Linear):
    """Linear initialised to zero (also when re-initialised after a partial checkpoint load)."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Attention(nn.Module):
    """Multi-head attention with diffusers key names: to_q/to_k/to_v (no bias), to_out.0 (+ dropout)."""

    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.name = ""  # qualified name inside the UNet, set by UNet3DConditionModel (for attention_hook)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                hook: Optional[AttentionHook] = None) -> torch.Tensor:
        # x (S, N, C); context (S, M, Cc) or None (self-attention)
        if context is not None and context.shape[1] == 1 and hook is None:
            # one key (the frame's CLIP token): its softmax weight is exactly 1, so every query gets
            # the same value; the query projection and the attention product change nothing
            out = self.to_out[1](self.to_out[0](self.to_v(context)))  # (S, 1, C)
            return out.expand(x.shape[0], x.shape[1], out.shape[-1])
        src = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(src), self.to_v(src)
        if hook is not None:
            k, v = hook(self.name, x, k, v)  # may return more tokens (camera-mode K/V injection)
        s, n, c = q.shape
        h = self.heads
        q = q.view(s, n, h, c // h).transpose(1, 2)
        k = k.view(s, k.shape[1], h, c // h).transpose(1, 2)
        v = v.view(s, v.shape[1], h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (S, h, N, c/h)
        out = out.transpose(1, 2).reshape(s, n, c)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """net.0 = GEGLU(C -> 4C), net.1 = dropout, net.2 = Linear(4C -> C)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """LN -> self-attn (attn1) -> LN -> cross-attn on the frame's CLIP token (attn2) -> LN -> GEGLU FF."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, hook: Optional[AttentionHook] = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x), hook=hook) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """`Transformer3DModel` of the reference: GroupNorm -> 1x1 conv -> 1 block -> 1x1 conv -> residual, per frame."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, hook: Optional[AttentionHook] = None) -> torch.Tensor:
        # x (B*F, C, h, w); context (B*F, 1, D)
        bf, c, h, w = x.shape
        y = self.proj_in(self.norm(x))
        y = y.permute(0, 2, 3, 1).reshape(bf, h * w, c)
        for block in self.transformer_blocks:
            y = block(y, context, hook)
        y = y.reshape(bf, h, w, c).permute(0, 3, 1, 2)
        return self.proj_out(y) + x


class PositionalEncoding(nn.Module):
    """Sinusoidal temporal position encoding; `pe` (1, max_len, C) is a persistent buffer (checkpoints carry it)."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", torch.zeros(1, max_len, dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        _, max_len, dim = self.pe.shape
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(pos * div)
        pe[0, :, 1::2] = torch.cos(pos * div)
        if self.pe.device.type != "meta":
            self.pe.copy_(pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames in one forward; the motion modules allow at most "
                             f"{self.pe.shape[1]} (use a shorter window)")
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalAttention(Attention):
    """Self-attention over the frame axis for every pixel, with the position encoding added first."""

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__(dim, heads)
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                hook: Optional[AttentionHook] = None) -> torch.Tensor:
        return super().forward(self.pos_encoder(x))  # x (B*N, F, C)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, num_attention: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, max_len) for _ in range(num_attention)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attention)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    """GroupNorm (per frame) -> Linear proj_in -> temporal blocks -> Linear proj_out (zero-init) -> residual."""

    def __init__(self, channels: int, heads: int, groups: int, max_len: int, num_blocks: int, num_attention: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, max_len, num_attention) for _ in range(num_blocks)])
        self.proj_out = ZeroLinear(channels, channels)  # a fresh motion module starts as the identity

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        b = bf // num_frames
        y = self.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        y = self.proj_in(y)
        # (B*F, N, C) -> (B*N, F, C): attend over frames for every pixel
        y = y.reshape(b, num_frames, h * w, c).transpose(1, 2).reshape(b * h * w, num_frames, c)
        for block in self.transformer_blocks:
            y = block(y)
        y = self.proj_out(y)
        y = y.reshape(b, h * w, num_frames, c).transpose(1, 2).reshape(bf, h, w, c).permute(0, 3, 1, 2)
        return y + x


class MotionModule(nn.Module):
    """Wrapper giving the released key prefix `motion_modules.j.temporal_transformer.*`."""

    def __init__(self, channels: int, heads: int, groups: int, max_len: int, num_blocks: int, num_attention: int):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, groups, max_len, num_blocks, num_attention)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, num_frames)
