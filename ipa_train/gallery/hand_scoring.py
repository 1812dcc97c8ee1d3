"""Scores the hands of a dataset's samples and stores the score in the manifest, so the gallery can sort by it.

The pose detector is passed in (a callable from RGB frames to POSE_KEYPOINT frames), so this module works with
any detector and is tested with a synthetic one; ``nodes/`` hands it DWPose when its weights are present.
The generated frames are the sample's looping preview (``preview.webp``); the driving pose is read from
``meta.json`` (``DRIVING_POSE_KEYS``: a list of POSE_KEYPOINT frames), where the collector (IPA Mark Preferred)
stores its ``pose_keypoint`` input as given (the frames of the video, in the pose's own canvas):
``fit_driving_pose`` maps it onto the video the way ``WanVaceToVideo`` fitted the control video (centre crop, or
``meta["driving_pose_resize"]``), using ``meta["video_size"]``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from ..data.layout import META_FILE, sample_path
from ..data.manifest import read_manifest, update_entries
from ..fileio import read_json
from ..pose import keypoints
from ..pose.hand_score import frame_hands, hand_score
from ..pose.hands import RESIZE_MODES, canvas_mapping
from ..pose.keypoints import frame_canvas_size

DRIVING_POSE_KEYS = ("driving_pose", "pose_keypoints")
PREVIEW_FILE = "preview.webp"

DRIVING_RESIZE_KEY = "driving_pose_resize"  # how the pose canvas was fitted to the video; WanVaceToVideo crops
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


class ScoringCancelled(Exception):
    """Raised by a detector (between frames) to stop scoring; ``score_dataset`` keeps the work done so far."""


def fit_driving_pose(frames: Sequence[Any], width: int, height: int, resize: str = "crop") -> list[dict]:
    """The driving pose's hands in video pixels: each frame's canvas mapped onto ``width`` x ``height`` the way
    the control video was resized (``resize``, see ``ipa_train.pose.hands``), so both sides of the comparison share
    one frame. Points cropped out of the video become ``[0, 0, 0]``: nothing there can be found in it."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"{DRIVING_RESIZE_KEY}={resize!r} is not one of {RESIZE_MODES}")
    fitted = []
    for index, frame in enumerate(frames):
        if frame is None:
            fitted.append({"people": [], "canvas_width": width, "canvas_height": height})
            continue
        if not isinstance(frame, dict):
            raise ValueError(f"driving pose frame {index} is a {type(frame).__name__}, expected a POSE_KEYPOINT dict")
        canvas_w, canvas_h = frame_canvas_size(frame, width, height)
        sx, sy, ox, oy = canvas_mapping(canvas_w, canvas_h, width, height, resize)
        people: dict[int, dict] = {}
        for p, key, points in keypoints.person_hands(frame, f"driving pose frame {index}"):
            people.setdefault(p, {})[key] = _fit_hand(points, (canvas_w, canvas_h), (sx, sy, ox, oy), width, height)
        people = list(people.values())
        fitted.append({"people": people, "canvas_width": int(width), "canvas_height": int(height)})
    return fitted


def _fit_hand(points: np.ndarray, canvas: tuple[int, int], mapping: tuple, width: int, height: int) -> list[float]:
    """One hand's flat points mapped from canvas to video pixels; points not shown, or outside the video, zeroed."""
    shown = keypoints.visible(points)
    points = keypoints.in_canvas_pixels(points, shown, canvas)  # normalised producers: to canvas pixels first
    sx, sy, ox, oy = mapping
    points[:, 0] = points[:, 0] * sx + ox
    points[:, 1] = points[:, 1] * sy + oy
    inside = (points[:, 0] >= 0) & (points[:, 0] <= width) & (points[:, 1] >= 0) & (points[:, 1] <= height)
    points[~(shown & inside)] = 0.0
    return points.reshape(-1).tolist()


def _shows_a_hand(frames: Sequence[dict], min_confidence: float = 0.3) -> bool:
    return any(frame_hands(frame, min_confidence) for frame in frames)


def score_sample(
    dataset_dir: os.PathLike | str, sample_id: str, detector: PoseDetector, max_frames: int = 32
) -> Optional[dict[str, Any]]:
    """The manifest summary (``hand_score``, ``hand_score_detail``) for one sample, or ``None`` when it has no
    preview, no driving pose, or a driving pose that never shows a hand."""
    folder = sample_path(dataset_dir, sample_id)
    preview, meta_file = folder / PREVIEW_FILE, folder / META_FILE
    if not preview.is_file() or not meta_file.is_file():
        return None
    meta = read_json(meta_file)
    driving = driving_pose(meta) if isinstance(meta, dict) else None
    if driving is None:
        return None
    frames = preview_frames(preview, max_frames)
    video_size = meta.get("video_size")
    if isinstance(video_size, list) and len(video_size) == 2 and all(isinstance(v, int) and v > 0 for v in video_size):
        width, height = video_size
    else:  # no record of the video's size: the preview has its aspect
        height, width = frames[0].shape[:2]
    driving = fit_driving_pose(driving, width, height, meta.get(DRIVING_RESIZE_KEY, "crop"))
    if not _shows_a_hand(driving):
        return None  # nothing to judge: skip the (costly) detection
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
    flush_seconds: float = 5.0,
    max_frames: int = 32,
) -> dict[str, int]:
    """Scores samples (all, or ``sample_ids``; already scored ones only with ``rescore``) and merges the scores
    into the manifest every ``batch`` samples or ``flush_seconds``, whichever comes first, so the gallery sees
    scores while a long run goes on and work done before a cancel or crash is kept.

    ``progress(done, total)`` is called once before the first sample (done 0) and after each. Scoring stops
    between samples when ``cancelled()`` is true, or within one when the detector raises ``ScoringCancelled``
    (that sample is left unscored). Returns counts: scored, skipped (no preview or no driving hand), failed."""
    dataset_dir = Path(dataset_dir)
    entries = read_manifest(dataset_dir)
    wanted = set(sample_ids) if sample_ids is not None else None
    todo = [
        e["id"] for e in entries
        if (wanted is None or e["id"] in wanted) and (rescore or e.get("hand_score") is None)
    ]  # fmt: skip
    counts = {"scored": 0, "skipped": 0, "failed": 0}
    pending: dict[str, dict[str, Any]] = {}
    last_flush = time.monotonic()
    if progress is not None:
        progress(0, len(todo))
    try:
        for index, sample_id in enumerate(todo):
            if cancelled is not None and cancelled():
                break
            try:
                summary = score_sample(dataset_dir, sample_id, detector, max_frames)
            except ScoringCancelled:
                break
            except (ValueError, OSError) as exc:
                pending[sample_id] = {"hand_score": None, "hand_score_error": str(exc)[:300]}
                counts["failed"] += 1
            else:
                if summary is None:
                    counts["skipped"] += 1
                else:
                    pending[sample_id] = {**summary, "hand_score_error": None}
                    counts["scored"] += 1
            if pending and (len(pending) >= batch or time.monotonic() - last_flush >= flush_seconds):
                update_entries(dataset_dir, pending)
                pending, last_flush = {}, time.monotonic()
            if progress is not None:
                progress(index + 1, len(todo))
    finally:
        if pending:
            update_entries(dataset_dir, pending)
    return counts
