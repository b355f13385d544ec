"""`python -m mf_backend bench <action>`: every benchmark of the project, one module each in mf_backend/bench.

Each action lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`; this
module only wires them as sub-actions, so adding one is one line in ACTIONS. Torch is imported inside
the handlers.
"""

from __future__ import annotations

import argparse
import importlib

ACTIONS = {
    "quality": ("mf_backend.bench.quality", "ground-truth quality of edits of held-out synthetic pairs"),
    "speed": ("mf_backend.bench.speed", "frames/min, seconds per stage and peak memory of the full edit"),
    "forward": ("mf_backend.bench.forward", "one UNet3D forward (or guidance feature pass) on random weights"),
    "graphs": ("mf_backend.bench.graphs", "graphs and graph breaks torch.compile makes of one whole edit"),
    "poses": ("mf_backend.bench.poses", "pose alignment and rendering against the reference cases (+ extraction speed)"),
    "crop": ("mf_backend.bench.crop", "person-centred crop and composite back, per full-resolution frame"),
    "host-memory": ("mf_backend.bench.host_memory", "peak host memory (RSS) of a 1080p edit by clip length"),
    "activations": ("mf_backend.bench.activations", "what the guidance pass keeps for its backward, per UNet layer"),
    "flops": ("mf_backend.bench.flops", "FLOPs of the passes one edit runs, counted on the meta device (no GPU)"),
    "io": ("mf_backend.bench.io", "ms per 1080p frame to write and read each output format"),
    "merge": ("mf_backend.bench.merge", "ms per 1080p frame of merge-chunks (farm chunks put together), by format"),
    "scale": ("mf_backend.bench.scale", "one clip on N Ray workers: sync overhead per step, projection for N GPUs"),
}


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: " + ", ".join(ACTIONS))
    actions = p.add_subparsers(dest="action", required=True)
    for name, (module_name, helptext) in ACTIONS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that benchmark is not in this build
            raise
        if not (hasattr(module, "add_arguments") and hasattr(module, "run")):
            continue  # module present but not yet wired as an action
        a = actions.add_parser(name, help=helptext)
        module.add_arguments(a)
        a.set_defaults(func=module.run)
