"""The one POSE_KEYPOINT reader (ipa_train.pose.keypoints): frames, people, hands, units and confidence."""

import numpy as np
import pytest

from ipa_train.pose import keypoints as kp
from ipa_train.pose.hand_score import frame_hands
from ipa_train.pose.hands import hand_boxes


def hand(x, y, c=1.0, n=21):
    return [v for i in range(n) for v in (x + i, y + i / 2, c)]


def test_frames_of_takes_a_bare_frame_a_list_and_explains_the_rest():
    frame = {"people": []}
    assert kp.frames_of(frame) == [frame]
    assert kp.frames_of((frame, None)) == [frame, None]
    with pytest.raises(ValueError, match="empty"):
        kp.frames_of([])
    with pytest.raises(ValueError, match="one dict per frame"):
        kp.frames_of("pose")


def test_canvas_size_falls_back_when_the_frame_does_not_say():
    assert kp.frame_canvas_size({"canvas_width": 640, "canvas_height": 480}, 1, 2) == (640, 480)
    assert kp.frame_canvas_size({"canvas_width": 0, "canvas_height": 480}, 64, 32) == (64, 32)
    assert kp.frame_canvas_size({"canvas_width": "wide", "canvas_height": 480}, 64, 32) == (64, 32)
    assert kp.frame_canvas_size(None, 64, 32) == (64, 32)


def test_person_hands_skips_absent_hands_and_placeholder_people():
    frame = {"people": [None, {"hand_left_keypoints_2d": [], "hand_right_keypoints_2d": hand(5, 6)}, {"hand_left_keypoints_2d": hand(1, 1)}]}
    found = kp.person_hands(frame)
    assert [(p, key) for p, key, _ in found] == [(1, kp.RIGHT_HAND), (2, kp.LEFT_HAND)]
    assert found[0][2].shape == (21, 3) and found[0][2][0].tolist() == [5.0, 6.0, 1.0]
    assert kp.person_hands({"people": None}) == [] and kp.person_hands({}) == []


def test_a_list_that_is_not_triples_names_frame_person_and_key():
    with pytest.raises(ValueError, match=r"frame 3, person 0, hand_left_keypoints_2d: .*multiple of 3"):
        kp.person_hands({"people": [{"hand_left_keypoints_2d": [1.0, 2.0]}]}, "frame 3")


def test_visible_needs_confidence_above_zero_and_finite_numbers():
    points = np.array([[1, 1, 0.5], [1, 1, 0.2], [1, 1, 0.0], [np.nan, 1, 0.9], [1, 1, np.inf]], dtype=float)
    assert kp.visible(points, 0.3).tolist() == [True, False, False, False, False]
    assert kp.visible(points).tolist() == [True, True, False, False, False]


def test_units_are_judged_from_the_visible_points_only():
    canvas = (200, 100)
    normalised = np.array([[0.5, 0.5, 1.0], [1.2, -0.1, 1.0], [900.0, 900.0, 0.0]])  # overshoot; hidden junk
    shown = kp.visible(normalised)
    assert kp.in_canvas_pixels(normalised, shown, canvas)[:2, :2].tolist() == [[100.0, 50.0], [240.0, -10.0]]
    assert kp.in_unit_coordinates(normalised, shown, canvas)[:2, :2].tolist() == [[0.5, 0.5], [1.2, -0.1]]
    pixels = np.array([[100.0, 50.0, 1.0], [20.0, 10.0, 1.0]])
    assert kp.in_unit_coordinates(pixels, kp.visible(pixels), canvas)[:, :2].tolist() == [[0.5, 0.5], [0.1, 0.1]]
    assert kp.in_unit_coordinates(pixels, kp.visible(pixels), (0, 0))[:, :2].tolist() == [[100.0, 50.0], [20.0, 10.0]]
    assert kp.in_canvas_pixels(pixels, kp.visible(pixels), canvas).tolist() == pixels.tolist()


def test_the_mask_and_the_score_read_the_same_hand_the_same_way():
    """A normalised hand slightly past the canvas edge: both readers take it as normalised (one rule)."""
    flat = [v for i in range(21) for v in (0.9 + i * 0.01, 0.5, 1.0)]  # x up to 1.1
    frame = {"people": [{"hand_left_keypoints_2d": flat}], "canvas_width": 100, "canvas_height": 100}
    (scored,) = frame_hands(frame)
    assert scored[:, 0].max() == pytest.approx(1.1)
    (box,) = hand_boxes([frame], 100, 100, margin=0.0)[0]
    assert box[0] == 90 and box[2] == 100
