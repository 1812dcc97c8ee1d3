"""A VACE module beside a Wan2.1 text-to-video base: kijai's split layout (``Wan2_1-VACE_module_14B_bf16.safetensors``
next to ``Wan2_1-T2V-14B_*.safetensors``).

The module file holds only the VACE branch: ``vace_blocks.N.*`` and ``vace_patch_embedding.*`` (keys bare or
prefixed ``model.diffusion_model.``). Put into a T2V base of the same width, the union of the two state dicts is
exactly a Wan2.1-VACE model: kijai's WanVideoWrapper does ``sd.update(vace_sd)`` and nothing else. ComfyUI v0.8.0's
own loaders read only complete files; the pack's *IPA Load Wan + VACE Module* node merges the pair with
:func:`merge_vace_module` and hands the result to ComfyUI's ``load_diffusion_model_state_dict``, and the trainer
merges it with the same function, so the sampling model and the trainer's base are the same weights.

Works on shapes (``{key: shape}``) as well as on tensors, so a pair can be checked from the file headers before any
weight is read.
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

Value = TypeVar("Value")

PREFIXES = ("model.diffusion_model.", "diffusion_model.")
MODULE_PARTS = ("vace_blocks.", "vace_patch_embedding.")


class VaceModuleError(ValueError):
    """A base + VACE module pair that does not make a Wan2.1-VACE model; the message says what to choose."""


def strip_prefix(state: Mapping[str, Value]) -> dict[str, Value]:
    """Keys without ComfyUI's ``model.diffusion_model.`` (or ``diffusion_model.``) prefix; other keys dropped only
    when a prefix is present (as ComfyUI's loader does)."""
    for prefix in PREFIXES:
        if any(key.startswith(prefix) for key in state):
            return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return dict(state)


def is_vace_module(keys) -> bool:
    """True for a file that holds only the VACE branch (kijai's ``Wan2_1-VACE_module_*``)."""
    keys = list(strip_prefix(dict.fromkeys(keys)))
    return bool(keys) and all(key.startswith(MODULE_PARTS) for key in keys) and any(k.startswith("vace_blocks.") for k in keys)


def _width(state: Mapping[str, Any], key: str) -> int:
    value = state[key]
    shape = tuple(getattr(value, "quant_shape", None) or getattr(value, "shape", None) or value)
    return int(shape[0])


def merge_vace_module(base: Mapping[str, Value], module: Mapping[str, Value], base_name: str = "base", module_name: str = "vace_module") -> dict[str, Value]:
    """The Wan2.1-VACE state dict (bare original keys) made of a T2V ``base`` and a VACE ``module``.

    Values may be tensors or shapes. Refuses, naming the files: a module that is not a VACE module, a base that
    already has VACE blocks or is not a text-to-video Wan2.1 model, and a module of another width (1.3B vs 14B).
    """
    base_bare, module_bare = strip_prefix(base), strip_prefix(module)
    if not is_vace_module(module_bare):
        extra = sorted(key for key in module_bare if not key.startswith(MODULE_PARTS))[:3]
        raise VaceModuleError(
            f"{module_name} is not a VACE module: a VACE module file holds only vace_blocks.* and vace_patch_embedding.* "
            f"weights (kijai's Wan2_1-VACE_module_*.safetensors), this one also has {extra or 'no vace_blocks'}. "
            "A complete Wan2.1-VACE file goes into base_model alone, with vace_module left empty."
        )
    if "vace_patch_embedding.weight" not in module_bare:
        raise VaceModuleError(f"{module_name} has VACE blocks but no vace_patch_embedding.weight: the file is incomplete.")
    if is_vace_module(base_bare):
        raise VaceModuleError(
            f"{base_name} is a VACE module, not a base model: choose the Wan2.1 text-to-video file of the same size as the "
            f"base model and give {base_name} as the VACE module."
        )
    if any(key.startswith(MODULE_PARTS) for key in base_bare):
        raise VaceModuleError(
            f"{base_name} already has VACE blocks (a complete Wan2.1-VACE model): leave the VACE module empty, or choose the "
            "text-to-video base the module was made for."
        )
    if "patch_embedding.weight" not in base_bare or "head.modulation" not in base_bare:
        raise VaceModuleError(f"{base_name} is not a Wan2.1 transformer (no patch_embedding / head.modulation weights).")
    if "img_emb.proj.0.weight" in base_bare or _in_channels(base_bare) != 16:
        raise VaceModuleError(
            f"{base_name} is a Wan2.1 image-to-video (or other conditioned) model; a VACE module goes with the text-to-video "
            "base of the same size (e.g. Wan2_1-T2V-14B with Wan2_1-VACE_module_14B)."
        )
    base_width, module_width = _width(base_bare, "patch_embedding.weight"), _width(module_bare, "vace_patch_embedding.weight")
    if base_width != module_width:
        sizes = {1536: "1.3B", 5120: "14B"}
        raise VaceModuleError(
            f"{module_name} is {sizes.get(module_width, f'{module_width} wide')} and {base_name} is "
            f"{sizes.get(base_width, f'{base_width} wide')}: the VACE module and the text-to-video base must be the same size."
        )
    merged = dict(base_bare)
    merged.update(module_bare)
    return merged


def _in_channels(state: Mapping[str, Any]) -> int:
    value = state["patch_embedding.weight"]
    shape = tuple(getattr(value, "quant_shape", None) or getattr(value, "shape", None) or value)
    return int(shape[1])
