"""The run's memory modes, decided and checked before any weight loads, then applied to the built model:

1. ``plan_memory``: the planner's prediction for this run (the largest sample, the LoRA, the device); with
   ``vram_budget_gb`` the cheapest settings that fit replace the requested ones (never fewer savings), or the run
   is refused naming a setting that would fit. A mode that cannot be honoured (more blocks to swap than the model
   has, fp8 on a device that cannot cast fp8, block swap or fp8 with a GGUF file, ``precision auto`` on a GPU
   before compute capability 8.0) is refused here too. The host check counts what this machine's ranks pin, against
   the RAM available now and, on Windows, the pinned-memory cap (``plan.HostMemory``).
2. ``MemoryModes``: swap layers prepared before the adapters, the checkpointing function (activation offload),
   the block swapper attached before the model moves to the GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..choices import BasePrecision, Distributed, Precision
from ..jobs.config import ConfigError, RunConfig
from .distributed import Dist

log = logging.getLogger("ipa_train.train")


def compute_dtype(config: RunConfig, device: torch.device) -> torch.dtype:
    """What the run computes in: bf16 under autocast (``auto`` on a GPU, or ``bf16``), else float32."""
    return torch.bfloat16 if config.precision == Precision.BF16 or (config.precision == Precision.AUTO and device.type == "cuda") else torch.float32


def _init_lora_params(config: RunConfig) -> int:
    """Elements of the frozen init LoRAs (from their headers; a file that cannot be read is refused later, by name)."""
    from ..wan.model import ModelLoadError, read_checkpoint_header

    total = 0
    for init in config.init_loras:
        try:
            shapes, _, _ = read_checkpoint_header(init.path)
        except (ModelLoadError, OSError):
            continue
        total += sum(int(torch.Size(shape).numel()) for key, shape in shapes.items() if "lora" in key.lower())
    return total


def device_capability(device: torch.device) -> Optional[tuple]:
    """The CUDA device's compute capability, None on CPU (the planner's attention backend and precision decisions)."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))


def check_precision(precision: str, device_type: str, capability: Optional[tuple], device_name: str = "this GPU") -> None:
    """``auto`` means bf16 only where bf16 attention has a fused kernel (compute capability 8.0 and newer): before
    that torch falls back to the math kernel, which builds the full S x S scores (about 28 GB for 1.3B at 81 frames
    of 832x480) while the plan would say it fits. There it is refused with what to do instead."""
    if precision != Precision.AUTO or device_type != "cuda" or capability is None or tuple(capability) >= (8, 0):
        return
    sm = ".".join(str(n) for n in capability)
    raise ConfigError(
        f"precision 'auto' picks bf16, which {device_name} (compute capability {sm}) cannot run with a fused attention kernel "
        "(bf16 flash and memory-efficient attention need 8.0: RTX 30xx, A100 or newer); its attention would build the full "
        "token x token matrix and run out of memory. Set precision 'fp32' (memory-efficient attention; the planner counts "
        "float32 activations, so pick a vram_budget_gb and it adds the savings that fit), or train on a GPU of compute "
        "capability 8.0 or newer")


def host_memory(config: RunConfig):
    """What this job may pin (``plan.HostMemory``): RAM available now, the machine's RAM, Windows' cap, and what the
    launching ComfyUI held (run.json, written by the node). None without psutil."""
    from ..memory.plan import GIB, HostMemory

    try:
        import psutil
    except ImportError:
        return None
    memory = psutil.virtual_memory()
    return HostMemory(available=int(memory.available), total=int(memory.total), windows=os.name == "nt",
                      comfyui_ram=int((config.comfyui_ram_gb or 0) * GIB), comfyui_pinned=int((config.comfyui_pinned_gb or 0) * GIB))


def run_shape(config: RunConfig, data, dist_info: Dist):
    from ..memory.plan import RunShape

    samples = [tensors for _, tensors, _ in data.preferred + data.rejected]
    largest = max(samples, key=lambda t: t.latent[0].numel())
    _, frames, height, width = largest.latent.shape
    return RunShape(
        frames=int(frames), height=int(height), width=int(width), batch_size=config.batch_size,
        text_tokens=max(int(t.text_embedding.shape[0]) for t in samples), rank=config.rank, targets=tuple(config.targets),
        objective=config.objective, init_lora_params=_init_lora_params(config), device=dist_info.device.type,
        precision=config.precision, distributed=config.distributed if dist_info.active else Distributed.DDP.value, world_size=dist_info.world,
        capability=device_capability(dist_info.device), local_ranks=_local_ranks(dist_info),
    )


