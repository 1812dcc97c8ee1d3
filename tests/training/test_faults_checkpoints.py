"""Checkpoints under faults: a kill at any moment of a checkpoint replacement leaves a complete checkpoint that
everything picks (trainer, launcher, node: one function), a half-written folder is never picked, and a run start
puts a half-replaced checkpoint back in place."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ipa_train.fileio import load_safetensors
from ipa_train.jobs import checkpoint_files as cf
from ipa_train.training.checkpoints import TrainingError, resume_checkpoint
from ipa_train.training.loop import train
from support.trainer_helpers import REPO_ROOT, fake_checkpoint, make_dataset, subprocess_env, tiny_config
from support.trainer_support.faulty_trainer import MODULE as FAULTY
from support.trainer_support.faulty_trainer import faulty_env, report_phases

torch.set_num_threads(1)


def _write_version(root: Path, step: int, version: int) -> Path:
    """A complete checkpoint in staging, files of a size that tells the versions apart, listed by the real code."""
    staging = root / f"{cf.STAGING_PREFIX}{step}"
    staging.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(cf.RESUME_FILES + ("rng-rank0.safetensors", "lora.safetensors")):
        (staging / name).write_bytes(bytes([version % 251]) * (1000 * version + 10 * index + 1))
    cf.write_listing(staging, {"step": step, "version": version})
    return staging


def _replace_forever(root: str, phase, seed: int) -> None:
    """Child process: replaces step-5 again and again (the real code), slowed down between phases at random."""
    rng = random.Random(seed)

    def hook(name: str) -> None:
        phase.value = {"aside": 1, "in": 2, "deleted": 3}[name]
        time.sleep(rng.uniform(0.0, 0.004))

    report_phases(hook)
    version = 2
    while True:
        phase.value = 0
        staging = _write_version(Path(root), 5, version)
        cf.replace_checkpoint(staging, Path(root) / "step-5")
        version += 1


def test_a_kill_at_any_moment_of_a_replacement_leaves_a_complete_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    cf.replace_checkpoint(_write_version(root, 3, 1), root / "step-3")
    cf.replace_checkpoint(_write_version(root, 5, 1), root / "step-5")
    context = multiprocessing.get_context("fork")  # file operations only in the child: no torch work after the fork
    rng = random.Random(0)
    hit = {0: 0, 1: 0, 2: 0, 3: 0}
    for trial in range(40):
        phase = context.Value("i", -1)
        child = context.Process(target=_replace_forever, args=(str(root), phase, trial), daemon=True)
        child.start()
        target = trial % 4  # kill inside each window in turn: writing staging, moved aside, moved in, old deleted
        deadline = time.monotonic() + 20
        while phase.value != target and time.monotonic() < deadline:
            time.sleep(0.0005)
        if trial % 8 >= 4:
            time.sleep(rng.uniform(0, 0.003))  # random delays on top of the child's own
        hit[phase.value if phase.value in hit else 0] += 1
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        # Whatever was killed where: what the trainer, the launcher and the node pick is complete ...
        picked = cf.pick_checkpoint(tmp_path)
        assert picked is not None and cf.is_complete(picked), f"trial {trial}: picked {picked}"
        assert picked == resume_checkpoint(tmp_path)  # the trainer's --resume takes the same (the launcher and node call pick_checkpoint)
        # ... and a run start puts step-5 back (the new copy, or the old one), with nothing half done left over.
        cf.recover_checkpoints(root)
        assert cf.is_complete(root / "step-5") and cf.pick_checkpoint(tmp_path) == root / "step-5"
        assert sorted(p.name for p in root.iterdir()) == ["step-3", "step-5"]
    assert all(count >= 3 for count in hit.values()), hit  # every window of the replacement was hit


def test_incomplete_checkpoints_are_never_picked(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    fake_checkpoint(root / "step-2", 2)
    fake_checkpoint(root / "step-5", 5, complete=False)  # state.json lists an adapter that is not there
    (root / "step-7").mkdir()  # empty: what the old node picked
    truncated = fake_checkpoint(root / "step-6", 6)
    (truncated / "optimizer.json").write_text("{")  # shorter than listed
    for pick in (cf.pick_checkpoint, resume_checkpoint):
        assert pick(tmp_path / "run") == root / "step-2"
    assert cf.checkpoint_problem(root / "step-5") == f"adapter.safetensors is missing from {root / 'step-5'}"
    assert "has 1 bytes, state.json lists 2" in cf.checkpoint_problem(root / "step-6")
    with pytest.raises(TrainingError, match=r"incomplete: adapter.safetensors is missing.*resume from .*step-2"):
        resume_checkpoint(root / "step-5")


def test_killed_while_replacing_a_real_checkpoint_then_resume_is_exact(tmp_path):
    """The issue's scenario with the real trainer: resume into the same run folder from step-1, which rewrites
    step-2; SIGKILL between moving the old step-2 aside and moving the new one in. The next run resumes from a
    complete step-2 and ends bit-identical to a run that was never interrupted."""
    data = make_dataset(tmp_path / "ds", preferred=2)
    straight = train(tiny_config(data, tmp_path / "straight", steps=3, checkpoint_every=1))
    config = tiny_config(data, tmp_path / "out", steps=3, checkpoint_every=1)
    train(config)
    config.save(tmp_path / "run.json")
    env = faulty_env(subprocess_env(), slow_checkpoint=30)  # the real trainer, pausing 30 s after each phase
    process = subprocess.Popen(
        [sys.executable, "-m", FAULTY, "--config", str(tmp_path / "run.json"), "--resume", str(tmp_path / "out" / "checkpoints" / "step-1")],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in process.stderr:
            if "checkpoint replacement: aside" in line:
                process.kill()  # SIGKILL: nothing of the trainer runs after this
                break
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    root = tmp_path / "out" / "checkpoints"
    assert not (root / "step-2").exists() and (root / ".old-step-2").is_dir()  # the window the old code lost
    assert cf.pick_checkpoint(tmp_path / "out") == root / "step-3"  # complete ones only, even before clean-up
    (root / "step-3" / cf.ADAPTER_FILE).unlink()  # and a half-written newest one is passed over
    assert cf.pick_checkpoint(tmp_path / "out") == root / "step-1"
    events = []
    result = train(config, resume=str(tmp_path / "out"), callback=events.append)
    assert events[0]["start_step"] == 2 and result.status == "finished"  # the run start put step-2 back
    assert not any(p.name.startswith(".") for p in root.iterdir())
    ours, _ = load_safetensors(result.lora_path)
    expected, _ = load_safetensors(straight.lora_path)
    assert ours.keys() == expected.keys() and all(torch.equal(ours[k], expected[k]) for k in ours)
    state = json.loads((root / "step-3" / "state.json").read_text())
    assert set(state["files"]) >= set(cf.RESUME_FILES) | {"rng-rank0.safetensors", "ipa_lora.safetensors"} and all(
        (root / "step-3" / name).stat().st_size == size for name, size in state["files"].items()
    )


def test_the_trainer_refuses_checkpoint_paths_past_windows_max_path_at_its_start(tmp_path, monkeypatch):
    """The trainer started by hand (or by the launcher) checks what the node checks, before loading anything; the
    longest path counts the ranks' files."""
    from ipa_train.jobs import process_tree
    from ipa_train.jobs.config import ConfigError

    output = tmp_path / ("o" * 120)
    config = tiny_config(tmp_path / "no_dataset_needed", output, lora_name="n" * 128, steps=1000)
    monkeypatch.setattr(process_tree, "current_platform", lambda os_name=None: process_tree.Platform(windows=True))
    with pytest.raises(ConfigError, match=r"a checkpoint file of this run would be \d+ characters long .*MAX_PATH 260"):
        train(config)
    assert not output.exists()  # refused before anything was written
    assert cf.longest_checkpoint_path(output, "n", 1000, ranks=16).endswith(".rng-rank15.safetensors.000000000000.tmp")
