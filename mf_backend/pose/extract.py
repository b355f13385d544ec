"""Keypoint extraction from video frames: mediapipe BlazePose (offline default) or DWPose (ONNX).

Frames come a chunk at a time (mf_backend/frames.py): only keypoints are kept for the whole clip.

Both return a temporally filtered `PoseSequence` of ONE person, the protagonist: the largest, most central person in the
first frame, then followed over time (nearest to its previous position). BlazePose in video mode
tracks a single person itself; DWPose detects everyone per frame and `track_protagonist` chooses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from mf_backend.errors import BadInputMedia, WeightsMissing
from mf_backend.frames import Frames
from mf_backend.pose.keypoints import NUM_BODY, NUM_HAND, PoseSequence
from mf_backend.pose.smooth import POSE_SIGMA, smooth_poses

MIN_CONFIDENCE = 0.3  # below this a joint counts as missing (DWPose's drawing threshold)

# BlazePose landmark index for each OpenPose-18 joint (neck = mid-shoulders, computed).
_BLAZE_TO_OPENPOSE = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28,
                      11: 23, 12: 25, 13: 27, 14: 5, 15: 2, 16: 8, 17: 7}

DWPOSE_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")


def blazepose_to_openpose(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """BlazePose landmarks (F,33,4) = (x, y, z, visibility) normalised → OpenPose-18 body (F,18,3) pixels."""
    body = np.zeros((len(landmarks), NUM_BODY, 3), np.float32)
    for op, bp in _BLAZE_TO_OPENPOSE.items():
        body[:, op, 0] = landmarks[:, bp, 0] * width
        body[:, op, 1] = landmarks[:, bp, 1] * height
        body[:, op, 2] = landmarks[:, bp, 3]
    body[:, 1, :2] = (body[:, 2, :2] + body[:, 5, :2]) / 2
    body[:, 1, 2] = np.minimum(body[:, 2, 2], body[:, 5, 2])
    inside = ((body[..., 0] >= 0) & (body[..., 0] < width) & (body[..., 1] >= 0) & (body[..., 1] < height))
    low = (body[..., 2] < MIN_CONFIDENCE) | ~inside
    body[low] = 0.0
    return body


def blazepose_chunks(frames: Frames | np.ndarray, segmentation: bool = False, ctx=None, stage: str = "poses",
                     smooth_landmarks: bool = False) -> Iterator[tuple[int, np.ndarray, Optional[np.ndarray], np.ndarray]]:
    """BlazePose in video mode over a clip a chunk at a time (one tracker: it follows one person across
    chunks; smooths its segmentation over time, not its landmarks).

    Yields (a, landmarks float32 (k,33,4) = normalised (x, y, z, visibility), zero where no person;
    person segmentation float32 (k,H,W) in [0,1] of that same person, or None; the uint8 RGB frames
    a..a+k-1 (k,H,W,3) it looked at, so a caller can use them without reading them again).
    """
    try:
        from mediapipe.python.solutions import pose as mp_pose
    except ImportError as exc:
        raise WeightsMissing("mediapipe (BlazePose) is not installed",
                             "install it with `pip install mediapipe==0.10.21`, or pass --pose-extractor dwpose "
                             "with DWPose weights, or give pose renders as the driving clip") from exc
    frames = Frames.of(frames)
    try:
        # Landmarks unfiltered: mediapipe's filter lags fast limbs like a One-Euro filter does (docs/masks.md:
        # M_e 0.843 → 0.860 on the dev cases, joints nearer the DWPose renders); video mode still tracks one person.
        tracker = mp_pose.Pose(static_image_mode=False, model_complexity=1, smooth_landmarks=smooth_landmarks,
                               enable_segmentation=segmentation, smooth_segmentation=segmentation,
                               min_detection_confidence=0.5, min_tracking_confidence=0.5)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        raise WeightsMissing(f"BlazePose model (model_complexity=1) could not be loaded: {exc}",
                             "reinstall mediapipe==0.10.21, whose wheel bundles pose_landmark_full.tflite") from exc
    with tracker:
        for a, rgb in frames.chunks():
            landmarks = np.zeros((len(rgb), 33, 4), np.float32)
            seg = np.zeros(rgb.shape[:3], np.float32) if segmentation else None
            for i in range(len(rgb)):  # the graph takes one image at a time
                if ctx is not None:
                    ctx.progress(stage, a + i, len(frames), "BlazePose")
                # a copy: mediapipe's graph keeps its last input alive (until the garbage collector breaks its
                # reference cycles), and a view would keep the whole chunk
                result = tracker.process(rgb[i].copy())
                if result.pose_landmarks is not None:
                    landmarks[i] = [(p.x, p.y, p.z, p.visibility) for p in result.pose_landmarks.landmark]
                    if seg is not None and result.segmentation_mask is not None:
                        seg[i] = result.segmentation_mask
            yield a, landmarks, seg, rgb


def blazepose_track(frames: Frames | np.ndarray, segmentation: bool = False, ctx=None, stage: str = "poses",
                    smooth_landmarks: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """`blazepose_chunks` put together: (landmarks (F,33,4), segmentation (F,H,W) or None). The whole
    clip's segmentation is held: for short clips and evaluation; the jobs take the chunks."""
    parts = list(blazepose_chunks(frames, segmentation, ctx, stage, smooth_landmarks))
    landmarks = np.concatenate([p[1] for p in parts])
    return landmarks, np.concatenate([p[2] for p in parts]) if segmentation else None


