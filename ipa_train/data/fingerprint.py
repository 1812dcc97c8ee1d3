"""Content hashes: a sample's id is its tensors' hash (the same content is never stored twice), and a dataset's
fingerprint is the hash over its samples' ids and hashes (a run records which selection it trained on)."""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping

import torch


def content_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over keys, dtypes, shapes and bytes of the tensors, in key order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def dataset_fingerprint(sample_ids_and_hashes: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for sample_id, value in sorted(sample_ids_and_hashes):
        digest.update(f"{sample_id}:{value}\n".encode())
    return digest.hexdigest()
