"""Gallery layout at scale, shared by the standalone browser tests and the test inside ComfyUI's frontend: a large
dataset made quickly (manifest entries and one tiny preview per sample, no tensors: the grid never reads them)
and the geometry checks, made on the elements' bounding boxes in the browser."""

from __future__ import annotations

import json
from pathlib import Path

from ipa_train.data.layout import MANIFEST, SAMPLES_DIR
from ipa_train.data.samples import create_dataset
from support.gallery_fixture import preview_webp

THUMB_MIN_HEIGHT = 136  # px: below this the hands in a 16:9 preview are too small to judge
PAGE_SIZES = (30, 60, 120, 240)


def make_large_dataset(root: Path, name: str, count: int) -> Path:
    """``count`` samples with mixed statuses, 15-digit seeds (ComfyUI's seed widget goes that far and more) and
    hand scores, each with a preview: the entries add_sample writes, written in one go."""
    path = create_dataset(root, name)
    previews = [preview_webp(seed) for seed in range(4)]
    lines = []
    for index in range(count):
        sample_id = f"{index + 1:016x}"
        lines.append(json.dumps({
            "id": sample_id,
            "status": ("pending", "pending", "preferred", "rejected")[index % 4],
            "created": f"2026-01-01T{index // 3600 % 24:02d}:{index // 60 % 60:02d}:{index % 60:02d}.000+00:00",
            "updated": "2026-01-01T00:00:00.000+00:00",
            "content_hash": f"{index + 1:064x}",
            "frames": 22,
            "seed": 100_000_000_000_000 + index * 7919,
            "prompt": "a dancer waving both hands",
            "hand_score": round((index * 37 % 100) / 100, 2),
        }) + "\n")  # fmt: skip
        folder = path / SAMPLES_DIR / sample_id
        folder.mkdir()
        (folder / "preview.webp").write_bytes(previews[index % 4])
    (path / MANIFEST).write_text("".join(lines))
    return path


# Everything measured in one evaluation: card, preview, status line and buttons of every card on the page, against
# each other, the card and the grid (the scroll container).
GEOMETRY_JS = """
([scope, thumbMin]) => {
  const root = document.querySelector(scope);
  const grid = root.querySelector(".ipa-grid");
  const box = (e) => e.getBoundingClientRect();
  const inside = (a, b) => a.left >= b.left - 0.5 && a.right <= b.right + 0.5 && a.top >= b.top - 0.5 && a.bottom <= b.bottom + 0.5;
  const cards = [...grid.querySelectorAll(".ipa-card")];
  const problems = [];
  const sizes = new Set();
  const tops = new Set();
  cards.forEach((card, i) => {
    const c = box(card);
    sizes.add(`${c.width.toFixed(1)}x${c.height.toFixed(1)}`);
    tops.add(Math.round(c.top));
    const thumb = card.querySelector(".ipa-thumb");
    const img = thumb.querySelector("img");
    const info = card.querySelector(".ipa-card-info");
    const actions = card.querySelector(".ipa-actions");
    const t = box(thumb), im = box(img), f = box(info), a = box(actions);
    const say = (what) => problems.push(`card ${i}: ${what}`);
    if (card.scrollHeight > card.clientHeight + 0.5 || card.scrollWidth > card.clientWidth + 0.5) say(`content clipped (${card.scrollWidth}x${card.scrollHeight} in ${card.clientWidth}x${card.clientHeight})`);
    for (const [name, r] of [["preview", t], ["status line", f], ["buttons", a]]) if (!inside(r, c)) say(`${name} outside the card`);
    if (t.height < thumbMin - 0.5) say(`preview only ${t.height.toFixed(1)} px tall`);
    if (Math.abs(t.height - (t.width * 9) / 16) > 1) say(`preview not 16:9 (${t.width.toFixed(1)}x${t.height.toFixed(1)})`);
    if (Math.abs(im.width - t.width) > 0.5 || Math.abs(im.height - t.height) > 0.5) say("image does not fill its preview box");
    if (!(t.bottom <= f.top + 0.5 && f.bottom <= a.top + 0.5)) say("preview, status line and buttons overlap");
    for (const part of info.children) {
      if (!part.textContent) continue;
      if (!inside(box(part), f) || part.scrollWidth > part.clientWidth + 0.5) say(`status line part "${part.textContent}" cut off`);
    }
    const buttons = [...actions.querySelectorAll(".ipa-act")];
    if (buttons.length !== 3) say(`${buttons.length} mark buttons`);
    for (const b of buttons) if (!inside(box(b), a) || b.scrollWidth > b.clientWidth + 0.5 || box(b).height < 16) say(`button "${b.textContent}" cut off`);
    if (card.dataset.status !== card.querySelector(".ipa-act[aria-pressed=true]")?.dataset.status) say("pressed button is not the status");
  });
  const g = box(grid);
  const style = getComputedStyle(grid);
  return {
    count: cards.length,
    sizes: [...sizes],
    rows: tops.size,
    columns: cards.filter((c) => Math.round(box(c).top) === Math.round(box(cards[0]).top)).length,
    rowGap: parseFloat(style.rowGap),
    padding: parseFloat(style.paddingTop) + parseFloat(style.paddingBottom),
    cardHeight: cards.length ? box(cards[0]).height : 0,
    clientHeight: grid.clientHeight,
    scrollHeight: grid.scrollHeight,
    gridTop: g.top,
    gridBottom: g.top + grid.clientHeight,
    overflowY: style.overflowY,
    problems: problems.slice(0, 20),
  };
}
"""

# After scrolling the grid to its end: the last card is entirely inside the grid's visible area.
LAST_CARD_VISIBLE_JS = """
(scope) => {
  const grid = document.querySelector(scope).querySelector(".ipa-grid");
  grid.scrollTop = grid.scrollHeight;
  const g = grid.getBoundingClientRect();
  const last = [...grid.querySelectorAll(".ipa-card")].pop().getBoundingClientRect();
  return { scrollTop: grid.scrollTop, visible: last.top >= g.top - 0.5 && last.bottom <= g.top + grid.clientHeight + 0.5 };
}
"""


def check_page_layout(page, scope: str, expected_cards: int, thumb_min: float = THUMB_MIN_HEIGHT) -> dict:
    """Asserts the geometry of the page shown: every card the same size, preview and status line whole, the grid
    as tall as its rows (so it scrolls rather than squeezing the cards) and scrolling reaching the last card.
    ``thumb_min``: the least preview height (compact cards are smaller by choice)."""
    geometry = page.evaluate(GEOMETRY_JS, [scope, thumb_min])
    assert geometry["count"] == expected_cards, geometry
    assert geometry["problems"] == [], geometry["problems"]
    assert len(geometry["sizes"]) == 1, f"cards of different sizes: {geometry['sizes']}"
    rows = -(-expected_cards // geometry["columns"])
    assert geometry["rows"] == rows, geometry
    content = rows * geometry["cardHeight"] + (rows - 1) * geometry["rowGap"] + geometry["padding"]
    assert geometry["scrollHeight"] >= content - 1, f"the grid squeezes its rows: {geometry}"
    if content > geometry["clientHeight"] + 1:
        assert geometry["overflowY"] == "auto" and geometry["scrollHeight"] > geometry["clientHeight"], geometry
        scrolled = page.evaluate(LAST_CARD_VISIBLE_JS, scope)
        assert scrolled["scrollTop"] > 0 and scrolled["visible"], scrolled
        page.evaluate("(scope) => { document.querySelector(scope).querySelector('.ipa-grid').scrollTop = 0; }", scope)
    return geometry
