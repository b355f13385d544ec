"""Training of the diffusion model (stage 1 on single frames, stage 2 on clips) and of the small VAE
and CLIP image encoder of the demo model. `python -m mf_backend train ...` (see docs/training.md)."""
