"""IPA Train LoRA inside a real ComfyUI (COMFYUI_PATH), driving a stand-in trainer that follows the run contract:
progress bar with the live loss plot, outputs, LoRA saved under loras/ipa without overwriting, failure report,
cancel -> graceful stop with resume hint and no process group left, resume='latest'."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import requires_comfyui
from support.trainer_helpers import fake_checkpoint, process_gone

pytestmark = requires_comfyui

FAKE = str(Path(__file__).parents[1] / "support" / "fake_trainer_pkg")


@pytest.fixture()
def host(tmp_path, monkeypatch):
    from support.comfy_tiny import load_pack_cpu

    load_pack_cpu()
    import folder_paths
    from comfyui_ipa_pack.ipa_train.data.samples import add_sample, create_dataset
    from comfyui_ipa_pack.ipa_train.data.tensors import SampleTensors
    from comfyui_ipa_pack.nodes.paths import dataset_root
    from comfyui_ipa_pack.nodes.train_lora import IPATrainLoRA

    folder_paths.set_output_directory(str(tmp_path / "output"))
    for kind in ("diffusion_models", "loras"):
        folder = tmp_path / "models" / kind
        folder.mkdir(parents=True)
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind, ([str(folder)], folder_paths.supported_pt_extensions))
    (tmp_path / "models" / "diffusion_models" / "base.safetensors").write_bytes(b"not used by the stand-in trainer")
    folder_paths.filename_list_cache.clear()
    dataset_dir = create_dataset(dataset_root(), "hands")
    tensors = SampleTensors(latent=torch.zeros(16, 2, 2, 2), vace_context=torch.zeros(96, 2, 2, 2),
                            text_embedding=torch.ones(4, 8), hand_mask=torch.zeros(1, 1, 2, 2), ref_frames=1)
    add_sample(dataset_dir, tensors, status="preferred")
    monkeypatch.setattr(IPATrainLoRA, "trainer_module", "fake_trainer")
    monkeypatch.setattr(IPATrainLoRA, "extra_pythonpath", [FAKE])
    monkeypatch.setattr(IPATrainLoRA, "stop_grace_s", 30.0)
    return tmp_path


def _run(**overrides):
    from comfyui_ipa_pack.nodes.train_lora import IPATrainLoRA

    settings = dict(dataset="hands", base_model="base.safetensors", lora_name="hands_lora", objective="ipa", beta=600.0,
                    hand_weight=10.0, rank=4, alpha=4.0, learning_rate=1e-4, steps=5, batch_size=1, grad_accum=1, gpus="cpu",
                    precision="fp32", gradient_checkpointing=False, seed=0, checkpoint_every=2)
    settings.update(overrides)
    return IPATrainLoRA.execute(**settings)


def test_train_node_runs_reports_progress_and_saves(host, monkeypatch):
    import comfy.utils

    updates = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: updates.append((value, total, preview)))
    out = _run()
    name, image, metrics = out.args
    assert name == "ipa/hands_lora.safetensors"
    assert (host / "models" / "loras" / "ipa" / "hands_lora.safetensors").is_file()
    assert image.shape == (1, 300, 480, 3) and float(image.min()) < 0.5
    assert "loss: 0.14" in metrics and "saved as: loras/ipa/hands_lora.safetensors" in metrics
    assert [value for value, _, _ in updates] == [1, 2, 3, 4, 5] and updates[-1][1] == 5
    kind, plot, size = updates[-1][2]
    assert kind == "PNG" and plot.size == (480, 300)
    run_dirs = list((host / "output" / "ipa_runs").iterdir())
    config = json.loads((run_dirs[0] / "run.json").read_text())
    assert config["objective"] == "ipa" and config["dataset"].endswith("hands") and config["base_model"].endswith("base.safetensors")
    log = (run_dirs[0] / "train.log").read_text()
    started = json.loads(next(line[9:] for line in log.splitlines() if '"started"' in line))
    assert started["env_cuda"] == "" and started["alloc"] is None 
    # what ComfyUI held at launch reaches the trainer's host-memory check
    assert config["comfyui_ram_gb"] > 0.05 and config["comfyui_pinned_gb"] >= 0
    from comfyui_ipa_pack.ipa_train.jobs.launcher import PACKAGE_PARENT

    assert started["pythonpath"] == os.pathsep.join([PACKAGE_PARENT, FAKE])  # nothing of ComfyUI's path inherited
    # retraining the same name: the newest is what a workflow loading ipa/hands_lora.safetensors gets, and the
    # first one is kept (never overwritten) under the next free number
    lora = host / "models" / "loras" / "ipa" / "hands_lora.safetensors"
    first = lora.read_bytes()
    os.utime(lora, (1e9, 1e9))  # to tell the first file from the second below
    name, _, metrics = _run().args
    assert name == "ipa/hands_lora.safetensors" and lora.stat().st_mtime > 1e9
    kept = host / "models" / "loras" / "ipa" / "hands_lora_00001.safetensors"
    assert kept.read_bytes() == first and kept.stat().st_mtime == 1e9
    assert "the previous hands_lora.safetensors is kept as loras/ipa/hands_lora_00001.safetensors" in metrics
    _run()
    assert (host / "models" / "loras" / "ipa" / "hands_lora_00002.safetensors").is_file() and kept.stat().st_mtime == 1e9


def test_train_node_reports_the_failing_rank(host, monkeypatch):
    monkeypatch.setenv("IPA_FAKE_TRAINER_MODE", "fail")
    with pytest.raises(RuntimeError, match="rank 1: ValueError: the dataset has no preferred samples"):
        _run()


def test_train_node_refuses_bad_settings(host):
    with pytest.raises(ValueError, match="gpus="):
        _run(gpus="two")
    with pytest.raises(ValueError, match="dataset 'nothing_here' does not exist .*existing: hands"):
        _run(dataset="nothing_here")
    with pytest.raises(ValueError, match="needs rejected samples"):
        _run(objective="dpo")
    with pytest.raises(ValueError, match="no checkpoint"):
        _run(resume="latest")


def test_bad_names_fail_at_queue_time(host):
    """validate_inputs runs when ComfyUI validates the prompt, before any node executes."""
    from comfyui_ipa_pack.ipa_train.data.samples import create_dataset
    from comfyui_ipa_pack.nodes.paths import dataset_root
    from comfyui_ipa_pack.nodes.train_lora import IPATrainLoRA

    assert IPATrainLoRA.validate_inputs(dataset="hands", lora_name="x", gpus="auto") is True
    assert "does not exist" in IPATrainLoRA.validate_inputs(dataset="hnads", lora_name="x", gpus="auto")
    assert "invalid dataset name" in IPATrainLoRA.validate_inputs(dataset="../up", lora_name="x", gpus="auto")
    create_dataset(dataset_root(), "empty")
    assert "no preferred samples" in IPATrainLoRA.validate_inputs(dataset="empty", lora_name="x", gpus="auto")
    assert "invalid lora_name" in IPATrainLoRA.validate_inputs(dataset="hands", lora_name="a/b", gpus="auto")  # the shared name rule
    assert "gpus=" in IPATrainLoRA.validate_inputs(dataset="hands", lora_name="x", gpus="two")
    # the combo lists existing datasets; the default gpus works on this (GPU-less) machine as shipped
    inputs = {spec.id: spec for spec in IPATrainLoRA.define_schema().inputs}
    assert inputs["dataset"].options == ["empty", "hands"] and inputs["gpus"].default == "auto"
    assert _run(gpus=inputs["gpus"].default, steps=1).args[0] == "ipa/hands_lora.safetensors"


def test_cancel_stops_gracefully_then_resume(host, monkeypatch):
    import comfy.model_management
    from comfyui_ipa_pack.nodes.train_lora import TrainingStopped

    monkeypatch.setenv("IPA_FAKE_TRAINER_MODE", "slow")

    def cancel_after_first_step():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = list((host / "output" / "ipa_runs").glob("*/train.log"))
            if logs and '"event": "step"' in logs[0].read_text():
                comfy.model_management.interrupt_current_processing(True)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=cancel_after_first_step)
    thread.start()
    with pytest.raises(TrainingStopped, match=r"stopped at step \d+ \(cancelled\).*resume='latest'") as info:
        _run(steps=100)
    thread.join()
    # what ComfyUI's own nodes raise on cancel: the prompt is reported interrupted ("Cancelled"), not failed
    assert isinstance(info.value, comfy.model_management.InterruptProcessingException)
    assert not comfy.model_management.processing_interrupted()
    run_dir = next((host / "output" / "ipa_runs").iterdir())
    worker_pid = int((run_dir / "worker.pid").read_text())
    assert process_gone(worker_pid)
    checkpoint = next((run_dir / "checkpoints").iterdir())
    assert str(checkpoint) in str(info.value)
    stopped_step = int(checkpoint.name.split("-")[1])
    assert '"reason": "stop file"' in (run_dir / "train.log").read_text()  # the node asked through the file, no signal
    assert not (run_dir / "STOP").exists()

    monkeypatch.setenv("IPA_FAKE_TRAINER_MODE", "ok")
    name = _run(steps=stopped_step + 2, resume="latest").args[0]
    assert name == "ipa/hands_lora.safetensors"
    log = (run_dir / "train.log").read_text()
    assert f'"resume_step": {stopped_step}' in log


def test_node_inputs_are_trainer_config_keys(host):
    """Every training setting of the node is a trainer config key of the same name, with the same choices, and the
    config the node writes is one the trainer accepts (stop file included)."""
    import dataclasses

    from comfyui_ipa_pack.ipa_train.jobs import config as run_config
    from comfyui_ipa_pack.nodes.train_lora import IPATrainLoRA

    schema = IPATrainLoRA.define_schema()
    inputs = {spec.id: spec for spec in schema.inputs}
    launch_only = {"gpus", "resume"}  # how to run, not what to train: torchrun's process count and --resume
    folded = {"init_lora_strength"}  # the strength inside init_lora's {"path", "strength"}
    fields = {field.name for field in dataclasses.fields(run_config.RunConfig)}
    assert set(inputs) - launch_only - folded <= fields
    assert inputs["objective"].options == list(run_config.OBJECTIVES) and inputs["precision"].options == list(run_config.PRECISIONS)
    settings = {name: spec.default for name, spec in inputs.items() if name not in launch_only | {"dataset", "base_model"}}
    assert settings["vram_budget_gb"] == "auto"
    settings["vram_budget_gb"] = None  # the node resolves 'auto' (the GPU's free memory; None on CPU) before writing
    assert inputs["base_precision"].options == list(run_config.BASE_PRECISIONS)
    written = IPATrainLoRA.build_config(host / "ds", str(host / "base.safetensors"), host / "run", **settings)
    at_default = {"init_lora", "targets", "vace_module", "allow_other_base", "low_noise_model"}  # written only when set
    assert set(written) == set(inputs) - launch_only - folded - at_default | {"output_dir"}
    config = run_config.RunConfig.from_dict(written)
    assert config.stop_path == host / "run" / "STOP" and config.effective_alpha == settings["alpha"]


def test_resume_latest_picks_only_this_lora_names_runs(host, monkeypatch):
    from comfyui_ipa_pack.nodes import train_lora

    runs = host / "output" / "ipa_runs"
    for name in ("hands-v2-20260101-000000", "hands-20250101-000000", "hands-20250101-000000-2"):
        fake_checkpoint(runs / name / "checkpoints" / "step-4", 4)
    # newer, but half written (a killed writer) or empty: never picked
    fake_checkpoint(runs / "hands-20250101-000000-2" / "checkpoints" / "step-6", 6, complete=False)
    (runs / "hands-20250101-000000-2" / "checkpoints" / "step-8").mkdir()
    os.utime(runs / "hands-v2-20260101-000000", (2e9, 2e9))  # the newest folder, but another LoRA's run
    os.utime(runs / "hands-20250101-000000", (1e9, 1e9))
    os.utime(runs / "hands-20250101-000000-2", (1.5e9, 1.5e9))
    assert train_lora._resolve_resume("latest", "hands") == (runs / "hands-20250101-000000-2" / "checkpoints" / "step-4").resolve()
    monkeypatch.setattr(train_lora.time, "strftime", lambda fmt: "20260102-030405")  # two runs in the same second
    first = train_lora._new_run_dir("x")
    first.mkdir(parents=True)
    assert first.name == "x-20260102-030405" and train_lora._new_run_dir("x").name == "x-20260102-030405-2"


def test_resume_latest_on_a_complete_run_is_refused_at_queue_time(host, monkeypatch):
    """resume='latest' stayed in the widget after a resumed run finished: the next Run started the trainer (about
    10 s) only for it to fail with "already at step 1000 of 1000; raise --steps"."""
    from comfyui_ipa_pack.nodes import train_lora

    runs = host / "output" / "ipa_runs"
    fake_checkpoint(runs / "done-20250101-000000" / "checkpoints" / "step-5", 5)
    started = []
    monkeypatch.setattr(train_lora, "_free_host_memory", lambda: started.append(True))
    refusal = train_lora.IPATrainLoRA.validate_inputs(dataset="hands", lora_name="done", gpus="auto", steps=5, resume="latest")
    assert refusal == ("resume='latest': this run is complete (done-20250101-000000 is at step 5 of steps=5); clear resume to train "
                       "a new LoRA, or raise steps to train this one further")
    with pytest.raises(ValueError, match="this run is complete"):
        _run(lora_name="done", steps=5, resume="latest")
    assert not started  # refused before ComfyUI's models were unloaded
    assert train_lora.IPATrainLoRA.validate_inputs(dataset="hands", lora_name="done", gpus="auto", steps=6, resume="latest") is True
    assert train_lora.IPATrainLoRA.validate_inputs(dataset="hands", lora_name="done", gpus="auto", steps=5, resume="") is True


def test_resume_path_must_be_a_checkpoint_inside_the_runs_folder(host):
    from comfyui_ipa_pack.nodes import train_lora

    runs = host / "output" / "ipa_runs"
    checkpoint = fake_checkpoint(runs / "hands-20250101-000000" / "checkpoints" / "step-4", 4)
    (runs / "hands-20250101-000000" / "checkpoints" / "step-2").mkdir()
    half = fake_checkpoint(runs / "hands-20250101-000000" / "checkpoints" / "step-6", 6, complete=False)
    with pytest.raises(ValueError, match="incomplete .*adapter.safetensors is missing"):
        train_lora._resolve_resume(str(half), "hands")
    assert train_lora._resolve_resume(str(checkpoint), "hands") == checkpoint.resolve()
    # a run folder means its newest checkpoint; the run folder (parents[1]) then stays inside the runs folder
    assert train_lora._resolve_resume("hands-20250101-000000", "hands") == checkpoint.resolve()
    (runs / "other").mkdir()
    for bad in ("other", "hands-20250101-000000/checkpoints", "hands-20250101-000000/checkpoints/step-2"):
        with pytest.raises(ValueError, match="not a checkpoint folder"):
            train_lora._resolve_resume(bad, "hands")
    for bad in ("..", str(host), "/checkpoints/step-1", "../ipa_runs/../x/checkpoints/step-4"):
        with pytest.raises(ValueError, match="outside the runs folder .*use 'latest' or a checkpoint path the node reported"):
            train_lora._resolve_resume(bad, "hands")


def test_resume_never_follows_a_link_out_of_the_runs_folder(host):
    """A run folder or checkpoints folder that is a link to somewhere else is not resumed from (its run.json and new
    checkpoints would be written there), neither by path nor by 'latest'."""
    from comfyui_ipa_pack.nodes import train_lora

    runs = host / "output" / "ipa_runs"
    elsewhere = host / "elsewhere"
    fake_checkpoint(elsewhere / "hands-20250101-000000" / "checkpoints" / "step-4", 4)
    runs.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere / "hands-20250101-000000", runs / "hands-20250101-000000")
    (runs / "hands-20250101-000001").mkdir()
    os.symlink(elsewhere / "hands-20250101-000000" / "checkpoints", runs / "hands-20250101-000001" / "checkpoints")
    for resume in ("hands-20250101-000000", "hands-20250101-000000/checkpoints/step-4", "hands-20250101-000001",
                   str(runs / "hands-20250101-000001" / "checkpoints" / "step-4")):
        with pytest.raises(ValueError, match="outside the runs folder"):
            train_lora._resolve_resume(resume, "hands")
    with pytest.raises(ValueError, match="resume='latest': no checkpoint of a run named 'hands'"):
        train_lora._resolve_resume("latest", "hands")


def test_model_names_from_widgets_stay_inside_their_folders(host):
    """base_model, init_lora and vace_module: '..', absolute paths and links leading out of the folder are refused
    before anything runs."""
    from comfyui_ipa_pack.nodes import train_lora

    outside = host / "outside.safetensors"
    outside.write_bytes(b"x")
    os.symlink(outside, host / "models" / "diffusion_models" / "escape.safetensors")
    os.symlink(outside, host / "models" / "loras" / "escape.safetensors")
    for bad in ("../outside.safetensors", str(outside)):
        with pytest.raises(ValueError, match="base_model .* is not a file name in ComfyUI's diffusion_models folder"):
            _run(base_model=bad)
    with pytest.raises(ValueError, match="base_model 'escape.safetensors' resolves to .*outside ComfyUI's diffusion_models folders"):
        _run(base_model="escape.safetensors")
    with pytest.raises(ValueError, match="init_lora 'escape.safetensors' resolves to .*outside ComfyUI's loras folders"):
        train_lora.reference_settings({"init_lora": "escape.safetensors"})
    with pytest.raises(ValueError, match="vace_module '../outside.safetensors' is not a file name"):
        train_lora.reference_settings({"vace_module": "../outside.safetensors"})
    assert not (host / "output" / "ipa_runs").exists()  # refused before a run folder was made


def test_checkpoint_paths_past_windows_max_path_are_refused_before_the_run(host, monkeypatch):
    from comfyui_ipa_pack.ipa_train.jobs import process_tree
    from comfyui_ipa_pack.nodes import train_lora

    started = []
    monkeypatch.setattr(train_lora, "_free_host_memory", lambda: started.append(True))
    monkeypatch.setattr(process_tree, "current_platform", lambda os_name=None: process_tree.Platform(windows=True))
    name = "n" * 128  # the longest lora_name: twice in the path (run folder and file), over 260 characters with the rest
    limit = "would be .* characters long .*Windows allows at most 259 \\(MAX_PATH 260\\) unless long paths are enabled. Use a shorter lora_name"
    refusal = train_lora.IPATrainLoRA.validate_inputs(dataset="hands", lora_name=name, gpus="cpu", steps=5, resume="")
    assert isinstance(refusal, str) and __import__("re").search(limit, refusal), refusal
    with pytest.raises(ValueError, match=limit):
        _run(lora_name=name)
    assert not started
    assert train_lora.IPATrainLoRA.validate_inputs(dataset="hands", lora_name="short", gpus="cpu", steps=5, resume="") is True
    monkeypatch.setattr(process_tree, "current_platform", lambda os_name=None: process_tree.Platform(windows=True, long_paths=True))
    assert train_lora.IPATrainLoRA.validate_inputs(dataset="hands", lora_name=name, gpus="cpu", steps=5, resume="") is True


def test_a_lora_that_stays_locked_is_saved_under_the_next_kept_name(host, monkeypatch):
    """Windows: the previous LoRA is still memory-mapped by something ComfyUI could not release; the new one is saved
    as <name>_NNNNN and the node says so."""
    from comfyui_ipa_pack.ipa_train import fileio

    _run()
    lora = host / "models" / "loras" / "ipa" / "hands_lora.safetensors"
    first = lora.read_bytes()
    real = os.replace

    def locked(source, target):
        if str(target) == str(lora):
            raise PermissionError(13, "being used by another process", str(target))
        return real(source, target)

    monkeypatch.setattr(fileio.os, "replace", locked)
    monkeypatch.setattr(fileio.time, "sleep", lambda s: None)
    name, _, metrics = _run().args
    assert name == "ipa/hands_lora_00001.safetensors" and lora.read_bytes() == first
    assert (host / "models" / "loras" / "ipa" / "hands_lora_00001.safetensors").is_file()
    assert "saved as: loras/ipa/hands_lora_00001.safetensors" in metrics
    assert ("WARNING: hands_lora.safetensors is in use (a loaded LoRA stays memory-mapped on Windows, or another program holds it "
            "open), so it could not be replaced: the new LoRA is saved as loras/ipa/hands_lora_00001.safetensors") in metrics


def test_gpu_ids_are_the_hosts_visible_devices(host, monkeypatch):
    """ComfyUI started with --cuda-device (CUDA_VISIBLE_DEVICES=3,5): gpu 1 is the host's second device, physical 5."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    _run(gpus="[1]", steps=1)
    run_dir = next((host / "output" / "ipa_runs").iterdir())
    log = (run_dir / "train.log").read_text()
    started = json.loads(next(line[9:] for line in log.splitlines() if '"started"' in line))
    assert started["env_cuda"] == "5"
    with pytest.raises(ValueError, match="only 2 GPU"):
        _run(gpus="[2]")


