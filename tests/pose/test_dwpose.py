"""DWPose core: pre-processing, decoding, coordinate mapping, POSE_KEYPOINT layout, and the whole estimator on
tiny ONNX models with the real files' signatures."""

from __future__ import annotations

import numpy as np
import pytest

from ipa_train.pose import dwpose
from support.tiny_dwpose_models import HAND_OFFSETS, build_pose, build_weights, cross_frame

# ----------------------------------------------------------------------------------- letterbox and resize


def test_resize_linear_matches_hand_computed_opencv_values():
    row = np.array([[[0], [100]]], np.uint8).repeat(3, axis=2)  # 1 x 2
    up = dwpose.resize_linear(row, 4, 1)[0, :, 0]
    # half-pixel centres: sources -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    assert up.tolist() == [0, 25, 75, 100]
    row4 = np.array([[[0], [100], [200], [240]]], np.uint8).repeat(3, axis=2)
    down = dwpose.resize_linear(row4, 2, 1)[0, :, 0]
    assert down.tolist() == [50, 220]  # sources 0.5 and 2.5


@pytest.mark.parametrize("width,height,new_w,new_h", [(100, 50, 64, 32), (50, 100, 32, 64), (64, 64, 64, 64)])
def test_letterbox_scales_to_fit_top_left_and_pads_grey(width, height, new_w, new_h):
    image = np.full((height, width, 3), 7, np.uint8)
    padded, ratio = dwpose.letterbox(image, (64, 64))
    assert padded.shape == (64, 64, 3) and padded.dtype == np.uint8
    assert ratio == pytest.approx(min(64 / width, 64 / height))
    assert (padded[:new_h, :new_w] == 7).all()
    assert (padded[new_h:] == 114).all() and (padded[:, new_w:] == 114).all()


def test_letterbox_keeps_content_in_place():
    image = np.zeros((40, 80, 3), np.uint8)
    image[10:20, 40:60] = 255
    padded, ratio = dwpose.letterbox(image, (160, 160))  # ratio 2
    assert ratio == 2.0
    assert (padded[22:38, 82:118] == 255).all()
    assert (padded[:18, :] != 255).all() and (padded[:, :78] != 255).all()


# --------------------------------------------------------------------------------------------- detector


