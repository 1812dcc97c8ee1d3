"""The method study's synthetic dance world: stick figures with large hands whose quality is known from the pose.

A world video is a dancing figure (``pose.synthetic.dance_pose_sequence``) drawn in one of a few body colours on
a dark background, with each hand drawn as a *glyph*:

- ``good``: a palm and five distinct fingers along the hand keypoints;
- ``blob``: one filled disc over the hand;
- ``mitten``: the fingers fused into one filled polygon;
- ``missing``: a palm with only the thumb and the index finger.

The quality of each hand is fixed for a whole video and drawn at random with ``BAD_HAND_RATE`` bad, so that a
model trained on these videos draws mostly bad and sometimes good hands, as VACE-14B does in the paper. The VACE
control video is the pack's OpenPose picture of the same poses (``pose.render``), which shows where the fingers
are but not how the video draws them; the reference image shows the figure's colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..pose.keypoints import HAND_POINTS, LEFT_HAND, RIGHT_HAND
from ..pose.render import render_pose_video
from ..pose.synthetic import dance_pose_sequence

WIDTH = HEIGHT = 128
FRAMES = 9
HAND_SCALE = 3.0
QUALITIES = ("good", "blob", "mitten", "missing")
BAD_QUALITIES = QUALITIES[1:]
BAD_HAND_RATE = 0.8
HAND_KEYS = (RIGHT_HAND, LEFT_HAND)  # right first: the order of WorldVideo.hands
BACKGROUND = (40, 40, 48)
HAND_COLOR = (255, 224, 189)
BODY_COLORS = ((230, 80, 70), (70, 150, 230), (90, 200, 110), (225, 190, 60))
# Line widths in pixels at WIDTH = 128 (scaled with the frame size).
LIMB_WIDTH = 5
FINGER_WIDTH = 3
SUPERSAMPLE = 2  # drawn at twice the size and reduced: smooth edges a VAE can reconstruct


@dataclass(frozen=True)
class WorldVideo:
    """Everything that defines one world video; ``frames()`` draws it."""

    pose_seed: int
    body_color: int  # index into BODY_COLORS
    hands: tuple[str, str]  # quality of the right and the left hand (HAND_KEYS order)
    width: int = WIDTH
    height: int = HEIGHT
    frames_count: int = FRAMES

    def poses(self) -> list[dict]:
        return dance_pose_sequence(self.frames_count, self.width, self.height, seed=self.pose_seed, hand_scale=HAND_SCALE)

    def frames(self) -> np.ndarray:
        """``[T, H, W, 3]`` uint8."""
        return render_world_video(self.poses(), self.body_color, self.hands, self.width, self.height)

    def control(self) -> np.ndarray:
        """The VACE control video: the OpenPose picture of the poses, ``[T, H, W, 3]`` uint8."""
        return render_pose_video(self.poses())

    def reference(self) -> np.ndarray:
        """The VACE reference image, ``[H, W, 3]`` uint8: the figure's colours on the background."""
        return render_reference(self.body_color, self.width, self.height)


def random_video(rng: np.random.Generator, pose_seed: int, bad_rate: float = BAD_HAND_RATE) -> WorldVideo:
    """A world video with a random body colour and hands drawn bad with probability ``bad_rate`` each."""
    hands = tuple(
        str(rng.choice(BAD_QUALITIES)) if rng.random() < bad_rate else "good" for _ in HAND_KEYS
    )
    return WorldVideo(pose_seed=int(pose_seed), body_color=int(rng.integers(len(BODY_COLORS))), hands=hands)


def hand_points(frame: dict, key: str) -> np.ndarray | None:
    """``[21, 2]`` pixel points of one hand, or None when any point is missing (off the canvas)."""
    values = np.asarray(frame["people"][0][key], dtype=np.float64).reshape(-1, 3)
    if len(values) < HAND_POINTS or (values[:, 2] <= 0).any():
        return None
    return values[:, :2]


def _scale(width: int) -> float:
    return width / WIDTH


