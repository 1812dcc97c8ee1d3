"""The live training plot the ComfyUI train node shows: loss and ipa_gap over steps, each on its own axis, as raw
points under a smoothed line, with y limits that clip spikes (and mark them) and a header with the step rate and ETA.

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


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty list."""
    position = q * (len(ordered) - 1)
    low = int(math.floor(position))
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def robust_limits(values: Sequence[float], reference: Optional[float] = None) -> tuple[float, float]:
    """The y range to draw: the values without spikes (outside 3 interquartile ranges of the middle half, Tukey's
    far-out fences), plus the reference line, with a margin. A per-step preference loss jumps between about 0 and
    log 2 with an occasional 15: min/max limits would flatten everything else into the bottom pixels. A series that
    never goes below 0 (the loss) gets no axis below 0."""
    ordered = sorted(values)
    q1, q3 = _quantile(ordered, 0.25), _quantile(ordered, 0.75)
    spread = q3 - q1
    inside = [v for v in ordered if q1 - 3 * spread <= v <= q3 + 3 * spread] or ordered
    low, high = inside[0], inside[-1]
    if reference is not None:
        low, high = min(low, reference), max(high, reference)
    span = high - low
    if span < 1e-12:
        span = max(abs(high) * 0.1, 1e-6)
    bottom = low - 0.08 * span
    if ordered[0] >= 0 and (reference is None or reference >= 0):
        bottom = max(bottom, 0.0)
    return bottom, high + 0.08 * span


def smoothed(points: Sequence[tuple[float, float]], limits: tuple[float, float]) -> list[tuple[float, float]]:
    """A debiased exponential moving average (TensorBoard's smoothing) of the values clipped to ``limits``, so one
    spike does not lift the line for the next hundred steps. Its span grows with the run: about a tenth of the
    points, between 1 (no smoothing) and 50 steps."""
    if not points:
        return []
    span = min(50.0, max(1.0, len(points) / 10))
    keep = 1.0 - 2.0 / (span + 1.0)
    low, high = limits
    average, weight, result = 0.0, 0.0, []
    for x, y in points:
        average = keep * average + (1 - keep) * min(max(y, low), high)
        weight = keep * weight + (1 - keep)
        result.append((x, average / weight))
    return result


def _faded(colour: Sequence[int], amount: float = 0.6) -> tuple[int, int, int]:
    """``colour`` mixed into the panel: the raw points stay visible under the smoothed line without competing."""
    return tuple(int(round(c * (1 - amount) + p * amount)) for c, p in zip(colour, PANEL))  # type: ignore[return-value]


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def rate_and_eta(steps: Sequence[Mapping[str, Any]]) -> str:
    """The header's second line from the last step event: the step rate (s/step, or steps/s when faster than one a
    second) and the time left at that rate. Empty before the first step."""
    if not steps:
        return ""
    last = steps[-1]
    per_step = last.get("sec_per_step")
    if not isinstance(per_step, (int, float)) or not math.isfinite(per_step) or per_step <= 0:
        return ""
    rate = f"{per_step:.3g} s/step" if per_step >= 1 else f"{1 / per_step:.3g} steps/s"
    eta = last.get("eta_s")
    if not isinstance(eta, (int, float)) or not math.isfinite(eta):
        total, done = last.get("total"), last.get("step")
        eta = per_step * (total - done) if isinstance(total, (int, float)) and isinstance(done, (int, float)) else None
    return rate if eta is None else (f"{rate}  ·  done" if eta <= 0 else f"{rate}  ·  ETA {_duration(eta)}")


def _draw_series(draw, xy, points, limits, colour) -> None:
    """The raw points (thin, faded) under the smoothed line (thick, full colour); values beyond ``limits`` are drawn
    on the edge and marked with a triangle pointing the way they went off the chart."""
    low, high = limits
    clipped = [(x, min(max(y, low), high)) for x, y in points]
    coords = [xy(x, y) for x, y in clipped]
    if len(coords) == 1:
        cx, cy = coords[0]
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        return
    draw.line(coords, fill=_faded(colour), width=1)
    draw.line([xy(x, y) for x, y in smoothed(points, limits)], fill=colour, width=3, joint="curve")
    for (x, y), (px, py) in zip(points, coords):
        if y > high or y < low:
            tip = -1 if y > high else 1
            draw.polygon([(px, py), (px - 4, py - 7 * tip), (px + 4, py - 7 * tip)], fill=colour)


