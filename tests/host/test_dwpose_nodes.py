"""The DWPose nodes under a real ComfyUI (runs when COMFYUI_PATH is set): weights lookup through folder_paths,
the estimator node end to end on tiny ONNX models, progress and cancelling, the render node, registration."""

from __future__ import annotations

import asyncio
import importlib
import sys
import types

import numpy as np
import pytest
import torch

from conftest import PACK_MODULE_NAME, REPO_ROOT, comfyui_path, load_pack, requires_comfyui
from support.tiny_dwpose_models import build_weights, cross_frame

pytestmark = requires_comfyui

HAS_HAND_MASK_NODE = (REPO_ROOT / "nodes" / "hand_mask.py").exists()


def _comfy_on_cpu() -> None:
    path = str(comfyui_path())
    if path in sys.path:
        sys.path.remove(path)
    # first: an earlier test's nodes.py import put comfy/ first, where "utils" is comfy/utils.py, not ComfyUI's package
    sys.path.insert(0, path)
    import comfy.cli_args
    import utils.extra_config  # noqa: F401  (as main.py: ComfyUI's utils package before nodes.py puts comfy/ first on sys.path, where server's "utils" would resolve to comfy/utils.py)

    if "comfy.model_management" not in sys.modules and not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # as `main.py --cpu`: otherwise ComfyUI asks CUDA for a device at import


def _import_dwpose_nodes():
    _comfy_on_cpu()
    if HAS_HAND_MASK_NODE:
        pack = load_pack()
        return importlib.import_module(pack.__name__ + ".nodes.dwpose")
    # Until the hands branch lands, nodes/__init__.py cannot import (it lists hand_mask): import nodes/dwpose.py
    # inside empty package shells, with the same relative imports ComfyUI would resolve.
    name = PACK_MODULE_NAME + "_dwpose_only"
    if name + ".nodes.dwpose" in sys.modules:
        return sys.modules[name + ".nodes.dwpose"]
    for module_name, folder in ((name, REPO_ROOT), (name + ".nodes", REPO_ROOT / "nodes")):
        shell = types.ModuleType(module_name)
        shell.__path__ = [str(folder)]
        sys.modules[module_name] = shell
    return importlib.import_module(name + ".nodes.dwpose")


@pytest.fixture(scope="module")
def dw():
    return _import_dwpose_nodes()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return build_weights(tmp_path_factory.mktemp("tiny_dwpose"))


@pytest.fixture
def comfy_dirs(dw, tmp_path, monkeypatch):
    """A ComfyUI with models/ and custom_nodes/ in a temporary folder, nothing registered for dwpose yet."""
    import folder_paths

    models, custom_nodes = tmp_path / "models", tmp_path / "custom_nodes"
    models.mkdir()
    custom_nodes.mkdir()
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "custom_nodes", ([str(custom_nodes)], set()))
    monkeypatch.delitem(folder_paths.folder_names_and_paths, "dwpose", raising=False)
    monkeypatch.delenv("AUX_ANNOTATOR_CKPTS_PATH", raising=False)
    dw._cached.clear()
    return types.SimpleNamespace(models=models, custom_nodes=custom_nodes, dwpose=models / "dwpose")


def _install(files, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())


def _frames() -> torch.Tensor:
    frames = np.stack([cross_frame(320, 180, 200, 60), cross_frame(320, 180, 100, 120), np.zeros((180, 320, 3), np.uint8)])
    return torch.from_numpy(frames).float() / 255.0


def _run_estimator(dw, frames, unique_id=None, **overrides):
    options = dict(detection_threshold=0.3, keypoint_threshold=0.3, draw_body=True, draw_hands=True, draw_face=True, resolution=0)
    options.update(overrides)
    node = dw.IPADWPoseEstimator.PREPARE_CLASS_CLONE({"hidden_inputs": {"UNIQUE_ID": unique_id}} if unique_id else None)
    return node.EXECUTE_NORMALIZED(frames=frames, **options).result


# ------------------------------------------------------------------------------------------ weights


def test_setup_merges_with_extra_model_paths_and_adds_onnx(dw, comfy_dirs, tmp_path):
    import folder_paths

    yaml_dir = tmp_path / "shared_models" / "dwpose"
    yaml_dir.mkdir(parents=True)
    (yaml_dir / "yolox_l.onnx").write_bytes(b"x")
    (yaml_dir / "notes.txt").write_text("not a model")
    folder_paths.add_model_folder_path("dwpose", str(yaml_dir))  # what extra_model_paths.yaml does first
    dw.setup()
    dw.setup()  # idempotent
    paths, extensions = folder_paths.folder_names_and_paths["dwpose"]
    assert paths == [str(yaml_dir), str(comfy_dirs.dwpose)]
    assert ".onnx" in extensions
    assert folder_paths.get_filename_list("dwpose") == ["yolox_l.onnx"]


