// ComfyUI frontend extension: the IPA curation gallery as a sidebar tab (a launcher listing the datasets) and a
// command "Open IPA curation gallery" that shows the gallery over the whole window.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { createGallery, injectCss } from "./gallery/gallery.js";

const COMMAND_ID = "IPA.OpenCurationGallery";
const GPU_SETTING_ID = "IPA.Gallery.HandScoreOnGPU";
let overlay = null;
let gallery = null;

function apiBase() {
  // ComfyUI mirrors every route under /api (and may be served below a sub-path): let its client build the base.
  return api.apiURL("").replace(/\/$/, "");
}

function closeGallery() {
  gallery?.destroy();
  overlay?.remove();
  gallery = null;
  overlay = null;
  refreshLaunchers();
}

function openGallery(dataset) {
  if (overlay) {
    if (dataset) gallery.openDataset(dataset);
    gallery.focus();
    return;
  }
  injectCss();
  const inner = document.createElement("div");
  inner.className = "ipa-overlay-inner";
  overlay = document.createElement("div");
  overlay.className = "ipa-overlay";
  overlay.append(inner);
  overlay.addEventListener("mousedown", (event) => event.target === overlay && closeGallery());
  document.body.append(overlay);
  gallery = createGallery(inner, { apiBase: apiBase(), dataset, onClose: closeGallery, onCounts: refreshLaunchers, handScoreGpu });
}

function handScoreGpu() {
  const setting = app.extensionManager?.setting;
  if (setting?.get) return !!setting.get(GPU_SETTING_ID);
  return !!app.ui?.settings?.getSettingValue?.(GPU_SETTING_ID);
}

// The sidebar's counts follow the datasets: refreshed when the gallery marks (its onCounts), when it closes, when a
// prompt finishes (IPA Mark Preferred stores samples), and by a cheap poll (GET /ipa/datasets answers from the
// manifest cache) every few seconds while the tab is on screen, for samples stored by anything else.
const SIDEBAR_POLL_MS = 4000;
const launchers = new Set();

function refreshLaunchers() {
  for (const launcher of [...launchers]) launcher.refresh();
}

function countsText(d) {
  const c = d.counts || {};
  return d.error
    ? d.error
    : `${(c.preferred || 0).toLocaleString()} preferred, ${(c.rejected || 0).toLocaleString()} rejected, ${(c.pending || 0).toLocaleString()} pending`;
}

function datasetItem(d) {
  const item = document.createElement("div");
  item.className = "ipa-ds";
  item.dataset.name = d.name;
  const name = document.createElement("b");
  name.textContent = d.name;
  const counts = document.createElement("div");
  counts.className = "ipa-ds-counts";
  counts.style.opacity = "0.75";
  counts.textContent = countsText(d);
  item.append(name, counts);
  item.addEventListener("click", () => openGallery(d.name));
  return item;
}

function renderLauncher(element) {
  injectCss();
  const box = document.createElement("div");
  box.className = "ipa-sidebar";
  const open = document.createElement("button");
  open.className = "p-button p-component";
  open.textContent = "Open curation gallery";
  open.addEventListener("click", () => openGallery());
  const list = document.createElement("div");
  list.style.display = "contents";
  list.textContent = "Loading datasets…";
  box.append(open, list);
  element.replaceChildren(box);
  let shown = "";
  let busy = false;
  let mounted = false; // the frontend may call render before it attaches the element
  const born = Date.now();
  const launcher = {
    async refresh() {
      if (box.isConnected) mounted = true;
      else if (mounted || Date.now() - born > 60000) return stop(); // closed (or never shown): a new render starts anew
      if (busy || document.visibilityState === "hidden") return;
      busy = true;
      try {
        const response = await fetch(`${apiBase()}/ipa/datasets`);
        if (!response.ok) throw new Error(response.statusText);
        const body = await response.json();
        const text = JSON.stringify(body.datasets);
        if (text === shown) return; // nothing changed: the list (and its hover state) stays as it is
        shown = text;
        if (!body.datasets.length) list.textContent = "No datasets yet: collect samples with the IPA collector node.";
        else list.replaceChildren(...body.datasets.map(datasetItem));
      } catch (error) {
        shown = "";
        list.textContent = `Could not list datasets: ${error.message}`;
      } finally {
        busy = false;
      }
    },
  };
  const timer = setInterval(() => launcher.refresh(), SIDEBAR_POLL_MS);
  function stop() {
    clearInterval(timer);
    launchers.delete(launcher);
  }
  launchers.add(launcher);
  launcher.refresh();
}

// ComfyUI may serve web/ twice (WEB_DIRECTORY under the folder name and pyproject's [tool.comfy] web under the
// project name), importing this module twice: register once.
if (!window.__comfyuiIpaGallery) {
  window.__comfyuiIpaGallery = true;
  register();
}

function register() {
app.registerExtension({
  name: "ComfyUI-IPA.CurationGallery",
  commands: [{ id: COMMAND_ID, label: "Open IPA curation gallery", icon: "pi pi-images", function: () => openGallery() }],
  menuCommands: [{ path: ["View"], commands: [COMMAND_ID] }],
  settings: [
    {
      id: GPU_SETTING_ID,
      category: ["IPA", "Gallery", "Hand score on GPU"],
      name: "Score hands on the GPU",
      tooltip:
        "Off (default): the gallery's Score hands job runs DWPose on the CPU, so it never takes VRAM or GPU time " +
        "from a running prompt. On: use the GPU when onnxruntime has CUDA (faster; best when no graph is running).",
      type: "boolean",
      defaultValue: false,
    },
  ],
  setup() {
    // A finished prompt may have stored samples (IPA Mark Preferred): the sidebar and an open gallery catch up.
    api.addEventListener("execution_success", () => {
      refreshLaunchers();
      gallery?.refresh();
    });
    const manager = app.extensionManager;
    if (manager?.registerSidebarTab) {
      manager.registerSidebarTab({
        id: "ipa-gallery",
        icon: "pi pi-images",
        title: "IPA",
        tooltip: "IPA curation gallery",
        type: "custom",
        render: renderLauncher,
      });
    } else {
      // Older frontends without sidebar tabs: a small floating button.
      const button = document.createElement("button");
      button.textContent = "IPA gallery";
      Object.assign(button.style, { position: "fixed", right: "12px", bottom: "12px", zIndex: 1000 });
      button.addEventListener("click", () => openGallery());
      document.body.append(button);
    }
  },
});
}
