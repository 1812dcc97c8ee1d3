"""Synthetic pose sequences in the exact ``POSE_KEYPOINT`` layout of ComfyUI's DWPose preprocessor, and a
small renderer that draws them as control frames.

``synthetic_pose_sequence`` gives one dict per frame: ``{"people": [{"pose_keypoints_2d": 18 x [x, y, c],
"face_keypoints_2d": 70 x [x, y, c], "hand_left_keypoints_2d": 21 x [x, y, c], "hand_right_keypoints_2d":
21 x [x, y, c]}], "canvas_width": W, "canvas_height": H}``, flat lists in absolute canvas pixels (or 0..1 with
``normalized=True``, as other producers write). Each person is a stick figure that waves one hand and swings
the other; points that leave the canvas are zeroed ``[0, 0, 0]``, as DWPose does for undetected points.
Body order is OpenPose COCO-18 (0 nose, 1 neck, 2-4 right arm, 5-7 left arm, 8-10 right leg, 11-13 left leg,
14-17 eyes and ears); hands are 0 wrist, then thumb, index, middle, ring, little, four points each.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from . import keypoints
from .hands import canvas_mapping
from .keypoints import frame_canvas_size

# OpenPose COCO-18 limbs (0-based) and their usual colours, as DWPose's renderer draws them.
BODY_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
LIMB_COLORS = np.array(
    [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0], [0, 255, 85], [0, 255, 170],
     [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170]],
    dtype=np.float32,
) / 255.0
HAND_BONES = [(0, 1 + 4 * f) for f in range(5)] + [(1 + 4 * f + k, 2 + 4 * f + k) for f in range(5) for k in range(3)]

FPS = 16.0  # Wan's frame rate: waving speeds are in Hz at this rate
_FINGER_SPREAD = np.radians([-55.0, -20.0, 0.0, 18.0, 36.0])  # thumb .. little, around the forearm direction
_FINGER_PALM = np.array([0.022, 0.048, 0.05, 0.047, 0.042])  # wrist -> first finger point, in body units
_FINGER_SEGMENT = np.array([0.018, 0.021, 0.023, 0.021, 0.016])


def _unit(angle: np.ndarray | float) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def _hand(wrist: np.ndarray, angle: float, side: float, u: float, curl: float) -> np.ndarray:
    """21 hand points: fingers fan out around the forearm direction ``angle``; ``side`` mirrors the fan."""
    spread = side * _FINGER_SPREAD
    base = wrist + u * _FINGER_PALM[:, None] * _unit(angle + spread)
    step = u * _FINGER_SEGMENT[:, None, None] * _unit(angle + 0.6 * spread[:, None] + side * curl * np.arange(1, 4)[None, :])
    fingers = base[:, None, :] + np.concatenate([np.zeros((5, 1, 2)), np.cumsum(step, axis=1)], axis=1)
    return np.concatenate([wrist[None], fingers.reshape(20, 2)], axis=0)


def _face(nose: np.ndarray, u: float) -> np.ndarray:
    """70 face points: jaw 17, brows 10, nose 9, eyes 12, mouth 20, pupils 2 (the 68-point layout + pupils)."""
    rx, ry = 0.045 * u, 0.06 * u
    jaw = nose + np.stack([rx * np.cos(np.linspace(math.pi, 0, 17)), 0.3 * ry + ry * 0.7 * np.sin(np.linspace(math.pi, 0, 17))], 1)
    brows = np.concatenate([nose + np.stack([np.linspace(-0.035, -0.01, 5) * u, np.full(5, -0.035 * u)], 1),
                            nose + np.stack([np.linspace(0.01, 0.035, 5) * u, np.full(5, -0.035 * u)], 1)])
    nose_pts = np.concatenate([nose + np.stack([np.zeros(4), np.linspace(-0.025, 0.0, 4) * u], 1),
                               nose + np.stack([np.linspace(-0.01, 0.01, 5) * u, np.full(5, 0.005 * u)], 1)])
    ring6 = np.linspace(0, 2 * math.pi, 6, endpoint=False)
    eyes = np.concatenate([nose + np.stack([c * u + 0.008 * u * np.cos(ring6), -0.022 * u + 0.004 * u * np.sin(ring6)], 1) for c in (-0.022, 0.022)])
    mouth = np.concatenate([nose + np.stack([r * u * np.cos(np.linspace(0, 2 * math.pi, n, endpoint=False)),
                                             0.025 * u + 0.4 * r * u * np.sin(np.linspace(0, 2 * math.pi, n, endpoint=False))], 1)
                            for r, n in ((0.018, 12), (0.011, 8))])
    pupils = nose + np.array([[-0.022 * u, -0.022 * u], [0.022 * u, -0.022 * u]])
    return np.concatenate([jaw, brows, nose_pts, eyes, mouth, pupils])


def _flat(points: np.ndarray, width: int, height: int, normalized: bool) -> list[float]:
    """``[x, y, c] * n`` with c = 1 inside the canvas, the point zeroed outside (as DWPose)."""
    inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
    out = np.zeros((len(points), 3))
    out[inside, :2] = points[inside]
    out[inside, 2] = 1.0
    if normalized:
        out[:, 0] /= width
        out[:, 1] /= height
    return [round(float(v), 4) for v in out.reshape(-1)]


def _standing_body(cx: float, top: float, u: float) -> np.ndarray:
    """The 18 body points of a figure standing at ``cx`` with its head top at ``top``; the arms are set later."""
    body = np.zeros((18, 2))
    body[0] = (cx, top + 0.08 * u)
    body[1] = (cx, top + 0.18 * u)
    body[[14, 15, 16, 17]] = [(cx - 0.03 * u, top + 0.06 * u), (cx + 0.03 * u, top + 0.06 * u),
                              (cx - 0.06 * u, top + 0.08 * u), (cx + 0.06 * u, top + 0.08 * u)]
    body[[2, 5]] = [(cx - 0.12 * u, top + 0.2 * u), (cx + 0.12 * u, top + 0.2 * u)]
    body[[8, 11]] = [(cx - 0.07 * u, top + 0.55 * u), (cx + 0.07 * u, top + 0.55 * u)]
    body[[9, 12]] = [(cx - 0.08 * u, top + 0.75 * u), (cx + 0.08 * u, top + 0.75 * u)]
    body[[10, 13]] = [(cx - 0.09 * u, top + 0.95 * u), (cx + 0.09 * u, top + 0.95 * u)]
    return body


def synthetic_pose_sequence(frames: int, width: int, height: int, people: int = 1, seed: int = 0, normalized: bool = False) -> list[dict]:
    """Stick figures whose hands move (one waves, one swings), one ``POSE_KEYPOINT`` dict per frame."""
    if frames < 1 or width < 16 or height < 16 or people < 0:
        raise ValueError(f"need frames >= 1, width/height >= 16 and people >= 0; got {frames}, {width}x{height}, {people}")
    rng = np.random.default_rng(seed)
    slot = width / max(people, 1)
    u_max = min(0.8 * height / 1.12, 1.4 * slot)  # body units: the figure spans 1.12 u tall (with the raised hand), 0.6 u wide
    persons = []
    for p in range(people):
        u = u_max * rng.uniform(0.85, 1.0)
        persons.append(dict(
            u=u,
            cx=slot * (p + 0.5) + rng.uniform(-0.05, 0.05) * slot,
            top=(height - 1.12 * u) / 2 + 0.17 * u,
            phase=rng.uniform(0, 2 * math.pi),
            wave_hz=rng.uniform(0.8, 1.4),
            sway=rng.uniform(0.0, 0.03) * u,
            waving_side=1.0 if rng.random() < 0.5 else -1.0,  # +1: the person's right arm (image left) waves
        ))
    sequence = []
    for t in range(frames):
        tau = t / FPS
        people_out = []
        for q in persons:
            u, top = q["u"], q["top"]
            cx = q["cx"] + q["sway"] * math.sin(2 * math.pi * 0.3 * tau + q["phase"])
            wave = math.sin(2 * math.pi * q["wave_hz"] * tau + q["phase"])
            body = _standing_body(cx, top, u)
            hands = {}
            for shoulder, elbow, wrist, side in ((2, 3, 4, 1.0), (5, 6, 7, -1.0)):
                # Image x grows to the person's left; side +1 is the person's right arm (image left).
                mirror = -side
                if side == q["waving_side"]:  # raised forearm swinging side to side
                    upper = math.radians(-90 + mirror * 45)
                    fore = math.radians(-90 + 35 * wave)
                    curl = 0.0
                else:  # hanging arm swinging gently, fingers curling
                    upper = math.radians(90 - mirror * (15 + 10 * wave))
                    fore = upper + math.radians(mirror * (15 + 15 * wave))
                    curl = math.radians(10 + 10 * wave)
                body[elbow] = body[shoulder] + 0.15 * u * _unit(upper)
                body[wrist] = body[elbow] + 0.14 * u * _unit(fore)
                hands["hand_right_keypoints_2d" if side > 0 else "hand_left_keypoints_2d"] = _hand(body[wrist], fore, mirror, u, curl)
            people_out.append({
                "pose_keypoints_2d": _flat(body, width, height, normalized),
                "face_keypoints_2d": _flat(_face(body[0], u), width, height, normalized),
                "hand_left_keypoints_2d": _flat(hands["hand_left_keypoints_2d"], width, height, normalized),
                "hand_right_keypoints_2d": _flat(hands["hand_right_keypoints_2d"], width, height, normalized),
            })
        sequence.append({"people": people_out, "canvas_width": int(width), "canvas_height": int(height)})
    return sequence


MOTIONS = ("wave", "raise", "circle", "swing")


def _arm_angles(motion: str, phase: float, leading: bool) -> tuple[float, float]:
    """(upper arm, forearm) elevation in degrees: 0 points straight out from the body, +90 up, -90 down."""
    s, c = math.sin(phase), math.cos(phase)
    if motion == "wave":
        return (45.0, 90.0 + 35.0 * s) if leading else (-70.0 + 10.0 * s, -55.0 + 15.0 * s)
    if motion == "raise":  # both arms lift from the hips to above the head and back
        upper = -20.0 + 65.0 * s
        return upper, upper + 35.0
    if motion == "circle":  # arms rotate, the second half a turn behind
        upper = 50.0 * (s if leading else -s)
        return upper, upper + 40.0 * (c if leading else -c)
    if motion == "swing":  # arms swing up and down in opposition
        upper = 40.0 * (s if leading else -s)
        return upper, upper + 25.0
    raise ValueError(f"unknown motion {motion!r}; choose one of {', '.join(MOTIONS)}")


def dance_pose_sequence(
    frames: int, width: int, height: int, seed: int = 0, motion: Optional[str] = None, hand_scale: float = 1.0,
    size: Optional[float] = None,
) -> list[dict]:
    """One dancing stick figure in the ``POSE_KEYPOINT`` layout, per frame: a motion from ``MOTIONS`` (random by
    ``seed`` unless given), a random body size (``size`` in 0..1 of the largest that fits, random 0.75..1 unless
    given), tempo, phase and position. ``hand_scale`` draws the hands larger than life (the method study's world
    wants hands that span several latent cells)."""
    if frames < 1 or width < 16 or height < 16:
        raise ValueError(f"need frames >= 1 and width/height >= 16; got {frames}, {width}x{height}")
    if not hand_scale > 0:
        raise ValueError(f"hand_scale must be > 0, got {hand_scale}")
    rng = np.random.default_rng(seed)
    motion = motion if motion is not None else MOTIONS[int(rng.integers(len(MOTIONS)))]
    _arm_angles(motion, 0.0, True)  # an unknown motion fails here, before any drawing
    size = float(rng.uniform(0.75, 1.0)) if size is None else float(size)
    # Framed from the knees up: the arms' full reach (shoulder to fingertip) fits the canvas, the feet may not.
    reach = 0.29 + 0.11 * hand_scale
    u = size * min(0.47 * width / (0.12 + reach), 0.95 * height / (reach - 0.2 + 0.75))
    cx = width / 2 + rng.uniform(-1, 1) * max(0.0, 0.5 * width - (0.12 + reach) * u)
    top = (reach - 0.2) * u + rng.uniform(0.01, 0.04) * height
    phase0, hz = rng.uniform(0, 2 * math.pi), rng.uniform(0.8, 1.6)
    leading_side = 1.0 if rng.random() < 0.5 else -1.0  # +1: the person's right arm (image left) leads
    sway = rng.uniform(0.0, 0.04) * u
    sequence = []
    for t in range(frames):
        phase = 2 * math.pi * hz * t / FPS + phase0
        x = cx + sway * math.sin(phase / 2)
        body = _standing_body(x, top, u)
        hands = {}
        for shoulder, elbow, wrist, side in ((2, 3, 4, 1.0), (5, 6, 7, -1.0)):
            outward = -side  # image x: the person's right arm (side +1) reaches to the image left
            upper_deg, fore_deg = _arm_angles(motion, phase, side == leading_side)
            upper = math.atan2(-math.sin(math.radians(upper_deg)), outward * math.cos(math.radians(upper_deg)))
            fore = math.atan2(-math.sin(math.radians(fore_deg)), outward * math.cos(math.radians(fore_deg)))
            body[elbow] = body[shoulder] + 0.15 * u * _unit(upper)
            body[wrist] = body[elbow] + 0.14 * u * _unit(fore)
            key = "hand_right_keypoints_2d" if side > 0 else "hand_left_keypoints_2d"
            hands[key] = _hand(body[wrist], fore, outward, u * hand_scale, math.radians(8.0))
        sequence.append({
            "people": [{
                "pose_keypoints_2d": _flat(body, width, height, False),
                "face_keypoints_2d": _flat(_face(body[0], u), width, height, False),
                "hand_left_keypoints_2d": _flat(hands["hand_left_keypoints_2d"], width, height, False),
                "hand_right_keypoints_2d": _flat(hands["hand_right_keypoints_2d"], width, height, False),
            }],
            "canvas_width": int(width), "canvas_height": int(height),
        })
    return sequence


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------


def _points(values, threshold: float, canvas: tuple[int, int], mapping) -> Optional[np.ndarray]:
    """Target-pixel points ``[n, 2]`` with NaN where a point is missing; None for an absent array."""
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    valid = keypoints.visible(arr, threshold)
    if not valid.any():
        return None
    xy = keypoints.in_canvas_pixels(arr, valid, canvas)[:, :2]
    sx, sy, ox, oy = mapping
    xy = xy * np.array([sx, sy]) + np.array([ox, oy])
    xy[~valid] = np.nan
    return xy


def _draw_segment(img: np.ndarray, p: np.ndarray, q: np.ndarray, radius: float, color: np.ndarray) -> None:
    """Paint pixels whose centre is within ``radius`` of segment p-q (vectorised over the segment's box)."""
    if np.isnan(p).any() or np.isnan(q).any():
        return
    H, W = img.shape[:2]
    x0, x1 = max(int(min(p[0], q[0]) - radius), 0), min(int(max(p[0], q[0]) + radius) + 1, W)
    y0, y1 = max(int(min(p[1], q[1]) - radius), 0), min(int(max(p[1], q[1]) + radius) + 1, H)
    if x1 <= x0 or y1 <= y0:
        return
    xs = np.arange(x0, x1) + 0.5
    ys = np.arange(y0, y1)[:, None] + 0.5
    d = q - p
    length2 = float(d @ d)
    s = 0.0 if length2 == 0 else np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / length2, 0, 1)
    dist2 = (xs - p[0] - s * d[0]) ** 2 + (ys - p[1] - s * d[1]) ** 2
    img[y0:y1, x0:x1][dist2 <= radius * radius] = color


