"""Reading and rewriting the manifest (``manifest.jsonl``, one JSON line per sample), with the status journal applied.

Marks (status changes) are appended to the journal instead of rewriting the manifest (``marks.py``), so marking
costs the same at any dataset size; every read here applies the journal over the manifest, and every manifest
rewrite folds it in. Reads never need the lock: they are made consistent by looking at the manifest's identity.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from ..fileio import atomic_write_text
from . import journal
from .layout import MANIFEST, STATUSES, DatasetError, check_format_version, manifest_lock


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
        with manifest_lock(dataset_dir):
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


def write_manifest(dataset_dir: Path, entries: Iterable[Mapping[str, Any]]) -> None:
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
        with manifest_lock(dataset_dir, timeout=timeout):
            state = read_manifest_state(dataset_dir)
            if state.journal_identity is None:
                return state
            write_manifest(dataset_dir, state.entries)
            return ManifestState(state.entries, _file_key(os.stat(dataset_dir / MANIFEST)), None, 0)
    except Timeout:
        return None


def update_entries(dataset_dir: os.PathLike | str, updates: Mapping[str, Mapping[str, Any]]) -> None:
    """Merges small summary fields (e.g. ``hand_score``) into manifest entries, atomically under the lock (and folds
    the journal in). Statuses are not summary fields: they change only through ``set_statuses``."""
    dataset_dir = Path(dataset_dir)
    protected = {"id", "content_hash", "created", "status", "updated"}
    with manifest_lock(dataset_dir):
        entries = read_manifest(dataset_dir)
        by_id = {entry["id"]: entry for entry in entries}
        for sample_id, fields in updates.items():
            if sample_id not in by_id:
                raise KeyError(f"unknown sample id {sample_id} in {dataset_dir.name}")
            by_id[sample_id].update({k: v for k, v in fields.items() if k not in protected})
        write_manifest(dataset_dir, entries)
