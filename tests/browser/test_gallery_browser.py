"""The gallery page in a real headless Chromium (Debian's package, driven by Playwright's Python client) against
the standalone server: the same route handlers ComfyUI registers, serving ``web/`` and a fixture dataset."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from ipa_train.data.manifest import read_manifest
from ipa_train.gallery.api import create_app
from support.gallery_fixture import add_driving_poses, make_dataset, skin_detector

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("IPA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed (requirements-dev.txt)")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and shutil.which("chromium") is None:
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium)", allow_module_level=True)


class ServerThread:
    """The standalone gallery app on a free port, in its own event loop thread."""

    def __init__(self, root: Path, middlewares=(), hand_scoring=None):
        self.root = root
        self.middlewares = list(middlewares)
        self.hand_scoring = hand_scoring
        self.port = None
        self._ready = threading.Event()
        self._loop = None
        self._runner = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from aiohttp import web

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = create_app(self.root, REPO_ROOT / "web", hand_scoring=self.hand_scoring)
        app.middlewares.extend(self.middlewares)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10), "gallery test server did not start"
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/web/gallery/index.html"


@pytest.fixture()
def browser():
    executable = CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def open_gallery(browser, server, errors: list, width: int = 1280, height: int = 800, wait_for: str = ".ipa-card"):
    """A page on the standalone gallery, its script errors collected in ``errors``, once ``wait_for`` is shown."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url)
    if wait_for:
        page.wait_for_selector(wait_for)
    return page


def statuses_on_disk(dataset_dir: Path) -> dict[str, str]:
    return {entry["id"]: entry["status"] for entry in read_manifest(dataset_dir)}


