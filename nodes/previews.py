"""Looping clip previews on a node: one animated WebP per clip in ComfyUI's temp folder, shown by the frontend the
way it shows ComfyUI's own animated outputs (``ui.SavedImages(..., is_animated=True)``), instead of every frame as
a still. The encoding is the dataset previews' (``ipa_train.data.previews.animated_webp``): the same look as the gallery.

The frontend (1.35.9) shows only the first animated image of a node, with no counter or arrows, so the sampler's
candidates come as one looping grid first (every candidate, its seed written on it), then each candidate's own clip."""

from __future__ import annotations

import os
from typing import Sequence

import torch
from comfy_api.v0_0_2 import io, ui

from ..ipa_train.data.previews import animated_webp, candidate_grid_webp
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


def candidate_grid_preview(clips: Sequence[torch.Tensor], labels: Sequence[str], fps: float = 16.0,
                           prefix: str = "ipa_candidates") -> ui.SavedImages:
    """All of a sampler's candidates in one looping animated WebP, a grid with each tile's label (its seed): the
    frontend shows only the first of several animated previews on a node, with no counter or arrows."""
    import folder_paths

    first = clips[0]
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        prefix, folder_paths.get_temp_directory(), int(first.shape[2]), int(first.shape[1])
    )
    data, _ = candidate_grid_webp(clips, labels, fps=fps, max_side=2 * PREVIEW_MAX_SIDE)
    name = f"{filename}_{counter:05}_.webp"
    atomic_write_bytes(os.path.join(folder, name), data)
    return ui.SavedImages([ui.SavedResult(name, subfolder, io.FolderType.temp)], is_animated=True)
