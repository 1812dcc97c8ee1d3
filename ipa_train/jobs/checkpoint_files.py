"""Which checkpoint folders are complete, which one to resume from, and how one replaces another without a
moment where a half checkpoint could be taken for a whole one. Only file names, sizes and JSON: the launcher and
the ComfyUI node pick checkpoints with the very function the trainer uses, without loading anything.

A checkpoint ``checkpoints/step-N/`` is complete when its ``state.json`` (always written last) lists every other
file with its size and each is there with that size. Folders written by pack versions before the listing count
as complete when the files resume needs are all present and non-empty.

Replacing ``step-N`` (a resumed run reaching a step it had written before): the new checkpoint is written to
``.tmp-step-N``; the old one is renamed aside to ``.old-step-N``, the new one renamed in, the old one deleted.
A crash at any point leaves at least one complete copy, and :func:`recover_checkpoints` (run when a run starts)
puts it back in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

from ..fileio import TEMP_TOKEN_LENGTH, remove_stale_temp_files, temporary_name

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
ADAPTER_FILE = "adapter.safetensors"  # the trained adapter with peft/diffusers names (what resume loads)
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "scheduler.json"
RESUME_FILES = (ADAPTER_FILE, OPTIMIZER_TENSORS, OPTIMIZER_JSON, SCHEDULER_JSON)
STEP_PREFIX = "step-"
STAGING_PREFIX = ".tmp-step-"
ASIDE_PREFIX = ".old-step-"

log = logging.getLogger("ipa_train.train")

def step_of(path: Path, prefix: str = STEP_PREFIX) -> Optional[int]:
    name = path.name
    if name.startswith(prefix) and name[len(prefix):].isdigit():
        return int(name[len(prefix):])
    return None


def experts_in(checkpoint: Path) -> int:
    """How many experts the run of ``checkpoint`` trains one after the other (its steps run to steps x this): 2 for a
    two-expert ``both`` run (state.json ``experts``), else 1."""
    try:
        count = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8")).get("experts", 1)
    except (OSError, ValueError, AttributeError):
        return 1
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 1 else 1


# ------------------------------------------------------------------------------------------------ completeness


def file_listing(folder: Path, exclude: tuple[str, ...] = (STATE_FILE,)) -> dict[str, int]:
    """``{file name: size}`` of the plain files in ``folder`` (what ``state.json`` records)."""
    listing = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name not in exclude and entry.is_file(follow_symlinks=False):
            listing[entry.name] = entry.stat(follow_symlinks=False).st_size
    return listing


def checkpoint_problem(folder: os.PathLike | str) -> Optional[str]:
    """``None`` for a complete checkpoint folder, else what is wrong with it (for messages)."""
    folder = Path(folder)
    state_path = folder / STATE_FILE
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        with open(state_path, "r", encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return f"{folder} has no {STATE_FILE} (the write was interrupted)"
    except (OSError, ValueError) as exc:
        return f"{state_path} cannot be read ({exc})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{state_path} does not record a step"
    files = state.get("files")
    if files is None:  # written before checkpoints listed their files
        files = {name: None for name in RESUME_FILES}
    if not isinstance(files, dict) or not all(name in files for name in RESUME_FILES):
        return f"{state_path} does not list the files resume needs ({', '.join(RESUME_FILES)})"
    for name, size in files.items():
        path = folder / str(name)
        try:
            actual = os.stat(path).st_size
        except FileNotFoundError:
            return f"{path.name} is missing from {folder}"
        if (size is None and actual == 0) or (size is not None and actual != size):
            return f"{path.name} in {folder} has {actual:,} bytes, {STATE_FILE} lists {size if size is not None else 'a non-empty file'}"
    return None


def is_complete(folder: os.PathLike | str) -> bool:
    return checkpoint_problem(folder) is None


def _step_folders(root: Path) -> list[tuple[int, Path]]:
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        step = step_of(entry)
        if step is not None and entry.is_dir() and not entry.is_symlink():
            found.append((step, entry))
    return sorted(found)


def complete_checkpoints(root: os.PathLike | str) -> list[Path]:
    """The complete ``step-N`` folders directly in ``root``, oldest first."""
    return [path for _, path in _step_folders(Path(root)) if is_complete(path)]


def pick_checkpoint(path: os.PathLike | str) -> Optional[Path]:
    """The checkpoint to resume from: ``path`` itself when it is a complete checkpoint folder, else the newest
    complete ``step-N`` in ``path`` or in ``path/checkpoints`` (an output or run folder). ``None`` when there is
    none. Incomplete folders are never picked. The trainer, the launcher and the ComfyUI node all use this."""
    path = Path(path)
    if (path / STATE_FILE).exists() or step_of(path) is not None:
        return path if is_complete(path) else None
    for folder in (path / CHECKPOINTS_DIR, path):
        complete = complete_checkpoints(folder)
        if complete:
            return complete[-1]
    return None


# ------------------------------------------------------------------------------------------------ path lengths


def longest_checkpoint_path(output_dir: os.PathLike | str, lora_name: str, steps: int, ranks: int = 1) -> str:
    """The longest path a run's checkpoints will write: a temporary file of an atomic write
    (``.<name>.<12 hex>.tmp``, see ``fileio``) in the staging folder ``.tmp-step-<steps>`` (as long as
    ``.old-step-N`` and longer than ``step-N``), for every file a checkpoint holds."""
    folder = Path(os.path.abspath(output_dir)) / CHECKPOINTS_DIR / f"{STAGING_PREFIX}{max(int(steps), 1)}"
    last_rank = max(int(ranks), 1) - 1
    names = (*RESUME_FILES, STATE_FILE, f"{lora_name}.safetensors", f"rng-rank{last_rank}.safetensors", f"rng-rank{last_rank}.json")
    temporary = [temporary_name(name, "0" * TEMP_TOKEN_LENGTH) for name in names]
    return str(folder / max(temporary, key=len))


def check_checkpoint_paths(output_dir: os.PathLike | str, lora_name: str, steps: int, ranks: int = 1, platform=None) -> None:
    """Refuses (``process_tree.LaunchRefused``, naming the limit and what to do) a run whose checkpoint paths would
    pass Windows' MAX_PATH; a no-op elsewhere and where long paths are enabled."""
    from .process_tree import current_platform

    path = longest_checkpoint_path(output_dir, lora_name, steps, ranks)
    (platform or current_platform()).check_path_length(path, "a checkpoint file of this run")


