"""Hand masks from pose keypoints: pixel masks ``[T, H, W]``, per-frame hand boxes and latent masks for Wan.

Input is ComfyUI's ``POSE_KEYPOINT`` value: a list with one dict per frame,
``{"people": [{"hand_left_keypoints_2d": [x, y, c] * 21, "hand_right_keypoints_2d": [...], ...}],
"canvas_width": W, "canvas_height": H}``. ComfyUI's DWPose preprocessor writes absolute pixels of the canvas;
other producers write normalised 0..1 values, so the unit is detected per keypoint array. ``pose.keypoints``
reads the value (frames, people, hands, units, confidence) by the rules all its readers share. Empty lists,
missing keys, ``None`` hands, ``None`` frames and frames without people all mean "no hand here" and give an
all-zero frame, never an error.

Per hand: points with confidence >= ``threshold`` (and > 0: DWPose zeroes undetected points) are kept; a hand
needs at least ``min_points`` of them. Its cover is the bounding box (``shape="box"``) or the convex hull
(``shape="hull"``) of those points, grown on every side by ``margin`` times the hand's size (the longer side
of its bounding box), all in canvas pixels. The masks of both hands of all people are united.

Resizing from the pose canvas ``(cw, ch)`` to the requested ``(width, height)`` follows how the frames get
resized, so the mask lands on the hand in the resized video:

- ``"stretch"``: each axis scaled independently (``x * width / cw``), as ComfyUI's ``ImageScale`` with
  crop "disabled" / ``common_upscale(..., crop="disabled")``.
- ``"crop"``: centre-crop to the target aspect, then scale, with exactly the integer crop offsets of ComfyUI's
  ``comfy.utils.common_upscale(..., crop="center")``; this is what ``WanVaceToVideo`` does to the control video
  and reference image. Hands in the cropped-away part vanish.
- ``"letterbox"``: one uniform scale ``min(width / cw, height / ch)``, content rounded to whole pixels and
  centred, black padding around it (``resize_frames`` does the same to images).

A pixel is covered when the grown box overlaps it (box), or when its centre lies within half a pixel of the
grown hull (hull); the hull mask is therefore always inside the box mask.

Everything is vectorised: per hand a slice assignment (box) or one row-interval computation (hull); no Python
loop ever runs per pixel.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from . import keypoints
from .keypoints import frame_canvas_size

RESIZE_MODES = ("stretch", "crop", "letterbox")
SHAPES = ("box", "hull")

Box = tuple[int, int, int, int]


# ---------------------------------------------------------------------------------------------------------
# Input parsing and coordinate mapping
# ---------------------------------------------------------------------------------------------------------


def _check_options(width: int, height: int, threshold: float, min_points: int, margin: float, shape: str, resize: str) -> None:
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise ValueError(f"width and height must be positive whole pixel counts, got {width} x {height}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must lie in [0, 1] (keypoint confidence; DWPose default 0.3)")
    if int(min_points) != min_points or min_points < 1:
        raise ValueError(f"min_points={min_points} must be a whole number >= 1")
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin={margin} must be >= 0 (a fraction of the hand's size, e.g. 0.25)")
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r} is not one of {SHAPES}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r} is not one of {RESIZE_MODES}")


def canvas_mapping(canvas_width: int, canvas_height: int, width: int, height: int, resize: str = "stretch") -> tuple[float, float, float, float]:
    """``(sx, sy, ox, oy)`` with ``x_target = x_canvas * sx + ox`` (same for y) for the given resize mode."""
    cw, ch, W, H = int(canvas_width), int(canvas_height), int(width), int(height)
    if resize == "stretch":
        return W / cw, H / ch, 0.0, 0.0
    if resize == "crop":
        # Same integer offsets as comfy.utils.common_upscale(crop="center") (Python's round, as there).
        old_aspect, new_aspect = cw / ch, W / H
        x = y = 0
        if old_aspect > new_aspect:
            x = round((cw - cw * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((ch - ch * (old_aspect / new_aspect)) / 2)
        sx, sy = W / (cw - 2 * x), H / (ch - 2 * y)
        return sx, sy, -x * sx, -y * sy
    if resize == "letterbox":
        new_w, new_h, left, top = _letterbox_geometry(cw, ch, W, H)
        return new_w / cw, new_h / ch, float(left), float(top)
    raise ValueError(f"resize={resize!r} is not one of {RESIZE_MODES}")


def _letterbox_geometry(cw: int, ch: int, W: int, H: int) -> tuple[int, int, int, int]:
    scale = min(W / cw, H / ch)
    new_w = min(W, max(1, round(cw * scale)))
    new_h = min(H, max(1, round(ch * scale)))
    return new_w, new_h, (W - new_w) // 2, (H - new_h) // 2


def _frame_hands(frame: Any, index: int, threshold: float, min_points: int, width: int, height: int) -> tuple[list[np.ndarray], tuple[int, int]]:
    canvas = frame_canvas_size(frame, width, height)
    if frame is None:
        return [], canvas
    if not isinstance(frame, dict):
        raise ValueError(f"frame {index} of the pose keypoints is a {type(frame).__name__}, expected a dict with 'people'")
    hands = []
    for _, _, arr in keypoints.person_hands(frame, f"frame {index}"):
        valid = keypoints.visible(arr, threshold)
        if int(valid.sum()) >= min_points:
            hands.append(keypoints.in_canvas_pixels(arr, valid, canvas)[valid, :2])
    return hands, canvas


# ---------------------------------------------------------------------------------------------------------
# Geometry: grown boxes and hulls, rasterised per hand
# ---------------------------------------------------------------------------------------------------------


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise hull vertices (Andrew's monotone chain; at most 21 points, so plain Python is fine and
    spares a scipy dependency)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) <= 2:
        return np.asarray(pts, dtype=np.float64)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


class _HandCover:
    """One hand's grown cover in canvas pixels and its pixel range in the target frame."""

    def __init__(self, pts: np.ndarray, margin: float, mapping: tuple[float, float, float, float], width: int, height: int):
        self.pts = pts
        sx, sy, ox, oy = mapping
        self.mapping = mapping
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        self.grow = margin * max(x1 - x0, y1 - y0)
        X0, X1 = (x0 - self.grow) * sx + ox, (x1 + self.grow) * sx + ox
        Y0, Y1 = (y0 - self.grow) * sy + oy, (y1 + self.grow) * sy + oy
        # Pixels the grown box overlaps; at least one pixel per axis for a degenerate (point-like) hand.
        c0, r0 = math.floor(X0), math.floor(Y0)
        c1, r1 = max(math.ceil(X1), c0 + 1), max(math.ceil(Y1), r0 + 1)
        self.box = (max(c0, 0), max(r0, 0), min(c1, width), min(r1, height))

    @property
    def empty(self) -> bool:
        c0, r0, c1, r1 = self.box
        return c1 <= c0 or r1 <= r0

    def hull_rows(self) -> np.ndarray:
        """Boolean ``[rows, cols]`` of the box region: pixel centres within half a pixel of the grown hull.

        The hull is convex, so each row meets it in one interval: per row, every edge's half-plane bounds x from
        one side; the interval is [max of lower bounds, min of upper bounds]. Cost O(edges * rows + rows * cols).
        """
        sx, sy, ox, oy = self.mapping
        c0, r0, c1, r1 = self.box
        # Half a target pixel, measured in canvas pixels along the coarser axis.
        slack = self.grow + 0.5 * max(1.0 / sx, 1.0 / sy)
        xs = (np.arange(c0, c1) + 0.5 - ox) / sx
        ys = (np.arange(r0, r1) + 0.5 - oy) / sy
        hull = _convex_hull(self.pts)
        if len(hull) < 2:  # all points coincide: the grown box is the cover
            return np.ones((r1 - r0, c1 - c0), dtype=bool)
        a = hull
        e = np.roll(hull, -1, axis=0) - hull
        if len(hull) == 2:  # a segment: keep only its two distinct edges (there and back)
            a, e = hull, np.stack([hull[1] - hull[0], hull[0] - hull[1]])
        length = np.hypot(e[:, 0], e[:, 1])
        # The hull has positive signed area in its own coordinates, so (e_y, -e_x) points outward.
        nx, ny = e[:, 1] / length, -e[:, 0] / length
        # Inside iff for all edges: nx * (x - ax) + ny * (y - ay) <= slack.
        rhs = slack + nx[:, None] * a[:, 0, None] - ny[:, None] * (ys[None, :] - a[:, 1, None])  # [K, rows]
        lo = np.full(len(ys), -np.inf)
        hi = np.full(len(ys), np.inf)
        pos, neg, flat = nx > 1e-12, nx < -1e-12, np.abs(nx) <= 1e-12
        if pos.any():
            hi = np.minimum(hi, (rhs[pos] / nx[pos, None]).min(axis=0))
        if neg.any():
            lo = np.maximum(lo, (rhs[neg] / nx[neg, None]).max(axis=0))
        if flat.any():  # horizontal edges: 0 <= rhs, or the whole row is outside
            outside = (rhs[flat] < 0).any(axis=0)
            hi[outside] = -np.inf
        return (xs[None, :] >= lo[:, None]) & (xs[None, :] <= hi[:, None])