def render_pose_frames(
    pose_keypoints: Sequence[Optional[dict]],
    width: Optional[int] = None,
    height: Optional[int] = None,
    resize: str = "stretch",
    threshold: float = 0.3,
) -> torch.Tensor:
    """Draw pose frames as an IMAGE ``[T, H, W, 3]`` float 0..1 (black background, OpenPose-like colours).

    Size defaults to the first frame's canvas; a different size maps points with the same ``resize`` mode as
    the hand masks, so masks and renders line up.
    """
    frames = list(pose_keypoints)
    if not frames:
        raise ValueError("no pose frames to render")
    if width is None or height is None:
        width, height = frame_canvas_size(frames[0], 512, 512)
    W, H = int(width), int(height)
    out = np.zeros((len(frames), H, W, 3), dtype=np.float32)
    limb_r = max(1.5, min(W, H) / 160)
    hand_r = max(1.0, limb_r / 2)
    hand_color = np.array([0.2, 0.55, 1.0], dtype=np.float32)
    white = np.ones(3, dtype=np.float32)
    for t, frame in enumerate(frames):
        if not isinstance(frame, dict):
            continue
        canvas = frame_canvas_size(frame, W, H)
        mapping = canvas_mapping(canvas[0], canvas[1], W, H, resize)
        img = out[t]
        for person in frame.get("people") or []:
            if not isinstance(person, dict):
                continue
            body = _points(person.get("pose_keypoints_2d"), threshold, canvas, mapping)
            if body is not None:
                for (a, b), color in zip(BODY_LIMBS, LIMB_COLORS):
                    if a < len(body) and b < len(body):
                        _draw_segment(img, body[a], body[b], limb_r, color)
            for key in keypoints.HAND_KEYS:
                hand = _points(person.get(key), threshold, canvas, mapping)
                if hand is not None and len(hand) >= 21:
                    for a, b in HAND_BONES:
                        _draw_segment(img, hand[a], hand[b], hand_r, hand_color)
            face = _points(person.get("face_keypoints_2d"), threshold, canvas, mapping)
            if face is not None:
                face = face[~np.isnan(face).any(axis=1)].astype(np.int64)
                face = face[(face[:, 0] >= 0) & (face[:, 0] < W) & (face[:, 1] >= 0) & (face[:, 1] < H)]
                img[face[:, 1], face[:, 0]] = white
    return torch.from_numpy(out)
