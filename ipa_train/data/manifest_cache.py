"""The manifest of each dataset kept parsed in memory, for a server that lists and marks samples (the gallery).

Listing reads only the manifest (parsed once per manifest version and cached, with the status journal's new lines
applied as they come), never tensors or meta files: a page is a slice of a cached, sorted view.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import journal
from .layout import MANIFEST, DatasetError
from .manifest import apply_marks, compact, read_manifest_state
from .marks import count_statuses


@dataclass
class CachedManifest:
    key: tuple  # the manifest file's (inode, size, mtime): every rewrite replaces the file
    journal: Optional[tuple[int, int]]  # the status journal applied, and up to which byte
    journal_end: int
    entries: list[dict[str, Any]]
    counts: dict[str, int]
    views: dict[tuple, list[dict[str, Any]]]
    by_id: dict[str, dict[str, Any]]


class ManifestCache:
    """Parsed manifests with their status journal applied, per dataset. A manifest rewrite (new inode) means a full
    parse; marks only append to the journal, so a mark costs reading the new journal lines, not the manifest.
    Entries are updated in place under the lock: callers take copies (``page``, ``entry``), never the live dicts.
    A full parse that finds a journal folds it into the manifest ("compacted on open") when the lock is free."""

    def __init__(self, max_datasets: int = 16):
        self._lock = threading.Lock()
        self._items: OrderedDict[str, CachedManifest] = OrderedDict()
        self._max = max_datasets

    def get(self, dataset_dir: Path) -> CachedManifest:
        path = dataset_dir / MANIFEST
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise DatasetError(f"{dataset_dir.name} is not an IPA dataset (no {MANIFEST})") from None
        if not stat.S_ISREG(info.st_mode):  # a symlink (or anything else) is never followed out of the dataset
            raise DatasetError(f"{dataset_dir.name}/{MANIFEST} is not a plain file (a symlink?); refusing it")
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            cached = self._items.get(str(dataset_dir))
            if cached is not None and cached.key == key and self._apply_journal_tail(dataset_dir, cached):
                self._items.move_to_end(str(dataset_dir))
                return cached
        state = None
        if journal.journal_path(dataset_dir).exists():
            try:
                state = compact(dataset_dir, timeout=0)  # None while a collector holds the lock: compact next time
            except OSError:
                state = None  # a folder this server cannot write: the journal stays, reads apply it
        if state is None:
            state = read_manifest_state(dataset_dir)
        entries = state.entries
        cached = CachedManifest(
            state.manifest_key, state.journal_identity, state.journal_end, entries, count_statuses(entries), {},
            {entry.get("id"): entry for entry in entries},
        )  # fmt: skip
        with self._lock:
            self._items[str(dataset_dir)] = cached
            self._items.move_to_end(str(dataset_dir))
            while len(self._items) > self._max:
                self._items.popitem(last=False)
        return cached

    def _apply_journal_tail(self, dataset_dir: Path, cached: CachedManifest) -> bool:
        """Applies journal lines appended since the last look (caller holds the lock); False when the journal is not
        the one applied before (folded into a manifest this cache has not seen): then parse again."""
        try:
            tail = journal.read_journal(dataset_dir, cached.journal, cached.journal_end)
        except journal.JournalError as exc:
            raise DatasetError(str(exc)) from None
        if tail.replaced:
            return False
        if tail.identity is None or not tail.records:
            return True
        cached.journal, cached.journal_end = tail.identity, tail.end
        changed = apply_marks(cached.by_id, tail.records)
        for previous, status in changed:
            cached.counts[previous] = cached.counts.get(previous, 0) - 1
            cached.counts[status] = cached.counts.get(status, 0) + 1
        if changed:
            # Unfiltered views keep their order (statuses are not a sort key, the live entries show the new
            # status); filtered views and the "updated" order change.
            cached.views = {k: v for k, v in cached.views.items() if k[0] is None and k[1] != "updated"}
        return True

    def page(self, dataset_dir: Path, statuses: Optional[frozenset[str]], sort: str, descending: bool, offset: int, limit: int) -> tuple[dict[str, int], int, list[dict[str, Any]]]:
        """Counts, the size of the filtered view and copies of one page of it (views are cached per manifest
        version and journal position, so paging is a slice)."""
        cached = self.get(dataset_dir)
        view_key = (statuses, sort, descending)
        with self._lock:
            found = cached.views.get(view_key)
            if found is None:
                found = [entry for entry in cached.entries if statuses is None or entry.get("status", "pending") in statuses]
                found = sort_entries(found, sort, descending)
                cached.views[view_key] = found
            return dict(cached.counts), len(found), [dict(entry) for entry in found[offset : offset + limit]]

    def entry(self, dataset_dir: Path, sample_id: str) -> Optional[dict[str, Any]]:
        cached = self.get(dataset_dir)
        with self._lock:
            found = cached.by_id.get(sample_id)
            return dict(found) if found is not None else None

    def counts(self, dataset_dir: Path) -> tuple[int, dict[str, int]]:
        cached = self.get(dataset_dir)
        with self._lock:
            return len(cached.entries), dict(cached.counts)

    def unknown_ids(self, dataset_dir: Path, sample_ids: list[str]) -> list[str]:
        cached = self.get(dataset_dir)
        with self._lock:
            return [sample_id for sample_id in sample_ids if sample_id not in cached.by_id]


def as_number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def sort_entries(entries: list[dict[str, Any]], sort: str, descending: bool) -> list[dict[str, Any]]:
    """Stable sort; entries without the sort field (no seed, not scored) always come last."""
    if sort in ("date", "updated"):
        field = "created" if sort == "date" else "updated"
        return sorted(entries, key=lambda entry: str(entry.get(field, "")), reverse=descending)
    field = "seed" if sort == "seed" else "hand_score"
    present = [entry for entry in entries if as_number(entry.get(field)) is not None]
    missing = [entry for entry in entries if as_number(entry.get(field)) is None]
    present.sort(key=lambda entry: as_number(entry.get(field)), reverse=descending)
    return present + missing
