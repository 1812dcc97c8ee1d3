"""Writes example_workflows/<template>.jpg, the template browser's card pictures: each template as ComfyUI's own
frontend draws it after loading it from the template browser, fitted to a square canvas (needs a ComfyUI checkout,
Playwright and Chromium; runs a headless server with the tiny test models):

    COMFYUI_PATH=/path/to/ComfyUI PYTHONPATH=<torchvision stand-ins if no torchvision> python scripts/template_thumbnails.py [KEY ...]

KEY: template keys of build_example_workflows.TEMPLATES (e.g. ipa_a14b_curate) to draw only those; none: all.

The files are committed; tests/host/test_example_workflows.py checks they exist and stay small.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

CANVAS = 2000  # square viewport, drawn in full detail (no low-quality rendering) and scaled down
SIZE = 512


def capture_graph(ui):
    """The graph as drawn on the page (DOM widgets such as the notes' text included), cropped to its bounding box,
    padded to a square and scaled to SIZE."""
    from PIL import Image

    ui.command("Comfy.Canvas.FitView")
    ui.page.wait_for_timeout(400)
    x0, y0, x1, y1 = ui.js("""() => {
        const nodes = app.graph.nodes ?? app.graph._nodes;
        let box = [Infinity, Infinity, -Infinity, -Infinity];
        for (const node of nodes) {
            box = [Math.min(box[0], node.pos[0]), Math.min(box[1], node.pos[1] - 30),
                   Math.max(box[2], node.pos[0] + node.size[0]), Math.max(box[3], node.pos[1] + node.size[1])];
        }
        for (const group of app.graph.groups ?? app.graph._groups ?? []) {
            const [x, y, w, h] = group._bounding ?? group.bounding;
            box = [Math.min(box[0], x), Math.min(box[1], y), Math.max(box[2], x + w), Math.max(box[3], y + h)];
        }
        const rect = app.canvas.canvas.getBoundingClientRect();
        const a = app.canvas.ds.convertOffsetToCanvas([box[0], box[1]]), b = app.canvas.ds.convertOffsetToCanvas([box[2], box[3]]);
        return [rect.left + a[0], rect.top + a[1], rect.left + b[0], rect.top + b[1]];
    }""")
    shot = Image.open(io.BytesIO(ui.page.screenshot())).convert("RGB")
    pad = 16
    box = (max(0, int(x0) - pad), max(0, int(y0) - pad), min(shot.width, int(x1) + pad), min(shot.height, int(y1) + pad))
    graph = shot.crop(box)
    side = max(graph.size)
    square = Image.new("RGB", (side, side), shot.getpixel((2, shot.height // 2)))
    square.paste(graph, ((side - graph.width) // 2, (side - graph.height) // 2))
    return square.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def main():

    from build_example_workflows import TEMPLATES

    import conftest  # noqa: F401  (repository on sys.path)
    from support.comfy_frontend import Frontend
    from support.comfy_server import ComfyServer
    from support.e2e_base import make_base

    with tempfile.TemporaryDirectory(prefix="ipa_thumbnails_") as folder:
        base = make_base(Path(folder) / "comfy", returning_user=True)
        server = ComfyServer(base, Path(folder) / "comfyui.log")
        try:
            ui = Frontend(server.url, viewport=(CANVAS, CANVAS))
            try:
                ui.js("""async () => {
                    await app.extensionManager.setting.set('Comfy.Minimap.Visible', false);
                    await app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 1);  // full detail when zoomed out
                }""")
                ui.command("Workspace.ToggleFocusMode")  # no menus or side bars over the canvas
                wanted = sys.argv[1:] or list(TEMPLATES)
                for name in (TEMPLATES[key] for key in wanted):
                    ui.open_template("ComfyUI-IPA", name)
                    ui.page.wait_for_timeout(500)
                    if ui.js("() => !!document.querySelector('.p-dialog')"):
                        ui.close_dialogs()
                    ui.page.wait_for_timeout(300)
                    image = capture_graph(ui)
                    out = ROOT / "example_workflows" / f"{name}.jpg"
                    image.save(out, "JPEG", quality=82, optimize=True)
                    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size // 1024} kB)")
            finally:
                ui.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
