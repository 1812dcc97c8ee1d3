// The detail view: one sample large, its hand close-ups and its fields. Importing this module does nothing;
// createGallery installs it.
import { el, fmt, score } from "./dom.js";

export function installDetail(g) {
  const { state } = g;
  const { request, dsUrl, fileUrl } = g.api;
  const { detail, panel } = g.dom;

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
        el("button", { class: "ipa-btn ipa-preferred", text: "P  Preferred", onclick: () => g.mark("preferred") }),
        el("button", { class: "ipa-btn ipa-rejected", text: "R  Rejected", onclick: () => g.mark("rejected") }),
        el("button", { class: "ipa-btn", text: "0  Pending", onclick: () => g.mark("pending") }),
        el("button", { class: "ipa-btn", text: "S  Skip", onclick: () => g.move(1) }),
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
    renderHands(hands, sample, info);
    renderFields(metaList, info);
  }

  // The hand close-ups: one per hand track the server can cut, and the stored hands.webp.
  function renderHands(hands, sample, info) {
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
  }

  // The sample's fields: the main ones first, settings next, everything (raw) in a collapsed block.
  function renderFields(metaList, info) {
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

  Object.assign(g, { closeDetail, openDetail });
}
