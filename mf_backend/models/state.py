"""Weight files and state dicts: read safely, write as safetensors, load into a module.

    state = load_state_file(path)        # .safetensors, or torch.load(weights_only=True): no code runs
    save_state_file(state, path)         # safetensors
    model, report = load_into(factory, state, dtype, what, strict)   # built on the meta device

Used by `loading` (the model set) and `checkpoints` (the `weights` command).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Union

import torch
from torch import nn

from mf_backend.errors import WeightsMissing

log = logging.getLogger("mf_backend.models")


def load_state_file(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .pth / .bin / .pt / .ckpt file, never executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsMissing(f"weights file not found: {path}", "run `python -m mf_backend weights list` to see "
                             "which files go where")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsMissing(
            f"refused to load {path}: it is not a plain tensor checkpoint ({str(exc).splitlines()[0]})",
            "weight files are loaded without running any code they contain; re-download the file from its "
            "official source, or convert a trusted copy with `python -m mf_backend weights convert`",
        ) from None
    while isinstance(state, dict) and len(state) == 1 and next(iter(state)) in ("state_dict", "module", "model"):
        state = next(iter(state.values()))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMissing(f"{path} does not contain a state dict (name -> tensor)",
                             "check that this is the right file")
    return state


def save_state_file(state: dict[str, torch.Tensor], path: Union[str, Path]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(path))


def find_weights(stem: Path) -> Path:
    """`stem`.safetensors if present, else `stem`.pth/.bin; stem is a path without suffix."""
    for suffix in (".safetensors", ".pth", ".bin", ".pt", ".ckpt"):
        p = stem.with_name(stem.name + suffix)
        if p.is_file():
            return p
    raise WeightsMissing(f"missing weights: {stem}.pth (or .safetensors)",
                         f"put the file at {stem}.pth; `python -m mf_backend weights list` says where to get it")


# ----------------------------------------------------------------------------------------------
# state dict -> module (meta-device construction: no memory for random weights we overwrite)


def _init_missing(model: nn.Module, dtype: torch.dtype) -> None:
    """Materialise parameters still on the meta device (keys absent from every checkpoint) with the
    module's own initialisation; parameters already loaded are kept."""
    for module in model.modules():
        direct = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
        if not any(t.is_meta for t in direct.values()):
            continue
        keep = {n: t.data for n, t in direct.items() if not t.is_meta}
        module.to_empty(device="cpu", recurse=False)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        with torch.no_grad():
            for n, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                t.data = keep[n] if n in keep else t.data.to(dtype)


def load_into(model_factory, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str,
              strict: bool, seed: int = 42) -> tuple[nn.Module, dict[str, list[str]]]:
    """Build `model_factory()` on the meta device and fill it from `state` (cast to dtype). Missing keys
    get the module's initialisation (seeded) — an error if strict; unexpected keys are ignored — an
    error if strict. Shape mismatches always fail. Returns (model on CPU, report)."""
    with torch.device("meta"):
        model = model_factory()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}"
                  for k in state if k in expected and state[k].shape != expected[k].shape]
    report = {"missing": missing, "unexpected": unexpected}
    if mismatched or (strict and (missing or unexpected)):
        problems = mismatched + [f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected]
        raise WeightsMissing(f"{what}: {len(problems)} key/shape problems, e.g. " + "; ".join(problems[:5]),
                             "the file does not match this model structure; check that it is the right file "
                             "and the right config", {"problems": problems[:50]})
    # copy=True: fresh (aligned) memory, so results are bit-identical to the saved model's
    model.load_state_dict({k: v.to(dtype=dtype, copy=True) for k, v in state.items() if k in expected},
                          strict=False, assign=True)
    if missing:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _init_missing(model, dtype)
    for name, keys in report.items():
        if keys:
            log.warning("%s: %d %s keys (%s)%s", what, len(keys), name, _summarise(keys),
                        " — initialised randomly" if name == "missing" else " — ignored")
    return model, report


def _summarise(keys: list[str]) -> str:
    """Group keys by their top two name parts so a report of 600 keys stays readable."""
    groups: dict[str, int] = {}
    for k in keys:
        head = ".".join(k.split(".")[:2])
        groups[head] = groups.get(head, 0) + 1
    return ", ".join(f"{h}.* x{n}" for h, n in list(groups.items())[:12]) + (" ..." if len(groups) > 12 else "")
