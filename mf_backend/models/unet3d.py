"""UNet3DConditionModel: the SD1.5-family UNet inflated to video with AnimateDiff motion modules,
plus MotionFollower's two injections (method.md §C.1):

    model = UNet3DConditionModel(get_config("official"|"tiny"|"demo"))
    v = model(sample (B,4,F,h,w), timestep (scalar | (B,)), encoder_hidden_states (B,F,D) | (B,1,D),
              pose_features=(B|1,C0,F,h,w) | None,          # PoseController output, added after conv_in
              appearance_features=[4 x (B|1,C_k,F,h_k,w_k)] | None,  # ReferenceController output,
                                                           # added after the last layer of each down block
              attention_hook=None | fn(name, hidden (B*F,N,C), key (B*F,N,C), value (B*F,N,C)) -> (key, value))
    -> v-prediction (B,4,F,h,w)
    model.features(..same.., levels=(1, 2)) -> {i: output of up_blocks[i] (B,C_i,F,h_i,w_i)}; the pass
       stops after the last block needed (the guidance "estimator" mode of method.md §B.1). At the
       official config and 512² frames: {1: (B,1280,F,32,32), 2: (B,640,F,64,64)};
       `config.feature_shapes(H, W)` gives the shapes for any config.
    model.forward_with_features(..same.., levels=(1, 2)) -> (v-prediction, features) from one whole pass

`model.appearance_adapter` is the ReferenceController (ReCtr); its weights live in the UNet state
dict under `appearance_adapter.*`, exactly as in the released `denoising_unet.pth`.
`attention_hook` is called in every spatial self-attention (attn1) of the up blocks, with the
module's qualified name (e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn1"); it may return
longer key/value tensors (camera-mode K/V injection, method.md §A.8).

Every spatial op runs per frame (frames folded into the batch); at most `config.motion_max_len`
(32) frames per forward because of the motion modules' position encoding. Works in fp32/fp16/bf16
(cast the module with .to(dtype); inputs are cast to the module's dtype).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from mf_backend.models.attention import Attention, AttentionHook
from mf_backend.models.blocks import DownBlock3D, MidBlock3D, UpBlock3D
from mf_backend.models.config import ModelConfig
from mf_backend.models.controllers import ReferenceController


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding of diffusion timesteps t (B,) -> (B, dim), as in SD1.5."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def _fold(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B|1, C, F, h, w) -> (B*F, C, h, w), broadcasting a batch of 1 (e.g. over the CFG halves)."""
    if x.shape[0] != batch:
        if x.shape[0] != 1:
            raise ValueError(f"condition batch {x.shape[0]} does not match the sample batch {batch}")
        x = x.expand(batch, *x.shape[1:])
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)


def _unfold(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B*F, C, h, w) -> (B, C, F, h, w)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // num_frames, num_frames, c, h, w).transpose(1, 2)


