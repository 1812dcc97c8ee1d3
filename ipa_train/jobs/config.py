"""The run configuration of the trainer: one JSON file (``run.json``) that the ComfyUI node writes and a user
can edit by hand, plus command-line overrides. Every value is checked before anything heavy happens, and a
bad value gets an error that names the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ..fileio import InvalidNameError, atomic_write_json, validate_name
from .contract import STOP_FILE_NAME

OBJECTIVES = ("ipa", "dpo", "sft")
LR_SCHEDULERS = ("constant", "cosine")
PRECISIONS = ("auto", "bf16", "fp32")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal", "shifted")
DISTRIBUTED = ("ddp", "fsdp2")
BASE_PRECISIONS = ("bf16", "fp8")
REQUIRED = ("dataset", "base_model", "output_dir")

# Allowed range of every number: (minimum, maximum, minimum excluded). Values must also be finite: JSON allows
# NaN and Infinity, and a beta of Infinity trains NaN weights. The ComfyUI node's widgets stay inside these.
NUMBER_RANGES: dict[str, tuple[float, float, bool]] = {
    "beta": (0, 1e6, False),
    "hand_weight": (1, 1e4, False),
    "rank": (0, 4096, True),
    "alpha": (0, 1e5, True),
    "dropout": (0, 0.999, False),
    "learning_rate": (0, 1.0, True),
    "weight_decay": (0, 10.0, False),
    "warmup_steps": (0, 10**9, False),
    "steps": (0, 10**9, True),
    "batch_size": (0, 4096, True),
    "grad_accum": (0, 65536, True),
    "max_grad_norm": (0, 1e6, False),
    "seed": (0, 2**63 - 1, False),
    "checkpoint_every": (0, 10**9, False),
    "keep_checkpoints": (0, 10**6, False),
    "shift": (0, 1e3, True),
    "logit_mean": (-100, 100, False),
    "logit_std": (0, 100, True),
}
INTEGER_KEYS = ("rank", "warmup_steps", "steps", "batch_size", "grad_accum", "seed", "checkpoint_every", "keep_checkpoints")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


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
    # A LoRA file, {"path": ..., "strength": s}, or a list of these: the LoRAs the samples were made with (their
    # strengths as sampled); frozen, part of the reference. A plain string means strength 1.
    init_lora: Any = None
    vace_module: Optional[str] = None  # kijai's VACE module file, with a Wan2.1 text-to-video base_model
    allow_other_base: bool = False  # train even when the samples were made by another base model or patches
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
    def init_loras(self) -> list["InitLora"]:
        """``init_lora`` in its one normalised form: a list of (path, strength), in the order given."""
        return parse_init_lora(self.init_lora)

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

        def number(key: str) -> None:
            value = getattr(self, key)
            integer = key in INTEGER_KEYS
            low, high, exclusive = NUMBER_RANGES[key]
            ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok_type:
                fail(key, f"must be {'an integer' if integer else 'a number'}")
            if not integer and not _finite(value):
                fail(key, f"must be a finite number between {low} and {high}")
            if not integer:
                setattr(self, key, float(value))
            if (value <= low if exclusive else value < low) or value > high:
                fail(key, f"must be {'>' if exclusive else '>='} {low} and <= {high}")

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
        for key in NUMBER_RANGES:
            if key != "alpha" or self.alpha is not None:
                number(key)
        flag("gradient_checkpointing")
        flag("dpo_time_weighting")
        choice("base_precision", BASE_PRECISIONS)
        flag("activation_offload")
        swap = self.blocks_to_swap
        if isinstance(swap, bool) or not isinstance(swap, int) or not 0 <= swap <= 4096:
            fail("blocks_to_swap", "must be a whole number of blocks, 0 or more (at most the model's block count)")
        budget = self.vram_budget_gb
        if budget is not None:  # GiB; null: no budget (the node resolves its 'auto' to the GPU's free memory)
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not _finite(budget) or not 0 < budget <= 1e5:
                fail("vram_budget_gb", "must be a number of GiB above 0 (at most 100000), or null for no budget")
            self.vram_budget_gb = float(budget)
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
        if isinstance(self.lora_name, str) and self.lora_name.lower().endswith(".safetensors"):
            self.lora_name = self.lora_name[: -len(".safetensors")]
        try:
            validate_name(self.lora_name, "lora_name")  # the dataset names' rule: checked here, not at the first checkpoint
        except InvalidNameError as exc:
            raise ConfigError(f"{source}: {exc} (the LoRA is written to output_dir/<lora_name>.safetensors)") from None
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if not isinstance(self.targets, list) or not self.targets or not all(isinstance(t, str) for t in self.targets):
            fail("targets", "must be a non-empty list of target names")
        from ..wan.lora_targets import target_regex  # validates the names (clear error for unknown ones)

        try:
            target_regex(self.targets)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        try:
            parse_init_lora(self.init_lora)
        except ValueError as exc:
            fail("init_lora", str(exc))
        if self.vace_module is not None and (not isinstance(self.vace_module, str) or not self.vace_module.strip()):
            fail("vace_module", "must be a VACE module file path or null")
        if self.vace_module is not None and self.base_model == "tiny":
            fail("vace_module", "goes with a Wan2.1 text-to-video base_model file, not with the embedded \"tiny\" model")
        flag("allow_other_base")
        if self.stop_file is not None and (not isinstance(self.stop_file, str) or not self.stop_file.strip()):
            fail("stop_file", "must be a file path or null (null: <output_dir>/STOP)")


@dataclass(frozen=True)
class InitLora:
    path: str
    strength: float = 1.0


_INIT_LORA_FORMS = 'a LoRA file path, {"path": "...", "strength": 0.5}, or a list of these (or null)'


def parse_init_lora(value: Any) -> list[InitLora]:
    """``init_lora`` as given in run.json (a path, one ``{"path", "strength"}`` object, or a list of either) -> a
    list of :class:`InitLora`. Raises ValueError saying which forms are accepted."""
    if value is None or value == []:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, str) and item.strip():
            out.append(InitLora(item))
        elif isinstance(item, Mapping) and isinstance(item.get("path"), str) and item["path"].strip() and set(item) <= {"path", "strength"}:
            strength = item.get("strength", 1.0)
            if isinstance(strength, bool) or not isinstance(strength, (int, float)) or strength == 0:
                raise ValueError(f"strength {strength!r} of {item['path']} must be a non-zero number (the strength it was sampled with)")
            out.append(InitLora(item["path"], float(strength)))
        else:
            raise ValueError(f"must be {_INIT_LORA_FORMS}; got {item!r}")
    return out
