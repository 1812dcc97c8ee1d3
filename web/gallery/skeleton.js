// The gallery's frame: the bar (dataset, filters, sort, pager, selection, hand score tools), the grid area, and the
// detail, help and message layers. Importing this module does nothing.
import { KEYS_HELP, MOUSE_HELP, PAGE_SIZES, SORTS } from "./constants.js";
import { el } from "./dom.js";

function helpPanel() {
  return el(
    "div",
    { class: "ipa-help", hidden: true },
    el("h3", { text: "Keyboard" }),
    el("table", {}, KEYS_HELP.map(([k, d]) => el("tr", {}, el("th", { text: k }), el("td", { text: d })))),
    el("h3", { text: "Mouse" }),
    el("table", {}, MOUSE_HELP.map(([k, d]) => el("tr", {}, el("th", { text: k }), el("td", { text: d })))),
    el("p", { class: "ipa-muted", text: "Marks are saved to the dataset at once." }),
  );
}

// The elements by name (``g.dom``); their buttons call the gallery's functions through ``g`` when clicked.
export function buildDom(g) {
  const { options } = g;
  const datasetSelect = el("select", { class: "ipa-dataset", title: "Dataset", "aria-label": "Dataset" });
  const filterBar = el("div", { class: "ipa-filters", role: "tablist" });
  const sortSelect = el(
    "select",
    { class: "ipa-sort", title: "Sort", "aria-label": "Sort" },
    SORTS.map(([value, label]) => el("option", { value, text: label })),
  );
  const sizeSelect = el(
    "select",
    { class: "ipa-size", title: "Samples per page", "aria-label": "Samples per page" },
    PAGE_SIZES.map((n) => el("option", { value: String(n), text: `${n} / page` })),
  );
  const pagerText = el("span", { class: "ipa-pager-text" });
  const firstButton = el("button", { class: "ipa-btn ipa-first", title: "First page (Home)", "aria-label": "first page", text: "«" });
  const prevButton = el("button", { class: "ipa-btn ipa-prev", title: "Previous page ([)", "aria-label": "previous page", text: "‹" });
  const nextButton = el("button", { class: "ipa-btn ipa-next", title: "Next page (])", "aria-label": "next page", text: "›" });
  const lastButton = el("button", { class: "ipa-btn ipa-last", title: "Last page (End)", "aria-label": "last page", text: "»" });
  const compactButton = el("button", { class: "ipa-btn ipa-compact", title: "Compact cards: more samples on screen (C)", text: "Compact", "aria-pressed": "false" });
  const selectionBar = el("div", { class: "ipa-selection", hidden: true });
  const grid = el("div", { class: "ipa-grid", role: "grid" });
  const empty = el("div", { class: "ipa-empty", hidden: true });
  // Messages go in a status line of their own under the grid: they never cover a card's buttons.
  const toast = el("div", { class: "ipa-toast", role: "status", "aria-live": "polite" });
  const statusLine = el("footer", { class: "ipa-statusline" }, toast, el("span", { class: "ipa-spacer" }), el("span", { class: "ipa-muted ipa-keys-hint", text: "? keys" }));
  const help = helpPanel();
  const detail = el("div", { class: "ipa-detail", hidden: true });
  const scoreButton = el("button", { class: "ipa-btn ipa-score-btn", text: "Score hands", onclick: (event) => g.onScoreButton(event) });
  const scoreProgress = el("progress", { class: "ipa-score-progress", hidden: true, max: "1", value: "0" });
  const scoreInfo = el("div", { class: "ipa-help ipa-score-info", hidden: true });
  const closeButton = options.onClose
    ? el("button", { class: "ipa-btn ipa-close", title: "Close (Esc)", text: "✕", onclick: () => options.onClose() })
    : null;


  const panel = el(
    "div",
    { class: "ipa-gallery", tabindex: "0" },
    el(
      "header",
      { class: "ipa-bar" },
      el("span", { class: "ipa-title", text: "IPA gallery" }),
      datasetSelect,
      filterBar,
      sortSelect,
      el("div", { class: "ipa-pager" }, firstButton, prevButton, pagerText, nextButton, lastButton, sizeSelect, compactButton),
      selectionBar,
      el("span", { class: "ipa-spacer" }),
      el("span", { class: "ipa-score-tools" }, scoreButton, scoreProgress),
      el("button", { class: "ipa-btn", title: "Keyboard help (?)", text: "?", onclick: () => g.toggleHelp() }),
      closeButton,
    ),
    el("div", { class: "ipa-main" }, grid, empty),
    detail,
    help,
    scoreInfo,
    statusLine,
  );

  return { datasetSelect, filterBar, sortSelect, sizeSelect, pagerText, firstButton, prevButton, nextButton, lastButton, compactButton, selectionBar, grid, empty, toast, statusLine, help, detail, scoreButton, scoreProgress, scoreInfo, closeButton, panel };
}
