"""Two-expert samples (Wan2.2-VACE-Fun A14B: a high-noise and a low-noise VACE model, the sampler switching from the
first to the second at ``switch_step``): which expert a run trains, on which flow times, against which reference.

The IPA VACE Sampler records per sample, beside the top-level fields that describe the high-noise model for older
readers, ``settings["experts"] = {"high": {...}, "low": {...}}`` (each: ``base_fingerprint``, ``patches``,
``model_class``, ``sigmas``), ``switch_step`` S and ``switch_sigma`` = sigmas[S] of the full schedule. The high
expert denoised sigma in (switch_sigma, 1], the low expert sigma in [0, switch_sigma]; each expert's LoRA trains on
its own range only (t = sigma). A run trains one expert at a time (``both``: low, then high), each as a run of its
own on a view of the data whose settings are that expert's record, so the reference check, the fingerprints and the
LoRA metadata work as for one model.

``both`` numbers its steps globally: the low expert steps 1..steps, the high expert steps+1..2*steps, so
``checkpoints/step-N`` stays one sequence that resume (and ComfyUI's node) find as for one model; each checkpoint's
``state.json`` names its expert."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..choices import Expert
from ..data.two_experts import Switch
from ..jobs.config import ConfigError, RunConfig

# The order ``both`` trains them in: the low-noise expert first (hands are settled late in denoising: if the run is
# stopped half way, the LoRA that matters most is done).
BOTH_ORDER = (Expert.LOW.value, Expert.HIGH.value)
EXPERT_FILE_KEY = {Expert.HIGH.value: "base_model", Expert.LOW.value: "low_noise_model"}


@dataclass(frozen=True)
class Phase:
    """One expert's part of a run: its expert, its switch, and where its steps sit in the run's global numbering."""

    expert: str
    switch: Switch
    index: int  # 0 for the first expert trained, 1 for the second (``both``)
    count: int  # experts this run trains (1 or 2)
    steps: int  # steps per expert

    @property
    def offset(self) -> int:
        return self.index * self.steps

    @property
    def total(self) -> int:
        return self.count * self.steps

    @property
    def t_range(self) -> tuple[float, float]:
        return self.switch.t_range(self.expert)

    def metadata(self) -> dict[str, str]:
        """The ``ipa.*`` keys a LoRA of this expert carries (IPA LoRA Loader pairs and checks them)."""
        low, high = self.t_range
        return {"ipa.expert": self.expert, "ipa.expert_t_range": json.dumps([low, high]),
                "ipa.switch_sigma": str(self.switch.sigma), "ipa.switch_step": str(self.switch.step)}


def _settings(meta: dict) -> dict:
    return meta.get("settings") if isinstance(meta.get("settings"), dict) else {}


def expert_view(samples: list, expert: str) -> list:
    """The samples with ``settings`` replaced by the expert's own record (its fingerprint, patches, class, sigmas) so
    the reference check compares the expert's file with the model that denoised the expert's part."""
    out = []
    for sample_id, tensors, meta in samples:
        settings = _settings(meta)
        if isinstance(settings.get("experts"), dict):
            own = settings["experts"][expert]
            meta = {**meta, "settings": {**{k: v for k, v in settings.items() if k not in ("base_fingerprint", "patches")}, **own}}
        out.append((sample_id, tensors, meta))
    return out


def map_t(t: torch.Tensor, t_range: tuple[float, float]) -> torch.Tensor:
    """``t`` drawn on [0, 1] by the configured schedule, mapped linearly into the expert's range: low [0, s], high
    (s, 1] (the switch sigma itself belongs to the low expert, which denoised it)."""
    low, high = t_range
    if (low, high) == (0.0, 1.0):
        return t
    mapped = low + (high - low) * t
    if low > 0.0:
        mapped = torch.maximum(mapped, torch.nextafter(torch.tensor(low, dtype=t.dtype), torch.tensor(1.0, dtype=t.dtype)))
    return mapped


def phases(config: RunConfig, switch: Optional[Switch]) -> list[Optional[Phase]]:
    """The experts this run trains, in order (``[None]``: single-model samples, ``expert`` ignored); refuses a run
    whose expert files are not set."""
    if switch is None:
        return [None]
    experts = list(BOTH_ORDER) if config.expert == Expert.BOTH else [str(config.expert)]
    for expert in experts:
        key = EXPERT_FILE_KEY[expert]
        if not getattr(config, key):
            raise ConfigError(
                f"expert '{config.expert}': the samples were made by two experts (Wan2.2-VACE-Fun A14B, switch at step "
                f"{switch.step}), and the {expert}-noise expert's file is not set: set {key} to the "
                f"{expert}-noise model file (base_model: the high-noise one, low_noise_model: the low-noise one)")
    return [Phase(expert, switch, i, len(experts), config.steps) for i, expert in enumerate(experts)]


def phase_config(config: RunConfig, phase: Optional[Phase]) -> RunConfig:
    """The config one expert trains with: its file as ``base_model``, ``<lora_name>_<expert>`` as the LoRA name."""
    if phase is None:
        return config
    values = dataclasses.replace(config)
    values.base_model = getattr(config, EXPERT_FILE_KEY[phase.expert])
    values.lora_name = f"{config.lora_name}_{phase.expert}"
    values.expert = phase.expert
    values.validate(f"expert '{phase.expert}'")
    return values


def user_config(run_config: RunConfig, phase_cfg: RunConfig, phase: Optional[Phase]) -> RunConfig:
    """The run's config as the user gave it (for run.json and checkpoints), with what the planner chose for this phase."""
    if phase is None:
        return phase_cfg
    return dataclasses.replace(phase_cfg, base_model=run_config.base_model, lora_name=run_config.lora_name, expert=run_config.expert)


