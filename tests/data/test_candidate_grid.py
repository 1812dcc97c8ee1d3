"""The sampler's preview: every candidate in one looping grid, each tile with its seed (the frontend shows only the first
of several animated previews on a node, with no counter or arrows)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ipa_train.data.previews import GRID_GAP, candidate_grid_webp, grid_shape

COLOURS = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)]


def _clip(colour, frames=5, height=90, width=160):
    """A clip of ``colour`` getting brighter frame by frame (identical frames would be merged by the encoder)."""
    brightness = torch.linspace(0.6, 1.0, frames).view(frames, 1, 1, 1)
    return (torch.tensor(colour).view(1, 1, 1, 3) * brightness).expand(frames, height, width, 3).clone()


def test_grid_shapes_stay_close_to_square():
    assert [grid_shape(n) for n in (1, 2, 3, 4, 5, 6, 9, 10)] == [(1, 1), (2, 1), (2, 2), (2, 2), (3, 2), (3, 2), (3, 3), (4, 3)]


def test_four_candidates_loop_as_one_labelled_grid():
    clips = [_clip(c, frames=5 if i else 3) for i, c in enumerate(COLOURS)]  # the first is shorter: holds its last frame
    data, size = candidate_grid_webp(clips, [f"seed {7 + i}" for i in range(4)], fps=16.0)
    assert size == (2 * 160 + GRID_GAP, 2 * 90 + GRID_GAP)
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "WEBP" and picture.n_frames == 5 and picture.info.get("loop") == 0 and picture.size == size
        picture.seek(4)
        frame = np.asarray(picture.convert("RGB")).astype(int)
    for index, colour in enumerate(COLOURS):
        x0, y0 = (index % 2) * (160 + GRID_GAP), (index // 2) * (90 + GRID_GAP)
        # the tile's own colour away from its label, and the label (white text on black) in its top-left corner
        centre = frame[y0 + 60, x0 + 120]
        expected = np.array(colour) * 255  # every clip at its last (brightest) frame; the short one holds it
        assert np.abs(centre - expected).max() < 40, (index, centre)
        corner = frame[y0 + 2:y0 + 22, x0 + 2:x0 + 60]
        assert (corner.sum(axis=-1) < 60).mean() > 0.3 and (corner.min(axis=-1) > 200).any(), index


def test_one_label_per_clip():
    with pytest.raises(ValueError, match="one label per clip"):
        candidate_grid_webp([_clip(COLOURS[0])], ["seed 1", "seed 2"])