def _covers(pose_keypoints, width, height, threshold, min_points, margin, resize) -> list[list[_HandCover]]:
    frames = keypoints.frames_of(pose_keypoints)
    out = []
    for i, frame in enumerate(frames):
        hands, canvas = _frame_hands(frame, i, threshold, min_points, width, height)
        mapping = canvas_mapping(canvas[0], canvas[1], width, height, resize)
        covers = [_HandCover(pts, margin, mapping, width, height) for pts in hands]
        out.append([c for c in covers if not c.empty])
    return out


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


def pose_to_hand_masks(
    pose_keypoints: Sequence[Optional[dict]],
    width: int,
    height: int,
    threshold: float = 0.3,
    min_points: int = 3,
    margin: float = 0.25,
    shape: str = "box",
    resize: str = "stretch",
) -> torch.Tensor:
    """Pixel hand masks ``[T, height, width]`` float32 with values 0/1, one frame per pose frame."""
    _check_options(width, height, threshold, min_points, margin, shape, resize)
    covers = _covers(pose_keypoints, int(width), int(height), threshold, min_points, margin, resize)
    # np.zeros is lazily zeroed by the OS: only pages with hands get touched here.
    masks = np.zeros((len(covers), int(height), int(width)), dtype=np.float32)
    for t, frame_covers in enumerate(covers):
        for cover in frame_covers:
            c0, r0, c1, r1 = cover.box
            if shape == "box":
                masks[t, r0:r1, c0:c1] = 1.0
            else:
                masks[t, r0:r1, c0:c1][cover.hull_rows()] = 1.0
    return torch.from_numpy(masks)


