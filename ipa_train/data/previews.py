"""Small preview files for the curation gallery: a looping animated WebP of a sample and a hand close-up.

Pillow writes animated WebP natively (``save_all=True``), so no video encoder is needed. Frames come in as
``[T, H, W, 3]`` floats in 0..1 (ComfyUI's IMAGE layout) or uint8.
"""

from __future__ import annotations

import io
import math
from typing import Optional, Sequence

import torch

Box = tuple[int, int, int, int]


def to_uint8_frames(frames: torch.Tensor) -> torch.Tensor:
    if frames.dim() != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be [T, H, W, C] with C in 1/3/4, got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        frames = (frames.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    if frames.shape[-1] == 1:
        frames = frames.expand(-1, -1, -1, 3)
    return frames[..., :3].cpu().contiguous()


def preview_scale(width: int, height: int, max_side: int) -> float:
    return min(1.0, float(max_side) / float(max(width, height)))


def _pil_frames(frames: torch.Tensor, size: Optional[tuple[int, int]] = None):
    from PIL import Image

    images = []
    for frame in to_uint8_frames(frames):
        image = Image.fromarray(frame.numpy(), mode="RGB")
        if size is not None and image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        images.append(image)
    return images


def animated_webp(frames: torch.Tensor, fps: float = 16.0, max_side: int = 512, quality: int = 80) -> tuple[bytes, tuple[int, int]]:
    """Looping animated WebP of ``frames``, scaled so the longer side is at most ``max_side``.
    Returns the bytes and the preview size ``(width, height)``."""
    _, height, width, _ = frames.shape
    scale = preview_scale(width, height, max_side)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    images = _pil_frames(frames, size)
    buffer = io.BytesIO()
    duration = max(1, int(round(1000.0 / max(fps, 0.1))))
    images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0, quality=quality)
    return buffer.getvalue(), size


GRID_GAP = 4  # px between the tiles of a candidate grid
GRID_BACKGROUND = (24, 26, 30)


def grid_shape(count: int) -> tuple[int, int]:
    """(columns, rows) for ``count`` tiles: as square as it gets, wider than tall (2x2 for 4, 3x2 for 6)."""
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = -(-count // columns)
    return columns, rows


def _label(image, text: str) -> None:
    """``text`` in a dark box in the top-left corner of ``image`` (the tile's seed)."""
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=max(12, image.height // 14))
    except (TypeError, OSError, ImportError):
        font = ImageFont.load_default()
    box = draw.textbbox((6, 4), text, font=font)
    draw.rectangle([box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3], fill=(0, 0, 0))
    draw.text((6, 4), text, fill=(255, 255, 255), font=font)


def candidate_grid_webp(clips: Sequence[torch.Tensor], labels: Sequence[str], fps: float = 16.0, max_side: int = 1024,
                        quality: int = 80) -> tuple[bytes, tuple[int, int]]:
    """One looping animated WebP with every clip as a tile of a grid, each labelled (its seed). The frontend shows
    a node's animated previews one at a time (the first, with no counter or arrows), so the sampler's candidates go in
    one picture. A shorter clip holds its last frame. Returns the bytes and the picture's size."""
    from PIL import Image

    if not clips or len(clips) != len(labels):
        raise ValueError(f"give one label per clip ({len(clips)} clips, {len(labels)} labels)")
    columns, rows = grid_shape(len(clips))
    _, height, width, _ = clips[0].shape
    scale = preview_scale(width * columns + GRID_GAP * (columns - 1), height * rows + GRID_GAP * (rows - 1), max_side)
    tile = (max(1, round(width * scale)), max(1, round(height * scale)))
    tiles = [_pil_frames(clip, tile) for clip in clips]
    size = (tile[0] * columns + GRID_GAP * (columns - 1), tile[1] * rows + GRID_GAP * (rows - 1))
    images = []
    for index in range(max(len(frames) for frames in tiles)):
        canvas = Image.new("RGB", size, GRID_BACKGROUND)
        for number, (frames, text) in enumerate(zip(tiles, labels)):
            image = frames[min(index, len(frames) - 1)].copy()
            _label(image, text)
            canvas.paste(image, ((number % columns) * (tile[0] + GRID_GAP), (number // columns) * (tile[1] + GRID_GAP)))
        images.append(canvas)
    buffer = io.BytesIO()
    duration = max(1, int(round(1000.0 / max(fps, 0.1))))
    images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0, quality=quality)
    return buffer.getvalue(), size


def boxes_from_masks(masks: torch.Tensor, threshold: float = 0.5) -> list[list[Box]]:
    """One bounding box per frame around the mask's set pixels (``[T, H, W]``); empty list where none."""
    boxes: list[list[Box]] = []
    for frame in masks:
        ys, xs = torch.nonzero(frame > threshold, as_tuple=True)
        if ys.numel() == 0:
            boxes.append([])
        else:
            boxes.append([(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)])
    return boxes


def scale_boxes(boxes: Sequence[Sequence[Sequence[float]]], scale: float, width: int, height: int) -> list[list[list[int]]]:
    """Boxes per frame scaled to preview pixels and clipped to the preview, as JSON-friendly lists."""
    out = []
    for frame_boxes in boxes:
        scaled = []
        for x0, y0, x1, y1 in frame_boxes:
            box = [
                max(0, min(width, int(round(x0 * scale)))),
                max(0, min(height, int(round(y0 * scale)))),
                max(0, min(width, int(round(x1 * scale)))),
                max(0, min(height, int(round(y1 * scale)))),
            ]
            if box[2] > box[0] and box[3] > box[1]:
                scaled.append(box)
        out.append(scaled)
    return out


def union_box(boxes: Sequence[Sequence[Sequence[float]]]) -> Optional[Box]:
    flat = [box for frame_boxes in boxes for box in frame_boxes]
    if not flat:
        return None
    return (
        int(min(b[0] for b in flat)),
        int(min(b[1] for b in flat)),
        int(max(b[2] for b in flat)),
        int(max(b[3] for b in flat)),
    )


def hand_closeup_webp(
    frames: torch.Tensor,
    boxes: Sequence[Sequence[Sequence[float]]],
    fps: float = 16.0,
    size: int = 256,
    margin: float = 0.15,
    quality: int = 85,
) -> Optional[bytes]:
    """Animated WebP of the region around every hand in the clip (the union of all boxes, squared and padded),
    so the hands stay put while the clip plays. ``None`` when no frame has a hand."""
    box = union_box(boxes)
    if box is None:
        return None
    _, height, width, _ = frames.shape
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    side = int(round(side * (1 + 2 * margin))) or 1
    side = min(side, max(width, height))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(round(min(max(cx - side / 2.0, 0), max(width - side, 0))))
    top = int(round(min(max(cy - side / 2.0, 0), max(height - side, 0))))
    crop = frames[:, top : top + side, left : left + side]
    images = _pil_frames(crop, (size, size))
    buffer = io.BytesIO()
    duration = max(1, int(round(1000.0 / max(fps, 0.1))))
    images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0, quality=quality)
    return buffer.getvalue()
