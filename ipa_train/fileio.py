"""Crash-safe file writes and safe loads: everything is written to a temporary file in the same folder,
flushed, then renamed over the target, so a reader never sees a half-written file and nothing already
saved is lost when a write is interrupted. Only safetensors and JSON are ever read back (no pickle)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return _atomic_write(Path(path), write)


def atomic_write_text(path: os.PathLike | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: os.PathLike | str, obj: Any, indent: Optional[int] = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_save_safetensors(
    path: os.PathLike | str,
    tensors: Mapping[str, torch.Tensor],
    metadata: Optional[Mapping[str, str]] = None,
) -> Path:
    from safetensors.torch import save_file

    # safetensors refuses non-contiguous tensors and shared storage: give it plain contiguous copies on CPU.
    plain = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return _atomic_write(Path(path), lambda tmp: save_file(plain, tmp, metadata=meta))


def load_safetensors(path: os.PathLike | str, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=device) as handle:
        metadata = dict(handle.metadata() or {})
        for key in handle.keys():
            tensors[key] = handle.get_tensor(key)
    return tensors, metadata


def read_safetensors_metadata(path: os.PathLike | str) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return dict(handle.metadata() or {})


def read_json(path: os.PathLike | str) -> Any:
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def install_keeping_previous(source: os.PathLike | str, target: os.PathLike | str) -> Optional[Path]:
    """Copies ``source`` to ``target`` atomically, so ``target`` always names the newest file (what a workflow that
    loads it by name expects). A file already at ``target`` is kept first under the next free ``<stem>_NNNNN<suffix>``
    (00001 = the oldest), so nothing saved is lost; returns that path, or ``None`` when there was nothing to keep."""
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    kept = None
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if target.exists():
            counter = 1
            while True:
                candidate = target.with_name(f"{target.stem}_{counter:05d}{target.suffix}")
                try:
                    os.link(target, candidate)  # fails if taken: no race overwrites a kept file
                    kept = candidate
                    break
                except FileExistsError:
                    counter += 1
                except OSError:  # no hard links on this file system: copy (atomically) instead
                    if candidate.exists():
                        counter += 1
                        continue
                    _atomic_write(candidate, lambda path: shutil.copyfile(target, path))
                    kept = candidate
                    break
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return kept
