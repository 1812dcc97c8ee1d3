// The hand score tools: start, follow and cancel the server's hand-scoring job, and say what is missing when this
// server cannot score. Importing this module does nothing; createGallery installs it.
import { el, fmt } from "./dom.js";

export function installHandScores(g) {
  const { state, options } = g;
  const { request, dsUrl } = g.api;
  const { scoreButton, scoreProgress, scoreInfo, panel } = g.dom;

  // The server scores in a background thread (DWPose on CPU unless the GPU setting is on); the panel polls
  // the job's progress, updates the scores on the visible tiles as they land, and re-sorts once at the end so
  // tiles do not jump under the cursor while curating.
  let pollTimer = null;
  let lastScored = null;

  const jobActive = (job) => !!job && ["starting", "running", "cancelling"].includes(job.state);

  async function loadHandScores() {
    clearTimeout(pollTimer);
    if (!state.dataset) {
      state.handScores = null;
      renderScoreTools();
      return;
    }
    const dataset = state.dataset;
    let body;
    try {
      body = await request(dsUrl("/hand_scores"));
    } catch (error) {
      if (dataset !== state.dataset) return;
      state.handScores = { available: false, unavailable: { message: `Could not ask the server: ${error.message}` } };
      renderScoreTools();
      return;
    }
    if (dataset !== state.dataset) return;
    const wasActive = jobActive(state.handScores?.job);
    state.handScores = body;
    renderScoreTools();
    const key = `${dataset}:${body.scored}`;
    if (lastScored !== null && lastScored.startsWith(`${dataset}:`) && key !== lastScored) updateVisibleScores();
    lastScored = key;
    if (jobActive(body.job)) pollTimer = setTimeout(loadHandScores, 1000);
    else if (wasActive && body.job) jobFinished(body.job);
  }

  function jobFinished(job) {
    const c = job.counts || {};
    if (job.state === "failed") g.showToast(`Hand scoring failed: ${job.error}`, "error");
    else {
      const skipped = c.skipped ? `, ${c.skipped} without a driving hand` : "";
      const failed = c.failed ? `, ${c.failed} failed` : "";
      g.showToast(`Hand scoring ${job.state === "cancelled" ? "cancelled" : "done"}: ${c.scored || 0} scored${skipped}${failed}`);
    }
    g.loadPage(); // now re-sort (when sorting by hand score) and show the final scores
  }

  async function updateVisibleScores() {
    // The current page's scores, merged into the tiles in place (same query, so the same samples).
    const [sort, order] = state.sort.split(":");
    const query = new URLSearchParams({ offset: String(state.offset), limit: String(state.limit), status: state.filter, sort, order });
    try {
      const body = await request(dsUrl(`/samples?${query}`));
      const scores = new Map(body.samples.map((s) => [s.id, s.hand_score]));
      state.samples.forEach((sample) => scores.has(sample.id) && (sample.hand_score = scores.get(sample.id)));
      g.render();
    } catch {
      /* the next poll tries again */
    }
  }

  async function onScoreButton(event) {
    const info = state.handScores;
    if (!info) return;
    if (!info.available) {
      toggleScoreInfo();
      return;
    }
    if (jobActive(info.job)) {
      try {
        const body = await request(dsUrl("/hand_scores"), { method: "DELETE" });
        state.handScores.job = body.job;
        renderScoreTools();
        g.showToast("Stopping hand scoring…");
      } catch (error) {
        g.showToast(`Could not cancel: ${error.message}`, "error");
      }
      return;
    }
    const rescore = event.shiftKey;
    const gpu = typeof options.handScoreGpu === "function" ? !!options.handScoreGpu() : false;
    try {
      const body = await request(dsUrl("/hand_scores"), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ rescore, gpu }),
      });
      state.handScores.job = body.job;
      g.showToast(rescore ? "Scoring the hands of every sample again…" : "Scoring hands…");
    } catch (error) {
      g.showToast(`Could not start hand scoring: ${error.message}`, "error");
    }
    loadHandScores();
    panel.focus();
  }

  function toggleScoreInfo(force) {
    scoreInfo.hidden = force === undefined ? !scoreInfo.hidden : !force;
  }

  function renderScoreTools() {
    const info = state.handScores;
    const job = info?.job;
    scoreButton.classList.toggle("ipa-unavailable", !!info && !info.available);
    scoreButton.setAttribute("aria-disabled", info && info.available ? "false" : "true");
    scoreProgress.hidden = !jobActive(job);
    if (!info) {
      scoreButton.textContent = "Score hands";
      scoreButton.title = "";
      return;
    }
    if (!info.available) {
      const u = info.unavailable || {};
      scoreButton.textContent = "Score hands";
      scoreButton.title = `Unavailable: ${u.message || "no pose detector"} (click for details)`;
      const files = u.missing_files?.length ? u.missing_files : [];
      const parts = [
        el("h3", { text: "Hand scoring needs DWPose" }),
        el("p", { text: "The gallery works without it; samples simply have no hand score." }),
        files.length ? el("p", {}, "Missing: ", ...files.map((f, i) => [i ? ", " : "", el("code", { text: f })])) : null,
        u.install_dir ? el("p", {}, "Put them in ", el("code", { text: u.install_dir }), ", then click Score hands again.") : null,
        el("pre", { class: "ipa-score-message", text: u.message || "" }),
      ];
      scoreInfo.replaceChildren(...parts.filter(Boolean));
      return;
    }
    scoreInfo.hidden = true;
    if (jobActive(job)) {
      const total = job.total ?? 0;
      scoreProgress.max = Math.max(1, total);
      scoreProgress.value = job.done;
      scoreButton.textContent =
        job.state === "cancelling" ? "Stopping…" : job.state === "starting" ? "Loading DWPose… · Cancel" : `Scoring ${job.done}/${total} · Cancel`;
      scoreButton.title = `Hand scoring on the ${job.device.toUpperCase()}; click to cancel (scores so far are kept)`;
    } else {
      scoreButton.textContent = "Score hands";
      scoreButton.title =
        `${fmt(info.scored)} of ${fmt(info.total)} samples scored. Click: score the unscored ones with DWPose ` +
        "(how well the hands agree with the driving pose); Shift+click: score all again.";
    }
  }

  Object.assign(g, { loadHandScores, jobFinished, updateVisibleScores, onScoreButton, toggleScoreInfo, renderScoreTools, stopPolling: () => clearTimeout(pollTimer) });
}
