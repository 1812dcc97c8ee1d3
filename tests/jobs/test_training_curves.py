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


def _spiky_history(steps=200, total=1000, spike_at=60, spike=15.8):
    """A per-step preference loss as it looks: jumping between about 0 and log 2, with one spike."""
    values = [0.01, 0.3, 0.69, 0.05, 0.45]
    return [{"event": "step", "step": i, "total": total, "loss": spike if i == spike_at else values[i * 7 % 5],
             "ipa_gap": 0.01 * ((i * 3 % 7) - 3), "sec_per_step": 2.31, "eta_s": 2.31 * (total - i)} for i in range(1, steps + 1)]


def test_a_spike_is_clipped_and_marked_and_the_axis_stays_at_or_above_zero():
    history = _spiky_history()
    low, high = curves.robust_limits([e["loss"] for e in history], curves.LOG2)
    assert low == 0.0 and curves.LOG2 < high < 1.0  # the 15.8 is off the chart; a loss never goes below 0
    low_gap, _ = curves.robust_limits([e["ipa_gap"] for e in history], 0.0)
    assert low_gap < -0.03  # a series that does go negative keeps its negative part
    image = curves.training_curves(history)
    middle = image.height // 2
    pixels = np.asarray(image).astype(int)
    hit = (np.abs(pixels - np.array(curves.LOSS_COLOUR)).sum(axis=-1) < 30)[:middle]
    column = lambda step: int(16 + (step - 1) / (1000 - 1) * (image.width - 32))  # noqa: E731
    # Steps 100..200, after the spike: the line sits well inside the chart, not in its bottom pixels (with min/max
    # limits the 0..0.69 band was the lowest 4 % of the height, under a 15.8 spike).
    rows = np.nonzero(hit[:, column(100):column(200)].any(axis=1))[0]
    rows = rows[rows > 75]  # under the panel's title
    assert len(rows) and np.median(rows) < middle - 15, rows
    # the spike is drawn as a marker on the top edge of the loss chart, at its step
    spike_x = column(60)
    near = hit[:, int(spike_x) - 5:int(spike_x) + 6]
    assert near.any() and np.nonzero(near.any(axis=1))[0].min() < 80


def test_the_smoothed_line_is_calmer_than_the_raw_points_and_ignores_a_spike():
    history = _spiky_history()
    points = [(float(e["step"]), e["loss"]) for e in history]
    limits = curves.robust_limits([y for _, y in points], curves.LOG2)
    line = [y for _, y in curves.smoothed(points, limits)]
    raw = [y for _, y in points]
    assert np.std(line[20:]) < 0.4 * np.std(raw[20:])
    assert max(line[20:]) < 0.6  # the 15.8 (step 60) does not lift it
    assert abs(np.mean(line[50:]) - np.mean([y for y in raw[50:] if y < 1])) < 0.1
    assert curves.smoothed([(1.0, 0.5)], (0.0, 1.0)) == [(1.0, 0.5)]  # one point: itself


def test_the_header_says_the_step_rate_and_the_time_left():
    assert curves.rate_and_eta(_spiky_history(steps=200)) == "2.31 s/step  ·  ETA 31 min"
    fast = [{"event": "step", "step": 10, "total": 4000, "sec_per_step": 0.25}]
    assert curves.rate_and_eta(fast) == "4 steps/s  ·  ETA 17 min"  # no eta_s: from the rate and the steps left
    long = [{"event": "step", "step": 1, "total": 1000, "sec_per_step": 45.0, "eta_s": 45.0 * 999}]
    assert curves.rate_and_eta(long) == "45 s/step  ·  ETA 12 h 29 min"
    assert curves.rate_and_eta([]) == "" and curves.rate_and_eta([{"event": "step", "step": 1}]) == ""
