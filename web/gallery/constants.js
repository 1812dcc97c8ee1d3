// The gallery's fixed choices: statuses, filters, sorts, page sizes, the tile buttons and the help texts. Data only.

export const STATUSES = ["pending", "preferred", "rejected"];
export const FILTERS = ["all", ...STATUSES];
export const SORTS = [
  ["date:desc", "Newest first"],
  ["date:asc", "Oldest first"],
  ["hand_score:desc", "Hand score, best first"],
  ["hand_score:asc", "Hand score, worst first"],
  ["seed:asc", "Seed, ascending"],
  ["seed:desc", "Seed, descending"],
];
export const PAGE_SIZES = [30, 60, 120, 240];
// The tile's buttons: status, icon, label, key.
export const TILE_ACTIONS = [
  ["preferred", "✓", "Preferred", "P"],
  ["rejected", "✕", "Rejected", "R"],
  ["pending", "↺", "Pending", "0"],
];
export const MOUSE_HELP = [
  ["click", "focus the sample"],
  ["double-click", "open large"],
  ["✓ ✕ ↺ on a tile", "mark it preferred, rejected, pending (a selected tile: the whole selection)"],
  ["○ corner, Ctrl+click", "select or unselect; Shift+click selects a range"],
];
export const STATE_KEY = "ipa-gallery-state";
export const KEYS_HELP = [
  ["P", "mark preferred (the selection, if any), then next"],
  ["R", "mark rejected, then next"],
  ["S / Space", "skip: leave as is, go to next"],
  ["0", "back to pending"],
  ["→ / J, ← / K", "next, previous sample"],
  ["↑ ↓", "row up, row down"],
  ["Enter / O", "open large; Esc closes"],
  ["X", "select or unselect; Shift+click selects a range"],
  ["A", "select the whole page; Esc clears the selection"],
  ["U / Ctrl+Z", "undo the last mark"],
  ["[ ]  PgUp PgDn", "previous, next page"],
  ["Home End", "first, last page"],
  ["C", "compact cards (more on screen) or large cards"],
  ["1 2 3 4", "show all, pending, preferred, rejected"],
  ["?", "this help"],
];