def wait_for_disk(dataset_dir: Path, expected: dict[str, str], timeout: float = 10.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        on_disk = statuses_on_disk(dataset_dir)
        if all(on_disk.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
            return on_disk
        time.sleep(0.05)


def card_statuses(page) -> dict[str, str]:
    return page.eval_on_selector_all(".ipa-card", "cards => Object.fromEntries(cards.map(c => [c.dataset.id, c.dataset.status]))")


def card_ids(page) -> list[str]:
    return page.eval_on_selector_all(".ipa-card", "cards => cards.map(c => c.dataset.id)")


def focused_id(page) -> str:
    return page.eval_on_selector(".ipa-card.ipa-focus", "c => c.dataset.id")


def test_mark_with_the_keyboard_reload_and_find_the_marks_on_disk(tmp_path, browser):
    root = tmp_path / "ipa_datasets"
    dataset_dir, _ = make_dataset(root, "hands_v1", count=8)
    errors = []
    with ServerThread(root) as server:
        page = open_gallery(browser, server, errors)
        # The panel opens on all samples of the first dataset (nothing remembered yet), focus on the first card.
        assert page.input_value(".ipa-dataset") == "hands_v1"
        assert page.get_attribute(".ipa-filter.ipa-active", "data-filter") == "all"
        assert page.inner_text(".ipa-filter.ipa-pending .ipa-count") == "8"
        ids = card_ids(page)
        assert len(ids) == 8 and focused_id(page) == ids[0]
        expected = mark_eight_with_the_keyboard(page, dataset_dir, ids)
        mark_in_the_large_view(page, dataset_dir, ids, expected)
        reload_and_find_the_marks(page, dataset_dir, expected)
    assert errors == []


def mark_eight_with_the_keyboard(page, dataset_dir, ids: list[str]) -> dict[str, str]:
    """Marks, skips, undoes and bulk-marks the eight samples with keys; returns the statuses they end with."""
    page.keyboard.press("p")  # 0 preferred, focus moves on
    page.keyboard.press("r")  # 1 rejected
    page.keyboard.press("s")  # 2 skipped
    page.keyboard.press("p")  # 3 preferred ...
    page.keyboard.press("u")  # ... undone: 3 back to pending, focus back on it
    page.wait_for_function("() => document.querySelector('.ipa-card.ipa-focus')?.dataset.status === 'pending'")
    assert focused_id(page) == ids[3]
    page.keyboard.press("ArrowRight")  # 4
    page.keyboard.press("x")
    page.keyboard.press("ArrowRight")  # 5
    page.keyboard.press("x")
    assert page.inner_text(".ipa-selection").startswith("2 selected")
    page.keyboard.press("r")  # bulk: 4 and 5 rejected
    page.keyboard.press("Control+z")  # undo the bulk mark
    page.keyboard.press("ArrowRight")  # 6
    page.keyboard.press("x")
    page.keyboard.press("ArrowRight")  # 7
    page.keyboard.press("x")
    page.keyboard.press("p")  # bulk: 6 and 7 preferred
    expected = {
        ids[0]: "preferred",
        ids[1]: "rejected",
        ids[2]: "pending",
        ids[3]: "pending",
        ids[4]: "pending",
        ids[5]: "pending",
        ids[6]: "preferred",
        ids[7]: "preferred",
    }
    page.wait_for_function(
        "() => document.querySelector('.ipa-filter.ipa-preferred .ipa-count')?.textContent === '3'"
    )
    assert wait_for_disk(dataset_dir, expected) == expected
    assert card_statuses(page) == expected
    return expected


def mark_in_the_large_view(page, dataset_dir, ids: list[str], expected: dict[str, str]) -> None:
    # Open the sample large: video, two hand close-ups that loaded, the seed and prompt.
    page.keyboard.press("k")
    page.keyboard.press("k")  # back to sample 5
    assert focused_id(page) == ids[5]
    page.keyboard.press("Enter")
    page.wait_for_selector(".ipa-detail:not([hidden]) .ipa-hands figure img")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.ipa-hands img')].length === 2 &&"
        " [...document.querySelectorAll('.ipa-hands img')].every(img => img.complete && img.naturalWidth === 192)"
    )
    assert "seed" in page.inner_text(".ipa-meta") and "a dancer waving" in page.inner_text(".ipa-meta")
    page.keyboard.press("r")  # marking works in the large view too, and moves to the next sample
    expected[ids[5]] = "rejected"
    page.wait_for_function(f"() => document.querySelector('.ipa-detail-title')?.textContent.includes('{ids[6]}')")
    page.keyboard.press("Escape")
    assert page.is_hidden(".ipa-detail")
    assert wait_for_disk(dataset_dir, expected) == expected


def reload_and_find_the_marks(page, dataset_dir, expected: dict[str, str]) -> None:
    # A reload shows the marks kept, with the view (filter, sort) kept too.
    page.keyboard.press("2")  # pending
    page.wait_for_function("() => document.querySelectorAll('.ipa-card').length === 3")
    page.reload()
    page.wait_for_selector(".ipa-card")
    pending = sorted(k for k, v in expected.items() if v == "pending")
    assert page.get_attribute(".ipa-filter.ipa-active", "data-filter") == "pending"
    assert sorted(card_ids(page)) == pending and set(card_statuses(page).values()) == {"pending"}
    page.keyboard.press("1")  # all
    page.wait_for_function("() => document.querySelectorAll('.ipa-card').length === 8")
    assert card_statuses(page) == expected
    page.keyboard.press("3")  # preferred only
    page.wait_for_function("() => document.querySelectorAll('.ipa-card').length === 3")
    assert sorted(card_ids(page)) == sorted(k for k, v in expected.items() if v == "preferred")
    counts = {f: page.inner_text(f".ipa-filter.ipa-{f} .ipa-count") for f in ("all", "pending", "preferred", "rejected")}
    assert counts == {"all": "8", "pending": "3", "preferred": "3", "rejected": "2"}
    assert statuses_on_disk(dataset_dir) == expected


def test_fast_typing_against_a_slow_server_keeps_order_and_merges_requests(tmp_path, browser):
    """Keys typed while a mark request is in flight (slowed down here) go out merged in one later request, in
    order, so an undo never overtakes the mark it undoes."""
    from aiohttp import web

    root = tmp_path / "ipa_datasets"
    dataset_dir, _ = make_dataset(root, "hands_v1", count=6)
    posts = []

    @web.middleware
    async def slow_marks(request, handler):
        if request.method == "POST":
            posts.append(await request.json())
            await asyncio.sleep(0.4)
        return await handler(request)

    with ServerThread(root, [slow_marks]) as server:
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector(".ipa-card")
        ids = card_ids(page)
        for key in ("p", "r", "p", "r", "p", "u"):
            page.keyboard.press(key)
        expected = {ids[0]: "preferred", ids[1]: "rejected", ids[2]: "preferred", ids[3]: "rejected", ids[4]: "pending", ids[5]: "pending"}
        assert card_statuses(page) == expected  # the view is updated before the server answers
        assert focused_id(page) == ids[4]
        assert wait_for_disk(dataset_dir, expected) == expected
        page.wait_for_timeout(500)
        assert statuses_on_disk(dataset_dir) == expected
    assert 2 <= len(posts) <= 3, posts


def test_score_hands_button_shows_progress_scores_tiles_and_explains_missing_weights(tmp_path, browser):
    from ipa_train.gallery.hand_score_jobs import DetectorSource

    root = tmp_path / "ipa_datasets"
    dataset_dir, ids = make_dataset(root, "hands_v1", count=4)
    add_driving_poses(dataset_dir, ids, wrong=(1,), missing=(3,))
    go = threading.Event()

    def detector(frames):
        assert go.wait(20), "the test never let the detector run"
        return skin_detector(frames)

    errors = []
    with ServerThread(root, hand_scoring=DetectorSource(check=lambda: None, load=lambda gpu: detector)) as server:
        page = open_gallery(browser, server, errors)
        assert page.inner_text(".ipa-score-btn") == "Score hands"
        assert set(page.eval_on_selector_all(".ipa-score", "s => s.map(e => e.textContent)")) == {"hand –"}
        page.click(".ipa-score-btn")
        page.wait_for_function("() => document.querySelector('.ipa-score-btn').textContent.includes('Cancel')")
        assert page.is_visible(".ipa-score-progress")
        go.set()
        page.wait_for_function("() => document.querySelector('.ipa-score-btn').textContent === 'Score hands'")
        page.wait_for_function("() => [...document.querySelectorAll('.ipa-score')].filter(e => e.textContent !== 'hand –').length === 3")
        on_disk = {e["id"]: e.get("hand_score") for e in read_manifest(dataset_dir)}
        assert on_disk[ids[0]] > 0.9 and on_disk[ids[1]] < 0.2 and on_disk[ids[3]] is None
        shown = page.eval_on_selector_all(".ipa-card", "cards => Object.fromEntries(cards.map(c => [c.dataset.id, c.querySelector('.ipa-score').textContent]))")
        assert shown[ids[0]] == f"hand {on_disk[ids[0]]:.2f}" and shown[ids[3]] == "hand –"
        assert not page.is_visible(".ipa-score-progress")
        # Sorted by the score: best first, the unscored sample last.
        page.select_option(".ipa-sort", "hand_score:desc")
        page.wait_for_function(f"() => document.querySelector('.ipa-card')?.dataset.id === '{max((v, k) for k, v in on_disk.items() if v is not None)[1]}'")
        assert card_ids(page)[-2:] == [ids[1], ids[3]]

    # Without weights: the button is shown as unavailable and explains which files go where; marking still works.
    with ServerThread(root) as server:
        page = open_gallery(browser, server, errors)
        page.wait_for_selector(".ipa-score-btn.ipa-unavailable")
        assert page.get_attribute(".ipa-score-btn", "aria-disabled") == "true"
        page.click(".ipa-score-btn", force=True)  # aria-disabled: Playwright would wait for it to be enabled
        info = page.inner_text(".ipa-score-info")
        assert "Hand scoring needs DWPose" in info and "yolox_l.onnx" in info and "dw-ll_ucoco_384.onnx" in info
        assert "null" not in info
        page.keyboard.press("Escape")
        assert page.is_hidden(".ipa-score-info")
        page.keyboard.press("p")
        first = page.eval_on_selector(".ipa-card", "c => c.dataset.id")
        assert wait_for_disk(dataset_dir, {first: "preferred"})[first] == "preferred"
    assert errors == []


def test_each_gallery_module_imported_alone_in_chromium_does_nothing(tmp_path, browser):
    """As ComfyUI does with every .js file under web/: each module of web/gallery/ is imported by itself into a page;
    the page, its storage and the network see nothing until a gallery is created (and then they do)."""
    root = tmp_path / "ipa_datasets"
    make_dataset(root, "hands_v1", count=2)
    modules = sorted(path.name for path in (REPO_ROOT / "web" / "gallery").glob("*.js"))
    with ServerThread(root) as server:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/web/gallery/gallery.css")  # a page of the server, no gallery in it
        watch = """() => {
            window.__requests = [];
            const fetch = window.fetch;
            window.fetch = (...args) => (window.__requests.push(String(args[0])), fetch(...args));
        }"""
        page.evaluate(watch)
        looks = "() => [document.documentElement.outerHTML, localStorage.length, window.__requests.length]"
        before = page.evaluate(looks)
        for name in modules:
            exported = page.evaluate("async (url) => Object.keys(await import(url))", f"/web/gallery/{name}")
            assert exported, f"{name} exports nothing"
            assert page.evaluate(looks) == before, f"importing {name} changed the page, its storage or fetched"
        # The traps are live: creating a gallery changes the page and asks the server.
        page.evaluate("async () => { const g = (await import('/web/gallery/gallery.js')).createGallery(document.body); await g.ready; }")
        after = page.evaluate(looks)
        assert after[0] != before[0] and after[2] > 0
