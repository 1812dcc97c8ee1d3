"""Content fingerprints recorded in the LoRA metadata: which base model and which dataset a LoRA was trained on.

Hashing a 32 GiB checkpoint in full would take minutes on every run, so a model file's fingerprint is a SHA-256
over its size, its safetensors header (every key, dtype, shape and offset) and 16 evenly spaced 1 MiB chunks of
the data: any re-export, conversion or truncation changes it, and it costs well under a second."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Callable, Optional

import torch

CHUNK = 1 << 20
CHUNKS = 16


def file_fingerprint(path: os.PathLike | str) -> str:
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(f"size:{size}\n".encode())
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) == 8:
            header_len = struct.unpack("<Q", head)[0]
            if 0 < header_len < min(size, 1 << 28):
                digest.update(handle.read(header_len))
        for index in range(CHUNKS):
            handle.seek(max(0, (size - CHUNK) * index // max(1, CHUNKS - 1)))
            digest.update(handle.read(CHUNK))
    return "sampled-sha256:" + digest.hexdigest()


def folder_fingerprint(path: os.PathLike | str) -> str:
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json")):
        digest.update(f"{file.relative_to(path).as_posix()}:{file_fingerprint(file)}\n".encode())
    return "sampled-sha256:" + digest.hexdigest()


def state_dict_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def model_fingerprint(base_model: str, model: torch.nn.Module | None = None) -> str:
    """Fingerprint of the base model: of its file or folder, or of its weights for the embedded tiny model."""
    path = Path(base_model)
    if path.is_file():
        return file_fingerprint(path)
    if path.is_dir():
        return folder_fingerprint(path)
    if model is not None:
        return state_dict_fingerprint({k: v for k, v in model.state_dict().items() if "lora_" not in k})
    return "unknown"


# ----------------------------------------------------------------------------------------------------------
# The sampling model's identity: the same function on ComfyUI's model object and on the trainer's model

# Original Wan key names (as ComfyUI's ``diffusion_model`` and the files name them). Together they cover the
# input and output layers, the first main block, the first VACE block and the VACE patch embedding, so a
# different file, another quantisation of the same file, or a T2V base with another VACE module all differ.
FINGERPRINT_KEYS = (
    "patch_embedding.weight",
    "vace_patch_embedding.weight",
    "blocks.0.self_attn.q.weight",
    "blocks.0.ffn.2.weight",
    "vace_blocks.0.self_attn.q.weight",
    "head.head.weight",
    "head.modulation",
)
# Wan2.2-Animate's own parts (pose embedding, face adapter, face and motion encoders), covered only when the model has
# them (a VACE model's fingerprint stays what it was). Original name -> diffusers name (WanAnimateTransformer3DModel).
ANIMATE_FINGERPRINT_KEYS = {
    "pose_patch_embedding.weight": "pose_patch_embedding.weight",
    "face_adapter.fuser_blocks.0.linear1_q.weight": "face_adapter.0.to_q.weight",
    "face_encoder.out_proj.weight": "face_encoder.out_proj.weight",
    "motion_encoder.enc.fc.4.weight": "motion_encoder.motion_network.4.weight",
}
_PLAIN_GGUF_TYPES = ("F32", "F16", "BF16")


def _quant_type_name(tensor) -> Optional[str]:
    """The GGUF quantisation type of a tensor held quantised (diffusers' ``GGUFParameter.quant_type``,
    ComfyUI-GGUF's ``GGMLTensor.tensor_type``), or None for a plain tensor."""
    for attribute in ("quant_type", "tensor_type"):
        kind = getattr(tensor, attribute, None)
        if kind is not None:
            name = getattr(kind, "name", str(kind))
            return None if name in _PLAIN_GGUF_TYPES else name
    return None


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """The same storage as a plain tensor: no subclass hook (GGUF parameters re-wrap every op's result)."""
    return torch.Tensor._make_subclass(torch.Tensor, tensor.detach(), False)


def canonical_weight_bytes(tensor: torch.Tensor) -> bytes:
    """The bytes a weight contributes to :func:`weights_fingerprint`.

    - GGUF-quantised (Q8_0, Q4_K, ...): its raw blocks as stored in the file, tagged with the type name
      (diffusers' GGUF loader and ComfyUI-GGUF both keep the file's bytes).
    - ComfyUI's ``QuantizedTensor`` (fp8 mixed-precision layout): its stored fp8 data (``_qdata``); the scale is
      not part of it.
    - Anything else (fp32, fp16, bf16, fp8 as stored): the values rounded to bfloat16. Every holder of the same
      stored values gets the same bytes: a file's fp16 weights that ComfyUI keeps in fp16 (or upcasts to fp32 on
      the CPU, or holds in fp32 like the patch embeddings) and the trainer casts to bf16 round to the same bf16
      numbers, and fp8 values are exact in bf16. A model that differs only below bf16 precision counts as the same.
    """
    quant = _quant_type_name(tensor)
    if quant is not None:
        raw = _plain(tensor).to("cpu").contiguous()
        return f"gguf:{quant}:".encode() + raw.reshape(-1).view(torch.uint8).numpy().tobytes()
    raw = getattr(tensor, "_qdata", None)
    value = _plain(raw if isinstance(raw, torch.Tensor) else tensor).to("cpu").to(torch.bfloat16).contiguous()
    return b"bf16:" + value.reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_fingerprint(get_weight: Callable[[str], Optional[torch.Tensor]]) -> str:
    """Fingerprint of a Wan2.1-VACE model's base weights, independent of file names, key prefixes and dtype.

    ``get_weight(key)`` returns the tensor of an original Wan key name (bare: ``blocks.0.self_attn.q.weight``),
    as the model holds it without any LoRA or other patch, or None when the model has no such weight. The digest
    covers :data:`FINGERPRINT_KEYS`: each key with its shape and :func:`canonical_weight_bytes`.

    The two callers must hand over the same weights: the ComfyUI sampler (``nodes/model_identity.py``: the
    ModelPatcher's unpatched weights, ``get_key_patches``) and the trainer (``training/reference_check.py``: the
    diffusers model's state dict under the original names, before any adapter). Shapes are logical shapes (a
    GGUF tensor's unquantised shape).
    """
    digest = hashlib.sha256(b"ipa-wan-weights-v1\n")
    found = 0
    animate = get_weight("pose_patch_embedding.weight") is not None
    for key in FINGERPRINT_KEYS + (tuple(ANIMATE_FINGERPRINT_KEYS) if animate else ()):
        tensor = get_weight(key)
        if tensor is None:
            digest.update(f"{key}|absent\n".encode())
            continue
        found += 1
        shape = tuple(getattr(tensor, "quant_shape", None) or getattr(tensor, "tensor_shape", None) or tensor.shape)
        digest.update(f"{key}|{tuple(int(n) for n in shape)}|".encode())
        digest.update(hashlib.sha256(canonical_weight_bytes(tensor)).digest())
    if found == 0:
        raise ValueError(f"none of the fingerprint weights {FINGERPRINT_KEYS} are in this model: not a Wan2.1 model")
    return "wan-weights-sha256:" + digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# LoRA patches: what ComfyUI's LoRA loaders put on a model, and the same from a LoRA file

def lora_patch_digest(weight_key: str, up: torch.Tensor, down: torch.Tensor, scale: float) -> str:
    """One LoRA patch of one weight: ``W += strength * scale * up @ down``. ``weight_key`` is the native weight
    name without prefix (``blocks.0.self_attn.q.weight``); ``scale`` is alpha / rank (1.0 without alpha).
    ComfyUI's ``LoRAAdapter`` (``weights[0]`` up, ``weights[1]`` down, ``weights[2]`` alpha) and a LoRA file
    converted to the native layout give the same digest for the same file, whatever layout the file used."""
    digest = hashlib.sha256(f"{weight_key}|{float(scale)!r}|{tuple(up.shape)}|{tuple(down.shape)}|".encode())
    for matrix in (up, down):
        digest.update(matrix.detach().to("cpu", torch.float32).contiguous().reshape(-1).numpy().tobytes())
    return digest.hexdigest()


def lora_group_digest(patch_digests) -> str:
    """The LoRAs applied at one strength, as one digest over their sorted per-weight digests (several LoRAs at the
    same strength are indistinguishable in ComfyUI's patch list, and need not be told apart: the sum is the same)."""
    digest = hashlib.sha256(b"ipa-lora-patches-v1\n")
    for item in sorted(patch_digests):
        digest.update(item.encode() + b"\n")
    return "lora-sha256:" + digest.hexdigest()


def native_lora_patch_digests(native: dict[str, torch.Tensor]) -> list[str]:
    """Per-weight digests of a LoRA in ComfyUI's native layout (``diffusion_model.<module>.lora_A.weight`` /
    ``lora_B`` / ``.alpha``, as ``lora_keys.to_comfy_native`` returns it)."""
    out = []
    for key, down in native.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        up = native.get(f"{module}.lora_B.weight")
        if up is None:
            continue
        alpha = native.get(f"{module}.alpha")
        scale = float(alpha.item()) / down.shape[0] if alpha is not None else 1.0
        bare = module[len("diffusion_model."):] if module.startswith("diffusion_model.") else module
        out.append(lora_patch_digest(bare + ".weight", up, down, scale))
    return out


def file_weights_fingerprint(path: os.PathLike | str, vace_module: Optional[os.PathLike | str] = None) -> str:
    """:func:`weights_fingerprint` of the weights as a single file (and a VACE module) store them, read without loading
    the model: what :func:`diffusers_model_fingerprint` gives for the model loaded at its stored precision. The
    trainer uses it when it quantises a file to fp8 while loading (``base_precision: "fp8"``)."""
    from ..fileio import iter_safetensors
    from .model import read_checkpoint_header
    from .vace_module import PREFIXES

    weights: dict[str, torch.Tensor] = {}
    for file in [path] + ([vace_module] if vace_module else []):
        keys = read_checkpoint_header(file)[0]
        prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in keys)), "")
        wanted = [prefix + key for key in FINGERPRINT_KEYS + tuple(ANIMATE_FINGERPRINT_KEYS) if prefix + key in keys]
        weights.update({key[len(prefix):]: tensor for key, tensor in iter_safetensors(file, wanted)})
    return weights_fingerprint(weights.get)


def diffusers_model_fingerprint(model: torch.nn.Module) -> str:
    """:func:`weights_fingerprint` of a diffusers ``WanVACETransformer3DModel`` or ``WanAnimateTransformer3DModel`` (the trainer's base), read under the
    original Wan names. Call it before adapters are added (peft renames the wrapped weights to ``base_layer``)."""
    from .model import diffusers_key_to_original

    wanted = set(FINGERPRINT_KEYS)
    animate = {diffusers: original for original, diffusers in ANIMATE_FINGERPRINT_KEYS.items()}
    weights = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        original = animate.get(name) or diffusers_key_to_original(name)
        if original in wanted or name in animate:
            weights[original] = tensor
    return weights_fingerprint(weights.get)
