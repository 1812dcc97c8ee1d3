"""Pictures for the demo's report folder, drawn with Pillow only: a before/after contact sheet of the sampled videos,
and the hand masks over the control video with the latent cells they mark. (The training curves are the train
node's plot, ``jobs.curves.training_curves``.)"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..pose.hands import hand_mask_preview

LABEL_WIDTH = 150
PREFERRED_COLOUR = (40, 190, 80)
REJECTED_COLOUR = (200, 60, 60)


def _tile(frames: torch.Tensor, picks: Sequence[int], scale: int) -> np.ndarray:
    row = np.concatenate([(frames[i].clamp(0, 1).numpy() * 255).round().astype(np.uint8) for i in picks], axis=1)
    return row.repeat(scale, axis=0).repeat(scale, axis=1)


def frames_sheet(
    control_overlay: torch.Tensor,
    before: Sequence[torch.Tensor],
    after: Sequence[torch.Tensor],
    labels: Sequence[str],
    preferred: Sequence[bool],
    picks: Sequence[int],
    boxes=None,
    scale: int = 2,
    gain: float = 10.0,
):
    """One row per candidate: its video before training, after (same seed, with the LoRA), and the change
    ``|after - before| * gain``; the first row shows the control video with its hand masks. ``picks``: the frame
    indices shown, blown up ``scale`` x (nearest); ``boxes``: per-frame hand boxes outlined on the videos."""
    from PIL import Image, ImageDraw

    def with_boxes(frames: torch.Tensor) -> torch.Tensor:
        if boxes is None:
            return frames
        return hand_mask_preview(torch.zeros(frames.shape[:3]), frames, boxes, box_color=(1.0, 0.85, 0.1))

    groups = ["before", "after (with LoRA)", f"|after - before| x {gain:g}"]
    gap = 8
    header = 20
    frame_w, frame_h = control_overlay.shape[2] * scale, control_overlay.shape[1] * scale
    group_w = frame_w * len(picks)
    rows = [("control video\n+ hand masks", [_tile(control_overlay, picks, scale)], None)]
    for label, first, second, good in zip(labels, before, after, preferred):
        change = ((second - first).abs() * gain).clamp(0, 1)
        rows.append((f"{label}\n{'preferred' if good else 'rejected'}", [_tile(with_boxes(first), picks, scale), _tile(with_boxes(second), picks, scale),
                                                                          _tile(change, picks, scale)], PREFERRED_COLOUR if good else REJECTED_COLOUR))
    width = LABEL_WIDTH + len(groups) * (group_w + gap)
    sheet = Image.new("RGB", (width, header + len(rows) * (frame_h + 4)), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    for g, name in enumerate(groups):
        draw.text((LABEL_WIDTH + g * (group_w + gap) + 2, 2), f"{name}: frames {', '.join(map(str, picks))}", fill=(40, 40, 40))
    for row_index, (label, tiles, colour) in enumerate(rows):
        top = header + row_index * (frame_h + 4)
        for g, pixels in enumerate(tiles):
            sheet.paste(Image.fromarray(pixels), (LABEL_WIDTH + g * (group_w + gap), top))
        draw.multiline_text((6, top + 6), label, fill=(20, 20, 20) if colour is None else colour, spacing=3)
        if colour is not None:
            draw.rectangle([LABEL_WIDTH - 6, top, LABEL_WIDTH - 2, top + frame_h - 1], fill=colour)
    return sheet


def hand_masks_sheet(control: torch.Tensor, pixel_masks: torch.Tensor, latent_mask: torch.Tensor, boxes, picks: Sequence[int], scale: int = 2):
    """Top: pixel hand masks and boxes over the control frames. Bottom: the latent cells each frame falls into
    (latent frame ``(i + 3) // 4``), blown up to pixels: what the loss weights ``hand_weight`` x."""
    from PIL import Image, ImageDraw

    top = hand_mask_preview(pixel_masks, control, boxes)
    cells = latent_mask[0, 0].float()
    cells = cells.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
    cells = cells[[(i + 3) // 4 for i in range(control.shape[0])]]
    bottom = hand_mask_preview(cells, control, color=(1.0, 0.25, 0.85))
    rows = [("pixel hand masks\nand boxes", _tile(top, picks, scale)), ("latent hand cells\n(8x8 px, frames\n4j-3..4j): weighted\nhand_weight x", _tile(bottom, picks, scale))]
    header = 20
    height = rows[0][1].shape[0]
    sheet = Image.new("RGB", (LABEL_WIDTH + rows[0][1].shape[1], header + len(rows) * (height + 4)), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    frame_w = rows[0][1].shape[1] // len(picks)
    for column, index in enumerate(picks):
        draw.text((LABEL_WIDTH + column * frame_w + 2, 3), f"frame {index}", fill=(40, 40, 40))
    for row_index, (label, pixels) in enumerate(rows):
        top_y = header + row_index * (height + 4)
        sheet.paste(Image.fromarray(pixels), (LABEL_WIDTH, top_y))
        draw.multiline_text((6, top_y + 6), label, fill=(20, 20, 20), spacing=3)
    return sheet


def overlay(control: torch.Tensor, pixel_masks: torch.Tensor, boxes=None) -> torch.Tensor:
    return hand_mask_preview(pixel_masks, control, boxes)


def hands_sheet(before: Sequence, after: Sequence, seeds: Sequence[int], trained: Sequence[bool], rates: dict, size: int = 40, scale: int = 2):
    """Each hand at the middle frame, before and after the LoRA (``study.experiment.Sample`` pairs, same seeds),
    outlined green when the hand score calls it good and red when bad; candidates (trained on) first, then the
    held-out seeds. The title carries the good-hand rates."""
    from PIL import Image, ImageDraw

    from ..study import score, world

    tile = size * scale
    columns = []
    for b, a, seed, was_trained in zip(before, after, seeds, trained):
        t = b.video.frames_count // 2
        for hand, entry in enumerate(score.glyph_templates(b.video)):
            if entry is None:
                continue
            cx, cy = world.hand_points(b.video.poses()[t], world.HAND_KEYS[hand]).mean(axis=0)
            x0 = int(np.clip(cx - size / 2, 0, b.video.width - size))
            y0 = int(np.clip(cy - size / 2, 0, b.video.height - size))
            columns.append((seed, was_trained, [(s.frames[t, y0:y0 + size, x0:x0 + size], s.score.hands[hand]) for s in (b, a)]))
    header, label_w, gap = 34, 60, 6
    sheet = Image.new("RGB", (label_w + len(columns) * (tile + 2) + gap, header + 2 * (tile + 2) + 16), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), f"good-hand rate: candidates {rates['candidates_before']:.2f} -> {rates['candidates_after']:.2f}; "
                      f"held-out seeds {rates['held_out_seeds_before']:.2f} -> {rates['held_out_seeds_after']:.2f} (green: good, red: bad)",
              fill=(20, 20, 20))
    for row, label in enumerate(("before", "after")):
        draw.text((4, header + row * (tile + 2) + tile // 2 - 6), label, fill=(20, 20, 20))
    x = label_w
    for index, (seed, was_trained, pair) in enumerate(columns):
        if index and was_trained != columns[index - 1][1]:
            x += gap  # candidates | held-out seeds
        for row, (pixels, hand_score) in enumerate(pair):
            image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).resize((tile, tile), Image.Resampling.NEAREST)
            top = header + row * (tile + 2)
            sheet.paste(image, (x, top))
            colour = PREFERRED_COLOUR if hand_score is not None and hand_score.good else REJECTED_COLOUR
            draw.rectangle([x, top, x + tile - 1, top + tile - 1], outline=colour, width=2)
        draw.text((x + 2, header + 2 * (tile + 2) + 2), f"{'' if was_trained else 'h '}{seed}", fill=(60, 60, 60))
        x += tile + 2
    return sheet
