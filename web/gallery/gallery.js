// The IPA curation gallery: a keyboard-first grid of looping previews over the /ipa/ routes.
// Plain ES modules with no dependency on ComfyUI, so it runs inside ComfyUI (web/ipa_gallery.js mounts it)
// and standalone (web/gallery/index.html, used by the browser tests).
//
// One gallery is one object ``g`` that its parts share: ``state`` (state.js), ``api`` (client.js), ``dom``
// (skeleton.js), and the functions each part installs on it: pages.js (what is shown, paging, focus), marks.js
// (marking, undo), keys.js (the keyboard), grid.js and detail.js (the views), hand_scores.js, toast.js.
// ComfyUI imports every .js file under web/ as an extension: each of these modules only defines functions, and
// nothing runs until createGallery is called.
import { createClient } from "./client.js";
import { installDetail } from "./detail.js";
import { injectCss } from "./dom.js";
import { installGrid } from "./grid.js";
import { installHandScores } from "./hand_scores.js";
import { installKeys } from "./keys.js";
import { installMarks } from "./marks.js";
import { installPages } from "./pages.js";
import { buildDom } from "./skeleton.js";
import { createState } from "./state.js";
import { installToast } from "./toast.js";

export { injectCss };

export function createGallery(root, options = {}) {
  injectCss();
  const state = createState(options);
  const g = { root, options, state, api: createClient(options.apiBase, () => state.dataset) };
  g.dom = buildDom(g);
  for (const install of [installToast, installPages, installMarks, installKeys, installHandScores, installDetail, installGrid]) install(g);
  root.replaceChildren(g.dom.panel);
  wireControls(g);
  const ready = (async () => {
    await g.loadDatasets();
    await Promise.all([g.loadPage(), g.loadHandScores()]);
    g.dom.panel.focus();
  })();
  return handle(g, ready);
}

function wireControls(g) {
  const { state } = g;
  const { datasetSelect, sortSelect, sizeSelect, firstButton, prevButton, nextButton, lastButton, compactButton, panel } = g.dom;
  datasetSelect.addEventListener("change", () => {
    state.dataset = datasetSelect.value;
    state.offset = 0;
    g.resetView();
    g.loadPage();
    g.loadHandScores();
    panel.focus();
  });
  sortSelect.addEventListener("change", () => {
    state.sort = sortSelect.value;
    state.offset = 0;
    g.loadPage();
    panel.focus();
  });
  sizeSelect.addEventListener("change", () => {
    state.limit = Number(sizeSelect.value);
    state.offset = Math.floor(state.offset / state.limit) * state.limit;
    g.loadPage();
    panel.focus();
  });
  // The keys keep working after a click on the pager (a button that becomes disabled would drop the focus).
  const pager = (action) => () => {
    action();
    panel.focus();
  };
  firstButton.addEventListener("click", pager(() => g.jumpPage("first")));
  prevButton.addEventListener("click", pager(() => g.changePage(-1)));
  nextButton.addEventListener("click", pager(() => g.changePage(1)));
  lastButton.addEventListener("click", pager(() => g.jumpPage("last")));
  compactButton.addEventListener("click", () => {
    g.setCompact(!state.compact);
    panel.focus();
  });
  panel.addEventListener("keydown", g.onKey);
}

// What the page that mounts the gallery (web/ipa_gallery.js, index.html, the tests) may call.
function handle(g, ready) {
  const { state } = g;
  const { panel } = g.dom;
  return {
    element: panel,
    ready,
    focus: () => panel.focus(),
    async refresh() {
      await g.loadDatasets();
      await Promise.all([g.loadPage(), g.loadHandScores()]);
    },
    async openDataset(name) {
      state.dataset = name;
      state.offset = 0;
      g.resetView();
      g.renderDatasets();
      await Promise.all([g.loadPage("first"), g.loadHandScores()]);
      panel.focus();
    },
    destroy() {
      g.stopToast();
      g.stopPolling();
      panel.removeEventListener("keydown", g.onKey);
      g.root.replaceChildren();
    },
  };
}
