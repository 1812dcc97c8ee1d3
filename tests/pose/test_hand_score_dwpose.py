"""Hand scoring end to end with DWPose itself (ipa_train.pose.dwpose on onnxruntime, tiny ONNX files with the real
files' names and signatures): POST starts the job, the previews go through the person detector and the pose
model, the scores land in the manifest and the listing sorts by them."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from ipa_train.data.samples import add_sample, create_dataset
from ipa_train.gallery.api import create_app
from ipa_train.gallery.hand_score_jobs import dwpose_source
from ipa_train.pose import dwpose
from support.gallery_fixture import tiny_tensors

pytest.importorskip("onnxruntime")
from support import tiny_dwpose_models as tiny  # noqa: E402

WIDTH, HEIGHT, FRAMES = 160, 96, 6


def video(x: int, y: int):
    """A moving bright cross: the tiny pose model puts the person's keypoints (hands spread around) on it."""
    return [tiny.cross_frame(WIDTH, HEIGHT, x + 3 * i, y + i) for i in range(FRAMES)]


def webp(frames) -> bytes:
    out = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(out, format="WEBP", save_all=True, append_images=images[1:], duration=100, loop=0, lossless=True)
    return out.getvalue()


@pytest.fixture()
def weights(tmp_path):
    folder = tmp_path / "models" / "dwpose"
    tiny.build_weights(folder)
    return folder


def test_score_hands_with_dwpose_and_sort_by_the_score(tmp_path, weights):
    root = tmp_path / "ipa_datasets"
    path = create_dataset(root, "hands_v1")
    estimator = dwpose.DWPoseEstimator(weights / dwpose.DETECTOR_FILE, weights / dwpose.POSE_FILE, providers=["CPUExecutionProvider"])
    # The driving pose is what DWPose sees in the video that drove the generation (here: the cross at 50, 30).
    driving = dwpose.estimate_video(estimator, video(50, 30))
    assert any(p["hand_left_keypoints_2d"] for f in driving for p in f["people"])
    ids = {}
    for seed, (name, frames) in enumerate([("off", video(110, 60)), ("good", video(50, 30)), ("close", video(53, 31)), ("unposed", video(50, 30))]):
        meta = {"seed": seed, "video_size": [WIDTH, HEIGHT]}
        if name != "unposed":
            meta["driving_pose"] = driving
        result = add_sample(path, tiny_tensors(seed), meta=meta, previews={"preview.webp": webp(frames)}, summary={"seed": seed})
        ids[name] = result.sample_id

    async def scenario():
        client = TestClient(TestServer(create_app(root, hand_scoring=dwpose_source(lambda: [weights], lambda: weights))))
        await client.start_server()
        try:
            url = "/ipa/datasets/hands_v1/hand_scores"
            assert (await (await client.get(url)).json())["available"] is True
            assert (await client.post(url)).status == 202
            deadline = time.monotonic() + 60
            while True:
                status = await (await client.get(url)).json()
                if status["job"]["state"] not in ("starting", "running") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            listing = await client.get("/ipa/datasets/hands_v1/samples", params={"sort": "hand_score", "order": "desc"})
            return status, (await listing.json())["samples"]
        finally:
            await client.close()

    status, samples = asyncio.run(scenario())
    assert status["job"]["state"] == "done", status
    assert status["job"]["counts"] == {"scored": 3, "skipped": 1, "failed": 0} and status["scored"] == 3
    assert [s["id"] for s in samples] == [ids["good"], ids["close"], ids["off"], ids["unposed"]]
    scores = {s["id"]: s.get("hand_score") for s in samples}
    assert scores[ids["good"]] > 0.6 and scores[ids["off"]] < 0.1 and scores[ids["unposed"]] is None
    assert scores[ids["good"]] >= scores[ids["close"]] > scores[ids["off"]]
    detail = {s["id"]: s for s in samples}[ids["good"]]["hand_score_detail"]
    assert detail["agreement"] == 1.0 and detail["frames_scored"] == FRAMES
