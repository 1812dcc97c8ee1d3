"""Hand score of a generated video: how well the hands a pose detector finds in the generated frames agree with
the driving pose's hands, so the gallery can show the likely-good candidates first.

Inputs are POSE_KEYPOINT frames (ComfyUI's DWPose layout): one dict per frame with ``people[]``, each person
holding flat ``[x, y, c] * 21`` lists under ``hand_left_keypoints_2d`` / ``hand_right_keypoints_2d``, plus
``canvas_width`` / ``canvas_height``. Coordinates may be absolute pixels (ComfyUI's DWPose) or already
normalised to [0, 1] (other producers); both sides are normalised by their own canvas before comparing, so the
generated frames may come from a smaller preview than the driving pose.

For every generated frame, the driving frame at the same relative time is taken. Each driving hand with enough
visible points is matched one-to-one to the detected hand (any person, either side, since detectors swap left
and right) that agrees best. Per matched pair:

- agreement: the fraction of the driving hand's visible points whose detected point is confident and lies
  within ``tolerance`` times the driving hand's size (the diagonal of its box), a PCK measure;
- confidence: the mean detected confidence at those points (0 where nothing was detected).

A driving hand with no detected partner scores 0 on both. ``score = sqrt(agreement * confidence)`` averaged
over all (frame, driving hand) pairs, in [0, 1]; ``None`` when the driving pose never shows a hand.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from . import keypoints
from .keypoints import HAND_POINTS


@dataclass
class HandScore:
    score: Optional[float]  # None: the driving pose shows no hand, nothing to judge
    agreement: Optional[float]
    confidence: Optional[float]
    frames_scored: int  # generated frames whose driving frame shows at least one hand
    hands_scored: int  # (frame, driving hand) pairs

    def to_summary(self) -> dict[str, Any]:
        """Small fields for the manifest entry (``hand_score`` is what the gallery sorts by)."""
        rounded = {key: (round(value, 4) if isinstance(value, float) else value) for key, value in asdict(self).items()}
        return {
            "hand_score": rounded["score"],
            "hand_score_detail": {key: rounded[key] for key in ("agreement", "confidence", "frames_scored", "hands_scored")},
        }


def frame_hands(frame: Mapping[str, Any], min_confidence: float = 0.3) -> list[np.ndarray]:
    """All hands of one POSE_KEYPOINT frame as ``[21, 3]`` arrays (x, y normalised to [0, 1]; c as given).

    Read by ``pose.keypoints``'s rules. Hands with no point at or above ``min_confidence`` are left out. Raises
    ``ValueError`` on malformed lists, and on NaN or infinite numbers (a detector bug, not a missing point).
    """
    if not isinstance(frame, Mapping):
        raise ValueError(f"a POSE_KEYPOINT frame must be a dict with 'people', got {type(frame).__name__}")
    canvas = (float(frame.get("canvas_width") or 0), float(frame.get("canvas_height") or 0))
    hands = []
    for _, key, points in keypoints.person_hands(frame):
        if len(points) != HAND_POINTS:
            raise ValueError(f"{key} must hold {HAND_POINTS} [x, y, c] triples ({HAND_POINTS * 3} numbers), got {points.size}")
        if not np.isfinite(points).all():
            raise ValueError(f"{key} contains NaN or infinite values")
        shown = keypoints.visible(points, min_confidence)
        if shown.any():
            hands.append(keypoints.in_unit_coordinates(points, shown, canvas))
    return hands


def _pair_scores(driving: np.ndarray, detected: np.ndarray, min_confidence: float, tolerance: float) -> tuple[float, float]:
    visible = driving[:, 2] >= min_confidence
    ref = driving[visible, :2]
    span = ref.max(axis=0) - ref.min(axis=0)
    size = max(float(np.hypot(*span)), 1e-3)  # a hand seen as one point still gets a finite tolerance
    found = detected[visible]
    confident = found[:, 2] >= min_confidence
    close = np.hypot(*(found[:, :2] - ref).T) <= tolerance * size
    agreement = float((confident & close).mean())
    confidence = float(np.clip(found[:, 2], 0.0, 1.0).mean())
    return agreement, confidence


def _match_frame(
    driving_hands: Sequence[np.ndarray], detected_hands: Sequence[np.ndarray], min_confidence: float, tolerance: float
) -> list[tuple[float, float]]:
    """One-to-one greedy matching (best agreement first); unmatched driving hands score (0, 0)."""
    pairs = []
    for i, driving in enumerate(driving_hands):
        for j, detected in enumerate(detected_hands):
            agreement, confidence = _pair_scores(driving, detected, min_confidence, tolerance)
            pairs.append((agreement, confidence, i, j))
    pairs.sort(key=lambda item: (item[0], item[1]), reverse=True)
    result: dict[int, tuple[float, float]] = {}
    used: set[int] = set()
    for agreement, confidence, i, j in pairs:
        if i in result or j in used:
            continue
        result[i] = (agreement, confidence)
        used.add(j)
    return [result.get(i, (0.0, 0.0)) for i in range(len(driving_hands))]


def hand_score(
    generated: Sequence[Mapping[str, Any]],
    driving: Sequence[Mapping[str, Any]],
    min_confidence: float = 0.3,
    tolerance: float = 0.2,
) -> HandScore:
    """Scores the generated frames' hands against the driving pose (see the module docstring)."""
    if not generated:
        raise ValueError("no generated frames to score: pass one POSE_KEYPOINT dict per generated frame")
    if not driving:
        raise ValueError("no driving pose frames: pass the POSE_KEYPOINT frames the video was generated from")
    if not 0 < tolerance <= 1:
        raise ValueError(f"tolerance must be in (0, 1], got {tolerance}")
    agreements, confidences = [], []
    frames_scored = 0
    for index, frame in enumerate(generated):
        # Same relative time: the generated frames may be a subsampled preview of the driven length.
        driving_index = round(index * (len(driving) - 1) / (len(generated) - 1)) if len(generated) > 1 else 0
        driving_hands = frame_hands(driving[driving_index], min_confidence)
        if not driving_hands:
            continue
        frames_scored += 1
        for agreement, confidence in _match_frame(driving_hands, frame_hands(frame, 0.0), min_confidence, tolerance):
            agreements.append(agreement)
            confidences.append(confidence)
    if not agreements:
        return HandScore(None, None, None, 0, 0)
    agreement = float(np.mean(agreements))
    confidence = float(np.mean(confidences))
    score = float(np.mean([math.sqrt(a * c) for a, c in zip(agreements, confidences)]))
    return HandScore(score, agreement, confidence, frames_scored, len(agreements))
