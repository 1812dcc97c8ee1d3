"""What killed writers leave in a dataset (staging folders, orphan sample folders, temporary files), and its removal."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..fileio import remove_stale_temp_files
from .layout import SAMPLE_ID_RE, SAMPLES_DIR, DatasetError
from .manifest import read_manifest


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
        elif SAMPLE_ID_RE.fullmatch(entry.name) and entry.name not in listed:
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
