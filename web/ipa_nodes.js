// ComfyUI frontend extension for the pack's nodes: listeners for the trainer's custom events (without one the
// frontend warns "Unknown message type ipa.train.step" on every step), a toast when a cancelled training run
// stopped (an interruption carries no message to the frontend; frontend 1.35.9's queue lists every interrupted job
// as "Failed" and offers no way to say "cancelled", so the toast and the node say it), a seed control on IPA VACE
// Sampler that steps by the number of candidates, since one run samples seeds seed .. seed + candidates - 1 (and
// starts after the dataset's highest stored seed, see continueAfterStoredSeeds), and queue-time refusals of the
// pack's nodes shown once, on their node (see showRefusals).
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

// ---------------------------------------------------------------------------------------------- seeds never twice
// A workflow (the curate template) opens with the seed it was saved with, so the first runs re-sampled seeds already
// in the dataset. ComfyUI's convention is that the seed widget shows the seed the next run uses and its control moves
// it after queueing; so when a graph opens or Mark Preferred's dataset changes, a seed at or below the dataset's
// highest stored seed is moved, in the widget, to the next one after it, and the node says so before anything samples.
// (Any sample's seed counts, whatever its settings: a skipped seed costs nothing, a repeated one costs GPU time.)

async function highestSeed(dataset) {
  const query = "sort=seed&order=desc&status=all&limit=500";
  const response = await api.fetchApi(`/ipa/datasets/${encodeURIComponent(dataset)}/samples?${query}`);
  if (!response.ok) return null; // no such dataset yet: nothing to continue after
  const seeds = ((await response.json()).samples || []).map((s) => s.seed).filter((seed) => Number.isFinite(seed));
  return seeds.length ? Math.max(...seeds) : null;
}

// The pack's samplers whose seed steps by the candidate count (candidate i = seed + i).
const SAMPLER_TYPES = ["IPAVaceSampler", "IPAAnimateSampler"];

async function continueAfterStoredSeeds() {
  const nodes = app.graph?.nodes ?? app.graph?._nodes ?? [];
  const marks = nodes.filter((n) => n.type === "IPAMarkPreferred");
  const datasets = [...new Set(marks.map((n) => n.widgets?.find((w) => w.name === "dataset")?.value).filter(Boolean))];
  if (!datasets.length) return;
  let highest = null;
  let where = null;
  for (const dataset of datasets) {
    const top = await highestSeed(dataset).catch(() => null);
    if (top !== null && (highest === null || top > highest)) [highest, where] = [top, dataset];
  }
  if (highest === null) return;
  for (const sampler of nodes.filter((n) => SAMPLER_TYPES.includes(n.type))) {
    const seed = sampler.widgets?.find((w) => w.name === "seed");
    if (!seed || Number(seed.value) > highest) continue;
    const before = Number(seed.value);
    seed.value = Math.min(highest + 1, seed.options?.max ?? SEED_LIMIT);
    seed.callback?.(seed.value);
    const text = `Seed set to ${seed.value} (was ${before}): dataset '${where}' already holds samples up to seed ${highest}; ` +
      "this continues after them so no seed is sampled twice.";
    api.dispatchCustomEvent("progress_text", { nodeId: String(sampler.id), text });
    toast("info", `${sampler.title || sampler.type}: seed moved on`, text, 10000);
    app.graph.setDirtyCanvas?.(true, true);
  }
}

function watchDataset(node) {
  const widget = node.widgets?.find((w) => w.name === "dataset");
  if (!widget) return;
  const original = widget.callback;
  widget.callback = function (...args) {
    const result = original?.apply(this, args);
    continueAfterStoredSeeds();
    return result;
  };
}

// ---------------------------------------------------------------------------------------------- queue-time refusals
// ComfyUI files a node's validate_inputs message once per input that function takes ("gpus - dataset x has no
// preferred samples", repeated for dataset, lora_name, gpus, ...), and its dialog lists every error twice (in the
// summary and under the node). When another output of the graph is fine, it accepts the prompt with the refusal in
// node_errors and the frontend shows only a red outline. For the pack's nodes: one error per distinct message, filed
// under the input the message is about; the reason written under the node; a toast when no dialog opens.

const PACK_PREFIX = "IPA";

