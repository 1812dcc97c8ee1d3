"""Pose pictures in the OpenPose convention (as ControlNet/VACE pose control videos look) from ``POSE_KEYPOINT``.

Same drawing as ComfyUI's DWPose preprocessor (comfyui_controlnet_aux ``util.draw_bodypose`` / ``draw_handpose`` /
``draw_facepose``), done with Pillow instead of OpenCV: body limbs as filled ellipses 4 px thick in the 17 OpenPose
colours at 60 % brightness, joints as 4 px discs in full colour, hand bones 2 px wide in hues around the colour
wheel with blue joints, face points as white 3 px discs, on black. Drawing happens directly at the output size,
so stroke widths are the same whatever the frame size.

Keypoints may be in pixels of the canvas (DWPose) or normalised to 0..1 (other producers): a part whose visible
points all lie in [0, 1] is taken as normalised, as the preprocessor does. A point is drawn when its score is at
least ``threshold`` (DWPose writes real scores here; other packs write 1.0 or 0.0).
"""

from __future__ import annotations

import colorsys
import math
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .keypoints import HAND_KEYS, HAND_POINTS, LEFT_HAND, RIGHT_HAND

BODY_POINTS, FACE_POINTS = 18, 70
STICK_WIDTH = 4
BODY_JOINT_RADIUS = 4
HAND_LINE_WIDTH = 2
HAND_JOINT_RADIUS = 4
FACE_POINT_RADIUS = 3
LIMB_BRIGHTNESS = 0.6

# 1-based OpenPose body point pairs, in drawing order (ControlNet's limbSeq).
BODY_LIMBS = [
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11),
    (2, 12), (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18),
]
BODY_COLORS = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
]
HAND_EDGES = [
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
]
HAND_EDGE_COLORS = [
    tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)) for i in range(len(HAND_EDGES))
]
HAND_JOINT_COLOR = (0, 0, 255)
FACE_COLOR = (255, 255, 255)

PART_KEYS = {
    "pose_keypoints_2d": BODY_POINTS,
    "face_keypoints_2d": None,  # 70 from DWPose/OpenPose; 68 from some producers
    LEFT_HAND: HAND_POINTS,
    RIGHT_HAND: HAND_POINTS,
}


class PoseKeypointError(ValueError):
    """A POSE_KEYPOINT value that is not in the OpenPose JSON layout."""


def _points(flat: Optional[Sequence[float]], where: str, expected: Optional[int]) -> Optional[np.ndarray]:
    if flat is None or len(flat) == 0:
        return None
    if len(flat) % 3 != 0:
        raise PoseKeypointError(f"{where} has {len(flat)} numbers; OpenPose keypoints are flat [x, y, score] triples")
    points = np.asarray(flat, dtype=np.float64).reshape(-1, 3)
    if expected is not None and len(points) != expected:
        raise PoseKeypointError(f"{where} has {len(points)} points, expected {expected}")
    return points


def normalize_pose_keypoint(value) -> list[dict]:
    """A list of frame dicts from a ``POSE_KEYPOINT`` value (one dict or a list), checked for the layout."""
    frames = [value] if isinstance(value, dict) else value
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise PoseKeypointError("POSE_KEYPOINT must be a non-empty list of frame dicts (OpenPose JSON layout)")
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise PoseKeypointError(f"POSE_KEYPOINT frame {index} is a {type(frame).__name__}, expected a dict")
        for key in ("canvas_width", "canvas_height"):
            size = frame.get(key)
            if not isinstance(size, (int, np.integer)) or size <= 0:
                raise PoseKeypointError(f"POSE_KEYPOINT frame {index} has {key}={size!r}; a positive integer is required")
        people = frame.get("people", [])
        if not isinstance(people, list):
            raise PoseKeypointError(f"POSE_KEYPOINT frame {index}: 'people' must be a list")
        for p, person in enumerate(people):
            for key, expected in PART_KEYS.items():
                _points(person.get(key), f"frame {index} person {p} {key}", expected)
    return list(frames)


def output_size(canvas_width: int, canvas_height: int, resolution: int) -> tuple[int, int]:
    """(width, height) of the picture: the canvas scaled so its short side is ``resolution`` (0: canvas size)."""
    if resolution <= 0:
        return int(canvas_width), int(canvas_height)
    k = resolution / min(canvas_width, canvas_height)
    return int(round(canvas_width * k)), int(round(canvas_height * k))


def _to_pixels(points: np.ndarray, threshold: float, canvas: tuple[int, int], out: tuple[int, int]) -> list:
    """Output-pixel (x, y) floats for visible points, None for the others."""
    visible = points[:, 2] >= threshold
    if not visible.any():
        return [None] * len(points)
    normalised = bool(np.all((np.abs(points[visible, :2]) <= 1.0)))
    sx, sy = (out[0], out[1]) if normalised else (out[0] / canvas[0], out[1] / canvas[1])
    return [(x * sx, y * sy) if ok else None for (x, y, _), ok in zip(points, visible)]


