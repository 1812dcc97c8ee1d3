"""The live training plot the ComfyUI train node shows: loss and ipa_gap over steps, each on its own axis.

The two live on different scales (the loss starts at log 2 = 0.693 and moves by hundredths; the gap starts at 0 and
is often 1e-4), so one shared axis flattens the gap into a line. The picture is an opaque dark panel with light
text: it reads the same inside ComfyUI's dark and light themes (tested by contrast ratio), and its text is drawn at
the size the node shows it. Pillow only.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from .contract import STEP

BACKGROUND = (30, 32, 36)
PANEL = (38, 41, 46)
GRID = (70, 74, 82)
TEXT = (225, 228, 232)
MUTED = (160, 166, 175)
LOSS_COLOUR = (96, 170, 255)
GAP_COLOUR = (255, 166, 77)
REFERENCE_COLOUR = (130, 136, 146)  # log 2 line (loss) and zero line (gap)
LOG2 = math.log(2.0)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):  # older Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _series(steps: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(float(event.get("step", index + 1)), float(event[key])) for index, event in enumerate(steps)
            if isinstance(event.get(key), (int, float)) and math.isfinite(float(event[key]))]


def _format(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _panel(draw, box, points, x_range, colour, label, reference: Optional[float], font, small) -> None:
    """One chart in ``box`` (x0, y0, x1, y1): the series, a dashed reference line, min/max labels, the title."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=PANEL, outline=GRID)
    title_h = font.size + 8 if hasattr(font, "size") else 18
    plot = (x0 + 8, y0 + title_h, x1 - 8, y1 - 6)
    if not points:
        draw.text((x0 + 8, y0 + 4), f"{label}: waiting for the first step", fill=MUTED, font=font)
        return
    values = [v for _, v in points] + ([reference] if reference is not None else [])
    low, high = min(values), max(values)
    span = high - low
    if span < 1e-12:
        span = max(abs(high) * 0.1, 1e-6)
    low, high = low - 0.08 * span, high + 0.08 * span
    x_low, x_high = x_range

    def xy(x: float, y: float) -> tuple[float, float]:
        px = plot[0] + (x - x_low) / max(x_high - x_low, 1e-12) * (plot[2] - plot[0])
        py = plot[3] - (y - low) / (high - low) * (plot[3] - plot[1])
        return px, py

    if reference is not None:
        _, ry = xy(x_low, reference)
        for start in range(int(plot[0]), int(plot[2]), 10):
            draw.line([(start, ry), (min(start + 5, plot[2]), ry)], fill=REFERENCE_COLOUR, width=1)
    coords = [xy(x, y) for x, y in points]
    if len(coords) == 1:
        cx, cy = coords[0]
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
    else:
        draw.line(coords, fill=colour, width=3, joint="curve")
    last = points[-1][1]
    draw.text((x0 + 8, y0 + 4), f"{label}  {_format(last)}", fill=colour, font=font)
    for xy_text, text, anchor in (((x1 - 8, y0 + 4), f"max {_format(high)}", "ra"), ((x1 - 8, y1 - 6), f"min {_format(low)}", "rd")):
        box = draw.textbbox(xy_text, text, font=small, anchor=anchor)
        draw.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill=PANEL)  # readable over the lines
        draw.text(xy_text, text, fill=MUTED, font=small, anchor=anchor)


def training_curves(history: Sequence[Mapping[str, Any]], width: int = 480, height: int = 300,
                    title: str = "IPA training"):
    """A PIL image: loss (dashed line at log 2, where it starts) above ipa_gap (dashed zero line), a shared step axis
    that runs to the planned total, and the latest value of each. ``history``: the trainer's events."""
    from PIL import Image, ImageDraw

    steps = [event for event in history if event.get("event") == STEP]
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(max(12, height // 18)), _font(max(11, height // 22))
    draw.text((10, 6), title, fill=TEXT, font=font)
    loss, gap = _series(steps, "loss"), _series(steps, "ipa_gap")
    done = int(steps[-1].get("step", len(steps))) if steps else 0
    total = next((int(e["total"]) for e in reversed(steps) if isinstance(e.get("total"), (int, float))), max(done, 1))
    first = min((x for x, _ in loss + gap), default=0.0)
    x_range = (min(first, 1.0), float(max(total, done, first + 1)))
    draw.text((width - 10, 6), f"step {done}/{total}", fill=TEXT, font=font, anchor="ra")
    header = font.size + 14 if hasattr(font, "size") else 24
    usable = height - header - 8
    top = (8, header, width - 8, header + usable // 2 - 3)
    bottom = (8, header + usable // 2 + 3, width - 8, height - 8)
    _panel(draw, top, loss, x_range, LOSS_COLOUR, "loss", LOG2, font, small)
    if gap or not loss:
        _panel(draw, bottom, gap, x_range, GAP_COLOUR, "ipa_gap (err_ref - err_model)", 0.0, font, small)
    else:  # an objective without a gap (plain SFT): the model's own error instead
        _panel(draw, bottom, _series(steps, "model_error"), x_range, GAP_COLOUR, "model_error", None, font, small)
    return image


def relative_luminance(rgb: Sequence[int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""
    def channel(c: float) -> float:
        c = c / 255.0
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: Sequence[int], b: Sequence[int]) -> float:
    """WCAG 2 contrast ratio (1 to 21) between two colours; 4.5 is the minimum for normal text."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)
