"""The gallery inside a real ComfyUI (needs COMFYUI_PATH): the pack's routes on ComfyUI's server, and the
frontend extension's sidebar tab opening the gallery in headless Chromium, marks landing in the dataset under
ComfyUI's output folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import comfyui_path, requires_comfyui
from ipa_train.data.manifest import read_manifest
from support.gallery_fixture import add_driving_poses, make_dataset
from support.gallery_layout import check_page_layout, make_large_dataset
from support.tiny_dwpose_models import build_weights

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("IPA_CHROMIUM", "/usr/bin/chromium")

pytestmark = requires_comfyui


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture()
def comfyui(tmp_path):
    """ComfyUI v0.8 headless on CPU with this repository as a custom node; yields (base url, base directory)."""
    base = tmp_path / "comfy"
    (base / "custom_nodes").mkdir(parents=True)
    os.symlink(REPO_ROOT, base / "custom_nodes" / "ComfyUI-IPA")
    # A returning user: no first-run templates dialog over the page.
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    port = free_port()
    log = open(tmp_path / "comfyui.log", "w")
    command = [
        sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
        "--dont-print-server", "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=comfyui_path(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode}:\n{(tmp_path / 'comfyui.log').read_text()[-3000:]}")
            try:
                get_json(f"{url}/system_stats")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("ComfyUI did not start within 120 s")
                time.sleep(0.5)
        yield url, base
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_routes_and_sidebar_gallery_in_comfyui(comfyui):
    url, base = comfyui
    dataset_dir, ids = make_dataset(base / "output" / "ipa_datasets", "hands_v1", count=3)
    check_routes(url)
    check_hand_scores(url, base, dataset_dir, ids)
    # A large dataset for the layout check inside ComfyUI's frontend (after the route checks above, which list one).
    scale_dir = make_large_dataset(base / "output" / "ipa_datasets", "scale_600", 600)

    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    executable = CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium")
    if executable is None:
        pytest.skip("no Chromium: install Debian's package (apt-get install -y chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]  # fmt: skip
    errors = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 850})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_selector(".ipa-gallery-tab-button", timeout=60_000)
            assert page.locator(".ipa-gallery-tab-button").count() == 1  # registered once although served twice
            page.click(".ipa-gallery-tab-button")
            page.wait_for_selector(".ipa-sidebar .ipa-ds")
            assert "0 preferred, 0 rejected, 3 pending" in page.inner_text(".ipa-sidebar .ipa-ds")
            page.click(".ipa-sidebar .ipa-ds")
            page.wait_for_selector(".ipa-overlay .ipa-card")
            # The hand score button (weights are in place now) and the GPU setting, off by default.
            page.wait_for_selector(".ipa-overlay .ipa-score-btn[aria-disabled='false']")
            assert page.evaluate("() => window.app.extensionManager.setting.get('IPA.Gallery.HandScoreOnGPU')") is False
            mark_in_the_sidebar_gallery(page, dataset_dir)
            mark_at_scale(page, scale_dir)
            sidebar_counts_follow(page, dataset_dir)
        finally:
            browser.close()
    assert not [e for e in errors if "ipa" in e.lower() or "gallery" in e.lower()], errors


def check_routes(url: str) -> None:
    # The routes, under /ipa and mirrored under /api/ipa, over <output>/ipa_datasets.
    for prefix in ("/ipa", "/api/ipa"):
        body = get_json(f"{url}{prefix}/datasets")
        assert body["datasets"] == [{"name": "hands_v1", "total": 3, "counts": {"pending": 3, "preferred": 0, "rejected": 0}}]
    extensions = get_json(f"{url}/extensions")
    assert any(path.endswith("/ipa_gallery.js") for path in extensions)
    # ComfyUI serves the gallery's modules too (and imports each as an extension: they do nothing on import, see
    # test_gallery_modules.py).
    modules = sorted(path.name for path in (REPO_ROOT / "web" / "gallery").glob("*.js"))
    for name in modules:
        served = [path for path in extensions if path.endswith(f"/gallery/{name}")]
        assert served, f"ComfyUI does not list web/gallery/{name}"
        with urllib.request.urlopen(f"{url}{served[0]}", timeout=5) as response:
            assert response.status == 200


def check_hand_scores(url: str, base: Path, dataset_dir: Path, ids: list[str]) -> None:
    # Hand scores: without weights the route names the files and ComfyUI's models/dwpose; once the files are put
    # there (no restart) a background job scores the dataset with DWPose.
    add_driving_poses(dataset_dir, ids, wrong=(1,), missing=())
    status = get_json(f"{url}/api/ipa/datasets/hands_v1/hand_scores")
    assert status["available"] is False
    assert status["unavailable"]["missing_files"] == ["yolox_l.onnx", "dw-ll_ucoco_384.onnx"]
    assert Path(status["unavailable"]["install_dir"]) == base / "models" / "dwpose"
    try:
        urllib.request.urlopen(urllib.request.Request(f"{url}/ipa/datasets/hands_v1/hand_scores", data=b"", method="POST"), timeout=5)
        raise AssertionError("POST without weights must fail")
    except urllib.error.HTTPError as error:
        assert error.code == 503 and "yolox_l.onnx" in json.loads(error.read())["error"]
    build_weights(base / "models" / "dwpose")
    assert get_json(f"{url}/ipa/datasets/hands_v1/hand_scores")["available"] is True
    request = urllib.request.Request(f"{url}/ipa/datasets/hands_v1/hand_scores", data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202 and json.loads(response.read())["job"]["device"] == "cpu"
    deadline = time.monotonic() + 60
    while (status := get_json(f"{url}/ipa/datasets/hands_v1/hand_scores"))["job"]["state"] in ("starting", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["job"]["state"] == "done" and status["job"]["counts"]["failed"] == 0, status
    assert status["job"]["done"] == status["job"]["total"] == 3


def mark_in_the_sidebar_gallery(page, dataset_dir: Path) -> None:
    """Opens a dataset from the IPA sidebar tab and marks two samples with the keyboard."""
    first = page.eval_on_selector(".ipa-card.ipa-focus", "c => c.dataset.id")
    second = page.eval_on_selector_all(".ipa-card", "cards => cards.map(c => c.dataset.id)")[1]
    page.keyboard.press("p")
    page.keyboard.press("r")  # ComfyUI binds R to "refresh node definitions": the gallery keeps it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        on_disk = {e["id"]: e["status"] for e in read_manifest(dataset_dir)}
        if on_disk[first] == "preferred" and on_disk[second] == "rejected":
            break
        time.sleep(0.1)
    assert on_disk[first] == "preferred" and on_disk[second] == "rejected"


def mark_at_scale(page, scale_dir: Path) -> None:
    # At scale, inside ComfyUI's page and stylesheets: cards keep their size, the grid scrolls, previews and
    # status lines are whole; a tile's button marks it (the canvas underneath gets no click).
    page.select_option(".ipa-overlay .ipa-dataset", "scale_600")
    for limit in (60, 240):
        page.select_option(".ipa-overlay .ipa-size", str(limit))
        page.wait_for_function(
            f"() => document.querySelectorAll('.ipa-overlay .ipa-card').length === {limit} &&"
            " document.querySelector('.ipa-overlay .ipa-pager-text').textContent.endsWith('of 600')"
        )
        check_page_layout(page, ".ipa-overlay .ipa-gallery", limit)
    target = page.eval_on_selector(".ipa-overlay .ipa-card[data-status='pending']", "c => c.dataset.id")
    page.click(f".ipa-overlay .ipa-card[data-id='{target}'] .ipa-act-rejected")
    deadline = time.monotonic() + 10
    while {e["id"]: e["status"] for e in read_manifest(scale_dir)}[target] != "rejected":
        assert time.monotonic() < deadline, "the tile's Rejected button did not reach the dataset"
        time.sleep(0.1)
    page.keyboard.press("Escape")
    assert page.locator(".ipa-overlay").count() == 0


def sidebar_item_text(page, name: str) -> str:
    return page.inner_text(f".ipa-sidebar .ipa-ds[data-name='{name}']")


def sidebar_counts_follow(page, dataset_dir: Path) -> None:
    """The sidebar, left open, follows the marks made in the gallery and samples stored while it is on screen (it
    used to keep the counts it first showed: 0 preferred, 0 rejected, 3 pending)."""
    from ipa_train.data.samples import add_sample
    from support.gallery_fixture import tiny_tensors

    page.wait_for_function("() => document.querySelector(\".ipa-sidebar .ipa-ds[data-name='hands_v1']\")?.innerText.includes('1 preferred, 1 rejected, 1 pending')",
                           timeout=10_000)
    # the tile marked at scale: the list a refresh shows may predate that mark; the next refresh (a 4 s poll) has it
    page.wait_for_function("() => document.querySelector(\".ipa-sidebar .ipa-ds[data-name='scale_600']\")?.innerText.includes('150 preferred, 151 rejected, 299 pending')",
                           timeout=10_000)
    assert "150 preferred, 151 rejected, 299 pending" in sidebar_item_text(page, "scale_600")
    for seed in (900, 901):  # a curate run storing two more samples
        add_sample(dataset_dir, tiny_tensors(seed), meta={"seed": seed, "prompt": "late"}, summary={"seed": seed, "prompt": "late"})
    page.wait_for_function("() => document.querySelector(\".ipa-sidebar .ipa-ds[data-name='hands_v1']\")?.innerText.includes('1 preferred, 1 rejected, 3 pending')",
                           timeout=15_000)