def _anchor_index(stride: int, gx: int, gy: int, size: int = 640) -> int:
    offset = 0
    for s in (8, 16, 32):
        if s == stride:
            return offset + gy * (size // s) + gx
        offset += (size // s) ** 2
    raise ValueError(stride)


def test_decode_yolox_boxes_classes_threshold_and_nms():
    out = np.zeros((1, 8400, 85), np.float32)
    out[..., 2:4] = np.log(1.0)
    a = _anchor_index(8, 10, 20)
    out[0, a, :6] = [0.5, 0.5, np.log(4.0), np.log(2.0), 0.9, 0.9]  # centre (84, 164), 32 x 16
    b = _anchor_index(8, 11, 20)  # a near duplicate of a, lower score: removed by NMS
    out[0, b, :6] = [-0.5, 0.5, np.log(4.0), np.log(2.0), 0.8, 0.8]
    c = _anchor_index(32, 5, 5)  # a confident non-person (class 2): ignored
    out[0, c, :4] = [0.5, 0.5, np.log(3.0), np.log(3.0)]
    out[0, c, 4], out[0, c, 5 + 2] = 0.99, 0.99
    d = _anchor_index(16, 30, 30)  # a person below the threshold
    out[0, d, :6] = [0.0, 0.0, 0.0, 0.0, 0.5, 0.5]
    boxes = dwpose.decode_yolox(out, ratio=2.0, input_size=(640, 640), score_threshold=0.3)
    assert boxes.shape == (1, 4)
    np.testing.assert_allclose(boxes[0], np.array([68, 156, 100, 172]) / 2.0, atol=1e-4)
    assert dwpose.decode_yolox(out, 2.0, (640, 640), score_threshold=0.9).shape == (0, 4)
    both = dwpose.decode_yolox(out, 1.0, (640, 640), score_threshold=0.2)
    assert len(both) == 2  # the 0.25 person far away survives NMS


def test_decode_yolox_rejects_wrong_anchor_count():
    with pytest.raises(dwpose.DWPoseModelError, match="anchors"):
        dwpose.decode_yolox(np.zeros((1, 100, 85), np.float32), 1.0, (640, 640), 0.3)


# ----------------------------------------------------------------------------- crop, SimCC, mapping back


def test_box_to_center_scale_pads_and_widens_to_three_by_four():
    center, scale = dwpose.box_to_center_scale([10, 20, 70, 100], aspect_ratio=0.75)
    np.testing.assert_allclose(center, [40, 60])
    np.testing.assert_allclose(scale, [75, 100])  # 60x80 * 1.25, already 3:4
    _, wide = dwpose.box_to_center_scale([0, 0, 100, 40], aspect_ratio=0.75)
    np.testing.assert_allclose(wide, [125, 125 / 0.75])  # widened box -> taller crop


def test_decode_simcc_hand_computed():
    simcc_x = np.zeros((1, 3, 20), np.float32)
    simcc_y = np.zeros((1, 3, 24), np.float32)
    simcc_x[0, 0, 7], simcc_y[0, 0, 3] = 0.9, 0.6
    simcc_x[0, 1, 10], simcc_y[0, 1, 5] = 0.4, 0.8
    simcc_x[0, 2] = -1.0  # nothing positive: location -1 / split
    simcc_y[0, 2] = -0.5
    locs, scores = dwpose.decode_simcc(simcc_x, simcc_y, split_ratio=2.0)
    np.testing.assert_allclose(locs[0], [[3.5, 1.5], [5.0, 2.5], [-0.5, -0.5]])
    np.testing.assert_allclose(scores[0], [0.6, 0.4, -1.0])  # the weaker axis


@pytest.mark.parametrize("shape,point", [((180, 320), (250, 40)), ((320, 180), (30, 270))])
def test_crop_and_map_back_round_trip(shape, point):
    """A marked frame pixel, found in the pose crop and mapped back, lands where it was (within a model pixel)."""
    height, width = shape
    frame = np.zeros((height, width, 3), np.uint8)
    x, y = point
    frame[y - 1 : y + 2, x - 1 : x + 2] = 255
    center, scale = dwpose.box_to_center_scale([x - 60, y - 50, x + 40, y + 90], aspect_ratio=288 / 384)
    crop = dwpose.crop_person(frame, center, scale, (288, 384))
    assert crop.shape == (384, 288, 3)
    cy, cx = np.unravel_index(crop[..., 0].astype(np.int64).argmax(), crop.shape[:2])
    back = dwpose.to_frame_coordinates(np.array([[cx, cy]], np.float64), center, scale, (288, 384))[0]
    pixel = scale[0] / 288
    assert abs(back[0] - x) <= 1 + pixel and abs(back[1] - y) <= 1 + pixel


def test_crop_outside_frame_is_black():
    frame = np.full((50, 50, 3), 200, np.uint8)
    crop = dwpose.crop_person(frame, np.array([0.0, 0.0]), np.array([100.0, 400 / 3]), (288, 384))
    # 100 / 288 frame pixels per model pixel, frame corner at model (144, 192): the frame fills cols 144..287,
    # rows 192..335; everything else lies outside the frame
    assert (crop[:190] == 0).all() and (crop[:, :142] == 0).all() and (crop[338:] == 0).all()
    assert (crop[194:334, 146:286] == 200).all()  # the outermost samples blend with the black border


# ---------------------------------------------------------------------------------- OpenPose conversion


def test_wholebody_to_openpose_order_and_neck():
    kp = np.stack([np.arange(133, dtype=np.float32), np.arange(133, dtype=np.float32) + 1000], axis=-1)[None]
    sc = np.linspace(0.1, 0.9, 133, dtype=np.float32)[None]
    out = dwpose.wholebody_to_openpose(kp, sc)
    assert out.shape == (1, 134, 3)
    coco_for_openpose = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for op, coco in enumerate(coco_for_openpose):
        if coco is not None:
            assert out[0, op, 0] == coco and out[0, op, 2] == pytest.approx(sc[0, coco])
    assert out[0, 1, 0] == 5.5 and out[0, 1, 1] == 1005.5  # neck: mean of the shoulders
    assert out[0, 1, 2] == pytest.approx(min(sc[0, 5], sc[0, 6]))
    assert out[0, dwpose.FACE_SLICE, 0].tolist() == list(range(23, 91))
    assert out[0, dwpose.LEFT_HAND_SLICE, 0].tolist() == list(range(91, 112))
    assert out[0, dwpose.RIGHT_HAND_SLICE, 0].tolist() == list(range(112, 133))


def _person(score_body=0.9, score_face=0.9, score_left=0.9, score_right=0.1):
    person = np.zeros((1, 134, 3))
    person[0, :, 0] = np.arange(134) + 10.5
    person[0, :, 1] = np.arange(134) + 20.25
    person[0, dwpose.BODY_SLICE, 2] = score_body
    person[0, 18:24, 2] = 0.9
    person[0, dwpose.FACE_SLICE, 2] = score_face
    person[0, dwpose.LEFT_HAND_SLICE, 2] = score_left
    person[0, dwpose.RIGHT_HAND_SLICE, 2] = score_right
    return person


def test_openpose_frame_layout_scores_and_thresholds():
    person = _person()
    person[0, 3, 2] = 0.2  # one body point under the threshold
    frame = dwpose.openpose_frame(person, width=640, height=360, keypoint_threshold=0.3)
    assert frame["canvas_width"] == 640 and frame["canvas_height"] == 360
    (p,) = frame["people"]
    assert set(p) == {"pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"}
    body = np.array(p["pose_keypoints_2d"]).reshape(-1, 3)
    assert body.shape == (18, 3)
    np.testing.assert_allclose(body[0], [10.5, 20.25, 0.9])  # absolute pixels, real score
    assert body[3].tolist() == [0.0, 0.0, 0.0]
    face = np.array(p["face_keypoints_2d"]).reshape(-1, 3)
    assert face.shape == (70, 3)
    np.testing.assert_allclose(face[0, :2], [24 + 10.5, 24 + 20.25])
    np.testing.assert_allclose(face[68], body[14]) and np.testing.assert_allclose(face[69], body[15])
    assert len(p["hand_left_keypoints_2d"]) == 63
    assert p["hand_right_keypoints_2d"] is None  # no point over the threshold, as the preprocessor writes it
    assert all(isinstance(v, float) for v in p["pose_keypoints_2d"])


def test_openpose_frame_without_face_or_people():
    frame = dwpose.openpose_frame(_person(score_face=0.0), 10, 10, 0.3)
    assert frame["people"][0]["face_keypoints_2d"] is None
    assert dwpose.openpose_frame(np.zeros((0, 134, 3)), 10, 20, 0.3) == {"people": [], "canvas_height": 20, "canvas_width": 10}


# --------------------------------------------------------------------------------- estimator end to end


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return build_weights(tmp_path_factory.mktemp("dwpose"))


@pytest.fixture(scope="module")
def estimator(tiny_weights):
    return dwpose.DWPoseEstimator(*tiny_weights, providers=["CPUExecutionProvider"])


def test_estimator_reads_signatures(estimator):
    assert estimator.detector_size == (640, 640)
    assert estimator.pose_size == (288, 384)
    assert estimator.simcc_split_ratio == 2.0
    assert estimator.pose_batch is None


@pytest.mark.parametrize("width,height,x0,y0", [(320, 180, 200, 60), (180, 320, 120, 200), (200, 200, 30, 170)])
def test_estimator_maps_keypoints_back_to_frame_pixels(estimator, width, height, x0, y0):
    frame = cross_frame(width, height, x0, y0)
    result = estimator(frame)
    ratio = 640 / max(width, height)
    np.testing.assert_allclose(result.boxes, [[80 / ratio, 80 / ratio, 560 / ratio, 560 / ratio]], atol=1e-3)
    assert result.keypoints.shape == (1, 133, 2) and result.scores.shape == (1, 133)
    visible = result.scores[0] > 0.3
    assert visible.sum() == 132  # all but the nose
    # keypoints sit on the stripes' crossing (4 px wide), up to one model pixel of the crop; hand points are
    # moved from there by the model's known offsets, in model pixels
    box_w, box_h = result.boxes[0, 2] - result.boxes[0, 0], result.boxes[0, 3] - result.boxes[0, 1]
    pixel = max(box_w * 1.25, box_h * 1.25 * 0.75) / 288
    pts = result.keypoints[0] - HAND_OFFSETS * pixel
    pts = pts[visible]
    assert (pts[:, 0] >= x0 - pixel - 1e-3).all() and (pts[:, 0] <= x0 + 4).all()
    assert (pts[:, 1] >= y0 - pixel - 1e-3).all() and (pts[:, 1] <= y0 + 4).all()
    hand = result.keypoints[0, 91:112]
    assert np.ptp(hand[:, 0]) == pytest.approx(20 * pixel, rel=1e-4)  # a hand 20 model pixels across


def test_float_frames_and_alpha_are_accepted(estimator):
    frame = cross_frame(160, 90, 100, 30)
    as_float = np.concatenate([frame / 255.0, np.ones((90, 160, 1))], axis=2).astype(np.float32)
    a, b = estimator(frame), estimator(as_float)
    np.testing.assert_allclose(a.keypoints, b.keypoints)


def test_estimate_video_pose_keypoint_layout_and_empty_frames(estimator):
    frames = np.stack([cross_frame(320, 180, 200, 60), np.zeros((180, 320, 3), np.uint8)])
    seen = []
    out = dwpose.estimate_video(estimator, frames, 0.3, 0.3, on_frame=seen.append)
    assert seen == [0, 1]
    assert len(out) == 2
    assert out[1] == {"people": [], "canvas_height": 180, "canvas_width": 320}  # no person in a black frame
    (person,) = out[0]["people"]
    lengths = {k: len(v) for k, v in person.items()}
    assert lengths == {"pose_keypoints_2d": 54, "face_keypoints_2d": 210, "hand_left_keypoints_2d": 63, "hand_right_keypoints_2d": 63}
    body = np.array(person["pose_keypoints_2d"]).reshape(18, 3)
    assert body[0].tolist() == [0.0, 0.0, 0.0]  # the nose scores ~0
    assert (body[1:, 2] > 0.3).all() and (body[1:, 2] < 1.0).all()  # real scores, not 1.0
    assert (np.abs(body[1:, 0] - 201.5) < 3).all() and (np.abs(body[1:, 1] - 61.5) < 3).all()  # pixels


def test_pose_model_with_fixed_batch_runs_person_by_person(tmp_path, tiny_weights, estimator):
    fixed = build_pose(tmp_path / "dw-ll_ucoco_384.onnx", batch=1)
    one_at_a_time = dwpose.DWPoseEstimator(tiny_weights[0], fixed, providers=["CPUExecutionProvider"])
    assert one_at_a_time.pose_batch == 1
    frame = cross_frame(320, 180, 200, 60)
    boxes = np.array([[40, 40, 280, 280], [10, 10, 200, 170]], np.float32)
    k1, s1 = one_at_a_time.estimate(frame, boxes)
    k2, s2 = estimator.estimate(frame, boxes)
    assert k1.shape == (2, 133, 2)
    np.testing.assert_allclose(k1, k2, atol=1e-4) and np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_frames_of_different_sizes_are_refused(estimator):
    with pytest.raises(ValueError, match="frame 1 is 100x50 but frame 0 is 320x180"):
        dwpose.estimate_video(estimator, [np.zeros((180, 320, 3), np.uint8), np.zeros((50, 100, 3), np.uint8)])
    with pytest.raises(ValueError, match="empty"):
        dwpose.estimate_video(estimator, [])
    with pytest.raises(ValueError, match="RGB"):
        estimator(np.zeros((10, 10), np.uint8))


# ------------------------------------------------------------------------------------ weights and errors


def test_find_weights_first_folder_wins_and_missing_files_are_named(tmp_path, tiny_weights):
    empty, full = tmp_path / "empty", tiny_weights[0].parent
    empty.mkdir()
    assert dwpose.find_weights([empty, full], install_dir="/models/dwpose") == tiny_weights
    (empty / "yolox_l.onnx").write_bytes(tiny_weights[0].read_bytes())
    det, pose = dwpose.find_weights([empty, full], install_dir="/models/dwpose")
    assert det == empty / "yolox_l.onnx" and pose == tiny_weights[1]
    with pytest.raises(dwpose.DWPoseWeightsMissing) as info:
        dwpose.find_weights([tmp_path / "nowhere"], install_dir="/models/dwpose")
    message = str(info.value)
    for text in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx", "/models/dwpose", "https://huggingface.co/yzd-v/DWPose", str(tmp_path / "nowhere")):
        assert text in message
    with pytest.raises(dwpose.DWPoseWeightsMissing) as info:
        dwpose.find_weights([empty], install_dir="/models/dwpose")
    assert "dw-ll_ucoco_384.onnx" in str(info.value) and "- yolox_l.onnx" not in str(info.value)


def test_corrupt_onnx_gives_a_clear_error(tmp_path, tiny_weights):
    broken = tmp_path / "dw-ll_ucoco_384.onnx"
    broken.write_bytes(tiny_weights[1].read_bytes()[:1000])  # an interrupted download
    with pytest.raises(dwpose.DWPoseModelError) as info:
        dwpose.DWPoseEstimator(tiny_weights[0], broken, providers=["CPUExecutionProvider"])
    assert str(broken) in str(info.value) and "not a valid ONNX model" in str(info.value)
    assert "https://huggingface.co/yzd-v/DWPose" in str(info.value)


def test_swapped_files_give_a_clear_error(tiny_weights):
    with pytest.raises(dwpose.DWPoseModelError, match="swap"):
        dwpose.DWPoseEstimator(tiny_weights[1], tiny_weights[0], providers=["CPUExecutionProvider"])


def test_select_providers_prefers_cuda():
    assert dwpose.select_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert dwpose.select_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert dwpose.select_providers()[-1] == "CPUExecutionProvider"
