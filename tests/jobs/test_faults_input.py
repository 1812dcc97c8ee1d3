"""Input that cannot work is refused before any step, and files that cannot be read are named: non-finite and
out-of-range numbers, bad LoRA names, a NaN loss, truncated and pickled files, upper-case suffixes; plus what
killed writers leave behind, and the modes of written files."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from ipa_train.data.garbage import GARBAGE_GRACE_S
from ipa_train.data.layout import MANIFEST, SAMPLES_DIR, TENSORS_FILE, DatasetError, validate_dataset_name
from ipa_train.data.manifest import read_manifest
from ipa_train.data.samples import create_dataset
from ipa_train.fileio import FileReadError, atomic_write_json, load_safetensors, read_json, validate_name
from ipa_train.jobs import checkpoint_files as cf
from ipa_train.jobs.config import INTEGER_KEYS, NUMBER_RANGES, ConfigError, RunConfig
from ipa_train.training import objective
from ipa_train.training.batching import load_training_data
from ipa_train.training.checkpoints import TrainingError, resume_checkpoint
from ipa_train.training.loop import clean_output_dir, train
from ipa_train.wan.lora_io import LoraFileError, read_lora_file, save_comfy_lora
from ipa_train.wan.model import ModelLoadError, build_tiny_transformer, load_transformer, save_original_wan_single_file
from support.trainer_helpers import make_dataset, tiny_config

torch.set_num_threads(1)
BASE = dict(dataset="d", base_model="tiny", output_dir="o")


# ------------------------------------------------------------------------------------------------ numbers and names


@pytest.mark.parametrize("key", sorted(NUMBER_RANGES))
def test_every_number_must_be_finite_and_in_range(key):
    low, high, exclusive = NUMBER_RANGES[key]
    bad = [low - 1, high * 2 + 1] + ([low] if exclusive else [])
    if key not in INTEGER_KEYS:
        bad += [math.nan, math.inf, -math.inf, 1e400]
    else:
        bad += [1.5, 10**400]
    for value in bad:
        with pytest.raises(ConfigError, match=rf"{key}=.* must be"):
            RunConfig.from_dict({**BASE, key: value})
    RunConfig.from_dict({**BASE, key: high})  # the edge itself is allowed


def test_infinity_in_run_json_is_refused(tmp_path):
    """``beta: Infinity`` used to train with a NaN loss from step 1 and write a NaN LoRA; ``dropout: NaN`` was
    taken as 0. JSON allows both literals, so they reach the config as floats."""
    for text, key in (('{"beta": Infinity}', "beta"), ('{"dropout": NaN}', "dropout"), ('{"learning_rate": -Infinity}', "learning_rate")):
        path = tmp_path / "run.json"
        path.write_text(json.dumps(BASE)[:-1] + ", " + text[1:])
        with pytest.raises(ConfigError, match=rf"{key}=(inf|nan|-inf) must be a finite number"):
            RunConfig.load(path)


@pytest.mark.parametrize("name, why", [
    ("x" * 300, "300 characters"), ("a\x00b", "invalid lora_name"), ("../up", "invalid lora_name"), ("with space", "invalid"),
    (".hidden", "invalid"), ("NUL", "Windows reserves it"), ("con.safetensors", "Windows reserves it"), ("", "invalid"), (7, "invalid"),
])
def test_bad_lora_names_are_refused_with_the_dataset_names_rule(name, why):
    with pytest.raises(ConfigError, match=why):
        RunConfig.from_dict({**BASE, "lora_name": name})
    if isinstance(name, str) and name.split(".")[0] and "NUL" not in name.upper():
        with pytest.raises(DatasetError):  # the same validator
            validate_dataset_name(name)


def test_a_bad_lora_name_fails_before_step_1(tmp_path):
    """It used to fail at the first checkpoint, after training steps, leaving checkpoints/.tmp-step-2 behind."""
    data = make_dataset(tmp_path / "ds", preferred=1)
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"dataset": str(data), "base_model": "tiny", "output_dir": str(tmp_path / "out"), "rank": 4,
                                    "steps": 4, "checkpoint_every": 2, "lora_name": "a" * 300}))
    events = []
    with pytest.raises(ConfigError, match="invalid lora_name"):
        train(RunConfig.load(run_json), callback=events.append)
    assert events == [] and not (tmp_path / "out").exists()
    assert validate_name("ipa_hands.v2-1", "lora_name") == "ipa_hands.v2-1"


def test_a_nan_loss_stops_the_run_before_the_update_and_nothing_nan_is_saved(tmp_path, monkeypatch):
    real_loss = objective.flow_ipa_loss
    calls = {"n": 0}

    def loss_that_diverges(*args, **kwargs):
        loss, metrics = real_loss(*args, **kwargs)
        calls["n"] += 1
        return (loss * math.nan, metrics) if calls["n"] >= 2 else (loss, metrics)

    monkeypatch.setattr(objective, "flow_ipa_loss", loss_that_diverges)
    data = make_dataset(tmp_path / "ds", preferred=2)
    events = []
    with pytest.raises(TrainingError, match=r"step 2: the loss is nan and the gradient norm nan .*no NaN weights were saved; "
                                                     r"the last checkpoint is .*step-1"):
        train(tiny_config(data, tmp_path / "out", steps=4, checkpoint_every=1), callback=events.append)
    assert [e["step"] for e in events if e["event"] == "step"] == [1]
    assert not (tmp_path / "out" / "ipa_lora.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step-1"]
    adapter, _ = load_safetensors(tmp_path / "out" / "checkpoints" / "step-1" / cf.ADAPTER_FILE)
    assert all(bool(torch.isfinite(value).all()) for value in adapter.values())


# ------------------------------------------------------------------------------------------------ unreadable files


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _pickle_into(path: Path) -> None:
    torch.save({"latent": torch.zeros(2)}, path)  # a torch pickle archive under the safetensors name


@pytest.mark.parametrize("damage, looks_like", [(_truncate, "is truncated"), (_pickle_into, "is a PyTorch pickle archive")])
def test_a_damaged_sample_is_named_with_what_to_do(tmp_path, damage, looks_like):
    data = make_dataset(tmp_path / "ds", preferred=2)
    sample_id = read_manifest(data)[1]["id"]
    tensors = data / SAMPLES_DIR / sample_id / TENSORS_FILE
    damage(tensors)
    with pytest.raises(DatasetError) as info:
        train(tiny_config(data, tmp_path / "out", steps=1))
    message = str(info.value)
    assert message.startswith(f"sample {sample_id}: {tensors} {looks_like}") and "delete this sample's folder" in message
    assert "SafetensorError" not in message and "invalid header" not in message


def test_a_damaged_checkpoint_on_resume_is_named_with_what_to_do(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=1)
    train(tiny_config(data, tmp_path / "out", steps=3, checkpoint_every=1))
    adapter = tmp_path / "out" / "checkpoints" / "step-2" / cf.ADAPTER_FILE
    _truncate(adapter)
    assert resume_checkpoint(tmp_path / "out") == tmp_path / "out" / "checkpoints" / "step-3"
    with pytest.raises(TrainingError, match=r"incomplete: adapter.safetensors in .* has .* bytes, state.json lists .*resume from .*step-3"):
        train(tiny_config(data, tmp_path / "out", steps=5), resume=str(adapter.parent))
    # a file damaged in place, with its listed size kept (bit rot, a bad copy): named, with the way out
    scheduler = tmp_path / "out" / "checkpoints" / "step-3" / cf.SCHEDULER_JSON
    scheduler.write_text("x" * scheduler.stat().st_size)
    with pytest.raises(TrainingError, match=rf"checkpoint .*step-3: {scheduler} is not valid JSON .*resume from .*step-1 instead"):
        train(tiny_config(data, tmp_path / "out", steps=5), resume=str(tmp_path / "out"))


def test_damaged_loras_are_named(tmp_path):
    good = tmp_path / "good.safetensors"
    save_comfy_lora(good, {"blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 8), "blocks.0.attn1.to_q.lora_B.weight": torch.ones(8, 2)}, 2.0)
    assert read_lora_file(good)[1].ok
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:100])
    pickled = tmp_path / "pickled.safetensors"
    _pickle_into(pickled)
    pt = tmp_path / "lora.pt"
    _pickle_into(pt)
    for path, message in ((truncated, "is truncated"), (pickled, "is a PyTorch pickle archive"), (pt, "only .safetensors LoRA files")):
        with pytest.raises(LoraFileError, match=message) as info:
            read_lora_file(path)
        assert path.name in str(info.value)
    upper = tmp_path / "GOOD.SAFETENSORS"
    upper.write_bytes(good.read_bytes())
    assert read_lora_file(upper)[1].ok


def test_damaged_json_is_named(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text('{"a": ')
    with pytest.raises(FileReadError, match=rf"{path} is not valid JSON \(line 1, column 7"):
        read_json(path)


def test_model_files_with_an_upper_case_suffix_load(tmp_path):
    """``*.SAFETENSORS`` made diffusers take its torch.load path ("Unable to load weights")."""
    model = build_tiny_transformer(seed=3)
    with pytest.warns(UserWarning, match="ComfyUI will not rebuild"):  # a diffusers-sized test model
        path = save_original_wan_single_file(model, tmp_path / "wan2.1_vace_tiny.SAFETENSORS")
    loaded = load_transformer(path)
    expected = model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    _truncate(path)
    with pytest.raises(ModelLoadError, match="wan2.1_vace_tiny.SAFETENSORS"):
        load_transformer(path)


# ------------------------------------------------------------------------------------------------ leftovers, modes


def _age(path: Path, seconds: float = 2 * GARBAGE_GRACE_S) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_opening_a_dataset_for_writing_removes_what_killed_writers_left(tmp_path):
    data = make_dataset(tmp_path, preferred=2, name="hands")
    samples = data / SAMPLES_DIR
    listed = [entry["id"] for entry in read_manifest(data)]
    for sample_id in listed:
        _age(samples / sample_id)  # old, but listed: kept
    stale_staging = samples / ".tmp-0123"
    (stale_staging).mkdir()
    (stale_staging / TENSORS_FILE).write_bytes(b"x" * 1000)
    _age(stale_staging)
    orphan = samples / "0123456789abcdef"  # complete, never listed: its writer died before the manifest update
    orphan.mkdir()
    (orphan / TENSORS_FILE).write_bytes(b"x")
    _age(orphan)
    fresh_orphan = samples / "fedcba9876543210"  # a writer that may be about to list it: kept
    fresh_orphan.mkdir()
    temp_file = data / f".{MANIFEST}.1a2b3c.tmp"
    temp_file.write_text("half a manifest")
    _age(temp_file)
    outside = tmp_path / "precious"
    outside.mkdir()
    _age(outside)
    os.symlink(outside, samples / ".tmp-link")  # never followed, never removed
    create_dataset(tmp_path, "hands")  # what IPA Mark Preferred does before adding samples
    left = sorted(p.name for p in samples.iterdir())
    assert left == sorted(listed + ["fedcba9876543210", ".tmp-link"])
    assert not temp_file.exists() and outside.is_dir()
    assert len(load_training_data(tiny_config(data, tmp_path / "o")).preferred) == 2


def test_a_run_start_cleans_its_checkpoint_folder(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=1)
    out = tmp_path / "out"
    train(tiny_config(data, out, steps=2, checkpoint_every=1))
    root = out / cf.CHECKPOINTS_DIR
    (root / ".tmp-step-9").mkdir()  # a writer killed mid-checkpoint
    (root / ".tmp-step-9" / cf.ADAPTER_FILE).write_bytes(b"half")
    (out / ".ipa_lora.safetensors.0f0f0f.tmp").write_bytes(b"half a LoRA")
    (root / ".state.json.abcdef.tmp").write_text("{")
    done = clean_output_dir(out)
    assert sorted(done["removed"]) == [".ipa_lora.safetensors.0f0f0f.tmp", ".state.json.abcdef.tmp", ".tmp-step-9"]
    assert sorted(p.name for p in root.iterdir()) == ["step-1", "step-2"] and all(cf.is_complete(p) for p in root.iterdir())


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    """mkstemp made every atomically written file 0600, whatever the umask (shared file systems, clusters)."""
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
        expected = os.stat(tmp_path / "plain.txt").st_mode & 0o777
        atomic_write_json(tmp_path / "run.json", {"a": 1})
        save_comfy_lora(tmp_path / "l.safetensors", {"blocks.0.attn1.to_q.lora_A.weight": torch.ones(1, 2),
                                                     "blocks.0.attn1.to_q.lora_B.weight": torch.ones(2, 1)}, 1.0)
        data = make_dataset(tmp_path / "ds", preferred=1)
        train(tiny_config(data, tmp_path / "out", steps=1))
    finally:
        os.umask(old)
    assert expected == 0o666 & ~umask
    written = [tmp_path / "run.json", tmp_path / "l.safetensors", data / MANIFEST, tmp_path / "out" / "ipa_lora.safetensors",
               *(tmp_path / "out" / "checkpoints" / "step-1").iterdir(), *next((data / SAMPLES_DIR).iterdir()).iterdir()]
    assert {str(p.name): oct(os.stat(p).st_mode & 0o777) for p in written} == {str(p.name): oct(expected) for p in written}