# ------------------------------------------------------------------------------------------------ replacing


def write_listing(staging: Path, state: dict) -> None:
    """Writes ``state.json`` last, with every other file of ``staging`` and its size (what makes it complete)."""
    from ..fileio import atomic_write_json

    atomic_write_json(staging / STATE_FILE, {**state, "files": file_listing(staging)})


def replace_checkpoint(staging: Path, final: Path) -> Path:
    """Puts the complete folder ``staging`` in place as ``final``. An existing ``final`` is renamed aside first
    and deleted only once the new one is in place, so a crash never leaves ``final`` half there.

    The three moves are functions of their own, looked up when called, so the fault tests can wrap each one and
    kill the writer between them (tests/support/trainer_support/faulty_trainer.py)."""
    aside = final.with_name(ASIDE_PREFIX + final.name[len(STEP_PREFIX):])
    if aside.exists():
        shutil.rmtree(aside)  # left by an earlier crash after a complete new copy was in place
    if final.exists():
        move_aside(final, aside)
    move_in(staging, final)
    if aside.exists():
        delete_aside(aside)
    return final


def move_aside(final: Path, aside: Path) -> None:
    """Phase "aside": the old copy renamed out of the way (still complete, :func:`recover_checkpoints` restores it)."""
    os.rename(final, aside)


def move_in(staging: Path, final: Path) -> None:
    """Phase "in": the complete new copy renamed into place."""
    os.rename(staging, final)


def delete_aside(aside: Path) -> None:
    """Phase "deleted": the old copy removed once the new one is in place."""
    shutil.rmtree(aside)


def recover_checkpoints(root: os.PathLike | str) -> dict[str, list[str]]:
    """Run when a run starts (one process, before anything picks a checkpoint): finishes or undoes what a killed
    writer left in the checkpoints folder ``root``. A complete new copy (``.tmp-step-N``) whose ``step-N`` is
    missing or incomplete is renamed in; else a complete old copy (``.old-step-N``) is put back; every other
    staging or aside folder and every temporary file is deleted. Returns the names by what was done."""
    root = Path(root)
    done: dict[str, list[str]] = {"promoted": [], "restored": [], "removed": []}
    if not root.is_dir():
        return done
    for prefix, kind in ((STAGING_PREFIX, "promoted"), (ASIDE_PREFIX, "restored")):
        for entry in sorted(root.iterdir()):
            step = step_of(entry, prefix)
            if step is None or entry.is_symlink() or not entry.is_dir():
                continue
            final = root / f"{STEP_PREFIX}{step}"
            if is_complete(entry) and not is_complete(final):
                if final.exists():
                    shutil.rmtree(final)
                os.rename(entry, final)
                done[kind].append(final.name)
                log.warning("checkpoint %s was left half replaced by an interrupted run; %s", final,
                            "the new copy is now in place" if kind == "promoted" else "the previous copy is back in place")
            else:
                shutil.rmtree(entry, ignore_errors=True)
                done["removed"].append(entry.name)
    done["removed"] += [path.name for path in remove_stale_temp_files(root)]
    for _, folder in _step_folders(root):
        problem = checkpoint_problem(folder)
        if problem:
            log.warning("ignoring incomplete checkpoint %s: %s", folder, problem)
    return done


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keeps the newest ``keep`` complete checkpoints under ``root`` (0: all)."""
    if not keep:
        return
    for path in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
