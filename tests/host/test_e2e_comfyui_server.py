"""End to end through ComfyUI's own HTTP server (needs COMFYUI_PATH): the pack installed in custom_nodes, the three
example workflows converted to API format as the frontend would queue them, on tiny random-weight models written
in ComfyUI's layouts. Curate (DWPose -> sample 2 candidates -> store pending; mark one preferred through the
gallery route), align (the real trainer in a subprocess), animate (the new LoRA through IPA LoRA Loader, native
VACE sampling, saved video), then POST /interrupt during training: a graceful stop (through the stop file) with a
checkpoint and a resume hint in the node's error, and the hint (resume='latest') continuing the run to its end; the
same through the jobs API's cancels where the host has them (v0.26+; asserted absent on v0.8).

One substitution: CLIPLoader + CLIPTextEncode become a test-only text node (see tests/support/e2e_base.py for why).
Everything else runs the real nodes and files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, requires_comfyui

pytestmark = requires_comfyui

sys.path.insert(0, str(REPO_ROOT / "scripts"))

from support.e2e_base import LENGTH, TEXT_NODE_TYPE, UNET_FILE, VAE_FILE, H, W, make_base  # noqa: E402

DATASET = "e2e_hands"
LORA_NAME = "ipa_e2e"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """The server with the pack, the text stand-in, tiny Wan2.1-VACE / Wan VAE / DWPose files and the inputs."""
    from support.comfy_server import ComfyServer

    base = tmp_path_factory.mktemp("e2e")
    started = time.monotonic()
    make_base(base)
    server = ComfyServer(base, tmp_path_factory.getbasetemp() / "e2e_comfyui.log")
    server.timings = {"set-up and server start": time.monotonic() - started}
    try:
        yield server
    finally:
        server.stop()
        print("\nend-to-end timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in server.timings.items()))


def _infos(server) -> dict:
    from workflow_graph import _normalise

    return {name: _normalise(info) for name, info in server.get("/object_info").items()}


def _api(server, name: str, **widgets) -> dict:
    """The committed example workflow ``name`` as an API prompt, with tiny-model settings: ``widgets`` maps a node
    type to the inputs to override. CLIPTextEncode becomes the text stand-in (see the module docstring)."""
    from build_example_workflows import template_path
    from workflow_graph import to_api_prompt

    workflow = json.loads(template_path(name).read_text())
    prompt = to_api_prompt(workflow, _infos(server))
    for node_id, node in list(prompt.items()):
        kind = node["class_type"]
        if kind == "CLIPLoader":
            del prompt[node_id]
        elif kind == "CLIPTextEncode":
            node["class_type"] = TEXT_NODE_TYPE
            node["inputs"] = {"text": node["inputs"]["text"]}
        elif kind == "UNETLoader":
            node["inputs"]["unet_name"] = UNET_FILE
        elif kind == "VAELoader":
            node["inputs"]["vae_name"] = VAE_FILE
        if kind in widgets:
            unknown = set(widgets[kind]) - set(node["inputs"])
            assert not unknown, f"{kind} has no inputs {unknown}"
            node["inputs"].update(widgets[kind])
    return prompt


def align_settings() -> dict:
    return {"dataset": DATASET, "base_model": UNET_FILE, "lora_name": LORA_NAME, "rank": 4, "alpha": 4.0,
            "gpus": "cpu", "precision": "fp32", "checkpoint_every": 0}


def _node_output(entry: dict, prompt: dict, kind: str) -> dict:
    node_id = next(key for key, node in prompt.items() if node["class_type"] == kind)
    return entry["outputs"].get(node_id, {})


def test_curate_align_animate_through_the_server(comfy):
    folder, entries = _curate(comfy)
    _mark_one_preferred(comfy, folder, entries)
    _align(comfy)
    _animate(comfy)


def _curate(comfy) -> tuple[Path, list[dict]]:
    """Driving video -> DWPose -> 2 candidates -> stored pending with hand masks and driving pose."""
    from ipa_train.data.layout import dataset_path
    from ipa_train.data.manifest import read_manifest
    from support.comfy_server import run_prompt

    base = comfy.base
    size = {"width": W, "height": H}
    from PIL import Image

    started = time.monotonic()
    curate = _api(comfy, "ipa_curate",
                  IPAVaceSampler={**size, "length": LENGTH, "steps": 2, "candidates": 2, "seed": 7, "sampler_name": "euler"},
                  IPAHandMaskFromPose=size, IPAMarkPreferred={"dataset": DATASET})
    entry = run_prompt(comfy, curate)
    comfy.timings["curate"] = time.monotonic() - started
    # one looping grid of the candidates on the sampler (side by side for 2), one clip on the hand-mask node:
    # animated WebPs in the temp folder
    sampler_ui, mask_ui = _node_output(entry, curate, "IPAVaceSampler"), _node_output(entry, curate, "IPAHandMaskFromPose")
    assert len(sampler_ui["images"]) == 1 and len(mask_ui["images"]) == 1 and sampler_ui["animated"] == mask_ui["animated"] == [True]
    with Image.open(base / "temp" / sampler_ui["images"][0]["subfolder"] / sampler_ui["images"][0]["filename"]) as grid:
        assert grid.size[0] > 2 * grid.size[1] * W / H * 0.9  # two tiles wide, one high
    for item in sampler_ui["images"] + mask_ui["images"]:
        with Image.open(base / "temp" / item["subfolder"] / item["filename"]) as clip:
            assert clip.format == "WEBP" and clip.n_frames == LENGTH and clip.info.get("loop") == 0
    folder = dataset_path(base / "output" / "ipa_datasets", DATASET)
    entries = read_manifest(folder)
    assert sorted(e["seed"] for e in entries) == [7, 8] and {e["status"] for e in entries} == {"pending"}
    _check_stored_candidate(folder, entries[0])
    return folder, entries


def _check_stored_candidate(folder: Path, first: dict) -> None:
    from ipa_train.data.samples import load_sample
    meta = json.loads((folder / "samples" / first["id"] / "meta.json").read_text())
    assert meta["hand_mask_source"] == "pose" and len(meta["driving_pose"]) == LENGTH
    assert meta["driving_pose"][0]["canvas_width"] == 2 * W and meta["driving_pose_resize"] == "crop"  # as DWPose gave it
    assert meta["prompt"].startswith("a person waves")
    assert all(frame["people"] for frame in meta["driving_pose"])  # DWPose found the person in every frame
    assert first["hand_area"] > 0 and len(meta["hand_boxes"]) == LENGTH  # its hands became the loss weighting
    tensors, _ = load_sample(folder, first["id"])
    assert tuple(tensors.latent.shape) == (16, 3, H // 8, W // 8) and tuple(tensors.vace_context.shape) == (96, 3, H // 8, W // 8)
    assert tuple(tensors.text_embedding.shape) == (512, 4096) and tensors.ref_frames == 1


def _mark_one_preferred(comfy, folder: Path, entries: list[dict]) -> None:
    """Through the gallery's route, as the gallery panel does."""
    from ipa_train.data.manifest import read_manifest
    from ipa_train.data.marks import count_statuses
    chosen = next(e["id"] for e in entries if e["seed"] == 8)
    comfy.post(f"/ipa/datasets/{DATASET}/marks", {"ids": [chosen], "status": "preferred"})
    assert count_statuses(read_manifest(folder))["preferred"] == 1