def phase_of_checkpoint(step: int, plan: list[Optional[Phase]]) -> tuple[int, bool]:
    """(the index of the phase a checkpoint at global ``step`` continues, whether it resumes inside it): a
    checkpoint at the end of the first expert starts the second fresh."""
    for index, phase in enumerate(plan):
        if phase is None:
            return index, True
        if step < phase.offset + phase.steps:
            return index, step > phase.offset
    return len(plan) - 1, True  # at the end: the trainer says the run is complete


def finished_lora(output_dir: Path, run_config: RunConfig, phase: Phase) -> Path:
    """The LoRA a finished earlier phase left in the output folder; refused when it is gone."""
    path = Path(output_dir) / f"{run_config.lora_name}_{phase.expert}.safetensors"
    if not path.is_file():
        raise ConfigError(f"resume: the {phase.expert}-noise expert finished at step {phase.offset + phase.steps}, but its LoRA "
                          f"{path} is gone; restore it (its last checkpoint holds a copy) or train again without resume")
    return path


def single_phase(config: RunConfig, switch: Optional[Switch]) -> Optional[Phase]:
    """The one expert a lone Trainer trains (None: single-model samples); ``both`` needs ``train`` (one per expert)."""
    plan = phases(config, switch)
    if len(plan) > 1:
        raise ConfigError("expert 'both' trains one expert after the other: run it through ipa_train.training.loop.train "
                          "or python -m ipa_train.train, not a single Trainer")
    return plan[0]


def checkpoint_phase(state: dict, plan: list[Optional[Phase]], checkpoint: Path) -> tuple[int, bool]:
    """(phase index, resume inside it) for a checkpoint's ``state.json``; refuses a checkpoint of another expert than
    the one its step falls in (``steps`` changed since) or of a run whose experts differ."""
    step = int(state.get("step", 0))
    recorded_steps = (state.get("config") or {}).get("steps")
    if (len(plan) > 1 or int(state.get("experts", 1)) > 1) and plan[0] is not None and recorded_steps != plan[0].steps:
        raise ConfigError(f"resume {checkpoint}: that run trained its experts one after the other with steps {recorded_steps} "
                          f"each, and its steps are numbered so (the high expert's after the low expert's): resume it with steps "
                          f"{recorded_steps}. To train one expert further, resume a run of that expert alone")
    index, inside = phase_of_checkpoint(step, plan)
    phase = plan[index]
    recorded = state.get("expert")
    if phase is None or not inside:
        return index, inside
    if recorded != phase.expert:
        what = f"the {recorded}-noise expert's" if recorded else "a single-model run's"
        raise ConfigError(f"resume {checkpoint}: it is {what} checkpoint, but with expert '{state.get('config', {}).get('expert')}' "
                          f"and steps {phase.steps} step {step} belongs to the {phase.expert}-noise expert; resume with the run's "
                          "own expert and steps")
    return index, inside