def _local_ranks(dist_info: Dist) -> int:
    """Ranks on this machine (torchrun's LOCAL_WORLD_SIZE; the launcher runs every rank on one machine)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", dist_info.world)))
    except ValueError:
        return max(1, dist_info.world)


def plan_memory(config: RunConfig, data, dist_info: Dist, model_spec=None) -> tuple[RunConfig, Any]:
    """(the config with the settings to use, the ``MemoryPlan``). Raises ``ConfigError`` before any weight loads."""
    from ..memory.plan import GIB, PlanError, Settings, choose, describe_model
    from ..wan.frozen_linear import fp8_cast_problem

    if model_spec is None and config.base_model != "tiny" and not Path(config.base_model).exists():
        raise ConfigError(f"base_model {config.base_model} does not exist; give a Wan2.1-VACE .safetensors file, a diffusers "
                          "folder, or \"tiny\"")
    try:
        spec = model_spec or describe_model(config.base_model, config.vace_module)
        run = run_shape(config, data, dist_info)
        device_name = torch.cuda.get_device_name(dist_info.device) if run.capability is not None else "this GPU"
        check_precision(config.precision, dist_info.device.type, run.capability, device_name)
        requested = Settings(config.base_precision, config.blocks_to_swap, config.activation_offload, config.gradient_checkpointing)
        budget = int(config.vram_budget_gb * GIB) if config.vram_budget_gb else None
        plan = choose(spec, run, requested, budget, host_memory(config) if budget else None, fsdp2=config.distributed == Distributed.FSDP2)
    except PlanError as exc:
        raise ConfigError(str(exc)) from exc
    if spec.fp8_stored and config.distributed == Distributed.FSDP2:
        raise ConfigError(f"base_model {Path(config.base_model).name} stores fp8 weights, which distributed 'fsdp2' cannot "
                          "shard (it gathers weights in bf16 and would drop their scales); use distributed 'ddp' (with "
                          "blocks_to_swap for 14B), or the fp16 file with fsdp2")
    chosen = plan.settings
    if plan.reason:
        log.info("%s", plan.reason)
    if chosen != requested:
        config = config.with_overrides({"base_precision": chosen.base_precision, "blocks_to_swap": chosen.blocks_to_swap,
                                        "activation_offload": chosen.activation_offload,
                                        "gradient_checkpointing": chosen.gradient_checkpointing}, source="memory planner")
    if chosen.base_precision == BasePrecision.FP8 or spec.fp8_stored:
        problem = fp8_cast_problem(dist_info.device)
        if problem:
            what = "base_precision 'fp8'" if chosen.base_precision == BasePrecision.FP8 else f"the fp8 file {Path(config.base_model).name}"
            raise ConfigError(f"{what} needs fp8 casting on the training device, but {problem}. Use base_precision 'bf16' "
                              "with an fp16/bf16 model file, or another device")
    return config, plan


@dataclass
class MemoryModes:
    """The modes applied to one run's model (the order matters: see ``Trainer``)."""

    config: RunConfig
    device: torch.device
    dtype: torch.dtype
    swapped: list = field(default_factory=list)
    swapper: Any = None
    offload: Any = None

    def prepare_layers(self, model) -> None:
        """Before the adapters: the swapped blocks' linears become ``FrozenLinear`` (peft then wraps those)."""
        if self.config.blocks_to_swap:
            from ..memory.block_swap import prepare_swap_layers

            try:
                self.swapped = prepare_swap_layers(model, self.config.blocks_to_swap, self.dtype)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc

    def checkpointing_function(self):
        """diffusers' per-block checkpointing function: ours keeps the checkpoint inputs in host memory."""
        if not self.config.activation_offload:
            return None
        from ..memory.activation_offload import ActivationOffload

        self.offload = ActivationOffload(self.device)
        return self.offload

    def attach(self, model) -> None:
        """Before ``model.to(device)``: swapped weights go to (pinned) host memory and get their fetch hooks."""
        if self.swapped:
            from ..memory.block_swap import BlockSwapper

            self.swapper = BlockSwapper(model, self.swapped, self.device)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.swapper is not None:
            stats = self.swapper.stats
            out.update(swap_fetches=stats.fetched, swap_misses=stats.misses, swap_gb=round(stats.bytes_moved / 2**30, 3))
        if self.offload is not None:
            out.update(offloaded=self.offload.stats.packed, offload_gb=round(self.offload.stats.packed_bytes / 2**30, 3))
        return out
