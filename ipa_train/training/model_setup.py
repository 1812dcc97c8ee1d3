"""The model a run trains: the frozen base (loaded or given), an optional frozen ``init_lora`` as the reference's
starting point, the trained LoRA (fp32), gradient checkpointing, and FSDP2 sharding when asked for."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch

from . import lora as lora_setup
from .config import ConfigError, RunConfig
from .distributed import Dist


def build_model(config: RunConfig, dtype: torch.dtype, compute_dtype: Optional[torch.dtype] = None):
    """The frozen base: ``dtype`` storage; fp8 files as stored and, with ``base_precision: "fp8"``, a single file's
    block linears quantised while it streams in (the tiny model and folders are quantised by the trainer, after their
    fingerprint), dequantised to ``compute_dtype`` outside autocast."""
    if config.base_model == "tiny":
        from ..wan.model import build_tiny_transformer

        model = build_tiny_transformer(seed=0)
        return model if dtype == torch.float32 else model.to(dtype)
    path = Path(config.base_model)
    if not path.exists():
        raise ConfigError(f"base_model {path} does not exist; give a Wan2.1-VACE .safetensors file, a diffusers folder, or \"tiny\"")
    from ..wan.model import load_transformer  # single-file and diffusers-folder loading

    precision = config.base_precision if path.is_file() else "bf16"
    return load_transformer(str(path), torch_dtype=dtype, vace_module=config.vace_module, base_precision=precision,
                            compute_dtype=compute_dtype)


def load_init_lora(path: str):
    """(diffusers-named state dict, alphas per module) of an existing LoRA in any supported layout."""
    if not Path(path).is_file():
        raise ConfigError(f"init_lora {path} does not exist; give a LoRA .safetensors file")
    from ..wan.lora_io import load_lora_for_peft

    state_dict, alphas, _ = load_lora_for_peft(path)
    return state_dict, alphas


def save_comfy_lora(path: Path, peft_state_dict: dict, alpha: float, metadata: dict) -> None:
    from ..wan.lora_io import save_comfy_lora as save

    save(path, peft_state_dict, alpha=alpha, metadata=metadata)


def add_adapters(model, config: RunConfig, checkpointing_function=None) -> None:
    """Each ``init_lora`` at its strength (frozen, part of the reference) and the trained LoRA in fp32; seeded so
    every rank agrees."""
    torch.manual_seed(config.seed)  # identical LoRA initialisation on every rank
    for index, init in enumerate(config.init_loras):
        state_dict, alphas = load_init_lora(init.path)
        try:
            lora_setup.add_reference_lora(model, state_dict, alphas, strength=init.strength, index=index)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"init_lora {init.path} does not fit the base model {config.base_model}: {exc}") from exc
    lora_setup.add_trained_lora(model, config.rank, config.alpha, config.dropout, config.targets)
    for _, parameter in lora_setup.trained_parameters(model):
        parameter.data = parameter.data.float()
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing(checkpointing_function)  # None: torch's non-reentrant checkpoint


def shard_fsdp2(model, dist_info: Dist, autocast_dtype: Optional[torch.dtype]) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # The loss never modifies the model output in place, so FSDP2's warning about returning a view is moot.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(dist_info.device.type, (dist_info.world,))
    policy = MixedPrecisionPolicy(param_dtype=autocast_dtype, reduce_dtype=torch.float32) if autocast_dtype and dist_info.device.type == "cuda" else MixedPrecisionPolicy()
    for block in list(model.vace_blocks) + list(model.blocks):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
