"""The model a run trains: the frozen base (loaded or given, checked against the samples' sampling model), an optional
frozen ``init_lora`` as the reference's starting point, the trained LoRA (fp32), gradient checkpointing and the
memory modes, and FSDP2 sharding when asked for."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..choices import BasePrecision, Distributed
from ..jobs.config import ConfigError, RunConfig
from . import lora as lora_setup
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
    if is_animate_file(path):
        return _build_animate(config, path, dtype)
    from ..wan.model import load_transformer  # single-file and diffusers-folder loading

    precision = config.base_precision if path.is_file() else BasePrecision.BF16.value
    return load_transformer(str(path), torch_dtype=dtype, vace_module=config.vace_module, base_precision=precision,
                            compute_dtype=compute_dtype)


def is_animate_file(path: Path) -> bool:
    """A single safetensors file holding Wan2.2-Animate (read from its header only)."""
    from ..wan.animate import is_animate_weights
    from ..wan.model import read_checkpoint_header

    if not (path.is_file() and path.suffix.lower() == ".safetensors"):
        return False
    return is_animate_weights(read_checkpoint_header(path)[0])


def _build_animate(config: RunConfig, path: Path, dtype: torch.dtype):
    """Wan2.2-Animate (``WanAnimateTransformer3DModel``), with the memory modes verified on it; the others refused."""
    from ..wan.animate import load_animate_transformer
    from ..wan.model import ModelLoadError

    refused = []
    if config.base_precision == BasePrecision.FP8:
        refused.append("base_precision 'fp8' (use 'bf16'; blocks_to_swap and gradient checkpointing save memory instead)")
    if config.vace_module:
        refused.append("vace_module (Animate has no VACE blocks: leave it empty)")
    if config.distributed == Distributed.FSDP2:
        refused.append("distributed 'fsdp2' (not verified on Animate yet: use 'ddp')")
    if refused:
        raise ConfigError(f"base_model {path.name} is Wan2.2-Animate, which the trainer does not run with: " + "; ".join(refused))
    try:
        return load_animate_transformer(path, torch_dtype=dtype)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from exc


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
        if hasattr(model, "face_adapter"):  # Wan2.2-Animate: its face adapter runs outside the blocks' checkpoints
            from ..wan.animate import checkpoint_face_adapter

            checkpoint_face_adapter(model)


def shard_fsdp2(model, dist_info: Dist, autocast_dtype: Optional[torch.dtype]) -> None:
    """Shards the model (on the CPU, as loaded) block by block: ``fully_shard`` moves one block's weights to the
    device and keeps this rank's shard of them, so a GPU never holds more than its shards plus one block, and the
    host copy of each block is freed as it goes. The model must not be moved to the device before."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # The loss never modifies the model output in place, so FSDP2's warning about returning a view is moot.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(dist_info.device.type, (dist_info.world,))
    policy = MixedPrecisionPolicy(param_dtype=autocast_dtype, reduce_dtype=torch.float32) if autocast_dtype and dist_info.device.type == "cuda" else MixedPrecisionPolicy()
    for group in shard_groups(model):
        fully_shard(group, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)  # what is left: the output modulation table, the rope tables


def shard_groups(model) -> list:
    """FSDP2's units, each gathered whole only while it runs: every VACE and transformer block, and each other
    child that holds weights (the patch embeddings, the time and text embedders, the output projection: for 14B
    together as large as a block, and the root group stays gathered for the whole step)."""
    blocks = list(getattr(model, "vace_blocks", None) or []) + list(model.blocks)
    others = [child for name, child in model.named_children()
              if name not in ("blocks", "vace_blocks") and any(True for _ in child.parameters())]
    return blocks + others


@dataclass
class PreparedModel:
    model: Any  # the transformer with its adapters, on the run's device, in train mode
    base_fingerprint: str  # names the base in the LoRA's metadata
    start_step: int = 0  # the resumed checkpoint's step
    warnings: list = field(default_factory=list)  # base-identity mismatches allowed by allow_other_base


def prepare_model(config: RunConfig, data, dist_info: Dist, memory, autocast_dtype: Optional[torch.dtype], model=None,
                  resume_dir: Optional[Path] = None, step_offset: int = 0) -> PreparedModel:
    """Builds (or takes) the base, checks it against the samples' sampling model, stores it as the memory modes say,
    adds the adapters (and a resumed checkpoint's trained adapter) and moves it to the device.

    Base weights bf16 on a GPU with autocast (the adapters stay fp32). FSDP2 builds the base on the CPU in that
    precision and shards it before anything moves (``shard_fsdp2``): never the whole model on one GPU."""
    from ..wan.fingerprint import diffusers_model_fingerprint, file_weights_fingerprint, model_fingerprint
    from .batching import check_data_fits_model
    from .checkpoints import load_adapter
    from .reference_check import check_base_fingerprint

    device = dist_info.device
    if config.distributed == Distributed.FSDP2 and dist_info.active and str(config.base_model).lower().endswith(".gguf"):
        raise ConfigError("distributed 'fsdp2' cannot shard a GGUF base (its weights are packed quantised blocks); use 'ddp' "
                          "or a safetensors base_model")
    fsdp2 = config.distributed == Distributed.FSDP2 and dist_info.active
    base_dtype = torch.bfloat16 if (autocast_dtype is not None and device.type == "cuda") else torch.float32
    model = build_model(config, base_dtype, memory.dtype) if model is None else model  # a file streams into fp8
    check_data_fits_model(data, model)
    # The samples' base against this one, as stored: with base_precision fp8 the file's own weights (the run
    # quantises them on purpose; fp8 files are fp8 on both sides).
    streamed_fp8 = config.base_precision == BasePrecision.FP8 and Path(config.base_model).is_file()
    identity = (file_weights_fingerprint(config.base_model, config.vace_module) if streamed_fp8
                else diffusers_model_fingerprint(model))
    warnings_ = check_base_fingerprint(data, config, identity)
    if config.base_precision == BasePrecision.FP8:  # the tiny model, folders and given models: after the fingerprint
        from ..wan.frozen_linear import quantize_block_linears

        quantize_block_linears(model, memory.dtype)
    base_fingerprint = model_fingerprint(config.base_model, model)
    memory.prepare_layers(model)
    add_adapters(model, config, memory.checkpointing_function())
    start_step = load_adapter(resume_dir, model, config, step_offset) if resume_dir is not None else 0
    memory.attach(model)
    if fsdp2:
        shard_fsdp2(model, dist_info, autocast_dtype)  # moves each block's shard, never the whole model
    else:
        model.to(device)
    model.train()
    if not lora_setup.trained_parameters(model):
        raise ConfigError(f"LoRA targets {config.targets} give no trainable parameters")
    return PreparedModel(model, base_fingerprint, start_step, warnings_)


def gathered_adapter(model) -> dict[str, torch.Tensor]:
    """The trained adapter (peft names, full tensors on CPU). A collective under FSDP2: all ranks call it."""
    from peft import get_peft_model_state_dict

    from .distributed import full_tensor

    state = get_peft_model_state_dict(model, adapter_name=lora_setup.TRAINED_ADAPTER)
    return {key: full_tensor(value).detach().to("cpu").float().clone() for key, value in state.items()}
