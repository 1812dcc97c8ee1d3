// Which samples the gallery shows: the dataset list, one page of samples (filter, sort, paging), and moving the
// focus and the selection over them. Importing this module does nothing; createGallery installs it.
import { FILTERS } from "./constants.js";
import { saveState } from "./state.js";

export function installPages(g) {
  const { state } = g;
  const { request, url, dsUrl } = g.api;
  const { grid, panel } = g.dom;

  async function loadDatasets() {
    try {
      const body = await request(url("/datasets"));
      state.datasets = body.datasets;
    } catch (error) {
      g.showToast(`Could not list datasets: ${error.message}`, "error");
      state.datasets = [];
    }
    const names = state.datasets.map((d) => d.name);
    if (!names.includes(state.dataset)) {
      state.dataset = names[0] || null;
      state.offset = 0;
    }
    g.renderDatasets();
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
      g.render();
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
      await g.marksIdle(); // a listing must not show statuses older than the marks just made
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
      g.showToast(`Could not load samples: ${error.message}`, "error");
      state.samples = [];
      state.total = 0;
    } finally {
      if (token === state.pageToken) {
        state.loading = false;
        panel.classList.remove("ipa-loading");
      }
    }
    if (token !== state.pageToken) return;
    saveState(state);
    g.render();
    if (state.detailOpen) g.openDetail();
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
        g.showToast("This is the last page");
        return false;
      }
    } else {
      if (state.offset === 0) {
        g.showToast("This is the first page");
        return false;
      }
      offset = Math.max(0, state.offset - state.limit);
    }
    state.offset = offset;
    state.selected.clear();
    loadPage(focus);
    return true;
  }

  // Home / End: the first or the last page at once (the last of 2,400 pending samples is one key, not 39 "]").
  // Samples marked out of the filter have left the listing on the server: the last page is counted without them.
  function jumpPage(where) {
    const remaining = state.total - leftFilterOnPage();
    const offset = where === "first" ? 0 : Math.max(0, Math.floor((remaining - 1) / state.limit) * state.limit);
    if (offset === state.offset && !leftFilterOnPage()) {
      g.showToast(where === "first" ? "This is the first page" : "This is the last page");
      return false;
    }
    state.offset = offset;
    state.selected.clear();
    loadPage(where === "first" ? "first" : "last");
    return true;
  }

  function setFilter(filter) {
    if (!FILTERS.includes(filter)) return;
    state.filter = filter;
    state.offset = 0;
    state.selected.clear();
    loadPage("first");
  }

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
      if (!changePage(1)) g.render();
      return;
    }
    if (target < 0) {
      if (!changePage(-1)) g.render();
      return;
    }
    state.focus = target;
    g.render();
    if (state.detailOpen) g.openDetail();
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
    g.render();
  }

  Object.assign(g, { loadDatasets, resetView, loadPage, leftFilterOnPage, changePage, jumpPage, setFilter, columns, move, toggleSelect });
}
