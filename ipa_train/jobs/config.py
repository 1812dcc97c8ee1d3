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

from ..choices import BasePrecision, Choice, Distributed, Expert, LrScheduler, Objective, Precision, TimestepSampling
from ..fileio import InvalidNameError, atomic_write_json, validate_name
from .contract import STOP_FILE_NAME

REQUIRED = ("dataset", "base_model", "output_dir")
MAX_BLOCKS_TO_SWAP = 4096
MAX_VRAM_BUDGET_GB = 1e5

# ----------------------------------------------------------------------------------------------- the key schema


@dataclass(frozen=True)
class KeySpec:
    """What one run.json key is, in one place: the validation, the trainer's flags, the ComfyUI node's widgets and
    README's key table (``scripts/readme_run_json.py``) are all derived from it.

    ``range``: (minimum, maximum, minimum excluded). ``generic``: the range, choice or flag is checked by the
    common rule (False: the owner's check in ``validate`` has a message of its own). ``cli``: the flag of
    ``python -m ipa_train.train``: ``value`` (--key VALUE), ``switch`` (--key sets true), ``list`` (--key A B ...)
    or None (only ``--set key=JSON``). ``tooltip``: the node widget's text where the node mirrors the key."""

    name: str
    help: str
    choices: Optional[type[Choice]] = None
    range: Optional[tuple[float, float, bool]] = None
    integer: bool = False
    flag: bool = False
    nullable: bool = False
    generic: bool = True
    cli: Optional[str] = "value"
    shown_default: Optional[str] = None
    tooltip: Optional[str] = None

    @property
    def cli_flag(self) -> str:
        return "--output" if self.name == "output_dir" else "--" + self.name.replace("_", "-")

    @property
    def cli_type(self) -> type:
        return int if self.integer else float if self.range else str

    def allowed_text(self) -> str:
        """What the key accepts, in words (README's table)."""
        if self.choices is not None:
            return ", ".join(f"`{value}`" for value in self.choices.values())
        if self.flag:
            return "true, false"
        if self.range is None:
            return ""
        low, high, exclusive = self.range
        text = f"{'>' if exclusive else '>='} {_number_text(low)}, <= {_number_text(high)}" + (" (integer)" if self.integer else "")
        return text + (", or null" if self.nullable else "")


def _number_text(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, int) and value >= 10**6:
        exponent = len(str(value)) - 1
        if value == 10**exponent:
            return f"1e{exponent}"
        if value == 2**63 - 1:
            return "2^63 - 1"
    return repr(value)


