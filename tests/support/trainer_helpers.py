"""Tiny synthetic datasets and run configs for the trainer tests (written with the real dataset module)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from ipa_train.data.samples import add_sample, create_dataset
from ipa_train.data.tensors import SampleTensors
from ipa_train.jobs.config import RunConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def one_thread():
    """The tiny model is far faster on one thread, above all on a shared machine. A test module switches it on for
    all its tests with ``pytestmark = pytest.mark.usefixtures("one_thread")`` after importing it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_sample(seed: int, frames: int = 3, h: int = 4, w: int = 6, text_dim: int = 32, ref_frames: int = 1) -> SampleTensors:
    g = torch.Generator().manual_seed(1000 + seed)
    return SampleTensors(
        latent=torch.randn(16, frames, h, w, generator=g),
        vace_context=torch.randn(96, frames, h, w, generator=g),
        text_embedding=torch.randn(8, text_dim, generator=g),
        hand_mask=(torch.rand(1, frames - ref_frames, h, w, generator=g) > 0.6).float(),
        ref_frames=ref_frames,
        vace_strength=1.0,
        text_length=6,
    )


def make_dataset(root: Path, preferred: int = 3, rejected: int = 0, pending: int = 0, name: str = "hands", **sample_kwargs) -> Path:
    path = create_dataset(root, name)
    seed = 0
    for status, count in (("preferred", preferred), ("rejected", rejected), ("pending", pending)):
        for _ in range(count):
            add_sample(path, make_sample(seed, **sample_kwargs), meta={"seed": seed, "prompt": "a dancer"}, status=status)
            seed += 1
    return path


def tiny_config(dataset: Path, output: Path, **overrides) -> RunConfig:
    values = dict(
        dataset=str(dataset), base_model="tiny", output_dir=str(output), rank=4, steps=4, learning_rate=1e-3,
        checkpoint_every=0, seed=0,
    )
    values.update(overrides)
    return RunConfig.from_dict(values)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)  # never a torchvision stand-in: diffusers would fail to import
    for name in ("IPA_TEST_FAULT", "IPA_TEST_SLOW_CHECKPOINT"):  # tests/support/trainer_support/faulty_trainer.py
        env.pop(name, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def python() -> str:
    return sys.executable


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie (dead, holding nothing, waiting for its new parent to reap it)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def fake_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    """A ``step-N`` folder the checkpoint picker accepts (the files resume needs, listed with their sizes), or with
    ``complete=False`` one that a killed writer could leave (state.json lists an adapter that is not there)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("adapter.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json"):
        if complete or name != "adapter.safetensors":
            (folder / name).write_text("{}")
        files[name] = 2
    (folder / "state.json").write_text(json.dumps({"step": step, "files": files}))
    return folder
