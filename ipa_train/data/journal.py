"""The status journal: marks appended to ``marks.jsonl`` beside ``manifest.jsonl``, so that marking costs the
same at 600 and at 60,000 samples (rewriting the manifest for every mark grew with the dataset).

One line per marking request, written with one ``write`` and fsynced under the dataset's lock before the mark
is acknowledged::

    {"updated": "2026-01-01T12:00:00.000+00:00", "marks": {"<sample id>": "preferred", ...}}

A request is one line, so a bulk mark lands whole or not at all. A line without its newline is a write still in
flight or one a crash cut short (never acknowledged): readers ignore it and the next writer cuts it off. Later
lines win. ``ipa_train.data.manifest`` applies the journal over the manifest in every read and folds it into the
manifest whenever it rewrites the manifest anyway (adding a sample, storing hand scores) or when the gallery
opens the dataset: manifest first (atomic rename), then the journal is removed. A crash between the two leaves
records that the manifest already holds; replaying them in order gives the same statuses, so nothing is lost
and nothing is applied twice wrongly.

This module only reads and appends the file; the caller holds the dataset lock for every write.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

JOURNAL = "marks.jsonl"
_TAIL_CHUNK = 4096


class JournalError(ValueError):
    """A journal line that is complete but not a valid mark record (the file was edited or damaged)."""


@dataclass
class JournalRead:
    """Complete records from ``start`` on. ``identity`` is (device, inode) of the file read, ``None`` when there is
    no journal; ``end`` the offset after the last complete line; ``replaced`` is True when a caller asked for a
    continuation of a journal that is no longer the one on disk (it was folded into the manifest)."""

    records: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    identity: Optional[tuple[int, int]] = None
    end: int = 0
    replaced: bool = False


def journal_path(dataset_dir: os.PathLike | str) -> Path:
    return Path(dataset_dir) / JOURNAL


def _open_no_follow(path: Path, flags: int) -> int:
    # A journal is a plain file written by this pack: a symlink in its place is refused (O_NOFOLLOW), not followed.
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileNotFoundError:
        raise
    except OSError:
        if path.is_symlink():
            raise JournalError(f"{path} is a symbolic link; the status journal must be a plain file: remove the link") from None
        raise


def _parse(line: bytes, path: Path, offset: int) -> tuple[str, dict[str, str]]:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise JournalError(f"{path}, byte {offset}: not a JSON mark record ({exc}); delete that line (or the file, losing marks made since the manifest was last rewritten)") from None
    marks = record.get("marks") if isinstance(record, dict) else None
    updated = record.get("updated") if isinstance(record, dict) else None
    if not isinstance(marks, dict) or not isinstance(updated, str) or not all(isinstance(v, str) for v in marks.values()):
        raise JournalError(f"{path}, byte {offset}: a mark record needs 'updated' (text) and 'marks' ({{id: status}}); delete that line")
    return updated, marks


def read_journal(dataset_dir: os.PathLike | str, identity: Optional[tuple[int, int]] = None, start: int = 0) -> JournalRead:
    """Records of the journal, or only those after byte ``start`` of the journal ``identity`` (what a cache has
    already applied). Needs no lock: lines are appended whole and the file is only ever cut back to a newline."""
    path = journal_path(dataset_dir)
    try:
        fd = _open_no_follow(path, os.O_RDONLY)
    except FileNotFoundError:
        return JournalRead(replaced=identity is not None)
    with os.fdopen(fd, "rb") as handle:
        stat = os.fstat(handle.fileno())
        found = (stat.st_dev, stat.st_ino)
        if identity is not None and (found != identity or stat.st_size < start):
            return JournalRead(identity=found, replaced=True)
        if identity is None:
            start = 0
        handle.seek(start)
        data = handle.read()
    complete = data.rfind(b"\n") + 1  # a last line without its newline is still being written (or was cut short)
    records, offset = [], start
    for line in data[:complete].split(b"\n")[:-1]:
        if line.strip():
            records.append(_parse(line, path, offset))
        offset += len(line) + 1
    return JournalRead(records, found, start + complete)


def append_record(dataset_dir: os.PathLike | str, marks: Mapping[str, str], updated: str) -> None:
    """Appends one record and fsyncs it. The caller holds the dataset lock (the only writer at a time), so a torn
    last line left by a crashed writer is cut off first instead of being glued to this record."""
    path = journal_path(dataset_dir)
    created = not path.exists()
    line = (json.dumps({"updated": updated, "marks": dict(marks)}, separators=(",", ":")) + "\n").encode("utf-8")
    fd = _open_no_follow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        if size:
            _cut_torn_tail(fd, size)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)  # the new file's name must survive a power cut too, not only its bytes


def _cut_torn_tail(fd: int, size: int) -> None:
    position = size
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        chunk = os.pread(fd, position - start, start)
        if position == size and chunk.endswith(b"\n"):
            return
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        position = start
    os.ftruncate(fd, 0)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the file itself is synced
    finally:
        os.close(fd)


def remove_journal(dataset_dir: os.PathLike | str) -> None:
    """After the manifest holding the journal's marks has been renamed into place (caller holds the lock)."""
    try:
        os.unlink(journal_path(dataset_dir))
    except FileNotFoundError:
        pass