def test_models_kept_on_the_gpu_are_named_with_what_to_do(host, monkeypatch):
    """ComfyUI started with --highvram (or --gpu-only) keeps its models on the GPU when asked to unload them: the node
    says so, and what to do, instead of leaving the planner's "no memory setting fits" unexplained."""
    import comfy.model_management as mm
    from comfy.cli_args import args
    from comfyui_ipa_pack.nodes.train_lora import models_kept_on_gpu

    assert models_kept_on_gpu() == ""  # this host runs with --cpu: nothing is kept anywhere
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.HIGH_VRAM)
    monkeypatch.setattr(args, "highvram", True)
    note = models_kept_on_gpu()
    assert "--highvram" in note and "keeps its models on the GPU" in note and "restart ComfyUI without --highvram" in note
    monkeypatch.setattr(args, "highvram", False)
    monkeypatch.setattr(args, "gpu_only", True)
    assert "--gpu-only" in models_kept_on_gpu()


def test_case6_init_lora_with_strength_and_targets_reach_run_json(host):
    """Issue case 6: the node has init_lora (with strength) and targets inputs, with tooltips, and they reach the
    trainer's run.json in the form the trainer reads (the LoRA's full path and the sampling strength)."""
    import folder_paths
    from comfyui_ipa_pack.nodes.train_lora import IPATrainLoRA

    inputs = {spec.id: spec for spec in IPATrainLoRA.define_schema().inputs}
    for name in ("init_lora", "init_lora_strength", "targets", "vace_module", "allow_other_base"):
        assert inputs[name].optional and len(inputs[name].tooltip) > 40, name
    (host / "models" / "loras" / "hands_v1.safetensors").write_bytes(b"not read by the stand-in trainer")
    (host / "models" / "diffusion_models" / "vace_module.safetensors").write_bytes(b"not read either")
    folder_paths.filename_list_cache.clear()
    _run(init_lora="hands_v1.safetensors", init_lora_strength=0.5, targets="self_attn_qkv, ffn", vace_module="vace_module.safetensors",
         allow_other_base=True, steps=1)
    run_dir = max((host / "output" / "ipa_runs").iterdir(), key=lambda p: p.stat().st_mtime)
    config = json.loads((run_dir / "run.json").read_text())
    assert config["init_lora"] == [{"path": str(host / "models" / "loras" / "hands_v1.safetensors"), "strength": 0.5}]
    assert config["targets"] == ["self_attn_qkv", "ffn"] and config["allow_other_base"] is True
    assert config["vace_module"] == str(host / "models" / "diffusion_models" / "vace_module.safetensors")
    with pytest.raises(ValueError, match="unknown LoRA target"):
        _run(targets="self_attn_qkv, attention", steps=1)


