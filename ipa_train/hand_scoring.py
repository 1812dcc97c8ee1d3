"""Scores the hands of a dataset's samples and stores the score in the manifest, so the gallery can sort by it.

The pose detector is passed in (a callable from RGB frames to POSE_KEYPOINT frames), so this module works with
any detector and is tested with a synthetic one; ``nodes/`` hands it DWPose when its weights are present.
The generated frames are the sample's looping preview (``preview.webp``); the driving pose is read from
``meta.json`` (``DRIVING_POSE_KEYS``: a list of POSE_KEYPOINT frames, as the collector stores them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from . import dataset as ds
from .fileio import read_json
from .hand_score import hand_score

DRIVING_POSE_KEYS = ("driving_pose", "pose_keypoints")
PREVIEW_FILE = "preview.webp"

PoseDetector = Callable[[Sequence[np.ndarray]], Sequence[dict]]  # RGB uint8 [H, W, 3] frames -> POSE_KEYPOINT frames


def preview_frames(path: os.PathLike | str, max_frames: int = 32) -> list[np.ndarray]:
    """RGB frames of an (animated) preview, evenly subsampled to at most ``max_frames``."""
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        count = getattr(image, "n_frames", 1)
        wanted = set(np.linspace(0, count - 1, min(count, max_frames)).round().astype(int).tolist())
        return [np.asarray(frame.convert("RGB")) for index, frame in enumerate(ImageSequence.Iterator(image)) if index in wanted]


def driving_pose(meta: dict[str, Any]) -> Optional[list[dict]]:
    for key in DRIVING_POSE_KEYS:
        value = meta.get(key)
        if isinstance(value, list) and value:
            return value
    return None


def score_sample(dataset_dir: os.PathLike | str, sample_id: str, detector: PoseDetector) -> Optional[dict[str, Any]]:
    """The manifest summary (``hand_score``, ``hand_score_detail``) for one sample, or ``None`` when it has no
    preview or no driving pose to compare with."""
    folder = ds.sample_path(dataset_dir, sample_id)
    preview, meta_file = folder / PREVIEW_FILE, folder / ds.META_FILE
    if not preview.is_file() or not meta_file.is_file():
        return None
    meta = read_json(meta_file)
    driving = driving_pose(meta) if isinstance(meta, dict) else None
    if driving is None:
        return None
    frames = preview_frames(preview)
    detected = list(detector(frames))
    if len(detected) != len(frames):
        raise ValueError(f"the pose detector returned {len(detected)} frames for {len(frames)} input frames")
    return hand_score(detected, driving).to_summary()


def score_dataset(
    dataset_dir: os.PathLike | str,
    detector: PoseDetector,
    sample_ids: Optional[Iterable[str]] = None,
    rescore: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    cancelled: Optional[Callable[[], bool]] = None,
    batch: int = 16,
) -> dict[str, int]:
    """Scores samples (all, or ``sample_ids``; already scored ones only with ``rescore``) and merges the scores
    into the manifest every ``batch`` samples, so work done before a cancel or crash is kept.
    Returns counts: scored, skipped (no preview or driving pose), failed."""
    dataset_dir = Path(dataset_dir)
    entries = ds.read_manifest(dataset_dir)
    wanted = set(sample_ids) if sample_ids is not None else None
    todo = [
        e["id"] for e in entries
        if (wanted is None or e["id"] in wanted) and (rescore or e.get("hand_score") is None)
    ]  # fmt: skip
    counts = {"scored": 0, "skipped": 0, "failed": 0}
    pending: dict[str, dict[str, Any]] = {}
    for index, sample_id in enumerate(todo):
        if cancelled is not None and cancelled():
            break
        try:
            summary = score_sample(dataset_dir, sample_id, detector)
        except (ValueError, OSError) as exc:
            pending[sample_id] = {"hand_score": None, "hand_score_error": str(exc)[:300]}
            counts["failed"] += 1
        else:
            if summary is None:
                counts["skipped"] += 1
            else:
                pending[sample_id] = {**summary, "hand_score_error": None}
                counts["scored"] += 1
        if len(pending) >= batch:
            ds.update_entries(dataset_dir, pending)
            pending = {}
        if progress is not None:
            progress(index + 1, len(todo))
    if pending:
        ds.update_entries(dataset_dir, pending)
    return counts

