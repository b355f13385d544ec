"""What this backend can do here: device, dtype, weights, capabilities (for `initialize` and `doctor`)."""

from __future__ import annotations

import importlib.util
import platform
import sys
from typing import Any, Optional

from mf_backend.weights import weights_report


MMAP_THRESHOLD = 4 << 20  # bytes: glibc gives blocks this large their own mapping


def limit_heap_fragmentation() -> bool:
    """Fix glibc's mmap threshold (Linux): full-resolution frames and masks (6-8 MB each at 1080p) then
    get their own mappings, returned to the system when freed. Left dynamic, glibc raises the threshold
    after the first such block is freed and serves the next ones from the heap, which fragments: the
    peak RSS of a 120-frame 1080p edit grew by 240 MB (`bench host-memory`). Returns whether it was set."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return False
    M_MMAP_THRESHOLD = -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from mf_backend.errors import InvalidParams

        raise InvalidParams("device 'cuda' requested but no CUDA GPU is visible to torch",
                            "use device 'cpu' or 'auto', or reinstall with `python install.py --torch cuda`")
    return device


def resolve_dtype(precision: str, device: str):
    import torch

    if precision == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def backend_info(models_dir: Optional[str] = None, device: str = "auto", precision: str = "auto") -> dict[str, Any]:
    import torch

    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    gpu = torch.cuda.get_device_name(0) if dev == "cuda" else None
    return {
        "device": dev,
        "dtype": str(dtype).replace("torch.", ""),
        "gpu": gpu,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "weights": weights_report(models_dir),
        "capabilities": {
            "pose_extractors": [n for n, m in (("mediapipe", "mediapipe"), ("dwpose", "controlnet_aux")) if _has(m)] + ["decode"],
            "guidance_terms": ["fg", "over", "body", "com"],
            "guidance_semantics": ["code", "paper"],
            "camera_mode": True,
            "max_window": 32,
            "timing_policies": ["trim", "loop", "hold-last", "stretch"],
            "crop_modes": ["person", "letterbox"],
        },
    }
