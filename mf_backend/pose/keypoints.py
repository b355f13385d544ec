"""Keypoint format shared by every pose module: OpenPose-18 body (DWPose order) plus 21-point hands.

Coordinates are in PIXELS of the frame the poses belong to; confidence 0 marks a missing joint.
One `PoseSequence` per clip, stored as one JSON file next to the rendered pose folders.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mf_backend.errors import BadInputMedia

BODY_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
NUM_BODY = 18
NUM_HAND = 21
RIGHT_HAND, LEFT_HAND = 0, 1

# The 17 limbs DWPose draws (0-based joint pairs); limb i is drawn in BODY_COLORS[i] at 60%.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)

# OpenPose colour list as DWPose's code writes it. The reference renders store these channel-reversed
# (the canvas went through a BGR/RGB swap), see `render.py`.
BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)

# Kinematic tree of the body used by the aligner: (parent, child), parents before children.
BODY_TREE = (
    (1, 0), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (0, 14), (14, 16), (0, 15), (15, 17),
)
HAND_TREE = HAND_EDGES  # parents come first in HAND_EDGES already


@dataclass
class PoseSequence:
    """Poses of one person over a clip.

    body:  float32 (F,18,3)    (x, y, confidence) in pixels; confidence 0 = missing.
    hands: float32 (F,2,21,3)  0 = right hand, 1 = left hand; zeros when absent.
    """

    body: np.ndarray
    hands: np.ndarray
    width: int
    height: int
    fps: Optional[float] = None

    def __post_init__(self) -> None:
        self.body = np.asarray(self.body, dtype=np.float32)
        self.hands = np.asarray(self.hands, dtype=np.float32)
        if self.body.ndim != 3 or self.body.shape[1:] != (NUM_BODY, 3):
            raise ValueError(f"body must be (F,18,3), got {self.body.shape}")
        if self.hands.shape != (len(self.body), 2, NUM_HAND, 3):
            raise ValueError(f"hands must be (F,2,21,3) with F={len(self.body)}, got {self.hands.shape}")
        self.width, self.height = int(self.width), int(self.height)

    def __len__(self) -> int:
        return len(self.body)

    @classmethod
    def empty(cls, frames: int, width: int, height: int, fps: Optional[float] = None) -> "PoseSequence":
        return cls(np.zeros((frames, NUM_BODY, 3), np.float32), np.zeros((frames, 2, NUM_HAND, 3), np.float32),
                   width, height, fps)

    def copy(self) -> "PoseSequence":
        return PoseSequence(self.body.copy(), self.hands.copy(), self.width, self.height, self.fps)

    def scaled(self, width: int, height: int) -> "PoseSequence":
        """The same poses in the pixel frame of a (height, width) image (missing joints stay zero)."""
        sx, sy = width / self.width, height / self.height
        scale = np.array([sx, sy, 1.0], np.float32)
        return PoseSequence(self.body * scale, self.hands * scale, width, height, self.fps)

    def frames(self, index: Any) -> "PoseSequence":
        """A sub-sequence (slice or index array) of frames."""
        body, hands = self.body[index], self.hands[index]
        if body.ndim == 2:
            body, hands = body[None], hands[None]
        return PoseSequence(body, hands, self.width, self.height, self.fps)

    # --- JSON -------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": "openpose18+hands21",
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "body_names": list(BODY_NAMES),
            "body": np.round(self.body, 3).tolist(),
            "hands": np.round(self.hands, 3).tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PoseSequence":
        try:
            body = np.asarray(d["body"], np.float32).reshape(-1, NUM_BODY, 3)
            hands = d.get("hands")
            hands = (np.zeros((len(body), 2, NUM_HAND, 3), np.float32) if hands is None
                     else np.asarray(hands, np.float32).reshape(len(body), 2, NUM_HAND, 3))
            return cls(body, hands, int(d["width"]), int(d["height"]), d.get("fps"))
        except (KeyError, ValueError, TypeError) as exc:
            raise BadInputMedia(f"not a keypoint JSON of this project: {exc}",
                                "use a file written by `prepare` (e.g. source_keypoints.json)") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path) -> "PoseSequence":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInputMedia(f"cannot read keypoints '{path}': {exc}", "check the file is a keypoint JSON") from exc
        return cls.from_json(d)


def body_size(body: np.ndarray) -> np.ndarray:
    """Per-frame body scale (F,) in pixels: neck→mid-hip length, falling back to shoulder width.

    Returns NaN where neither is visible.
    """
    def dist(a: int, b: int) -> np.ndarray:
        ok = (body[:, a, 2] > 0) & (body[:, b, 2] > 0)
        d = np.linalg.norm(body[:, a, :2] - body[:, b, :2], axis=-1)
        return np.where(ok, d, np.nan)

    with warnings.catch_warnings():  # all-NaN frames (no hips) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        torso = np.nanmean(np.stack([dist(1, 8), dist(1, 11)]), axis=0)
    shoulders = dist(2, 5) * 1.6  # typical torso/shoulder-width ratio of adults
    return np.where(np.isnan(torso), shoulders, torso)
