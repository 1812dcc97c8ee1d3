"""Hand tracks from per-frame boxes and the close-up animations cut from a preview."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ipa_train.pose.hand_crops import crop_square, hand_tracks_from_meta, parse_hand_boxes, render_hand_crop, track_hands
from support.gallery_fixture import hand_boxes, preview_webp


def test_tracks_follow_each_hand_when_the_order_of_boxes_changes():
    left = [(10 + 2 * i, 10, 30 + 2 * i, 30) for i in range(6)]
    right = [(100 - 2 * i, 50, 120 - 2 * i, 70) for i in range(6)]
    frames = [[l, r] if i % 2 == 0 else [r, l] for i, (l, r) in enumerate(zip(left, right))]
    tracks = track_hands(frames)
    assert len(tracks) == 2
    assert sorted([tracks[0], tracks[1]], key=lambda t: t[0][0]) == [left, right]


def test_gaps_are_filled_from_the_nearest_frame():
    box_a, box_b = (10, 10, 20, 20), (14, 10, 24, 20)
    tracks = track_hands([[], [box_a], [], [], [box_b], []])
    assert tracks == [[box_a, box_a, box_a, box_b, box_b, box_b]]


def test_no_boxes_no_tracks():
    assert track_hands([[], []]) == []
    assert hand_tracks_from_meta({"seed": 1}) is None
    assert hand_tracks_from_meta({"hand_boxes": [[], []]}) is None


@pytest.mark.parametrize(
    "value, message",
    [
        ("boxes", "must be a list"),
        ([[[1, 2, 3]]], "each box is"),
        ([[["a", 2, 3, 4]]], "each box is"),
        ([5], "must be a list of boxes"),
    ],
)
def test_bad_hand_boxes_are_explained(value, message):
    with pytest.raises(ValueError, match=message):
        parse_hand_boxes(value)


def test_degenerate_boxes_are_dropped():
    assert parse_hand_boxes([[[5, 5, 5, 9], [1, 1, 4, 4]], None]) == [[(1.0, 1.0, 4.0, 4.0)], []]


def test_crop_square_stays_inside_the_image():
    assert crop_square((0, 0, 10, 10), (100, 60)) == (0, 0, 24, 24)  # min side 24, clamped at the corner
    x0, y0, x1, y1 = crop_square((90, 50, 100, 60), (100, 60), margin=2.0)
    assert (x1, y1) == (100, 60) and x1 - x0 == y1 - y0 == 24
    assert crop_square((0, 0, 500, 500), (100, 60)) == (40, 0, 100, 60)  # as large as the image allows


def test_rendered_crop_follows_the_hand():
    seed = 3
    tracks = hand_tracks_from_meta({"hand_boxes": hand_boxes(seed)})
    assert len(tracks) == 2
    data = render_hand_crop(preview_webp(seed), tracks[0], size=96)
    with Image.open(io.BytesIO(data)) as crop:
        assert crop.format == "WEBP" and crop.size == (96, 96) and crop.n_frames == 8
        for index in range(crop.n_frames):
            crop.seek(index)
            r, g, b = crop.convert("RGB").getpixel((48, 48))
            assert abs(r - 250) < 30 and abs(g - 220) < 30 and abs(b - 190) < 30


def test_a_still_preview_gives_a_still_crop():
    image = Image.new("RGB", (64, 48), (200, 10, 10))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = render_hand_crop(buffer.getvalue(), [(10, 10, 30, 30)] * 4, size=32)
    with Image.open(io.BytesIO(data)) as crop:
        assert crop.size == (32, 32) and getattr(crop, "n_frames", 1) == 1
