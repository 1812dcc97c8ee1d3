"""The sampler's candidate previews as a person sees them on the node: the frontend (1.35.9) shows only a node's first
animated image, with no counter or arrows, so the first preview is one looping grid of every candidate with its seed
written on it, followed by each candidate's own labelled clip."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_comfyui

pytestmark = requires_comfyui

FRAMES, H, W = 5, 64, 96


@pytest.fixture(scope="module")
def previews(tmp_path_factory):
    from support.comfy_tiny import load_pack_cpu

    load_pack_cpu()
    import folder_paths

    temp = tmp_path_factory.mktemp("previews")
    folder_paths.set_temp_directory(str(temp))
    from comfyui_ipa_pack.nodes import previews as module

    return module, temp


def _clip(level):
    """Grey at ``level``, a little brighter each frame (identical frames would be merged by the WebP encoder)."""
    return torch.full((FRAMES, H, W, 3), level) + torch.arange(FRAMES).view(-1, 1, 1, 1) * 0.05


def _decoded(temp, item):
    from PIL import Image

    with Image.open(temp / item["subfolder"] / item["filename"]) as image:
        frames = image.n_frames
        loop = image.info.get("loop")
        image.seek(0)
        first = torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32).reshape(image.height, image.width, 3) / 255
    return frames, loop, first


def test_a_labelled_grid_first_then_one_clip_per_candidate(previews):
    module, temp = previews
    seeds = [7, 8, 9]
    saved = module.candidate_previews([_clip(0.5), _clip(0.3), _clip(0.6)], seeds).as_dict()
    assert saved["animated"] == (True,) and len(saved["images"]) == 1 + len(seeds)
    frames, loop, grid = _decoded(temp, saved["images"][0])
    assert frames == FRAMES and loop == 0
    assert grid.shape == (2 * H, 2 * W, 3)  # 3 candidates: 2 x 2 cells at full size
    for index, level in enumerate((0.5, 0.3, 0.6)):
        row, column = divmod(index, 2)
        cell = grid[row * H:(row + 1) * H, column * W:(column + 1) * W]
        assert abs(cell[-10:, -10:].mean().item() - level) < 0.05  # the candidate itself
        label = cell[:module.LABEL_HEIGHT, :40]
        assert label.max() > 0.8 and label.min() < 0.15, index  # white text on the dark box: the seed is written there
    for item in saved["images"][1:]:
        frames, _, clip = _decoded(temp, item)
        assert frames == FRAMES and clip.shape == (H, W, 3) and clip[:module.LABEL_HEIGHT, :40].max() > 0.8


def test_each_label_names_its_candidate_and_seed(previews):
    module, _ = previews
    patches = [module.label_patch(f"#{index} seed {seed}") for index, seed in enumerate((7, 8, 1234567))]
    assert patches[0].shape[0] == module.LABEL_HEIGHT and patches[2].shape[1] > patches[0].shape[1]  # longer text, wider
    assert not torch.equal(patches[0], patches[1])
    single = module.candidate_previews([_clip(0.5)], [3]).as_dict()
    assert len(single["images"]) == 1  # one candidate: its clip, no grid
