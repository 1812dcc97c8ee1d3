"""Hand masks from DWPose keypoints: the "IPA Hand Mask from Pose" node (math in ``ipa_train.pose.hands``)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..ipa_train.pose.hands import RESIZE_MODES, SHAPES, hand_boxes, hand_mask_preview, pose_to_hand_masks, resize_frames
from .previews import looping_previews

PoseKeypoint = io.Custom("POSE_KEYPOINT")


class IPAHandMaskFromPose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IPAHandMaskFromPose",
            display_name="IPA Hand Mask from Pose",
            category="IPA/hands",
            description=(
                "Pixel hand masks from POSE_KEYPOINT (DWPose): a grown box or convex hull around each hand's "
                "confident points, united over both hands and all people. Frames without hands give empty masks. "
                "Shows the masks over the frames as a looping clip."
            ),
            is_output_node=True,  # its looping preview is a check worth seeing even when the mask feeds nothing
            inputs=[
                PoseKeypoint.Input("pose_keypoint", tooltip="POSE_KEYPOINT from a DWPose preprocessor: one entry per frame."),
                io.Int.Input("width", default=832, min=8, max=8192, step=8, tooltip="Mask width: the width the video is generated at."),
                io.Int.Input("height", default=480, min=8, max=8192, step=8, tooltip="Mask height: the height the video is generated at."),
                io.Float.Input("threshold", default=0.3, min=0.0, max=1.0, step=0.01, tooltip="Minimum keypoint confidence."),
                io.Float.Input("margin", default=0.25, min=0.0, max=4.0, step=0.05, tooltip="Growth on every side, as a fraction of the hand's size."),
                io.Combo.Input("shape", options=list(SHAPES), default="box", tooltip="Cover each hand with its box or its convex hull."),
                io.Combo.Input(
                    "resize",
                    options=list(RESIZE_MODES),
                    default="crop",
                    tooltip="How the pose canvas maps to width x height; match how your frames are resized. "
                    "crop = centre crop then scale (what WanVaceToVideo does to control video), stretch = scale "
                    "each axis, letterbox = uniform scale with padding.",
                ),
                io.Int.Input("min_points", default=3, min=1, max=21, optional=True, tooltip="Confident points a hand needs."),
                io.Image.Input("frames", optional=True, tooltip="Optional frames to draw the preview over (one per pose frame)."),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="Pixel hand masks [frames, height, width], 1 on the hands."),
                io.Image.Output(display_name="preview", tooltip="The masks tinted and the hand boxes outlined over the frames."),
            ],
        )

    @classmethod
    def execute(cls, pose_keypoint, width, height, threshold, margin, shape, resize, min_points=3, frames=None) -> io.NodeOutput:
        poses = [pose_keypoint] if isinstance(pose_keypoint, dict) else list(pose_keypoint or [])
        if not poses:
            raise ValueError("IPA Hand Mask from Pose: the POSE_KEYPOINT input holds no frames.")
        if frames is not None and frames.shape[0] != len(poses):
            raise ValueError(
                f"IPA Hand Mask from Pose: {frames.shape[0]} frames but {len(poses)} pose frames; connect the frames "
                "the poses were detected on (same count), or leave 'frames' empty."
            )
        options = dict(threshold=threshold, min_points=min_points, margin=margin, resize=resize)
        masks = pose_to_hand_masks(poses, width, height, shape=shape, **options)
        boxes = hand_boxes(poses, width, height, **options)
        if frames is not None:
            frames = resize_frames(frames, width, height, resize)
        preview = hand_mask_preview(masks, frames, boxes)
        return io.NodeOutput(masks, preview, ui=looping_previews([preview], fps=16.0, prefix="ipa_hand_mask"))


NODES = [IPAHandMaskFromPose]