def test_train_node_shows_the_root_cause_and_the_log(host, monkeypatch):
    """A trainer that cannot import its libraries: the dialog names the first error and where the full log is."""
    monkeypatch.setenv("IPA_FAKE_TRAINER_MODE", "broken_import")
    with pytest.raises(RuntimeError) as info:
        _run()
    message = str(info.value)
    run_dir = next((host / "output" / "ipa_runs").iterdir())
    assert message.startswith("IPA training failed: rank 0: RuntimeError: operator torchvision::nms does not exist"), message
    assert f"Full log: {run_dir / 'train.log'}" in message.splitlines()[2]
    assert "(it surfaced as ModuleNotFoundError: Could not import module 'BloomPreTrainedModel')" in message
    assert "what to do: torchvision in the trainer's Python" in message
    # the cause once; the traceback and the run config are in the log it names, not in the dialog
    assert message.count("operator torchvision::nms does not exist") == 1, message
    assert "Traceback" not in message and '"output_dir"' not in message and "the trainer's traceback and the run config are there" in message
    assert "Traceback" in (run_dir / "train.log").read_text()


def test_train_node_refuses_the_impossible_before_anything(host, monkeypatch):
    """Non-finite numbers, bad LoRA names and several GPUs on Windows: refused before ComfyUI's models are unloaded
    and before a run folder exists."""
    from comfyui_ipa_pack.ipa_train.jobs import launcher
    from comfyui_ipa_pack.ipa_train.jobs.process_tree import Platform
    from comfyui_ipa_pack.nodes import train_lora

    unloaded = []
    monkeypatch.setattr(train_lora, "_free_host_memory", lambda: unloaded.append(True))
    for settings, message in (
        (dict(beta=float("nan")), "beta=nan must be a finite number"),
        (dict(learning_rate=float("inf")), "learning_rate=inf must be a finite number"),
        (dict(hand_weight=float("-inf")), "hand_weight=-inf must be a finite number"),
        (dict(lora_name="a" * 300), "invalid lora_name 'aaaa.*300 characters"),
        (dict(lora_name="bad\x00name"), "invalid lora_name"),
    ):
        with pytest.raises(ValueError, match=message):
            _run(**settings)
    monkeypatch.setattr(launcher, "current_platform", lambda os_name=None: Platform(windows=True))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ValueError, match="training on 2 GPUs needs NCCL, which PyTorch does not provide on Windows"):
        _run(gpus="x2")
    assert unloaded == [] and not (host / "output" / "ipa_runs").exists()
    # the default on that Windows PC: one GPU, and the node says so (it is shown under the node and logged)
    gpu_ids, devices, processes, note = train_lora.IPATrainLoRA._devices("auto")
    assert gpu_ids == [0] and devices == ["0"] and processes == 1 and "GPU 0 only" in note


