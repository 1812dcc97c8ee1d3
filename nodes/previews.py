"""Looping clip previews on a node: one animated WebP per clip in ComfyUI's temp folder, shown by the frontend the
way it shows ComfyUI's own animated outputs (``ui.SavedImages(..., is_animated=True)``), instead of every frame as
a still. The encoding is the dataset previews' (``ipa_train.data.previews.animated_webp``): the same look as the gallery.

The frontend (1.35.9) shows only the first animated image of a node, with no counter or arrows, so the sampler's
candidates come as one looping grid first (every candidate, its seed written on it), then each candidate's own clip."""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
from comfy_api.v0_0_2 import io, ui

from ..ipa_train.data.previews import animated_webp
from ..ipa_train.fileio import atomic_write_bytes

PREVIEW_MAX_SIDE = 512


def looping_previews(clips: Sequence[torch.Tensor], fps: float = 16.0, prefix: str = "ipa_preview") -> ui.SavedImages:
    """``clips``: IMAGE tensors ``[T, H, W, C]``, one per preview."""
    import folder_paths

    results = []
    first = clips[0]
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        prefix, folder_paths.get_temp_directory(), int(first.shape[2]), int(first.shape[1])
    )
    for index, clip in enumerate(clips):
        data, _ = animated_webp(clip, fps=fps, max_side=PREVIEW_MAX_SIDE)
        name = f"{filename}_{counter + index:05}_.webp"
        atomic_write_bytes(os.path.join(folder, name), data)
        results.append(ui.SavedResult(name, subfolder, io.FolderType.temp))
    return ui.SavedImages(results, is_animated=True)


GRID_CELL_MAX_SIDE = 320
LABEL_HEIGHT = 18


def label_patch(text: str, height: int = LABEL_HEIGHT) -> torch.Tensor:
    """``text`` in white on a dark box, as an IMAGE patch ``[h, w, 3]`` to paste onto every frame of a clip."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=height - 4)
    width = int(math.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font))) + 8
    image = Image.new("RGB", (width, height), (16, 16, 16))
    ImageDraw.Draw(image).text((4, 1), text, fill=(255, 255, 255), font=font)
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(height, width, 3).float() / 255.0


def labelled(clip: torch.Tensor, text: str) -> torch.Tensor:
    """A copy of ``clip`` ``[T, H, W, C]`` with ``text`` in its top-left corner on every frame."""
    out = clip[..., :3].clone()
    patch = label_patch(text).to(out.dtype)
    h, w = min(patch.shape[0], out.shape[1]), min(patch.shape[1], out.shape[2])
    out[:, :h, :w] = patch[:h, :w]
    return out


def candidate_grid(clips: Sequence[torch.Tensor], labels: Sequence[str], cell_max_side: int = GRID_CELL_MAX_SIDE) -> torch.Tensor:
    """Every clip in one looping clip: a grid (as square as it goes), each cell scaled to at most ``cell_max_side`` and
    labelled. Clips shorter than the longest hold their last frame."""
    frames = max(int(clip.shape[0]) for clip in clips)
    height, width = int(clips[0].shape[1]), int(clips[0].shape[2])
    scale = min(1.0, cell_max_side / max(height, width))
    cell_h, cell_w = max(1, round(height * scale)), max(1, round(width * scale))
    columns = math.ceil(math.sqrt(len(clips)))
    rows = math.ceil(len(clips) / columns)
    grid = torch.zeros(frames, rows * cell_h, columns * cell_w, 3)
    for index, (clip, text) in enumerate(zip(clips, labels)):
        cell = torch.nn.functional.interpolate(clip[..., :3].float().movedim(-1, 1), size=(cell_h, cell_w), mode="bilinear",
                                               align_corners=False).movedim(1, -1).clamp(0, 1)
        if cell.shape[0] < frames:
            cell = torch.cat([cell, cell[-1:].expand(frames - cell.shape[0], -1, -1, -1)])
        row, column = divmod(index, columns)
        grid[:, row * cell_h:(row + 1) * cell_h, column * cell_w:(column + 1) * cell_w] = labelled(cell, text)
    return grid


def candidate_previews(clips: Sequence[torch.Tensor], seeds: Sequence, fps: float = 16.0) -> ui.SavedImages:
    """The sampler's previews: with several candidates a labelled grid of all of them first (the one the frontend
    shows), then each candidate's clip with its seed on it."""
    labels = [f"#{index} seed {seed}" if seed is not None else f"#{index}" for index, seed in enumerate(seeds)]
    shown = [labelled(clip, text) for clip, text in zip(clips, labels)]
    if len(shown) > 1:
        shown = [candidate_grid(clips, labels)] + shown
    return looping_previews(shown, fps=fps, prefix="ipa_candidates")
