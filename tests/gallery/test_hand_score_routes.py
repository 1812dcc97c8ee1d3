"""The hand score routes on the standalone app with a stand-in detector: a background job per dataset with
progress, 409 while one runs, cancelling (DELETE or a cancel body), failures recorded, and the answer when no
detector weights are present (the rest of the gallery unchanged)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ipa_train.data.manifest import read_manifest
from ipa_train.gallery.api import GALLERY_API_KEY, create_app
from ipa_train.gallery.hand_score_jobs import DetectorSource, DetectorUnavailable, dwpose_source
from support.gallery_fixture import add_driving_poses, make_dataset, skin_detector

URL = "/ipa/datasets/hands_v1/hand_scores"


class GatedDetector:
    """The fixture's skin detector, one frame at a time, each frame waiting for the test to let it through."""

    def __init__(self):
        self.gate = threading.Semaphore(0)
        self.frames = 0
        self.loads: list[bool] = []

    def source(self) -> DetectorSource:
        def load(use_gpu: bool):
            self.loads.append(use_gpu)
            return self.detect

        return DetectorSource(check=lambda: None, load=load)

    def detect(self, frames):
        assert len(frames) == 1  # the job feeds frames one by one, so a cancel lands within a sample
        if not self.gate.acquire(timeout=20):
            raise TimeoutError("the test never released this frame")
        self.frames += 1
        return skin_detector(frames)

    def release(self, frames: int) -> None:
        for _ in range(frames):
            self.gate.release()


def serve(root, scenario, hand_scoring=None):
    async def main():
        app = create_app(root, hand_scoring=hand_scoring)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            return await scenario(client, app[GALLERY_API_KEY])
        finally:
            await client.close()

    return asyncio.run(main())


async def wait_for(client, predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        body = await (await client.get(URL)).json()
        if predicate(body) or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.02)


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "ipa_datasets"
    path, ids = make_dataset(root, "hands_v1", count=4)
    add_driving_poses(path, ids, wrong=(1,), missing=(3,))
    return root, path, ids


def test_job_progress_conflict_cancel_and_resume(dataset):
    root, path, ids = dataset
    detector = GatedDetector()
    frames_per_sample = 8  # the fixture previews have 8 frames

    async def scenario(client, api):
        before = await (await client.get(URL)).json()
        assert before["available"] is True and before["job"] is None and before["scored"] == 0 and before["total"] == 4

        started = await client.post(URL)
        assert started.status == 202
        assert (await started.json())["job"]["device"] == "cpu"  # CPU unless asked
        body = await wait_for(client, lambda b: b["job"]["state"] == "running" and b["job"]["total"] == 4)
        assert body["job"]["done"] == 0

        again = await client.post(URL, json={"rescore": True})
        assert again.status == 409
        conflict = await again.json()
        assert "already running" in conflict["error"] and conflict["job"]["state"] == "running"

        detector.release(frames_per_sample + 3)  # the first sample, and 3 frames into the second
        body = await wait_for(client, lambda b: b["job"]["done"] == 1 and detector.frames == frames_per_sample + 3)
        assert body["job"]["state"] == "running" and body["job"]["total"] == 4

        cancelled = await client.delete(URL)
        assert cancelled.status == 200 and (await cancelled.json())["cancelled"] is True
        detector.release(1)  # the frame in flight finishes; the next one sees the cancel
        body = await wait_for(client, lambda b: b["job"]["state"] == "cancelled")
        assert body["job"]["counts"] == {"scored": 1, "skipped": 0, "failed": 0}
        assert body["job"]["error"] is None and body["job"]["finished"] >= body["job"]["started"]
        assert body["scored"] == 1  # the sample finished before the cancel was written to the manifest
        assert detector.frames == frames_per_sample + 4

        nothing = await client.delete(URL)
        assert nothing.status == 200 and (await nothing.json())["cancelled"] is False

        # Again, on the GPU as a setting would ask: the rest is scored; sample 3 has no driving pose.
        detector.release(1000)
        resumed = await client.post(URL, json={"gpu": True})
        assert resumed.status == 202 and (await resumed.json())["job"]["device"] == "gpu"
        body = await wait_for(client, lambda b: b["job"]["state"] == "done")
        assert body["job"]["counts"] == {"scored": 2, "skipped": 1, "failed": 0}
        assert body["job"]["done"] == body["job"]["total"] == 3 and body["scored"] == 3

        listing = await (await client.get("/ipa/datasets/hands_v1/samples", params={"sort": "hand_score", "order": "desc"})).json()
        return [s["id"] for s in listing["samples"]], [s.get("hand_score") for s in listing["samples"]]

    order, scores = serve(root, scenario, detector.source())
    assert detector.loads == [False, True]
    assert order[-2:] == [ids[1], ids[3]] and scores[-1] is None and scores[0] > 0.9 and scores[-2] < 0.2


