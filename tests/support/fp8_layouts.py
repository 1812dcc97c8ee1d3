"""Writes fp8 copies of a full-precision Wan single file in the layouts creators hold, as their tools write them:
kijai's plain float8_e4m3fn, ComfyUI's ``fp8_scaled`` (``scaled_fp8`` marker, ``scale_weight`` / ``scale_input``)
and ComfyUI's mixed-precision ``comfy_quant`` layout (per-layer JSON, ``weight_scale``). Block linear weights are
quantised; everything else is kept as stored. Also the expected dequantised weights, for exact comparisons."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ipa_train.fileio import atomic_save_safetensors, load_safetensors

E4M3 = torch.float8_e4m3fn
_BLOCK_LINEAR = re.compile(r"(?:^|\.)(?:vace_)?blocks\.\d+\.(?:self_attn|cross_attn)\.[qkvo]\.weight$|(?:^|\.)(?:vace_)?blocks\.\d+\.ffn\.[02]\.weight$"
                           r"|(?:^|\.)vace_blocks\.\d+\.(?:before|after)_proj\.weight$")


def is_block_linear_weight(key: str) -> bool:
    return bool(_BLOCK_LINEAR.search(key))


def write_fp8_file(source: Path, target: Path, layout: str, prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    """Writes ``target`` from ``source``; returns the dequantised float32 value of every quantised weight (by key)."""
    tensors, metadata = load_safetensors(source)
    out: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not is_block_linear_weight(key):
            out[key] = value
            continue
        w = value.float()
        layer = key[: -len(".weight")]
        if layout == "fp8":
            q = w.to(E4M3)
            out[key] = q
            expected[key] = q.float()
            continue
        scale = (w.abs().amax() / 448.0).to(torch.float32)
        q = (w / scale).clamp(-448, 448).to(E4M3)
        out[key] = q
        expected[key] = q.float() * scale
        if layout == "fp8_scaled":
            out[f"{layer}.scale_weight"] = scale.reshape(())
            out[f"{layer}.scale_input"] = torch.ones((), dtype=torch.float32)
        elif layout == "comfy_quant":
            out[f"{layer}.weight_scale"] = scale.reshape(())
            out[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
        else:
            raise ValueError(layout)
    if layout == "fp8_scaled":
        out[f"{prefix}scaled_fp8"] = torch.zeros(0, dtype=E4M3)
    atomic_save_safetensors(target, out, metadata)
    return expected
