"""`bench activations`: what the grad-enabled guidance pass keeps for its backward, per UNet layer,
and what checkpointing each layer would cost in recompute, counted on the meta device (no GPU).

    python -m mf_backend bench activations --config official --frames 24 --size 512 [--budget-gib 16]

The pass is the sampler's fused guidance pass (`forward_with_features`, grad w.r.t. the latent only,
no grad after the last feature level), in bf16. Saved tensors are recorded with
`torch.autograd.graph.saved_tensors_hooks` (each storage counted once, weights excluded) and
attributed to the layer that saved them; FLOPs come from `torch.utils.flop_counter` per layer.
Checkpointing a layer keeps only its input and re-runs its forward in the backward, so the plan
printed for `--budget-gib` is the set of layers whose checkpointing saves the bytes needed for the
fewest recomputed FLOPs (greedy by bytes saved per FLOP). The sampler checkpoints whole blocks
(`editing/memory.py` CHECKPOINT_PRESETS); the per-layer table says which blocks those should be.
"""

from __future__ import annotations

import json
import sys
from typing import Any

GIB = 2 ** 30
_SDPA = None  # the real scaled_dot_product_attention while it is replaced


def grad_pass_profile(config: str = "official", frames: int = 24, size: int = 512, dtype: str = "bf16"
                      ) -> dict[str, Any]:
    """Per layer of the guidance pass: saved GiB, input GiB (what a checkpoint keeps) and forward TFLOP."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mf_backend.editing.guidance import LEVELS
    from mf_backend.models.loading import build_models

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    with torch.device("meta"):
        models = build_models(config).to(dtype=dt).eval()
    models.requires_grad_(False)
    unet, cfg = models.unet, models.config
    params = {p.untyped_storage()._cdata for p in unet.parameters()} | {b.untyped_storage()._cdata
                                                                         for b in unet.buffers()}
    seen: set[int] = set()
    current = ["other"]
    rows: dict[str, dict[str, float]] = {}

    def row(name: str) -> dict[str, float]:
        return rows.setdefault(name, {"saved_gib": 0.0, "input_gib": 0.0, "tflop": 0.0})

    def pack(t: torch.Tensor):
        sid = t.untyped_storage()._cdata
        if sid not in params and sid not in seen:
            seen.add(sid)
            row(current[0])["saved_gib"] += t.untyped_storage().nbytes() / GIB
        return t

    h = size // cfg.latent_scale
    z = torch.zeros(1, cfg.in_channels, frames, h, h, device="meta", requires_grad=True)
    ctx = torch.zeros(1, frames, cfg.cross_attention_dim, device="meta", dtype=dt)
    pose = torch.zeros(1, cfg.block_out_channels[0], frames, h, h, device="meta", dtype=dt)
    app = [torch.zeros(1, c, frames, hh, ww, device="meta", dtype=dt)
           for c, hh, ww in cfg.feature_shapes(size, size)["appearance"]]
    with FlopCounterMode(display=False) as counter:
        blocks = {f"down{i}": b for i, b in enumerate(unet.down_blocks)}
        blocks.update({f"up{i}": b for i, b in enumerate(unet.up_blocks)})
        for prefix, block in blocks.items():
            block._layer = _attributed(block._layer, lambda i, p=prefix: f"{p}.layer{i}", row, current, counter)
        unet.mid_block._mid = _attributed(unet.mid_block._mid, lambda x: "mid", row, current, counter)
        global _SDPA
        _SDPA = sdpa = torch.nn.functional.scaled_dot_product_attention
        torch.nn.functional.scaled_dot_product_attention = _flash_like_attention().apply
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                unet.forward_with_features(z, 500, ctx, pose, app, LEVELS, grad_through_sample=False)
        finally:
            torch.nn.functional.scaled_dot_product_attention = sdpa
            for block in (*blocks.values(), unet.mid_block):
                block.__dict__.pop("_layer", None)
                block.__dict__.pop("_mid", None)
    total_saved = sum(r["saved_gib"] for r in rows.values())
    return {"config": config, "frames": frames, "size": size, "dtype": dtype, "saved_gib": total_saved,
            "layers": rows}


def _flash_like_attention():
    import torch

    class FlashLikeAttention(torch.autograd.Function):
        """What flash / cuDNN attention keeps for its backward (q, k, v, output, log-sum-exp) instead of
        the (N x N) probabilities the meta device's math path would save; same forward FLOPs."""

        @staticmethod
        def forward(ctx, q, k, v):
            with torch.no_grad():
                out = _SDPA(q, k, v)
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, _, _ = ctx.saved_tensors
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    return FlashLikeAttention


def _attributed(fn, name_of, row, current, counter):
    """`fn` (a block's _layer(i, x, ...) or _mid(x, ...)) attributing what it saves and computes to
    name_of(first argument), and its input size to that name."""
    def run(first, *args, **kw):
        name = name_of(first)
        x = args[0] if isinstance(first, int) else first
        prev, current[0] = current[0], name
        before = counter.get_total_flops()
        row(name)["input_gib"] += x.untyped_storage().nbytes() / GIB
        try:
            return fn(first, *args, **kw)
        finally:
            row(name)["tflop"] += (counter.get_total_flops() - before) / 1e12
            current[0] = prev
    return run


def plan_for_budget(profile: dict[str, Any], reduce_gib: float) -> dict[str, Any]:
    """Layers to checkpoint so that the saved activations drop by `reduce_gib`, fewest recompute FLOPs
    first (greedy by GiB freed per TFLOP recomputed)."""
    gains = []
    for name, r in profile["layers"].items():
        freed = r["saved_gib"] - r["input_gib"]
        if name != "other" and freed > 0 and r["tflop"] > 0:
            gains.append((freed / r["tflop"], name, freed, r["tflop"]))
    chosen, freed_total, recompute = [], 0.0, 0.0
    for _, name, freed, tflop in sorted(gains, reverse=True):
        if freed_total >= reduce_gib:
            break
        chosen.append(name)
        freed_total += freed
        recompute += tflop
    return {"checkpoint_layers": chosen, "freed_gib": freed_total,
            "recompute_tflop_per_guidance_pass": recompute, "enough": freed_total >= reduce_gib}


def add_arguments(p) -> None:
    """Arguments of `bench activations` (wired by mf_backend/bench/cli.py)."""
    p.add_argument("--config", default="official", help="model config: official, demo, tiny")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--reduce-gib", type=float, default=None,
                   help="also print the cheapest layer set whose checkpointing frees this many GiB")


def run(a) -> int:
    prof = grad_pass_profile(a.config, a.frames, a.size, a.dtype)
    if a.reduce_gib is not None:
        prof["plan"] = plan_for_budget(prof, a.reduce_gib)
    prof["saved_gib"] = round(prof["saved_gib"], 2)
    prof["layers"] = {k: {kk: round(vv, 3) for kk, vv in r.items()} for k, r in prof["layers"].items()}
    print(json.dumps(prof), file=sys.stdout, flush=True)
    return 0
