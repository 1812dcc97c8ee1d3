"""Wan2.1-VACE transformer construction and loading (diffusers' ``WanVACETransformer3DModel``).

ComfyUI users keep single-file checkpoints in the original Wan key layout (``blocks.0.self_attn.q.weight``,
bare or prefixed ``model.diffusion_model.``). diffusers converts those with ``from_single_file``; given a local
``config=`` folder it never asks the hub. The configs of the two released sizes ship in ``configs/``; any other
size (the tiny test models) gets a config derived from the weights, written to a temporary folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..choices import BasePrecision

log = logging.getLogger(__name__)

# diffusers' own tiny test configuration of the VACE transformer: same classes and module layout as the real
# models, random weights, fast on CPU. Used by tests, the demo and benchmarks; never downloads anything.
TINY_VACE_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=3,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
    vace_layers=[0, 2],
    vace_in_channels=96,
)

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
# Released sizes, keyed by model width (patch_embedding output channels).
SHIPPED_CONFIGS = {1536: "wan2.1-vace-1.3b", 5120: "wan2.1-vace-14b"}
FP16_FILE_NAMES = {1536: "wan2.1_vace_1.3B_fp16.safetensors", 5120: "wan2.1_vace_14B_fp16.safetensors"}

ORIGINAL_PREFIX = "model.diffusion_model."
# Written by save_original_wan_single_file so that sizes the weights cannot fully describe (head count of a
# model whose width is not a multiple of 128, explicit VACE layer positions) load back exactly.
CONFIG_METADATA_KEY = "ipa_diffusers_config"
# How the frozen base's block linears are stored: "bf16" as the run's precision, "fp8" float8_e4m3fn + scale.
BASE_PRECISIONS = BasePrecision.values()
_CONFIG_FIELDS = (
    "patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
    "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "image_dim", "added_kv_proj_dim",
    "rope_max_seq_len", "pos_embed_seq_len", "vace_layers", "vace_in_channels",
)


class ModelLoadError(ValueError):
    """A checkpoint that cannot be loaded as a Wan2.1-VACE transformer; the message says what to do."""


def build_tiny_transformer(seed: int = 0, **overrides):
    """A tiny random-weight ``WanVACETransformer3DModel`` (float32, eval mode)."""
    from diffusers import WanVACETransformer3DModel

    config = {**TINY_VACE_CONFIG, **overrides}
    torch.manual_seed(seed)
    model = WanVACETransformer3DModel(**config)
    return model.eval()


def shipped_config(name: str) -> dict:
    with open(CONFIG_ROOT / name / "config.json", "r", encoding="utf-8") as handle:
        return json.load(handle)


# ----------------------------------------------------------------------------------------------------------
# Reading a checkpoint's header and recognising its layout

def read_checkpoint_header(path: os.PathLike | str) -> tuple[dict[str, tuple[int, ...]], dict[str, str], dict[str, str]]:
    """Shapes, dtypes and header metadata of a safetensors file, without reading the tensors."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                part = handle.get_slice(key)
                shapes[key] = tuple(int(n) for n in part.get_shape())
                dtypes[key] = str(part.get_dtype())
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        from ..fileio import describe_unreadable

        raise ModelLoadError(f"{path} {describe_unreadable(Path(path), error)}; copy or download the model file again "
                             "(an interrupted download is the usual cause)") from error
    return shapes, dtypes, metadata


