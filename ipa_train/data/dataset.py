"""The sample-folder dataset format shared by the collector node, the curation gallery and the trainer.

Layout of one dataset (``<root>/<name>/``)::

    dataset.json            format_version (2), created, name
    manifest.jsonl          one JSON object per sample: id, status, created, updated, content_hash, summary
    marks.jsonl             status journal: marks since the manifest was last rewritten (see ``journal.py``)
    manifest.jsonl.lock     lock file (filelock) taken for every manifest or journal write
    samples/<id>/tensors.safetensors
    samples/<id>/meta.json  seed, prompt, sizes, base model, how it was made, hand boxes, ...
    samples/<id>/*.webp     previews (optional): preview.webp (looping video), hands.webp (hand close-up)

Tensors of a sample (safetensors, no pickle anywhere), ``F`` latent frames including ``ref_frames``:

    latent          [16, F, h, w]      clean latent x0 in the model's input space (after Wan's latent normalisation)
    vace_context    [96, F, h, w]      VACE context: normalised inactive (16) + reactive (16) latents, 64 mask channels
    text_embedding  [L, D]             text encoder output (ComfyUI's conditioning tensor, 512 tokens as stored)
    text_length     []  int64          number of real (non-padding) tokens
    hand_mask       [1, F - ref_frames, h, w]  latent hand mask in [0, 1] (zeros when the video has no hands)
    ref_frames      []  int64          number of reference-image latent frames at the front of ``latent``
    vace_strength   []  float32        VACE strength used when sampling (control_hidden_states_scale)

A sample folder is complete before its manifest line exists: it is written under ``samples/.tmp-*`` and
renamed into place, then the manifest is rewritten atomically under the lock. A killed writer therefore
never leaves a manifest entry without its files. The sample id is derived from the tensor content, so the
same content is never stored twice and nothing is ever overwritten.

Marks (status changes) are appended to the journal instead of rewriting the manifest, so marking costs the
same at any dataset size; every read applies the journal over the manifest, and every manifest rewrite folds
it in. Format 1 (before the journal) opens unchanged: its first mark starts a journal and the dataset says 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch

from ..fileio import (
    FileReadError, InvalidNameError, atomic_save_safetensors, atomic_write_bytes, atomic_write_json, atomic_write_text,
    load_safetensors, read_json, remove_stale_temp_files, validate_name,
)
from . import journal

# 2: marks go to the status journal (marks.jsonl); a pack that only knows format 1 would not see them.
FORMAT_VERSION = 2
DATASET_FILE = "dataset.json"
MANIFEST = "manifest.jsonl"
SAMPLES_DIR = "samples"
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
STATUSES = ("pending", "preferred", "rejected")
LATENT_CHANNELS = 16
VACE_CHANNELS = 96

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SAMPLE_ID_RE = re.compile(r"^[0-9a-f]{16}$")


class DatasetError(ValueError):
    """A dataset or sample that cannot be used, with a message that says what is wrong and what to do."""


# ----------------------------------------------------------------------------------------------- names, paths


def validate_dataset_name(name: str) -> str:
    """A dataset name is one plain folder name (``fileio.validate_name``, the rule LoRA names follow too)."""
    try:
        return validate_name(name, "dataset name")
    except InvalidNameError as exc:
        raise DatasetError(str(exc)) from None


def validate_sample_id(sample_id: str) -> str:
    if not isinstance(sample_id, str) or not _SAMPLE_ID_RE.fullmatch(sample_id):
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
        if entry.is_dir() and not entry.is_symlink() and _NAME_RE.fullmatch(entry.name) and (entry / MANIFEST).is_file():
            names.append(entry.name)
    return names


# ----------------------------------------------------------------------------------------------- tensors


@dataclass
class SampleTensors:
    latent: torch.Tensor
    vace_context: torch.Tensor
    text_embedding: torch.Tensor
    hand_mask: torch.Tensor
    ref_frames: int = 1
    vace_strength: float = 1.0
    text_length: Optional[int] = None

    def to_dict(self) -> dict[str, torch.Tensor]:
        text_length = self.text_embedding.shape[0] if self.text_length is None else self.text_length
        return {
            "latent": self.latent,
            "vace_context": self.vace_context,
            "text_embedding": self.text_embedding,
            "text_length": torch.tensor(int(text_length), dtype=torch.int64),
            "hand_mask": self.hand_mask,
            "ref_frames": torch.tensor(int(self.ref_frames), dtype=torch.int64),
            "vace_strength": torch.tensor(float(self.vace_strength), dtype=torch.float32),
        }

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor], sample: str = "?") -> "SampleTensors":
        required = ("latent", "vace_context", "text_embedding", "hand_mask", "ref_frames")
        missing = [key for key in required if key not in tensors]
        if missing:
            raise DatasetError(f"sample {sample}: tensors file lacks {missing}; re-collect this sample")
        return cls(
            latent=tensors["latent"],
            vace_context=tensors["vace_context"],
            text_embedding=tensors["text_embedding"],
            hand_mask=tensors["hand_mask"],
            ref_frames=int(tensors["ref_frames"]),
            vace_strength=float(tensors["vace_strength"]) if "vace_strength" in tensors else 1.0,
            text_length=int(tensors["text_length"]) if "text_length" in tensors else None,
        )


def validate_sample_tensors(tensors: SampleTensors, sample: str = "?") -> None:
    """Checks every tensor's shape against the others; the error names the sample and the mismatch."""
    latent, context, text, mask = tensors.latent, tensors.vace_context, tensors.text_embedding, tensors.hand_mask

    def fail(message: str) -> None:
        raise DatasetError(f"sample {sample}: {message}")

    if latent.dim() != 4 or latent.shape[0] != LATENT_CHANNELS:
        fail(f"latent must be [{LATENT_CHANNELS}, F, h, w], got {tuple(latent.shape)}")
    _, frames, height, width = latent.shape
    if context.dim() != 4 or context.shape[0] != VACE_CHANNELS:
        fail(f"vace_context must be [{VACE_CHANNELS}, F, h, w], got {tuple(context.shape)}")
    if tuple(context.shape[1:]) != (frames, height, width):
        fail(f"vace_context frames/size {tuple(context.shape[1:])} differ from the latent's {(frames, height, width)}")
    if not 0 <= tensors.ref_frames < frames:
        fail(f"ref_frames={tensors.ref_frames} must be below the latent frame count {frames}")
    expected_mask = (1, frames - tensors.ref_frames, height, width)
    if tuple(mask.shape) != expected_mask:
        fail(f"hand_mask must be {expected_mask} (latent frames minus {tensors.ref_frames} reference frames), got {tuple(mask.shape)}")
    if text.dim() != 2 or text.shape[0] < 1:
        fail(f"text_embedding must be [tokens, dim], got {tuple(text.shape)}")
    if tensors.text_length is not None and not 0 < tensors.text_length <= text.shape[0]:
        fail(f"text_length={tensors.text_length} is outside 1..{text.shape[0]}")
    for name, value in (("latent", latent), ("vace_context", context), ("text_embedding", text), ("hand_mask", mask)):
        if not value.is_floating_point():
            fail(f"{name} must be a floating-point tensor, got {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            fail(f"{name} contains NaN or infinite values")


def content_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over keys, dtypes, shapes and bytes of the tensors, in key order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _lock(dataset_dir: Path, timeout: float = 60.0):
    from filelock import FileLock

    return FileLock(str(dataset_dir / (MANIFEST + ".lock")), timeout=timeout)


@dataclass
class ManifestState:
    """The manifest as read, with the journal applied, and what was read: ``manifest_key`` identifies the manifest
    file version (inode, size, mtime), ``journal_identity``/``journal_end`` the journal bytes applied, so that a
    cache can later apply only what was appended since."""

    entries: list[dict[str, Any]]
    manifest_key: tuple
    journal_identity: Optional[tuple[int, int]]
    journal_end: int


def _file_key(stat: os.stat_result) -> tuple:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _parse_manifest(path: Path) -> tuple[list[dict[str, Any]], tuple]:
    entries = []
    with open(path, "r", encoding="utf-8") as handle:
        key = _file_key(os.fstat(handle.fileno()))
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
    return entries, key


def apply_marks(by_id: Mapping[str, dict[str, Any]], records: Iterable[tuple[str, Mapping[str, str]]]) -> list[tuple[str, str]]:
    """Applies journal records in order to entries (in place); returns (previous status, new status) per mark.
    Marks of ids the manifest does not list, or with an unknown status, are skipped (hand edits)."""
    changed = []
    for updated, marks in records:
        for sample_id, status in marks.items():
            entry = by_id.get(sample_id)
            if entry is None or status not in STATUSES:
                continue
            changed.append((entry.get("status", "pending"), status))
            entry["status"] = status
            entry["updated"] = updated
    return changed


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


def read_manifest_state(dataset_dir: os.PathLike | str) -> ManifestState:
    """The manifest with the journal applied, consistent without the lock: the journal is read between two looks
    at the manifest's identity, and the read is repeated if a rewrite (which folds the journal in) came between."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{dataset_dir} is not an IPA dataset (no {MANIFEST}); create it with the IPA Mark Preferred node")
    check_format_version(dataset_dir)
    for _ in range(20):
        before = _file_key(os.stat(path))
        marks = _read_journal(dataset_dir)
        entries, key = _parse_manifest(path)
        if key == before:
            break
    else:  # rewritten all the time (a collector adding samples fast): read under the lock instead
        with _lock(dataset_dir):
            marks = _read_journal(dataset_dir)
            entries, key = _parse_manifest(path)
    apply_marks({entry.get("id"): entry for entry in entries}, marks.records)
    return ManifestState(entries, key, marks.identity, marks.end)


def _read_journal(dataset_dir: Path) -> journal.JournalRead:
    try:
        return journal.read_journal(dataset_dir)
    except journal.JournalError as exc:
        raise DatasetError(str(exc)) from None


def read_manifest(dataset_dir: os.PathLike | str) -> list[dict[str, Any]]:
    """All manifest entries, in insertion order, with the journal's marks. Reads never need the lock."""
    return read_manifest_state(dataset_dir).entries


def _write_manifest(dataset_dir: Path, entries: Iterable[Mapping[str, Any]]) -> None:
    """Rewrites the manifest (caller holds the lock and read ``entries`` with the journal applied), then drops the
    journal it now holds: manifest first, so a crash in between only leaves records that replay to the same."""
    text = "".join(json.dumps(entry, sort_keys=False) + "\n" for entry in entries)
    atomic_write_text(dataset_dir / MANIFEST, text)
    journal.remove_journal(dataset_dir)


def compact(dataset_dir: os.PathLike | str, timeout: float = 60.0) -> Optional[ManifestState]:
    """Folds the journal into the manifest (one atomic rewrite). Returns the state written, or ``None`` when the
    lock was not free within ``timeout`` (``0``: do not wait; a collector is writing, compact another time)."""
    from filelock import Timeout

    dataset_dir = Path(dataset_dir)
    try:
        with _lock(dataset_dir, timeout=timeout):
            state = read_manifest_state(dataset_dir)
            if state.journal_identity is None:
                return state
            _write_manifest(dataset_dir, state.entries)
            return ManifestState(state.entries, _file_key(os.stat(dataset_dir / MANIFEST)), None, 0)
    except Timeout:
        return None


def create_dataset(root: os.PathLike | str, name: str) -> Path:
    """Creates dataset ``name`` under ``root`` if it does not exist; returns its folder."""
    path = dataset_path(root, name)
    (path / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    with _lock(path):
        if not (path / MANIFEST).exists():
            atomic_write_text(path / MANIFEST, "")
            atomic_write_json(path / DATASET_FILE, {"format_version": FORMAT_VERSION, "created": _now(), "name": name})
        remove_stale_garbage(path)  # opened for writing: what killed writers left behind goes
    return path


def count_statuses(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = {status: 0 for status in STATUSES}
    for entry in entries:
        counts[entry.get("status", "pending")] = counts.get(entry.get("status", "pending"), 0) + 1
    return counts


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
    tensor_dict = tensors.to_dict()
    digest = content_hash(tensor_dict)
    sample_id = digest[:16]
    final = sample_path(dataset_dir, sample_id)
    meta = dict(meta or {})
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("shapes", {key: list(value.shape) for key, value in tensor_dict.items()})
    meta["ref_frames"] = int(tensors.ref_frames)
    meta["content_hash"] = digest

    if not final.exists():
        staging = dataset_dir / SAMPLES_DIR / f".tmp-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            atomic_save_safetensors(staging / TENSORS_FILE, tensor_dict, {"format_version": str(FORMAT_VERSION), "content_hash": digest})
            atomic_write_json(staging / META_FILE, meta)
            for file_name, data in (previews or {}).items():
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

    with _lock(dataset_dir):
        entries = read_manifest(dataset_dir)
        for entry in entries:
            if entry.get("content_hash") == digest:
                return AddResult(entry["id"], False, entry.get("status", "pending"), entry)
        now = _now()
        entry = {
            "id": sample_id,
            "status": status,
            "created": now,
            "updated": now,
            "content_hash": digest,
            "frames": int(tensors.latent.shape[1]),
        }
        for key, value in (summary or {}).items():
            entry.setdefault(key, value)
        entries.append(entry)
        _write_manifest(dataset_dir, entries)
    return AddResult(sample_id, True, status, entry)


def set_status(dataset_dir: os.PathLike | str, sample_ids: Iterable[str], status: str) -> list[dict[str, Any]]:
    """Marks samples; returns their updated entries. Unknown ids raise ``KeyError`` and change nothing."""
    if status not in STATUSES:
        raise DatasetError(f"unknown status {status!r}; use one of {STATUSES}")
    wanted = list(sample_ids)
    updated = {entry["id"]: entry for entry in set_statuses(dataset_dir, {sample_id: status for sample_id in wanted})}
    return [updated[sample_id] for sample_id in wanted]


def set_statuses(dataset_dir: os.PathLike | str, statuses: Mapping[str, str]) -> list[dict[str, Any]]:
    """Marks several samples, each with its own status, in one journal record (the gallery's undo of a bulk mark
    restores mixed statuses). Unknown ids raise ``KeyError`` and bad statuses ``DatasetError``; either way nothing
    changes. Returns the updated entries in the order given. This reads the manifest to check the ids; a caller
    that already knows them (the gallery's cache) calls ``append_statuses``, which does not grow with the dataset."""
    dataset_dir = Path(dataset_dir)
    _check_statuses(statuses)
    if not statuses:
        return []
    by_id = {entry["id"]: entry for entry in read_manifest(dataset_dir)}
    unknown = [sample_id for sample_id in statuses if sample_id not in by_id]
    if unknown:  # samples are never removed, so an id listed once stays valid for the append below
        raise KeyError(f"unknown sample ids in {dataset_dir.name}: {unknown}")
    updated = append_statuses(dataset_dir, statuses)
    for sample_id, status in statuses.items():
        by_id[sample_id].update(status=status, updated=updated)
    return [by_id[sample_id] for sample_id in statuses]


def _check_statuses(statuses: Mapping[str, str]) -> None:
    for sample_id, status in statuses.items():
        validate_sample_id(sample_id)
        if status not in STATUSES:
            raise DatasetError(f"unknown status {status!r} for sample {sample_id}; use one of {STATUSES}")


def append_statuses(dataset_dir: os.PathLike | str, statuses: Mapping[str, str]) -> str:
    """Appends one mark record to the journal under the lock, in time independent of the dataset size; returns
    its timestamp. The ids must be samples of the dataset (checked by the caller: ids are never removed)."""
    dataset_dir = Path(dataset_dir)
    _check_statuses(statuses)
    if not statuses:
        raise DatasetError("no samples given to mark")
    with _lock(dataset_dir):
        if not journal.journal_path(dataset_dir).exists():
            _upgrade_format(dataset_dir)
        updated = _now()
        try:
            journal.append_record(dataset_dir, statuses, updated)
        except journal.JournalError as exc:
            raise DatasetError(str(exc)) from None
    return updated


def _upgrade_format(dataset_dir: Path) -> None:
    """Before the first journal record: a format-1 dataset becomes format 2 (caller holds the lock)."""
    if check_format_version(dataset_dir) >= FORMAT_VERSION:
        return
    path = dataset_dir / DATASET_FILE
    info = read_json(path) if path.is_file() else {"name": dataset_dir.name}
    info["format_version"] = FORMAT_VERSION
    info.setdefault("upgraded", _now())
    atomic_write_json(path, info)


def update_entries(dataset_dir: os.PathLike | str, updates: Mapping[str, Mapping[str, Any]]) -> None:
    """Merges small summary fields (e.g. ``hand_score``) into manifest entries, atomically under the lock (and folds
    the journal in). Statuses are not summary fields: they change only through ``set_statuses``."""
    dataset_dir = Path(dataset_dir)
    protected = {"id", "content_hash", "created", "status", "updated"}
    with _lock(dataset_dir):
        entries = read_manifest(dataset_dir)
        by_id = {entry["id"]: entry for entry in entries}
        for sample_id, fields in updates.items():
            if sample_id not in by_id:
                raise KeyError(f"unknown sample id {sample_id} in {dataset_dir.name}")
            by_id[sample_id].update({k: v for k, v in fields.items() if k not in protected})
        _write_manifest(dataset_dir, entries)


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


def dataset_fingerprint(sample_ids_and_hashes: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for sample_id, value in sorted(sample_ids_and_hashes):
        digest.update(f"{sample_id}:{value}\n".encode())
    return digest.hexdigest()


def remove_stale_staging(dataset_dir: os.PathLike | str, older_than_s: float = 3600.0) -> int:
    """Deletes temporary folders left by killed writers; returns how many were removed."""
    removed = 0
    samples = Path(dataset_dir) / SAMPLES_DIR
    cutoff = time.time() - older_than_s
    for entry in samples.glob(".tmp-*"):
        if entry.is_dir() and entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


GARBAGE_GRACE_S = 3600.0  # a writer renames its sample folder and lists it within seconds; an hour is never a live one


def remove_stale_garbage(dataset_dir: os.PathLike | str, grace_s: float = GARBAGE_GRACE_S) -> dict[str, list[str]]:
    """Deletes what killed writers leave in a dataset, older than ``grace_s`` seconds: staging folders
    (``samples/.tmp-*``), orphan sample folders (complete, but never listed in the manifest because the writer died
    before the manifest update) and temporary files of atomic writes. A sample the manifest lists is never touched,
    nor anything that is not a plain folder or file of those patterns (symlinks included). Call it under the
    manifest lock. Returns the names removed, by kind."""
    dataset_dir = Path(dataset_dir)
    samples = dataset_dir / SAMPLES_DIR
    cutoff = time.time() - grace_s
    removed: dict[str, list[str]] = {"staging": [], "orphans": [], "temp_files": []}
    try:
        listed = {entry.get("id") for entry in read_manifest(dataset_dir)}
    except DatasetError:
        return removed  # no readable manifest: nothing can be told to be an orphan
    try:
        entries = list(os.scandir(samples))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        if entry.name.startswith(".tmp-"):
            kind = "staging"
        elif _SAMPLE_ID_RE.fullmatch(entry.name) and entry.name not in listed:
            kind = "orphans"
        else:
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed[kind].append(entry.name)
    for folder in (dataset_dir, samples):
        removed["temp_files"] += [path.name for path in remove_stale_temp_files(folder, grace_s)]
    return removed
