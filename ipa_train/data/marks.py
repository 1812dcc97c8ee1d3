"""Statuses (pending, preferred, rejected): marking samples appends one record to the status journal
(``journal.py``) under the lock, in time independent of the dataset size. Format 1 (before the journal) opens
unchanged: its first mark starts a journal and the dataset says 2."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..fileio import atomic_write_json, read_json
from . import journal
from .layout import DATASET_FILE, FORMAT_VERSION, STATUSES, DatasetError, check_format_version, manifest_lock, utc_now, validate_sample_id
from .manifest import read_manifest


def count_statuses(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = {status: 0 for status in STATUSES}
    for entry in entries:
        counts[entry.get("status", "pending")] = counts.get(entry.get("status", "pending"), 0) + 1
    return counts


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
    with manifest_lock(dataset_dir):
        if not journal.journal_path(dataset_dir).exists():
            _upgrade_format(dataset_dir)
        updated = utc_now()
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
    info.setdefault("upgraded", utc_now())
    atomic_write_json(path, info)