def key(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING, **spec: Any):
    """A RunConfig field with its schema (see :class:`KeySpec`) in the field's metadata."""
    if isinstance(default, bool) and "flag" not in spec:
        spec["flag"] = True
    return field(default=default, default_factory=factory, metadata={"spec": dict(help=help, **spec)})


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the key and what to change."""


@dataclass
class RunConfig:
    """run.json, flat: one field per key, each with its schema (``key(...)``; :data:`KEYS` collects them)."""

    dataset: str = key("", "dataset folder (see Dataset format); only `preferred` samples train (`dpo` also pairs `rejected` ones)")
    base_model: str = key("", "Wan2.1-VACE or Wan2.2-Animate single file (original or ComfyUI layout), a Wan2.1-VACE diffusers folder, or `\"tiny\"` (embedded random test model)")
    output_dir: str = key("", "receives `<lora_name>.safetensors`, `run.json` and `checkpoints/step-N/`")
    low_noise_model: Optional[str] = key(None, "two-expert samples (Wan2.2-VACE-Fun A14B): the low-noise expert's file or diffusers "
                                               "folder (`base_model` is then the high-noise one); needed by `expert` `low` and `both`",
                                         nullable=True, generic=False)
    expert: str = key(Expert.LOW.value, "two-expert samples: the expert that trains: `low` (sigma <= the samples' switch sigma), `high` "
                                        "(above it) or `both` (low, then high); writes `<lora_name>_<expert>.safetensors`. Ignored "
                                        "for single-model samples", choices=Expert,
                      tooltip="Wan2.2-VACE-Fun A14B samples (two models): low trains a LoRA for the low-noise model (hands, "
                              "details), high one for the high-noise model, both the two one after the other "
                              "(<name>_low and <name>_high). Ignored for single-model samples.")
    lora_name: str = key("ipa_lora", "output file name; follows the dataset names' rule")
    objective: str = key(Objective.IPA.value, "`ipa` (good samples only), `dpo` (needs rejected samples), `sft` (plain flow matching)",
                         choices=Objective,
                         tooltip="ipa: Flow-IPA on preferred samples only (the paper). dpo: Flow-DPO, needs rejected samples. "
                                 "sft: plain flow matching on the preferred samples.")
    beta: float = key(600.0, "Flow-IPA/DPO strength (paper: 600)", range=(0, 1e6, False),
                      tooltip="Strength of the preference penalty (paper: 600). Higher keeps the LoRA closer to the base model.")
    hand_weight: float = key(10.0, "hand emphasis (HALO; paper: 10); 1 = none", range=(1, 1e4, False),
                             tooltip="How much more the hand region of the latent counts in the error (HALO; paper: 10). 1 = no hand emphasis.")
    rank: int = key(128, "LoRA rank", range=(0, 4096, True), integer=True, tooltip="LoRA rank (paper: 128).")
    alpha: Optional[float] = key(None, "LoRA alpha; the scale is alpha / rank (null: alpha = rank, scale 1)", range=(0, 1e5, True),
                                 nullable=True, shown_default="= rank",
                                 tooltip="LoRA alpha; the LoRA is scaled by alpha / rank (alpha = rank: scale 1).")
    dropout: float = key(0.0, "LoRA dropout", range=(0, 0.999, False), cli=None)
    targets: list = key(help="any of `self_attn_qkv`, `self_attn_out`, `cross_attn`, `ffn`, plus `vace_blocks` to put them on the VACE "
                             "blocks too. Default regex `blocks\\.\\d+\\.attn1\\.to_[qkv]`",
                        factory=lambda: ["self_attn_qkv"], cli="list", shown_default='`["self_attn_qkv"]`')
    learning_rate: float = key(1e-4, "AdamW learning rate on the LoRA parameters only", range=(0, 1.0, True),
                               tooltip="AdamW learning rate on the LoRA weights (paper: 1e-4).")
    weight_decay: float = key(0.01, "AdamW weight decay", range=(0, 10.0, False), cli=None)
    lr_scheduler: str = key(LrScheduler.CONSTANT.value, "after the linear warm-up: `constant` or `cosine`", choices=LrScheduler)
    warmup_steps: int = key(0, "linear warm-up steps", range=(0, 10**9, False), integer=True)
    steps: int = key(1000, "optimizer steps", range=(0, 10**9, True), integer=True, tooltip="Optimizer steps to train (paper: 1,000).")
    batch_size: int = key(1, "samples per rank per micro-batch (only samples of one latent shape, reference frame count and text "
                             "length share one: a bucket's last micro-batch of an epoch may be smaller)", range=(0, 4096, True), integer=True,
                          tooltip="Samples per GPU per micro-batch.")
    grad_accum: int = key(1, "micro-batches per optimizer step", range=(0, 65536, True), integer=True,
                          tooltip="Micro-batches per optimizer step; the effective batch is batch_size x grad_accum x GPUs.")
    max_grad_norm: float = key(1.0, "gradient clipping (0 = off)", range=(0, 1e6, False))
    precision: str = key(Precision.AUTO.value, "`auto`: bf16 autocast on a GPU of compute capability 8.0 or newer (refused on older GPUs, "
                                               "which have no fused bf16 attention: use `fp32` there), fp32 on CPU; `bf16`; `fp32`",
                         choices=Precision,
                         tooltip="auto: bf16 on GPUs from compute capability 8.0 (RTX 30xx, A100), fp32 on CPU; refused on older GPUs "
                                 "(use fp32 there). bf16 or fp32 to force one.")
    gradient_checkpointing: bool = key(False, "recompute block activations in the backward pass (less memory, more time)", cli="switch",
                                       tooltip="Recompute block activations in the backward pass: less memory, slower steps.")
    seed: int = key(0, "LoRA initialisation, data order, noise and timesteps (deterministic on CPU)", range=(0, 2**63 - 1, False), integer=True,
                    tooltip="Seed of the LoRA initialisation, data order, noise and timesteps (same seed, same run).")
    checkpoint_every: int = key(250, "checkpoint period in steps (0: only at the end)", range=(0, 10**9, False), integer=True,
                                tooltip="Write a resumable checkpoint every N steps (0: only at the end and when cancelled).")
    keep_checkpoints: int = key(0, "keep the newest N checkpoints (0: all)", range=(0, 10**6, False), integer=True, cli=None)
    timestep_sampling: str = key(TimestepSampling.UNIFORM.value, "`uniform` (Wan), `logit_normal` (`logit_mean`, `logit_std`), `shifted` (`shift`)",
                                 choices=TimestepSampling)
    shift: float = key(3.0, "for `shifted`: t' = s t / (1 + (s - 1) t)", range=(0, 1e3, True), cli=None)
    logit_mean: float = key(0.0, "for `logit_normal`: t = sigmoid(N(logit_mean, logit_std))", range=(-100, 100, False), cli=None)
    logit_std: float = key(1.0, "for `logit_normal`", range=(0, 100, True), cli=None)
    dpo_time_weighting: bool = key(False, "weight the DPO logit by (1 - t)^2 as IPA does", cli=None)
    # A LoRA file, {"path": ..., "strength": s}, or a list of these: the LoRAs the samples were made with (their
    # strengths as sampled); frozen, part of the reference. A plain string means strength 1.
    init_lora: Any = key(None, "the LoRA(s) the samples were sampled with: `\"file.safetensors\"` (strength 1), `{\"path\": "
                               "\"file.safetensors\", \"strength\": 0.5}`, or a list of these. Each becomes part of the frozen reference "
                               "at its strength and a fresh adapter trains on top", nullable=True, generic=False)
    vace_module: Optional[str] = key(None, "with a Wan2.1 text-to-video `base_model`: kijai's VACE module file of the same size (see Model files)",
                                     nullable=True, cli=None)
    allow_other_base: bool = key(False, "train even when the samples were made by another base model, LoRA or patch than this run's "
                                        "reference (a warning instead of a refusal)", cli=None,
                                 tooltip="Train even when the samples were made by another base model, LoRA or patch than this run's "
                                         "reference (a warning instead of a refusal). The alignment then targets another model than "
                                         "the one that made the samples.")
    distributed: str = key(Distributed.DDP.value, "`ddp` or `fsdp2` (shards the base weights: for 14B on GPUs that cannot hold a full copy each)",
                           choices=Distributed,
                           tooltip="ddp: every GPU holds the whole model (1.3B). fsdp2: the base weights are sharded across GPUs, "
                                   "for 14B on GPUs that cannot hold it whole.")
    stop_file: Optional[str] = key(None, "the stop file (null: `<output_dir>/STOP`); its appearance asks for a graceful stop (see Stopping)",
                                   nullable=True)
    # Memory modes (README, Memory): how the frozen base is stored and where it and the checkpoints live.
    base_precision: str = key(BasePrecision.BF16.value, "`fp8`: the frozen block linears in float8_e4m3fn with a per-output-channel scale, "
                                                        "computed in bf16 (see Memory)", choices=BasePrecision,
                              tooltip="bf16: the frozen base as the model file stores it (fp8 files stay fp8). fp8: store the block "
                                      "weights of a bf16/fp16 file in fp8 (half the memory; the reference then differs from the "
                                      "sampling model by the quantisation, about 2 %).")
    blocks_to_swap: int = key(0, "blocks (VACE blocks count) whose weights stay in host memory, fetched before each use (needs checkpointing)",
                              range=(0, MAX_BLOCKS_TO_SWAP, False), integer=True, generic=False,
                              tooltip="Keep this many blocks (VACE blocks count) in CPU memory and copy each to the GPU just before it "
                                      "runs. Needs gradient checkpointing and CPU memory for the swapped weights.")
    activation_offload: bool = key(False, "the checkpointed block inputs in host memory between forward and backward (needs checkpointing)",
                                   cli="switch",
                                   tooltip="Keep the checkpointed block inputs in CPU memory between the forward and the backward pass. "
                                           "Needs gradient checkpointing.")
    vram_budget_gb: Optional[float] = key(None, "GiB: the planner picks the cheapest settings that fit (never fewer savings than asked), or "
                                                "refuses before loading", range=(0, MAX_VRAM_BUDGET_GB, True), nullable=True, generic=False)
    # What the ComfyUI process held when it launched the job (the node measures them): the planner's host check says
    # so, and on Windows what ComfyUI pinned comes off the job's share of pinnable memory (about half the RAM).
    comfyui_ram_gb: Optional[float] = key(None, "GiB of RAM the launching ComfyUI held (its unloaded models stay in RAM); written by the node",
                                          range=(0, MAX_VRAM_BUDGET_GB, False), nullable=True, cli=None)
    comfyui_pinned_gb: Optional[float] = key(None, "GiB ComfyUI had pinned at launch (counts against Windows' pinned-memory cap); written by "
                                                   "the node", range=(0, MAX_VRAM_BUDGET_GB, False), nullable=True, cli=None)

    # ------------------------------------------------------------------------------------------- construction

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "run config") -> "RunConfig":
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source} must be a JSON object with keys such as dataset, base_model, output_dir")
        unknown = sorted(set(values) - set(KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(KEYS)}")
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
        """The run.json object: flat, every key, choices as plain strings."""
        return {name: value.value if isinstance(value, Choice) else value for name, value in dataclasses.asdict(self).items()}

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

    # ------------------------------------------------------------------------------------------- validation

    def validate(self, source: str = "run config") -> None:
        """Every key checked, by its owner: the paths, the generic types and ranges of the schema, the memory
        modes with the distributed mode, the LoRA's name, targets and init LoRAs, the model's VACE module."""
        _check_required(self, source)
        _check_schema_values(self, source)
        _check_memory(self, source)
        _check_lora(self, source)
        _check_model_and_paths(self, source)


def _fail(config: RunConfig, source: str, key: str, message: str) -> None:
    raise ConfigError(f"{source}: {key}={getattr(config, key)!r} {message}")


def _check_required(config: RunConfig, source: str) -> None:
    for key in REQUIRED:
        value = getattr(config, key)
        if not isinstance(value, str) or not value.strip():
            hint = ' or "tiny"' if key == "base_model" else ""
            raise ConfigError(f"{source}: {key} is required (a path{hint})")


def _check_number(config: RunConfig, source: str, spec: KeySpec) -> None:
    value = getattr(config, spec.name)
    low, high, exclusive = spec.range
    ok_type = isinstance(value, int) if spec.integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        _fail(config, source, spec.name, f"must be {'an integer' if spec.integer else 'a number'}")
    if not spec.integer and not _finite(value):
        _fail(config, source, spec.name, f"must be a finite number between {low} and {high}")
    if not spec.integer:
        setattr(config, spec.name, float(value))
    if (value <= low if exclusive else value < low) or value > high:
        _fail(config, source, spec.name, f"must be {'>' if exclusive else '>='} {low} and <= {high}")


def _check_schema_values(config: RunConfig, source: str) -> None:
    """The common rule of every key with a generic check: its choice, its number range or true/false."""
    for spec in KEYS.values():
        if not spec.generic or (spec.nullable and getattr(config, spec.name) is None):
            continue
        if spec.choices is not None and getattr(config, spec.name) not in spec.choices.values():
            _fail(config, source, spec.name, f"is not one of {list(spec.choices.values())}")
        elif spec.range is not None:
            _check_number(config, source, spec)
        elif spec.flag and not isinstance(getattr(config, spec.name), bool):
            _fail(config, source, spec.name, "must be true or false")


def _check_memory(config: RunConfig, source: str) -> None:
    """The memory modes (README, Memory), their ranges and what they cannot be combined with."""
    swap = config.blocks_to_swap
    if isinstance(swap, bool) or not isinstance(swap, int) or not 0 <= swap <= MAX_BLOCKS_TO_SWAP:
        _fail(config, source, "blocks_to_swap", "must be a whole number of blocks, 0 or more (at most the model's block count)")
    budget = config.vram_budget_gb
    if budget is not None:  # GiB; null: no budget (the node resolves its 'auto' to the GPU's free memory)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not _finite(budget) or not 0 < budget <= MAX_VRAM_BUDGET_GB:
            _fail(config, source, "vram_budget_gb", "must be a number of GiB above 0 (at most 100000), or null for no budget")
        config.vram_budget_gb = float(budget)
    if config.blocks_to_swap and config.distributed == Distributed.FSDP2:
        _fail(config, source, "blocks_to_swap", "cannot be combined with distributed 'fsdp2' (FSDP2 already shards the weights across "
              "GPUs); use distributed 'ddp' with block swap, or fsdp2 without it")
    if config.base_precision == BasePrecision.FP8 and config.distributed == Distributed.FSDP2:
        _fail(config, source, "base_precision", "cannot be combined with distributed 'fsdp2' (FSDP2 gathers the weights in bf16 and "
              "would drop their fp8 scales); use distributed 'ddp' with fp8 (and blocks_to_swap for 14B)")
    if (config.blocks_to_swap or config.activation_offload) and not config.gradient_checkpointing:
        key = "blocks_to_swap" if config.blocks_to_swap else "activation_offload"
        _fail(config, source, key, "needs gradient_checkpointing: true (swapped weights and offloaded inputs are fetched again in the "
              "checkpoint's recompute; without checkpointing the backward pass would keep them all on the GPU)")


def _check_lora(config: RunConfig, source: str) -> None:
    """The new LoRA's file name and target layers, and the init LoRAs of the reference."""
    if isinstance(config.lora_name, str) and config.lora_name.lower().endswith(".safetensors"):
        config.lora_name = config.lora_name[: -len(".safetensors")]
    try:
        validate_name(config.lora_name, "lora_name")  # the dataset names' rule: checked here, not at the first checkpoint
    except InvalidNameError as exc:
        raise ConfigError(f"{source}: {exc} (the LoRA is written to output_dir/<lora_name>.safetensors)") from None
    if isinstance(config.targets, str):
        config.targets = [config.targets]
    if not isinstance(config.targets, list) or not config.targets or not all(isinstance(t, str) for t in config.targets):
        _fail(config, source, "targets", "must be a non-empty list of target names")
    from ..wan.lora_targets import target_regex  # validates the names (clear error for unknown ones)

    try:
        target_regex(config.targets)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    try:
        parse_init_lora(config.init_lora)
    except ValueError as exc:
        _fail(config, source, "init_lora", str(exc))


