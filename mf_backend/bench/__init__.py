"""Benchmarks, one module each, all run as `python -m mf_backend bench <action>` (see `bench/cli.py`):
quality, speed (FLOPs in `flops`), forward, graphs, crop; `inputs` makes their random edit inputs."""