def _align(comfy) -> None:
    """The real trainer in a subprocess, the LoRA copied to models/loras/ipa."""
    from ipa_train.fileio import read_safetensors_metadata
    from support.comfy_server import run_prompt

    started = time.monotonic()
    align = _api(comfy, "ipa_align", IPATrainLoRA={**align_settings(), "learning_rate": 1e-3, "steps": 3})
    entry = run_prompt(comfy, align)
    comfy.timings["align"] = time.monotonic() - started
    lora = comfy.base / "models" / "loras" / "ipa" / f"{LORA_NAME}.safetensors"
    assert lora.is_file()
    metadata = read_safetensors_metadata(lora)
    assert metadata["ipa.objective"] == "ipa" and metadata["ipa.steps"] == "3" and metadata["ipa.dataset_size"] == "1"
    assert metadata["ipa.base_model"] == "tiny_wan21_vace.safetensors"
    shown = _node_output(entry, align, "PreviewAny")["text"][0]
    assert "saved as: loras/ipa/ipa_e2e.safetensors" in shown and "loss:" in shown
    assert len(_node_output(entry, align, "PreviewImage")["images"]) == 1  # the loss curve


def _animate(comfy) -> None:
    """The LoRA through IPA LoRA Loader on the native VACE graph; the video is saved."""
    from support.comfy_server import run_prompt

    started = time.monotonic()
    animate = _api(comfy, "ipa_animate", IPALoRALoader={"lora_name": f"ipa/{LORA_NAME}.safetensors"},
                   WanVaceToVideo={"width": W, "height": H, "length": LENGTH}, KSampler={"steps": 2, "sampler_name": "euler", "seed": 3},
                   SaveVideo={"filename_prefix": "video/ipa_e2e"})
    entry = run_prompt(comfy, animate)
    comfy.timings["animate"] = time.monotonic() - started
    report = _node_output(entry, animate, "PreviewAny")["text"][0]
    # tiny model: 2 blocks x q, k, v; the loader shows the trainer's own settings
    assert "6 weights patched, 0 keys unmatched" in report and "objective: ipa" in report and "steps: 3" in report
    assert "WARNING" not in report
    saved = _node_output(entry, animate, "SaveVideo")["images"][0]
    video_path = comfy.base / "output" / saved["subfolder"] / saved["filename"]
    import av

    with av.open(str(video_path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == LENGTH and frames[0].shape == (H, W, 3)
    assert float(np.std(np.stack(frames))) > 1.0  # decoded content, not a blank video


def _needs_the_dataset(comfy):
    from ipa_train.data.manifest import read_manifest
    from ipa_train.data.marks import count_statuses

    folder = comfy.base / "output" / "ipa_datasets" / DATASET
    if not folder.is_dir() or count_statuses(read_manifest(folder))["preferred"] == 0:
        pytest.skip("needs the dataset made by test_curate_align_animate_through_the_server")


def _train_until_a_step(comfy, lora_name: str):
    """Queues a long training run; returns (prompt id, its train.log) once the trainer logged a step."""
    align = _api(comfy, "ipa_align", IPATrainLoRA={**align_settings(), "lora_name": lora_name, "steps": 100000})
    prompt_id = comfy.queue(align)
    runs = comfy.base / "output" / "ipa_runs"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        logs = list(runs.glob(f"{lora_name}-*/train.log"))
        if logs and '"event": "step"' in logs[0].read_text():
            return prompt_id, logs[0]
        time.sleep(0.1)
    pytest.fail("the trainer never reported a step:\n" + comfy.log_tail())


def _assert_stopped_with_a_checkpoint(comfy, entry: dict, log_path: Path, lora_name: str) -> Path:
    """A cancel as ComfyUI reports its own nodes' cancels, the stop message with its resume hint, the checkpoint and
    no LoRA; returns the checkpoint folder."""
    from support.comfy_server import execution_error

    assert execution_error(entry) is None and "execution_interrupted" in [kind for kind, _ in entry["status"]["messages"]], entry["status"]
    message = next(line for line in comfy.log_tail(20000).splitlines() if "IPA training stopped at step" in line and f"{lora_name}-" in line)
    assert "resume='latest'" in message
    run_dir = log_path.parent
    checkpoint = Path(message.split("Checkpoint: ")[1].split(". To resume")[0])
    assert checkpoint.parent == run_dir / "checkpoints" and (checkpoint / "state.json").is_file()
    log = log_path.read_text()
    assert '"reason": "stop file"' in log and "SIGINT" not in log  # stopped through the stop file, no signal
    assert not (run_dir / "STOP").exists()
    assert not (comfy.base / "models" / "loras" / "ipa" / f"{lora_name}.safetensors").exists()
    return checkpoint


def _assert_resume_finishes(comfy, checkpoint: Path, log_path: Path, lora_name: str) -> None:
    """The hint works: queued again with resume='latest', the run continues from that step and finishes."""
    from support.comfy_server import run_prompt

    step = int(checkpoint.name.split("-")[1])
    resumed = _api(comfy, "ipa_align", IPATrainLoRA={**align_settings(), "lora_name": lora_name, "steps": step + 1, "resume": "latest"})
    run_prompt(comfy, resumed)
    log = log_path.read_text()
    assert f'"start_step": {step}' in log and f'"event": "finished", "step": {step + 1}' in log
    assert (comfy.base / "models" / "loras" / "ipa" / f"{lora_name}.safetensors").is_file()


def test_interrupt_stops_training_with_a_checkpoint_and_a_resume_hint(comfy):
    _needs_the_dataset(comfy)
    started = time.monotonic()
    prompt_id, log_path = _train_until_a_step(comfy, "ipa_cancel")
    comfy.post("/interrupt")
    entry = comfy.wait(prompt_id, timeout=180)
    checkpoint = _assert_stopped_with_a_checkpoint(comfy, entry, log_path, "ipa_cancel")
    _assert_resume_finishes(comfy, checkpoint, log_path, "ipa_cancel")
    comfy.timings["cancel and resume"] = time.monotonic() - started


def _jobs_cancel_routes(comfy) -> dict[str, object]:
    """{route: its answer, or the HTTP status that refused it} for ComfyUI's jobs-API cancels (v0.26+), asked with
    ids that match no job (a no-op where the routes exist). Detects the capability instead of reading a version."""
    from support.comfy_server import ServerError

    answers: dict[str, object] = {}
    for route, body in (("/api/jobs/00000000-0000-4000-8000-000000000000/cancel", {}),
                        ("/api/jobs/cancel", {"job_ids": ["00000000-0000-4000-8000-000000000000"]})):
        try:
            answers[route] = comfy.post(route, body)
        except ServerError as error:
            answers[route] = int(str(error).split(" -> ")[1].split(":")[0])
    return answers


def test_a_cancel_through_the_jobs_api_stops_training_as_interrupt_does(comfy):
    """ComfyUI v0.26+ cancels a job by id (POST /api/jobs/{id}/cancel, or a batch: POST /api/jobs/cancel): a running
    one through the same interrupt as /interrupt, so training stops with a checkpoint, the message and a working
    resume hint. On a host without the routes (v0.8) the test asserts they are absent, both of them, rather than
    skipping: a host that has only one of them, or answers them otherwise, fails here."""
    answers = _jobs_cancel_routes(comfy)
    if all(answer in (404, 405) for answer in answers.values()):
        return  # v0.8: no jobs API; /interrupt (the test above) is the only way to cancel
    assert all(answer == {"cancelled": False} for answer in answers.values()), answers
    _needs_the_dataset(comfy)
    started = time.monotonic()
    prompt_id, log_path = _train_until_a_step(comfy, "ipa_jobs_cancel")
    assert comfy.post(f"/api/jobs/{prompt_id}/cancel") == {"cancelled": True}
    entry = comfy.wait(prompt_id, timeout=180)
    checkpoint = _assert_stopped_with_a_checkpoint(comfy, entry, log_path, "ipa_jobs_cancel")
    _assert_resume_finishes(comfy, checkpoint, log_path, "ipa_jobs_cancel")
    # the batch route ("cancel all" in the queue panel) the same way
    prompt_id, log_path = _train_until_a_step(comfy, "ipa_jobs_batch")
    assert comfy.post("/api/jobs/cancel", {"job_ids": [prompt_id]}) == {"cancelled": True}
    _assert_stopped_with_a_checkpoint(comfy, comfy.wait(prompt_id, timeout=180), log_path, "ipa_jobs_batch")
    comfy.timings["jobs API cancel"] = time.monotonic() - started
