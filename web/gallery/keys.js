// The keyboard: every gallery key, and the help that lists them. Importing this module does nothing; createGallery
// installs it.
import { FILTERS } from "./constants.js";

export function installKeys(g) {
  const { state, options } = g;
  const { help, scoreInfo } = g.dom;

  function toggleHelp(force) {
    help.hidden = force === undefined ? !help.hidden : !force;
  }

  function onKey(event) {
    const tag = event.target?.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") return;
    const key = event.key;
    const lower = key.length === 1 ? key.toLowerCase() : key;
    const ctrl = event.ctrlKey || event.metaKey;
    let handled = true;
    if (ctrl && lower === "z") g.undo();
    else if (ctrl || event.altKey) handled = false;
    else if (lower === "p") g.mark("preferred");
    else if (lower === "r") g.mark("rejected");
    else if (key === "0") g.mark("pending");
    else if (lower === "s" || key === " ") g.move(1);
    else if (key === "ArrowRight" || lower === "j") g.move(1);
    else if (key === "ArrowLeft" || lower === "k") g.move(-1);
    else if (key === "ArrowDown" && !state.detailOpen) g.move(g.columns());
    else if (key === "ArrowUp" && !state.detailOpen) g.move(-g.columns());
    else if (key === "Enter" || lower === "o") state.detailOpen ? g.closeDetail() : g.openDetail();
    else if (lower === "x") g.toggleSelect(state.focus, event.shiftKey);
    else if (lower === "a") {
      state.samples.forEach((s) => state.selected.add(s.id));
      g.render();
    } else if (lower === "u") g.undo();
    else if (key === "[" || key === "PageUp") g.changePage(-1);
    else if (key === "]" || key === "PageDown") g.changePage(1);
    else if (key === "Home") g.jumpPage("first");
    else if (key === "End") g.jumpPage("last");
    else if (lower === "c") g.setCompact(!state.compact);
    else if (["1", "2", "3", "4"].includes(key)) g.setFilter(FILTERS[Number(key) - 1]);
    else if (key === "?") toggleHelp();
    else if (key === "Escape") {
      if (!help.hidden) toggleHelp(false);
      else if (!scoreInfo.hidden) g.toggleScoreInfo(false);
      else if (state.detailOpen) g.closeDetail();
      else if (state.selected.size) {
        state.selected.clear();
        g.render();
      } else if (options.onClose) options.onClose();
      else handled = false;
    } else handled = false;
    if (handled) {
      // ComfyUI's own shortcuts (R refreshes, Ctrl+Z undoes graph edits) must not see gallery keys.
      event.preventDefault();
      event.stopPropagation();
    }
  }

  Object.assign(g, { toggleHelp, onKey });
}
