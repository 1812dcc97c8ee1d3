// The gallery's view state, and the part of it (dataset, filter, sort, page) that comes back next time from
// localStorage. Importing this module does nothing.
import { FILTERS, PAGE_SIZES, SORTS, STATE_KEY } from "./constants.js";

function loadState() {
  try {
    return JSON.parse(localStorage.getItem(STATE_KEY) || "{}") || {};
  } catch {
    return {};
  }
}

export function saveState(state) {
  const { dataset, filter, sort, limit, offset, compact } = state;
  try {
    localStorage.setItem(STATE_KEY, JSON.stringify({ dataset, filter, sort, limit, offset, compact }));
  } catch {
    /* private mode: the view simply starts fresh next time */
  }
}

export function createState(options) {
  const saved = loadState();
  return {
    datasets: [],
    dataset: options.dataset || saved.dataset || null,
    // The last view comes back; the first time, everything (a curated dataset must not look empty).
    filter: FILTERS.includes(saved.filter) ? saved.filter : "all",
    sort: SORTS.some(([v]) => v === saved.sort) ? saved.sort : "date:desc",
    limit: PAGE_SIZES.includes(saved.limit) ? saved.limit : 60,
    offset: Number.isInteger(saved.offset) && saved.offset >= 0 ? saved.offset : 0,
    // Compact cards: about 50 on a 1600x1000 screen instead of 15, for sweeping through thousands of samples.
    compact: saved.compact === true,
    total: 0,
    counts: { pending: 0, preferred: 0, rejected: 0 },
    samples: [],
    focus: 0,
    selected: new Set(),
    anchor: null,
    undo: [],
    detailOpen: false,
    detailToken: 0,
    pageToken: 0,
    loading: false,
    // Hand scoring: what GET /hand_scores said (available, why not, scored/total, the last job).
    handScores: null,
  };
}