def _check_model_and_paths(config: RunConfig, source: str) -> None:
    """The VACE module that goes with a text-to-video base, the low-noise expert's file, and the stop file."""
    if config.vace_module is not None and (not isinstance(config.vace_module, str) or not config.vace_module.strip()):
        _fail(config, source, "vace_module", "must be a VACE module file path or null")
    if config.vace_module is not None and config.base_model == "tiny":
        _fail(config, source, "vace_module", "goes with a Wan2.1 text-to-video base_model file, not with the embedded \"tiny\" model")
    if config.low_noise_model is not None and (not isinstance(config.low_noise_model, str) or not config.low_noise_model.strip()):
        _fail(config, source, "low_noise_model", "must be the low-noise expert's file or diffusers folder, or null")
    if config.low_noise_model is not None and config.vace_module is not None:
        _fail(config, source, "low_noise_model", "cannot be combined with vace_module (the Wan2.2-VACE-Fun experts are VACE models "
              "themselves); clear vace_module")
    if config.stop_file is not None and (not isinstance(config.stop_file, str) or not config.stop_file.strip()):
        _fail(config, source, "stop_file", "must be a file path or null (null: <output_dir>/STOP)")


KEYS: dict[str, KeySpec] = {f.name: KeySpec(name=f.name, **f.metadata["spec"]) for f in dataclasses.fields(RunConfig)}

# Derived views, for the callers that check numbers and choices (the node's widgets stay inside these ranges).
# Values must also be finite: JSON allows NaN and Infinity, and a beta of Infinity trains NaN weights.
NUMBER_RANGES: dict[str, tuple[float, float, bool]] = {k: s.range for k, s in KEYS.items() if s.range is not None and s.generic}
INTEGER_KEYS = tuple(k for k in NUMBER_RANGES if KEYS[k].integer)
OBJECTIVES = Objective.values()
LR_SCHEDULERS = LrScheduler.values()
PRECISIONS = Precision.values()
TIMESTEP_SAMPLINGS = TimestepSampling.values()
DISTRIBUTED = Distributed.values()
BASE_PRECISIONS = BasePrecision.values()
EXPERTS = Expert.values()


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
