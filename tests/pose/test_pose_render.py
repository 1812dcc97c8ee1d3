"""OpenPose-style pose pictures from POSE_KEYPOINT: pixels at the expected places in the expected colours."""

from __future__ import annotations

import numpy as np
import pytest

from ipa_train.pose import render as pr


def _body(points: dict[int, tuple[float, float]], score: float = 1.0) -> list[float]:
    flat = [0.0] * 54
    for index, (x, y) in points.items():
        flat[3 * index : 3 * index + 3] = [x, y, score]
    return flat


def _frame(people, width=100, height=100):
    return {"people": people, "canvas_width": width, "canvas_height": height}


def _rgb(image, x, y):
    return tuple(int(v) for v in image[y, x])


def test_body_limb_and_joints_colours_at_known_points():
    # neck (1) at (20, 50) and right shoulder (2) at (80, 50): limb 0 drawn red at 60 %
    frame = _frame([{"pose_keypoints_2d": _body({1: (20, 50), 2: (80, 50)})}])
    image = pr.render_pose_frame(frame)
    assert image.shape == (100, 100, 3) and image.dtype == np.uint8
    assert _rgb(image, 50, 50) == (153, 0, 0)  # limb middle
    assert _rgb(image, 50, 53) == (153, 0, 0)  # inside the 4 px half-thickness
    assert _rgb(image, 50, 56) == (0, 0, 0)  # outside it
    assert _rgb(image, 20, 50) == pr.BODY_COLORS[1]  # neck joint
    assert _rgb(image, 80, 50) == pr.BODY_COLORS[2]
    assert _rgb(image, 80, 54) == pr.BODY_COLORS[2] and _rgb(image, 80, 56) == (0, 0, 0)  # 4 px disc
    assert _rgb(image, 5, 5) == (0, 0, 0)


def test_diagonal_limb_follows_the_segment():
    frame = _frame([{"pose_keypoints_2d": _body({8: (10, 10), 9: (90, 90)})}])  # right hip -> right knee: limb 7
    image = pr.render_pose_frame(frame)
    expected = tuple(int(c * 0.6) for c in pr.BODY_COLORS[7])
    for t in (0.3, 0.5, 0.7):
        assert _rgb(image, int(10 + 80 * t), int(10 + 80 * t)) == expected
    assert _rgb(image, 70, 30) == (0, 0, 0)


def test_points_under_threshold_and_placeholders_are_not_drawn():
    flat = _body({1: (20, 50), 2: (80, 50)})
    flat[3 * 2 + 2] = 0.2  # right shoulder below 0.3
    image = pr.render_pose_frame(_frame([{"pose_keypoints_2d": flat}]), threshold=0.3)
    assert _rgb(image, 50, 50) == (0, 0, 0) and _rgb(image, 80, 50) == (0, 0, 0)
    assert _rgb(image, 20, 50) == pr.BODY_COLORS[1]
    low = pr.render_pose_frame(_frame([{"pose_keypoints_2d": flat}]), threshold=0.1)
    assert _rgb(low, 50, 50) == (153, 0, 0)


def _hand(wrist=(30, 30), thumb1=(30, 70)) -> list[float]:
    flat = [0.0] * 63
    flat[0:3] = [*wrist, 0.9]
    flat[3:6] = [*thumb1, 0.9]
    return flat


def test_hand_bone_and_joints():
    frame = _frame([{"pose_keypoints_2d": None, "hand_left_keypoints_2d": _hand(), "hand_right_keypoints_2d": None}])
    image = pr.render_pose_frame(frame)
    assert _rgb(image, 30, 50) == pr.HAND_EDGE_COLORS[0] == (255, 0, 0)  # edge 0 hue 0
    assert _rgb(image, 30, 30) == pr.HAND_JOINT_COLOR and _rgb(image, 30, 70) == pr.HAND_JOINT_COLOR
    assert _rgb(image, 33, 50) == (0, 0, 0)  # 2 px line
    assert _rgb(image, 0, 0) == (0, 0, 0)  # [0, 0, 0] placeholders are not drawn
    assert pr.HAND_EDGE_COLORS[5] == (128, 255, 0)  # hue 5/20 of the wheel, rounded as OpenCV rounds