def _panel(draw, box, points, x_range, colour, label, reference: Optional[float], font, small) -> None:
    """One chart in ``box`` (x0, y0, x1, y1): raw points, their smoothed line, a dashed reference line, the axis
    limits, and the title with the smoothed and the last value; spikes beyond the limits are counted in the corner."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=PANEL, outline=GRID)
    title_h = font.size + 8 if hasattr(font, "size") else 18
    plot = (x0 + 8, y0 + title_h + 4, x1 - 8, y1 - 8)
    if not points:
        draw.text((x0 + 8, y0 + 4), f"{label}: waiting for the first step", fill=MUTED, font=font)
        return
    low, high = robust_limits([v for _, v in points], reference)
    x_low, x_high = x_range

    def xy(x: float, y: float) -> tuple[float, float]:
        px = plot[0] + (x - x_low) / max(x_high - x_low, 1e-12) * (plot[2] - plot[0])
        py = plot[3] - (y - low) / (high - low) * (plot[3] - plot[1])
        return px, py

    if reference is not None:
        _, ry = xy(x_low, reference)
        for start in range(int(plot[0]), int(plot[2]), 10):
            draw.line([(start, ry), (min(start + 5, plot[2]), ry)], fill=REFERENCE_COLOUR, width=1)
    _draw_series(draw, xy, points, (low, high), colour)
    trend = smoothed(points, (low, high))[-1][1]
    title = f"{label}  {_format(trend)}"
    draw.text((x0 + 8, y0 + 4), title, fill=colour, font=font)
    if len(points) > 1:  # the last raw value, quieter, after the smoothed one
        end = draw.textbbox((x0 + 8, y0 + 4), title, font=font)[2]
        draw.text((end + 8, y0 + 4 + (font.size - small.size if hasattr(font, "size") else 0)), f"last {_format(points[-1][1])}", fill=MUTED, font=small)
    spikes = [v for _, v in points if v > high or v < low]
    top_text = f"{len(spikes)} off the chart, max {_format(max(spikes, key=abs))}" if spikes else f"max {_format(high)}"
    for xy_text, text, anchor in (((x1 - 8, y0 + 4), top_text, "ra"), ((x1 - 8, y1 - 6), f"min {_format(low)}", "rd")):
        box = draw.textbbox(xy_text, text, font=small, anchor=anchor)
        draw.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill=PANEL)  # readable over the lines
        draw.text(xy_text, text, fill=MUTED, font=small, anchor=anchor)


def training_curves(history: Sequence[Mapping[str, Any]], width: int = 480, height: int = 300,
                    title: str = "IPA training"):
    """A PIL image: loss (dashed line at log 2, where it starts) above ipa_gap (dashed zero line), each as raw points
    under a smoothed line, on a shared step axis that runs to the planned total; the header says the step, the step
    rate and the time left. ``history``: the trainer's events."""
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
    line_h = font.size + 6 if hasattr(font, "size") else 18
    draw.text((width - 10, 6 + line_h), rate_and_eta(steps) or "rate: after the first step", fill=MUTED, font=small, anchor="ra")
    header = line_h + (small.size if hasattr(small, "size") else 12) + 14
    usable = height - header - 8
    top = (8, header, width - 8, header + usable // 2 - 3)
    bottom = (8, header + usable // 2 + 3, width - 8, height - 8)
    _panel(draw, top, loss, x_range, LOSS_COLOUR, "loss", LOG2, font, small)
    if gap or not loss:
        _panel(draw, bottom, gap, x_range, GAP_COLOUR, "ipa_gap", 0.0, font, small)  # err_ref - err_model
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
