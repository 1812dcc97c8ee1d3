"""Creating a dataset, adding samples to it and loading them back.

A sample folder is complete before its manifest line exists: it is written under ``samples/.tmp-*`` and
renamed into place, then the manifest is rewritten atomically under the lock. A killed writer therefore
never leaves a manifest entry without its files. The sample id is derived from the tensor content
(``fingerprint.content_hash``), so the same content is never stored twice and nothing is ever overwritten.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ..fileio import FileReadError, atomic_save_safetensors, atomic_write_bytes, atomic_write_json, atomic_write_text, load_safetensors, read_json
from .fingerprint import content_hash
from .garbage import remove_stale_garbage
from .layout import (
    DATASET_FILE,
    FORMAT_VERSION,
    MANIFEST,
    META_FILE,
    SAMPLES_DIR,
    STATUSES,
    TENSORS_FILE,
    DatasetError,
    dataset_path,
    manifest_lock,
    sample_path,
    utc_now,
)
from .manifest import read_manifest, write_manifest
from .marks import count_statuses
from .tensors import MODEL_TYPE_VACE, SampleTensors, validate_sample_tensors


def create_dataset(root: os.PathLike | str, name: str) -> Path:
    """Creates dataset ``name`` under ``root`` if it does not exist; returns its folder."""
    path = dataset_path(root, name)
    (path / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    with manifest_lock(path):
        if not (path / MANIFEST).exists():
            atomic_write_text(path / MANIFEST, "")
            atomic_write_json(path / DATASET_FILE, {"format_version": FORMAT_VERSION, "created": utc_now(), "name": name})
        remove_stale_garbage(path)  # opened for writing: what killed writers left behind goes
    return path


@dataclass
class AddResult:
    sample_id: str
    added: bool  # False when identical content was already stored
    status: str
    entry: dict[str, Any] = field(default_factory=dict)


def add_sample(
    dataset_dir: os.PathLike | str,
    tensors: SampleTensors,
    meta: Optional[Mapping[str, Any]] = None,
    previews: Optional[Mapping[str, bytes]] = None,
    status: str = "pending",
    summary: Optional[Mapping[str, Any]] = None,
) -> AddResult:
    """Stores one sample: files first (temporary folder, then rename), then the manifest line under the lock.

    ``previews`` maps file names (e.g. ``preview.webp``) to bytes. ``summary`` holds small fields copied into the
    manifest entry so that listing never opens tensors (seed, prompt, hand_score, ...).
    """
    dataset_dir = Path(dataset_dir)
    if status not in STATUSES:
        raise DatasetError(f"unknown status {status!r}; use one of {STATUSES}")
    if not (dataset_dir / MANIFEST).is_file():
        raise DatasetError(f"{dataset_dir} is not an IPA dataset; call create_dataset first")
    validate_sample_tensors(tensors)
    check_model_type(dataset_dir, read_manifest(dataset_dir), tensors.model_type)  # before any file is written
    tensor_dict = tensors.to_dict()
    digest = content_hash(tensor_dict)
    final = sample_path(dataset_dir, digest[:16])
    if not final.exists():
        _store_sample_folder(dataset_dir, final, tensor_dict, _sample_meta(meta, tensors, tensor_dict, digest), previews or {})
    return _list_sample(dataset_dir, digest, status, int(tensors.latent.shape[1]), {"model_type": tensors.model_type, **(summary or {})})


def entry_model_type(entry: Mapping[str, Any]) -> str:
    """A manifest line's model type; lines written before Animate samples existed are VACE samples."""
    return str(entry.get("model_type") or MODEL_TYPE_VACE)


def check_model_type(dataset_dir: Path, entries: list[dict[str, Any]], model_type: str) -> None:
    """One dataset holds samples of one model type: the trainer builds one model for all of them."""
    others = sorted({entry_model_type(entry) for entry in entries} - {model_type})
    if others:
        raise DatasetError(
            f"dataset {Path(dataset_dir).name} holds {', '.join(others)} samples; a {model_type} sample cannot join them "
            "(one dataset trains one model). Store it in a new dataset: give the collector another dataset name"
        )