def test_face_points_white_and_part_toggles():
    face = [0.0] * 210
    face[0:3] = [60, 20, 0.8]
    person = {"pose_keypoints_2d": _body({1: (20, 50), 2: (80, 50)}), "face_keypoints_2d": face,
              "hand_right_keypoints_2d": _hand((10, 80), (50, 80))}
    image = pr.render_pose_frame(_frame([person]))
    assert _rgb(image, 60, 20) == (255, 255, 255) and _rgb(image, 63, 20) == (255, 255, 255)
    assert _rgb(image, 64, 20) == (0, 0, 0)
    no_face = pr.render_pose_frame(_frame([person]), face=False)
    assert _rgb(no_face, 60, 20) == (0, 0, 0) and _rgb(no_face, 50, 50) == (153, 0, 0)
    no_body = pr.render_pose_frame(_frame([person]), body=False)
    assert _rgb(no_body, 50, 50) == (0, 0, 0) and _rgb(no_body, 30, 80) == (255, 0, 0)
    no_hands = pr.render_pose_frame(_frame([person]), hands=False)
    assert _rgb(no_hands, 30, 80) == (0, 0, 0)


def test_scaling_to_resolution_and_normalised_coordinates():
    pixels = _frame([{"pose_keypoints_2d": _body({1: (20, 25), 2: (80, 25)})}], width=100, height=50)
    normalised = _frame([{"pose_keypoints_2d": _body({1: (0.2, 1.0), 2: (0.8, 1.0)})}], width=100, height=50)
    normalised["people"][0]["pose_keypoints_2d"][3 * 1 + 1] = 0.5
    normalised["people"][0]["pose_keypoints_2d"][3 * 2 + 1] = 0.5
    assert pr.output_size(100, 50, 0) == (100, 50)
    assert pr.output_size(100, 50, 100) == (200, 100)
    assert pr.output_size(50, 100, 64) == (64, 128)
    for frame in (pixels, normalised):
        video = pr.render_pose_video([frame], resolution=100)
        assert video.shape == (1, 100, 200, 3)
        assert _rgb(video[0], 40, 50) == pr.BODY_COLORS[1] and _rgb(video[0], 160, 50) == pr.BODY_COLORS[2]
        assert _rgb(video[0], 100, 50) == (153, 0, 0)


def test_empty_frames_render_black_and_progress_is_reported():
    seen = []
    video = pr.render_pose_video([_frame([]), _frame([])], on_frame=seen.append)
    assert video.shape == (2, 100, 100, 3) and not video.any() and seen == [0, 1]
    assert pr.render_pose_video(_frame([])).shape == (1, 100, 100, 3)  # a single dict is one frame


def test_frames_of_different_sizes_and_bad_layouts_are_refused():
    with pytest.raises(pr.PoseKeypointError, match="frame 1 has a 64x64 canvas but frame 0 has 100x100"):
        pr.render_pose_video([_frame([]), _frame([], 64, 64)])
    with pytest.raises(pr.PoseKeypointError, match="canvas_width"):
        pr.render_pose_video([{"people": []}])
    with pytest.raises(pr.PoseKeypointError, match="has 17 points, expected 18"):
        pr.render_pose_video([_frame([{"pose_keypoints_2d": [1.0, 2.0, 1.0] * 17}])])
    with pytest.raises(pr.PoseKeypointError, match="triples"):
        pr.render_pose_video([_frame([{"hand_left_keypoints_2d": [1.0, 2.0]}])])
    with pytest.raises(pr.PoseKeypointError, match="non-empty"):
        pr.render_pose_video([])
