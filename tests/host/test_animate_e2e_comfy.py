"""Wan2.2-Animate end to end through ComfyUI's own HTTP server (needs COMFYUI_PATH), on a tiny random Wan2.2-Animate
file in ComfyUI's layout (tests/support/animate_tiny.py), the tiny Wan VAE and DWPose models: collect (DWPose -> IPA
Animate Sampler -> IPA Mark Preferred, 2 candidates stored preferred), train 2 Flow-IPA steps (the real trainer in its
subprocess, through the align template), then sample again with the trained LoRA through the animate-character
template, once with IPA LoRA Loader and once with ComfyUI's LoraLoaderModelOnly: the same LoRA, the same video. The face
video is the first driving frame (ImageFromBatch), to keep the motion encoder's CPU time down.

Two substitutions, both for files that cannot be tiny: CLIPLoader + CLIPTextEncode become the test-only text node of
tests/support/e2e_base.py, and CLIPVisionLoader + CLIPVisionEncode a test-only node that gives CLIPVisionEncode's
output for Wan (penultimate hidden states [1, 257, 1280], seeded by the image): ComfyUI builds CLIP-vision H from a
fixed ViT-H config (630 M parameters) whatever the file holds."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, requires_comfyui

pytestmark = requires_comfyui

sys.path.insert(0, str(REPO_ROOT / "scripts"))

from support.e2e_base import LENGTH, TEXT_NODE, TEXT_NODE_TYPE, VAE_FILE, H, W  # noqa: E402

UNET_FILE = "tiny_wan22_animate.safetensors"
DATASET = "e2e_animate_hands"
LORA_NAME = "ipa_e2e_animate"
VISION_NODE_TYPE = "E2ETinyClipVisionEncode"
# The face video: the first driving frame only (AnimateWanModel pads the motion tokens); the fixed-size motion encoder on
# 512x512 frames is what costs time on a CPU, so each model call encodes one frame.
FACE_FRAMES = 1

VISION_NODE = '''"""Test-only stand-in for CLIPVisionLoader + CLIPVisionEncode (Wan): see tests/host/test_animate_e2e_comfy.py."""
import torch

import comfy.clip_vision


class E2ETinyClipVisionEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, image):
        seed = int(float(image.float().mean()) * 1e6)
        output = comfy.clip_vision.Output()
        output.penultimate_hidden_states = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(seed)) * 0.5
        return (output,)


NODE_CLASS_MAPPINGS = {"E2ETinyClipVisionEncode": E2ETinyClipVisionEncode}
'''


def make_animate_base(base: Path) -> Path:
    """ComfyUI's base folder: the pack, the two stand-ins, tiny Wan2.2-Animate / Wan VAE / DWPose files, the inputs."""
    from PIL import Image

    from support.animate_tiny import write_tiny_animate
    from support.comfy_tiny import load_pack_cpu, write_tiny_vae
    from support.e2e_base import driving_video
    from support.tiny_dwpose_models import build_weights

    for name, source in (("e2e_tiny_text", TEXT_NODE), ("e2e_tiny_vision", VISION_NODE)):
        (base / "custom_nodes" / name).mkdir(parents=True)
        (base / "custom_nodes" / name / "__init__.py").write_text(source)
    os.symlink(REPO_ROOT, base / "custom_nodes" / "ComfyUI-IPA")
    load_pack_cpu()
    write_tiny_animate(base / "models" / "diffusion_models" / UNET_FILE)
    write_tiny_vae(base / "models" / "vae" / VAE_FILE)
    build_weights(base / "models" / "dwpose")
    (base / "input").mkdir()
    Image.fromarray((np.random.default_rng(0).random((2 * H, 2 * W, 3)) * 255).astype(np.uint8)).save(base / "input" / "reference.png")
    driving_video(base / "input" / "driving.mp4", LENGTH, 2 * W, 2 * H)
    return base


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.comfy_server import ComfyServer

    base = make_animate_base(tmp_path_factory.mktemp("e2e_animate"))
    server = ComfyServer(base, tmp_path_factory.getbasetemp() / "e2e_animate_comfyui.log")
    server.timings = {}
    try:
        yield server
    finally:
        server.stop()
        print("\nAnimate end-to-end timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in server.timings.items()))


def _collect_prompt() -> dict:
    """Driving video -> DWPose (pose video, keypoints); IPA Animate Sampler -> IPA Mark Preferred (preferred)."""
    size = {"width": W, "height": H}
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_FILE}},
        "3": {"class_type": TEXT_NODE_TYPE, "inputs": {"text": "a dancer waves both hands"}},
        "4": {"class_type": TEXT_NODE_TYPE, "inputs": {"text": "deformed hands"}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "reference.png"}},
        "6": {"class_type": VISION_NODE_TYPE, "inputs": {"image": ["5", 0]}},
        "7": {"class_type": "LoadVideo", "inputs": {"file": "driving.mp4"}},
        "8": {"class_type": "GetVideoComponents", "inputs": {"video": ["7", 0]}},
        "9": {"class_type": "IPADWPoseEstimator", "inputs": {"frames": ["8", 0], "detection_threshold": 0.3, "keypoint_threshold": 0.3,
                                                            "draw_body": True, "draw_hands": True, "draw_face": True, "resolution": 0}},
        "10": {"class_type": "IPAAnimateSampler", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0], "vae": ["2", 0], "clip_vision_output": ["6", 0],
            "reference_image": ["5", 0], "pose_video": ["9", 1], "face_video": ["12", 0], **size, "length": LENGTH, "steps": 1,
            "cfg": 1.0, "shift": 8.0, "sampler_name": "euler", "scheduler": "simple", "candidates": 2, "seed": 7}},
        "12": {"class_type": "ImageFromBatch", "inputs": {"image": ["8", 0], "batch_index": 0, "length": FACE_FRAMES}},
        "11": {"class_type": "IPAMarkPreferred", "inputs": {"candidates": ["10", 1], "dataset": DATASET, "mark": "preferred",
                                                           "pose_keypoint": ["9", 0], "prompt_text": "a dancer waves both hands"}},
    }