def _sample_meta(meta: Optional[Mapping[str, Any]], tensors: SampleTensors, tensor_dict: Mapping[str, Any], digest: str) -> dict[str, Any]:
    """``meta.json``: the caller's fields, and what the format records itself (shapes, ref_frames, content hash)."""
    meta = dict(meta or {})
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("shapes", {key: list(value.shape) for key, value in tensor_dict.items()})
    meta["ref_frames"] = int(tensors.ref_frames)
    meta["model_type"] = tensors.model_type
    meta["content_hash"] = digest
    return meta


def _store_sample_folder(dataset_dir: Path, final: Path, tensor_dict: Mapping[str, Any], meta: Mapping[str, Any], previews: Mapping[str, bytes]) -> None:
    """Writes the sample's files into a staging folder and renames it to ``final``: the folder appears complete or not
    at all. A concurrent writer that stored the same content first wins the rename; that is not an error."""
    digest = meta["content_hash"]
    staging = dataset_dir / SAMPLES_DIR / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        atomic_save_safetensors(staging / TENSORS_FILE, tensor_dict, {"format_version": str(FORMAT_VERSION), "content_hash": digest})
        atomic_write_json(staging / META_FILE, meta)
        for file_name, data in previews.items():
            if "/" in file_name or "\\" in file_name or file_name.startswith("."):
                raise DatasetError(f"invalid preview file name {file_name!r}")
            atomic_write_bytes(staging / file_name, data)
        try:
            os.rename(staging, final)
        except OSError:
            if not final.exists():  # a real failure, not a concurrent writer that stored the same content
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _list_sample(dataset_dir: Path, digest: str, status: str, frames: int, summary: Mapping[str, Any]) -> AddResult:
    """Adds the manifest line of a stored sample under the lock, unless identical content is listed already."""
    with manifest_lock(dataset_dir):
        entries = read_manifest(dataset_dir)
        for entry in entries:
            if entry.get("content_hash") == digest:
                return AddResult(entry["id"], False, entry.get("status", "pending"), entry)
        check_model_type(dataset_dir, entries, summary["model_type"])  # again under the lock: a writer may have raced
        now = utc_now()
        entry = {"id": digest[:16], "status": status, "created": now, "updated": now, "content_hash": digest, "frames": frames}
        for key, value in summary.items():
            entry.setdefault(key, value)
        entries.append(entry)
        write_manifest(dataset_dir, entries)
    return AddResult(entry["id"], True, status, entry)


def load_sample(dataset_dir: os.PathLike | str, sample_id: str) -> tuple[SampleTensors, dict[str, Any]]:
    folder = sample_path(dataset_dir, sample_id)
    tensor_file = folder / TENSORS_FILE
    if not tensor_file.is_file():
        raise DatasetError(f"sample {sample_id}: {tensor_file} is missing; the dataset folder was edited by hand?")
    advice = "delete this sample's folder (and its manifest line) or collect it again"
    try:
        raw, _ = load_safetensors(tensor_file)
    except FileReadError as exc:
        raise DatasetError(f"sample {sample_id}: {exc}; {advice}") from None
    tensors = SampleTensors.from_dict(raw, sample_id)
    meta_file = folder / META_FILE
    try:
        meta = read_json(meta_file) if meta_file.is_file() else {}
    except FileReadError as exc:
        raise DatasetError(f"sample {sample_id}: {exc}; {advice}") from None
    if meta.get("model_type") not in (None, tensors.model_type):
        raise DatasetError(f"sample {sample_id}: meta.json says {meta['model_type']} but the tensors are a {tensors.model_type} sample; {advice}")
    return tensors, meta


def load_preferred(dataset_dir: os.PathLike | str) -> list[tuple[str, SampleTensors, dict[str, Any]]]:
    """Every preferred sample, validated. Errors name the sample; an empty selection is an error too."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetError(f"dataset folder {dataset_dir} does not exist; collect samples with IPA Mark Preferred first")
    entries = read_manifest(dataset_dir)
    preferred = [entry["id"] for entry in entries if entry.get("status") == "preferred"]
    if not preferred:
        counts = count_statuses(entries)
        raise DatasetError(
            f"dataset {dataset_dir.name} has no preferred samples ({counts['pending']} pending, {counts['rejected']} rejected); "
            "mark the good ones as preferred in the IPA gallery or with the IPA Mark Preferred node"
        )
    samples = []
    for sample_id in preferred:
        tensors, meta = load_sample(dataset_dir, sample_id)
        validate_sample_tensors(tensors, sample_id)
        samples.append((sample_id, tensors, meta))
    return samples
