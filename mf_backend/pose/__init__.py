"""Poses: keypoint format, extraction (BlazePose / DWPose), DWPose-style rendering, decoding of renders,
alignment of the driver to the source body, and temporal smoothing."""

from mf_backend.pose.align import align_poses
from mf_backend.pose.decode import decode_pose, decode_poses
from mf_backend.pose.keypoints import BODY_NAMES, PoseSequence
from mf_backend.pose.render import render_pose, render_poses
from mf_backend.pose.smooth import smooth_poses

__all__ = ["PoseSequence", "BODY_NAMES", "render_pose", "render_poses", "decode_pose", "decode_poses",
           "align_poses", "smooth_poses"]
