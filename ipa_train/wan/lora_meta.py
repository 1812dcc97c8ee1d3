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
