// Marking samples preferred, rejected or pending, and undo. Importing this module does nothing; createGallery
// installs it.

export function installMarks(g) {
  const { state } = g;
  const { request, dsUrl } = g.api;
  const { panel } = g.dom;

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
    if (markSamples(targets, status, bulk) && !bulk) g.move(1);
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
      if (ok) g.showToast(message, status);
      else state.undo = state.undo.filter((e) => e !== entry);
    });
    return true;
  }

  function send(marks, revert) {
    g.render();
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
        g.renderCounts();
        g.options.onCounts?.(state.dataset, body.counts); // the page around the gallery (ComfyUI's sidebar) follows
        batch.forEach((item) => item.resolve(true));
      } catch (error) {
        // Back to what was on disk before this batch: the earliest mark's previous status wins.
        const byId = new Map();
        for (const item of [...batch].reverse()) for (const m of item.revert) byId.set(m.id, m.status);
        state.samples.forEach((s) => byId.has(s.id) && (s.status = byId.get(s.id)));
        g.render();
        g.showToast(`Not saved: ${error.message}`, "error");
        batch.forEach((item) => item.resolve(false));
      }
    }
    flushing = false;
  }

  function undo() {
    const last = state.undo.pop();
    if (!last) {
      g.showToast("Nothing to undo");
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
    ).then((ok) => ok && g.showToast(last.marks.length > 1 ? `Undid ${last.marks.length} marks` : "Undone"));
    g.render();
    if (state.detailOpen) g.openDetail();
  }

  Object.assign(g, { mark, markTile, markSamples, send, flush, undo, marksIdle: () => idle });
}
