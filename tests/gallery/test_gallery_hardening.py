"""The gallery against hostile input: a symlinked manifest, JSON bodies of any depth, and (standalone server) other
web pages' requests: cross-origin, text/plain, DNS rebinding."""

from __future__ import annotations

import json
import os

import pytest

from ipa_train.data import journal
from ipa_train.data.layout import MANIFEST
from ipa_train.data.manifest import read_manifest
from ipa_train.gallery.security import host_origin_problem
from support.gallery_fixture import make_dataset, serve


@pytest.fixture()
def root(tmp_path):
    root = tmp_path / "ipa_datasets"
    make_dataset(root, "hands_v1", count=3, previews=False)
    return root


def test_a_symlinked_manifest_is_never_followed(root, tmp_path):
    """The dataset folder is real but its manifest.jsonl points outside the root: nothing is listed or marked
    through it (``is_file()`` follows links; every component is checked with lstat)."""
    outside = tmp_path / "elsewhere.jsonl"
    entry = dict(read_manifest(root / "hands_v1")[0], id="fedcba9876543210")
    outside.write_text(json.dumps(entry) + "\n")
    before = outside.read_bytes()
    evil = root / "evil"
    (evil / "samples").mkdir(parents=True)
    os.symlink(outside, evil / MANIFEST)

    async def scenario(client):
        listing = await client.get("/ipa/datasets/evil/samples")
        mark = await client.post("/ipa/datasets/evil/marks", json={"ids": ["fedcba9876543210"], "status": "preferred"})
        datasets = await (await client.get("/ipa/datasets")).json()
        good = await client.get("/ipa/datasets/hands_v1/samples")
        return listing.status, mark.status, datasets, good.status

    listing, mark, datasets, good = serve(root, scenario)
    assert listing == 404 and mark == 404 and good == 200
    assert not any(item.get("total") for item in datasets["datasets"] if item["name"] == "evil")
    assert outside.read_bytes() == before and (evil / MANIFEST).is_symlink()


def test_json_bodies_of_any_depth_are_400(root):
    manifest = (root / "hands_v1" / MANIFEST).read_bytes()
    deep_list = b"[" * 200_000 + b"]" * 200_000  # RecursionError in the parser: was a 500
    deep_object = ('{"ids": ' + "[" * 5000 + "]" * 5000 + ', "status": "preferred"}').encode()
    deep_marks = ('{"marks": [' + '{"id": ' * 3000 + "1" + "}" * 3000 + "]}").encode()

    async def scenario(client):
        out = []
        for body in (deep_list, deep_object, deep_marks):
            for path in ("/ipa/datasets/hands_v1/marks", "/ipa/datasets/hands_v1/hand_scores"):
                response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
                out.append((response.status, (await response.json())["error"]))
        return out

    for status, message in serve(root, scenario):
        assert status == 400 and "must be" in message, (status, message)
    # nothing written: neither the manifest nor the status journal (where marks go since format 2)
    assert (root / "hands_v1" / MANIFEST).read_bytes() == manifest and not (root / "hands_v1" / journal.JOURNAL).exists()


def test_other_web_pages_cannot_mark(root):
    """What a page on another site could send to a gallery on 127.0.0.1: refused before any handler runs."""
    manifest = (root / "hands_v1" / MANIFEST).read_bytes()
    sample_id = read_manifest(root / "hands_v1")[0]["id"]
    body = json.dumps({"ids": [sample_id], "status": "preferred"})

    async def scenario(client):
        port = client.server.port
        url = "/ipa/datasets/hands_v1/marks"
        cases = {
            "cross-origin text/plain": dict(data=body, headers={"Origin": "https://evil.example", "Content-Type": "text/plain"}),
            "cross-origin json": dict(data=body, headers={"Origin": "https://evil.example", "Content-Type": "application/json"}),
            "sandboxed page (Origin: null)": dict(data=body, headers={"Origin": "null", "Content-Type": "application/json"}),
            "DNS rebinding": dict(data=body, headers={"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}",
                                                      "Content-Type": "application/json"}),
            "same origin, text/plain": dict(data=body, headers={"Origin": f"http://127.0.0.1:{port}", "Content-Type": "text/plain"}),
        }
        out = {}
        for name, options in cases.items():
            response = await client.post(url, **options)
            out[name] = response.status
        listing = await client.get("/ipa/datasets", headers={"Origin": "https://evil.example"})
        out["cross-origin read"] = listing.status
        ok = await client.post(url, data=body, headers={"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}",
                                                          "Content-Type": "application/json"})
        return out, ok.status

    statuses, same_origin = serve(root, scenario)
    assert statuses == {"cross-origin text/plain": 403, "cross-origin json": 403, "sandboxed page (Origin: null)": 403,
                        "DNS rebinding": 403, "same origin, text/plain": 415, "cross-origin read": 403}
    assert same_origin == 200  # the gallery page itself (same origin, JSON) still marks
    after = read_manifest(root / "hands_v1")
    # exactly one mark reached disk (the same-origin one): one line in the status journal, the manifest untouched
    journal_lines = (root / "hands_v1" / journal.JOURNAL).read_text().splitlines()
    assert after[0]["status"] == "preferred" and len(journal_lines) == 1
    assert (root / "hands_v1" / MANIFEST).read_bytes() == manifest


def test_host_and_origin_rules():
    assert host_origin_problem("127.0.0.1:8189", None) is None  # curl, scripts: no Origin
    assert host_origin_problem("127.0.0.1:8189", "http://127.0.0.1:8189") is None
    assert host_origin_problem("localhost:8189", "http://localhost") is None  # ComfyUI's rule for a one-sided port
    assert host_origin_problem("[::1]:8189", "http://[::1]:8189") is None
    assert "does not match" in host_origin_problem("127.0.0.1:8189", "http://127.0.0.1:9999")
    assert "is not this server" in host_origin_problem("attacker.example:8189", "http://attacker.example:8189")
    assert host_origin_problem("studio.lan:8189", "http://studio.lan:8189", bind_host="0.0.0.0") is None  # LAN serving
    assert "does not match" in host_origin_problem("studio.lan:8189", "http://evil.example", bind_host="0.0.0.0")
