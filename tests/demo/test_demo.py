"""`python -m ipa_train demo` end to end (the study world's pretrained pipeline -> hand score -> dataset -> two
torchrun ranks -> LoRA -> report), its option checks, and the command dispatcher."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from ipa_train.__main__ import main
from ipa_train.data.manifest import read_manifest
from ipa_train.data.samples import load_sample
from ipa_train.demo import run as demo
from ipa_train.fileio import load_safetensors
from ipa_train.study import models
from support.trainer_support.faulty_trainer import launch_through_it

LOG2 = math.log(2)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One small run shared by the assertions: 4 candidates (1 preferred) and 2 held-out seeds, 3 denoising steps,
    12 training steps on two ranks. The trainer runs as a real `torchrun ... -m ipa_train.train` subprocess."""
    out = tmp_path_factory.mktemp("demo")
    import io
    from contextlib import redirect_stdout

    stdout = io.StringIO()
    with redirect_stdout(stdout):
        code = main(["demo", "--output", str(out), "--candidates", "4", "--preferred", "1", "--eval-seeds", "2", "--steps", "12",
                     "--sampling-steps", "3", "--nproc", "2"])
    assert code == 0
    return out, stdout.getvalue(), json.loads((out / "report" / "metrics.json").read_text())


def test_demo_writes_the_dataset_with_the_preferred_count(demo_run):
    out, stdout, metrics = demo_run
    dataset_dir = out / "dataset" / demo.DATASET_NAME
    entries = read_manifest(dataset_dir)
    assert sorted(e["status"] for e in entries) == ["preferred", "rejected", "rejected", "rejected"]
    # the rule: the best hand score (most good hands, then the lowest hand error) is the preferred one
    best = sorted(metrics["candidates"], key=lambda c: (-c["good_hand_rate_before"], c["hand_error_before"], c["seed"]))
    assert [c["status"] for c in best] == ["preferred", "rejected", "rejected", "rejected"]
    tensors, meta = load_sample(dataset_dir, best[0]["sample_id"])
    assert tuple(tensors.latent.shape) == (16, 4, 16, 16) and tensors.ref_frames == 1  # 9 frames at 128x128 + the reference image
    assert tuple(tensors.vace_context.shape) == (96, 4, 16, 16) and tuple(tensors.hand_mask.shape) == (1, 3, 16, 16)
    assert 0 < float(tensors.hand_mask.mean()) < 1 and tensors.text_embedding.shape == (models.TEXT_TOKENS, 32)
    assert meta["source"] == "ipa_demo" and len(meta["driving_pose"]) == 9 and meta["hand_boxes"]
    assert meta["good_hand_rate"] == best[0]["good_hand_rate_before"]
    assert (dataset_dir / "samples" / best[0]["sample_id"] / "preview.webp").is_file()
    assert str(dataset_dir) in stdout
    rates = metrics["good_hand_rate"]
    hands = [r for c in metrics["candidates"] for r in [c["good_hand_rate_before"]]]
    assert rates["candidates_before"] == pytest.approx(sum(hands) / len(hands))
    assert set(rates) == {"candidates_before", "candidates_after", "held_out_seeds_before", "held_out_seeds_after"}
    assert len(metrics["held_out_seeds"]) == 2 and f"{rates['candidates_before']:.2f} -> {rates['candidates_after']:.2f}" in stdout


def test_stored_context_is_what_the_pipeline_helpers_build_from_the_control_video(demo_run):
    """The VACE context recorded from the transformer's input equals diffusers' own helpers on the same inputs
    (control video, all-ones mask, reference image), with the reference latent in front and a zero mask there."""
    out, _, metrics = demo_run
    from ipa_train.study.pretrain_transformer import condition
    from ipa_train.study.world import WorldVideo

    world = metrics["world"]
    video = WorldVideo(pose_seed=world["pose_seed"], body_color=world["body_color"], hands=("good", "good"))
    pipe = models.build_pipeline(models.load_transformer(), models.load_vae())
    expected = condition(pipe, video)[0]
    tensors, _ = load_sample(out / "dataset" / demo.DATASET_NAME, metrics["candidates"][0]["sample_id"])
    assert torch.equal(tensors.vace_context, expected)
    assert float(tensors.vace_context[32:, 0].abs().max()) == 0 and float(tensors.vace_context[32:, 1:].min()) == 1


