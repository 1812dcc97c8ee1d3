"""The "IPA Hand Mask from Pose" node under a real ComfyUI (runs when COMFYUI_PATH is set)."""

from __future__ import annotations

import asyncio
import sys

import pytest
import torch

from conftest import REPO_ROOT, load_pack, requires_comfyui
from ipa_train.pose.synthetic import render_pose_frames, synthetic_pose_sequence

pytestmark = requires_comfyui


@pytest.fixture(scope="module")
def node():
    pack = load_pack()
    from importlib import import_module

    module = import_module(pack.__name__ + ".nodes.hand_mask")
    return module.IPAHandMaskFromPose


def comfy_nodes_module():
    """ComfyUI's own ``nodes`` module (its custom-node loader), imported on CPU when there is no GPU."""
    load_pack()  # puts COMFYUI_PATH on sys.path
    import comfy.cli_args

    if "comfy.model_management" not in sys.modules and not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # as `main.py --cpu`; otherwise ComfyUI asks CUDA for a device at import
    import nodes

    return nodes


def run(node_cls, poses, frames=None, **kwargs):
    options = dict(width=256, height=192, threshold=0.3, margin=0.25, shape="box", resize="crop")
    options.update(kwargs)
    out = node_cls.execute(poses, frames=frames, **options)
    return out.result


def test_comfyui_loader_registers_the_node():
    comfy_nodes = comfy_nodes_module()

    assert asyncio.run(comfy_nodes.load_custom_node(str(REPO_ROOT))) is True
    cls = comfy_nodes.NODE_CLASS_MAPPINGS["IPAHandMaskFromPose"]
    assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS["IPAHandMaskFromPose"] == "IPA Hand Mask from Pose"
    info = cls.GET_NODE_INFO_V1()  # what /object_info serves
    assert info["input"]["required"]["pose_keypoint"][0] == "POSE_KEYPOINT"
    assert info["input"]["required"]["shape"][1]["options"] == ["box", "hull"]
    assert "frames" in info["input"]["optional"]
    assert info["output"] == ["MASK", "IMAGE"]


def test_execute_on_synthetic_pose_keypoints(node):
    from ipa_train.pose.hands import pose_to_hand_masks

    poses = synthetic_pose_sequence(5, 320, 192, people=2, seed=3)
    mask, preview = run(node, poses)
    assert mask.shape == (5, 192, 256) and mask.dtype == torch.float32
    assert preview.shape == (5, 192, 256, 3) and 0 <= float(preview.min()) and float(preview.max()) <= 1
    assert torch.equal(mask, pose_to_hand_masks(poses, 256, 192, resize="crop"))
    assert bool((mask.flatten(1).amax(1) == 1).all())
    # Where there is no hand, the preview is the dark canvas; inside the mask it is tinted green.
    assert torch.allclose(preview[mask == 0][:100], torch.full((100, 3), 0.08))
    assert float(preview[mask == 1][..., 1].mean()) > 0.4
    hull, _ = run(node, poses, shape="hull")
    assert hull.sum() < mask.sum() and bool((hull <= mask).all())


def test_execute_inside_comfyui_inference_mode_with_frames(node):
    poses = synthetic_pose_sequence(3, 320, 192, seed=4)
    frames = render_pose_frames(poses)
    with torch.inference_mode():  # how ComfyUI runs nodes
        mask, preview = run(node, poses, frames=frames)
    outside = mask == 0
    import comfy.utils

    resized = comfy.utils.common_upscale(frames.movedim(-1, 1), 256, 192, "bilinear", "center").movedim(1, -1)
    assert torch.allclose(preview[outside], resized[outside], atol=1e-6)


@pytest.mark.parametrize("resize, crop", [("crop", "center"), ("stretch", "disabled")])
def test_frame_resizing_matches_comfyui_common_upscale(resize, crop):
    load_pack()
    import comfy.utils

    from ipa_train.pose.hands import resize_frames

    for size in ((300, 200), (200, 300), (333, 177)):
        frames = torch.rand(2, size[1], size[0], 3)
        ours = resize_frames(frames, 160, 144, resize)
        theirs = comfy.utils.common_upscale(frames.movedim(-1, 1), 160, 144, "bilinear", crop).movedim(1, -1)
        assert torch.allclose(ours, theirs, atol=1e-6), size


def test_missing_hands_give_empty_masks_not_errors(node):
    poses = [{"people": [], "canvas_width": 320, "canvas_height": 192}, None]
    mask, preview = run(node, poses)
    assert mask.shape == (2, 192, 256) and mask.sum() == 0


def test_frame_and_pose_count_mismatch_is_a_clear_error(node):
    poses = synthetic_pose_sequence(3, 320, 192, seed=0)
    with pytest.raises(ValueError, match="2 frames but 3 pose frames"):
        run(node, poses, frames=torch.zeros(2, 192, 320, 3))
    with pytest.raises(ValueError, match="no frames"):
        run(node, [])
