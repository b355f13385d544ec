"""torch.compile for the UNet3D, region by region.

Compiling the whole official UNet as one graph did not finish within 5.5 minutes on an H100 (one huge
graph per pass kind: reconstruction, CFG, grad-enabled guidance pass, re-noise). The UNet is built from
three kinds of layers that repeat with few distinct shapes, so `scope="blocks"` compiles those layers
one by one instead ("regional compilation"): every ResnetBlock, spatial BasicTransformerBlock and
motion-module TemporalTransformer gets its own small graph, identical layers share compiled code, and
the glue between layers (skips, windows, feature taps, checkpointing) stays eager Python. GroupNorm +
SiLU, the residual adds, the GEGLU gate, LayerNorms and the fold/unfold transposes are fused by
Inductor inside each region.

    unet = compile_unet(unet, scope="blocks")   # in place; same module, same state dict
    unet = compile_unet(unet, scope="full")     # in place: forward, features, forward_with_features compiled whole

Calls that carry an attention hook (camera-mode K/V injection: a new closure every step) run the eager
code, so they never trigger recompilation.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from mf_backend.params import COMPILE_SCOPES

log = logging.getLogger(__name__)

# distinct (layer, shape, batch, grad mode) combinations of one edit; the default limit of 8 per code
# object would send most layers back to eager after the first few shapes
CACHE_SIZE_LIMIT = 256
DEFAULT_BACKEND = "inductor"
FULL_METHODS = ("forward", "features", "forward_with_features")  # the UNet's three pass kinds


def _regions() -> tuple[type, ...]:
    from mf_backend.models.attention import BasicTransformerBlock, TemporalTransformer
    from mf_backend.models.blocks import ResnetBlock

    return ResnetBlock, BasicTransformerBlock, TemporalTransformer


def _compile_region(module: nn.Module, **kwargs) -> None:
    """Replace module.forward by a compiled one; a call with a hook argument takes the eager path."""
    eager = module.forward
    compiled = torch.compile(eager, **kwargs)

    def forward(*args, **kw):
        if kw.get("hook") is not None or (len(args) > 2 and args[2] is not None):  # (x, context, hook)
            return eager(*args, **kw)
        return compiled(*args, **kw)

    module.forward = forward
    module._mf_eager_forward = eager


def compile_unet(unet: nn.Module, scope: str = "blocks", mode: Optional[str] = None,
                 backend: Optional[str] = None) -> nn.Module:
    """Compile `unet` with the given scope (COMPILE_SCOPES); returns the module to call."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope must be one of {COMPILE_SCOPES}, got {scope!r}")
    if scope == "none":
        return unet
    import torch._dynamo as dynamo

    dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, CACHE_SIZE_LIMIT)
    dynamo.config.accumulated_cache_size_limit = max(dynamo.config.accumulated_cache_size_limit,
                                                     4 * CACHE_SIZE_LIMIT)
    backend = backend or DEFAULT_BACKEND
    kwargs = dict(mode=None if mode in (None, "default") else mode, backend=backend, dynamic=False)
    if scope == "full":  # each pass kind (forward, features, forward_with_features) compiled whole
        eager = {name: getattr(unet, name) for name in FULL_METHODS}
        for name, method in eager.items():
            setattr(unet, name, torch.compile(method, **kwargs))
        unet._mf_eager_methods = eager
        return unet
    n = 0
    for m in unet.modules():
        if isinstance(m, _regions()) and not hasattr(m, "_mf_eager_forward"):
            _compile_region(m, **kwargs)
            n += 1
    log.info("torch.compile: %d UNet layers compiled one by one (backend %s)", n, backend)
    return unet


def uncompile_unet(unet: nn.Module) -> nn.Module:
    """Undo compile_unet (either scope); returns the eager module."""
    for name in unet.__dict__.pop("_mf_eager_methods", {}):
        delattr(unet, name)  # the class's methods again
    for m in unet.modules():
        eager = m.__dict__.pop("_mf_eager_forward", None)
        if eager is not None:
            del m.forward  # the class's forward again
    return unet