def test_demo_trains_on_two_ranks_and_writes_a_native_lora(demo_run):
    out, stdout, metrics = demo_run
    training = metrics["training"]
    assert training["world_size"] == 2 and training["steps"] == 12 and len(training["history"]) == 12
    assert training["first_loss"] == pytest.approx(LOG2, abs=1e-6)  # policy == reference at step 1
    assert training["final_ipa_gap"] > 0
    assert metrics["evaluation"]["ipa_gap_preferred"] > 0
    run_json = json.loads((out / "training" / "run.json").read_text())
    assert run_json["objective"] == "ipa" and run_json["base_model"].endswith(models.TRANSFORMER_FILE)
    lora_path = out / "training" / f"{demo.LORA_NAME}.safetensors"
    tensors, header = load_safetensors(lora_path)
    assert set(tensors) == {f"diffusion_model.blocks.{b}.self_attn.{m}.{part}" for b in range(models.TRANSFORMER_CONFIG["num_layers"]) for m in "qkv"
                            for part in ("lora_A.weight", "lora_B.weight", "alpha")}
    assert any(float(v.abs().max()) > 0 for k, v in tensors.items() if k.endswith("lora_B.weight"))
    assert header["ipa.objective"] == "ipa" and header["ipa.steps"] == "12" and header["ipa.dataset_size"] == "1"
    assert header["ipa.base_model"] == models.TRANSFORMER_FILE and header["ipa.rank"] == "16"
    assert str(lora_path) in stdout


def test_demo_report_has_curves_frames_and_masks(demo_run):
    out, stdout, metrics = demo_run
    report = out / "report"
    for name in ("training_curves.png", "hands_before_after.png", "before_after.png", "hand_masks.png"):
        with Image.open(report / name) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 100
            low, high = image.convert("L").getextrema()
            assert high - low > 100, name  # drawn, not blank
        assert str(report / name) in stdout
    frames, header = load_safetensors(report / "frames.safetensors")
    assert frames["before"].shape == frames["after"].shape == (4, 9, 128, 128, 3)
    assert json.loads(header["seeds"]) == [0, 1, 2, 3]
    assert float((frames["after"] - frames["before"]).abs().max()) > 1e-3  # the LoRA changed the samples
    assert all(c["frames_mean_abs_change"] > 0 for c in metrics["candidates"])
    assert not [p for p in out.rglob("*.tmp")]


def test_bad_options_and_foreign_output_folders_are_refused(tmp_path, capsys):
    assert main(["demo", "--candidates", "1", "--eval-seeds", "-1", "--steps", "0"]) == 1
    err = capsys.readouterr().err
    assert "--candidates 1: need at least 2" in err and "--eval-seeds -1: must be >= 0" in err and "--steps 0: must be >= 1" in err
    assert main(["demo", "--candidates", "4", "--preferred", "4"]) == 1
    assert "--preferred 4: must be 1..3" in capsys.readouterr().err
    assert main(["demo", "--output", str(tmp_path / "out"), "--weights", str(tmp_path / "nowhere")]) == 1
    assert "run `python -m ipa_train.study pretrain`" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--output", str(tmp_path)]) == 1
    assert "is not empty and is not a previous demo output" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_failing_trainer_is_reported_with_its_message(tmp_path, capsys, monkeypatch):
    launch_through_it(monkeypatch, fault="rank=0,step=1")  # the trainer, failing at the start of step 1
    args = ["demo", "--output", str(tmp_path), "--candidates", "2", "--eval-seeds", "0", "--steps", "2", "--sampling-steps", "1", "--nproc", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "training failed (exit status 1" in err and "\nrank 0: RuntimeError: injected fault on rank 0 at step 1" in err
    assert str(tmp_path / "training" / "train.log") in err
    assert not (tmp_path / "report").exists()


def test_a_previous_demo_output_is_replaced(tmp_path):
    demo.prepare_output(tmp_path)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "old.png").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("not ours")
    demo.prepare_output(tmp_path)
    assert not (tmp_path / "report").exists() and (tmp_path / "keep.txt").exists() and (tmp_path / demo.MARKER).is_file()


def test_dispatcher_lists_commands_and_refuses_unknown_ones(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
    assert main(["train-everything"]) == 2
    assert "unknown command 'train-everything'" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "ipa_train", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout
