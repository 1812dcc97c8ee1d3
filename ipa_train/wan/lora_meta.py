"""Reading a LoRA's metadata for people: a short summary and a check that it was trained on the same base model.

The trainer writes its settings as ``ipa.<key>`` (``ipa.objective``, ``ipa.beta``, ``ipa.base_model``, ...; see
``train.Trainer.lora_metadata``); other tools write bare keys or kohya's ``ss_*``. Both are read here: an
``ipa.`` key wins over the bare key of the same name and is shown without its prefix."""

from __future__ import annotations

import json
import re
from typing import Mapping, Optional

IPA_PREFIX = "ipa."

# Shown first, in this order; every other metadata key follows alphabetically.
KEY_ORDER = ("objective", "beta", "hand_weight", "steps", "rank", "alpha", "learning_rate", "targets", "base_model",
             "base_model_hash", "dataset_size", "dataset_hash", "pack_version")

# Wan2.1 transformer width -> the size people name files by.
WAN_SIZES = {1536: "1.3B", 5120: "14B"}

_SIZE_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*b(?![a-z])", re.IGNORECASE)


def training_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The header with the trainer's ``ipa.`` prefix removed (an ``ipa.`` key wins over a bare one of that name)."""
    merged = {key: value for key, value in metadata.items() if not key.startswith(IPA_PREFIX)}
    merged.update({key[len(IPA_PREFIX):]: value for key, value in metadata.items() if key.startswith(IPA_PREFIX)})
    return merged


def summarize_metadata(metadata: Mapping[str, str], max_value: int = 120) -> str:
    """``key: value`` lines, the training settings first. Long values (e.g. JSON blobs) are shortened."""
    metadata = training_metadata(metadata)
    keys = [key for key in KEY_ORDER if key in metadata] + sorted(key for key in metadata if key not in KEY_ORDER)
    lines = []
    for key in keys:
        value = str(metadata[key])
        if len(value) > max_value:
            value = value[: max_value - 3] + "..."
        lines.append(f"{key}: {value}")
    return "\n".join(lines) if lines else "(no metadata in this LoRA)"


def size_tag_from_name(name: str) -> Optional[str]:
    """'wan2.1_vace_14B_fp16.safetensors' -> '14B'; None when the name has no size."""
    match = _SIZE_RE.search(name or "")
    if not match:
        return None
    return f"{float(match.group(1)):g}B"


def base_model_mismatch(metadata: Mapping[str, str], model_width: Optional[int]) -> Optional[str]:
    """A warning when the LoRA's metadata names a base model of another size than the model it is applied to."""
    metadata = training_metadata(metadata)
    base = metadata.get("base_model") or ""
    if not base and "ss_base_model_version" in metadata:
        base = metadata["ss_base_model_version"]
    if isinstance(base, str) and base.startswith("{"):
        try:
            base = json.loads(base).get("name", base)
        except (ValueError, AttributeError):
            pass
    trained = size_tag_from_name(str(base))
    current = WAN_SIZES.get(model_width or -1)
    if trained and current and trained != current:
        return (f"this LoRA was trained on {base} ({trained}) but the model is Wan2.1 {current}: "
                "it will not work as intended; load the matching base model")
    return None


# ----------------------------------------------------------------------------------------------------------
# Two-expert models (Wan2.2-VACE-Fun A14B): which expert a LoRA was trained for

EXPERTS = ("high", "low")
EXPERT_WORDS = {"high": "high-noise", "low": "low-noise"}
EXPERT_KEY = "expert"  # written as ipa.expert by the trainer: "high" or "low"

# A name's expert hint: the trainer's "<name>_high" / "<name>_low" suffix, or Comfy-Org's "high_noise" / "low_noise".
_SUFFIX_RE = re.compile(r"_(high|low)$", re.IGNORECASE)
_NOISE_RE = re.compile(r"(high|low)_noise", re.IGNORECASE)


def expert_from_metadata(metadata: Mapping[str, str]) -> Optional[str]:
    """The expert recorded in a LoRA's metadata (``ipa.expert``), or None when none is recorded."""
    value = str(training_metadata(metadata).get(EXPERT_KEY) or "").strip().lower()
    return value if value in EXPERTS else None


def _stem(name: str) -> str:
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    return base[: -len(".safetensors")] if base.lower().endswith(".safetensors") else base


def expert_from_name(name: str) -> Optional[str]:
    """The expert a file name claims ("<name>_high", "..._low_noise_14B..."), or None. Only a hint: metadata wins
    where it exists, and a name that disagrees with its metadata is an error for the caller to raise."""
    stem = _stem(name)
    suffix = _SUFFIX_RE.search(stem)
    if suffix:
        return suffix.group(1).lower()
    found = {match.lower() for match in _NOISE_RE.findall(stem)}
    return found.pop() if len(found) == 1 else None


def _swap_case_like(word: str, like: str) -> str:
    return word.upper() if like.isupper() else word.capitalize() if like[:1].isupper() else word


def pair_partner_name(name: str) -> Optional[str]:
    """The other expert's file of a pair (``ipa/hands_high.safetensors`` -> ``ipa/hands_low.safetensors``, and
    ``..._high_noise...`` -> ``..._low_noise...``), in the same folder; None when the name claims no expert."""
    text = str(name)
    cut = max(text.rfind("/"), text.rfind("\\")) + 1
    folder, stem = text[:cut], _stem(text)
    extension = text[cut + len(stem):]
    suffix = _SUFFIX_RE.search(stem)
    matches = [suffix] if suffix else list(_NOISE_RE.finditer(stem))
    if not matches or len({match.group(1).lower() for match in matches}) != 1:
        return None
    last = matches[-1]
    word = last.group(1)
    other = _swap_case_like("low" if word.lower() == "high" else "high", word)
    return folder + stem[: last.start(1)] + other + stem[last.end(1):] + extension
