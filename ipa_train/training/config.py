"""The run configuration of the trainer: one JSON file (``run.json``) that the ComfyUI node writes and a user
can edit by hand, plus command-line overrides. Every value is checked before anything heavy happens, and a
bad value gets an error that names the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ..fileio import atomic_write_json

OBJECTIVES = ("ipa", "dpo", "sft")
LR_SCHEDULERS = ("constant", "cosine")
PRECISIONS = ("auto", "bf16", "fp32")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal", "shifted")
DISTRIBUTED = ("ddp", "fsdp2")
BASE_PRECISIONS = ("bf16", "fp8")
REQUIRED = ("dataset", "base_model", "output_dir")
STOP_FILE_NAME = "STOP"


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the key and what to change."""


@dataclass
class RunConfig:
    dataset: str = ""
    base_model: str = ""  # single file, diffusers folder, or "tiny" (embedded tiny random-weight model)
    output_dir: str = ""
    lora_name: str = "ipa_lora"
    objective: str = "ipa"
    beta: float = 600.0
    hand_weight: float = 10.0
    rank: int = 128
    alpha: Optional[float] = None  # None: alpha = rank (scale 1)
    dropout: float = 0.0
    targets: list = field(default_factory=lambda: ["self_attn_qkv"])
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    max_grad_norm: float = 1.0  # 0 disables clipping
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 250  # 0: only the final checkpoint
    keep_checkpoints: int = 0  # 0: keep all; N: keep the newest N
    timestep_sampling: str = "uniform"
    shift: float = 3.0  # for "shifted": t' = shift * t / (1 + (shift - 1) * t)
    logit_mean: float = 0.0  # for "logit_normal": t = sigmoid(N(logit_mean, logit_std))
    logit_std: float = 1.0
    dpo_time_weighting: bool = False
    init_lora: Optional[str] = None
    distributed: str = "ddp"
    stop_file: Optional[str] = None  # None: <output_dir>/STOP. Its appearance asks for a graceful stop (no signal needed)
    # Memory modes (README, Memory): how the frozen base is stored and where it and the checkpoints live.
    base_precision: str = "bf16"  # "fp8": block linears in float8_e4m3fn + per-channel scale, computed in bf16
    blocks_to_swap: int = 0  # blocks (VACE blocks count) whose weights stay in host memory, fetched per call
    activation_offload: bool = False  # checkpointed block inputs in host memory between forward and backward
    vram_budget_gb: Optional[float] = None  # the planner picks the cheapest settings that fit, or refuses

    # ------------------------------------------------------------------------------------------- construction

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "run config") -> "RunConfig":
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source} must be a JSON object with keys such as dataset, base_model, output_dir")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        config = cls(**{key: values[key] for key in values})
        config.validate(source)
        return config

    @classmethod
    def load(cls, path: os.PathLike | str) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"run config {path} does not exist; check the --config path (the keys are listed in README, Training)")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"run config {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: os.PathLike | str) -> Path:
        return atomic_write_json(path, self.to_dict())

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "command line") -> "RunConfig":
        """A copy with ``overrides`` applied (None values are ignored), validated again."""
        values = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in values:
                raise ConfigError(f"{source}: unknown key {key!r}; known keys: {sorted(values)}")
            values[key] = value
        return RunConfig.from_dict(values, source=source)

    # ------------------------------------------------------------------------------------------- validation

    @property
    def stop_path(self) -> Path:
        """The file whose existence asks the run to stop after the current step (see README, Training)."""
        return Path(self.stop_file) if self.stop_file else Path(self.output_dir) / STOP_FILE_NAME

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def validate(self, source: str = "run config") -> None:
        def fail(key: str, message: str) -> None:
            raise ConfigError(f"{source}: {key}={getattr(self, key)!r} {message}")

        for key in REQUIRED:
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                hint = ' or "tiny"' if key == "base_model" else ""
                raise ConfigError(f"{source}: {key} is required (a path{hint})")

        def number(key: str, integer: bool = False, minimum: float | None = None, exclusive: bool = False) -> None:
            value = getattr(self, key)
            ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok_type:
                fail(key, f"must be {'an integer' if integer else 'a number'}")
            if not integer:
                setattr(self, key, float(value))
            if minimum is not None and (value <= minimum if exclusive else value < minimum):
                fail(key, f"must be {'>' if exclusive else '>='} {minimum}")

        def choice(key: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, key) not in allowed:
                fail(key, f"is not one of {list(allowed)}")

        def flag(key: str) -> None:
            if not isinstance(getattr(self, key), bool):
                fail(key, "must be true or false")

        choice("objective", OBJECTIVES)
        choice("lr_scheduler", LR_SCHEDULERS)
        choice("precision", PRECISIONS)
        choice("timestep_sampling", TIMESTEP_SAMPLINGS)
        choice("distributed", DISTRIBUTED)
        number("beta", minimum=0)
        number("hand_weight", minimum=1)
        number("rank", integer=True, minimum=0, exclusive=True)
        if self.alpha is not None:
            number("alpha", minimum=0, exclusive=True)
        number("dropout", minimum=0)
        if self.dropout >= 1:
            fail("dropout", "must be below 1")
        number("learning_rate", minimum=0, exclusive=True)
        number("weight_decay", minimum=0)
        number("warmup_steps", integer=True, minimum=0)
        number("steps", integer=True, minimum=0, exclusive=True)
        number("batch_size", integer=True, minimum=0, exclusive=True)
        number("grad_accum", integer=True, minimum=0, exclusive=True)
        number("max_grad_norm", minimum=0)
        number("seed", integer=True, minimum=0)
        number("checkpoint_every", integer=True, minimum=0)
        number("keep_checkpoints", integer=True, minimum=0)
        number("shift", minimum=0, exclusive=True)
        number("logit_mean")
        number("logit_std", minimum=0, exclusive=True)
        flag("gradient_checkpointing")
        flag("dpo_time_weighting")
        choice("base_precision", BASE_PRECISIONS)
        number("blocks_to_swap", integer=True, minimum=0)
        flag("activation_offload")
        if self.vram_budget_gb is not None:
            number("vram_budget_gb", minimum=0, exclusive=True)
        if self.blocks_to_swap and self.distributed == "fsdp2":
            fail("blocks_to_swap", "cannot be combined with distributed 'fsdp2' (FSDP2 already shards the weights across "
                 "GPUs); use distributed 'ddp' with block swap, or fsdp2 without it")
        if self.base_precision == "fp8" and self.distributed == "fsdp2":
            fail("base_precision", "cannot be combined with distributed 'fsdp2' (FSDP2 gathers the weights in bf16 and "
                 "would drop their fp8 scales); use distributed 'ddp' with fp8 (and blocks_to_swap for 14B)")
        if (self.blocks_to_swap or self.activation_offload) and not self.gradient_checkpointing:
            key = "blocks_to_swap" if self.blocks_to_swap else "activation_offload"
            fail(key, "needs gradient_checkpointing: true (swapped weights and offloaded inputs are fetched again in the "
                 "checkpoint's recompute; without checkpointing the backward pass would keep them all on the GPU)")
        if not isinstance(self.lora_name, str) or not self.lora_name or "/" in self.lora_name or "\\" in self.lora_name or self.lora_name.startswith("."):
            fail("lora_name", "must be a plain file name without folders (the LoRA is written to output_dir/<lora_name>.safetensors)")
        if self.lora_name.endswith(".safetensors"):
            self.lora_name = self.lora_name[: -len(".safetensors")]
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if not isinstance(self.targets, list) or not self.targets or not all(isinstance(t, str) for t in self.targets):
            fail("targets", "must be a non-empty list of target names")
        from .lora import target_regex  # validates the names (clear error for unknown ones)

        try:
            target_regex(self.targets)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        if self.init_lora is not None and (not isinstance(self.init_lora, str) or not self.init_lora):
            fail("init_lora", "must be a LoRA file path or null")
        if self.stop_file is not None and (not isinstance(self.stop_file, str) or not self.stop_file.strip()):
            fail("stop_file", "must be a file path or null (null: <output_dir>/STOP)")
