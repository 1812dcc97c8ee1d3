"""One reader for ComfyUI's ``POSE_KEYPOINT`` value, so the hand masks, the hand score and the gallery's driving
pose all read hands by the same rules (they used to parse them three times, each a little differently).

Layout (ComfyUI's DWPose preprocessor, the OpenPose JSON layout): a list with one dict per frame,
``{"people": [{"pose_keypoints_2d": [x, y, c] * 18, "face_keypoints_2d": [x, y, c] * 70,
"hand_left_keypoints_2d": [x, y, c] * 21, "hand_right_keypoints_2d": [x, y, c] * 21}],
"canvas_width": W, "canvas_height": H}``.

The rules:

- frames: a bare dict is one frame; otherwise a non-empty list or tuple with one entry per frame. What a caller
  does with a ``None`` frame (no people) or a frame that is not a dict is the caller's to say.
- people: ``people`` may be missing or ``None`` (nobody); entries that are not dicts (``None`` placeholders for
  undetected people) are skipped.
- hands: a missing key, ``None`` or an empty list is "no hand here"; anything else must be flat
  ``[x, y, confidence]`` triples, or a ``ValueError`` names the frame, person and key.
- confidence: a point is visible when ``c >= threshold``, ``c > 0`` (DWPose zeroes the points it did not find)
  and all three numbers are finite.
- coordinates: DWPose writes absolute pixels of the canvas, other producers write 0..1 of it. The unit is
  detected per hand from its visible points: all of them inside ``NORMALISED_RANGE`` means normalised. Real
  pixel hands span many pixels, so they never fit in it; normalised producers overshoot 0..1 a little for
  points just outside the picture, so the range is wider than 0..1.
- canvas: ``canvas_width`` x ``canvas_height`` when both are positive whole numbers, else a size the caller
  gives (the frame it is drawing into).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

LEFT_HAND = "hand_left_keypoints_2d"
RIGHT_HAND = "hand_right_keypoints_2d"
HAND_KEYS = (LEFT_HAND, RIGHT_HAND)
HAND_POINTS = 21  # 0 wrist, thumb 1-4, index 5-8, middle 9-12, ring 13-16, little 17-20

NORMALISED_RANGE = (-0.5, 1.5)


def frames_of(pose_keypoints: Any) -> list:
    """The frames of a ``POSE_KEYPOINT`` value as a list (a bare dict is one frame)."""
    if isinstance(pose_keypoints, dict):
        return [pose_keypoints]
    if not isinstance(pose_keypoints, (list, tuple)):
        raise ValueError(
            f"pose keypoints must be a list with one dict per frame (ComfyUI's POSE_KEYPOINT), got {type(pose_keypoints).__name__}"
        )
    if len(pose_keypoints) == 0:
        raise ValueError("pose keypoints hold no frames: the POSE_KEYPOINT list is empty")
    return list(pose_keypoints)


def frame_canvas_size(frame: Optional[Mapping], width: int, height: int) -> tuple[int, int]:
    """The canvas a frame's pixel keypoints refer to; ``(width, height)`` when the frame does not say."""
    if not isinstance(frame, Mapping):
        return int(width), int(height)
    cw, ch = frame.get("canvas_width"), frame.get("canvas_height")
    try:
        cw, ch = int(cw), int(ch)
    except (TypeError, ValueError):
        return int(width), int(height)
    if cw < 1 or ch < 1:
        return int(width), int(height)
    return cw, ch


def triples(values: Any, where: str) -> Optional[np.ndarray]:
    """A flat ``[x, y, c, ...]`` list as a new ``[n, 3]`` float64 array; ``None`` for a missing or empty list."""
    if values is None:
        return None
    arr = np.array(values, dtype=np.float64)
    if arr.size == 0:
        return None
    if arr.size % 3 != 0:
        raise ValueError(
            f"{where}: a keypoint array must hold [x, y, confidence] triples, got {arr.size} numbers (not a multiple of 3)"
        )
    return arr.reshape(-1, 3)


def person_hands(frame: Mapping, where: str = "frame") -> list[tuple[int, str, np.ndarray]]:
    """``(person index, hand key, [n, 3] points as given)`` for every hand of one frame dict, in people order,
    left before right; absent hands are left out."""
    hands = []
    for p, person in enumerate(frame.get("people") or []):
        if not isinstance(person, Mapping):
            continue  # None placeholders for undetected people
        for key in HAND_KEYS:
            points = triples(person.get(key), f"{where}, person {p}, {key}")
            if points is not None:
                hands.append((p, key, points))
    return hands


def visible(points: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Boolean ``[n]``: confident (``c >= threshold`` and ``c > 0``) and finite points."""
    conf = points[:, 2]
    return (conf >= threshold) & (conf > 0) & np.isfinite(points).all(axis=1)


def looks_normalised(xy: np.ndarray) -> bool:
    """Whether these (visible) coordinates are 0..1 of the canvas rather than pixels; ``False`` for no points."""
    if xy.size == 0:
        return False
    lo, hi = NORMALISED_RANGE
    return bool(xy.min() >= lo and xy.max() <= hi)


def in_canvas_pixels(points: np.ndarray, shown: np.ndarray, canvas: tuple[float, float]) -> np.ndarray:
    """A copy of ``[n, 3]`` points with x, y in canvas pixels (the unit judged from the ``shown`` points)."""
    out = points.copy()
    if looks_normalised(points[shown, :2]):
        out[:, :2] *= np.asarray(canvas, dtype=np.float64)
    return out


def in_unit_coordinates(points: np.ndarray, shown: np.ndarray, canvas: tuple[float, float]) -> np.ndarray:
    """A copy of ``[n, 3]`` points with x, y as 0..1 of the canvas; pixel points stay as they are when the canvas
    is unknown (a size <= 0)."""
    out = points.copy()
    width, height = canvas
    if width > 0 and height > 0 and shown.any() and not looks_normalised(points[shown, :2]):
        out[:, :2] /= np.asarray(canvas, dtype=np.float64)
    return out
