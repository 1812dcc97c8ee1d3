"""LoRA key layouts for Wan2.1(-VACE) and their conversion to ComfyUI's native Wan layout.

Native layout (what ComfyUI's own LoRA loader and the popular Wan wrapper packs read, and what the trainer
writes)::

    diffusion_model.{blocks|vace_blocks}.N.{self_attn|cross_attn}.{q,k,v,o}.lora_A.weight   [rank, in]
    diffusion_model.{blocks|vace_blocks}.N.{self_attn|cross_attn}.{q,k,v,o}.lora_B.weight   [out, rank]
    diffusion_model.{blocks|vace_blocks}.N.{self_attn|cross_attn}.{q,k,v,o}.alpha           scalar
    (and ffn.0 / ffn.2, vace_blocks.N.before_proj / after_proj, the embedders and head.head)

Scale semantics, kept exact by the conversion: ComfyUI applies ``W + strength * (alpha / rank) * B @ A`` when
``.alpha`` exists and ``W + strength * B @ A`` when it does not; diffusers and DiffSynth files carry no alpha
and mean scale 1 (diffusers may record peft's ``lora_alpha`` in the ``lora_adapter_metadata`` header, which is
honoured). The native output always carries an explicit ``.alpha`` equal to ``scale * rank``, so every loader
that follows the alpha/rank rule applies the same scale as the source format meant.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from .model import diffusers_key_to_original

NATIVE_PREFIX = "diffusion_model."

# Native (original Wan) module names that can carry a LoRA, as regexes over the dotted name.
_NATIVE_MODULE = re.compile(
    r"^(?:"
    r"(?:vace_blocks|blocks)\.\d+\.(?:self_attn|cross_attn)\.(?:q|k|v|o|k_img|v_img)"
    r"|(?:vace_blocks|blocks)\.\d+\.ffn\.(?:0|2)"
    r"|vace_blocks\.\d+\.(?:before_proj|after_proj)"
    r"|(?:text_embedding|time_embedding)\.(?:0|2)"
    r"|time_projection\.1|head\.head|(?:vace_)?patch_embedding|img_emb\.proj\.(?:1|3)"
    r")$"
)

# Native <-> diffusers module names (WanVACETransformer3DModel); one rule each way per pattern.
_NATIVE_TO_DIFFUSERS = [
    (r"^((?:vace_)?blocks\.\d+)\.self_attn\.", r"\1.attn1."),
    (r"^((?:vace_)?blocks\.\d+)\.cross_attn\.", r"\1.attn2."),
    (r"\.(attn[12])\.q$", r".\1.to_q"),
    (r"\.(attn[12])\.k$", r".\1.to_k"),
    (r"\.(attn[12])\.v$", r".\1.to_v"),
    (r"\.(attn[12])\.o$", r".\1.to_out.0"),
    (r"\.(attn[12])\.k_img$", r".\1.add_k_proj"),
    (r"\.(attn[12])\.v_img$", r".\1.add_v_proj"),
    (r"\.ffn\.0$", ".ffn.net.0.proj"),
    (r"\.ffn\.2$", ".ffn.net.2"),
    (r"^(vace_blocks\.\d+)\.before_proj$", r"\1.proj_in"),
    (r"^(vace_blocks\.\d+)\.after_proj$", r"\1.proj_out"),
    (r"^text_embedding\.0$", "condition_embedder.text_embedder.linear_1"),
    (r"^text_embedding\.2$", "condition_embedder.text_embedder.linear_2"),
    (r"^time_embedding\.0$", "condition_embedder.time_embedder.linear_1"),
    (r"^time_embedding\.2$", "condition_embedder.time_embedder.linear_2"),
    (r"^time_projection\.1$", "condition_embedder.time_proj"),
    (r"^head\.head$", "proj_out"),
    (r"^img_emb\.proj\.1$", "condition_embedder.image_embedder.ff.net.0.proj"),
    (r"^img_emb\.proj\.3$", "condition_embedder.image_embedder.ff.net.2"),
]
_N2D = [(re.compile(p), r) for p, r in _NATIVE_TO_DIFFUSERS]

# Underscore forms (kohya / musubi ``lora_unet_``, OneTrainer / SimpleTuner ``lora_transformer_``) cannot be
# split on "_" blindly: these patterns know where the dots were.
_KOHYA_NATIVE = [
    (re.compile(r"^(vace_blocks|blocks)_(\d+)_(self_attn|cross_attn)_(q|k|v|o|k_img|v_img)$"), r"\1.\2.\3.\4"),
    (re.compile(r"^(vace_blocks|blocks)_(\d+)_ffn_(0|2)$"), r"\1.\2.ffn.\3"),
    (re.compile(r"^vace_blocks_(\d+)_(before_proj|after_proj)$"), r"vace_blocks.\1.\2"),
    (re.compile(r"^(text_embedding|time_embedding)_(0|2)$"), r"\1.\2"),
    (re.compile(r"^time_projection_1$"), "time_projection.1"),
    (re.compile(r"^head_head$"), "head.head"),
    (re.compile(r"^(vace_patch_embedding|patch_embedding)$"), r"\1"),
    (re.compile(r"^img_emb_proj_(1|3)$"), r"img_emb.proj.\1"),
]
_KOHYA_DIFFUSERS = [
    (re.compile(r"^(vace_blocks|blocks)_(\d+)_(attn1|attn2)_(to_q|to_k|to_v|add_k_proj|add_v_proj)$"), r"\1.\2.\3.\4"),
    (re.compile(r"^(vace_blocks|blocks)_(\d+)_(attn1|attn2)_to_out_0$"), r"\1.\2.\3.to_out.0"),
    (re.compile(r"^(vace_blocks|blocks)_(\d+)_ffn_net_0_proj$"), r"\1.\2.ffn.net.0.proj"),
    (re.compile(r"^(vace_blocks|blocks)_(\d+)_ffn_net_2$"), r"\1.\2.ffn.net.2"),
    (re.compile(r"^vace_blocks_(\d+)_(proj_in|proj_out)$"), r"vace_blocks.\1.\2"),
]

# Weight roles by key suffix, longest first. A = down projection [rank, in], B = up projection [out, rank].
_ROLE_SUFFIXES = [
    (".lora_A.default.weight", "A", "peft"),
    (".lora_B.default.weight", "B", "peft"),
    (".lora_A.weight", "A", "lora_A/B"),
    (".lora_B.weight", "B", "lora_A/B"),
    (".lora_down.weight", "A", "lora_down/up"),
    (".lora_up.weight", "B", "lora_down/up"),
    (".lora.down.weight", "A", "lora.down/up"),
    (".lora.up.weight", "B", "lora.down/up"),
    (".alpha", "alpha", None),
    (".diff_b", "diff_b", "diff"),
    (".diff", "diff", "diff"),
]
_PEFT_NAMED_ADAPTER = re.compile(r"^(.*)\.lora_([AB])\.([A-Za-z0-9_\-]+)\.weight$")

_PREFIXES = [
    ("base_model.model.diffusion_model.", "native", "peft (base_model.model.)"),
    ("base_model.model.transformer.", "diffusers", "peft (base_model.model.)"),
    ("base_model.model.", "auto", "peft (base_model.model.)"),
    ("model.diffusion_model.", "native", "ComfyUI native"),
    ("diffusion_model.", "native", "ComfyUI native"),
    ("transformer.", "auto", "diffusers"),
    ("lora_unet__", "kohya", "kohya/musubi"),  # Wan "Fun" LoRAs
    ("lora_unet_", "kohya", "kohya/musubi"),
    ("lycoris_", "kohya", "lycoris"),
    ("lora_transformer_", "kohya", "OneTrainer"),
    ("", "auto", "DiffSynth/peft"),
]


def diffusers_module_to_native(name: str) -> str:
    """``blocks.0.attn1.to_q`` -> ``diffusion_model.blocks.0.self_attn.q`` (raises ValueError if unknown)."""
    native = _to_native(name)
    if not _NATIVE_MODULE.match(native):
        raise ValueError(f"{name!r} is not a LoRA-capable module of the Wan2.1-VACE transformer")
    return NATIVE_PREFIX + native


def native_to_diffusers_module(name: str) -> str:
    """``diffusion_model.blocks.0.self_attn.q`` (prefix optional) -> ``blocks.0.attn1.to_q``."""
    bare = name[len(NATIVE_PREFIX):] if name.startswith(NATIVE_PREFIX) else name
    if not _NATIVE_MODULE.match(bare):
        raise ValueError(f"{name!r} is not a LoRA-capable module of the native Wan2.1 layout")
    return _rename(bare, _N2D)


def _rename(name: str, rules) -> str:
    for pattern, replacement in rules:
        name = pattern.sub(replacement, name)
    return name


def _to_native(name: str) -> str:
    # diffusers -> original Wan names have one source of truth: the single-file writer's key rules.
    return diffusers_key_to_original(name + ".")[:-1]


def _native_module(body: str, kind: str) -> Optional[str]:
    """The bare native module name for a key body (prefix and role suffix removed), or None."""
    if kind == "kohya":
        for pattern, replacement in _KOHYA_NATIVE:
            if pattern.match(body):
                return pattern.sub(replacement, body)
        for pattern, replacement in _KOHYA_DIFFUSERS:
            if pattern.match(body):
                return _to_native(pattern.sub(replacement, body))
        return None
    if _NATIVE_MODULE.match(body):
        return body
    if kind in ("auto", "diffusers"):
        native = _to_native(body)
        if native != body and _NATIVE_MODULE.match(native):
            return native
    return None


def _split_role(key: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
    for suffix, role, style in _ROLE_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role, style
    match = _PEFT_NAMED_ADAPTER.match(key)
    if match:
        return match.group(1), match.group(2), f"peft adapter '{match.group(3)}'"
    return None, None, None


def parse_key(key: str) -> Optional[tuple[str, str, str]]:
    """(bare native module, role, format description) for one LoRA key, or None when not understood."""
    body, role, style = _split_role(key)
    if body is None:
        return None
    for prefix, kind, fmt in _PREFIXES:
        if body.startswith(prefix):
            native = _native_module(body[len(prefix):], kind)
            if native is not None:
                return native, role, fmt if style in (None, "diff") else f"{fmt}, {style}"
    return None


@dataclass
class ConversionReport:
    """What :func:`to_comfy_native` understood. Counts are of source keys."""

    matched: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)  # native module names with a LoRA (with prefix)
    diff_modules: list[str] = field(default_factory=list)  # native module names with full-weight diffs
    alpha_from: dict[str, str] = field(default_factory=dict)  # module -> "file" | "metadata" | "default (scale 1)"

    @property
    def ok(self) -> bool:
        return bool(self.modules or self.diff_modules)

    def summary(self) -> str:
        text = (
            f"{len(self.matched)} of {len(self.matched) + len(self.unmatched)} keys matched "
            f"({len(self.modules)} LoRA modules"
            + (f", {len(self.diff_modules)} weight diffs" if self.diff_modules else "")
            + f"; format: {', '.join(self.formats) or 'unknown'})"
        )
        if self.unmatched:
            shown = ", ".join(self.unmatched[:5]) + (" ..." if len(self.unmatched) > 5 else "")
            text += f"; not matched: {shown}"
        return text


def metadata_alphas(metadata: Optional[Mapping[str, str]]) -> Optional[dict]:
    """peft's LoRA config recorded by diffusers (``lora_adapter_metadata`` header), prefixes removed."""
    if not metadata or "lora_adapter_metadata" not in metadata:
        return None
    try:
        raw = json.loads(metadata["lora_adapter_metadata"])
    except (TypeError, json.JSONDecodeError):
        return None
    if not isinstance(raw, dict):
        return None
    return {(k.split(".", 1)[1] if k.startswith("transformer.") else k): v for k, v in raw.items()}