def extract_mediapipe(frames: Frames | np.ndarray, fps: Optional[float] = None, ctx=None,
                      smooth_landmarks: bool = False, sigma: float = POSE_SIGMA) -> PoseSequence:
    """frames (F,H,W,3) uint8 RGB → PoseSequence (body only: BlazePose has no 21-point hands); sigma: the
    centred smoothing over frames (0: none; `bench poses --jitter` compares)."""
    frames = Frames.of(frames)
    landmarks = np.concatenate([lm for _, lm, _, _ in blazepose_chunks(frames, ctx=ctx,
                                                                       smooth_landmarks=smooth_landmarks)])
    # mediapipe's own landmark filter is off: causal, it lagged fast limbs (docs/masks.md); smooth_poses
    # smooths the whole clip centred instead.
    body = blazepose_to_openpose(landmarks, frames.width, frames.height)
    hands = np.zeros((frames.num_frames, 2, NUM_HAND, 3), np.float32)
    return smooth_poses(PoseSequence(body, hands, frames.width, frames.height, fps), sigma)


def dwpose_available(models_dir: Optional[str | Path]) -> bool:
    return models_dir is not None and all((Path(models_dir) / "DWPose" / n).is_file() for n in DWPOSE_FILES)


def extract_dwpose(frames: Frames | np.ndarray, models_dir: str | Path, fps: Optional[float] = None,
                   ctx=None) -> PoseSequence:
    """DWPose whole-body (via controlnet-aux's ONNX `Wholebody`) → protagonist's body + hands."""
    folder = Path(models_dir) / "DWPose"
    if not dwpose_available(models_dir):
        raise WeightsMissing(f"DWPose weights not found in '{folder}'",
                             f"put {' and '.join(DWPOSE_FILES)} in {folder} (from the reference pretrained_weights/DWPose)")
    try:
        from controlnet_aux.dwpose.wholebody import Wholebody
    except ImportError as exc:
        raise WeightsMissing("DWPose needs the controlnet-aux package (and onnxruntime)",
                             "pip install controlnet-aux onnxruntime, or use --pose-extractor mediapipe") from exc
    model = Wholebody(str(folder / DWPOSE_FILES[0]), str(folder / DWPOSE_FILES[1]))
    frames = Frames.of(frames)
    f_count, height, width = frames.num_frames, frames.height, frames.width
    people: list[np.ndarray] = []  # per frame (N,134,3) in OpenPose order with neck, pixels
    for a, rgb in frames.chunks():
        for i, image in enumerate(rgb):
            if ctx is not None:
                ctx.progress("poses", a + i, f_count, "DWPose")
            kp, scores = model(np.ascontiguousarray(image[:, :, ::-1]))  # BGR in
            kp, scores = np.asarray(kp, np.float32), np.asarray(scores, np.float32)
            people.append(np.concatenate([kp, scores[..., None]], -1) if len(kp) else np.zeros((0, 134, 3), np.float32))
    chosen = track_protagonist([p[:, :NUM_BODY] for p in people], width, height)
    body = np.zeros((f_count, NUM_BODY, 3), np.float32)
    hands = np.zeros((f_count, 2, NUM_HAND, 3), np.float32)
    for f, i in enumerate(chosen):
        if i < 0:
            continue
        p = people[f][i]
        body[f] = p[:NUM_BODY]
        hands[f, 0], hands[f, 1] = p[113:134], p[92:113]  # COCO-WholeBody: left hand first; ours: right first
    for pts in (body, hands):
        pts[pts[..., 2] < MIN_CONFIDENCE] = 0.0
    return smooth_poses(PoseSequence(body, hands, width, height, fps))  # per-frame detections jitter


