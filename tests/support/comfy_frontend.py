"""ComfyUI's real frontend (the comfyui-frontend-package the server ships) in headless Chromium, driven by Playwright's
Python client: open a template through the template browser, read and set widgets, queue the graph as the Run button
does, and read what the page shows. Requests leave 127.0.0.1 never (the missing-model dialog would ask Hugging Face
for file sizes): they are aborted."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

CHROMIUM = os.environ.get("IPA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium_executable() -> Optional[str]:
    if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


# JavaScript run in the page. `nodes()` works on the current root graph.
HELPERS = """
window.__ipa = {
  nodes() { return app.graph.nodes ?? app.graph._nodes; },
  byType(type) { return this.nodes().filter((n) => n.type === type); },
  setWidgets(type, values) {
    const found = this.byType(type);
    if (!found.length) throw new Error(`no ${type} node`);
    for (const node of found) {
      for (const [name, value] of Object.entries(values)) {
        const widget = node.widgets?.find((w) => w.name === name);
        if (!widget) throw new Error(`${type} has no widget ${name}`);
        widget.value = value;
        widget.callback?.(value);
      }
    }
  },
  widget(type, name) { return this.byType(type)[0].widgets.find((w) => w.name === name)?.value; },
  nodeText(type) {
    const node = this.byType(type)[0];
    return node.widgets?.find((w) => w.name === "$$node-text-preview")?.value ?? null;
  },
  replaceNode(node, type, widgetValues) {
    // what a user does by hand: add the other node, wire its output where the old one went, delete the old one
    const graph = app.graph;
    const replacement = LiteGraph.createNode(type);
    replacement.pos = [...node.pos];
    graph.add(replacement);
    for (const [name, value] of Object.entries(widgetValues || {})) {
      replacement.widgets.find((w) => w.name === name).value = value;
    }
    for (const linkId of [...(node.outputs?.[0]?.links ?? [])]) {
      const link = graph.links.get ? graph.links.get(linkId) : graph.links[linkId];
      replacement.connect(0, graph.getNodeById(link.target_id), link.target_slot);
    }
    graph.remove(node);
    return replacement.id;
  },
};
"""


class Frontend:
    """One browser page on the server at ``url``; ``close()`` ends it. ``console`` and ``page_errors`` collect what the
    page logged."""

    def __init__(self, url: str, viewport=(1600, 1000)):
        from playwright.sync_api import sync_playwright

        executable = chromium_executable()
        if executable is None:
            raise RuntimeError("no Chromium: install Debian's package (apt-get install -y chromium)")
        self.url = url
        self.console: list[tuple[str, str]] = []
        self.page_errors: list[str] = []
        self.responses: list[tuple[int, str, str]] = []  # (status, url, content type) of every response
        self._playwright = sync_playwright().start()
        try:
            self.browser = self._playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
            self.page = self.browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            self.page.route("**/*", self._local_only)
            self.page.on("console", lambda message: self.console.append((message.type, message.text)))
            self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
            self.page.on("response", lambda r: self.responses.append((r.status, r.url, r.headers.get("content-type", ""))))
            self.page.goto(url)
            self.page.wait_for_function("() => window.app?.graph && window.app.extensionManager?.command && window.LiteGraph",
                                        timeout=120_000)
            self.page.evaluate(HELPERS)
        except BaseException:
            self.close()
            raise

    def _local_only(self, route) -> None:
        if route.request.url.startswith(self.url) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            route.abort()

    def close(self) -> None:
        try:
            if getattr(self, "browser", None) is not None:
                self.browser.close()
        finally:
            self._playwright.stop()

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def command(self, command_id: str) -> None:
        self.js("(id) => app.extensionManager.command.execute(id)", command_id)

    # ------------------------------------------------------------------------------------------ templates

    def open_template(self, pack_folder: str, name: str) -> None:
        """Workflow > Browse Templates, the pack's category, click the card: the frontend fetches
        /api/workflow_templates/<pack folder>/<name>.json and loads it as a template."""
        self.js("() => { window.__ipaWorkflowBefore = app.extensionManager.workflow?.activeWorkflow; }")
        self.command("Comfy.BrowseTemplates")
        self.page.get_by_text(pack_folder, exact=True).first.click()
        card = self.page.locator(f'[data-testid="template-workflow-{name}"]')
        card.wait_for(timeout=30_000)
        card.click()
        # a newly opened workflow: the template's name, or "<name> (2)" when it is open already in another tab
        self.page.wait_for_function("""(name) => { const active = app.extensionManager.workflow?.activeWorkflow;
            return active && active !== window.__ipaWorkflowBefore && (active.filename === name || active.filename.startsWith(name + ' ('));
        }""", arg=name, timeout=30_000)

    def template_cards(self, pack_folder: str) -> list[dict]:
        """Title, description and whether the thumbnail loaded, per card of the pack's category (dialog left open)."""
        self.command("Comfy.BrowseTemplates")
        self.page.get_by_text(pack_folder, exact=True).first.click()
        self.page.locator('[data-testid^="template-workflow-"]').first.wait_for(timeout=30_000)
        deadline = time.monotonic() + 20
        while True:
            cards = self.js("""() => [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map((card) => {
                const image = card.querySelector('img');
                const texts = [...card.querySelectorAll('h3, p, span, div')].filter((e) => !e.children.length)
                  .map((e) => e.innerText.trim()).filter(Boolean);
                return {id: card.dataset.testid.slice('template-workflow-'.length), texts,
                        image: image ? {src: image.src, loaded: image.complete && image.naturalWidth > 0, width: image.naturalWidth} : null};
            })""")
            if all(card["image"] and card["image"]["loaded"] for card in cards) or time.monotonic() > deadline:
                return cards
            time.sleep(0.25)

    def close_dialogs(self) -> list[str]:
        """Texts of the open dialogs, then closes them (Escape)."""
        texts = self.js("() => [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText)")
        deadline = time.monotonic() + 15
        while self.js("() => !!document.querySelector('.p-dialog')"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"dialogs did not close: {texts}")
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(200)
            # dialogs that ignore Escape: their own close (x) button, the last one opened first
            self.js("""() => { const dialogs = document.querySelectorAll('.p-dialog');
                const last = dialogs[dialogs.length - 1];
                const close = last?.querySelector('.p-dialog-close-button, button[aria-label="Close"], button:has(.pi-times), button:has([class*="lucide--x"])');
                close?.click(); }""")
            self.page.wait_for_timeout(200)
        return texts

    def missing_models_reports(self) -> list[str]:
        """What the frontend told about missing models after a workflow loaded, as texts of the form
        "Missing Models ... <folder> / <file>" (empty when it told nothing), and closes it. Which UI it shows is
        detected by what is on the page, not by version: a dialog (frontend 1.35, ComfyUI v0.8), or an errors panel
        (frontend 1.45, ComfyUI v0.28: a "N ERRORS ... Show missing models" toast that opens the right side
        panel's Errors tab, one group per model folder)."""
        if self.js("() => !!document.querySelector('.p-dialog')"):
            return self.close_dialogs()
        show = self.page.get_by_text("Show missing models", exact=True)
        if not show.count():
            return []
        show.first.click()
        group = self.page.locator('[data-testid="error-group-missing-model"]')
        group.wait_for(timeout=15_000)
        self.page.locator('[data-testid="error-group-missing-model"] [title$=".safetensors"]').first.wait_for(timeout=15_000)
        text = self.js("""() => {
            const group = document.querySelector('[data-testid="error-group-missing-model"]');
            const lines = [group.innerText.split('\\n')[0]];
            let folder = null;
            for (const e of group.querySelectorAll('*')) {
                const own = e.children.length ? '' : (e.innerText || '').trim();
                const heading = own.match(/^([A-Za-z0-9_-]+) \\(\\d+\\)$/);
                if (heading) folder = heading[1];
                if (e.title && /\\.(safetensors|gguf|pt|pth|ckpt|bin)$/.test(e.title) && !lines.includes(`${folder} / ${e.title}`))
                    lines.push(`${folder} / ${e.title}`);
            }
            return lines.join('\\n');
        }""")
        self.close_side_panel()
        return [text]

    def close_side_panel(self) -> None:
        """Closes the right side panel (frontend 1.45) if it is open, with its own toggle in the panel's header."""
        self.js("""() => { const panel = document.querySelector('[data-testid="properties-panel"]');
            if (!panel) return;
            const buttons = [...panel.querySelectorAll('button')].filter((b) => !b.dataset.testid);
            const toggle = buttons.find((b) => /close|toggle|panel/i.test(b.getAttribute('aria-label') || '')) || buttons[0];
            toggle?.click(); }""")
        self.page.wait_for_timeout(300)

    def graph_widgets(self) -> dict[int, list]:
        """{node id: widgets_values} of the graph as the frontend would save it now."""
        nodes = self.js("() => app.graph.serialize().nodes.map((n) => [n.id, n.type, n.widgets_values ?? []])")
        return {node_id: values for node_id, _, values in nodes}

    # ------------------------------------------------------------------------------------------ running

    def queue(self) -> dict:
        """Runs the graph as the Run button does (the frontend builds the API prompt and POSTs /api/prompt); returns
        ComfyUI's answer (prompt_id, or the validation errors with the HTTP status)."""
        with self.page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST", timeout=60_000) as info:
            self.command("Comfy.QueuePrompt")
        response = info.value
        body = response.json()
        body["http_status"] = response.status
        body["sent"] = json.loads(response.request.post_data or "{}")
        return body

    def toasts(self) -> list[str]:
        return self.js("() => [...document.querySelectorAll('.p-toast-message')].map((t) => t.innerText)")

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=str(path))
        return path
