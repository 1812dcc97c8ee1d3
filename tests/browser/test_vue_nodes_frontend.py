"""Nodes 2.0 (the Vue node renderer, frontend setting ``Comfy.VueNodes.Enabled``; the default on new Desktop installs)
in ComfyUI's real frontend (needs COMFYUI_PATH, Playwright and Debian's Chromium): the three templates load with
their widget values; every node, and every widget of the pack's nodes, is drawn as a non-empty box inside the
canvas; curate's looping clip previews and align's live loss plot show inside their nodes; the curation gallery
opens. Checked by geometry (element boxes), as tests/browser/test_templates_frontend.py does for the canvas renderer.

The pack draws nothing of its own inside nodes (no DOM widgets): the previews are ComfyUI's own image outputs, so
with Vue nodes they go through the renderer's image preview, and this test is what shows they still appear. Same
set-up as tests/browser/test_templates_frontend.py (tiny models, the text node stand-in), on its own server and page."""

from __future__ import annotations

import contextlib
import json

import pytest

from conftest import requires_comfyui

pytestmark = requires_comfyui
pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed (requirements-dev.txt)")

from test_templates_frontend import (  # noqa: E402
    DATASET,
    LENGTH,
    SIZE,
    UNET_FILE,
    _assert_success,
    _open,
    _run,
    _use_tiny_models,
    screenshot_on_failure,
)

VUE_SETTING = "Comfy.VueNodes.Enabled"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.e2e_base import returning_user_server

    with returning_user_server(tmp_path_factory, "vue_nodes") as server:
        yield server


@pytest.fixture(scope="module")
def ui(comfy):
    from support.comfy_frontend import Frontend

    frontend = Frontend(comfy.url)
    try:
        # the frontend knows the setting (1.35.9 and 1.45.21 both do); a frontend without it fails here, not skips
        assert frontend.js(f"() => !!app.extensionManager.setting.settingsById?.['{VUE_SETTING}'] || "
                           f"app.extensionManager.setting.get('{VUE_SETTING}') !== undefined")
        frontend.js(f"() => app.extensionManager.setting.set('{VUE_SETTING}', true)")
        frontend.page.wait_for_timeout(500)
        yield frontend
    finally:
        frontend.close()


BOXES = """(ids) => {
    const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
    return {canvas: box(app.canvas.canvas), nodes: Object.fromEntries(ids.map((id) => {
        const element = document.querySelector(`[data-node-id="${id}"]`);
        if (!element) return [id, null];
        // a widget row: data-testid "node-widget" (frontend 1.45), class "lg-node-widget" (1.35)
        let widgets = element.querySelectorAll('[data-testid="node-widget"]');
        if (!widgets.length) widgets = element.querySelectorAll('.lg-node-widget');
        return [id, {box: box(element), widgets: [...widgets].map(box),
                     images: [...element.querySelectorAll('img')].filter((i) => i.complete && i.naturalWidth > 0).map(box)}];
    }))};
}"""


def _inside(inner, outer, slack=1.0):
    return (inner[2] - inner[0] > 0 and inner[3] - inner[1] > 0 and inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack)


def _boxes(ui, workflow, types=None):
    ids = [node["id"] for node in workflow["nodes"] if types is None or node["type"] in types]
    ui.js("() => { app.canvas.ds.scale = Math.min(app.canvas.ds.scale, 0.5); app.canvas.setDirty(true, true); }")
    ui.command("Comfy.Canvas.FitView")
    ui.page.wait_for_timeout(800)
    return ui.js(BOXES, ids)


def test_templates_load_and_every_node_and_widget_is_drawn_inside_the_canvas(ui, tmp_path):
    for key in ("ipa_curate", "ipa_align", "ipa_animate"):
        with screenshot_on_failure(ui, tmp_path, f"vue-{key}"):
            dialogs, workflow = _open(ui, key)  # widget values where the file has them
            assert dialogs and "wan2.1_vace_1.3B_fp16.safetensors" in "".join(dialogs), dialogs
            found = _boxes(ui, workflow)
            for node in workflow["nodes"]:
                drawn = found["nodes"][str(node["id"])]
                assert drawn is not None, f"{key}: node {node['id']} {node['type']} is not drawn"
                assert _inside(drawn["box"], found["canvas"]), (key, node["type"], drawn["box"], found["canvas"])
                if node["type"].startswith("IPA"):
                    assert len(drawn["widgets"]) >= len([v for v in node.get("widgets_values", []) if not isinstance(v, dict)]) // 2, (key, node["type"])
                    assert drawn["widgets"] and all(_inside(w, drawn["box"]) for w in drawn["widgets"]), (key, node["type"], drawn)
            ui.screenshot(tmp_path / f"vue-{key}.png")


