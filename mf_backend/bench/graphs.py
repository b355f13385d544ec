"""`bench graphs`: how many graphs torch.compile builds for one whole edit (and how many graph breaks).

    python -m mf_backend bench graphs --config official --scope blocks     # docs/performance.md

Capture only (the `aot_eager` backend generates no code), so it runs on a CPU in minutes even for the
official architecture; the count does not depend on the size.
"""

from __future__ import annotations

import argparse
import json
import time

from mf_backend.params import COMPILE_SCOPES


def count_graphs(config: str = "official", scope: str = "blocks", frames: int = 2, size: int = 64,
                 steps: int = 3) -> dict:
    """Graphs torch.compile builds for one whole edit (capture only: the `aot_eager` backend generates no
    code, so this runs on a CPU in minutes even for the official architecture; the count does not depend
    on the size)."""
    import torch._dynamo as dynamo

    from mf_backend.bench.inputs import random_inputs
    from mf_backend.editing.pipeline import run_sampling
    from mf_backend.models.compile import compile_unet
    from mf_backend.models.loading import build_models
    from mf_backend.params import JobParams

    models = build_models(config, 0).eval()
    dynamo.reset()
    dynamo.utils.counters.clear()
    t0 = time.perf_counter()
    models.unet = compile_unet(models.unet, scope, backend="aot_eager")  # compiled here, so the job says "none"
    run_sampling(models, random_inputs(frames, size, 0), JobParams(steps=steps, size=size))
    return {"config": config, "scope": scope, "unique_graphs": int(dynamo.utils.counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(dynamo.utils.counters["graph_break"].values())),
            "seconds": round(time.perf_counter() - t0, 1)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="official")
    p.add_argument("--scope", default="blocks", choices=[s for s in COMPILE_SCOPES if s != "none"])


def run(a: argparse.Namespace) -> int:
    print(json.dumps(count_graphs(a.config, a.scope)))
    return 0