def test_setup_without_yaml_entry(dw, comfy_dirs):
    import folder_paths

    dw.setup()
    assert folder_paths.folder_names_and_paths["dwpose"] == ([str(comfy_dirs.dwpose)], {".onnx"})


def test_missing_weights_error_names_files_places_and_source(dw, comfy_dirs):
    with pytest.raises(FileNotFoundError) as info:
        _run_estimator(dw, _frames())
    message = str(info.value)
    for text in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx", str(comfy_dirs.dwpose), "https://huggingface.co/yzd-v/DWPose",
                 "Nothing is downloaded"):
        assert text in message


def test_weights_found_in_controlnet_aux_checkpoints(dw, comfy_dirs, tiny_files, tmp_path, monkeypatch):
    _install(tiny_files, comfy_dirs.custom_nodes / "comfyui_controlnet_aux" / "ckpts" / "yzd-v" / "DWPose")
    keypoints, _ = _run_estimator(dw, _frames()[:1])
    assert len(keypoints[0]["people"]) == 1
    assert dw._cached["estimator"].pose_path.parent.parts[-4:] == ("comfyui_controlnet_aux", "ckpts", "yzd-v", "DWPose")
    # its config.yaml may move the checkpoints: the pack exports the folder as AUX_ANNOTATOR_CKPTS_PATH
    moved = tmp_path / "aux_ckpts"
    _install(tiny_files, moved / "yzd-v" / "DWPose")
    monkeypatch.setenv("AUX_ANNOTATOR_CKPTS_PATH", str(moved))
    assert moved / "yzd-v" / "DWPose" in dw.weight_search_dirs()


def test_models_dwpose_comes_first_and_a_corrupt_file_is_reported(dw, comfy_dirs, tiny_files):
    _install(tiny_files, comfy_dirs.custom_nodes / "comfyui_controlnet_aux" / "ckpts" / "yzd-v" / "DWPose")
    _install(tiny_files, comfy_dirs.dwpose)
    (comfy_dirs.dwpose / "yolox_l.onnx").write_bytes(b"<html>404</html>")  # a bad download
    with pytest.raises(RuntimeError) as info:
        _run_estimator(dw, _frames()[:1])
    assert str(comfy_dirs.dwpose / "yolox_l.onnx") in str(info.value) and "not a valid ONNX model" in str(info.value)


# ------------------------------------------------------------------------------------------ estimator node


def test_estimator_node_end_to_end(dw, comfy_dirs, tiny_files, monkeypatch):
    import comfy.utils

    _install(tiny_files, comfy_dirs.dwpose)
    calls = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: calls.append((value, total, node_id)))
    keypoints, video = _run_estimator(dw, _frames(), unique_id="7")

    assert isinstance(keypoints, list) and len(keypoints) == 3
    assert [f["canvas_width"] for f in keypoints] == [320] * 3 and [f["canvas_height"] for f in keypoints] == [180] * 3
    assert keypoints[2]["people"] == []  # black frame: nobody
    for frame, (x0, y0) in zip(keypoints[:2], [(200, 60), (100, 120)]):
        (person,) = frame["people"]
        assert {k: len(v) for k, v in person.items()} == {
            "pose_keypoints_2d": 54, "face_keypoints_2d": 210, "hand_left_keypoints_2d": 63, "hand_right_keypoints_2d": 63}
        body = np.array(person["pose_keypoints_2d"]).reshape(18, 3)
        assert (np.abs(body[1:, :2] - [x0 + 1.5, y0 + 1.5]) < 3).all()  # absolute frame pixels
        assert (body[1:, 2] > 0.3).all() and (body[1:, 2] < 1).all()  # real scores

    assert video.shape == (3, 180, 320, 3) and video.dtype == torch.float32
    assert 0.0 <= video.min() and video.max() <= 1.0
    assert video[0].amax() > 0 and video[2].amax() == 0
    x, y = np.array(keypoints[0]["people"][0]["pose_keypoints_2d"][3:5]).astype(int)  # the neck
    assert video[0, y, x].amax() > 0
    assert calls[-1] == (6, 6, "7")  # 3 frames estimated + 3 drawn, reported to node 7

    _, big = _run_estimator(dw, _frames()[:1], resolution=360, draw_face=False)
    assert big.shape == (1, 360, 640, 3)