def hand_boxes(
    pose_keypoints: Sequence[Optional[dict]],
    width: int,
    height: int,
    threshold: float = 0.3,
    min_points: int = 3,
    margin: float = 0.25,
    resize: str = "stretch",
) -> list[list[Box]]:
    """Per frame, the grown hand boxes ``(x0, y0, x1, y1)`` in target pixels, clipped to the frame.

    ``x0, y0`` inclusive, ``x1, y1`` exclusive: exactly the pixels ``pose_to_hand_masks(shape="box")`` sets.
    Hands entirely outside the frame (e.g. cropped away) are left out.
    """
    _check_options(width, height, threshold, min_points, margin, "box", resize)
    covers = _covers(pose_keypoints, int(width), int(height), threshold, min_points, margin, resize)
    return [[tuple(int(v) for v in c.box) for c in frame_covers] for frame_covers in covers]


def latent_hand_mask(pixel_masks: torch.Tensor, spatial: int = 8, temporal: int = 4) -> torch.Tensor:
    """Pixel masks ``[T, H, W]`` (or ``[B, T, H, W]``) -> latent masks ``[B=1, 1, (T-1)//4+1, H//8, W//8]``.

    Wan's causal VAE: latent frame 0 comes from pixel frame 0 alone, latent frame j >= 1 from pixel frames
    4j-3 .. 4j (max over them); spatially any hand pixel marks its 8x8 cell (max pooling). ``T`` must be 4k+1.
    The reference frame VACE prepends is not part of this mask (the loss skips ``ref_frames``).
    """
    if not isinstance(pixel_masks, torch.Tensor):
        pixel_masks = torch.as_tensor(np.asarray(pixel_masks))
    m = pixel_masks
    if m.dim() == 3:
        m = m.unsqueeze(0)
    if m.dim() != 4:
        raise ValueError(f"pixel masks must be [T, H, W] or [B, T, H, W], got shape {tuple(pixel_masks.shape)}")
    if spatial < 1 or temporal < 1:
        raise ValueError(f"spatial={spatial} and temporal={temporal} factors must be >= 1")
    B, T, H, W = m.shape
    if T < 1 or (T - 1) % temporal != 0:
        lower = (max(T - 1, 0) // temporal) * temporal + 1
        raise ValueError(
            f"pixel masks have {T} frames; Wan's causal VAE needs {temporal}k+1 frames (e.g. {lower} or {lower + temporal}). "
            "Trim or pad the video (and its poses) to such a length."
        )
    if H % spatial or W % spatial:
        raise ValueError(
            f"pixel masks of {H}x{W} (HxW) are not divisible by the VAE's spatial factor {spatial}; "
            f"resize the frames to multiples of {spatial} (Wan wants multiples of 16)."
        )
    # Temporal reduction first (contiguous frame groups), then max_pool2d: 5x faster than one strided amax.
    m = m.float()
    rest = m[:, 1:].reshape(B, (T - 1) // temporal, temporal, H, W).amax(dim=2)
    frames = torch.cat([m[:, :1], rest], dim=1)
    return torch.nn.functional.max_pool2d(frames, spatial).unsqueeze(1).contiguous()


def resize_frames(frames: torch.Tensor, width: int, height: int, resize: str = "stretch") -> torch.Tensor:
    """Resize IMAGE frames ``[T, H, W, C]`` the way ``resize`` maps keypoints (bilinear, as ComfyUI's VACE nodes)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r} is not one of {RESIZE_MODES}")
    if frames.dim() != 4:
        raise ValueError(f"frames must be an IMAGE batch [T, H, W, C], got shape {tuple(frames.shape)}")
    T, ch, cw, C = frames.shape
    W, H = int(width), int(height)
    if (cw, ch) == (W, H):
        return frames
    x = frames.movedim(-1, 1).float()
    interp = lambda s, size: torch.nn.functional.interpolate(s, size=size, mode="bilinear")  # noqa: E731
    if resize == "stretch":
        out = interp(x, (H, W))
    elif resize == "crop":
        sx, sy, ox, oy = canvas_mapping(cw, ch, W, H, "crop")
        x0, y0 = round(-ox / sx), round(-oy / sy)
        out = interp(x[:, :, y0 : ch - y0, x0 : cw - x0], (H, W))
    else:
        new_w, new_h, left, top = _letterbox_geometry(cw, ch, W, H)
        out = x.new_zeros((T, C, H, W))
        out[:, :, top : top + new_h, left : left + new_w] = interp(x, (new_h, new_w))
    return out.movedim(1, -1).to(frames.dtype)


def hand_mask_preview(
    masks: torch.Tensor,
    frames: Optional[torch.Tensor] = None,
    boxes: Optional[list[list[Box]]] = None,
    color: tuple[float, float, float] = (0.15, 1.0, 0.35),
    alpha: float = 0.45,
    box_color: tuple[float, float, float] = (1.0, 0.8, 0.0),
    background: float = 0.08,
) -> torch.Tensor:
    """IMAGE ``[T, H, W, 3]``: the masks tinted over the frames (or a dark canvas), box outlines on top."""
    if masks.dim() != 3:
        raise ValueError(f"masks must be [T, H, W], got shape {tuple(masks.shape)}")
    T, H, W = masks.shape
    if frames is None:
        base = torch.full((T, H, W, 3), float(background))
    else:
        if frames.dim() != 4 or tuple(frames.shape[:3]) != (T, H, W):
            raise ValueError(f"frames of shape {tuple(frames.shape)} do not match masks of shape {tuple(masks.shape)} ([T, H, W, C] expected)")
        base = frames[..., :3].float() if frames.shape[-1] >= 3 else frames[..., :1].float().expand(T, H, W, 3)
    m = masks.float().clamp(0, 1).unsqueeze(-1) * alpha
    out = base * (1 - m) + torch.tensor(color, dtype=torch.float32) * m
    if boxes is not None:
        if len(boxes) != T:
            raise ValueError(f"{len(boxes)} frames of boxes for {T} mask frames")
        edge = torch.tensor(box_color, dtype=torch.float32)
        for t, frame_boxes in enumerate(boxes):
            for x0, y0, x1, y1 in frame_boxes:
                out[t, y0:y1, x0 : min(x0 + 2, x1)] = edge
                out[t, y0:y1, max(x1 - 2, x0) : x1] = edge
                out[t, y0 : min(y0 + 2, y1), x0:x1] = edge
                out[t, max(y1 - 2, y0) : y1, x0:x1] = edge
    return out.clamp(0, 1).contiguous()
