"""Is the trainer's reference the model that sampled the data? IPA aligns against the model that made its "own" good
samples; a reference that differs pulls the LoRA towards another model.

The IPA VACE Sampler records per sample (``meta["settings"]``): ``base_fingerprint`` (``wan.fingerprint.
weights_fingerprint`` of the sampling model's base weights) and ``patches`` (``nodes/model_identity.describe_patches``:
LoRA groups per strength with their digest, and every other patch that changes the velocity). Here the run's own
reference (``base_model`` [+ ``vace_module``] + each ``init_lora`` at its strength) is compared with that record:

- a base fingerprint that differs, LoRAs that ``init_lora`` does not reproduce (file or strength), and patches the
  trainer cannot reproduce (``rope_options`` from ScaleROPE, model wrappers, ``patches_replace``, object patches,
  hooks, weight patches that are not plain LoRAs) are refused with a :class:`ReferenceMismatch` that says what to set;
- ``allow_other_base: true`` turns every refusal into a warning (training then knowingly targets another model);
- samples without a record (collected before fingerprints existed, or by other tools) only warn; outside videos
  (IPA Encode Good Video: not sampled by any model) are not checked.

The LoRA check needs only the files, so it runs before the model is loaded; the base check runs on the loaded model.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

from ..jobs.config import ConfigError, InitLora, RunConfig
from ..wan.fingerprint import lora_group_digest, native_lora_patch_digests
from .batching import TrainingData

OUTSIDE_SOURCES = ("outside_video",)
# Patch kinds the trainer cannot reproduce, with what they usually come from.
UNREPRODUCIBLE = {
    "unidentified_weight_patches": "weight patches that are not plain LoRAs (LoHa/LoKr, full-weight diffs, model merges)",
    "rope_options": "rope scaling (ScaleROPE: transformer_options rope_options)",
    "transformer_options": "transformer_options patches (attention patches, patches_replace, wrappers)",
    "model_wrappers": "model wrappers",
    "injections": "model injections",
    "object_patches": "object patches (replaced model parts)",
    "model_options": "model function wrappers (model_options)",
    "hooks": "hook patches (scheduled LoRAs / hooks)",
}
OVERRIDE_HINT = (
    "Set allow_other_base: true (run.json, or the node's allow_other_base) to train anyway; the alignment then targets "
    "another model than the one that made the samples."
)


class ReferenceMismatch(ConfigError):
    """The samples were made by another model than the run's reference; the message says what differs and what to set."""


def _samples(data: TrainingData):
    return data.preferred + data.rejected


def _record(meta: dict) -> tuple[Optional[str], dict]:
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    patches = settings.get("patches") if isinstance(settings.get("patches"), dict) else {}
    return settings.get("base_fingerprint"), patches


def _checked(data: TrainingData):
    """(sample id, fingerprint, patches) of the samples that were sampled by a model, not encoded outside videos."""
    for sample_id, _, meta in _samples(data):
        if meta.get("source") in OUTSIDE_SOURCES:
            continue
        fingerprint, patches = _record(meta)
        yield sample_id, fingerprint, patches


def init_lora_groups(init_loras: Iterable[InitLora]) -> dict[float, str]:
    """``{strength: lora_group_digest}`` of the run's ``init_lora`` files, computed as the sampler computes it from
    ComfyUI's patches (``wan.fingerprint``)."""
    from ..wan.lora_io import LoraFileError, read_lora_file

    digests: dict[float, list[str]] = defaultdict(list)
    for init in init_loras:
        if not Path(init.path).is_file():
            raise ConfigError(f"init_lora {init.path} does not exist; give a LoRA .safetensors file")
        try:
            native, _, _ = read_lora_file(init.path)
        except LoraFileError as exc:
            raise ConfigError(f"init_lora: {exc}") from None
        digests[round(init.strength, 6)].extend(native_lora_patch_digests(native))
    return {strength: lora_group_digest(items) for strength, items in digests.items()}


def _describe_groups(groups: dict[float, str], counts: dict[float, int], names: dict[float, list[str]]) -> str:
    if not groups:
        return "no LoRA"
    parts = []
    for strength in sorted(groups):
        label = ", ".join(names.get(strength) or []) or "a LoRA not loaded by IPA LoRA Loader (e.g. LoraLoaderModelOnly)"
        weights = f", {counts[strength]} weights" if strength in counts else ""
        parts.append(f"{label} at strength {strength:g}{weights}")
    return "; ".join(parts)


def _lora_problem(patches: dict, expected: dict[float, str], init_loras: list[InitLora]) -> Optional[str]:
    entries = [entry for entry in patches.get("loras") or [] if isinstance(entry, dict)]
    recorded = {round(float(entry["strength"]), 6): str(entry["digest"]) for entry in entries}
    if recorded == expected:
        return None
    counts = {round(float(entry["strength"]), 6): int(entry.get("weights", 0)) for entry in entries}
    names: dict[float, list[str]] = defaultdict(list)
    for lora in patches.get("ipa_loras") or []:
        if isinstance(lora, dict) and "strength" in lora:
            names[round(float(lora["strength"]), 6)].append(str(lora.get("name")))
    given = ", ".join(f"{Path(i.path).name} at strength {i.strength:g}" for i in init_loras) or "none"
    same_strengths = set(recorded) == set(expected)
    why = "the same strengths but other LoRA weights" if same_strengths else "other strengths or LoRAs"
    suggestion = ""
    if recorded and all(names.get(s) for s in recorded):
        forms = [{"path": f"<loras>/{name}", "strength": s} for s, group in sorted(names.items()) for name in group]
        suggestion = f" Set init_lora to {json.dumps(forms)} (paths under ComfyUI's models/loras)."
    elif recorded:
        suggestion = " Set init_lora to the LoRA file(s) the sampler used, each with the strength it had there."
    else:
        suggestion = " Leave init_lora empty, or sample the data with those LoRAs."
    return (f"sampled with {_describe_groups(recorded, counts, names)}, but init_lora gives {given} ({why})." + suggestion)


