"""Where a dataset's files are and what their names may be: the folder layout, the name rules, the format version.

Layout of one dataset (``<root>/<name>/``)::

    dataset.json            format_version (2), created, name
    manifest.jsonl          one JSON object per sample: id, status, created, updated, content_hash, summary
    marks.jsonl             status journal: marks since the manifest was last rewritten (see ``journal.py``)
    manifest.jsonl.lock     lock file (filelock) taken for every manifest or journal write
    samples/<id>/tensors.safetensors   (see ``tensors.py``)
    samples/<id>/meta.json  seed, prompt, sizes, base model, how it was made, hand boxes, ...
    samples/<id>/*.webp     previews (optional): preview.webp (looping video), hands.webp (hand close-up)

The rest of the format lives next to this module, one concern each: ``tensors`` (what a sample holds),
``fingerprint`` (content hashes), ``manifest`` (reading and rewriting the sample list), ``marks`` (statuses),
``samples`` (adding and loading samples), ``garbage`` (what killed writers leave behind).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

from ..fileio import InvalidNameError, read_json, validate_name

# 2: marks go to the status journal (marks.jsonl); a pack that only knows format 1 would not see them.
FORMAT_VERSION = 2
DATASET_FILE = "dataset.json"
MANIFEST = "manifest.jsonl"
SAMPLES_DIR = "samples"
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
STATUSES = ("pending", "preferred", "rejected")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SAMPLE_ID_RE = re.compile(r"^[0-9a-f]{16}$")


class DatasetError(ValueError):
    """A dataset or sample that cannot be used, with a message that says what is wrong and what to do."""


def validate_dataset_name(name: str) -> str:
    """A dataset name is one plain folder name (``fileio.validate_name``, the rule LoRA names follow too)."""
    try:
        return validate_name(name, "dataset name")
    except InvalidNameError as exc:
        raise DatasetError(str(exc)) from None


def validate_sample_id(sample_id: str) -> str:
    if not isinstance(sample_id, str) or not SAMPLE_ID_RE.fullmatch(sample_id):
        raise DatasetError(f"invalid sample id {sample_id!r}: sample ids are 16 lowercase hexadecimal characters")
    return sample_id


def dataset_path(root: os.PathLike | str, name: str) -> Path:
    """The folder of dataset ``name`` under ``root``; refuses anything that would resolve outside ``root``."""
    validate_dataset_name(name)
    root_path = Path(root).resolve()
    path = root_path / name
    resolved = path.resolve()
    if resolved.parent != root_path:
        raise DatasetError(f"dataset {name!r} resolves outside the dataset root {root_path} (a symlink?); refusing it")
    return path


def sample_path(dataset_dir: os.PathLike | str, sample_id: str) -> Path:
    validate_sample_id(sample_id)
    samples = Path(dataset_dir) / SAMPLES_DIR
    path = samples / sample_id
    if path.exists() and path.resolve().parent != samples.resolve():
        raise DatasetError(f"sample {sample_id} resolves outside its dataset (a symlink?); refusing it")
    return path


def list_datasets(root: os.PathLike | str) -> list[str]:
    root_path = Path(root)
    if not root_path.is_dir():
        return []
    names = []
    for entry in sorted(root_path.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and NAME_RE.fullmatch(entry.name) and (entry / MANIFEST).is_file():
            names.append(entry.name)
    return names


def check_format_version(dataset_dir: os.PathLike | str) -> int:
    """The dataset's format version (1 when ``dataset.json`` is missing: hand-made or very old); a newer format
    than this pack knows is refused, because its marks could be invisible here."""
    path = Path(dataset_dir) / DATASET_FILE
    try:
        version = int(read_json(path).get("format_version", 1))
    except FileNotFoundError:
        return 1
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path} is unreadable ({exc}); it should be JSON with a format_version") from None
    if version > FORMAT_VERSION:
        raise DatasetError(
            f"dataset {Path(dataset_dir).name} has format {version}, made by a newer ComfyUI-IPA; this one reads formats "
            f"up to {FORMAT_VERSION}: update the pack (git pull in custom_nodes/ComfyUI-IPA)"
        )
    return version


def utc_now() -> str:
    """The timestamp format of ``created``/``updated`` and journal records (UTC, milliseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def manifest_lock(dataset_dir: Path, timeout: float = 60.0):
    """The dataset's write lock (``manifest.jsonl.lock``): every manifest rewrite and journal append holds it."""
    from filelock import FileLock

    return FileLock(str(dataset_dir / (MANIFEST + ".lock")), timeout=timeout)
