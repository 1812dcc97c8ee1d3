"""DWPose nodes: pose keypoints and pose videos from frames, and pose videos from any POSE_KEYPOINT."""

from __future__ import annotations

import os
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import numpy as np
import torch
from comfy_api.v0_0_2 import io

from ..ipa_train.pose import dwpose
from ..ipa_train.pose import render as pose_render

WEIGHTS_FOLDER = "dwpose"
CONTROLNET_AUX_FOLDER = "comfyui_controlnet_aux"
# Where comfyui_controlnet_aux keeps these two files: ckpts/<Hugging Face repo>/<file>.
CONTROLNET_AUX_SUBDIRS = (("yzd-v", "DWPose"),)

PoseKeypoint = io.Custom("POSE_KEYPOINT")


def setup() -> None:
    """Registers ``models/dwpose`` for ``.onnx`` files, merging with entries from extra_model_paths.yaml."""
    default = os.path.join(folder_paths.models_dir, WEIGHTS_FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(WEIGHTS_FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[WEIGHTS_FOLDER] = (paths, set(extensions) | {".onnx"})


def weight_search_dirs() -> list[Path]:
    """models/dwpose (and its extra_model_paths.yaml entries), then comfyui_controlnet_aux's checkpoint folder."""
    if WEIGHTS_FOLDER not in folder_paths.folder_names_and_paths:
        setup()
    dirs = [Path(p) for p in folder_paths.get_folder_paths(WEIGHTS_FOLDER)]
    ckpt_roots = []
    if os.environ.get("AUX_ANNOTATOR_CKPTS_PATH"):  # set by comfyui_controlnet_aux from its config.yaml
        ckpt_roots.append(Path(os.environ["AUX_ANNOTATOR_CKPTS_PATH"]))
    for custom_nodes in folder_paths.get_folder_paths("custom_nodes"):
        try:
            entries = list(Path(custom_nodes).iterdir())
        except OSError:
            continue
        ckpt_roots += [e / "ckpts" for e in entries if e.name.lower() == CONTROLNET_AUX_FOLDER and e.is_dir()]
    for root in ckpt_roots:
        dirs += [root.joinpath(*sub) for sub in CONTROLNET_AUX_SUBDIRS]
    return list(dict.fromkeys(dirs))


_cached: dict = {}


def load_estimator() -> dwpose.DWPoseEstimator:
    """The estimator for the files found now; sessions are kept while the files stay the same."""
    det_path, pose_path = dwpose.find_weights(
        weight_search_dirs(), install_dir=os.path.join(folder_paths.models_dir, WEIGHTS_FOLDER)
    )
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (det_path, pose_path))
    if _cached.get("key") != key:
        _cached.clear()
        _cached["estimator"] = dwpose.DWPoseEstimator(det_path, pose_path)
        _cached["key"] = key
    return _cached["estimator"]


def _progress(total: int, node_id):
    bar = comfy.utils.ProgressBar(total, node_id=node_id)

    def on_frame(index: int) -> None:
        bar.update(1)  # with ComfyUI's hook installed this raises when the user cancels
        comfy.model_management.throw_exception_if_processing_interrupted()

    return on_frame


def _video_tensor(video: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(video).to(torch.float32).div_(255.0)


def _draw_inputs() -> list:
    return [
        io.Boolean.Input("draw_body", default=True, tooltip="Draw the body limbs in the pose video."),
        io.Boolean.Input("draw_hands", default=True, tooltip="Draw the hand bones in the pose video (what VACE follows for hands)."),
        io.Boolean.Input("draw_face", default=True, tooltip="Draw the face points in the pose video."),
        io.Int.Input(
            "resolution", default=0, min=0, max=16384, step=8,
            tooltip="Short side of the pose video in pixels; 0 keeps the frame (canvas) size.",
        ),
    ]


class IPADWPoseEstimator(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPADWPoseEstimator",
            display_name="IPA DWPose Estimator",
            category="IPA/pose",
            description=(
                "Whole-body pose (body, hands, face) per frame with DWPose, offline: put yolox_l.onnx and "
                "dw-ll_ucoco_384.onnx in models/dwpose. Keypoints keep their real scores."
            ),
            inputs=[
                io.Image.Input("frames", tooltip="The video as a batch of frames."),
                io.Float.Input("detection_threshold", default=0.3, min=0.01, max=1.0, step=0.01,
                               tooltip="Minimum person-detector score for a person to be kept."),
                io.Float.Input("keypoint_threshold", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="Keypoints scoring lower are written as [0, 0, 0] and not drawn."),
                *_draw_inputs(),
            ],
            outputs=[
                PoseKeypoint.Output(display_name="pose_keypoints",
                                    tooltip="POSE_KEYPOINT per frame (body, hands, face; real scores), for the hand mask."),
                io.Image.Output(display_name="pose_video", tooltip="The pose drawn per frame: the VACE control video."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, frames, detection_threshold, keypoint_threshold, draw_body, draw_hands, draw_face, resolution) -> io.NodeOutput:
        estimator = load_estimator()
        images = frames.detach().cpu().numpy()
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        step = _progress(len(images) * 2, node_id)  # estimation, then drawing, each frame a step
        keypoints = dwpose.estimate_video(estimator, images, detection_threshold, keypoint_threshold, on_frame=step)
        video = pose_render.render_pose_video(
            keypoints, resolution, body=draw_body, hands=draw_hands, face=draw_face,
            threshold=keypoint_threshold, on_frame=step,
        )
        return io.NodeOutput(keypoints, _video_tensor(video))


class IPARenderPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPARenderPose",
            display_name="IPA Render Pose",
            category="IPA/pose",
            description="Pose video (OpenPose colours, hands and face) from any POSE_KEYPOINT, e.g. edited or from another pack.",
            inputs=[
                PoseKeypoint.Input("pose_keypoints", tooltip="Any POSE_KEYPOINT (this pack's, DWPose preprocessor's, edited)."),
                io.Float.Input("keypoint_threshold", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="Points scoring lower are not drawn (other packs write 1 or 0)."),
                *_draw_inputs(),
            ],
            outputs=[io.Image.Output(display_name="pose_video", tooltip="The pose drawn per frame: a VACE control video.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, pose_keypoints, keypoint_threshold, draw_body, draw_hands, draw_face, resolution) -> io.NodeOutput:
        frames = pose_render.normalize_pose_keypoint(pose_keypoints)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        video = pose_render.render_pose_video(
            frames, resolution, body=draw_body, hands=draw_hands, face=draw_face,
            threshold=keypoint_threshold, on_frame=_progress(len(frames), node_id),
        )
        return io.NodeOutput(_video_tensor(video))


NODES = [IPADWPoseEstimator, IPARenderPose]