def _template_prompt(comfy, key: str, **widgets) -> dict:
    """A committed template as an API prompt with the tiny files and the stand-ins; ``widgets`` per node type."""
    from build_example_workflows import template_path
    from workflow_graph import _normalise, to_api_prompt

    infos = {name: _normalise(info) for name, info in comfy.get("/object_info").items()}
    prompt = to_api_prompt(json.loads(template_path(key).read_text()), infos)
    for node_id, node in list(prompt.items()):
        kind = node["class_type"]
        if kind in ("CLIPLoader", "CLIPVisionLoader"):
            del prompt[node_id]
        elif kind == "CLIPTextEncode":
            node["class_type"], node["inputs"] = TEXT_NODE_TYPE, {"text": node["inputs"]["text"]}
        elif kind == "CLIPVisionEncode":
            node["class_type"], node["inputs"] = VISION_NODE_TYPE, {"image": node["inputs"]["image"]}
        elif kind == "UNETLoader":
            node["inputs"]["unet_name"] = UNET_FILE
        elif kind == "VAELoader":
            node["inputs"]["vae_name"] = VAE_FILE
        elif kind == "WanAnimateToVideo":
            prompt["face_frames"] = {"class_type": "ImageFromBatch", "inputs": {"image": node["inputs"]["face_video"], "batch_index": 0,
                                                                               "length": FACE_FRAMES}}
            node["inputs"]["face_video"] = ["face_frames", 0]
        if kind in widgets:
            assert set(widgets[kind]) <= set(node["inputs"]), f"{kind} has no inputs {set(widgets[kind]) - set(node['inputs'])}"
            node["inputs"].update(widgets[kind])
    return prompt


def _output_of(entry: dict, prompt: dict, kind: str) -> dict:
    node_id = next(key for key, node in prompt.items() if node["class_type"] == kind)
    return entry["outputs"].get(node_id, {})


def test_collect_train_and_sample_with_the_lora_on_wan_animate(comfy):
    _collect(comfy)
    _train(comfy)
    frames_ipa = _sample(comfy, "IPALoRALoader")
    frames_native = _sample(comfy, "LoraLoaderModelOnly")
    assert np.array_equal(frames_ipa, frames_native)  # both loaders apply the same LoRA to the same model