def test_node_widgets_stay_inside_the_trainers_ranges(host):
    """The node can never offer a number the trainer refuses."""
    from comfyui_ipa_pack.ipa_train.jobs.config import NUMBER_RANGES
    from comfyui_ipa_pack.nodes.train_lora import IPATrainLoRA

    for spec in IPATrainLoRA.define_schema().inputs:
        if spec.id in NUMBER_RANGES:
            low, high, exclusive = NUMBER_RANGES[spec.id]
            assert (spec.min > low if exclusive else spec.min >= low) and spec.max <= high, spec.id


def test_memory_inputs_reach_the_trainer_and_the_report(host):
    from comfyui_ipa_pack.nodes.train_lora import memory_report, resolve_vram_budget

    _run(base_precision="fp8", blocks_to_swap=3, activation_offload=True, gradient_checkpointing=True, vram_budget_gb="auto")
    (run_dir,) = list((host / "output" / "ipa_runs").iterdir())
    config = json.loads((run_dir / "run.json").read_text())
    assert (config["base_precision"], config["blocks_to_swap"], config["activation_offload"]) == ("fp8", 3, True)
    assert config["vram_budget_gb"] is None  # 'auto' on the CPU: no GPU to measure
    with pytest.raises(ValueError, match="vram_budget_gb='lots': write 'auto', 'none' or a number"):
        _run(vram_budget_gb="lots")
    with pytest.raises(ValueError, match="blocks_to_swap=2 needs gradient_checkpointing: true"):
        _run(blocks_to_swap=2, gradient_checkpointing=False)
    assert resolve_vram_budget(" 23.5 ", [0]) == 23.5 and resolve_vram_budget("none", [0]) is None and resolve_vram_budget("auto", []) is None
    started = {"memory": {"peak_gb": 21.234, "budget_gb": 23.5, "settings": {"base_precision": "fp8", "blocks_to_swap": 40,
                                                                              "activation_offload": True, "gradient_checkpointing": True}}}
    assert memory_report(started) == ("memory: predicted peak 21.23 GiB of 23.5 GiB (base fp8, blocks_to_swap 40, "
                                      "activation_offload on, gradient_checkpointing on)")
    assert memory_report({"event": "started"}) == ""


