"""Score-guided editing (method.md §A, §B): `schedule` (DDIM + the reference step plan), `guidance`
(ConsistencyGuidance, the four terms), `sampler` (reconstruction + editing branches, camera mode),
`windows` (long clips); benchmarks live in mf_backend/bench. Submodules import torch; this one does not.
"""
