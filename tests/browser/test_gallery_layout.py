"""The gallery at scale and with the mouse, in headless Chromium against the standalone server: 600 and 2,400
samples at every page size and several window sizes keep their card size and scroll, with the preview and the
status line whole (element geometry); tiles mark with the mouse; the first view is never an empty Pending."""

from __future__ import annotations

import contextlib

import pytest
from test_gallery_browser import ServerThread, browser, card_ids, open_gallery, statuses_on_disk, wait_for_disk  # noqa: F401 (fixture)

from support.gallery_fixture import make_dataset
from support.gallery_layout import PAGE_SIZES, THUMB_MIN_HEIGHT, check_page_layout, make_large_dataset

VIEWPORTS = [(1600, 1000), (1280, 720), (820, 600)]


def wait_cards(page, count: int, first_id: str | None = None) -> None:
    condition = f"document.querySelectorAll('.ipa-card').length === {count}"
    if first_id:
        condition += f" && document.querySelector('.ipa-card')?.dataset.id === '{first_id}'"
    page.wait_for_function(f"() => {condition}")


def test_cards_keep_their_size_and_the_grid_scrolls_at_600_and_2400_samples_at_every_page_size(tmp_path, browser):
    root = tmp_path / "ipa_datasets"
    sizes = {"big_600": 600, "big_2400": 2400}
    for name, count in sizes.items():
        make_large_dataset(root, name, count)
    errors = []
    with ServerThread(root) as server:
        page = open_gallery(browser, server, errors, width=VIEWPORTS[0][0], height=VIEWPORTS[0][1])
        card_size = {}
        for name, count in sizes.items():
            page.select_option(".ipa-dataset", name)
            for width, height in VIEWPORTS:
                page.set_viewport_size({"width": width, "height": height})
                for limit in PAGE_SIZES:
                    page.select_option(".ipa-size", str(limit))
                    wait_cards(page, limit)
                    page.wait_for_function(f"() => document.querySelector('.ipa-pager-text').textContent.endsWith('of {count:,}')")
                    geometry = check_page_layout(page, ".ipa-gallery", limit)
                    # The same card at every page size and dataset size (only the window changes it).
                    assert card_size.setdefault((width, height), geometry["sizes"][0]) == geometry["sizes"][0], (name, limit, geometry)
            # The last page of 240 (120 samples of the 600; 240 of the 2,400) is laid out the same way.
            for _ in range(count // 240 - (1 if count % 240 == 0 else 0)):
                page.keyboard.press("]")
            last = count - (count - 1) // 240 * 240
            page.wait_for_function(f"() => document.querySelector('.ipa-pager-text').textContent.startsWith('{(count - last + 1):,}–')")
            wait_cards(page, last)
            geometry = check_page_layout(page, ".ipa-gallery", last)
            assert geometry["sizes"][0] == card_size[VIEWPORTS[-1]]
        # At the window (1600x1000) the preview is at least the height the hands need, and a wheel turn
        # over the grid scrolls it.
        page.set_viewport_size({"width": 1600, "height": 1000})
        page.wait_for_function("() => document.querySelector('.ipa-thumb').getBoundingClientRect().height >= %d" % THUMB_MIN_HEIGHT)
        grid = page.locator(".ipa-grid").bounding_box()
        page.mouse.move(grid["x"] + grid["width"] / 2, grid["y"] + grid["height"] / 2)
        page.mouse.wheel(0, 1500)
        page.wait_for_function("() => document.querySelector('.ipa-grid').scrollTop > 500")
    assert errors == []


def test_mouse_curation_on_tiles_selection_and_the_large_view(tmp_path, browser):
    root = tmp_path / "ipa_datasets"
    dataset_dir, _ = make_dataset(root, "hands_v1", count=6)
    errors = []
    with ServerThread(root) as server:
        page = open_gallery(browser, server, errors)
        ids = card_ids(page)
        card = lambda i: f".ipa-card[data-id='{ids[i]}']"  # noqa: E731

        # A click on a tile focuses it and marks nothing.
        page.click(f"{card(2)} .ipa-card-info")
        assert page.get_attribute(".ipa-card.ipa-focus", "data-id") == ids[2]
        assert set(statuses_on_disk(dataset_dir).values()) == {"pending"}
        # Its buttons mark it (and show its status); focus stays on the tile clicked.
        page.click(f"{card(1)} .ipa-act-rejected")
        assert wait_for_disk(dataset_dir, {ids[1]: "rejected"})[ids[1]] == "rejected"
        assert page.get_attribute(f"{card(1)} .ipa-act-rejected", "aria-pressed") == "true"
        assert page.get_attribute(f"{card(1)} .ipa-act-pending", "aria-pressed") == "false"
        assert page.get_attribute(".ipa-card.ipa-focus", "data-id") == ids[1]
        page.click(f"{card(1)} .ipa-act-pending")
        assert wait_for_disk(dataset_dir, {ids[1]: "pending"})[ids[1]] == "pending"
        page.click(f"{card(0)} .ipa-act-preferred")
        assert wait_for_disk(dataset_dir, {ids[0]: "preferred"})[ids[0]] == "preferred"

        # Select with the corner box and Ctrl+click, then one tile's button marks the whole selection.
        page.hover(card(3))
        page.click(f"{card(3)} .ipa-check")
        page.click(f"{card(4)} .ipa-thumb", modifiers=["Control"])
        assert page.inner_text(".ipa-selection").startswith("2 selected")
        page.click(f"{card(4)} .ipa-act-rejected")
        expected = {ids[0]: "preferred", ids[1]: "pending", ids[2]: "pending", ids[3]: "rejected", ids[4]: "rejected", ids[5]: "pending"}
        assert wait_for_disk(dataset_dir, expected) == expected
        assert page.is_hidden(".ipa-selection")
        # A tile outside the selection marks only itself.
        page.click(f"{card(5)} .ipa-check")
        page.click(f"{card(2)} .ipa-act-preferred")
        expected[ids[2]] = "preferred"
        assert wait_for_disk(dataset_dir, expected) == expected
        assert page.inner_text(".ipa-selection").startswith("1 selected")
        page.keyboard.press("Escape")  # clears the selection
        assert page.is_hidden(".ipa-selection")

        # Double-click opens the sample large; its buttons mark it, Pending included.
        page.dblclick(f"{card(3)} .ipa-thumb")
        page.wait_for_selector(f".ipa-detail:not([hidden]) .ipa-detail-title:has-text('{ids[3]}')")
        page.click(".ipa-detail-head button:has-text('Pending')")
        expected[ids[3]] = "pending"
        assert wait_for_disk(dataset_dir, expected) == expected
        page.keyboard.press("Escape")
        # The counts come with the server's answer, which may land just after the write is on disk.
        page.wait_for_function("() => document.querySelector('.ipa-filter.ipa-pending .ipa-count').textContent === '3'")
        counts = {f: page.inner_text(f".ipa-filter.ipa-{f} .ipa-count") for f in ("all", "pending", "preferred", "rejected")}
        assert counts == {"all": "6", "pending": "3", "preferred": "2", "rejected": "1"}
    assert errors == []


def test_a_curated_dataset_opens_on_all_and_an_empty_view_says_so_in_the_middle(tmp_path, browser):
    root = tmp_path / "ipa_datasets"
    dataset_dir, ids = make_dataset(root, "curated", count=5)
    from ipa_train.data.marks import set_statuses
    from ipa_train.data.samples import create_dataset

    set_statuses(dataset_dir, {ids[0]: "preferred", ids[1]: "preferred", ids[2]: "rejected", ids[3]: "rejected", ids[4]: "rejected"})
    errors = []
    with ServerThread(root) as server:
        page = open_gallery(browser, server, errors, wait_for=None)  # a fresh profile: nothing remembered
        wait_cards(page, 5)
        assert page.get_attribute(".ipa-filter.ipa-active", "data-filter") == "all"
        assert page.is_hidden(".ipa-empty")

        page.click(".ipa-filter.ipa-pending")
        page.wait_for_selector(".ipa-empty:not([hidden]) .ipa-empty-box")
        assert page.locator(".ipa-card").count() == 0
        text = page.inner_text(".ipa-empty-box")
        assert "No pending samples in curated" in text and "All 5 samples are curated" in text
        buttons = page.eval_on_selector_all(".ipa-empty-show", "bs => bs.map(b => b.textContent)")
        assert buttons == ["Show all (5)", "Show preferred (2)", "Show rejected (3)"]
        # In the middle of the grid area, not at the bottom of the panel.
        message = page.locator(".ipa-empty-box").bounding_box()
        area = page.locator(".ipa-main").bounding_box()
        assert abs((message["y"] + message["height"] / 2) - (area["y"] + area["height"] / 2)) < 2
        assert abs((message["x"] + message["width"] / 2) - (area["x"] + area["width"] / 2)) < 2
        page.click(".ipa-empty-show[data-filter='preferred']")
        wait_cards(page, 2)
        assert page.get_attribute(".ipa-filter.ipa-active", "data-filter") == "preferred" and page.is_hidden(".ipa-empty")
        # The view is remembered: a reload opens on preferred again.
        page.reload()
        wait_cards(page, 2)
        assert page.get_attribute(".ipa-filter.ipa-active", "data-filter") == "preferred"

        # A dataset with no samples at all says where samples come from.
        create_dataset(root, "empty_one")
        page.reload()
        page.wait_for_selector(".ipa-card")
        page.select_option(".ipa-dataset", "empty_one")
        page.wait_for_selector(".ipa-empty:not([hidden])")
        assert "has no samples yet" in page.inner_text(".ipa-empty-box") and page.locator(".ipa-empty-show").count() == 0
    assert errors == []


@pytest.mark.parametrize("width", [360])
def test_a_narrow_window_keeps_one_whole_card_per_row(tmp_path, browser, width):
    root = tmp_path / "ipa_datasets"
    make_large_dataset(root, "big", 600)
    with ServerThread(root) as server:
        page = browser.new_page(viewport={"width": width, "height": 640})
        page.goto(server.url)
        wait_cards(page, 60)
        geometry = check_page_layout(page, ".ipa-gallery", 60)
        assert geometry["columns"] == 1


# Cards entirely inside the grid's visible area (what a person sees without scrolling).
VISIBLE_CARDS_JS = """
() => {
  const grid = document.querySelector(".ipa-grid");
  const g = grid.getBoundingClientRect();
  const bottom = g.top + grid.clientHeight;
  return [...grid.querySelectorAll(".ipa-card")].filter((c) => {
    const r = c.getBoundingClientRect();
    return r.top >= g.top - 0.5 && r.bottom <= bottom + 0.5 && r.left >= g.left - 0.5 && r.right <= g.right + 0.5;
  }).length;
}
"""

# The message box against the visible part of every mark button and selection corner (the grid clips what is
# scrolled out of it).
TOAST_OVERLAPS_JS = """
() => {
  const t = document.querySelector(".ipa-toast").getBoundingClientRect();
  const grid = document.querySelector(".ipa-grid");
  const g = grid.getBoundingClientRect();
  const bottom = g.top + grid.clientHeight;
  const hit = (r) => {
    const top = Math.max(r.top, g.top), end = Math.min(r.bottom, bottom);
    return end > top && r.left < t.right && r.right > t.left && top < t.bottom && end > t.top;
  };
  return [...grid.querySelectorAll(".ipa-act, .ipa-check")].filter((b) => hit(b.getBoundingClientRect())).length;
}
"""


@contextlib.contextmanager
def screenshot_on_failure(page, tmp_path, name: str):
    """A failure keeps a picture of the page in the test's folder, named in the error."""
    try:
        yield
    except BaseException as error:
        path = tmp_path / f"{name}-failure.png"
        page.screenshot(path=str(path))
        raise AssertionError(f"{error}\n(screenshot: {path})") from error


def pager_starts(page, text: str) -> None:
    page.wait_for_function(f"() => document.querySelector('.ipa-pager-text').textContent.startsWith('{text}')")


def test_home_end_compact_cards_and_messages_that_cover_no_button_at_2400_samples(tmp_path, browser):
    root = tmp_path / "ipa_datasets"
    dataset_dir = make_large_dataset(root, "big_2400", 2400)
    errors = []
    with ServerThread(root) as server:
        page = open_gallery(browser, server, errors, width=1600, height=1000, wait_for=None)
        wait_cards(page, 60)
        with screenshot_on_failure(page, tmp_path, "gallery-at-scale"):
            home_end_compact_and_messages(page, dataset_dir)
    assert errors == []


def home_end_compact_and_messages(page, dataset_dir) -> None:
    """End and Home (and the « » buttons), Compact cards (40 and more on screen, remembered), and the status line
    that holds the messages."""
    # End: the last page of the 1,200 pending samples in one key (it took 19 presses of "]"), focus on its last
    # card; Home: back to the first. The pager's « » buttons do the same.
    page.keyboard.press("2")
    pager_starts(page, "1–60 of 1,200")
    page.keyboard.press("End")
    pager_starts(page, "1,141–1,200 of 1,200")
    wait_cards(page, 60)
    ids = card_ids(page)
    assert page.get_attribute(".ipa-card.ipa-focus", "data-id") == ids[-1]
    assert page.is_disabled(".ipa-last") and page.is_disabled(".ipa-next") and not page.is_disabled(".ipa-first")
    page.keyboard.press("Home")
    pager_starts(page, "1–60 of 1,200")
    assert page.is_disabled(".ipa-first")
    page.click(".ipa-last")
    pager_starts(page, "1,141–")
    page.click(".ipa-first")
    pager_starts(page, "1–60 of 1,200")

    # Large cards: 15 or so on screen; compact cards: 40 and more, every one whole, and the choice is remembered.
    large = page.evaluate(VISIBLE_CARDS_JS)
    page.keyboard.press("c")
    page.wait_for_selector(".ipa-gallery.ipa-compact-cards")
    assert page.get_attribute(".ipa-compact", "aria-pressed") == "true"
    check_page_layout(page, ".ipa-gallery", 60, thumb_min=70)
    compact = page.evaluate(VISIBLE_CARDS_JS)
    assert compact >= 40 and compact > 2 * large, (large, compact)
    page.reload()
    wait_cards(page, 60)
    page.wait_for_selector(".ipa-gallery.ipa-compact-cards")

    # A mark's message sits in the status line under the grid: it covers none of the bottom row's buttons.
    for compact_cards in (True, False):
        if not compact_cards:
            page.click(".ipa-compact")
            page.wait_for_selector(".ipa-gallery:not(.ipa-compact-cards)")
        visible = page.evaluate(VISIBLE_CARDS_JS)
        target = card_ids(page)[visible - 1]  # the last whole card: the bottom row
        page.click(f".ipa-card[data-id='{target}'] .ipa-act-rejected")
        assert wait_for_disk(dataset_dir, {target: "rejected"})[target] == "rejected"
        page.wait_for_selector(".ipa-toast.ipa-show")
        assert page.inner_text(".ipa-toast") == "Marked rejected"
        assert page.evaluate(TOAST_OVERLAPS_JS) == 0
        toast, grid = page.locator(".ipa-toast").bounding_box(), page.locator(".ipa-grid").bounding_box()
        assert toast["y"] >= grid["y"] + grid["height"] - 0.5