def _other_problems(patches: dict) -> list[str]:
    problems = []
    for key, label in UNREPRODUCIBLE.items():
        value = patches.get(key)
        if not value:
            continue
        if key == "transformer_options" and patches.get("rope_options") and list(value) == ["rope_options"]:
            continue  # already named by rope_options
        detail = value if not isinstance(value, dict) else {k: v for k, v in value.items()}
        problems.append(f"{label}: {detail}. The trainer cannot reproduce this: sample without it.")
    return problems


def _fail_or_warn(config: RunConfig, problems: dict[str, list[str]], total: int, headline: str) -> list[str]:
    if not problems:
        return []
    lines = [f"{len(ids)} of {total} samples (e.g. {ids[0]}): {problem}" for problem, ids in problems.items()]
    message = headline + "\n" + "\n".join(lines)
    if config.allow_other_base:
        return [message + "\nallow_other_base is set: training anyway."]
    raise ReferenceMismatch(message + "\n" + OVERRIDE_HINT)


def check_recorded_patches(data: TrainingData, config: RunConfig) -> list[str]:
    """Every patch recorded with the samples is reproduced by ``init_lora`` or refused (before the model loads).
    Returns warnings: samples without a record, and mismatches under ``allow_other_base``."""
    warnings: list[str] = []
    init_loras = config.init_loras
    expected = init_lora_groups(init_loras)
    problems: dict[str, list[str]] = defaultdict(list)
    legacy = []
    checked = list(_checked(data))
    for sample_id, fingerprint, patches in checked:
        if fingerprint is None:
            legacy.append((sample_id, patches))
            continue
        for problem in [_lora_problem(patches, expected, init_loras)] + _other_problems(patches):
            if problem:
                problems[problem].append(sample_id)
    warnings += _fail_or_warn(config, problems, len(checked),
                              "The samples were made by another model than this run's reference (base_model + init_lora):")
    if legacy:
        warnings.append(
            f"{len(legacy)} of {len(checked)} samples carry no record of the model that sampled them (collected before the IPA "
            "VACE Sampler recorded it, or by another tool): the trainer cannot check that base_model and init_lora are that model."
        )
        legacy_warning = _legacy_patch_warning([(sid, p) for sid, p in legacy if p], len(_samples(data)), config)
        if legacy_warning:
            warnings.append(legacy_warning)
    return warnings


def check_base_fingerprint(data: TrainingData, config: RunConfig, fingerprint: str) -> list[str]:
    """The recorded base fingerprints against the loaded base's; refuses a mismatch unless ``allow_other_base``."""
    problems: dict[str, list[str]] = defaultdict(list)
    checked = list(_checked(data))
    for sample_id, recorded, patches in checked:
        if recorded is None or recorded == fingerprint:
            continue
        hint = ""
        if patches.get("weight_dtype"):
            hint = f" They were sampled with {patches['weight_dtype']} weights (UNETLoader weight_dtype or an fp8 file)."
        problems[f"sampled by base weights {recorded[-16:]}, but base_model{' + vace_module' if config.vace_module else ''} "
                 f"has {fingerprint[-16:]}.{hint}"].append(sample_id)
    if not problems:
        return []
    name = Path(config.base_model).name + (f" + {Path(config.vace_module).name}" if config.vace_module else "")
    return _fail_or_warn(
        config, problems, len(checked),
        f"The samples were sampled by another base model than {name} (the fingerprint of the base weights differs: another "
        "file, another quantisation or precision of it, or another VACE module). Train on the file(s) the IPA VACE Sampler "
        "used (the same Load Diffusion Model file, and the same vace_module).",
    )


def _legacy_patch_warning(patched: list[tuple[str, dict]], total: int, config: RunConfig) -> Optional[str]:
    """Samples recorded before fingerprints: only LoRA names were kept, so the best the trainer can do is compare those."""
    if not patched:
        return None
    loras = sorted({str(lora.get("name")) for _, patches in patched for lora in patches.get("ipa_loras", []) if isinstance(lora, dict)})
    init = [Path(i.path).name for i in config.init_loras]
    if init and loras and {Path(name).name for name in loras} <= set(init) and all(
        set(patches) <= {"ipa_loras", "weight_patches"} for _, patches in patched
    ):
        return None  # sampled with exactly the LoRA(s) the reference starts from
    what = f"LoRA(s) {loras}" if loras else "patches"
    return (
        f"{len(patched)} of {total} samples were sampled with a patched model ({what}; e.g. "
        f"sample {patched[0][0]}: {patched[0][1]}), but this run's reference is the base model"
        + (f" + init_lora {', '.join(init)}" if init else "")
        + ". The alignment then targets another model than the one that made the samples: set init_lora to the LoRA they "
        "were sampled with, or sample without it."
    )


def sampling_patch_warning(data: TrainingData, config: RunConfig) -> Optional[str]:
    """The warning for samples recorded without fingerprints that were made by a patched model (kept for scripts)."""
    patched = [(sid, patches) for sid, fingerprint, patches in _checked(data) if fingerprint is None and patches]
    return _legacy_patch_warning(patched, len(_samples(data)), config)
