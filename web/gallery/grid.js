// The grid view: the tiles of one page, the filter tabs with their counts, the pager, the selection bar and the
// empty-view message. Importing this module does nothing; createGallery installs it.
import { FILTERS, STATUSES, TILE_ACTIONS } from "./constants.js";
import { el, fmt, score } from "./dom.js";
import { saveState } from "./state.js";

export function installGrid(g) {
  const { state } = g;
  const { fileUrl } = g.api;
  const { datasetSelect, filterBar, sortSelect, sizeSelect, pagerText, firstButton, prevButton, nextButton, lastButton, compactButton, selectionBar, grid, empty, detail, panel } =
    g.dom;

  function renderDatasets() {
    datasetSelect.replaceChildren(
      ...(state.datasets.length
        ? state.datasets.map((d) => el("option", { value: d.name, text: d.name }))
        : [el("option", { value: "", text: "no datasets" })]),
    );
    datasetSelect.value = state.dataset || "";
    sortSelect.value = state.sort;
    sizeSelect.value = String(state.limit);
    renderCounts();
  }

  function renderCounts() {
    const total = STATUSES.reduce((sum, s) => sum + (state.counts[s] || 0), 0);
    filterBar.replaceChildren(
      ...FILTERS.map((f, i) =>
        el(
          "button",
          {
            class: `ipa-filter ipa-${f}${state.filter === f ? " ipa-active" : ""}`,
            role: "tab",
            "aria-selected": state.filter === f ? "true" : "false",
            title: `Show ${f} (${i + 1})`,
            dataset: { filter: f },
            onclick: () => {
              g.setFilter(f);
              panel.focus();
            },
          },
          el("span", { text: f }),
          el("b", { class: "ipa-count", text: fmt(f === "all" ? total : state.counts[f] || 0) }),
        ),
      ),
    );
  }

  // A tile's select corner and its mark buttons.
  function tileButtons(index) {
    const check = el("button", {
      class: "ipa-check",
      type: "button",
      title: "Select (X); Shift+click: select a range",
      "aria-label": "select",
      text: "✓",
      onclick: (event) => {
        event.stopPropagation();
        g.toggleSelect(index, event.shiftKey);
        panel.focus();
      },
    });
    const actions = el(
      "div",
      { class: "ipa-actions", role: "group", "aria-label": "mark this sample", ondblclick: (event) => event.stopPropagation() },
      TILE_ACTIONS.map(([status, icon, label, key]) =>
        el(
          "button",
          {
            class: `ipa-act ipa-act-${status}`,
            type: "button",
            title: `Mark ${status} (${key})`,
            "aria-label": `Mark ${status}`,
            dataset: { status },
            onclick: (event) => {
              event.stopPropagation();
              g.markTile(index, status);
            },
          },
          el("span", { "aria-hidden": "true", text: icon }),
          el("span", { class: "ipa-act-label", text: label }),
        ),
      ),
    );
    return [check, actions];
  }

  function cardFor(sample, index) {
    const media = sample.files.includes("preview.webp")
      ? el("img", { src: fileUrl(sample.id, "preview.webp"), loading: "lazy", alt: `sample ${sample.id}`, draggable: "false" })
      : el("div", { class: "ipa-nopreview", text: "no preview" });
    const [check, actions] = tileButtons(index);
    const card = el(
      "div",
      {
        role: "gridcell",
        dataset: { id: sample.id },
        onclick: (event) => {
          if (event.shiftKey || event.ctrlKey || event.metaKey) g.toggleSelect(index, event.shiftKey);
          else {
            state.focus = index;
            render();
          }
          panel.focus();
        },
        ondblclick: () => {
          state.focus = index;
          g.openDetail();
        },
      },
      el("div", { class: "ipa-thumb" }, media, check),
      el(
        "div",
        { class: "ipa-card-info" },
        // The words "seed" and "hand" are dropped on compact cards (the tooltips keep them).
        el(
          "span",
          { class: "ipa-seed ipa-muted", title: sample.seed !== undefined ? `seed ${sample.seed}` : null },
          sample.seed !== undefined ? [el("span", { class: "ipa-word", text: "seed " }), String(sample.seed)] : "no seed",
        ),
        el("span", { class: "ipa-spacer" }),
        el(
          "span",
          { class: "ipa-score", title: "hand score (higher: hands agree better with the driving pose)" },
          el("span", { class: "ipa-word", text: "hand " }),
          el("span", { class: "ipa-score-value", text: score(sample.hand_score) }),
        ),
      ),
      actions,
    );
    updateCard(card, sample, index);
    return card;
  }

  function updateCard(card, sample, index) {
    card.className = ["ipa-card", `ipa-${sample.status}`, index === state.focus ? "ipa-focus" : "", state.selected.has(sample.id) ? "ipa-selected" : ""]
      .filter(Boolean)
      .join(" ");
    card.dataset.status = sample.status;
    card.setAttribute("aria-selected", state.selected.has(sample.id) ? "true" : "false");
    for (const button of card.querySelectorAll(".ipa-act")) button.setAttribute("aria-pressed", button.dataset.status === sample.status ? "true" : "false");
    card.querySelector(".ipa-check").setAttribute("aria-pressed", state.selected.has(sample.id) ? "true" : "false");
    card.querySelector(".ipa-score-value").textContent = score(sample.hand_score);
  }

  // The middle of the grid area says why it is empty and offers the views that are not.
  function renderEmpty() {
    empty.hidden = state.samples.length > 0 || state.loading;
    if (!empty.hidden) empty.replaceChildren(emptyMessage());
  }

  function emptyMessage() {
    const box = (title, text, ...buttons) =>
      el("div", { class: "ipa-empty-box" }, el("p", { class: "ipa-empty-title", text: title }), text ? el("p", { text }) : null, buttons.length ? el("div", { class: "ipa-empty-actions" }, buttons) : null);
    if (!state.dataset) return box("No datasets yet", "Collect samples with the IPA Mark Preferred node; they appear here.");
    const total = STATUSES.reduce((sum, s) => sum + (state.counts[s] || 0), 0);
    if (!total) return box(`${state.dataset} has no samples yet`, "Collect samples with the IPA Mark Preferred node; they appear here as they are stored.");
    const others = FILTERS.filter((f) => f !== state.filter && (f === "all" ? total : state.counts[f]) > 0);
    const curated = state.filter === "pending" ? `All ${fmt(total)} samples are curated. ` : "";
    return box(
      `No ${state.filter === "all" ? "" : state.filter + " "}samples in ${state.dataset}`,
      `${curated}Show another view:`,
      ...others.map((f) =>
        el("button", {
          class: `ipa-btn ipa-empty-show ipa-${f}`,
          dataset: { filter: f },
          text: `Show ${f} (${fmt(f === "all" ? total : state.counts[f])})`,
          onclick: () => {
            g.setFilter(f);
            panel.focus();
          },
        }),
      ),
    );
  }

  function render() {
    renderCounts();
    const first = state.total ? state.offset + 1 : 0;
    const last = state.offset + state.samples.length;
    pagerText.textContent = `${fmt(first)}–${fmt(last)} of ${fmt(state.total)}`;
    prevButton.disabled = firstButton.disabled = state.offset === 0;
    nextButton.disabled = lastButton.disabled = state.offset + state.limit - g.leftFilterOnPage() >= state.total - g.leftFilterOnPage();
    panel.classList.toggle("ipa-compact-cards", state.compact);
    compactButton.setAttribute("aria-pressed", state.compact ? "true" : "false");
    // Rebuild cards only when the page changed; otherwise update classes in place so previews keep playing.
    const existing = grid.children;
    const sameIds = existing.length === state.samples.length && state.samples.every((s, i) => existing[i].dataset.id === s.id);
    if (!sameIds) grid.replaceChildren(...state.samples.map(cardFor));
    else state.samples.forEach((sample, i) => updateCard(existing[i], sample, i));
    grid.classList.toggle("ipa-has-selection", state.selected.size > 0);
    const focused = grid.children[state.focus];
    if (focused) focused.scrollIntoView({ block: "nearest" });
    renderEmpty();
    selectionBar.hidden = state.selected.size === 0;
    if (state.selected.size)
      selectionBar.replaceChildren(
        el("span", { text: `${state.selected.size} selected` }),
        el("button", { class: "ipa-btn ipa-preferred", text: "P", title: "Mark selection preferred", onclick: () => g.mark("preferred") }),
        el("button", { class: "ipa-btn ipa-rejected", text: "R", title: "Mark selection rejected", onclick: () => g.mark("rejected") }),
        el("button", { class: "ipa-btn", text: "clear", onclick: () => (state.selected.clear(), render()) }),
      );
    if (state.detailOpen) {
      const badge = detail.querySelector(".ipa-detail-head .ipa-badge");
      const sample = state.samples[state.focus];
      if (badge && sample) {
        badge.className = `ipa-badge ipa-${sample.status}`;
        badge.textContent = sample.status;
      }
    }
  }

  // Compact cards: smaller previews and icon-only buttons (their names stay in the tooltips), so 40 and more
  // samples fit on a 1600x1000 screen; large cards keep the preview tall enough to judge the hands.
  function setCompact(on) {
    state.compact = !!on;
    saveState(state);
    render();
    const focused = grid.children[state.focus];
    if (focused) focused.scrollIntoView({ block: "nearest" });
  }

  Object.assign(g, { setCompact, renderDatasets, renderCounts, cardFor, updateCard, renderEmpty, emptyMessage, render });
}