def test_curate_clip_previews_show_inside_the_sampler_node(ui, comfy, tmp_path):
    with screenshot_on_failure(ui, tmp_path, "vue-curate"):
        _, workflow = _open(ui, "ipa_curate")
        _use_tiny_models(ui)
        ui.js(f"""() => {{
            window.__ipa.setWidgets('IPAVaceSampler', {{...{json.dumps(SIZE)}, length: {LENGTH}, steps: 2, candidates: 2, seed: 7, sampler_name: 'euler'}});
            window.__ipa.setWidgets('IPAHandMaskFromPose', {json.dumps(SIZE)});
            window.__ipa.setWidgets('IPAMarkPreferred', {{dataset: '{DATASET}', mark: 'preferred'}});
        }}""")
        _, entry = _run(ui, comfy)
        _assert_success(entry, comfy)
        sampler = next(n["id"] for n in workflow["nodes"] if n["type"] == "IPAVaceSampler")
        # one looping grid of both candidates (the frontend shows one animated preview per node)
        ui.page.wait_for_function("(id) => app.nodeOutputs[String(id)]?.images?.length === 1", arg=sampler, timeout=10_000)
        ui.page.wait_for_function("(id) => [...(document.querySelector(`[data-node-id=\"${id}\"]`)?.querySelectorAll('img') ?? [])]"
                                  ".some((i) => i.complete && i.naturalWidth > 0)", arg=sampler, timeout=15_000)
        found = _boxes(ui, {"nodes": [n for n in workflow["nodes"] if n["id"] == sampler]})
        drawn = found["nodes"][str(sampler)]
        assert drawn["images"] and all(_inside(image, drawn["box"]) for image in drawn["images"]), drawn
        assert _inside(drawn["box"], found["canvas"]), (drawn, found["canvas"])
        ui.screenshot(tmp_path / "vue-curate-finished.png")


def test_align_live_loss_plot_shows_inside_the_node_and_the_gallery_opens(ui, comfy, tmp_path):
    folder = comfy.base / "output" / "ipa_datasets" / DATASET
    if not folder.is_dir():
        pytest.skip("needs the dataset made by the curate test")
    with screenshot_on_failure(ui, tmp_path, "vue-align"):
        _, workflow = _open(ui, "ipa_align")
        ui.js(f"""() => window.__ipa.setWidgets('IPATrainLoRA', {{dataset: '{DATASET}', base_model: '{UNET_FILE}', rank: 4, alpha: 4,
                                                                   steps: 3, learning_rate: 0.001, lora_name: 'vue_hands'}})""")
        _, entry = _run(ui, comfy)
        _assert_success(entry, comfy)
        train = next(n["id"] for n in workflow["nodes"] if n["type"] == "IPATrainLoRA")
        ui.page.wait_for_function("(id) => [...(document.querySelector(`[data-node-id=\"${id}\"]`)?.querySelectorAll('img') ?? [])]"
                                  ".some((i) => i.complete && i.naturalWidth > 0)", arg=train, timeout=15_000)
        found = _boxes(ui, {"nodes": [n for n in workflow["nodes"] if n["id"] == train]})
        drawn = found["nodes"][str(train)]
        assert drawn["images"] and all(_inside(image, drawn["box"]) for image in drawn["images"]), drawn
        ui.screenshot(tmp_path / "vue-align-finished.png")
        # the gallery: its command opens the overlay over the window, listing the dataset
        ui.command("IPA.OpenCurationGallery")
        ui.page.wait_for_function(f"() => document.querySelector('.ipa-overlay')?.innerText.includes('{DATASET}')", timeout=15_000)
        overlay = ui.js("() => { const r = document.querySelector('.ipa-overlay .ipa-overlay-inner').getBoundingClientRect(); "
                        "return [r.left, r.top, r.right, r.bottom, innerWidth, innerHeight]; }")
        assert _inside(overlay[:4], [0, 0, overlay[4], overlay[5]]), overlay
        ui.page.keyboard.press("Escape")
        with contextlib.suppress(Exception):
            ui.js("() => document.querySelector('.ipa-overlay')?.dispatchEvent(new MouseEvent('mousedown', {bubbles: true}))")
