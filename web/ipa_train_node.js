// ComfyUI frontend extension for IPA Train LoRA: the live plot stays on screen. The node has 29 inputs; the live
// loss plot is drawn under the widgets, so at 100 % zoom it sat off screen. The inputs a run usually changes stay
// visible; the others are marked advanced, which the frontend (1.35.9's LiteGraph) hides until the node's context menu
// says "Show Advanced" (remembered per node in the workflow as showAdvanced). Values, links and the prompt are unchanged:
// hidden widgets still send their values (the frontend queues every widget's value, shown or not).
import { app } from "../../scripts/app.js";

const NODE = "IPATrainLoRA";
// What a run usually changes; everything else (objective settings, precision, memory, reference...) is advanced.
export const ESSENTIAL_INPUTS = ["dataset", "base_model", "lora_name", "objective", "steps", "gpus", "resume"];

function collapseAdvanced(node) {
  let hidden = 0;
  for (const widget of node.widgets || []) {
    if (ESSENTIAL_INPUTS.includes(widget.name) || widget.name?.startsWith("$$")) continue;
    widget.advanced = true;
    // LiteGraph 1.35.9 skips advanced widgets when drawing but still lays them out (only `hidden` frees their space):
    // hidden follows the node's Show Advanced, so the plot moves up to the visible inputs.
    let own = widget.hidden;
    Object.defineProperty(widget, "hidden", {
      configurable: true,
      get: () => !!own || !node.showAdvanced,
      set: (value) => (own = value),
    });
    hidden++;
  }
  if (!hidden) return;
  // A new node starts as small as its visible inputs; a loaded one keeps the size stored in its workflow.
  const size = node.computeSize?.();
  if (size) node.setSize([Math.max(node.size[0], size[0]), size[1]]);
}

// The pack's web folder may be served twice (see ipa_gallery.js): register once.
if (!window.__comfyuiIpaTrainNode) {
  window.__comfyuiIpaTrainNode = true;
  app.registerExtension({
    name: "ComfyUI-IPA.TrainNode",
    beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData?.name !== NODE) return;
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function (...args) {
        const result = created?.apply(this, args);
        collapseAdvanced(this);
        return result;
      };
    },
  });
}
