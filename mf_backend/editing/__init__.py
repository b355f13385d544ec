"""Score-guided editing (method.md §A, §B): `pipeline` (sampling on prepared inputs: the sampler's set-up,
memory plan, decode), `schedule` (DDIM + the reference step plan), `guidance` (ConsistencyGuidance, the
four terms), `sampler` (reconstruction + editing branches, camera mode), `windows` (long clips), `noise`,
`memory`; benchmarks live in mf_backend/bench. Submodules import torch; this one does not.
"""
