// ComfyUI frontend extension for the pack's nodes: listeners for the trainer's custom events (without one the
// frontend warns "Unknown message type ipa.train.step" on every step), a toast when a cancelled training run
// stopped (an interruption carries no message to the frontend), and a seed control on IPA VACE Sampler that steps
// by the number of candidates, since one run samples seeds seed .. seed + candidates - 1.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

// The pack's web folder may be served twice (see ipa_gallery.js): register once.
if (!window.__comfyuiIpaNodes) {
  window.__comfyuiIpaNodes = true;
  register();
}

function toast(severity, summary, detail, life) {
  const toaster = app.extensionManager?.toast;
  if (toaster?.add) toaster.add({ severity, summary, detail, life });
}

// Seed widgets keep to what the frontend's own control does: at most 2^50, within the widget's range.
const SEED_LIMIT = 0x4000000000000;

/** After the frontend's control moved `seed` by its step (increment/decrement), move it by `candidates` instead. */
function stepSeedByCandidates(node) {
  const seed = node.widgets?.find((w) => w.name === "seed");
  const candidates = node.widgets?.find((w) => w.name === "candidates");
  const control = seed?.linkedWidgets?.[0];
  if (!seed || !candidates || !control) return;
  for (const hook of ["beforeQueued", "afterQueued"]) {
    const original = control[hook];
    if (typeof original !== "function") continue;
    control[hook] = function (...args) {
      const before = Number(seed.value);
      const result = original.apply(this, args);
      const count = Math.max(1, Math.round(Number(candidates.value) || 1));
      const mode = control.value;
      if ((mode === "increment" || mode === "decrement") && Number(seed.value) !== before && count > 1) {
        const min = Math.max(seed.options?.min ?? 0, -SEED_LIMIT);
        const max = Math.min(seed.options?.max ?? SEED_LIMIT, SEED_LIMIT);
        const next = before + (mode === "increment" ? count : -count);
        seed.value = Math.min(Math.max(next, min), max);
        seed.callback?.(seed.value);
      }
      return result;
    };
  }
}

function register() {
  app.registerExtension({
    name: "ComfyUI-IPA.Nodes",
    setup() {
      // Progress and the live plot come through ComfyUI's own progress bar; these events are for other listeners.
      api.addEventListener("ipa.train.step", () => {});
      api.addEventListener("ipa.train.stopped", (event) => {
        const detail = event.detail || {};
        toast("info", "IPA training stopped", detail.message || `Stopped at step ${detail.step}.`, 15000);
      });
    },
    beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData?.name !== "IPAVaceSampler") return;
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function (...args) {
        const result = created?.apply(this, args);
        stepSeedByCandidates(this);
        return result;
      };
    },
  });
}
