// The IPA curation gallery: a keyboard-first grid of looping previews over the /ipa/ routes.
// Plain ES module with no dependency on ComfyUI, so it runs inside ComfyUI (web/ipa_gallery.js mounts it)
// and standalone (web/gallery/index.html, used by the browser tests).

const STATUSES = ["pending", "preferred", "rejected"];
const FILTERS = ["all", ...STATUSES];
const SORTS = [
  ["date:desc", "Newest first"],
  ["date:asc", "Oldest first"],
  ["hand_score:desc", "Hand score, best first"],
  ["hand_score:asc", "Hand score, worst first"],
  ["seed:asc", "Seed, ascending"],
  ["seed:desc", "Seed, descending"],
];
const PAGE_SIZES = [30, 60, 120, 240];
// The tile's buttons: status, icon, label, key.
const TILE_ACTIONS = [
  ["preferred", "✓", "Preferred", "P"],
  ["rejected", "✕", "Rejected", "R"],
  ["pending", "↺", "Pending", "0"],
];
const MOUSE_HELP = [
  ["click", "focus the sample"],
  ["double-click", "open large"],
  ["✓ ✕ ↺ on a tile", "mark it preferred, rejected, pending (a selected tile: the whole selection)"],
  ["○ corner, Ctrl+click", "select or unselect; Shift+click selects a range"],
];
const STATE_KEY = "ipa-gallery-state";
const KEYS_HELP = [
  ["P", "mark preferred (the selection, if any), then next"],
  ["R", "mark rejected, then next"],
  ["S / Space", "skip: leave as is, go to next"],
  ["0", "back to pending"],
  ["→ / J, ← / K", "next, previous sample"],
  ["↑ ↓", "row up, row down"],
  ["Enter / O", "open large; Esc closes"],
  ["X", "select or unselect; Shift+click selects a range"],
  ["A", "select the whole page; Esc clears the selection"],
  ["U / Ctrl+Z", "undo the last mark"],
  ["[ ]  PgUp PgDn", "previous, next page"],
  ["1 2 3 4", "show all, pending, preferred, rejected"],
  ["?", "this help"],
];