def draw_hand(draw: ImageDraw.ImageDraw, points: np.ndarray, quality: str, scale: float) -> None:
    """One hand glyph, ``points`` in the drawing's pixels (already supersampled)."""
    wrist, bases, tips = points[0], points[1::4], points[4::4]
    palm_center = (wrist + bases.sum(axis=0)) / 6.0
    span = float(np.linalg.norm(points - palm_center, axis=1).mean())
    finger = max(1, round(FINGER_WIDTH * scale))
    if quality == "blob":
        r = 0.9 * span
        draw.ellipse([palm_center[0] - r, palm_center[1] - r, palm_center[0] + r, palm_center[1] + r], fill=HAND_COLOR)
        return
    if quality == "mitten":
        outline = np.concatenate([wrist[None], tips, wrist[None]])
        draw.polygon([tuple(p) for p in outline], fill=HAND_COLOR)
        return
    palm_r = 0.45 * span
    draw.ellipse([palm_center[0] - palm_r, palm_center[1] - palm_r, palm_center[0] + palm_r, palm_center[1] + palm_r], fill=HAND_COLOR)
    fingers = range(5) if quality == "good" else range(2)
    if quality not in ("good", "missing"):
        raise ValueError(f"unknown hand quality {quality!r}; choose one of {', '.join(QUALITIES)}")
    for f in fingers:
        chain = [tuple(palm_center)] + [tuple(p) for p in points[1 + 4 * f : 5 + 4 * f]]
        draw.line(chain, fill=HAND_COLOR, width=finger, joint="curve")


def _draw_body(draw: ImageDraw.ImageDraw, body: np.ndarray, valid: np.ndarray, color: tuple, scale: float) -> None:
    limb = max(1, round(LIMB_WIDTH * scale))
    for a, b in ((1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13)):
        if valid[a] and valid[b]:
            draw.line([tuple(body[a]), tuple(body[b])], fill=color, width=limb, joint="curve")
    if valid[1] and valid[8] and valid[11]:
        hip = (body[8] + body[11]) / 2
        draw.line([tuple(body[1]), tuple(hip)], fill=color, width=2 * limb)
    if valid[0]:
        r = 2.2 * limb
        draw.ellipse([body[0][0] - r, body[0][1] - r, body[0][0] + r, body[0][1] + r], fill=color)


def render_world_frame(frame: dict, body_color: int, hands: tuple[str, ...] | dict, width: int, height: int,
                       draw_body: bool = True) -> np.ndarray:
    """One frame ``[H, W, 3]`` uint8. ``hands`` gives a quality per ``HAND_KEYS`` entry (a dict may leave a hand
    out: it is not drawn)."""
    s = SUPERSAMPLE
    image = Image.new("RGB", (width * s, height * s), BACKGROUND)
    draw = ImageDraw.Draw(image)
    scale = _scale(width) * s
    values = np.asarray(frame["people"][0]["pose_keypoints_2d"], dtype=np.float64).reshape(-1, 3)
    if draw_body:
        _draw_body(draw, values[:, :2] * s, values[:, 2] > 0, BODY_COLORS[body_color], scale)
    qualities = hands if isinstance(hands, dict) else dict(zip(HAND_KEYS, hands))
    for key, quality in qualities.items():
        points = hand_points(frame, key)
        if points is not None:
            draw_hand(draw, points * s, quality, scale)
    return np.asarray(image.resize((width, height), Image.Resampling.BOX))


def render_world_video(poses: list[dict], body_color: int, hands, width: int, height: int) -> np.ndarray:
    return np.stack([render_world_frame(frame, body_color, hands, width, height) for frame in poses])


def render_reference(body_color: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The figure's colours: a body-coloured disc with a hand-coloured one beside it, on the background."""
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    r = 0.2 * min(width, height)
    cx, cy = 0.4 * width, 0.5 * height
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=BODY_COLORS[body_color])
    r2 = 0.4 * r
    draw.ellipse([0.75 * width - r2, cy - r2, 0.75 * width + r2, cy + r2], fill=HAND_COLOR)
    return np.asarray(image)