def test_estimator_node_can_be_cancelled_between_frames(dw, comfy_dirs, tiny_files, monkeypatch):
    import comfy.model_management
    import comfy.utils

    _install(tiny_files, comfy_dirs.dwpose)
    calls = []

    def user_presses_cancel(value, total, preview, node_id=None):
        calls.append(value)
        comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", user_presses_cancel)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _run_estimator(dw, _frames())
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert calls == [1]  # stopped after the first frame


# ------------------------------------------------------------------------------------------ render node


def _render(dw, pose, **overrides):
    options = dict(keypoint_threshold=0.3, draw_body=True, draw_hands=True, draw_face=True, resolution=0)
    options.update(overrides)
    return dw.IPARenderPose.PREPARE_CLASS_CLONE(None).EXECUTE_NORMALIZED(pose_keypoints=pose, **options).result[0]


def test_render_node_redraws_the_estimator_video(dw, comfy_dirs, tiny_files):
    _install(tiny_files, comfy_dirs.dwpose)
    keypoints, video = _run_estimator(dw, _frames(), draw_hands=False)
    again = _render(dw, keypoints, draw_hands=False)
    assert torch.equal(again, video)


def test_render_node_takes_keypoints_from_other_packs(dw):
    body = [0.0] * 54
    body[3:9] = [0.2, 0.5, 1.0, 0.8, 0.5, 1.0]  # normalised neck and right shoulder, confidence 1 (controlnet_aux style)
    pose = [{"people": [{"pose_keypoints_2d": body, "face_keypoints_2d": None,
                         "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}],
             "canvas_width": 200, "canvas_height": 100}]
    video = _render(dw, pose, resolution=200)
    assert video.shape == (1, 200, 400, 3)
    assert torch.allclose(video[0, 100, 200], torch.tensor([153, 0, 0]) / 255.0)  # limb 0 at 60 % red
    assert torch.allclose(video[0, 100, 80], torch.tensor([255, 85, 0]) / 255.0)  # neck joint
    with pytest.raises(ValueError, match="one frame size"):
        _render(dw, pose + [dict(pose[0], canvas_width=100)])


# ------------------------------------------------------------------------------------------ integration


@pytest.mark.skipif(not HAS_HAND_MASK_NODE, reason="pending: needs the hands branch (nodes/hand_mask.py) merged into main")
def test_comfyui_loader_registers_the_dwpose_nodes():
    _comfy_on_cpu()
    import nodes as comfy_nodes

    assert asyncio.run(comfy_nodes.load_custom_node(str(REPO_ROOT))) is True
    assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS["IPADWPoseEstimator"] == "IPA DWPose Estimator"
    assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS["IPARenderPose"] == "IPA Render Pose"
    info = comfy_nodes.NODE_CLASS_MAPPINGS["IPADWPoseEstimator"].GET_NODE_INFO_V1()
    assert info["output"] == ["POSE_KEYPOINT", "IMAGE"]
    assert info["input"]["required"]["frames"][0] == "IMAGE"
    import folder_paths

    assert ".onnx" in folder_paths.folder_names_and_paths["dwpose"][1]  # setup() ran from comfy_entrypoint


def test_hand_masks_accept_the_estimator_keypoints(dw, comfy_dirs, tiny_files):
    from ipa_train.pose.hands import pose_to_hand_masks

    _install(tiny_files, comfy_dirs.dwpose)
    keypoints, _ = _run_estimator(dw, _frames())
    masks = pose_to_hand_masks(keypoints, width=320, height=180)
    assert masks.shape == (3, 180, 320)
    for t in (0, 1):
        person = keypoints[t]["people"][0]
        covered = torch.zeros(180, 320)
        for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d"):
            points = np.array(person[key]).reshape(21, 3)
            for x, y, _ in points:
                assert masks[t, int(y), int(x)] == 1  # every hand point is inside the mask
            x0, y0 = points[:, :2].min(0)
            x1, y1 = points[:, :2].max(0)
            grow = 0.25 * max(x1 - x0, y1 - y0)  # the hand-mask node's default margin
            covered[int(y0 - grow) : int(y1 + grow) + 2, int(x0 - grow) : int(x1 + grow) + 2] = 1
        assert masks[t].sum() > 0 and (masks[t] <= covered).all()  # and nothing far from the hands
    assert masks[2].sum() == 0  # nobody, no hand