/** The input a message is about: the input name that appears first in it as a word, else null. */
function inputNamed(message, names) {
  let best = null;
  let at = Infinity;
  for (const name of names) {
    const match = new RegExp(`(^|[^A-Za-z0-9_])${name}($|[^A-Za-z0-9_])`).exec(message);
    if (match && match.index < at) {
      at = match.index;
      best = name;
    }
  }
  return best;
}

/** The node's errors with each message once (ComfyUI's "<input> - " prefix removed) and the right input named. */
function dedupeErrors(errors) {
  const names = [...new Set(errors.map((e) => e.extra_info?.input_name).filter(Boolean))];
  const seen = new Map();
  for (const error of errors) {
    let text = String(error.details ?? "");
    const input = error.extra_info?.input_name;
    if (error.type === "custom_validation_failed" && input && text.startsWith(`${input} - `)) text = text.slice(input.length + 3);
    if (seen.has(text)) continue;
    const about = error.type === "custom_validation_failed" ? inputNamed(text, names) : input;
    seen.set(text, { ...error, message: "Refused", details: text, extra_info: { ...error.extra_info, input_name: about ?? undefined } });
  }
  return [...seen.values()];
}

/** Rewrites the pack's nodes' entries of `nodeErrors` in place; returns [[node id, class type, messages]]. */
function tidyRefusals(nodeErrors) {
  const refused = [];
  for (const [id, entry] of Object.entries(nodeErrors ?? {})) {
    if (!String(entry?.class_type ?? "").startsWith(PACK_PREFIX) || !entry.errors?.length) continue;
    entry.errors = dedupeErrors(entry.errors);
    refused.push([id, entry.class_type, entry.errors.map((e) => e.details)]);
  }
  return refused;
}

function nodeTitle(id, classType) {
  const node = app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id);
  return node?.title || classType;
}

function writeUnderNode(id, messages, ranOthers) {
  const tail = ranOthers ? "This node did not run and nothing was stored; the rest of the graph ran." : "Nothing ran.";
  api.dispatchCustomEvent("progress_text", { nodeId: String(id), text: `Refused: ${messages.join("\n")}\n${tail}` });
}

function showRefusals() {
  const original = api.queuePrompt;
  if (typeof original !== "function" || original.__ipaWrapped) return;
  const wrapped = async function (...args) {
    let answer;
    try {
      answer = await original.apply(this, args);
    } catch (error) {
      const response = error?.response;
      const refused = response ? tidyRefusals(response.node_errors) : [];
      if (refused.length) {
        const others = Object.values(response.node_errors).some((e) => !String(e?.class_type ?? "").startsWith(PACK_PREFIX) && e.errors?.length);
        // the reasons are listed under each node below the summary: say them there only
        if (response.error && typeof response.error === "object" && !others) response.error.details = "nothing ran; the reasons follow";
        for (const [id, , messages] of refused) writeUnderNode(id, messages, false);
      }
      throw error;
    }
    const refused = tidyRefusals(answer?.node_errors);
    for (const [id, classType, messages] of refused) {
      writeUnderNode(id, messages, true);
      toast("warn", `${nodeTitle(id, classType)} did not run`, "Nothing was stored for it; the reason is written under the node (red outline).", 15000);
    }
    return answer;
  };
  wrapped.__ipaWrapped = true;
  api.queuePrompt = wrapped;
}

function register() {
  app.registerExtension({
    name: "ComfyUI-IPA.Nodes",
    setup() {
      showRefusals();
      // Progress and the live plot come through ComfyUI's own progress bar; these events are for other listeners.
      api.addEventListener("ipa.train.step", () => {});
      api.addEventListener("ipa.train.stopped", (event) => {
        const detail = event.detail || {};
        toast("info", "IPA training cancelled", detail.message || `Cancelled at step ${detail.step}.`, 15000);
      });
    },
    async afterConfigureGraph() {
      await continueAfterStoredSeeds();
    },
    beforeRegisterNodeDef(nodeType, nodeData) {
      const setup = { IPAVaceSampler: stepSeedByCandidates, IPAAnimateSampler: stepSeedByCandidates, IPAMarkPreferred: watchDataset }[nodeData?.name];
      if (!setup) return;
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function (...args) {
        const result = created?.apply(this, args);
        setup(this);
        return result;
      };
    },
  });
}
