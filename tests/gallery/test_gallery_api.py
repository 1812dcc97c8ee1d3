"""The gallery's HTTP routes on a standalone aiohttp app built from the same handlers ComfyUI registers."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading

import pytest
from PIL import Image
from yarl import URL

from ipa_train.data.layout import SAMPLES_DIR
from ipa_train.data.manifest import read_manifest, update_entries
from ipa_train.data.marks import set_status
from ipa_train.data.samples import add_sample, create_dataset
from support.gallery_fixture import make_dataset, serve, tiny_tensors


@pytest.fixture()
def root(tmp_path):
    root = tmp_path / "ipa_datasets"
    make_dataset(root, "hands_v1", count=6)
    return root


def test_lists_datasets_with_counts(root):
    create_dataset(root, "empty_one")
    (root / "not_a_dataset").mkdir()

    async def scenario(client):
        response = await client.get("/ipa/datasets")
        assert response.status == 200
        return await response.json()

    body = serve(root, scenario)
    assert [d["name"] for d in body["datasets"]] == ["empty_one", "hands_v1"]
    assert body["datasets"][1]["counts"] == {"pending": 6, "preferred": 0, "rejected": 0}
    assert body["datasets"][1]["total"] == 6


def test_missing_root_lists_nothing(tmp_path):
    async def scenario(client):
        return await (await client.get("/ipa/datasets")).json()

    assert serve(tmp_path / "nowhere", scenario)["datasets"] == []


def test_paging_filter_and_sort(root):
    path = root / "hands_v1"
    ids_by_seed = {e["seed"]: e["id"] for e in read_manifest(path)}
    set_status(path, [ids_by_seed[101], ids_by_seed[103]], "preferred")
    set_status(path, [ids_by_seed[102]], "rejected")
    update_entries(path, {ids_by_seed[100]: {"hand_score": 0.2}, ids_by_seed[104]: {"hand_score": 0.9}})

    async def scenario(client):
        async def get(query):
            response = await client.get("/ipa/datasets/hands_v1/samples", params=query)
            assert response.status == 200, await response.text()
            return await response.json()

        return (
            await get({"sort": "seed", "order": "asc", "limit": "4"}),
            await get({"sort": "seed", "order": "asc", "limit": "4", "offset": "4"}),
            await get({"status": "preferred", "sort": "seed", "order": "desc"}),
            await get({"status": "pending,rejected", "sort": "seed", "order": "asc"}),
            await get({"sort": "hand_score", "order": "desc"}),
            await get({"sort": "hand_score", "order": "asc"}),
        )

    first, second, preferred, mixed, best, worst = serve(root, scenario)
    assert [s["seed"] for s in first["samples"]] == [100, 101, 102, 103]
    assert [s["seed"] for s in second["samples"]] == [104, 105]
    assert first["total"] == second["total"] == 6
    assert first["counts"] == {"pending": 3, "preferred": 2, "rejected": 1}
    assert [s["seed"] for s in preferred["samples"]] == [103, 101] and preferred["total"] == 2
    assert [s["seed"] for s in mixed["samples"]] == [100, 102, 104, 105]
    # Scored samples first in either order; unscored ones after them.
    assert [s["seed"] for s in best["samples"]][:2] == [104, 100]
    assert [s["seed"] for s in worst["samples"]][:2] == [100, 104]
    assert all("content_hash" not in s for s in first["samples"])
    assert first["samples"][0]["files"] == ["preview.webp"]


@pytest.mark.parametrize(
    "query, message",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "100000"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "x"}, "whole numbers"),
        ({"status": "liked"}, "unknown status"),
        ({"sort": "name"}, "unknown sort"),
        ({"order": "up"}, "order"),
    ],
)
def test_bad_listing_parameters_are_400(root, query, message):
    async def scenario(client):
        response = await client.get("/ipa/datasets/hands_v1/samples", params=query)
        return response.status, await response.json()

    status, body = serve(root, scenario)
    assert status == 400 and message in body["error"]


def test_listing_never_opens_tensors_or_meta(root):
    # Tensor and meta files gone: listing still works from the manifest alone.
    for folder in (root / "hands_v1" / "samples").iterdir():
        (folder / "tensors.safetensors").unlink()
        (folder / "meta.json").unlink()

    async def scenario(client):
        response = await client.get("/ipa/datasets/hands_v1/samples")
        return response.status, await response.json()

    status, body = serve(root, scenario)
    assert status == 200 and len(body["samples"]) == 6 and body["samples"][0]["prompt"].startswith("a dancer")


def test_listing_sees_new_samples_and_marks_at_once(root):
    path = root / "hands_v1"

    async def scenario(client):
        before = await (await client.get("/ipa/datasets/hands_v1/samples")).json()
        added = add_sample(path, tiny_tensors(999), summary={"seed": 999})  # a running graph collects
        set_status(path, [added.sample_id], "rejected")
        after = await (await client.get("/ipa/datasets/hands_v1/samples")).json()
        return before, after

    before, after = serve(root, scenario)
    assert before["total"] == 6 and after["total"] == 7
    assert after["counts"]["rejected"] == 1


def test_sample_detail_files_and_hand_crops(root):
    sample_id = read_manifest(root / "hands_v1")[0]["id"]

    async def scenario(client):
        base = f"/ipa/datasets/hands_v1/samples/{sample_id}"
        detail = await (await client.get(base)).json()
        preview = await client.get(f"{base}/files/preview.webp")
        preview_bytes = await preview.read()
        crop = await client.get(f"{base}/hands/0.webp")
        crop_bytes = await crop.read()
        missing_track = await client.get(f"{base}/hands/5.webp")
        return detail, preview.status, preview.headers["Content-Type"], preview_bytes, crop.status, crop_bytes, missing_track.status

    detail, preview_status, preview_type, preview_bytes, crop_status, crop_bytes, missing_status = serve(root, scenario)
    assert detail["meta"]["seed"] == 100 and detail["meta"]["steps"] == 20
    assert detail["entry"]["id"] == sample_id and detail["files"] == ["preview.webp"] and detail["hand_tracks"] == 2
    assert preview_status == 200 and preview_type == "image/webp"
    assert preview_bytes == (root / "hands_v1" / "samples" / sample_id / "preview.webp").read_bytes()
    assert crop_status == 200 and missing_status == 404
    with Image.open(io.BytesIO(crop_bytes)) as crop:
        assert crop.size == (192, 192) and crop.n_frames == 8
        # The crop follows the drawn hand: its centre is the hand's skin colour in every frame.
        for index in range(crop.n_frames):
            crop.seek(index)
            r, g, b = crop.convert("RGB").getpixel((96, 96))
            assert abs(r - 250) < 30 and abs(g - 220) < 30 and abs(b - 190) < 30, (index, (r, g, b))


def test_large_meta_fields_are_left_out_of_the_detail(root):
    sample_id = read_manifest(root / "hands_v1")[0]["id"]
    meta_file = root / "hands_v1" / "samples" / sample_id / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["pose_keypoints"] = [[0.5] * 200] * 100
    meta_file.write_text(json.dumps(meta))

    async def scenario(client):
        return await (await client.get(f"/ipa/datasets/hands_v1/samples/{sample_id}")).json()

    detail = serve(root, scenario)
    assert "pose_keypoints" not in detail["meta"] and detail["omitted"] == ["pose_keypoints"]


def test_marks_are_saved_to_the_manifest(root):
    path = root / "hands_v1"
    ids = [e["id"] for e in read_manifest(path)]

    async def scenario(client):
        one = await client.post("/ipa/datasets/hands_v1/marks", json={"ids": [ids[0]], "status": "preferred"})
        many = await client.post("/ipa/datasets/hands_v1/marks", json={"ids": ids[1:4], "status": "rejected"})
        # Undo of a bulk mark: mixed statuses in one request.
        mixed = await client.post(
            "/ipa/datasets/hands_v1/marks",
            json={"marks": [{"id": ids[1], "status": "pending"}, {"id": ids[2], "status": "preferred"}]},
        )
        return [(r.status, await r.json()) for r in (one, many, mixed)]

    (s1, b1), (s2, b2), (s3, b3) = serve(root, scenario)
    assert (s1, s2, s3) == (200, 200, 200)
    assert b1["updated"][0]["id"] == ids[0] and b1["counts"]["preferred"] == 1
    assert b2["counts"] == {"pending": 2, "preferred": 1, "rejected": 3}
    assert b3["counts"] == {"pending": 3, "preferred": 2, "rejected": 1}
    on_disk = {e["id"]: e["status"] for e in read_manifest(path)}
    assert on_disk[ids[0]] == "preferred" and on_disk[ids[1]] == "pending" and on_disk[ids[2]] == "preferred"
    assert on_disk[ids[3]] == "rejected" and on_disk[ids[4]] == on_disk[ids[5]] == "pending"


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"not json", 400, "must be JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"{}", 400, "nothing to mark"),
        (b'{"ids": [], "status": "preferred"}', 400, "no samples"),
        (b'{"ids": "abc", "status": "preferred"}', 400, "must be a list"),
        (b'{"ids": ["0123456789abcdef"], "status": "good"}', 400, "unknown status"),
        (b'{"ids": ["../../etc"], "status": "preferred"}', 400, "invalid sample id"),
        (b'{"marks": [{"id": "0123456789abcdef", "status": "preferred"}]}', 404, "unknown sample"),
        (b'{"marks": "x"}', 400, "list of objects"),
    ],
)
def test_bad_mark_bodies_change_nothing(root, body, status, message):
    before = (root / "hands_v1" / "manifest.jsonl").read_bytes()

    async def scenario(client):
        response = await client.post("/ipa/datasets/hands_v1/marks", data=body, headers={"Content-Type": "application/json"})
        return response.status, await response.json()

    got_status, got = serve(root, scenario)
    assert got_status == status and message in got["error"]
    # nothing written: neither the manifest nor the status journal (where marks go since format 2)
    assert (root / "hands_v1" / "manifest.jsonl").read_bytes() == before and not (root / "hands_v1" / "marks.jsonl").exists()


def test_conflicting_duplicate_marks_are_refused(root):
    sample_id = read_manifest(root / "hands_v1")[0]["id"]

    async def scenario(client):
        body = {"marks": [{"id": sample_id, "status": "preferred"}, {"id": sample_id, "status": "rejected"}]}
        response = await client.post("/ipa/datasets/hands_v1/marks", json=body)
        return response.status, await response.json()

    status, body = serve(root, scenario)
    assert status == 400 and "two different statuses" in body["error"]


def test_concurrent_marks_and_collection_lose_nothing(root):
    path = root / "hands_v1"
    for seed in range(200, 224):
        add_sample(path, tiny_tensors(seed), summary={"seed": seed})
    ids = [e["id"] for e in read_manifest(path)]
    wanted = {sample_id: ("preferred" if i % 3 == 0 else "rejected") for i, sample_id in enumerate(ids)}
    collected = []

    def collect():  # a graph collecting new samples while the creator marks
        for seed in range(500, 510):
            collected.append(add_sample(path, tiny_tensors(seed), summary={"seed": seed}).sample_id)

    async def scenario(client):
        writer = threading.Thread(target=collect)
        writer.start()
        responses = await asyncio.gather(
            *(client.post("/ipa/datasets/hands_v1/marks", json={"ids": [i], "status": s}) for i, s in wanted.items())
        )
        await asyncio.to_thread(writer.join)
        return [r.status for r in responses]

    statuses = serve(root, scenario)
    assert statuses == [200] * len(wanted)
    on_disk = {e["id"]: e["status"] for e in read_manifest(path)}
    assert {i: on_disk[i] for i in wanted} == wanted
    assert all(on_disk[i] == "pending" for i in collected) and len(on_disk) == len(wanted) + 10


# ------------------------------------------------------------------------------------------------ path safety


@pytest.fixture()
def guarded_root(root, tmp_path):
    """A dataset outside the root ("secret") and symlinks inside the root that lead to it."""
    secret_path, secret_ids = make_dataset(tmp_path / "elsewhere", "secret", count=1, first_seed=7000)
    os.symlink(secret_path, root / "linked")
    real = root / "hands_v1" / "samples" / read_manifest(root / "hands_v1")[0]["id"]
    os.symlink(tmp_path / "elsewhere" / "secret" / "samples" / secret_ids[0] / "preview.webp", real / "leak.webp")
    outside_secret = tmp_path / "outside.webp"
    outside_secret.write_bytes(b"RIFF secret")
    # A sample folder that is a symlink out of the dataset, listed in the manifest.
    fake_id = "feedfacefeedface"
    os.symlink(secret_path / "samples" / secret_ids[0], root / "hands_v1" / "samples" / fake_id)
    entries = read_manifest(root / "hands_v1")
    entries.append({"id": fake_id, "status": "pending", "created": "x", "updated": "x", "content_hash": "0"})
    (root / "hands_v1" / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return root, real.name, fake_id, secret_ids[0]


TRAVERSALS = [
    "/ipa/datasets/../samples",
    "/ipa/datasets/%2E%2E/samples",
    "/ipa/datasets/..%2Felsewhere%2Fsecret/samples",
    "/ipa/datasets/%2E%2E%2Felsewhere%2Fsecret/samples",
    "/ipa/datasets/%2Ftmp/samples",
    "/ipa/datasets/%2F%2Fetc/samples",
    "/ipa/datasets/linked/samples",
    "/ipa/datasets/secret/samples",
    "/ipa/datasets/.hidden/samples",
    "/ipa/datasets/hands_v1%2F..%2F..%2Felsewhere%2Fsecret/samples",
    "/ipa/datasets/hands_v1/samples/..%2F..%2Fmanifest.jsonl",
    "/ipa/datasets/hands_v1/samples/%2E%2E/files/preview.webp",
    "/ipa/datasets/hands_v1/samples/{real}/files/..%2Fmeta.json",
    "/ipa/datasets/hands_v1/samples/{real}/files/%2E%2E%2F%2E%2E%2Fmanifest.jsonl",
    "/ipa/datasets/hands_v1/samples/{real}/files/tensors.safetensors",
    "/ipa/datasets/hands_v1/samples/{real}/files/meta.json",
    "/ipa/datasets/hands_v1/samples/{real}/files/leak.webp",
    "/ipa/datasets/hands_v1/samples/{fake}",
    "/ipa/datasets/hands_v1/samples/{fake}/files/preview.webp",
    "/ipa/datasets/hands_v1/samples/{secret}",
    "/ipa/datasets/linked/samples/{secret}/files/preview.webp",
]


def test_traversal_attempts_are_refused(guarded_root):
    root, real, fake, secret = guarded_root

    async def scenario(client):
        results = []
        for raw in TRAVERSALS:
            path = raw.format(real=real, fake=fake, secret=secret)
            response = await client.get(URL(path, encoded=True))
            results.append((path, response.status, await response.read()))
        listing = await (await client.get("/ipa/datasets")).json()
        marks = []
        for name in ("linked", "..", "%2E%2E", "%2Ftmp"):
            response = await client.post(URL(f"/ipa/datasets/{name}/marks", encoded=True), json={"ids": [secret], "status": "preferred"})
            marks.append((name, response.status))
        return results, listing, marks

    results, listing, marks = serve(root, scenario)
    for path, status, body in results:
        assert status in (400, 404), (path, status)
        # Only an error message comes back: no listing, no file bytes.
        assert b"RIFF" not in body, path
        assert body == b"404: Not Found" or list(json.loads(body)) == ["error"], (path, body)
    assert [d["name"] for d in listing["datasets"]] == ["hands_v1"]
    assert all(status in (400, 404) for _, status in marks), marks
    assert read_manifest(root.parent / "elsewhere" / "secret")[0]["status"] == "pending"


def test_unknown_dataset_and_sample_are_404(root):
    async def scenario(client):
        return [
            (await client.get("/ipa/datasets/nope/samples")).status,
            (await client.get("/ipa/datasets/hands_v1/samples/0123456789abcdef")).status,
            (await client.get("/ipa/datasets/hands_v1/samples/0123456789abcdef/files/preview.webp")).status,
            (await client.post("/ipa/datasets/nope/marks", json={"ids": ["0123456789abcdef"], "status": "preferred"})).status,
        ]

    assert serve(root, scenario) == [404, 404, 404, 404]


def test_samples_folder_symlinked_out_of_the_root_is_refused(root, tmp_path):
    """A dataset inside the root whose ``samples`` folder is a symlink to another dataset's samples outside it."""
    secret_path, secret_ids = make_dataset(tmp_path / "elsewhere", "secret", count=1, first_seed=7000)
    inside = create_dataset(root, "decoy")
    os.rmdir(inside / SAMPLES_DIR)
    os.symlink(secret_path / SAMPLES_DIR, inside / SAMPLES_DIR)
    (inside / "manifest.jsonl").write_text((secret_path / "manifest.jsonl").read_text())

    async def scenario(client):
        out = []
        for suffix in ("", "/files/preview.webp", "/hands/0.webp"):
            response = await client.get(f"/ipa/datasets/decoy/samples/{secret_ids[0]}{suffix}")
            out.append((suffix, response.status, await response.read()))
        return out

    for suffix, status, body in serve(root, scenario):
        assert status == 404, (suffix, status)
        assert b"RIFF" not in body and b"7000" not in body, suffix
