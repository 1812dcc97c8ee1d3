"""Close-up animations of the hands of a sample, cut from its looping preview with the stored hand boxes.

``meta.json`` may hold ``hand_boxes``: one list per preview frame of ``[x0, y0, x1, y1]`` boxes in preview pixel
coordinates. Boxes are not labelled across frames, so they are linked into tracks by nearest centre; each track
becomes a square crop that follows its hand and is rendered as a small looping animated WebP (Pillow).
"""

from __future__ import annotations

import io
import math
from typing import Any, Optional, Sequence

Box = tuple[float, float, float, float]


def parse_hand_boxes(value: Any) -> list[list[Box]]:
    """Validates ``meta["hand_boxes"]``; raises ``ValueError`` saying what is wrong."""
    if not isinstance(value, list):
        raise ValueError("hand_boxes must be a list with one list of [x0, y0, x1, y1] boxes per preview frame")
    frames = []
    for index, boxes in enumerate(value):
        if boxes is None:
            frames.append([])
            continue
        if not isinstance(boxes, list):
            raise ValueError(f"hand_boxes[{index}] must be a list of boxes, got {type(boxes).__name__}")
        parsed = []
        for box in boxes:
            if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
                raise ValueError(f"hand_boxes[{index}] holds {box!r}; each box is [x0, y0, x1, y1] in preview pixels")
            x0, y0, x1, y1 = (float(v) for v in box)
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
                continue  # empty or degenerate: no hand in that slot
            parsed.append((x0, y0, x1, y1))
        frames.append(parsed)
    return frames


def _centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def track_hands(frames: Sequence[Sequence[Box]], max_tracks: int = 2) -> list[list[Box]]:
    """Links per-frame boxes into at most ``max_tracks`` tracks (one box per frame each, gaps held from the
    nearest frame that has one). Tracks are ordered by how many frames actually show them."""
    tracks: list[dict[int, Box]] = []
    for index, boxes in enumerate(frames):
        taken: set[int] = set()
        # Larger boxes first: a big, clear hand claims its track before a small stray detection does.
        for box in sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True):
            cx, cy = _centre(box)
            best, best_distance = None, math.inf
            for number, track in enumerate(tracks):
                if number in taken:
                    continue
                last = track[max(track)]
                lx, ly = _centre(last)
                distance = math.hypot(cx - lx, cy - ly)
                if distance < best_distance:
                    best, best_distance = number, distance
            if best is None and len(tracks) < max_tracks:
                tracks.append({})
                best = len(tracks) - 1
            if best is None:
                continue
            tracks[best][index] = box
            taken.add(best)
    tracks.sort(key=len, reverse=True)
    filled = []
    for track in tracks:
        known = sorted(track)
        filled.append([track[min(known, key=lambda k: (abs(k - index), k))] for index in range(len(frames))])
    return filled


def crop_square(box: Box, image_size: tuple[int, int], margin: float = 1.6, min_side: float = 24.0) -> tuple[int, int, int, int]:
    """A square around ``box`` enlarged by ``margin``, kept inside the image when it fits."""
    width, height = image_size
    cx, cy = _centre(box)
    side = max(box[2] - box[0], box[3] - box[1]) * margin
    side = min(max(side, min_side), float(min(width, height)))
    x0 = min(max(cx - side / 2, 0.0), width - side)
    y0 = min(max(cy - side / 2, 0.0), height - side)
    return int(round(x0)), int(round(y0)), int(round(x0 + side)), int(round(y0 + side))


def render_hand_crop(preview: bytes, track: Sequence[Box], size: int = 192, quality: int = 80) -> bytes:
    """An animated WebP of ``track``'s hand, cut from each frame of ``preview`` (any image Pillow reads)."""
    from PIL import Image, ImageSequence

    if not track:
        raise ValueError("the hand track is empty: no boxes to crop")
    with Image.open(io.BytesIO(preview)) as image:
        frames, durations = [], []
        count = getattr(image, "n_frames", 1)
        for index, frame in enumerate(ImageSequence.Iterator(image)):
            box_index = round(index * (len(track) - 1) / (count - 1)) if count > 1 else 0
            crop = frame.convert("RGB").crop(crop_square(track[box_index], frame.size))
            frames.append(crop.resize((size, size), Image.Resampling.BILINEAR))
            durations.append(int(frame.info.get("duration", image.info.get("duration", 62)) or 62))
    out = io.BytesIO()
    frames[0].save(out, format="WEBP", save_all=len(frames) > 1, append_images=frames[1:], duration=durations, loop=0, quality=quality)
    return out.getvalue()


def hand_tracks_from_meta(meta: dict[str, Any], max_tracks: int = 2) -> Optional[list[list[Box]]]:
    """Tracks from ``meta["hand_boxes"]``, or ``None`` when the sample has no usable hand boxes."""
    if "hand_boxes" not in meta:
        return None
    tracks = track_hands(parse_hand_boxes(meta["hand_boxes"]), max_tracks)
    return tracks or None