def _collect(comfy) -> None:
    from ipa_train.data.manifest import read_manifest
    from ipa_train.data.samples import load_sample
    from support.comfy_server import run_prompt

    started = time.monotonic()
    run_prompt(comfy, _collect_prompt(), timeout=600)
    comfy.timings["collect"] = time.monotonic() - started
    folder = comfy.base / "output" / "ipa_datasets" / DATASET
    entries = read_manifest(folder)
    assert sorted(e["seed"] for e in entries) == [7, 8] and {e["status"] for e in entries} == {"preferred"}
    assert {e["model_type"] for e in entries} == {"wan_animate"}
    tensors, meta = load_sample(folder, entries[0]["id"])
    assert meta["model_type"] == "wan_animate" and meta["hand_mask_source"] == "pose" and len(meta["driving_pose"]) == LENGTH
    assert tuple(tensors.latent.shape) == (16, 3, H // 8, W // 8) and tuple(tensors.animate.concat_latent.shape) == (20, 3, H // 8, W // 8)
    assert tuple(tensors.animate.pose_latent.shape) == (16, 2, H // 8, W // 8)
    assert tuple(tensors.animate.face_pixels.shape) == (3, FACE_FRAMES, 512, 512) and tuple(tensors.animate.image_embedding.shape) == (257, 1280)
    assert entries[0]["hand_area"] > 0  # DWPose found the hands: they weight the loss


def _train(comfy) -> None:
    from ipa_train.fileio import read_safetensors_metadata
    from support.comfy_server import run_prompt

    started = time.monotonic()
    align = _template_prompt(comfy, "ipa_align", IPATrainLoRA={
        "dataset": DATASET, "base_model": UNET_FILE, "lora_name": LORA_NAME, "rank": 4, "alpha": 4.0, "gpus": "cpu",
        "precision": "fp32", "checkpoint_every": 0, "learning_rate": 1e-3, "steps": 2, "objective": "ipa"})
    entry = run_prompt(comfy, align, timeout=600)
    comfy.timings["train 2 steps"] = time.monotonic() - started
    lora = comfy.base / "models" / "loras" / "ipa" / f"{LORA_NAME}.safetensors"
    metadata = read_safetensors_metadata(lora)
    assert metadata["ipa.objective"] == "ipa" and metadata["ipa.steps"] == "2" and metadata["ipa.dataset_size"] == "2"
    assert metadata["ipa.base_model"] == UNET_FILE
    assert "loss:" in _output_of(entry, align, "PreviewAny")["text"][0]
    # the trainer's base is the sampling model: the samples' recorded fingerprints match, nothing to warn about
    log = next((comfy.base / "output" / "ipa_runs").glob(f"{LORA_NAME}-*/train.log")).read_text().splitlines()
    started_event = next(json.loads(line[line.index("{\""):]) for line in log if "\"event\": \"started\"" in line)
    assert started_event["warnings"] == [] and started_event["samples"] == 2, started_event


def _sample(comfy, loader: str) -> np.ndarray:
    """The animate-character template with the trained LoRA through ``loader``; the saved video's frames."""
    import av

    from support.comfy_server import run_prompt

    started = time.monotonic()
    prompt = _template_prompt(comfy, "ipa_animate_character", IPALoRALoader={"lora_name": f"ipa/{LORA_NAME}.safetensors"},
                              WanAnimateToVideo={"width": W, "height": H, "length": LENGTH},
                              KSampler={"steps": 1, "sampler_name": "euler", "seed": 3, "cfg": 1.0},
                              SaveVideo={"filename_prefix": f"video/e2e_{loader}"})
    if loader == "LoraLoaderModelOnly":
        node_id = next(key for key, node in prompt.items() if node["class_type"] == "IPALoRALoader")
        prompt[node_id] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": prompt[node_id]["inputs"]["model"], "lora_name": f"ipa/{LORA_NAME}.safetensors", "strength_model": 1.0}}
        del prompt[next(key for key, node in prompt.items() if node["class_type"] == "PreviewAny")]
    entry = run_prompt(comfy, prompt, timeout=600)
    comfy.timings[f"sample with {loader}"] = time.monotonic() - started
    if loader == "IPALoRALoader":
        report = _output_of(entry, prompt, "PreviewAny")["text"][0]
        assert "0 keys unmatched" in report and "objective: ipa" in report and "WARNING" not in report, report
    saved = _output_of(entry, prompt, "SaveVideo")["images"][0]
    with av.open(str(comfy.base / "output" / saved["subfolder"] / saved["filename"])) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert frames.shape == (LENGTH, H, W, 3) and float(frames.std()) > 1.0
    return frames
