"""Saving trained LoRAs in ComfyUI's native Wan layout and loading any supported LoRA file for peft.

Only safetensors are read or written. See ``lora_keys`` for the layouts and the alpha/scale rule.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..fileio import FileReadError, atomic_save_safetensors, load_safetensors
from .lora_keys import ConversionReport, diffusers_module_to_native, native_to_diffusers_module, to_comfy_native

LAYOUT_METADATA_KEY = "ipa_lora_layout"
LAYOUT_NAME = "comfyui-native-wan"

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[A-Za-z0-9_\-]+)?\.weight$")


class LoraFileError(ValueError):
    """A LoRA file that cannot be used; the message says what was wrong."""


def _metadata_strings(metadata: Optional[Mapping[str, Any]]) -> dict[str, str]:
    out = {}
    for key, value in (metadata or {}).items():
        out[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


def native_lora_from_peft(
    peft_state_dict: Mapping[str, torch.Tensor],
    alpha: Union[float, Mapping[str, float]],
    dtype: Optional[torch.dtype] = None,
) -> dict[str, torch.Tensor]:
    """peft's LoRA state dict (``blocks.0.attn1.to_q.lora_A.weight``, as ``get_peft_model_state_dict``
    returns, with or without ``base_model.model.``) -> native tensors with ``.alpha`` per module.

    ``alpha``: peft's ``lora_alpha`` (one value, or per diffusers module name); peft and ComfyUI then both
    scale by ``alpha / rank``.
    """
    tensors: dict[str, torch.Tensor] = {}
    for key, value in peft_state_dict.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise ValueError(
                f"Unexpected key {key!r} in the peft state dict: only LoRA A/B weights of Linear layers are saved "
                "(no lora bias, DoRA magnitudes or embeddings)."
            )
        module, role = match.group(1), match.group(2)
        native = diffusers_module_to_native(module)
        out_key = f"{native}.lora_{role}.weight"
        if out_key in tensors:
            raise ValueError(f"Two peft keys give {out_key} (several adapters in one state dict?)")
        tensor = value.detach().to("cpu")
        tensors[out_key] = (tensor.to(dtype) if dtype is not None else tensor).contiguous().clone()
        if role == "A":
            module_alpha = alpha[module] if isinstance(alpha, Mapping) else alpha
            tensors[f"{native}.alpha"] = torch.tensor(float(module_alpha), dtype=torch.float32)
    for key in [k for k in tensors if k.endswith(".alpha")]:
        base = key[: -len(".alpha")]
        if f"{base}.lora_B.weight" not in tensors:
            raise ValueError(f"peft state dict has lora_A but no lora_B for {base}")
    return tensors


def save_comfy_lora(
    path: os.PathLike | str,
    peft_state_dict: Mapping[str, torch.Tensor],
    alpha: Union[float, Mapping[str, float]],
    metadata: Optional[Mapping[str, Any]] = None,
    dtype: Optional[torch.dtype] = None,
) -> Path:
    """Writes a peft LoRA as ``path`` (safetensors, ComfyUI native Wan layout), atomically.

    ``metadata`` values that are not strings are stored as JSON. Returns the path written.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"LoRA files are written as .safetensors, got {path.name}")
    tensors = native_lora_from_peft(peft_state_dict, alpha, dtype)
    if not tensors:
        raise ValueError("The peft state dict holds no LoRA weights: nothing to save.")
    header = {"format": "pt", LAYOUT_METADATA_KEY: LAYOUT_NAME}
    header.update(_metadata_strings(metadata))
    return atomic_save_safetensors(path, tensors, header)