def test_cancel_body_and_a_failing_detector(dataset):
    root, path, ids = dataset
    detector = GatedDetector()

    async def scenario(client, api):
        assert (await client.post(URL, json={})).status == 202
        await wait_for(client, lambda b: b["job"]["state"] == "running")
        stop = await client.post(URL, json={"cancel": True})
        assert stop.status == 200 and (await stop.json())["job"]["state"] == "cancelling"
        detector.release(1)
        body = await wait_for(client, lambda b: b["job"]["state"] == "cancelled")
        assert body["scored"] == 0

        def broken_load(use_gpu):
            raise RuntimeError("the ONNX session could not be created")

        api.hand_scoring = DetectorSource(check=lambda: None, load=broken_load)
        assert (await client.post(URL)).status == 202
        body = await wait_for(client, lambda b: b["job"]["state"] == "failed")
        assert "RuntimeError: the ONNX session could not be created" in body["job"]["error"]

        for bad in ('{"rescore": "yes"}', '{"everything": true}', "[1]", "not json"):
            response = await client.post(URL, data=bad, headers={"Content-Type": "application/json"})
            assert response.status == 400, bad
            assert "rescore" in (await response.json())["error"]
        assert (await client.get("/ipa/datasets/nope/hand_scores")).status == 404
        assert (await client.post("/ipa/datasets/..%2F..%2Fetc/hand_scores")).status in (400, 404)

    serve(root, scenario, detector.source())


def test_without_weights_the_route_says_what_to_install_and_the_gallery_works(dataset, tmp_path):
    root, path, ids = dataset
    install_dir = tmp_path / "models" / "dwpose"
    source = dwpose_source(lambda: [install_dir, tmp_path / "elsewhere"], lambda: install_dir)

    async def scenario(client, api):
        status = await (await client.get(URL)).json()
        assert status["available"] is False and status["job"] is None
        assert status["unavailable"]["missing_files"] == ["yolox_l.onnx", "dw-ll_ucoco_384.onnx"]
        assert status["unavailable"]["install_dir"] == str(install_dir)
        response = await client.post(URL)
        assert response.status == 503
        body = await response.json()
        for text in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx", str(install_dir), "huggingface.co/yzd-v/DWPose", "Nothing is downloaded"):
            assert text in body["error"]
        # One file present: only the other is asked for.
        install_dir.mkdir(parents=True)
        (install_dir / "yolox_l.onnx").write_bytes(b"x")
        body = await (await client.post(URL)).json()
        assert body["missing_files"] == ["dw-ll_ucoco_384.onnx"]
        # The gallery itself is unchanged: listing, sorting by the (absent) score, marking.
        listing = await (await client.get("/ipa/datasets/hands_v1/samples", params={"sort": "hand_score"})).json()
        assert listing["total"] == 4 and all("hand_score" not in s for s in listing["samples"])
        marked = await client.post("/ipa/datasets/hands_v1/marks", json={"ids": [ids[0]], "status": "preferred"})
        assert marked.status == 200

    serve(root, scenario, source)
    assert all(e.get("hand_score") is None for e in read_manifest(path))


def test_a_server_without_a_detector_explains_it(dataset):
    root, path, ids = dataset

    async def scenario(client, api):
        status = await (await client.get(URL)).json()
        assert status["available"] is False and "yolox_l.onnx" in status["unavailable"]["message"]
        response = await client.post(URL)
        assert response.status == 503 and "dw-ll_ucoco_384.onnx" in (await response.json())["error"]

    serve(root, scenario, None)


def test_detector_unavailable_is_reported_from_check(dataset):
    root, path, ids = dataset

    def check():
        raise DetectorUnavailable("put the files somewhere", ["a.onnx"], "/models/x")

    async def scenario(client, api):
        body = await (await client.post(URL)).json()
        assert body == {"error": "put the files somewhere", "message": "put the files somewhere", "missing_files": ["a.onnx"], "install_dir": "/models/x"}

    serve(root, scenario, DetectorSource(check=check, load=lambda gpu: skin_detector))
