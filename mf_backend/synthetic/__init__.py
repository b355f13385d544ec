"""A procedural motion world with ground truth: people, dance-like motion, scenes, camera, edit pairs.

Public API (see pair.py): make_pair, make_clip, write_pair, preview_sheet, SyntheticPair, SyntheticClip.
"""

from mf_backend.synthetic.pair import (
    AlignedPoses,
    SyntheticClip,
    SyntheticPair,
    make_clip,
    make_pair,
    parse_size,
    preview_sheet,
    write_pair,
)

__all__ = ["AlignedPoses", "SyntheticClip", "SyntheticPair", "make_clip", "make_pair", "parse_size",
           "preview_sheet", "write_pair"]