def _ellipse_polygon(center: tuple[int, int], axes: tuple[int, int], angle: int) -> list[tuple[int, int]]:
    """cv2.ellipse2Poly(center, axes, angle, 0, 360, 1): the outline at 1 degree steps, rounded, deduplicated."""
    angle %= 360
    cos_a, sin_a = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    points: list[tuple[int, int]] = []
    for degree in range(0, 361):
        t = math.radians(degree)
        x, y = axes[0] * math.cos(t), axes[1] * math.sin(t)
        point = (int(np.rint(center[0] + x * cos_a - y * sin_a)), int(np.rint(center[1] + x * sin_a + y * cos_a)))
        if not points or point != points[-1]:
            points.append(point)
    return points if len(points) > 1 else [center, center]


def _disc(draw: ImageDraw.ImageDraw, x: int, y: int, radius: int, color) -> None:
    """A filled disc with OpenCV's pixel set (dx^2 + dy^2 <= r^2); Pillow's ellipse is a little fuller."""
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        draw.rectangle([x - half, y + dy, x + half, y + dy], fill=color)


def draw_body(draw: ImageDraw.ImageDraw, points: list) -> None:
    for (a, b), color in zip(BODY_LIMBS, BODY_COLORS):
        p1, p2 = points[a - 1], points[b - 1]
        if p1 is None or p2 is None:
            continue
        mid_x, mid_y = (p1[0] + p2[0]) / 2, (p1[1] + p2[1]) / 2
        length = math.hypot(p1[0] - p2[0], p1[1] - p2[1])
        angle = math.degrees(math.atan2(p1[1] - p2[1], p1[0] - p2[0]))
        polygon = _ellipse_polygon((int(mid_x), int(mid_y)), (int(length / 2), STICK_WIDTH), int(angle))
        draw.polygon(polygon, fill=tuple(int(c * LIMB_BRIGHTNESS) for c in color))
    for point, color in zip(points, BODY_COLORS):
        if point is not None:
            _disc(draw, int(point[0]), int(point[1]), BODY_JOINT_RADIUS, color)


def draw_hand(draw: ImageDraw.ImageDraw, points: list) -> None:
    for (a, b), color in zip(HAND_EDGES, HAND_EDGE_COLORS):
        p1, p2 = points[a], points[b]
        if p1 is None or p2 is None:
            continue
        x1, y1, x2, y2 = int(p1[0]), int(p1[1]), int(p2[0]), int(p2[1])
        if min(x1, y1, x2, y2) >= 1:  # the preprocessor skips points at the image corner (placeholders)
            draw.line([(x1, y1), (x2, y2)], fill=color, width=HAND_LINE_WIDTH)
    for point in points:
        if point is not None and int(point[0]) >= 1 and int(point[1]) >= 1:
            _disc(draw, int(point[0]), int(point[1]), HAND_JOINT_RADIUS, HAND_JOINT_COLOR)


def draw_face(draw: ImageDraw.ImageDraw, points: list) -> None:
    for point in points:
        if point is not None and int(point[0]) >= 1 and int(point[1]) >= 1:
            _disc(draw, int(point[0]), int(point[1]), FACE_POINT_RADIUS, FACE_COLOR)


def render_pose_frame(
    frame: dict,
    size: Optional[tuple[int, int]] = None,
    body: bool = True,
    hands: bool = True,
    face: bool = True,
    threshold: float = 0.3,
) -> np.ndarray:
    """HWC uint8 RGB picture of one ``POSE_KEYPOINT`` frame at ``size`` = (width, height) (default: canvas)."""
    canvas = (int(frame["canvas_width"]), int(frame["canvas_height"]))
    out = size or canvas
    image = Image.new("RGB", out, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for person in frame.get("people", []):
        parts = {key: _points(person.get(key), key, expected) for key, expected in PART_KEYS.items()}
        if body and parts["pose_keypoints_2d"] is not None:
            draw_body(draw, _to_pixels(parts["pose_keypoints_2d"], threshold, canvas, out))
        if hands:
            for key in HAND_KEYS:
                if parts[key] is not None:
                    draw_hand(draw, _to_pixels(parts[key], threshold, canvas, out))
        if face and parts["face_keypoints_2d"] is not None:
            draw_face(draw, _to_pixels(parts["face_keypoints_2d"], threshold, canvas, out))
    return np.asarray(image, dtype=np.uint8)


def render_pose_video(
    frames: Iterable[dict] | dict,
    resolution: int = 0,
    body: bool = True,
    hands: bool = True,
    face: bool = True,
    threshold: float = 0.3,
    on_frame=None,
) -> np.ndarray:
    """``[B, H, W, 3]`` uint8 pose video. All frames must share one canvas size (one video, one size)."""
    frames = normalize_pose_keypoint(frames)
    canvas = (frames[0]["canvas_width"], frames[0]["canvas_height"])
    for index, frame in enumerate(frames):
        if (frame["canvas_width"], frame["canvas_height"]) != canvas:
            raise PoseKeypointError(
                f"POSE_KEYPOINT frame {index} has a {frame['canvas_width']}x{frame['canvas_height']} canvas but frame 0 "
                f"has {canvas[0]}x{canvas[1]}: a pose video needs one frame size; estimate the poses on frames of one size"
            )
    size = output_size(canvas[0], canvas[1], resolution)
    video = np.zeros((len(frames), size[1], size[0], 3), dtype=np.uint8)
    for index, frame in enumerate(frames):
        video[index] = render_pose_frame(frame, size, body=body, hands=hands, face=face, threshold=threshold)
        if on_frame is not None:
            on_frame(index)
    return video
