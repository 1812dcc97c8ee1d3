"""What the sampling model is, read from ComfyUI's ModelPatcher: the fingerprint of its base weights and every patch
that changes its velocity. The IPA VACE Sampler records both per candidate; the trainer
(``ipa_train/training/reference_check.py``) reproduces each patch or refuses to train.

Both halves of the comparison use the functions in ``ipa_train/wan/fingerprint.py``: this module only finds the
tensors in ComfyUI's objects.
"""

from __future__ import annotations

from typing import Any

from ..ipa_train.wan.fingerprint import lora_group_digest, lora_patch_digest, weights_fingerprint

# model_options keys that only steer CFG or the sampler loop: they change how a candidate was made, not the model's
# velocity for a given (x_t, t, conditioning), which is what the trainer's reference must equal.
_SAMPLING_ONLY_OPTIONS = {"sampler_cfg_function", "sampler_post_cfg_function", "sampler_pre_cfg_function", "disable_cfg1_optimization",
                          "denoise_mask_function"}
_IGNORED_OPTION_KEYS = {"ipa_loras", "transformer_options"}
_COMPILE_KEY = "torch.compile"  # TorchCompileModel's wrapper: the same function, compiled (informational, not refused)
_IGNORED_OBJECT_PATCHES = {"model_sampling"}  # the shift: the trainer works on the stored sigmas, not on a schedule

_cache: dict[Any, dict] = {}  # lora_patches per patches_uuid: digesting a 14B LoRA takes about a second


def base_weights_fingerprint(model) -> str:
    """:func:`weights_fingerprint` of the ModelPatcher's base weights, without its LoRAs: each weight as it was before
    patching (from the patcher's backup while a LoRA is patched in, as ``get_key_patches`` does), read by attribute:
    ComfyUI-GGUF's modules report a fake state dict (meta tensors and extra ``temp.weight`` entries)."""
    import comfy.utils

    def weight(name: str):
        key = "diffusion_model." + name
        backup = model.backup.get(key)
        if backup is not None:
            return backup.weight
        hooked = getattr(model, "hook_backup", {}).get(key)
        if hooked is not None:
            return hooked[0]
        try:
            return comfy.utils.get_attr(model.model, key)
        except AttributeError:
            return None

    return weights_fingerprint(weight)


def _lora_weights(patch) -> Any:
    """(up, down, alpha) of a plain LoRA patch (ComfyUI's ``LoRAAdapter`` without mid / DoRA / reshape), else None."""
    weights = getattr(patch, "weights", None)
    if type(patch).__name__ != "LoRAAdapter" or not isinstance(weights, tuple) or len(weights) < 3:
        return None
    up, down, alpha = weights[:3]
    if any(extra is not None for extra in weights[3:]):
        return None
    return up, down, alpha


def lora_patches(model) -> dict[str, Any]:
    """The model's weight patches, grouped: ``loras`` (one entry per strength: weights patched and
    :func:`lora_group_digest`) and ``unidentified`` (patches that are not plain LoRAs: LoHa, LoKr, full diffs,
    model merges, offsets or functions)."""
    key = model.patches_uuid  # a new uuid whenever the patches change; clones share patches and uuid
    if key in _cache:
        return _cache[key]
    groups: dict[float, list[str]] = {}
    unidentified: dict[str, int] = {}
    for weight_key, entries in model.patches.items():
        for strength, patch, strength_model, offset, function in entries:
            lora = _lora_weights(patch) if (strength_model == 1.0 and offset is None and function is None) else None
            if lora is None or not weight_key.startswith("diffusion_model."):
                kind = type(patch).__name__
                unidentified[kind] = unidentified.get(kind, 0) + 1
                continue
            up, down, alpha = lora
            scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
            groups.setdefault(round(float(strength), 6), []).append(
                lora_patch_digest(weight_key[len("diffusion_model."):], up, down, scale))
    report: dict[str, Any] = {}
    if groups:
        report["loras"] = [{"strength": strength, "weights": len(digests), "digest": lora_group_digest(digests)}
                           for strength, digests in sorted(groups.items())]
    if unidentified:
        report["unidentified"] = unidentified
    if len(_cache) > 16:
        _cache.clear()
    _cache[key] = report
    return report


def describe_patches(model) -> dict[str, Any]:
    """What is patched into a ModelPatcher besides the base weights: the trainer must reproduce all of it, or its
    reference model is not the model that sampled the candidates."""
    report: dict[str, Any] = {}
    weights = lora_patches(model)
    if weights.get("loras"):
        report["loras"] = weights["loras"]
    if weights.get("unidentified"):
        report["unidentified_weight_patches"] = weights["unidentified"]
    ipa_loras = model.model_options.get("ipa_loras")
    if ipa_loras:
        report["ipa_loras"] = list(ipa_loras)
    objects = sorted(key for key in model.object_patches if key not in _IGNORED_OBJECT_PATCHES)
    if objects:
        report["object_patches"] = objects
    options = sorted(key for key, value in model.model_options.items() if key not in _IGNORED_OPTION_KEYS and value)
    velocity = [key for key in options if key not in _SAMPLING_ONLY_OPTIONS]
    if velocity:
        report["model_options"] = velocity
    if len(velocity) < len(options):
        report["sampling_options"] = [key for key in options if key in _SAMPLING_ONLY_OPTIONS]
    transformer_options = model.model_options.get("transformer_options", {})
    transformer_keys = sorted(key for key, value in transformer_options.items() if value)
    if transformer_keys:
        report["transformer_options"] = transformer_keys
    if "rope_options" in transformer_keys:
        report["rope_options"] = {k: float(v) for k, v in transformer_options["rope_options"].items() if isinstance(v, (int, float))}
    wrappers = sorted({f"{kind}:{key}" for kind, keyed in (getattr(model, "wrappers", None) or {}).items()
                       for key, functions in keyed.items() if functions and key != _COMPILE_KEY})
    if wrappers:
        report["model_wrappers"] = wrappers
    if any(functions for keyed in (getattr(model, "wrappers", None) or {}).values() for key, functions in keyed.items() if key == _COMPILE_KEY):
        report["sampling_options"] = report.get("sampling_options", []) + ["torch.compile"]
    injections = sorted(key for key, value in (getattr(model, "injections", None) or {}).items() if value)
    if injections:
        report["injections"] = injections
    if getattr(model, "hook_patches", None):
        report["hooks"] = len(model.hook_patches)
    try:
        dtype = model.model.get_dtype()
        if dtype is not None and "float8" in str(dtype):
            report["weight_dtype"] = str(dtype)
    except Exception:  # older ComfyUI builds: dtype is informative only
        pass
    return report
