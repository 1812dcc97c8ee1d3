"""The Wan2.2-VACE-Fun A14B templates (IPA 4/5/6) end to end through ComfyUI's own HTTP server (needs COMFYUI_PATH), on
two tiny random-weight experts in ComfyUI's layout: curate samples 2 candidates with both experts (switch after step
1 of 2) and stores them; one is marked preferred through the gallery route; align trains expert both (2 steps each,
the real trainer in its subprocess) and installs <name>_low and <name>_high; animate applies the pair with IPA LoRA
Loader, each to its own expert (checked against the weights on each socket), and samples with the native
two-KSamplerAdvanced graph. The templates are converted
to API format as the frontend would queue them. Same single substitution as test_e2e_comfyui_server.py: the text
encoder (tests/support/e2e_base.py says why)."""

from __future__ import annotations

import json
import sys
import time

import pytest

from conftest import REPO_ROOT, requires_comfyui

pytestmark = requires_comfyui

sys.path.insert(0, str(REPO_ROOT / "scripts"))

from support.e2e_base import LENGTH, TEXT_NODE_TYPE, VAE_FILE, H, W, make_base  # noqa: E402

DATASET = "a14b_hands"
LORA_NAME = "ipa_a14b_e2e"
SIZE = {"width": W, "height": H}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.comfy_server import ComfyServer
    from support.comfy_tiny import TINY_EXPERT_NAMES, write_tiny_vace_experts

    base = tmp_path_factory.mktemp("e2e_a14b")
    started = time.monotonic()
    make_base(base)
    write_tiny_vace_experts(base / "models" / "diffusion_models")
    server = ComfyServer(base, tmp_path_factory.getbasetemp() / "e2e_a14b_comfyui.log")
    server.experts = dict(TINY_EXPERT_NAMES)
    server.timings = {"set-up and server start": time.monotonic() - started}
    try:
        yield server
    finally:
        server.stop()
        print("\nA14B end-to-end timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in server.timings.items()))


def _api(server, name: str, **widgets) -> dict:
    """Template ``name`` as an API prompt: the tiny experts in place of Comfy-Org's pair (by the file each loader
    names), the text stand-in, and ``widgets`` (node type -> inputs) set on every node of that type."""
    from build_example_workflows import UNET_HIGH, UNET_LOW, template_path
    from workflow_graph import _normalise, to_api_prompt

    infos = {kind: _normalise(info) for kind, info in server.get("/object_info").items()}
    prompt = to_api_prompt(json.loads(template_path(name).read_text()), infos)
    tiny = {UNET_HIGH: server.experts["high"], UNET_LOW: server.experts["low"]}
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPLoader":
            del prompt[node_id]
        elif kind == "CLIPTextEncode":
            node.update(class_type=TEXT_NODE_TYPE, inputs={"text": inputs["text"]})
        elif kind == "UNETLoader":
            inputs["unet_name"] = tiny[inputs["unet_name"]]
        elif kind == "VAELoader":
            inputs["vae_name"] = VAE_FILE
        assert not set(widgets.get(kind, {})) - set(inputs), f"{kind} has no inputs {set(widgets[kind]) - set(inputs)}"
        inputs.update(widgets.get(kind, {}))
    return prompt


def _output(entry: dict, prompt: dict, kind: str) -> dict:
    return entry["outputs"].get(next(key for key, node in prompt.items() if node["class_type"] == kind), {})


def test_the_a14b_templates_curate_train_and_animate_with_two_experts(comfy):
    _curate_and_mark(comfy)
    _align_both(comfy)
    _animate_with_the_pair(comfy)


def _curate_and_mark(comfy) -> None:
    from ipa_train.data.layout import dataset_path
    from ipa_train.data.manifest import read_manifest
    from support.comfy_server import run_prompt

    started = time.monotonic()
    curate = _api(comfy, "ipa_a14b_curate", IPAHandMaskFromPose=SIZE, IPAMarkPreferred={"dataset": DATASET},
                  IPAVaceSampler={**SIZE, "length": LENGTH, "steps": 2, "switch_step": 1, "candidates": 2, "seed": 7,
                                  "sampler_name": "euler"})
    run_prompt(comfy, curate)
    comfy.timings["curate"] = time.monotonic() - started
    folder = dataset_path(comfy.base / "output" / "ipa_datasets", DATASET)
    entries = read_manifest(folder)
    assert sorted(e["seed"] for e in entries) == [7, 8]
    settings = json.loads((folder / "samples" / entries[0]["id"] / "meta.json").read_text())["settings"]
    assert set(settings["experts"]) == {"high", "low"} and settings["switch_step"] == 1
    assert settings["experts"]["high"]["base_fingerprint"] != settings["experts"]["low"]["base_fingerprint"]
    chosen = next(e["id"] for e in entries if e["seed"] == 8)
    comfy.post(f"/ipa/datasets/{DATASET}/marks", {"ids": [chosen], "status": "preferred"})


def _align_both(comfy) -> None:
    from ipa_train.fileio import read_safetensors_metadata
    from support.comfy_server import run_prompt

    started = time.monotonic()
    align = _api(comfy, "ipa_a14b_align", IPATrainLoRA={
        "dataset": DATASET, "base_model": comfy.experts["high"], "low_noise_model": comfy.experts["low"], "expert": "both",
        "lora_name": LORA_NAME, "rank": 4, "alpha": 4.0, "gpus": "cpu", "precision": "fp32", "checkpoint_every": 0,
        "learning_rate": 1e-3, "steps": 2})
    run_prompt(comfy, align)
    comfy.timings["align (both experts)"] = time.monotonic() - started
    for expert in ("low", "high"):
        lora = comfy.base / "models" / "loras" / "ipa" / f"{LORA_NAME}_{expert}.safetensors"
        metadata = read_safetensors_metadata(lora)
        assert metadata["ipa.expert"] == expert and metadata["ipa.switch_step"] == "1", (expert, metadata)


def _animate_with_the_pair(comfy) -> None:
    import av
    import numpy as np

    from support.comfy_server import run_prompt

    started = time.monotonic()
    animate = _api(comfy, "ipa_a14b_animate", IPALoRALoader={"lora_name": f"ipa/{LORA_NAME}_low.safetensors"},
                   WanVaceToVideo={**SIZE, "length": LENGTH}, KSamplerAdvanced={"steps": 2, "sampler_name": "euler"},
                   SaveVideo={"filename_prefix": "video/ipa_a14b_e2e"})
    for node in animate.values():  # the switch at step 1 of 2 on both samplers, as the template splits 20 at 10
        if node["class_type"] == "KSamplerAdvanced":
            node["inputs"]["end_at_step" if node["inputs"]["add_noise"] == "enable" else "start_at_step"] = 1
    entry = run_prompt(comfy, animate)
    comfy.timings["animate"] = time.monotonic() - started
    report = _output(entry, animate, "PreviewAny")["text"][0]
    first = report.splitlines()[0]
    assert f"ipa/{LORA_NAME}_high.safetensors -> model (high-noise expert) (ipa.expert in its metadata)" in first, report
    assert f"ipa/{LORA_NAME}_low.safetensors -> model_low_noise (low-noise expert) (ipa.expert in its metadata)" in first, report
    assert report.count("6 weights patched, 0 keys unmatched") == 2 and "WARNING" not in report, report
    # each LoRA names its expert's file, and the loader finds those weights on the socket it applies it to
    for socket, expert in (("model (high-noise expert)", "high"), ("model_low_noise (low-noise expert)", "low")):
        assert f"expert check: {socket} holds {comfy.experts[expert]}, the model ipa/{LORA_NAME}_{expert}" in report, report
    saved = _output(entry, animate, "SaveVideo")["images"][0]
    with av.open(str(comfy.base / "output" / saved["subfolder"] / saved["filename"])) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == LENGTH and frames[0].shape == (H, W, 3) and float(np.std(np.stack(frames))) > 1.0