def read_lora_file(path: os.PathLike | str) -> tuple[dict[str, torch.Tensor], ConversionReport, dict[str, str]]:
    """Any supported LoRA file -> (native state dict, conversion report, header metadata)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LoraFileError(f"LoRA file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise LoraFileError(f"{path.name}: only .safetensors LoRA files are loaded (no pickle files).")
    try:
        tensors, metadata = load_safetensors(path)
        # Copies: safe_open's tensors keep the file memory-mapped for as long as they live (in ComfyUI: as long as the
        # patched model stays cached), and on Windows a mapped file cannot be replaced when the LoRA is retrained.
        tensors = {key: value.clone() for key, value in tensors.items()}
    except FileReadError as error:  # names the file and what it looks like (truncated, a pickle, empty)
        raise LoraFileError(f"LoRA {error}; download or export it again as .safetensors") from None
    except Exception as error:
        raise LoraFileError(f"{path} is not a readable safetensors file ({error}).") from error
    native, report = to_comfy_native(tensors, metadata)
    if not report.ok:
        raise LoraFileError(not_a_wan_lora_message(path.name, list(tensors), metadata))
    return native, report, metadata


# Key fragments of other model families' LoRAs: which family a file that is not a Wan LoRA was probably made for.
_OTHER_FAMILIES = (
    (("double_blocks", "single_blocks", "single_transformer_blocks"), "Flux or HunyuanVideo"),
    (("lora_unet_down_blocks", "lora_unet_up_blocks", "down_blocks.", "up_blocks.", "lora_unet_input_blocks", "input_blocks."),
     "Stable Diffusion / SDXL (a UNet)"),
    (("transformer_blocks.",), "another DiT family (Flux, LTX-Video, HunyuanVideo, CogVideoX, SD3 in diffusers names)"),
    (("lora_te", "text_model.", "text_encoder"), "a text encoder"),
)

# The layouts read_lora_file accepts, each by one example key.
ACCEPTED_LAYOUTS = (
    "ComfyUI native (diffusion_model.blocks.0.self_attn.q.lora_A.weight, or lora_down/lora_up)",
    "diffusers (transformer.blocks.0.attn1.to_q.lora_A.weight)",
    "DiffSynth/peft (blocks.0.self_attn.q.lora_A.default.weight, base_model.model....)",
    "kohya/musubi (lora_unet_blocks_0_self_attn_q.lora_down.weight)",
)


def not_a_wan_lora_message(name: str, keys: list[str], metadata: Optional[Mapping[str, Any]] = None) -> str:
    """Why a file is not read as a Wan LoRA and what to check: the family its keys suggest, where the file came
    from, and the layouts that are read (one example key each)."""
    shown = ", ".join(keys[:5]) or "(none)"
    lowered = " ".join(keys).lower()
    family = next((label for markers, label in _OTHER_FAMILIES if any(marker in lowered for marker in markers)), None)
    recorded = next((str(metadata[k]) for k in ("ss_base_model_version", "modelspec.architecture", "base_model")
                     if metadata and metadata.get(k)), None)
    guess = f" Its keys look like a LoRA for {family}." if family else ""
    if recorded:
        guess += f" Its metadata names the model {recorded!r}."
    return (f"{name}: no key is a Wan2.1 LoRA weight in any supported layout (first keys: {shown}).{guess} Check: (1) the model "
            "family: it must be a LoRA for Wan2.1 or Wan2.1-VACE (1.3B or 14B), not for SD/SDXL, Flux, HunyuanVideo or "
            "LTX-Video; (2) where the file came from: its download page or the tool that trained it names its base model; "
            "(3) the layout: these are read: " + "; ".join(ACCEPTED_LAYOUTS) + ".")


def native_to_peft(native: Mapping[str, torch.Tensor], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Native LoRA tensors -> (peft state dict with diffusers module names, alpha per diffusers module)."""
    state: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for key, value in native.items():
        for role in ("lora_A", "lora_B"):
            suffix = f".{role}.weight"
            if key.endswith(suffix):
                module = native_to_diffusers_module(key[: -len(suffix)])
                state[f"{prefix}{module}.{role}.weight"] = value
        if key.endswith(".alpha"):
            alphas[native_to_diffusers_module(key[: -len(".alpha")])] = float(value.item())
    return state, alphas


def load_lora_for_peft(
    path: os.PathLike | str, prefix: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, str]]:
    """Any supported LoRA file -> (state dict named like ``peft.get_peft_model_state_dict`` returns for a
    diffusers ``WanVACETransformer3DModel``, ``{diffusers module: alpha}``, header metadata).

    Scale per module is ``alpha / rank`` with ``rank = lora_A.shape[0]``: build the peft config with
    :func:`peft_config_kwargs`. ``prefix``: ``"base_model.model."`` for a ``PeftModel`` wrapper.
    Full-weight differences (``.diff``/``.diff_b``) cannot be a peft LoRA and raise ``LoraFileError``.
    """
    native, report, metadata = read_lora_file(path)
    if report.diff_modules:
        raise LoraFileError(
            f"{Path(path).name} also changes full weights ({len(report.diff_modules)} .diff/.diff_b entries, e.g. "
            f"{report.diff_modules[0]}); that part cannot be trained or loaded as a peft LoRA."
        )
    state, alphas = native_to_peft(native, prefix)
    return state, alphas, metadata


def peft_config_kwargs(state_dict: Mapping[str, torch.Tensor], alphas: Mapping[str, float]) -> dict:
    """``LoraConfig`` arguments that reproduce a loaded LoRA exactly: ``r``, ``lora_alpha``, exact
    ``target_modules`` and, where modules differ, ``rank_pattern``/``alpha_pattern`` keyed by full name."""
    ranks: dict[str, int] = {}
    for key, value in state_dict.items():
        match = _PEFT_KEY.match(key)
        if match and match.group(2) == "A":
            ranks[match.group(1)] = int(value.shape[0])
    if not ranks:
        raise ValueError("No lora_A weights in the state dict.")
    modules = sorted(ranks)
    rank_values = [ranks[m] for m in modules]
    alpha_values = [float(alphas.get(m, ranks[m])) for m in modules]
    r = max(set(rank_values), key=rank_values.count)
    lora_alpha = max(set(alpha_values), key=alpha_values.count)
    return {
        "r": r,
        "lora_alpha": lora_alpha,
        "target_modules": modules,
        "rank_pattern": {re.escape(m): ranks[m] for m in modules if ranks[m] != r},
        "alpha_pattern": {re.escape(m): a for m, a in zip(modules, alpha_values) if a != lora_alpha},
    }
