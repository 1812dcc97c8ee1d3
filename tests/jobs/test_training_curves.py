"""The train node's live plot: ipa_gap on its own axis (a gap of 1e-4 is not a flat line next to a loss of 0.69), text
and lines that keep WCAG contrast on the plot's own opaque background (so it reads the same in ComfyUI's dark and
light themes), a size that fits the node."""

from __future__ import annotations

import numpy as np

from ipa_train.jobs import curves


def _history(steps=40, total=100):
    return [{"event": "step", "step": i, "total": total, "loss": 0.6931 - 0.0005 * i, "ipa_gap": 1e-4 + 5e-6 * i} for i in range(1, steps + 1)]


def _rows_of(image, colour, tolerance=30):
    pixels = np.asarray(image).astype(int)
    hit = (np.abs(pixels - np.array(colour)).sum(axis=-1) < tolerance)
    return np.nonzero(hit.any(axis=1))[0]


def test_gap_and_loss_each_fill_their_own_axis():
    image = curves.training_curves(_history(), title="IPA hands")
    assert image.size == (480, 300) and image.mode == "RGB"
    gap_rows, loss_rows = _rows_of(image, curves.GAP_COLOUR), _rows_of(image, curves.LOSS_COLOUR)
    # each curve spans a good part of its half of the picture, and the halves do not overlap
    middle = image.height // 2
    gap_line = gap_rows[gap_rows > middle + 30]  # below the panel title
    loss_line = loss_rows[(loss_rows < middle) & (loss_rows > 60)]
    assert gap_line.max() - gap_line.min() > 50, "the gap is drawn flat"
    assert loss_line.max() - loss_line.min() > 50, "the loss is drawn flat"
    # the step axis runs to the planned total: 40 of 100 steps end well left of the right edge
    columns = np.nonzero((np.abs(np.asarray(image).astype(int) - np.array(curves.GAP_COLOUR)).sum(axis=-1) < 30)[middle + 30:].any(axis=0))[0]
    assert columns.max() < 0.6 * image.width


def test_colours_keep_contrast_on_the_plots_background():
    for colour in (curves.TEXT, curves.LOSS_COLOUR, curves.GAP_COLOUR, curves.MUTED):
        for background in (curves.BACKGROUND, curves.PANEL):
            assert curves.contrast_ratio(colour, background) >= 4.5, (colour, background)
    # the ratio itself: black on white is 21, a colour on itself 1
    assert round(curves.contrast_ratio((0, 0, 0), (255, 255, 255)), 1) == 21.0 and curves.contrast_ratio((9, 9, 9), (9, 9, 9)) == 1.0


def test_no_steps_yet_and_objectives_without_a_gap():
    waiting = curves.training_curves([{"event": "started"}])
    assert waiting.size == (480, 300)
    sft = [{"event": "step", "step": i, "total": 5, "loss": 0.1 / i, "model_error": 0.2 / i} for i in range(1, 6)]
    image = curves.training_curves(sft)
    assert len(_rows_of(image, curves.GAP_COLOUR)) > 20  # model_error drawn in the lower panel instead