def test_both_experts_reach_run_json_and_both_loras_are_installed(host, monkeypatch):
    """Issue 21: expert and low_noise_model (a diffusion_models file, resolved inside its folder) reach run.json; a
    'both' run installs <name>_low and <name>_high under loras/ipa and says where; its progress counts both experts."""
    import comfy.utils
    import folder_paths
    from comfyui_ipa_pack.nodes.train_lora import IPATrainLoRA

    inputs = {spec.id: spec for spec in IPATrainLoRA.define_schema().inputs}
    assert list(inputs)[-2:] == ["expert", "low_noise_model"]  # last: saved workflows keep their widgets' positions
    assert inputs["expert"].options == ["low", "high", "both"] and inputs["expert"].default == "low" and inputs["expert"].optional
    assert inputs["low_noise_model"].options[0] == "none" and inputs["low_noise_model"].optional
    (host / "models" / "diffusion_models" / "wan2.2_fun_vace_low_noise_14B_fp16.safetensors").write_bytes(b"not read by the stand-in")
    folder_paths.filename_list_cache.clear()
    updates = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: updates.append((value, total)))
    name, _, metrics = _run(lora_name="a14b", expert="both", low_noise_model="wan2.2_fun_vace_low_noise_14B_fp16.safetensors", steps=2).args
    run_dir = max((host / "output" / "ipa_runs").iterdir(), key=lambda p: p.stat().st_mtime)
    config = json.loads((run_dir / "run.json").read_text())
    assert config["expert"] == "both"
    assert config["low_noise_model"] == str(host / "models" / "diffusion_models" / "wan2.2_fun_vace_low_noise_14B_fp16.safetensors")
    assert name == "ipa/a14b_low.safetensors"
    for expert in ("low", "high"):
        assert (host / "models" / "loras" / "ipa" / f"a14b_{expert}.safetensors").is_file()
    assert "saved as: loras/ipa/a14b_low.safetensors" in metrics and "also saved as: loras/ipa/a14b_high.safetensors" in metrics
    assert updates[-1] == (4, 4)
    # left at its defaults: expert low is written, low_noise_model is not
    _run(lora_name="single", steps=1)
    run_dir = max((host / "output" / "ipa_runs").iterdir(), key=lambda p: p.stat().st_mtime)
    config = json.loads((run_dir / "run.json").read_text())
    assert config["expert"] == "low" and "low_noise_model" not in config
    with pytest.raises(ValueError, match="low_noise_model"):
        _run(low_noise_model="../outside.safetensors", steps=1)


