"""How much GPU memory an edit needs, and the fastest checkpointing that fits the card (`checkpoint="auto"`).

The weights are already on the device when the plan is made, so only what the edit adds on top is
estimated: activations of the grad-enabled guidance pass (the largest item), the CFG pass, the
window's conditions and the VAE decode. These scale with the frames of one window times the latent
pixels, with the UNet's width and with the bytes per element; the constants per checkpoint preset
are the peaks measured on an H100 for the official config at 24 frames, 512², bf16, minus the 3.31
GiB of weights (docs/performance.md):

    checkpoint "none"   25.55 GiB peak  ->  22.24 GiB above the weights
    checkpoint "hires"  14.27 GiB       ->  10.96
    checkpoint "all"     9.50 GiB       ->   6.19   (decode 2 frames at a time)

The plan picks the first of none -> hires -> all whose estimate fits the free memory less a safety
margin; "all" also decodes 2 frames at a time and keeps CLIP and the VAE (0.73 GiB in bf16) on the
host while the UNet runs (sequential offload; the estimate does not count that saving). Estimates for other configs scale by width, so they
are rougher; on CPU there is nothing to plan (checkpointing only costs time there).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Iterator, Optional

import torch

log = logging.getLogger(__name__)

# blocks whose layers are checkpointed in grad-enabled passes; names: down0.., mid, up0..
CHECKPOINT_PRESETS = {
    "none": (),
    "all": ("down*", "mid", "up*"),
    "hires": ("down0", "down1", "up2"),  # the 64² and 32² levels hold most of the stored activations
    "down": ("down*", "mid"),
}


def checkpoint_blocks(unet: torch.nn.Module, spec: str) -> list[torch.nn.Module]:
    """The UNet blocks named by `spec` (a CHECKPOINT_PRESETS key or a comma list like "down0,up2")."""
    names = CHECKPOINT_PRESETS.get(spec, tuple(n.strip() for n in spec.split(",") if n.strip()))
    blocks = {f"down{i}": b for i, b in enumerate(unet.down_blocks)}
    blocks.update({f"up{i}": b for i, b in enumerate(unet.up_blocks)}, mid=unet.mid_block)
    out = []
    for n in names:
        if n.endswith("*"):
            out += [b for k, b in blocks.items() if k.startswith(n[:-1])]
        elif n in blocks:
            out.append(blocks[n])
        else:
            raise ValueError(f"unknown checkpoint block {n!r}: use {sorted(CHECKPOINT_PRESETS)} "
                             f"or a comma list of {sorted(blocks)}")
    return out


@contextlib.contextmanager
def checkpointing(unet: torch.nn.Module, spec: str) -> Iterator[None]:
    """Per-layer activation checkpointing of the named blocks while inside (grad-enabled passes only)."""
    blocks = checkpoint_blocks(unet, spec)
    before = [b.gradient_checkpointing for b in blocks]
    for b in blocks:
        b.gradient_checkpointing = True
    try:
        yield
    finally:
        for b, was in zip(blocks, before):
            b.gradient_checkpointing = was


GIB = 2 ** 30
REFERENCE_FRAMES, REFERENCE_LATENT_PIXELS, REFERENCE_WIDTH, REFERENCE_BYTES = 24, 64 * 64, 320, 2
# GiB above the weights at the reference point (official config, 24 frames, 512², bf16, H100)
MEASURED_GIB = {"none": 22.24, "hires": 10.96, "all": 6.19}
CAMERA_EXTRA = 0.05  # camera mode: the window's source K/V and the 2N-token injected attention (estimate)
ORDER = ("none", "hires", "all")  # fastest first


@dataclass
class MemoryPlan:
    checkpoint: str  # sampler checkpoint preset
    decode_batch: int  # VAE frames per call
    offload: bool = False  # sequential offload: CLIP and the VAE wait on the host while the UNet runs
    estimate_gib: Optional[float] = None  # estimated GiB above the weights; None when not planned
    free_gib: Optional[float] = None  # free device memory when planned
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_gib(checkpoint: str, config, frames: int, size: int, dtype: torch.dtype, camera: bool = False) -> float:
    """Estimated GiB the edit adds above the weights for one window of `frames` frames at `size`²."""
    lat = (size // config.latent_scale) ** 2
    scale = (frames / REFERENCE_FRAMES) * (lat / REFERENCE_LATENT_PIXELS) \
        * (config.block_out_channels[0] / REFERENCE_WIDTH) * (torch.finfo(dtype).bits / 8 / REFERENCE_BYTES)
    base = MEASURED_GIB.get(checkpoint, MEASURED_GIB["hires"])  # a custom block list: between the presets
    return base * scale * (1 + (CAMERA_EXTRA if camera else 0.0))


def plan_memory(config, frames: int, size: int, dtype: torch.dtype, free_bytes: int, total_bytes: int,
                camera: bool = False) -> MemoryPlan:
    """The fastest preset whose estimate fits `free_bytes` (less max(0.5 GiB, 5 % of the card))."""
    budget = free_bytes / GIB - max(0.5, 0.05 * total_bytes / GIB)
    for ck in ORDER:
        est = estimate_gib(ck, config, frames, size, dtype, camera)
        if est <= budget:
            return MemoryPlan(ck, 2 if ck == "all" else 8, ck == "all", round(est, 2), round(free_bytes / GIB, 2),
                              f"fits: about {est:.1f} GiB needed, {budget:.1f} GiB usable")
    est = estimate_gib("all", config, frames, size, dtype, camera)
    return MemoryPlan("all", 1, True, round(est, 2), round(free_bytes / GIB, 2),
                      f"may not fit: about {est:.1f} GiB needed, {budget:.1f} GiB usable; "
                      "use a shorter window, a smaller size, or close other GPU programs")


def resolve_memory_plan(checkpoint: str, config, frames: int, size: int, device: torch.device,
                        dtype: torch.dtype, camera: bool = False) -> MemoryPlan:
    """What an edit runs with (the job's `checkpoint`): "low-memory" -> "all", decode 2 frames at a time and
    offload on CUDA; another preset or block list as given; "auto" planned on CUDA."""
    if checkpoint == "low-memory":
        return MemoryPlan("all", 2, offload=torch.device(device).type == "cuda", reason="low-memory")
    if checkpoint != "auto":
        return MemoryPlan(checkpoint, 8, reason="as requested")
    if torch.device(device).type != "cuda":
        return MemoryPlan("none", 8, reason="not a CUDA device")
    free, total = torch.cuda.mem_get_info(torch.device(device))
    plan = plan_memory(config, frames, size, dtype, free, total, camera)
    (log.warning if plan.reason.startswith("may not") else log.info)(
        "memory plan: checkpoint=%s, decode %d frames at a time (%s)", plan.checkpoint, plan.decode_batch, plan.reason)
    return plan
