"""Hand score on synthetic POSE_KEYPOINT frames (ComfyUI's DWPose layout)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ipa_train.pose.hand_score import frame_hands, hand_score


def hand_points(cx: float, cy: float, size: float, confidence: float = 1.0, seed: int = 0) -> np.ndarray:
    """21 points spread over a ``size``-wide hand around (cx, cy), normalised coordinates."""
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(-0.5, 0.5, size=(21, 2)) * size
    points = np.concatenate([offsets + [cx, cy], np.full((21, 1), confidence)], axis=1)
    return points


def frame(people, width=832, height=480, pixels=True):
    """A POSE_KEYPOINT frame; ``people`` is a list of (left, right) hands as [21, 3] normalised arrays or None."""
    result = []
    for left, right in people:
        person = {"pose_keypoints_2d": [0.0] * 54}
        for key, hand in (("hand_left_keypoints_2d", left), ("hand_right_keypoints_2d", right)):
            if hand is None:
                person[key] = None
                continue
            hand = hand.copy()
            if pixels:
                hand[:, 0] *= width
                hand[:, 1] *= height
            person[key] = hand.reshape(-1).tolist()
        result.append(person)
    return {"people": result, "canvas_width": width, "canvas_height": height}


LEFT = hand_points(0.3, 0.5, 0.1, seed=1)
RIGHT = hand_points(0.7, 0.45, 0.1, seed=2)


def driving_video(frames=9):
    return [frame([(LEFT, RIGHT)]) for _ in range(frames)]


def test_identical_hands_score_one_even_at_another_resolution():
    generated = [frame([(LEFT, RIGHT)], width=208, height=120) for _ in range(5)]  # a small preview
    result = hand_score(generated, driving_video())
    assert result.score == pytest.approx(1.0) and result.agreement == pytest.approx(1.0)
    assert result.frames_scored == 5 and result.hands_scored == 10


def test_normalised_coordinates_are_accepted():
    generated = [frame([(LEFT, RIGHT)], pixels=False) for _ in range(3)]
    assert hand_score(generated, driving_video()).score == pytest.approx(1.0)


def test_swapped_left_right_labels_and_person_order_do_not_matter():
    generated = [frame([(None, None), (RIGHT, LEFT)]) for _ in range(3)]
    assert hand_score(generated, driving_video()).score == pytest.approx(1.0)


def test_no_detected_hands_score_zero():
    generated = [{"people": [], "canvas_width": 832, "canvas_height": 480} for _ in range(4)]
    result = hand_score(generated, driving_video())
    assert result.score == 0.0 and result.confidence == 0.0 and result.hands_scored == 8


def test_hands_in_the_wrong_place_have_no_agreement():
    moved = [frame([(hand_points(0.3, 0.1, 0.1, seed=1), hand_points(0.7, 0.9, 0.1, seed=2))]) for _ in range(3)]
    result = hand_score(moved, driving_video())
    assert result.agreement == 0.0 and result.confidence == pytest.approx(1.0) and result.score == 0.0


def test_half_the_fingers_wrong_gives_half_agreement():
    broken = LEFT.copy()
    broken[::2, 0] += 0.2  # 11 of 21 points far away (0.2 is twice the hand size)
    generated = [frame([(broken, None)]) for _ in range(3)]
    driving = [frame([(LEFT, None)]) for _ in range(3)]
    result = hand_score(generated, driving)
    assert result.agreement == pytest.approx(10 / 21)
    assert result.score == pytest.approx(math.sqrt(10 / 21))


def test_low_confidence_lowers_the_score():
    unsure = LEFT.copy()
    unsure[:, 2] = 0.5
    result = hand_score([frame([(unsure, None)])], [frame([(LEFT, None)])])
    assert result.agreement == 1.0 and result.confidence == pytest.approx(0.5)
    assert result.score == pytest.approx(math.sqrt(0.5))


def test_one_detected_hand_is_matched_to_one_driving_hand_only():
    generated = [frame([(LEFT, None)]) for _ in range(2)]
    result = hand_score(generated, driving_video(2))
    assert result.score == pytest.approx(0.5) and result.hands_scored == 4


def test_only_frames_where_the_driving_pose_shows_hands_count():
    driving = [frame([(LEFT, None)]), frame([(None, None)]), frame([(None, None)]), frame([(LEFT, None)])]
    generated = [frame([(LEFT, None)]), frame([(None, None)]), frame([(None, None)]), frame([(LEFT, None)])]
    result = hand_score(generated, driving)
    assert result.frames_scored == 2 and result.score == pytest.approx(1.0)


def test_driving_pose_without_hands_gives_no_score():
    result = hand_score([frame([(LEFT, None)])], [frame([(None, None)])] * 3)
    assert result.score is None and result.frames_scored == 0
    assert result.to_summary() == {
        "hand_score": None,
        "hand_score_detail": {"agreement": None, "confidence": None, "frames_scored": 0, "hands_scored": 0},
    }


def test_invisible_driving_points_are_ignored():
    partly = LEFT.copy()
    partly[10:, 2] = 0.0  # only 10 points visible in the driving pose
    broken = LEFT.copy()
    broken[10:, :2] += 0.5  # the detector is wrong exactly where the driving pose shows nothing
    result = hand_score([frame([(broken, None)])], [frame([(partly, None)])])
    assert result.agreement == pytest.approx(1.0)


def test_summary_fields_for_the_manifest():
    summary = hand_score([frame([(LEFT, None)])], [frame([(LEFT, RIGHT)])]).to_summary()
    assert summary["hand_score"] == pytest.approx(0.5)
    assert summary["hand_score_detail"]["hands_scored"] == 2


@pytest.mark.parametrize(
    "generated, driving, message",
    [
        ([], [frame([(LEFT, None)])], "no generated frames"),
        ([frame([(LEFT, None)])], [], "no driving pose"),
        ([{"people": [{"hand_left_keypoints_2d": [1.0, 2.0, 1.0]}]}], [frame([(LEFT, None)])], "21 \\[x, y, c\\]"),
        (["nope"], [frame([(LEFT, None)])], "must be a dict"),
    ],
)
def test_bad_input_is_explained(generated, driving, message):
    with pytest.raises(ValueError, match=message):
        hand_score(generated, driving)


def test_frame_hands_skips_empty_hands():
    empty = np.zeros((21, 3))
    assert len(frame_hands(frame([(empty, LEFT)]))) == 1
