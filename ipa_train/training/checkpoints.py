"""Checkpoint files: write (atomically: a staging folder renamed when complete), read back for resume, find the
newest complete one, prune old ones. A checkpoint ``checkpoints/step-N/`` holds the trained adapter (peft names), the
optimizer state (safetensors + JSON), the scheduler state, every rank's RNG state, the ComfyUI LoRA of that step
and ``state.json`` (written last: the step, the config and every other file with its size). Which folders count as
complete, and the crash-safe replacement of an existing ``step-N``, live in ``checkpoint_files``."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import __version__
from ..fileio import FileReadError, atomic_save_safetensors, atomic_write_json, load_safetensors, read_json
from ..jobs.checkpoint_files import (
    ADAPTER_FILE,
    CHECKPOINTS_DIR,
    OPTIMIZER_JSON,
    OPTIMIZER_TENSORS,
    SCHEDULER_JSON,
    STAGING_PREFIX,
    STATE_FILE,
    checkpoint_problem,
    complete_checkpoints,
    pick_checkpoint,
    prune_checkpoints,
    replace_checkpoint,
    write_listing,
)
from ..jobs.config import RunConfig
from ..wan.lora_targets import target_regex
from . import lora as lora_setup
from .distributed import Dist, full_tensor

log = logging.getLogger("ipa_train.train")


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says what to change."""


# ------------------------------------------------------------------------------------------------ optimizer state


def optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state dict (parameter-name keyed, as torch.distributed.checkpoint gives it) -> safetensors + JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for param_name, values in state.get("state", {}).items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param_name}::{key}"] = full_tensor(value).detach().to("cpu").contiguous()
            else:
                scalars.setdefault(param_name, {})[key] = value
    return tensors, {"param_groups": state.get("param_groups", []), "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[str, dict] = {}
    for flat, value in tensors.items():
        param_name, key = flat.rsplit("::", 1)
        state.setdefault(param_name, {})[key] = value
    for param_name, values in info.get("scalars", {}).items():
        state.setdefault(param_name, {}).update(values)
    groups = []
    for group in info["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def optimizer_state_api():
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

    return StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict


# ------------------------------------------------------------------------------------------------ finding


def resume_checkpoint(path: os.PathLike | str) -> Path:
    """What ``--resume path`` continues from: ``checkpoint_files.pick_checkpoint`` (the one choice of the newest
    complete checkpoint, the launcher's and the node's too), or a :class:`TrainingError` that says why there is none."""
    path = Path(path)
    found = pick_checkpoint(path)
    if found is not None:
        return found
    problem = checkpoint_problem(path) if (path / STATE_FILE).exists() or path.name.startswith("step-") else None
    if problem:
        older = [p for p in complete_checkpoints(path.parent) if p != path]
        hint = f"resume from {older[-1]} (the newest complete one)" if older else "start the run again without --resume"
        raise TrainingError(f"--resume {path}: the checkpoint is incomplete: {problem}; {hint}")
    raise TrainingError(f"--resume {path}: no complete checkpoint there (expected a folder with {STATE_FILE}, or an output "
                        f"folder with {CHECKPOINTS_DIR}/step-N)")


# ------------------------------------------------------------------------------------------------ writing


def write_checkpoint(
    output_dir: Path,
    step: int,
    dist_info: Dist,
    config: RunConfig,
    adapter: dict[str, torch.Tensor],
    optimizer_state: dict,
    scheduler_state: dict,
    write_lora: Callable[[Path], None],
    lora_name: str = "",
    listing: Optional[dict] = None,
) -> Path:
    """Writes ``checkpoints/step-<step>/``: every rank its RNG state, rank 0 the rest; all ranks call it. ``lora_name``:
    the LoRA's file name when it is not ``config.lora_name`` (one expert of two); ``listing``: more state.json fields."""
    root = output_dir / CHECKPOINTS_DIR
    final = root / f"step-{step}"
    staging = root / f"{STAGING_PREFIX}{step}"
    if dist_info.main:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    dist_info.barrier()
    rng = {"torch": torch.get_rng_state()}
    if dist_info.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(dist_info.device)
    atomic_save_safetensors(staging / f"rng-rank{dist_info.rank}.safetensors", rng)
    atomic_write_json(staging / f"rng-rank{dist_info.rank}.json", {"python": random.getstate()})
    dist_info.barrier()
    if dist_info.main:
        atomic_save_safetensors(staging / ADAPTER_FILE, adapter, {"adapter": lora_setup.TRAINED_ADAPTER})
        tensors, info = optimizer_to_files(optimizer_state)
        atomic_save_safetensors(staging / OPTIMIZER_TENSORS, tensors)
        atomic_write_json(staging / OPTIMIZER_JSON, info)
        atomic_write_json(staging / SCHEDULER_JSON, scheduler_state)
        write_lora(staging / f"{lora_name or config.lora_name}.safetensors")
        write_listing(staging, {"step": step, "world_size": dist_info.world, "config": config.to_dict(),
                                "pack_version": __version__, "time": time.time(), **(listing or {})})
        replace_checkpoint(staging, final)
        prune_checkpoints(root, config.keep_checkpoints)
    dist_info.barrier()
    return final


# ------------------------------------------------------------------------------------------------ reading


def _read(checkpoint: Path, name: str, tensors: bool = False):
    """One file of a checkpoint; an unreadable one is a :class:`TrainingError` that names it and the way out."""
    path = checkpoint / name
    try:
        return load_safetensors(path)[0] if tensors else read_json(path)
    except (FileReadError, OSError) as exc:
        older = [p for p in complete_checkpoints(checkpoint.parent) if p != checkpoint]
        hint = f"resume from {older[-1]} instead" if older else "start the run again without resume"
        raise TrainingError(f"checkpoint {checkpoint}: {exc}; {hint}") from None


def load_adapter(checkpoint: Path, model, config: RunConfig, step_offset: int = 0) -> int:
    """Loads the trained adapter of ``checkpoint`` into ``model``; returns the checkpoint's step (less ``step_offset``:
    the steps of an expert trained before this one)."""
    from peft import set_peft_model_state_dict

    state = _read(checkpoint, STATE_FILE)
    tensors = _read(checkpoint, ADAPTER_FILE, tensors=True)
    expected = lora_setup.trained_state_dict(model)
    if set(tensors) != set(expected):
        raise TrainingError(
            f"checkpoint {checkpoint} holds a LoRA with other layers or rank than this config "
            f"(rank {config.rank}, targets {config.targets}); resume with the run's own config"
        )
    for key, value in expected.items():
        if tensors[key].shape != value.shape:
            raise TrainingError(f"checkpoint {checkpoint}: {key} has shape {tuple(tensors[key].shape)}, this config gives {tuple(value.shape)} (rank changed?)")
    set_peft_model_state_dict(model, tensors, adapter_name=lora_setup.TRAINED_ADAPTER)
    lora_setup.freeze_all_but_trained(model)
    step = int(state["step"]) - step_offset
    if step >= config.steps:
        raise TrainingError(f"checkpoint {checkpoint} is already at step {step} of {config.steps}; raise --steps to train further")
    return step


def load_training_state(checkpoint: Path, model, optimizer, scheduler, dist_info: Dist, reseed: Callable[[], None]) -> None:
    """Optimizer, scheduler and this rank's RNG state; ``reseed`` when the checkpoint had another world size."""
    StateDictOptions, _, set_optimizer_state_dict = optimizer_state_api()
    tensors = _read(checkpoint, OPTIMIZER_TENSORS, tensors=True)
    state = optimizer_from_files(tensors, _read(checkpoint, OPTIMIZER_JSON))
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(_read(checkpoint, SCHEDULER_JSON))
    rng_file = checkpoint / f"rng-rank{dist_info.rank}.safetensors"
    saved = _read(checkpoint, STATE_FILE)
    if rng_file.is_file() and int(saved.get("world_size", 1)) == dist_info.world:
        rng = _read(checkpoint, rng_file.name, tensors=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and dist_info.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], dist_info.device)
        python_state = _read(checkpoint, f"rng-rank{dist_info.rank}.json")["python"]
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    else:
        log.warning("checkpoint was written by %s ranks, this run has %s: dropout RNG restarts from the seed", saved.get("world_size"), dist_info.world)
        reseed()


def lora_metadata(config: RunConfig, step: int, base_fingerprint: str, dataset_size: int, dataset_rejected: int, dataset_hash: str,
                  expert: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The ``ipa.*`` metadata written into every LoRA file (read back by IPA LoRA Loader); ``expert``: the keys of one
    expert of two (``experts.Phase.metadata``)."""
    c = config
    return {**(expert or {}),
        "ipa.objective": c.objective,
        "ipa.beta": str(c.beta),
        "ipa.hand_weight": str(c.hand_weight),
        "ipa.rank": str(c.rank),
        "ipa.alpha": str(c.effective_alpha),
        "ipa.targets": json.dumps(c.targets),
        "ipa.target_regex": target_regex(c.targets),
        "ipa.steps": str(step),
        "ipa.learning_rate": str(c.learning_rate),
        "ipa.base_model": Path(c.base_model).name,
        "ipa.base_model_hash": base_fingerprint,
        "ipa.dataset": Path(c.dataset).name,
        "ipa.dataset_size": str(dataset_size),
        "ipa.dataset_rejected": str(dataset_rejected),
        "ipa.dataset_hash": dataset_hash,
        "ipa.init_lora": ", ".join(Path(i.path).name + ("" if i.strength == 1.0 else f" @ {i.strength:g}") for i in c.init_loras),
        "ipa.vace_module": Path(c.vace_module).name if c.vace_module else "",
        "ipa.pack_version": __version__,
        "ipa.seed": str(c.seed),
    }