def _scale_from_peft_config(config: dict, diffusers_module: str, rank: int) -> Optional[float]:
    alpha = config.get("lora_alpha")
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", diffusers_module):
            alpha = value
            break
    if alpha is None:
        return None
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def to_comfy_native(
    state_dict: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Converts any supported Wan LoRA layout to ComfyUI's native one (tensors copied, never aliased).

    Keys that are not understood, and LoRA halves without their partner, are left out and listed in
    ``report.unmatched``. Every module in the output has ``lora_A.weight``, ``lora_B.weight`` and ``.alpha``.
    Raises ValueError when two source keys claim the same native weight.
    """
    report = ConversionReport()
    parts = _by_module(state_dict, report)
    peft_config = metadata_alphas(metadata)
    native: dict[str, torch.Tensor] = {}
    used_formats: dict[str, None] = {}
    for module, slot in parts.items():
        name = NATIVE_PREFIX + module
        if "A" in slot and "B" in slot:
            used = _convert_pair(module, slot, peft_config, native, report)
        elif "diff" in slot or "diff_b" in slot:
            used = _convert_diffs(name, slot, native, report)
            report.diff_modules.append(name)
            if "alpha" in slot:
                report.unmatched.append(slot["alpha"][0])
        else:  # half a LoRA, or an alpha alone
            report.unmatched.extend(source for source, _ in slot.values())
            used = []
        for source in used:
            used_formats[parse_key(source)[2]] = None
    report.formats = list(used_formats)
    return native, report


Slot = dict[str, tuple[str, torch.Tensor]]  # role ("A", "B", "alpha", "diff", "diff_b") -> (source key, tensor)


def _by_module(state_dict: Mapping[str, torch.Tensor], report: ConversionReport) -> dict[str, Slot]:
    """The source tensors grouped by the module they belong to; keys not understood go to ``report.unmatched``."""
    parts: dict[str, Slot] = {}
    for key, tensor in state_dict.items():
        parsed = parse_key(key)
        if parsed is None:
            report.unmatched.append(key)
            continue
        module, role, _ = parsed
        slot = parts.setdefault(module, {})
        if role in slot:
            raise ValueError(f"LoRA keys {slot[role][0]!r} and {key!r} both give {role} of module {module}")
        slot[role] = (key, tensor)
    return parts


def _convert_pair(module: str, slot: Slot, peft_config: Optional[dict], native: dict, report: ConversionReport) -> list[str]:
    """A module with both LoRA halves: its down, up and alpha (from the file, the PEFT metadata, or scale 1) and any
    diffs. Returns the source keys used."""
    name = NATIVE_PREFIX + module
    keys = [source for source, _ in slot.values()]
    a, b = slot["A"][1], slot["B"][1]
    rank = a.shape[0]
    if b.shape[1] != rank:
        raise ValueError(f"LoRA for {module}: down {tuple(a.shape)} and up {tuple(b.shape)} ranks differ")
    native[f"{name}.lora_A.weight"] = a.detach().clone()
    native[f"{name}.lora_B.weight"] = b.detach().clone()
    if "alpha" in slot:
        native[f"{name}.alpha"] = slot["alpha"][1].detach().clone().reshape(())
        report.alpha_from[name] = "file"
    else:
        scale = None
        if peft_config is not None:
            scale = _scale_from_peft_config(peft_config, native_to_diffusers_module(module), rank)
        report.alpha_from[name] = "metadata" if scale is not None else "default (scale 1)"
        native[f"{name}.alpha"] = torch.tensor(float(rank) * (1.0 if scale is None else scale), dtype=torch.float32)
    report.modules.append(name)
    report.matched.extend(keys)
    for role in ("diff", "diff_b"):
        if role in slot:
            native[f"{name}.{role}"] = slot[role][1].detach().clone()
            if name not in report.diff_modules:
                report.diff_modules.append(name)
    return keys


def _convert_diffs(name: str, slot: Slot, native: dict, report: ConversionReport) -> list[str]:
    """A module with full weight (and bias) differences only. Returns the source keys used."""
    used = []
    for role in ("diff", "diff_b"):
        if role in slot:
            native[f"{name}.{role}"] = slot[role][1].detach().clone()
            report.matched.append(slot[role][0])
            used.append(slot[role][0])
    return used
