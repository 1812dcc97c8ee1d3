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
  gallery = createGallery(inner, { apiBase: apiBase(), dataset, onClose: closeGallery, handScoreGpu });
}

function handScoreGpu() {
  const setting = app.extensionManager?.setting;
  if (setting?.get) return !!setting.get(GPU_SETTING_ID);
  return !!app.ui?.settings?.getSettingValue?.(GPU_SETTING_ID);
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
  fetch(`${apiBase()}/ipa/datasets`)
    .then((response) => (response.ok ? response.json() : Promise.reject(new Error(response.statusText))))
    .then((body) => {
      if (!body.datasets.length) {
        list.textContent = "No datasets yet: collect samples with the IPA collector node.";
        return;
      }
      list.replaceChildren(
        ...body.datasets.map((d) => {
          const item = document.createElement("div");
          item.className = "ipa-ds";
          const c = d.counts || {};
          const name = document.createElement("b");
          name.textContent = d.name;
          const counts = document.createElement("div");
          counts.style.opacity = "0.75";
          counts.textContent = d.error
            ? d.error
            : `${(c.preferred || 0).toLocaleString()} preferred, ${(c.rejected || 0).toLocaleString()} rejected, ${(c.pending || 0).toLocaleString()} pending`;
          item.append(name, counts);
          item.addEventListener("click", () => openGallery(d.name));
          return item;
        }),
      );
    })
    .catch((error) => (list.textContent = `Could not list datasets: ${error.message}`));
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
