"""The named choices of run.json (and of the modules that act on them), one string enum each.

Why str enums: a member compares equal to its string (``Objective.DPO == "dpo"``) and JSON writes it as that
string, so run.json, checkpoints and events keep plain strings while the code names every value it tests
instead of repeating literals. Level 0: the config (``jobs``), the planner (``memory``) and the model loader
(``wan``) all use them.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A string choice: prints and formats as its value on every Python version (not ``Objective.IPA``)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Objective(Choice):
    IPA = "ipa"  # Flow-IPA on preferred samples only (the paper)
    DPO = "dpo"  # Flow-DPO: preferred against rejected samples
    SFT = "sft"  # plain flow matching on the preferred samples


class LrScheduler(Choice):
    CONSTANT = "constant"
    COSINE = "cosine"


class Precision(Choice):
    AUTO = "auto"  # bf16 autocast on GPU, fp32 on CPU
    BF16 = "bf16"
    FP32 = "fp32"


class TimestepSampling(Choice):
    UNIFORM = "uniform"
    LOGIT_NORMAL = "logit_normal"
    SHIFTED = "shifted"


class Distributed(Choice):
    DDP = "ddp"  # every rank holds the whole model
    FSDP2 = "fsdp2"  # the base weights are sharded across ranks


class BasePrecision(Choice):
    BF16 = "bf16"  # the frozen base as the file stores it
    FP8 = "fp8"  # block linears in float8_e4m3fn with a per-channel scale


class Expert(Choice):
    """Which expert of a two-expert model (Wan2.2-VACE-Fun A14B) a run trains."""

    LOW = "low"  # the low-noise expert: sigma <= the switch sigma (details, fingers)
    HIGH = "high"  # the high-noise expert: sigma above the switch (layout, motion)
    BOTH = "both"  # the low one, then the high one: one LoRA each