def test_resume_of_a_both_run_counts_both_experts(host):
    from comfyui_ipa_pack.nodes import train_lora

    runs = host / "output" / "ipa_runs"
    for step in (5, 10):
        folder = fake_checkpoint(runs / f"pair{step}-20250101-000000" / "checkpoints" / f"step-{step}", step)
        state = json.loads((folder / "state.json").read_text())
        (folder / "state.json").write_text(json.dumps({**state, "expert": "high" if step > 5 else "low", "experts": 2}))
    # step 5 of steps=5 per expert: the low expert is done, the high one is still to train
    assert train_lora.check_resume("latest", "pair5", 5) == (runs / "pair5-20250101-000000" / "checkpoints" / "step-5").resolve()
    with pytest.raises(ValueError, match=r"at step 10 of 10 \(steps=5 for each of 2 experts\)"):
        train_lora.check_resume("latest", "pair10", 5)


def test_two_expert_samples_without_the_low_noise_model_are_refused_before_unloading(host, monkeypatch):
    from comfyui_ipa_pack.ipa_train.data.samples import add_sample, create_dataset
    from comfyui_ipa_pack.ipa_train.data.tensors import SampleTensors
    from comfyui_ipa_pack.nodes import train_lora
    from comfyui_ipa_pack.nodes.paths import dataset_root

    folder = create_dataset(dataset_root(), "a14b_hands")
    record = {"base_fingerprint": "f", "patches": {}}
    settings = {"experts": {"high": record, "low": record}, "switch_step": 10, "switch_sigma": 0.9}
    tensors = SampleTensors(latent=torch.zeros(16, 2, 2, 2), vace_context=torch.zeros(96, 2, 2, 2),
                            text_embedding=torch.ones(4, 8), hand_mask=torch.zeros(1, 1, 2, 2), ref_frames=1)
    add_sample(folder, tensors, meta={"settings": settings, "source": "ipa_vace_sampler"}, status="preferred")
    started = []
    monkeypatch.setattr(train_lora, "_free_host_memory", lambda: started.append(True))
    for expert in ("low", "both"):
        with pytest.raises(ValueError, match=f"expert '{expert}' needs low_noise_model, the low-noise model file"):
            _run(dataset="a14b_hands", expert=expert, steps=1)
    assert not started
    _run(dataset="a14b_hands", expert="high", steps=1)  # the high-noise expert needs base_model only
    assert started
