"""Benchmarks, one module each, all run as `python -m mf_backend bench <action>` (the list: `bench/cli.py`):
quality, speed (FLOPs: `flops`), forward, graphs, activations, host-memory, crop, poses, io, merge; `inputs` makes
their random edit inputs, `metrics` the image metrics."""
