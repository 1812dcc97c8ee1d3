"""The fp8 checkpoint layouts creators hold, recognised from the safetensors header, as ComfyUI v0.8.0 reads them
(``comfy/utils.py: convert_old_quants``, ``comfy/ops.py: mixed_precision_ops``, ``comfy/quant_ops.py``):

- ``fp8`` (kijai's ``*_fp8_e4m3fn.safetensors``): fp8 weights, no scales. ComfyUI casts them to the compute
  dtype (``weight.to(dtype)``).
- ``fp8_scaled`` (Comfy-Org's ``*_fp8_e4m3fn_scaled.safetensors``): a ``scaled_fp8`` marker and per layer
  ``<layer>.scale_weight`` (a scalar) and optionally ``<layer>.scale_input``. ComfyUI converts them to the
  mixed-precision layout below: weight ``q.to(dtype) * scale_weight.to(dtype)``.
- ``comfy_quant`` (ComfyUI's mixed-precision layout): per quantised layer ``<layer>.comfy_quant`` (JSON as
  uint8 bytes, e.g. ``{"format": "float8_e4m3fn"}``), ``<layer>.weight_scale`` and optionally
  ``<layer>.input_scale``; or the same per-layer JSON in the header metadata ``_quantization_metadata``.
  The fp8 formats are read; ``nvfp4`` is refused (4-bit blocks with fp8 block scales: not trainable here).

Input scales only matter to ComfyUI's fp8 x fp8 matrix multiply (GPUs of compute capability 8.9+); the trainer
multiplies in bf16 with the dequantised weight, which is what ComfyUI computes everywhere else (CPU included).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
INPUT_SCALE_SUFFIXES = (".scale_input", ".input_scale")
QUANT_CONF_SUFFIX = ".comfy_quant"
SCALED_MARKER = "scaled_fp8"
QUANT_METADATA_KEY = "_quantization_metadata"
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
FP8_HEADER_DTYPES = ("F8_E4M3", "F8_E5M2")


class Fp8LayoutError(ValueError):
    """A quantised checkpoint the trainer cannot read as stored; the message names what to use instead."""


@dataclass
class Fp8Layout:
    name: str  # "none", "fp8", "fp8_scaled", "comfy_quant"
    fp8_weights: set = field(default_factory=set)  # bare keys ("blocks.0.self_attn.q.weight") stored in fp8
    weight_scales: dict = field(default_factory=dict)  # layer ("blocks.0.self_attn.q") -> file key of its scale
    extra_keys: set = field(default_factory=set)  # file keys that are not model weights (markers, scales, JSON)
    input_scales: int = 0

    @property
    def quantised(self) -> bool:
        return self.name != "none"


def detect_fp8_layout(shapes: Mapping[str, tuple], dtypes: Mapping[str, str], metadata: Optional[Mapping[str, str]], prefix: str) -> Fp8Layout:
    """Which fp8 layout a file with these header entries has (``prefix``: the Wan key prefix of its weights)."""
    keys = list(shapes)
    bare = {k: k[len(prefix):] for k in keys if k.startswith(prefix)}
    layout = Fp8Layout("none")
    for key, name in bare.items():
        if name == SCALED_MARKER:
            layout.extra_keys.add(key)
            layout.name = "fp8_scaled"
        elif name.endswith(WEIGHT_SCALE_SUFFIXES):
            layer = name.rsplit(".", 1)[0]
            layout.weight_scales[layer] = key
            layout.extra_keys.add(key)
        elif name.endswith(INPUT_SCALE_SUFFIXES):
            layout.input_scales += 1
            layout.extra_keys.add(key)
        elif name.endswith(QUANT_CONF_SUFFIX):
            layout.extra_keys.add(key)
            layout.name = "comfy_quant"
        elif dtypes.get(key) in FP8_HEADER_DTYPES:
            layout.fp8_weights.add(name)
    if metadata and QUANT_METADATA_KEY in metadata:
        layout.name = "comfy_quant"
    if layout.name == "none" and layout.weight_scales:
        layout.name = "fp8_scaled"
    if layout.name == "none" and layout.fp8_weights:
        layout.name = "fp8"
    return layout


def read_quant_formats(path, layout: Fp8Layout, metadata: Optional[Mapping[str, str]], prefix: str) -> dict[str, str]:
    """Per layer (bare name) the format its ``comfy_quant`` entry or ``_quantization_metadata`` names; raises for
    formats other than fp8 (what ComfyUI's mixed-precision ops would read as something else)."""
    from ..fileio import iter_safetensors

    formats: dict[str, str] = {}
    if metadata and QUANT_METADATA_KEY in metadata:
        try:
            layers = json.loads(metadata[QUANT_METADATA_KEY]).get("layers", {})
        except (json.JSONDecodeError, AttributeError) as exc:
            raise Fp8LayoutError(f"{path}: the header's {QUANT_METADATA_KEY} is not valid JSON ({exc})") from exc
        for layer, conf in layers.items():
            name = layer[len(prefix):] if layer.startswith(prefix) else layer
            formats[name] = str((conf or {}).get("format"))
    conf_keys = sorted(k for k in layout.extra_keys if k.endswith(QUANT_CONF_SUFFIX))
    for key, tensor in iter_safetensors(path, conf_keys):
        try:
            conf = json.loads(tensor.numpy().tobytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise Fp8LayoutError(f"{path}: {key} is not ComfyUI quantisation JSON ({exc})") from exc
        formats[key[len(prefix): -len(QUANT_CONF_SUFFIX)]] = str(conf.get("format"))
    unsupported = sorted({f for f in formats.values() if f not in FP8_FORMATS})
    if unsupported:
        example = next(layer for layer, f in formats.items() if f not in FP8_FORMATS)
        raise Fp8LayoutError(
            f"{path}: layers quantised as {unsupported} (e.g. {example}); the trainer reads fp8 layers as stored "
            f"({', '.join(FP8_FORMATS)}) but not these. Train from the fp8 or fp16 release of the same model."
        )
    return formats


def read_weight_scales(path, layout: Fp8Layout, prefix: str) -> dict[str, torch.Tensor]:
    """Layer (bare name) -> its weight scale as float32 (ComfyUI keeps scales in float32)."""
    from ..fileio import iter_safetensors

    by_key = {key: layer for layer, key in layout.weight_scales.items()}
    return {by_key[key]: tensor.to(torch.float32).clone() for key, tensor in iter_safetensors(path, sorted(by_key))}
