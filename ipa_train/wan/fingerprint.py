"""Content fingerprints recorded in the LoRA metadata: which base model and which dataset a LoRA was trained on.

Hashing a 32 GiB checkpoint in full would take minutes on every run, so a model file's fingerprint is a SHA-256
over its size, its safetensors header (every key, dtype, shape and offset) and 16 evenly spaced 1 MiB chunks of
the data: any re-export, conversion or truncation changes it, and it costs well under a second."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

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