def track_protagonist(candidates: list[np.ndarray], width: int, height: int) -> list[int]:
    """Per frame, the index of the protagonist among (N,18,3) candidates (-1 when none).

    First frame with people: largest bounding box weighted by closeness to the image centre; later
    frames: the candidate whose visible joints are nearest to the last chosen pose (relative to its
    size), which keeps the same person when others walk through.
    """
    chosen, last = [], None
    diag = float(np.hypot(width, height))
    for cands in candidates:
        if len(cands) == 0:
            chosen.append(-1)
            continue
        scores = []
        for c in cands:
            vis = c[:, 2] > MIN_CONFIDENCE
            if vis.sum() < 2:
                scores.append(-np.inf)
                continue
            xy = c[vis, :2]
            size = float(np.hypot(*(xy.max(0) - xy.min(0))))
            if last is None:
                centre = np.array([width / 2, height / 2])
                off = np.linalg.norm(xy.mean(0) - centre) / diag
                scores.append(size / diag * (1.0 - off))
            else:
                both = vis & (last[:, 2] > MIN_CONFIDENCE)
                if not both.any():
                    scores.append(-np.inf)
                    continue
                d = np.linalg.norm(c[both, :2] - last[both, :2], axis=-1).mean()
                scores.append(-d / max(size, 1.0))
        i = int(np.argmax(scores))
        if not np.isfinite(scores[i]):
            chosen.append(-1)
            continue
        chosen.append(i)
        last = cands[i]
    return chosen


def extract_poses(frames: Frames | np.ndarray, extractor: str = "auto", models_dir: Optional[str | Path] = None,
                  fps: Optional[float] = None, ctx=None) -> PoseSequence:
    """Dispatch on `extractor` ("auto": DWPose when its weights exist, else BlazePose; "decode": the
    frames are pose renders already)."""
    if extractor == "decode":
        from mf_backend.pose.decode import decode_poses

        return decode_poses(frames, fps, ctx)
    if extractor == "dwpose" or (extractor == "auto" and dwpose_available(models_dir)):
        if extractor == "auto":
            try:
                return extract_dwpose(frames, models_dir, fps, ctx)
            except WeightsMissing:
                pass  # controlnet-aux missing: fall back to the offline default
        else:
            return extract_dwpose(frames, models_dir, fps, ctx)
    if extractor in ("auto", "mediapipe"):
        return extract_mediapipe(frames, fps, ctx)
    raise BadInputMedia(f"unknown pose extractor {extractor!r}", "use auto, mediapipe, dwpose or decode")