def _strip_wan_prefix(shapes: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    for prefix in (ORIGINAL_PREFIX, "diffusion_model.", ""):
        if f"{prefix}head.modulation" in shapes or f"{prefix}patch_embedding.weight" in shapes:
            return prefix, {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    return "", dict(shapes)


def _count_blocks(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def detect_config(state_dict_keys_and_shapes: Mapping[str, Any], metadata: Optional[Mapping[str, str]] = None) -> dict:
    """The diffusers ``WanVACETransformer3DModel`` config for original-layout Wan2.1-VACE weights.

    ``state_dict_keys_and_shapes`` maps key -> shape (a tuple, ``torch.Size`` or a tensor); keys bare or
    prefixed ``model.diffusion_model.``. The released 1.3B and 14B sizes return the shipped configs. Other
    sizes are derived from the shapes; the head count follows Wan's (and ComfyUI's) 128-wide heads unless the
    file's metadata (written by :func:`save_original_wan_single_file`) records the exact config.
    """
    shapes = {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in state_dict_keys_and_shapes.items()}
    _, shapes = _strip_wan_prefix(shapes)
    _check_is_wan_vace(shapes, "these weights")
    dim = shapes["patch_embedding.weight"][0]
    num_layers = _count_blocks(shapes, "blocks.")
    num_vace = _count_blocks(shapes, "vace_blocks.")
    if num_layers == 0 or num_vace == 0:
        raise ModelLoadError("The weights have no transformer blocks or no VACE blocks: not a Wan2.1-VACE model.")

    recorded = _recorded_config(metadata)
    if dim in SHIPPED_CONFIGS and not recorded:
        config = shipped_config(SHIPPED_CONFIGS[dim])
    else:
        config = _derived_config(shapes, recorded, num_layers, num_vace)
    if len(config["vace_layers"]) != num_vace or config["num_layers"] != num_layers:
        raise ModelLoadError(
            f"The weights have {num_layers} blocks and {num_vace} VACE blocks, which does not match the Wan2.1-VACE "
            f"{SHIPPED_CONFIGS.get(dim, 'config')} layout ({config['num_layers']} blocks, {len(config['vace_layers'])} "
            "VACE blocks). The file may be truncated or a different model."
        )
    return config


def _recorded_config(metadata: Optional[Mapping[str, str]]) -> dict:
    """The exact config :func:`save_original_wan_single_file` recorded in the file's metadata; ``{}`` if none."""
    if metadata and CONFIG_METADATA_KEY in metadata:
        try:
            return json.loads(metadata[CONFIG_METADATA_KEY])
        except json.JSONDecodeError:
            return {}
    return {}


def _derived_config(shapes: Mapping[str, tuple], recorded: Mapping[str, Any], num_layers: int, num_vace: int) -> dict:
    """The config of a Wan2.1-VACE size that ships no config, derived from the weight shapes (and ``recorded``)."""
    dim, in_channels, *patch = shapes["patch_embedding.weight"]
    if recorded.get("num_attention_heads"):
        heads = int(recorded["num_attention_heads"])
    elif dim % 128 == 0:
        heads = dim // 128
    else:
        raise ModelLoadError(
            f"Cannot tell the attention head count of a Wan model {dim} wide (Wan uses 128-wide heads and "
            "this width is not a multiple of 128). Use a released Wan2.1-VACE checkpoint (1.3B or 14B)."
        )
    return {
        "_class_name": "WanVACETransformer3DModel",
        "added_kv_proj_dim": None,
        "attention_head_dim": dim // heads,
        "cross_attn_norm": "blocks.0.norm3.weight" in shapes,
        "eps": 1e-06,
        "ffn_dim": shapes["blocks.0.ffn.0.weight"][0],
        "freq_dim": shapes["time_embedding.0.weight"][1],
        "image_dim": None,
        "in_channels": in_channels,
        "num_attention_heads": heads,
        "num_layers": num_layers,
        "out_channels": shapes["head.head.weight"][0] // math.prod(patch),
        "patch_size": list(patch),
        "pos_embed_seq_len": None,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in shapes else None,
        "rope_max_seq_len": int(recorded.get("rope_max_seq_len", 1024)),
        "text_dim": shapes["text_embedding.0.weight"][1],
        "vace_in_channels": shapes["vace_patch_embedding.weight"][1],
        # ComfyUI stores only the count; the released models place VACE blocks evenly from layer 0.
        "vace_layers": recorded.get("vace_layers") or list(range(0, num_layers, num_layers // num_vace))[:num_vace],
    }


def _check_is_wan_vace(shapes: Mapping[str, Any], what: str) -> None:
    if "blocks.0.attn1.to_q.weight" in shapes or "condition_embedder.time_embedder.linear_1.weight" in shapes:
        raise ModelLoadError(
            f"{what} use diffusers' key layout in a single file. Pass the diffusers model folder (with its "
            "config.json) instead, or the original-layout file ComfyUI uses (e.g. wan2.1_vace_1.3B_fp16.safetensors)."
        )
    if "head.modulation" not in shapes or "patch_embedding.weight" not in shapes:
        raise ModelLoadError(
            f"{what} are not a Wan2.1 transformer (no head.modulation / patch_embedding weights). Choose a "
            "Wan2.1-VACE diffusion model such as wan2.1_vace_1.3B_fp16.safetensors or wan2.1_vace_14B_fp16.safetensors."
        )
    if "vace_patch_embedding.weight" not in shapes:
        kind = "image-to-video" if "img_emb.proj.0.weight" in shapes else "text-to-video or other"
        hint = (
            " or keep this text-to-video file as the base and add its VACE module as vace_module "
            "(kijai's Wan2_1-VACE_module_*.safetensors of the same size)"
        ) if kind.startswith("text") else ""
        raise ModelLoadError(
            f"{what} are a Wan2.1 {kind} model without VACE blocks. IPA trains on Wan2.1-VACE: choose "
            f"wan2.1_vace_1.3B_fp16.safetensors or wan2.1_vace_14B_fp16.safetensors{hint}."
        )


# ----------------------------------------------------------------------------------------------------------
# Key names: original Wan <-> diffusers (the inverse of diffusers' convert_wan_transformer_to_diffusers)

_TO_ORIGINAL_RULES = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^((?:vace_)?blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(vace_blocks\.\d+)\.proj_in\.", r"\1.before_proj."),
    (r"^(vace_blocks\.\d+)\.proj_out\.", r"\1.after_proj."),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_out\.0\.", ".o."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.add_k_proj\.", ".k_img."),
    (r"\.add_v_proj\.", ".v_img."),
    (r"\.norm_added_k\.", ".norm_k_img."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
    # diffusers swapped the names of the cross-attention norm (original norm3) and the FFN norm (norm2).
    (r"\.norm2\.", ".__norm3__."),
    (r"\.norm3\.", ".norm2."),
    (r"\.__norm3__\.", ".norm3."),
]
_TO_ORIGINAL = [(re.compile(p), r) for p, r in _TO_ORIGINAL_RULES]


def diffusers_key_to_original(key: str) -> str:
    for pattern, replacement in _TO_ORIGINAL:
        key = pattern.sub(replacement, key)
    return key


def original_keys_to_diffusers(keys) -> list[str]:
    """diffusers' own conversion applied to key names only (meta tensors: no memory, no copies)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    fake = {k: torch.empty(0, device="meta") for k in keys}
    return list(convert_wan_transformer_to_diffusers(fake).keys())


def save_original_wan_single_file(
    model,
    path: os.PathLike | str,
    prefix: str = ORIGINAL_PREFIX,
    dtype: Optional[torch.dtype] = None,
    record_config: bool = True,
) -> Path:
    """Writes a diffusers ``WanVACETransformer3DModel`` as one safetensors file in the original Wan layout
    (what ComfyUI's UNETLoader and ``load_transformer`` read). Atomic.

    ``record_config`` stores the diffusers config in the header so sizes the weights cannot describe load back
    exactly; ComfyUI ignores it (it needs 128-wide heads and evenly spaced VACE layers, warned about below).
    """
    from ..fileio import atomic_save_safetensors

    state = model.state_dict()
    renamed = {diffusers_key_to_original(k): k for k in state}
    # Our inverse must be exact: run diffusers' forward conversion on the names and compare.
    back = dict(zip(original_keys_to_diffusers(list(renamed)), renamed.values()))
    wrong = [k for k, v in back.items() if k != v]
    if wrong or len(back) != len(state):
        raise RuntimeError(f"Key conversion to the original Wan layout is not invertible for: {wrong[:5]}")

    config = {k: model.config[k] for k in _CONFIG_FIELDS if k in model.config}
    problems = comfy_incompatibilities(config)
    if problems:
        warnings.warn("ComfyUI will not rebuild this model exactly: " + "; ".join(problems), stacklevel=2)
    tensors = {}
    for original, key in renamed.items():
        value = state[key].detach()
        tensors[prefix + original] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
    metadata = {"format": "pt"}
    if record_config:
        metadata[CONFIG_METADATA_KEY] = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in config.items()})
    return atomic_save_safetensors(path, tensors, metadata)


def comfy_incompatibilities(config: Mapping[str, Any]) -> list[str]:
    """Why ComfyUI's Wan model detection would build a different network from this diffusers config."""
    problems = []
    if config.get("attention_head_dim") != 128:
        problems.append(f"attention_head_dim is {config.get('attention_head_dim')} (ComfyUI assumes 128)")
    if config.get("text_dim") != 4096:
        problems.append(f"text_dim is {config.get('text_dim')} (ComfyUI assumes 4096)")
    layers, vace = config.get("num_layers", 0), list(config.get("vace_layers", []))
    if vace and list(range(0, layers, layers // len(vace))) != vace:
        problems.append(f"vace_layers {vace} are not range(0, {layers}, {layers // len(vace)}) as ComfyUI assumes")
    if tuple(config.get("patch_size", (1, 2, 2))) != (1, 2, 2) or config.get("freq_dim") != 256:
        problems.append("patch size or frequency width differs from Wan's (1, 2, 2) / 256")
    return problems


# ----------------------------------------------------------------------------------------------------------
# Loading

def _config_dir(config: dict) -> tuple[str, Optional[tempfile.TemporaryDirectory]]:
    for name in SHIPPED_CONFIGS.values():
        if shipped_config(name) == config:
            return str(CONFIG_ROOT / name), None
    tmp = tempfile.TemporaryDirectory(prefix="ipa-wan-config-")
    with open(Path(tmp.name) / "config.json", "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)
    return tmp.name, tmp


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    from diffusers import WanVACETransformer3DModel

    init = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = WanVACETransformer3DModel(**init)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _load_diffusers_folder(path: Path, torch_dtype):
    from diffusers import WanVACETransformer3DModel

    folder = path / "transformer" if not (path / "config.json").exists() and (path / "transformer" / "config.json").exists() else path
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ModelLoadError(
            f"{path} is a folder without config.json: give a diffusers WanVACETransformer3DModel folder (or its "
            "pipeline folder with transformer/), or a single .safetensors file."
        )
    with open(config_file, "r", encoding="utf-8") as handle:
        class_name = json.load(handle).get("_class_name")
    if class_name != "WanVACETransformer3DModel":
        raise ModelLoadError(f"{config_file} describes a {class_name}, not a WanVACETransformer3DModel.")
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(f"{folder} holds no .safetensors weights (only safetensors are loaded, never pickle files).")
    return WanVACETransformer3DModel.from_pretrained(
        str(folder), torch_dtype=torch_dtype, local_files_only=True, use_safetensors=True
    )


def _check_layout(name: str, config: dict, shapes: Mapping[str, Any]) -> None:
    """Names and shapes against the model before loading: diffusers would leave missing weights uninitialised and
    only warn about unexpected ones."""
    expected = _expected_shapes(config)
    converted = dict(zip(original_keys_to_diffusers(shapes), shapes.values()))
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = [k for k in expected if k in converted and tuple(converted[k]) != expected[k]]
    if missing or unexpected or mismatched:
        raise ModelLoadError(
            f"{name} does not match the Wan2.1-VACE layout it appears to be: {len(missing)} weights missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(mismatched)} of the wrong shape "
            f"{mismatched[:3]}. The file may be truncated, merged or a different model."
        )


def _from_single_file(source: Any, config: dict, torch_dtype, **kwargs):
    from diffusers import WanVACETransformer3DModel

    config_dir, tmp = _config_dir(config)
    try:
        # from_single_file casts with .to(dtype), which makes diffusers warn about its fp32-preferred modules on
        # every load, float32 included; the cast itself is what from_single_file always does.
        cast_logger = logging.getLogger("diffusers.models.modeling_utils")
        level = cast_logger.level
        cast_logger.setLevel(logging.ERROR)
        try:
            return WanVACETransformer3DModel.from_single_file(
                source, config=config_dir, torch_dtype=torch_dtype, local_files_only=True, **kwargs
            )
        finally:
            cast_logger.setLevel(level)
    finally:
        if tmp is not None:
            tmp.cleanup()


@dataclass
class ModelSource:
    """One safetensors file of a model (the base, or a VACE module) with its key prefix and fp8 layout."""

    path: Path
    prefix: str
    layout: Any
    shapes: dict  # bare key -> shape, model weights only (no scales or quantisation markers)
    metadata: dict

    @classmethod
    def read(cls, path: Path) -> "ModelSource":
        from .fp8_files import Fp8LayoutError, detect_fp8_layout, read_quant_formats

        shapes, dtypes, metadata = read_checkpoint_header(path)
        prefix, bare = _strip_wan_prefix(shapes)
        if not prefix:
            from .vace_module import PREFIXES

            prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in shapes)), "")
            bare = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)} if prefix else dict(shapes)
        layout = detect_fp8_layout(shapes, dtypes, metadata, prefix)
        try:
            read_quant_formats(path, layout, metadata, prefix)
        except Fp8LayoutError as exc:
            raise ModelLoadError(str(exc)) from exc
        weights = {k: v for k, v in bare.items() if prefix + k not in layout.extra_keys}
        return cls(path, prefix, layout, weights, metadata)


def _read_vace_module(vace_module) -> ModelSource:
    module_path = Path(vace_module).expanduser()
    if not module_path.is_file():
        raise ModelLoadError(f"vace_module file not found: {module_path}")
    if module_path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"vace_module {module_path.name}: only .safetensors VACE modules are loaded.")
    return ModelSource.read(module_path)


@dataclass
class ModelFile:
    """What a single-file Wan2.1-VACE model is, read from its headers only (no tensor is loaded): its files (the
    base, and a VACE module merged into it), their bare weight shapes and the diffusers config they make. One
    description that both the loader and the memory planner use, so the two never disagree about a file."""

    sources: list  # ModelSource: the base, then the VACE module if any
    shapes: dict  # bare key -> shape of the merged model weights
    config: dict

    @property
    def name(self) -> str:
        return " + ".join(source.path.name for source in self.sources)

    @classmethod
    def describe(cls, path: Path, vace_module: Optional[os.PathLike | str] = None) -> "ModelFile":
        """Reads ``path`` (and ``vace_module``) and checks that they make a Wan2.1-VACE model; ``ModelLoadError`` if not."""
        from .vace_module import VaceModuleError, is_vace_module, merge_vace_module

        base = ModelSource.read(path)
        sources, shapes = [base], base.shapes
        if vace_module:
            module = _read_vace_module(vace_module)
            try:
                shapes = merge_vace_module(base.shapes, module.shapes, base_name=path.name, module_name=module.path.name)
            except VaceModuleError as exc:
                raise ModelLoadError(str(exc)) from None
            sources.append(module)
        elif is_vace_module(base.shapes):
            raise ModelLoadError(
                f"{path.name} is a VACE module (VACE blocks only, kijai's layout): choose the Wan2.1 text-to-video file of the "
                f"same size as base_model and {path.name} as vace_module."
            )
        name = " + ".join(source.path.name for source in sources)
        _check_is_wan_vace(shapes, f"The weights in {name}")
        return cls(sources, shapes, detect_config(shapes, base.metadata))

    def fp8_linears(self) -> dict[str, str]:
        """Diffusers linear name -> ``"tensor"`` (stored fp8 with a scale) or ``"none"`` (plain fp8), for the
        linears stored fp8 in any of the files."""
        names = {diffusers_key_to_original(k): k for k in empty_transformer(self.config).state_dict()}
        fp8 = {}
        for source in self.sources:
            for key in source.layout.fp8_weights:
                diffusers = names.get(key)
                if diffusers and diffusers.endswith(".weight"):
                    layer = key[: -len(".weight")]
                    fp8[diffusers[: -len(".weight")]] = "tensor" if layer in source.layout.weight_scales else "none"
        return fp8


def _load_gguf(path: Path, torch_dtype):
    """``WanVACETransformer3DModel`` with diffusers' GGUF quantiser: the weights as stored, computed in ``torch_dtype``
    (see :mod:`.gguf_model`)."""
    from diffusers import GGUFQuantizationConfig

    from .gguf_model import GGUFFileError, logical_shapes, read_gguf_state_dict, tensor_kinds

    try:
        tensors = read_gguf_state_dict(path)
    except GGUFFileError as exc:
        raise ModelLoadError(str(exc)) from None
    shapes = logical_shapes(tensors)
    _check_is_wan_vace(shapes, f"The weights in {path.name}")
    config = detect_config(shapes)
    _check_layout(path.name, config, shapes)
    log.info("%s: GGUF tensor types %s; quantised weights stay quantised, computed in %s", path.name, tensor_kinds(tensors), torch_dtype)
    model = _from_single_file(tensors, config, torch_dtype, quantization_config=GGUFQuantizationConfig(compute_dtype=torch_dtype))
    return model.eval()


def load_transformer(path: os.PathLike | str, torch_dtype: torch.dtype = torch.float32, vace_module: Optional[os.PathLike | str] = None,
                     base_precision: str = BasePrecision.BF16.value, compute_dtype: Optional[torch.dtype] = None):
    """Loads a Wan2.1-VACE transformer as diffusers' ``WanVACETransformer3DModel`` (eval mode), offline.

    ``path``: a single safetensors file in the original Wan layout (keys bare or ``model.diffusion_model.``),
    as ComfyUI keeps in ``models/diffusion_models``; a GGUF file in city96's Wan layout (needs the ``gguf``
    package; the weights stay quantised and are dequantised per layer in every forward, like ComfyUI-GGUF does);
    or a diffusers model folder. ``vace_module``: with a Wan2.1 text-to-video ``path``, kijai's VACE module file
    (VACE blocks only) of the same size, merged into it (:mod:`.vace_module`).

    fp8 files (kijai's plain fp8, ComfyUI's ``fp8_scaled`` and ``comfy_quant`` layouts, base or VACE module) load as
    stored: their fp8 linear layers become ``FrozenLinear`` layers dequantised as ComfyUI does. ``base_precision=
    "fp8"`` stores the block linears of a full-precision file in fp8 too (per output channel scale), quantised tensor
    by tensor while the file streams in, so a 14B bf16 file is never held whole in memory. ``compute_dtype`` is what
    fp8 layers dequantise to outside autocast (default ``torch_dtype``). Raises ``ModelLoadError`` for missing files,
    other models, unreadable quantisations and incomplete weights.
    """
    if base_precision not in BASE_PRECISIONS:
        raise ModelLoadError(f"base_precision {base_precision!r} is not one of {list(BASE_PRECISIONS)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"Model file not found: {path}")
    if path.is_dir():
        return _load_folder(path, torch_dtype, vace_module, base_precision, compute_dtype)
    if path.suffix.lower() == ".gguf":
        _check_gguf_options(path, vace_module, base_precision)
        return _load_gguf(path, torch_dtype)
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(
            f"{path.name}: only .safetensors checkpoints (original Wan or ComfyUI layout), .gguf files (city96's layout) or "
            "a diffusers folder are loaded; never pickle files (.ckpt, .pt, .bin)."
        )
    return _load_safetensors(path, torch_dtype, vace_module, base_precision, compute_dtype)


def _load_folder(path: Path, torch_dtype, vace_module, base_precision: str, compute_dtype):
    if vace_module:
        raise ModelLoadError(f"vace_module goes with a single-file text-to-video base, not with the diffusers folder {path}.")
    model = _load_diffusers_folder(path, torch_dtype)
    if base_precision == BasePrecision.FP8:
        from .frozen_linear import quantize_block_linears

        quantize_block_linears(model, compute_dtype or torch_dtype)
    return model


def _check_gguf_options(path: Path, vace_module, base_precision: str) -> None:
    if vace_module:
        raise ModelLoadError(
            f"vace_module with a GGUF base ({path.name}) is not supported: use a GGUF that includes VACE (a Wan2.1-VACE GGUF), "
            "or the safetensors text-to-video base with the safetensors VACE module."
        )
    if base_precision == BasePrecision.FP8:
        raise ModelLoadError(f"base_precision 'fp8' with the GGUF file {path.name}: its weights are quantised already; "
                             "use base_precision 'bf16' (the GGUF stays as stored)")


def _load_safetensors(path: Path, torch_dtype, vace_module, base_precision: str, compute_dtype):
    """A single original-layout file (with its VACE module): streamed when anything is fp8, else through diffusers'
    ``from_single_file``."""
    described = ModelFile.describe(path, vace_module)
    _check_layout(described.name, described.config, described.shapes)
    sources = described.sources
    if base_precision == BasePrecision.FP8 or any(source.layout.quantised for source in sources):
        quantize = base_precision == BasePrecision.FP8
        return _load_streamed(sources, described.config, torch_dtype, compute_dtype or torch_dtype, quantize=quantize).eval()
    model = _from_single_file(_single_file_source(path, sources), described.config, torch_dtype)
    if any(p.is_meta for p in model.parameters()):
        raise ModelLoadError(f"{described.name}: some weights were not loaded (still on the meta device).")
    return model.eval()


def _single_file_source(path: Path, sources: list) -> Any:
    """What ``from_single_file`` gets: the path when diffusers can read it as is, else the tensors."""
    from .vace_module import merge_vace_module, strip_prefix

    # diffusers reads a path with safetensors only when it ends in ".safetensors" exactly (else torch.load, which
    # fails on "*.SAFETENSORS"): other spellings of the suffix are read here and passed as tensors.
    if len(sources) == 1 and sources[0].prefix in ("", ORIGINAL_PREFIX) and path.name.endswith(".safetensors"):
        return str(path)
    # diffusers' converter only strips "model.diffusion_model."; a VACE module is merged in first
    from ..fileio import load_safetensors

    tensors, _ = load_safetensors(path)
    source = strip_prefix(tensors)
    if len(sources) > 1:
        module_tensors, _ = load_safetensors(sources[1].path)
        source = merge_vace_module(source, module_tensors)
    return source


def empty_transformer(config: Mapping[str, Any]):
    """A ``WanVACETransformer3DModel`` with its weights on the meta device (no memory) and its computed rotary
    tables real: the skeleton streaming loads fill, and what the memory planner counts."""
    from diffusers import WanVACETransformer3DModel

    init = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = WanVACETransformer3DModel(**init)
    rope = model.rope  # its cos/sin tables are computed in __init__, not stored in files
    model.rope = type(rope)(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    return model


def _load_streamed(sources: list, config: dict, torch_dtype: torch.dtype, compute_dtype: torch.dtype, quantize: bool):
    """Fills an empty model tensor by tensor from ``sources`` (the base, and a VACE module): fp8 linear weights stay
    fp8 (with their file's scale), with ``quantize`` the block linears of full-precision files become fp8 (per
    channel), everything else is cast to ``torch_dtype`` as ``from_single_file`` does. Host memory peaks near the
    stored model's size."""
    from torch import nn

    from ..fileio import iter_safetensors
    from .fp8_files import read_weight_scales
    from .frozen_linear import FrozenLinear, block_linear_names, is_fp8, quantize_fp8, replace_linear

    model = empty_transformer(config)
    to_diffusers = {diffusers_key_to_original(k): k for k in model.state_dict()}
    fp8_weights = set().union(*(source.layout.fp8_weights for source in sources))
    quantizable = set(block_linear_names(model)) if quantize else set()
    frozen: set[str] = set()
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and (diffusers_key_to_original(f"{name}.weight") in fp8_weights or name in quantizable):
            stored = torch.empty(module.weight.shape, dtype=torch.float8_e4m3fn, device="meta")
            bias = None if module.bias is None else torch.empty(module.bias.shape, device="meta")
            replace_linear(model, name, FrozenLinear(module.in_features, module.out_features, stored, bias, None, compute_dtype))
            frozen.add(name)
    for source in sources:
        scales = read_weight_scales(source.path, source.layout, source.prefix)
        stale = [layer for layer in scales if layer + ".weight" not in source.layout.fp8_weights]
        if stale:
            log.warning("%s: %d scales belong to weights that are not fp8 (e.g. %s); they are ignored, as ComfyUI does for "
                        "unquantised layers", source.path.name, len(stale), stale[0])
        # a base's VACE weights, if any, are what a module replaces (merge_vace_module refuses such a base anyway)
        keys = [source.prefix + k for k in source.shapes]
        for key, tensor in iter_safetensors(source.path, keys):
            original = key[len(source.prefix):]
            name = to_diffusers.get(original)
            if name is None:  # e.g. norm_added_q, which diffusers' own converter drops as well
                continue
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            if module_name in frozen and attr == "weight":
                if is_fp8(tensor.dtype):
                    module.weight = nn.Parameter(tensor, requires_grad=False)
                    module.weight_scale = scales.get(original[: -len(".weight")])
                else:
                    q, scale = quantize_fp8(tensor)
                    module.weight = nn.Parameter(q, requires_grad=False)
                    module.weight_scale = scale
                continue
            value = tensor.to(torch_dtype) if tensor.is_floating_point() else tensor
            if attr in module._parameters:
                module._parameters[attr] = nn.Parameter(value, requires_grad=module_name not in frozen)
            else:
                module._buffers[attr] = value
    model.rope.to(torch_dtype)  # the computed rotary tables, cast as from_single_file casts them
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ModelLoadError(f"{' + '.join(s.path.name for s in sources)}: {len(left)} weights were not in the file (e.g. {left[:3]}).")
    return model


def storage_summary(model) -> dict[str, Any]:
    """How the base's linear layers are stored: counts of fp8 layers by scale kind, and host-stored ones."""
    from .frozen_linear import FrozenLinear

    summary = {"fp8_layers": 0, "fp8_scale": {}, "host_stored_layers": 0}
    for module in model.modules():
        if isinstance(module, FrozenLinear):
            if module.is_fp8:
                summary["fp8_layers"] += 1
                kind = "none" if module.weight_scale is None else ("tensor" if module.weight_scale.numel() == 1 else "channel")
                summary["fp8_scale"][kind] = summary["fp8_scale"].get(kind, 0) + 1
            summary["host_stored_layers"] += int(module.host_stored)
    return summary
