"""Scoring a dataset's hands end to end: preview frames -> a pose detector -> hand score -> manifest -> the
gallery's listing sorted by score. The detector here is a small pixel-based one that finds the fixture's drawn
hands, standing in for DWPose."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from gallery_fixture import PREVIEW_SIZE, hand_boxes
from gallery_fixture import make_dataset
from ipa_train import dataset as ds
from ipa_train.gallery_api import create_app
from ipa_train.hand_scoring import score_dataset, score_sample

GRID = [(fx, fy) for fy in (0.1, 0.3, 0.5, 0.7, 0.9) for fx in (0.1, 0.3, 0.5, 0.7, 0.9)][:21]


def hand_from_box(box, confidence=1.0):
    x0, y0, x1, y1 = box
    return [v for fx, fy in GRID for v in (x0 + fx * (x1 - x0), y0 + fy * (y1 - y0), confidence)]


def pose_frame(boxes):
    people = [{"hand_left_keypoints_2d": hand_from_box(boxes[0]), "hand_right_keypoints_2d": hand_from_box(boxes[1]) if len(boxes) > 1 else None}]
    return {"people": people, "canvas_width": PREVIEW_SIZE[0], "canvas_height": PREVIEW_SIZE[1]}


def skin_detector(frames):
    """Finds the fixture's hands: the pixels of the hand colour, left and right of the body."""
    result = []
    for frame in frames:
        rgb = frame.astype(int)
        mask = (abs(rgb[..., 0] - 250) < 12) & (abs(rgb[..., 1] - 220) < 12) & (abs(rgb[..., 2] - 190) < 12)
        boxes = []
        for columns in (slice(0, 60), slice(100, frame.shape[1])):
            ys, xs = np.nonzero(mask[:, columns])
            if len(xs):
                offset = columns.start
                boxes.append((xs.min() + offset, ys.min(), xs.max() + offset + 1, ys.max() + 1))
        result.append(pose_frame(boxes) if boxes else {"people": [], "canvas_width": frame.shape[1], "canvas_height": frame.shape[0]})
    return result


@pytest.fixture()
def dataset(tmp_path):
    path, ids = make_dataset(tmp_path / "root", "hands_v1", count=4)
    for index, sample_id in enumerate(ids):
        meta_file = path / "samples" / sample_id / "meta.json"
        meta = json.loads(meta_file.read_text())
        boxes = hand_boxes(meta["seed"])
        if index == 1:  # the driving pose put the hands elsewhere: this candidate's hands are wrong
            boxes = [[[x0 + 40, y0 + 20, x1 + 40, y1 + 20] for x0, y0, x1, y1 in frame] for frame in boxes]
        if index != 3:  # sample 3 has no driving pose: nothing to score
            meta["driving_pose"] = [pose_frame(frame) for frame in boxes]
        meta_file.write_text(json.dumps(meta))
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
    by_id = {e["id"]: e for e in ds.read_manifest(path)}
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
    counts = score_dataset(path, skin_detector, cancelled=lambda: len(calls) >= 1, progress=lambda d, t: calls.append(d), batch=10)
    assert counts["scored"] == 1
    assert sum(1 for e in ds.read_manifest(path) if e.get("hand_score") is not None) == 1


def test_a_broken_detector_is_recorded_not_fatal(dataset):
    path, ids = dataset
    counts = score_dataset(path, lambda frames: [], sample_ids=[ids[0]])
    assert counts == {"scored": 0, "skipped": 0, "failed": 1}
    entry = {e["id"]: e for e in ds.read_manifest(path)}[ids[0]]
    assert "returned 0 frames" in entry["hand_score_error"]