class UNet3DConditionModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        ch = config.block_out_channels
        n = len(ch)
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], config.time_embed_dim)
        self.down_blocks = nn.ModuleList([
            DownBlock3D(config, ch[max(i - 1, 0)], ch[i], cross_attention=i < n - 1, downsample=i < n - 1)
            for i in range(n)])
        self.mid_block = MidBlock3D(config, ch[-1])
        rev = list(reversed(ch))
        self.up_blocks = nn.ModuleList([
            UpBlock3D(config, rev[min(i + 1, n - 1)], rev[max(i - 1, 0)], rev[i], cross_attention=i > 0,
                      upsample=i < n - 1)
            for i in range(n)])
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, ch[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], config.out_channels, 3, padding=1)
        self.appearance_adapter = ReferenceController(config)
        for name, module in self.named_modules():
            if isinstance(module, Attention):
                module.name = name

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        for block in (*self.down_blocks, self.mid_block, *self.up_blocks):
            block.gradient_checkpointing = enabled

    def forward(self, sample: torch.Tensor, timestep: Union[torch.Tensor, float, int],
                encoder_hidden_states: torch.Tensor, pose_features: Optional[torch.Tensor] = None,
                appearance_features: Optional[Sequence[torch.Tensor]] = None,
                attention_hook: Optional[AttentionHook] = None) -> torch.Tensor:
        """The v-prediction (B,4,F,h,w); see the module docstring."""
        return self._run(sample, timestep, encoder_hidden_states, pose_features, appearance_features,
                         attention_hook)[0]

    def features(self, sample: torch.Tensor, timestep: Union[torch.Tensor, float, int],
                 encoder_hidden_states: torch.Tensor, pose_features: Optional[torch.Tensor] = None,
                 appearance_features: Optional[Sequence[torch.Tensor]] = None, levels: Sequence[int] = (1, 2),
                 attention_hook: Optional[AttentionHook] = None) -> dict[int, torch.Tensor]:
        """{i: output of up_blocks[i] (B,C_i,F,h_i,w_i)} for i in `levels`; the pass stops after the last
        block needed (the guidance "estimator" mode of method.md §B.1)."""
        return self._run(sample, timestep, encoder_hidden_states, pose_features, appearance_features,
                         attention_hook, levels, stop=True)[1]

    def forward_with_features(self, sample: torch.Tensor, timestep: Union[torch.Tensor, float, int],
                              encoder_hidden_states: torch.Tensor, pose_features: Optional[torch.Tensor] = None,
                              appearance_features: Optional[Sequence[torch.Tensor]] = None,
                              levels: Sequence[int] = (1, 2), attention_hook: Optional[AttentionHook] = None,
                              grad_through_sample: bool = True) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(v-prediction, {i: output of up_blocks[i]}) from one whole pass. With `grad_through_sample=False`
        the blocks after the last feature run without autograd (the features keep their graph; the sample
        does not), so a grad-enabled pass stores no activations the guidance never differentiates."""
        return self._run(sample, timestep, encoder_hidden_states, pose_features, appearance_features,
                         attention_hook, levels, grad_tail=grad_through_sample)

    def _run(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
             pose_features: Optional[torch.Tensor], appearance_features: Optional[Sequence[torch.Tensor]],
             attention_hook: Optional[AttentionHook], levels: Sequence[int] = (), stop: bool = False,
             grad_tail: bool = True) -> tuple[Optional[torch.Tensor], dict[int, torch.Tensor]]:
        """The one pass behind the three methods: (v or None when stopped early, {level: features})."""
        b, _, f, h, w = sample.shape
        if f > self.config.motion_max_len:
            raise ValueError(f"{f} frames in one forward; at most {self.config.motion_max_len} (use windows)")
        keep = set(levels)
        if not keep <= set(range(len(self.up_blocks))):
            raise ValueError(f"feature levels {sorted(keep)} out of range 0..{len(self.up_blocks) - 1}")
        dtype = self.dtype

        # time embedding, one per batch item, repeated for its frames: (B*F, T)
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        temb = self.time_embedding(timestep_embedding(t, self.config.block_out_channels[0],
                                                      self.config.flip_sin_to_cos, self.config.freq_shift).to(dtype))
        temb = temb.repeat_interleave(f, dim=0)

        # one CLIP token per frame: (B,F,D) | (B,1,D) -> (B*F, 1, D)
        ctx = encoder_hidden_states.to(dtype)
        if ctx.shape[1] == 1:
            ctx = ctx.expand(b, f, ctx.shape[-1])
        if ctx.shape[:2] != (b, f):
            raise ValueError(f"encoder_hidden_states {tuple(encoder_hidden_states.shape)} must be (B,F,D) = ({b},{f},D)")
        ctx = ctx.reshape(b * f, 1, ctx.shape[-1])

        x = self.conv_in(_fold(sample.to(dtype), b))
        if pose_features is not None:
            x = x + _fold(pose_features.to(dtype), b)
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            app = _fold(appearance_features[i].to(dtype), b) if appearance_features is not None else None
            x, s = block(x, temb, ctx, f, app)
            skips += s

        x = self.mid_block(x, temb, ctx, f)

        no_grad_tail = bool(keep) and not grad_tail
        features: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.up_blocks):
            n_res = len(block.resnets)
            block_skips, skips = skips[-n_res:], skips[:-n_res]
            size = tuple(skips[-1].shape[-2:]) if skips else None  # upsample to the next skip's size
            with torch.no_grad() if no_grad_tail and i > max(keep) else contextlib.nullcontext():
                x = block(x, block_skips, temb, ctx, f, attention_hook, size)
            if i in keep:
                features[i] = _unfold(x, f)
                if stop and len(features) == len(keep):
                    return None, features

        with torch.no_grad() if no_grad_tail else contextlib.nullcontext():
            x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return _unfold(x, f), features