let cssInjected = false;
export function injectCss() {
  if (cssInjected) return;
  cssInjected = true;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = new URL("./gallery.css", import.meta.url).href;
  document.head.appendChild(link);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const fmt = (n) => Number(n).toLocaleString("en-US");
const score = (v) => (typeof v === "number" ? v.toFixed(2) : "–");

function loadState() {
  try {
    return JSON.parse(localStorage.getItem(STATE_KEY) || "{}") || {};
  } catch {
    return {};
  }
}

export function createGallery(root, options = {}) {
  injectCss();
  const apiBase = (options.apiBase ?? "").replace(/\/$/, "");
  const saved = loadState();
  const state = {
    datasets: [],
    dataset: options.dataset || saved.dataset || null,
    // The last view comes back; the first time, everything (a curated dataset must not look empty).
    filter: FILTERS.includes(saved.filter) ? saved.filter : "all",
    sort: SORTS.some(([v]) => v === saved.sort) ? saved.sort : "date:desc",
    limit: PAGE_SIZES.includes(saved.limit) ? saved.limit : 60,
    offset: Number.isInteger(saved.offset) && saved.offset >= 0 ? saved.offset : 0,
    total: 0,
    counts: { pending: 0, preferred: 0, rejected: 0 },
    samples: [],
    focus: 0,
    selected: new Set(),
    anchor: null,
    undo: [],
    detailOpen: false,
    detailToken: 0,
    pageToken: 0,
    loading: false,
    // Hand scoring: what GET /hand_scores said (available, why not, scored/total, the last job).
    handScores: null,
  };

  const url = (path) => `${apiBase}/ipa${path}`;
  const dsUrl = (path = "") => url(`/datasets/${encodeURIComponent(state.dataset)}${path}`);
  const fileUrl = (id, name) => dsUrl(`/samples/${id}/files/${encodeURIComponent(name)}`);

  async function request(path, init) {
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
    return body;
  }

  function saveState() {
    const { dataset, filter, sort, limit, offset } = state;
    try {
      localStorage.setItem(STATE_KEY, JSON.stringify({ dataset, filter, sort, limit, offset }));
    } catch {
      /* private mode: the view simply starts fresh next time */
    }
  }

  // ------------------------------------------------------------------------------------------ DOM skeleton
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
  const prevButton = el("button", { class: "ipa-btn", title: "Previous page ([)", text: "‹" });
  const nextButton = el("button", { class: "ipa-btn", title: "Next page (])", text: "›" });
  const selectionBar = el("div", { class: "ipa-selection", hidden: true });
  const grid = el("div", { class: "ipa-grid", role: "grid" });
  const empty = el("div", { class: "ipa-empty", hidden: true });
  const toast = el("div", { class: "ipa-toast", role: "status", "aria-live": "polite" });
  const help = el(
    "div",
    { class: "ipa-help", hidden: true },
    el("h3", { text: "Keyboard" }),
    el("table", {}, KEYS_HELP.map(([k, d]) => el("tr", {}, el("th", { text: k }), el("td", { text: d })))),
    el("h3", { text: "Mouse" }),
    el("table", {}, MOUSE_HELP.map(([k, d]) => el("tr", {}, el("th", { text: k }), el("td", { text: d })))),
    el("p", { class: "ipa-muted", text: "Marks are saved to the dataset at once." }),
  );
  const detail = el("div", { class: "ipa-detail", hidden: true });
  const scoreButton = el("button", { class: "ipa-btn ipa-score-btn", text: "Score hands", onclick: (event) => onScoreButton(event) });
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
      el("div", { class: "ipa-pager" }, prevButton, pagerText, nextButton, sizeSelect),
      selectionBar,
      el("span", { class: "ipa-spacer" }),
      el("span", { class: "ipa-score-tools" }, scoreButton, scoreProgress),
      el("button", { class: "ipa-btn", title: "Keyboard help (?)", text: "?", onclick: () => toggleHelp() }),
      closeButton,
    ),
    el("div", { class: "ipa-main" }, grid, empty),
    detail,
    help,
    scoreInfo,
    toast,
  );
  root.replaceChildren(panel);

  datasetSelect.addEventListener("change", () => {
    state.dataset = datasetSelect.value;
    state.offset = 0;
    resetView();
    loadPage();
    loadHandScores();
    panel.focus();
  });
  sortSelect.addEventListener("change", () => {
    state.sort = sortSelect.value;
    state.offset = 0;
    loadPage();
    panel.focus();
  });
  sizeSelect.addEventListener("change", () => {
    state.limit = Number(sizeSelect.value);
    state.offset = Math.floor(state.offset / state.limit) * state.limit;
    loadPage();
    panel.focus();
  });
  prevButton.addEventListener("click", () => changePage(-1));
  nextButton.addEventListener("click", () => changePage(1));
  panel.addEventListener("keydown", onKey);

  let toastTimer = null;
  function showToast(message, kind = "info") {
    toast.textContent = message;
    toast.dataset.kind = kind;
    toast.classList.add("ipa-show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => toast.classList.remove("ipa-show"), kind === "error" ? 6000 : 1800);
  }

  // ------------------------------------------------------------------------------------------ data
  async function loadDatasets() {
    try {
      const body = await request(url("/datasets"));
      state.datasets = body.datasets;
    } catch (error) {
      showToast(`Could not list datasets: ${error.message}`, "error");
      state.datasets = [];
    }
    const names = state.datasets.map((d) => d.name);
    if (!names.includes(state.dataset)) {
      state.dataset = names[0] || null;
      state.offset = 0;
    }
    renderDatasets();
  }

  function resetView() {
    state.selected.clear();
    state.anchor = null;
    state.undo = [];
    state.focus = 0;
  }

  async function loadPage(focus = "keep") {
    if (!state.dataset) {
      state.samples = [];
      state.total = 0;
      render();
      return;
    }
    const [sort, order] = state.sort.split(":");
    const query = new URLSearchParams({
      offset: String(state.offset),
      limit: String(state.limit),
      status: state.filter,
      sort,
      order,
    });
    const token = ++state.pageToken;
    state.loading = true;
    panel.classList.add("ipa-loading");
    try {
      await idle; // a listing must not show statuses older than the marks just made
      const body = await request(dsUrl(`/samples?${query}`));
      if (token !== state.pageToken) return; // a newer page request (fast paging) wins
      if (body.samples.length === 0 && body.total > 0 && state.offset > 0) {
        // The page emptied (samples left the filter): show the last page that still has some.
        state.offset = Math.max(0, Math.floor((body.total - 1) / state.limit) * state.limit);
        return loadPage(focus);
      }
      state.samples = body.samples;
      state.total = body.total;
      state.counts = body.counts;
      const ids = new Set(body.samples.map((s) => s.id));
      for (const id of [...state.selected]) if (!ids.has(id)) state.selected.delete(id);
      if (focus === "first") state.focus = 0;
      else if (focus === "last") state.focus = Math.max(0, state.samples.length - 1);
      else state.focus = Math.min(state.focus, Math.max(0, state.samples.length - 1));
      const dataset = state.datasets.find((d) => d.name === state.dataset);
      if (dataset) dataset.counts = body.counts;
    } catch (error) {
      if (token !== state.pageToken) return;
      showToast(`Could not load samples: ${error.message}`, "error");
      state.samples = [];
      state.total = 0;
    } finally {
      if (token === state.pageToken) {
        state.loading = false;
        panel.classList.remove("ipa-loading");
      }
    }
    if (token !== state.pageToken) return;
    saveState();
    render();
    if (state.detailOpen) openDetail();
  }

  // Samples marked out of the current filter stay visible until the page changes; the next page starts
  // earlier by that many so no sample is skipped.
  function leftFilterOnPage() {
    if (state.filter === "all") return 0;
    return state.samples.filter((s) => s.status !== state.filter).length;
  }

  function changePage(direction, focus = direction > 0 ? "first" : "last") {
    let offset;
    if (direction > 0) {
      offset = state.offset + state.limit - leftFilterOnPage();
      const remaining = state.total - leftFilterOnPage();
      if (offset >= remaining) {
        showToast("This is the last page");
        return false;
      }
    } else {
      if (state.offset === 0) {
        showToast("This is the first page");
        return false;
      }
      offset = Math.max(0, state.offset - state.limit);
    }
    state.offset = offset;
    state.selected.clear();
    loadPage(focus);
    return true;
  }

  function setFilter(filter) {
    if (!FILTERS.includes(filter)) return;
    state.filter = filter;
    state.offset = 0;
    state.selected.clear();
    loadPage("first");
  }

  // ------------------------------------------------------------------------------------------ marking
  // Marks go out one request at a time, in key order (a quick "P then U" must reach the dataset in that order),
  // and marks made while a request is in flight are merged into the next one (one journal line each), so fast
  // typing costs a few requests, not one per key. The view updates at once.
  let outbox = [];
  let flushing = false;
  let idle = Promise.resolve();

  // Keys: the selection if any, else the focused sample, then on to the next one.
  function mark(status) {
    const bulk = state.selected.size > 0;
    const targets = bulk ? state.samples.filter((s) => state.selected.has(s.id)) : [state.samples[state.focus]].filter(Boolean);
    if (markSamples(targets, status, bulk) && !bulk) move(1);
  }

  // A tile's button: that tile (the whole selection when the tile is part of it); focus stays on the tile, since
  // the pointer is there and the next tile is one move away.
  function markTile(index, status) {
    const sample = state.samples[index];
    if (!sample) return;
    const bulk = state.selected.size > 1 && state.selected.has(sample.id);
    const targets = bulk ? state.samples.filter((s) => state.selected.has(s.id)) : [sample];
    state.focus = index;
    markSamples(targets, status, bulk);
    panel.focus();
  }

  function markSamples(targets, status, bulk) {
    if (!targets.length) return false;
    const previous = targets.map((s) => ({ id: s.id, status: s.status }));
    targets.forEach((s) => (s.status = status));
    const focusId = state.samples[state.focus]?.id;
    const entry = { marks: previous, focusId };
    state.undo.push(entry);
    if (state.undo.length > 200) state.undo.shift();
    if (bulk) state.selected.clear();
    const message = bulk ? `${targets.length} marked ${status}` : `Marked ${status}`;
    send(
      targets.map((s) => ({ id: s.id, status })),
      previous,
    ).then((ok) => {
      if (ok) showToast(message, status);
      else state.undo = state.undo.filter((e) => e !== entry);
    });
    return true;
  }

  function send(marks, revert) {
    render();
    return new Promise((resolve) => {
      outbox.push({ marks, revert, resolve });
      if (!flushing) idle = flush();
    });
  }

  async function flush() {
    flushing = true;
    while (outbox.length) {
      const batch = outbox;
      outbox = [];
      const merged = new Map();
      for (const item of batch) for (const m of item.marks) merged.set(m.id, m.status);
      try {
        const body = await request(dsUrl("/marks"), {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ marks: [...merged].map(([id, status]) => ({ id, status })) }),
        });
        state.counts = body.counts;
        const dataset = state.datasets.find((d) => d.name === state.dataset);
        if (dataset) dataset.counts = body.counts;
        renderCounts();
        batch.forEach((item) => item.resolve(true));
      } catch (error) {
        // Back to what was on disk before this batch: the earliest mark's previous status wins.
        const byId = new Map();
        for (const item of [...batch].reverse()) for (const m of item.revert) byId.set(m.id, m.status);
        state.samples.forEach((s) => byId.has(s.id) && (s.status = byId.get(s.id)));
        render();
        showToast(`Not saved: ${error.message}`, "error");
        batch.forEach((item) => item.resolve(false));
      }
    }
    flushing = false;
  }

  function undo() {
    const last = state.undo.pop();
    if (!last) {
      showToast("Nothing to undo");
      return;
    }
    const current = last.marks.map((m) => ({ id: m.id, status: state.samples.find((s) => s.id === m.id)?.status }));
    last.marks.forEach((m) => {
      const sample = state.samples.find((s) => s.id === m.id);
      if (sample) sample.status = m.status;
    });
    const index = state.samples.findIndex((s) => s.id === last.focusId);
    if (index >= 0) state.focus = index;
    send(
      last.marks,
      current.filter((m) => m.status),
    ).then((ok) => ok && showToast(last.marks.length > 1 ? `Undid ${last.marks.length} marks` : "Undone"));
    render();
    if (state.detailOpen) openDetail();
  }

  // ------------------------------------------------------------------------------------------ navigation
  function columns() {
    const cards = grid.querySelectorAll(".ipa-card");
    if (cards.length < 2) return 1;
    const top = cards[0].offsetTop;
    let n = 0;
    while (n < cards.length && cards[n].offsetTop === top) n++;
    return Math.max(1, n);
  }

  function move(delta) {
    const target = state.focus + delta;
    if (target >= state.samples.length) {
      if (!changePage(1)) render();
      return;
    }
    if (target < 0) {
      if (!changePage(-1)) render();
      return;
    }
    state.focus = target;
    render();
    if (state.detailOpen) openDetail();
  }

  function toggleSelect(index, range = false) {
    const sample = state.samples[index];
    if (!sample) return;
    if (range && state.anchor !== null) {
      const [a, b] = [Math.min(state.anchor, index), Math.max(state.anchor, index)];
      for (let i = a; i <= b; i++) state.selected.add(state.samples[i].id);
    } else if (state.selected.has(sample.id)) state.selected.delete(sample.id);
    else state.selected.add(sample.id);
    state.anchor = index;
    render();
  }

  function toggleHelp(force) {
    help.hidden = force === undefined ? !help.hidden : !force;
  }

  function onKey(event) {
    const tag = event.target?.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") return;
    const key = event.key;
    const lower = key.length === 1 ? key.toLowerCase() : key;
    const ctrl = event.ctrlKey || event.metaKey;
    let handled = true;
    if (ctrl && lower === "z") undo();
    else if (ctrl || event.altKey) handled = false;
    else if (lower === "p") mark("preferred");
    else if (lower === "r") mark("rejected");
    else if (key === "0") mark("pending");
    else if (lower === "s" || key === " ") move(1);
    else if (key === "ArrowRight" || lower === "j") move(1);
    else if (key === "ArrowLeft" || lower === "k") move(-1);
    else if (key === "ArrowDown" && !state.detailOpen) move(columns());
    else if (key === "ArrowUp" && !state.detailOpen) move(-columns());
    else if (key === "Enter" || lower === "o") state.detailOpen ? closeDetail() : openDetail();
    else if (lower === "x") toggleSelect(state.focus, event.shiftKey);
    else if (lower === "a") {
      state.samples.forEach((s) => state.selected.add(s.id));
      render();
    } else if (lower === "u") undo();
    else if (key === "[" || key === "PageUp") changePage(-1);
    else if (key === "]" || key === "PageDown") changePage(1);
    else if (["1", "2", "3", "4"].includes(key)) setFilter(FILTERS[Number(key) - 1]);
    else if (key === "?") toggleHelp();
    else if (key === "Escape") {
      if (!help.hidden) toggleHelp(false);
      else if (!scoreInfo.hidden) toggleScoreInfo(false);
      else if (state.detailOpen) closeDetail();
      else if (state.selected.size) {
        state.selected.clear();
        render();
      } else if (options.onClose) options.onClose();
      else handled = false;
    } else handled = false;
    if (handled) {
      // ComfyUI's own shortcuts (R refreshes, Ctrl+Z undoes graph edits) must not see gallery keys.
      event.preventDefault();
      event.stopPropagation();
    }
  }

  // ------------------------------------------------------------------------------------------ hand scores
  // The server scores in a background thread (DWPose on CPU unless the GPU setting is on); the panel polls
  // the job's progress, updates the scores on the visible tiles as they land, and re-sorts once at the end so
  // tiles do not jump under the cursor while curating.
  let pollTimer = null;
  let lastScored = null;

  const jobActive = (job) => !!job && ["starting", "running", "cancelling"].includes(job.state);

  async function loadHandScores() {
    clearTimeout(pollTimer);
    if (!state.dataset) {
      state.handScores = null;
      renderScoreTools();
      return;
    }
    const dataset = state.dataset;
    let body;
    try {
      body = await request(dsUrl("/hand_scores"));
    } catch (error) {
      if (dataset !== state.dataset) return;
      state.handScores = { available: false, unavailable: { message: `Could not ask the server: ${error.message}` } };
      renderScoreTools();
      return;
    }
    if (dataset !== state.dataset) return;
    const wasActive = jobActive(state.handScores?.job);
    state.handScores = body;
    renderScoreTools();
    const key = `${dataset}:${body.scored}`;
    if (lastScored !== null && lastScored.startsWith(`${dataset}:`) && key !== lastScored) updateVisibleScores();
    lastScored = key;
    if (jobActive(body.job)) pollTimer = setTimeout(loadHandScores, 1000);
    else if (wasActive && body.job) jobFinished(body.job);
  }

  function jobFinished(job) {
    const c = job.counts || {};
    if (job.state === "failed") showToast(`Hand scoring failed: ${job.error}`, "error");
    else {
      const skipped = c.skipped ? `, ${c.skipped} without a driving hand` : "";
      const failed = c.failed ? `, ${c.failed} failed` : "";
      showToast(`Hand scoring ${job.state === "cancelled" ? "cancelled" : "done"}: ${c.scored || 0} scored${skipped}${failed}`);
    }
    loadPage(); // now re-sort (when sorting by hand score) and show the final scores
  }

  async function updateVisibleScores() {
    // The current page's scores, merged into the tiles in place (same query, so the same samples).
    const [sort, order] = state.sort.split(":");
    const query = new URLSearchParams({ offset: String(state.offset), limit: String(state.limit), status: state.filter, sort, order });
    try {
      const body = await request(dsUrl(`/samples?${query}`));
      const scores = new Map(body.samples.map((s) => [s.id, s.hand_score]));
      state.samples.forEach((sample) => scores.has(sample.id) && (sample.hand_score = scores.get(sample.id)));
      render();
    } catch {
      /* the next poll tries again */
    }
  }

  async function onScoreButton(event) {
    const info = state.handScores;
    if (!info) return;
    if (!info.available) {
      toggleScoreInfo();
      return;
    }
    if (jobActive(info.job)) {
      try {
        const body = await request(dsUrl("/hand_scores"), { method: "DELETE" });
        state.handScores.job = body.job;
        renderScoreTools();
        showToast("Stopping hand scoring…");
      } catch (error) {
        showToast(`Could not cancel: ${error.message}`, "error");
      }
      return;
    }
    const rescore = event.shiftKey;
    const gpu = typeof options.handScoreGpu === "function" ? !!options.handScoreGpu() : false;
    try {
      const body = await request(dsUrl("/hand_scores"), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ rescore, gpu }),
      });
      state.handScores.job = body.job;
      showToast(rescore ? "Scoring the hands of every sample again…" : "Scoring hands…");
    } catch (error) {
      showToast(`Could not start hand scoring: ${error.message}`, "error");
    }
    loadHandScores();
    panel.focus();
  }

  function toggleScoreInfo(force) {
    scoreInfo.hidden = force === undefined ? !scoreInfo.hidden : !force;
  }

  function renderScoreTools() {
    const info = state.handScores;
    const job = info?.job;
    scoreButton.classList.toggle("ipa-unavailable", !!info && !info.available);
    scoreButton.setAttribute("aria-disabled", info && info.available ? "false" : "true");
    scoreProgress.hidden = !jobActive(job);
    if (!info) {
      scoreButton.textContent = "Score hands";
      scoreButton.title = "";
      return;
    }
    if (!info.available) {
      const u = info.unavailable || {};
      scoreButton.textContent = "Score hands";
      scoreButton.title = `Unavailable: ${u.message || "no pose detector"} (click for details)`;
      const files = u.missing_files?.length ? u.missing_files : [];
      const parts = [
        el("h3", { text: "Hand scoring needs DWPose" }),
        el("p", { text: "The gallery works without it; samples simply have no hand score." }),
        files.length ? el("p", {}, "Missing: ", ...files.map((f, i) => [i ? ", " : "", el("code", { text: f })])) : null,
        u.install_dir ? el("p", {}, "Put them in ", el("code", { text: u.install_dir }), ", then click Score hands again.") : null,
        el("pre", { class: "ipa-score-message", text: u.message || "" }),
      ];
      scoreInfo.replaceChildren(...parts.filter(Boolean));
      return;
    }
    scoreInfo.hidden = true;
    if (jobActive(job)) {
      const total = job.total ?? 0;
      scoreProgress.max = Math.max(1, total);
      scoreProgress.value = job.done;
      scoreButton.textContent =
        job.state === "cancelling" ? "Stopping…" : job.state === "starting" ? "Loading DWPose… · Cancel" : `Scoring ${job.done}/${total} · Cancel`;
      scoreButton.title = `Hand scoring on the ${job.device.toUpperCase()}; click to cancel (scores so far are kept)`;
    } else {
      scoreButton.textContent = "Score hands";
      scoreButton.title =
        `${fmt(info.scored)} of ${fmt(info.total)} samples scored. Click: score the unscored ones with DWPose ` +
        "(how well the hands agree with the driving pose); Shift+click: score all again.";
    }
  }

  // ------------------------------------------------------------------------------------------ detail view
  function closeDetail() {
    state.detailOpen = false;
    detail.hidden = true;
    detail.replaceChildren();
    panel.focus();
  }

  async function openDetail() {
    const sample = state.samples[state.focus];
    if (!sample) return;
    state.detailOpen = true;
    detail.hidden = false;
    const token = ++state.detailToken;
    const statusBadge = el("span", { class: `ipa-badge ipa-${sample.status}`, text: sample.status });
    const hands = el("div", { class: "ipa-hands" }, el("span", { class: "ipa-muted", text: "Loading…" }));
    const metaList = el("dl", { class: "ipa-meta" });
    const media = sample.files.includes("preview.webp")
      ? el("img", { class: "ipa-detail-video", src: fileUrl(sample.id, "preview.webp"), alt: `sample ${sample.id}` })
      : el("div", { class: "ipa-nopreview", text: "no preview" });
    detail.replaceChildren(
      el(
        "div",
        { class: "ipa-detail-head" },
        el("span", { class: "ipa-detail-title", text: `Sample ${sample.id}` }),
        statusBadge,
        el("span", { class: "ipa-muted", text: `${state.offset + state.focus + 1} of ${fmt(state.total)}` }),
        el("span", { class: "ipa-spacer" }),
        el("button", { class: "ipa-btn ipa-preferred", text: "P  Preferred", onclick: () => mark("preferred") }),
        el("button", { class: "ipa-btn ipa-rejected", text: "R  Rejected", onclick: () => mark("rejected") }),
        el("button", { class: "ipa-btn", text: "0  Pending", onclick: () => mark("pending") }),
        el("button", { class: "ipa-btn", text: "S  Skip", onclick: () => move(1) }),
        el("button", { class: "ipa-btn", title: "Close (Esc)", text: "✕", onclick: () => closeDetail() }),
      ),
      el(
        "div",
        { class: "ipa-detail-body" },
        el("div", { class: "ipa-detail-media" }, media),
        el("div", { class: "ipa-detail-side" }, el("h4", { text: "Hands" }), hands, el("h4", { text: "Sample" }), metaList),
      ),
    );
    let info;
    try {
      info = await request(dsUrl(`/samples/${sample.id}`));
    } catch (error) {
      if (token === state.detailToken) hands.replaceChildren(el("span", { class: "ipa-error", text: error.message }));
      return;
    }
    if (token !== state.detailToken) return;
    const crops = [];
    for (let i = 0; i < info.hand_tracks; i++) {
      crops.push(
        el(
          "figure",
          {},
          el("img", { src: dsUrl(`/samples/${sample.id}/hands/${i}.webp`), alt: `hand ${i + 1}` }),
          el("figcaption", { text: `hand ${i + 1}` }),
        ),
      );
    }
    if (info.files.includes("hands.webp"))
      crops.push(el("figure", {}, el("img", { src: fileUrl(sample.id, "hands.webp"), alt: "hands" }), el("figcaption", { text: "hands.webp" })));
    hands.replaceChildren(
      ...(crops.length ? crops : [el("span", { class: "ipa-muted", text: info.hand_boxes_error || "No hand boxes stored for this sample." })]),
    );
    const rows = [];
    const meta = info.meta || {};
    const entry = info.entry || {};
    const add = (label, value) => {
      if (value === undefined || value === null || value === "") return;
      const text = typeof value === "object" ? JSON.stringify(value) : String(value);
      rows.push(el("dt", { text: label }), el("dd", { text }));
    };
    add("seed", meta.seed ?? entry.seed);
    add("hand score", typeof entry.hand_score === "number" ? score(entry.hand_score) : undefined);
    add("prompt", meta.prompt ?? entry.prompt);
    add("negative", meta.negative_prompt);
    add("created", entry.created);
    add("updated", entry.updated);
    // Settings first; bulky technical fields only in the raw view below.
    const shown = new Set(["seed", "prompt", "negative_prompt", "format_version", "content_hash"]);
    const raw = new Set(["hand_boxes", "shapes"]);
    for (const [key, value] of Object.entries(meta)) if (!shown.has(key) && !raw.has(key)) add(key, value);
    if (info.omitted?.length) add("not shown (large)", info.omitted.join(", "));
    metaList.replaceChildren(...rows);
    metaList.after(
      el("details", { class: "ipa-raw" }, el("summary", { text: "all fields" }), el("pre", { text: JSON.stringify({ entry, meta }, null, 1) })),
    );
  }

  // ------------------------------------------------------------------------------------------ rendering
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
              setFilter(f);
              panel.focus();
            },
          },
          el("span", { text: f }),
          el("b", { class: "ipa-count", text: fmt(f === "all" ? total : state.counts[f] || 0) }),
        ),
      ),
    );
  }

  function cardFor(sample, index) {
    const media = sample.files.includes("preview.webp")
      ? el("img", { src: fileUrl(sample.id, "preview.webp"), loading: "lazy", alt: `sample ${sample.id}`, draggable: "false" })
      : el("div", { class: "ipa-nopreview", text: "no preview" });
    const check = el("button", {
      class: "ipa-check",
      type: "button",
      title: "Select (X); Shift+click: select a range",
      "aria-label": "select",
      text: "✓",
      onclick: (event) => {
        event.stopPropagation();
        toggleSelect(index, event.shiftKey);
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
            dataset: { status },
            onclick: (event) => {
              event.stopPropagation();
              markTile(index, status);
            },
          },
          el("span", { "aria-hidden": "true", text: icon }),
          label,
        ),
      ),
    );
    const card = el(
      "div",
      {
        role: "gridcell",
        dataset: { id: sample.id },
        onclick: (event) => {
          if (event.shiftKey || event.ctrlKey || event.metaKey) toggleSelect(index, event.shiftKey);
          else {
            state.focus = index;
            render();
          }
          panel.focus();
        },
        ondblclick: () => {
          state.focus = index;
          openDetail();
        },
      },
      el("div", { class: "ipa-thumb" }, media, check),
      el(
        "div",
        { class: "ipa-card-info" },
        el("span", { class: "ipa-seed ipa-muted", title: sample.seed !== undefined ? `seed ${sample.seed}` : null, text: sample.seed !== undefined ? `seed ${sample.seed}` : "no seed" }),
        el("span", { class: "ipa-spacer" }),
        el("span", { class: "ipa-score", title: "hand score (higher: hands agree better with the driving pose)", text: `hand ${score(sample.hand_score)}` }),
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
    card.querySelector(".ipa-score").textContent = `hand ${score(sample.hand_score)}`;
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
            setFilter(f);
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
    prevButton.disabled = state.offset === 0;
    nextButton.disabled = state.offset + state.limit - leftFilterOnPage() >= state.total - leftFilterOnPage();
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
        el("button", { class: "ipa-btn ipa-preferred", text: "P", title: "Mark selection preferred", onclick: () => mark("preferred") }),
        el("button", { class: "ipa-btn ipa-rejected", text: "R", title: "Mark selection rejected", onclick: () => mark("rejected") }),
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

  // ------------------------------------------------------------------------------------------ start
  const ready = (async () => {
    await loadDatasets();
    await Promise.all([loadPage(), loadHandScores()]);
    panel.focus();
  })();

  return {
    element: panel,
    ready,
    focus: () => panel.focus(),
    async refresh() {
      await loadDatasets();
      await Promise.all([loadPage(), loadHandScores()]);
    },
    async openDataset(name) {
      state.dataset = name;
      state.offset = 0;
      resetView();
      renderDatasets();
      await Promise.all([loadPage("first"), loadHandScores()]);
      panel.focus();
    },
    destroy() {
      clearTimeout(toastTimer);
      clearTimeout(pollTimer);
      panel.removeEventListener("keydown", onKey);
      root.replaceChildren();
    },
  };
}
