"""Windows file semantics, imitated on any platform: a rename refused for a moment (antivirus, indexers), a target
that stays locked (a LoRA ComfyUI keeps memory-mapped), and checkpoint paths past MAX_PATH."""

from __future__ import annotations

import os

import pytest

from ipa_train import fileio
from ipa_train.jobs.checkpoint_files import check_checkpoint_paths, longest_checkpoint_path
from ipa_train.jobs.process_tree import MAX_PATH, LaunchRefused, Platform

WINDOWS = Platform(windows=True)


def _flaky_replace(monkeypatch, fails: int, only=None):
    """os.replace that raises PermissionError ``fails`` times (for targets ``only`` matches), then works."""
    real = os.replace
    calls = []

    def replace(source, target):
        calls.append(str(target))
        if (only is None or only(str(target))) and sum(1 for c in calls if only is None or only(c)) <= fails:
            raise PermissionError(13, "The process cannot access the file because it is being used by another process", str(target))
        return real(source, target)

    monkeypatch.setattr(fileio.os, "replace", replace)
    sleeps = []
    monkeypatch.setattr(fileio.time, "sleep", sleeps.append)
    return calls, sleeps


def test_a_rename_refused_twice_is_retried(tmp_path, monkeypatch):
    calls, sleeps = _flaky_replace(monkeypatch, fails=2)
    fileio.atomic_write_text(tmp_path / "a.json", "new")
    assert (tmp_path / "a.json").read_text() == "new"
    assert len(calls) == 3 and sleeps == [0.1, 0.3]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(fileio.TEMP_SUFFIX)]


def test_a_rename_refused_every_time_fails_after_about_two_seconds(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text("old")
    calls, sleeps = _flaky_replace(monkeypatch, fails=99)
    with pytest.raises(PermissionError):
        fileio.atomic_write_text(tmp_path / "a.json", "new")
    assert len(calls) == 5 and 1.5 <= sum(sleeps) <= 2.5
    assert (tmp_path / "a.json").read_text() == "old"  # untouched, and no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_install_keeps_the_previous_file_and_puts_the_new_one_in_place(tmp_path):
    source, target = tmp_path / "trained.safetensors", tmp_path / "loras" / "hands.safetensors"
    source.write_bytes(b"one")
    assert fileio.install_keeping_previous(source, target) == fileio.Installed(target, None, False)
    source.write_bytes(b"two")
    installed = fileio.install_keeping_previous(source, target)
    assert installed == fileio.Installed(target, target.with_name("hands_00001.safetensors"), False)
    assert target.read_bytes() == b"two" and installed.kept.read_bytes() == b"one"


def test_a_locked_target_keeps_the_new_file_under_the_next_kept_name(tmp_path, monkeypatch):
    """Windows cannot replace a memory-mapped file: the previous LoRA stays where it is, the new one is saved under
    the next free kept name, and no second name of the previous file is left behind."""
    source, target = tmp_path / "trained.safetensors", tmp_path / "hands.safetensors"
    target.write_bytes(b"loaded")
    target.with_name("hands_00001.safetensors").write_bytes(b"older")
    source.write_bytes(b"new")
    _flaky_replace(monkeypatch, fails=99, only=lambda path: path == str(target))
    installed = fileio.install_keeping_previous(source, target)
    assert installed.locked and installed.kept is None and installed.path == target.with_name("hands_00002.safetensors")
    assert installed.path.read_bytes() == b"new" and target.read_bytes() == b"loaded"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hands.safetensors", "hands_00001.safetensors", "hands_00002.safetensors",
                                                           "trained.safetensors"]


def test_the_longest_checkpoint_path_is_a_temporary_file_in_the_staging_folder(tmp_path):
    path = longest_checkpoint_path(tmp_path / "run", "a_long_lora_name_" * 4, steps=1000)
    folder = tmp_path / "run" / "checkpoints" / ".tmp-step-1000"
    assert os.path.dirname(path) == str(folder)
    name = os.path.basename(path)
    assert name.startswith(".a_long_lora_name_") and name.endswith(".safetensors." + "0" * 12 + fileio.TEMP_SUFFIX)
    # a one-letter name: the longest file is another one of the checkpoint (rank files count with their rank)
    short = os.path.basename(longest_checkpoint_path(tmp_path, "x", steps=5, ranks=16))
    assert len(short) >= len(".rng-rank15.safetensors.") + 12 + len(fileio.TEMP_SUFFIX)
    folder.mkdir(parents=True)
    real = fileio._temporary_beside(folder / "adapter.safetensors")
    assert len(os.path.basename(real)) == len(".adapter.safetensors." + "0" * 12 + fileio.TEMP_SUFFIX)  # the writer's own names


def test_checkpoint_paths_past_max_path_are_refused_on_windows_only(tmp_path):
    output = tmp_path / ("o" * max(1, 200 - len(str(tmp_path))))
    name = "n" * 60
    assert len(longest_checkpoint_path(output, name, steps=1000)) >= MAX_PATH
    with pytest.raises(LaunchRefused) as refused:
        check_checkpoint_paths(output, name, 1000, platform=WINDOWS)
    message = str(refused.value)
    assert "260" in message and "MAX_PATH" in message and "shorter lora_name" in message and "LongPathsEnabled" in message
    check_checkpoint_paths(output, name, 1000, platform=Platform(windows=False))
    check_checkpoint_paths(output, name, 1000, platform=Platform(windows=True, long_paths=True))
    short_output = tmp_path / "o"
    assert len(longest_checkpoint_path(short_output, "n", 1000)) < MAX_PATH
    check_checkpoint_paths(short_output, "n", 1000, platform=WINDOWS)  # a short path passes on Windows too
