"""Scoring a dataset's hands end to end: preview frames -> a pose detector -> hand score -> manifest -> the
gallery's listing sorted by score. The detector here is a small pixel-based one that finds the fixture's drawn
hands, standing in for DWPose."""

from __future__ import annotations

import asyncio
import json

import pytest

from ipa_train.data.manifest import read_manifest
from ipa_train.gallery.api import create_app
from ipa_train.gallery.hand_scoring import ScoringCancelled, fit_driving_pose, score_dataset, score_sample
from support.gallery_fixture import PREVIEW_SIZE, add_driving_poses, hand_boxes, hand_from_box, make_dataset, skin_detector


@pytest.fixture()
def dataset(tmp_path):
    path, ids = make_dataset(tmp_path / "root", "hands_v1", count=4)
    add_driving_poses(path, ids, wrong=(1,), missing=(3,))  # 1: the driving pose put the hands elsewhere
    return path, ids


def test_score_sample_agrees_with_the_drawn_hands(dataset):
    path, ids = dataset
    good = score_sample(path, ids[0], skin_detector)
    bad = score_sample(path, ids[1], skin_detector)
    assert good["hand_score"] > 0.9 and good["hand_score_detail"]["frames_scored"] == 8
    assert bad["hand_score"] < 0.2
    assert score_sample(path, ids[3], skin_detector) is None


def test_score_dataset_stores_scores_and_the_gallery_sorts_by_them(dataset):
    path, ids = dataset
    seen = []
    counts = score_dataset(path, skin_detector, progress=lambda done, total: seen.append((done, total)), batch=2)
    assert counts == {"scored": 3, "skipped": 1, "failed": 0} and seen[-1] == (4, 4)
    by_id = {e["id"]: e for e in read_manifest(path)}
    assert by_id[ids[0]]["hand_score"] > 0.9 and by_id[ids[1]]["hand_score"] < 0.2 and "hand_score" not in by_id[ids[3]]
    # Already scored samples are left alone unless asked.
    assert score_dataset(path, skin_detector) == {"scored": 0, "skipped": 1, "failed": 0}

    async def listing():
        from aiohttp.test_utils import TestClient, TestServer

        client = TestClient(TestServer(create_app(path.parent)))
        await client.start_server()
        try:
            response = await client.get("/ipa/datasets/hands_v1/samples", params={"sort": "hand_score", "order": "desc"})
            return await response.json()
        finally:
            await client.close()

    order = [s["id"] for s in asyncio.run(listing())["samples"]]
    assert order[-2:] == [ids[1], ids[3]]  # worst scored, then the unscored one


def test_cancel_keeps_the_work_done(dataset):
    path, ids = dataset
    calls = []
    counts = score_dataset(path, skin_detector, cancelled=lambda: len(calls) >= 2, progress=lambda d, t: calls.append(d), batch=10)
    assert counts["scored"] == 1
    assert sum(1 for e in read_manifest(path) if e.get("hand_score") is not None) == 1


def test_a_broken_detector_is_recorded_not_fatal(dataset):
    path, ids = dataset
    counts = score_dataset(path, lambda frames: [], sample_ids=[ids[0]])
    assert counts == {"scored": 0, "skipped": 0, "failed": 1}
    entry = {e["id"]: e for e in read_manifest(path)}[ids[0]]
    assert "returned 0 frames" in entry["hand_score_error"]


def test_driving_pose_from_a_larger_canvas_is_centre_cropped_onto_the_video(dataset):
    """The collector stores the pose as given (its own canvas); WanVaceToVideo centre-crops the control video to
    the video's aspect, so the pose is mapped the same way before comparing."""
    path, ids = dataset
    meta_file = path / "samples" / ids[0] / "meta.json"
    meta = json.loads(meta_file.read_text())
    # The same hands on a 2:1 canvas (384x192) of which the 160x96 video (5:3) shows the middle 320 columns at half size.
    width, height = PREVIEW_SIZE
    crop_x = 32
    canvas_w, canvas_h = width * 2 + 2 * crop_x, height * 2

    def on_canvas(box):
        x0, y0, x1, y1 = box
        return [2 * x0 + crop_x, 2 * y0, 2 * x1 + crop_x, 2 * y1]

    meta["driving_pose"] = [
        {"people": [{"hand_left_keypoints_2d": hand_from_box(on_canvas(frame[0])), "hand_right_keypoints_2d": hand_from_box(on_canvas(frame[1]))}],
         "canvas_width": canvas_w, "canvas_height": canvas_h}
        for frame in hand_boxes(meta["seed"])
    ]  # fmt: skip
    meta["video_size"] = [width, height]
    meta_file.write_text(json.dumps(meta))
    assert score_sample(path, ids[0], skin_detector)["hand_score"] > 0.9
    # Stretched instead (the wrong fit) the hands land elsewhere and the score drops.
    meta["driving_pose_resize"] = "stretch"
    meta_file.write_text(json.dumps(meta))
    assert score_sample(path, ids[0], skin_detector)["hand_score"] < 0.5


def test_fit_driving_pose_drops_points_cropped_away_and_reads_normalised_values():
    left = [0.05, 0.5, 1.0] + [0.5, 0.5, 1.0] * 20  # first point in the strip cropped off a 2:1 canvas fitted to 1:1
    frames = fit_driving_pose([{"people": [{"hand_left_keypoints_2d": left}], "canvas_width": 200, "canvas_height": 100}, None], 50, 50, "crop")
    points = frames[0]["people"][0]["hand_left_keypoints_2d"]
    assert points[:3] == [0.0, 0.0, 0.0]
    assert points[3:6] == pytest.approx([25.0, 25.0, 1.0])
    assert frames[1] == {"people": [], "canvas_width": 50, "canvas_height": 50}
    with pytest.raises(ValueError, match="driving_pose_resize"):
        fit_driving_pose([], 50, 50, "squash")


def test_no_driving_hand_skips_without_running_the_detector(dataset):
    path, ids = dataset
    meta_file = path / "samples" / ids[0] / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["driving_pose"] = [{"people": [{"hand_left_keypoints_2d": None}], "canvas_width": 10, "canvas_height": 10}]
    meta_file.write_text(json.dumps(meta))

    def detector(frames):
        raise AssertionError("the detector must not run when the driving pose shows no hand")

    assert score_sample(path, ids[0], detector) is None


def test_a_cancel_inside_a_sample_keeps_the_samples_before(dataset):
    path, ids = dataset
    calls = []

    def detector(frames):
        calls.append(len(frames))
        if len(calls) == 2:
            raise ScoringCancelled()
        return skin_detector(frames)

    counts = score_dataset(path, detector, batch=10)
    assert counts == {"scored": 1, "skipped": 0, "failed": 0}
    scored = [e["id"] for e in read_manifest(path) if e.get("hand_score") is not None]
    assert len(scored) == 1
