// ComfyUI frontend extension: the pack's template cards say what each template does and needs. The template browser
// of frontend 1.35.9 shows a custom node pack's template by its file name only, as title and again as description;
// the description is in each template file (extra.description, written by scripts/build_example_workflows.py), and
// this puts it in place of the repeated name when the cards appear. Nothing else on the page is touched.
import { api } from "../../scripts/api.js";

const PREFIX = "template-workflow-";
let descriptions = null; // template name -> description, once loaded

async function loadDescriptions() {
  const found = new Map();
  const byPack = await (await api.fetchApi("/workflow_templates")).json();
  for (const [pack, names] of Object.entries(byPack)) {
    for (const name of names) {
      if (!name.startsWith("IPA ")) continue;
      try {
        const url = `/workflow_templates/${encodeURIComponent(pack)}/${encodeURIComponent(name)}.json`;
        const workflow = await (await api.fetchApi(url)).json();
        const text = workflow?.extra?.description;
        if (typeof text === "string" && text) found.set(name, text);
      } catch {
        /* not one of ours, or unreadable: its card keeps what the frontend shows */
      }
    }
  }
  return found;
}

function describeCards() {
  if (!descriptions?.size) return;
  for (const card of document.querySelectorAll(`[data-testid^="${PREFIX}"]`)) {
    const name = card.dataset.testid.slice(PREFIX.length);
    const text = descriptions.get(name);
    if (!text || card.dataset.ipaDescribed) continue;
    // The leaf elements that repeat the name: the first is the title, the next one the description.
    const repeats = [...card.querySelectorAll("h3, p, span, div")].filter((e) => !e.children.length && e.textContent.trim() === name);
    if (repeats.length < 2) continue;
    const target = repeats[repeats.length - 1];
    target.textContent = text;
    target.title = text;
    card.dataset.ipaDescribed = "true";
  }
}

// The pack's web folder may be served twice (see ipa_gallery.js): observe once.
if (!window.__comfyuiIpaTemplates) {
  window.__comfyuiIpaTemplates = true;
  let pending = false;
  const observer = new MutationObserver(() => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(async () => {
      pending = false;
      if (!document.querySelector(`[data-testid^="${PREFIX}IPA "]`)) return;
      if (descriptions === null) {
        descriptions = new Map(); // one load at a time
        try {
          descriptions = await loadDescriptions();
        } catch {
          descriptions = null;
          return;
        }
      }
      describeCards();
    });
  });
  observer.observe(document.body, { childList: true, subtree: true });
}
