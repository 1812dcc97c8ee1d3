"""The three templates as a creator meets them, in ComfyUI's real frontend (needs COMFYUI_PATH, Playwright and Debian's
Chromium): picked in the template browser (the frontend's own loading path, no ``to_api_prompt``), the missing-model
dialog checked, the tiny model files filled in, queued with the Run command, and what the page reports compared
with what happened on disk. One server and one page for all of it. Screenshots of failures go to the test's
temporary folder.

Set-up in ``tests/support/e2e_base.py`` (tiny random-weight models; CLIPLoader + CLIPTextEncode replaced in the graph by a
test-only text node, because ComfyUI's Wan text encoder cannot be tiny)."""

from __future__ import annotations

import contextlib
import json
import sys
import time

import pytest

from conftest import REPO_ROOT, requires_comfyui

pytestmark = requires_comfyui
pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed (requirements-dev.txt)")

sys.path.insert(0, str(REPO_ROOT / "scripts"))

from build_example_workflows import DESCRIPTIONS, TEMPLATES, template_path  # noqa: E402

from support.comfy_frontend import Frontend, chromium_executable  # noqa: E402
from support.e2e_base import LENGTH, TEXT_NODE_TYPE, UNET_FILE, VAE_FILE, H, W  # noqa: E402

if chromium_executable() is None:
    pytest.skip("no Chromium: install Debian's package (apt-get install -y chromium)", allow_module_level=True)

PACK_FOLDER = "ComfyUI-IPA"  # the folder name in custom_nodes: the template browser's category
DATASET = "fe_hands"
SIZE = {"width": W, "height": H}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.e2e_base import returning_user_server

    with returning_user_server(tmp_path_factory, "frontend") as server:
        yield server


@pytest.fixture(scope="module")
def ui(comfy):
    frontend = Frontend(comfy.url)
    try:
        yield frontend
    finally:
        frontend.close()


@contextlib.contextmanager
def screenshot_on_failure(ui, tmp_path, name):
    try:
        yield
    except BaseException as error:
        path = ui.screenshot(tmp_path / f"{name}-failure.png")
        raise AssertionError(f"{error}\n(screenshot: {path})") from error


def _open(ui, key):
    """Opens the template and checks the frontend kept every widget value where the file has it (a missing
    control_after_generate slot shifts every later value). Returns (missing-model dialog or errors-panel texts, the
    file)."""
    workflow = json.loads(template_path(key).read_text())
    ui.open_template(PACK_FOLDER, TEMPLATES[key])
    ui.page.wait_for_timeout(500)  # the missing-model dialog (or errors panel) opens after the graph is configured
    dialogs = ui.missing_models_reports()
    _assert_readable_view(ui, workflow)
    loaded = ui.graph_widgets()
    for node in workflow["nodes"]:
        expected = node.get("widgets_values", [])
        assert loaded[node["id"]][: len(expected)] == expected, f"{key} node {node['id']} {node['type']}: {loaded[node['id']]} != {expected}"
    return dialogs, workflow


def _assert_readable_view(ui, workflow):
    """The template's saved view is restored: readable, 65 % zoom or more (fitting the graph gave 46-52 %, where nodes
    draw as blank boxes). A frontend that fits every template to the window instead (1.45.21's loader calls fitView
    for templates and ignores their saved view) shows the whole graph, at whatever zoom that takes."""
    view = ui.js("() => ({scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset]})")
    saved = workflow["extra"]["ds"]
    if abs(view["scale"] - saved["scale"]) < 1e-6 and all(abs(a - b) < 1e-3 for a, b in zip(view["offset"], saved["offset"])):
        assert view["scale"] >= 0.65
        return
    if ui.js("() => !!app.extensionManager.setting.get('Comfy.VueNodes.Enabled')"):
        return  # the Vue renderer sizes its nodes after the fit (taller than LiteGraph's): the fit cannot hold them
    outside = ui.js("""() => {
        app.canvas.ds.computeVisibleArea(app.canvas.viewport);
        const [x, y, w, h] = app.canvas.visible_area;
        return (app.graph._nodes ?? app.graph.nodes).filter((n) => n.pos[0] < x - 2 || n.pos[1] - 30 < y - 2
            || n.pos[0] + n.size[0] > x + w + 2 || n.pos[1] + n.size[1] > y + h + 2).map((n) => n.type);
    }""")
    assert outside == [], f"the frontend fitted the template ({view}) but these nodes are out of view: {outside}"


def _use_tiny_models(ui):
    """What the creator would pick in the loaders; the text encoder stand-in replaces CLIPLoader + CLIPTextEncode."""
    ui.js(f"""() => {{
        const h = window.__ipa;
        if (h.byType('UNETLoader').length) h.setWidgets('UNETLoader', {{unet_name: '{UNET_FILE}'}});
        if (h.byType('VAELoader').length) h.setWidgets('VAELoader', {{vae_name: '{VAE_FILE}'}});
        for (const node of h.byType('CLIPTextEncode')) {{
            h.replaceNode(node, '{TEXT_NODE_TYPE}', {{text: node.widgets.find((w) => w.name === 'text').value}});
        }}
        for (const node of h.byType('CLIPLoader')) app.graph.remove(node);
    }}""")


def _run(ui, comfy, timeout=240.0):
    answer = ui.queue()
    assert answer["http_status"] == 200 and "prompt_id" in answer, f"ComfyUI refused the prompt: {answer}"
    entry = comfy.wait(answer["prompt_id"], timeout)
    return answer, entry


def _assert_success(entry, comfy):
    from support.comfy_server import execution_error

    assert entry["status"]["status_str"] == "success" and execution_error(entry) is None, \
        json.dumps(entry["status"])[:3000] + "\n" + comfy.log_tail()


def _unknown_messages(ui):
    return [text for kind, text in ui.console if "Unknown message type" in text or ("Unhandled message" in text and "ipa" in text)]


# Frontend 1.45's errors pop-up ("N ERRORS", a line per error, "See Errors"): the smallest element holding both.
ERRORS_POPUP = ("[...document.querySelectorAll('div')].filter((d) => /\\bERRORS?\\b/.test(d.innerText) && "
                "d.innerText.includes('See Errors')).sort((a, b) => a.innerText.length - b.innerText.length)[0]")


def _assert_refused_once(ui, node_id, reason, input_name):
    """Queues, expects ComfyUI to refuse the whole prompt (HTTP 400), and checks what the page shows: the dialog says
    ``reason`` once (ComfyUI files it under every input validate_inputs takes, and its dialog repeated it six times),
    the node's kept error names ``input_name``, and the reason is written under the node."""
    answer = ui.queue()
    assert answer["http_status"] == 400 and str(node_id) in answer["node_errors"], answer
    ui.page.wait_for_function(f"() => !!document.querySelector('.p-dialog') || !!({ERRORS_POPUP})", timeout=10_000)
    if ui.js("() => !!document.querySelector('.p-dialog')"):
        dialog = "\n".join(ui.close_dialogs())
        assert dialog.count(reason) == 1 and "0..-1" not in dialog, dialog
    else:  # frontend 1.45: an errors pop-up with one line per error (the reason itself is under the node, below)
        popup = ui.js(f"() => {ERRORS_POPUP}.innerText")
        assert popup.count("Refused") == 1 and "0..-1" not in popup, popup
        ui.js(f"() => [...{ERRORS_POPUP}.querySelectorAll('button')].find((b) => b.innerText.trim() === 'Dismiss')?.click()")
    kept = ui.js("(id) => app.lastNodeErrors[String(id)].errors.map((e) => e.extra_info?.input_name)", node_id)
    assert kept == [input_name], kept
    ui.page.wait_for_function("(reason) => (window.__ipa.nodeText('IPATrainLoRA') || '').includes(reason)", arg=reason, timeout=10_000)


def test_template_browser_lists_the_packs_templates_with_thumbnails(ui, tmp_path):
    with screenshot_on_failure(ui, tmp_path, "browser"):
        cards = ui.template_cards(PACK_FOLDER)
        # the pack's extension puts each template's description on its card once it has read the files
        ui.page.wait_for_function("(texts) => texts.every((t) => document.body.innerText.includes(t))",
                                  arg=list(DESCRIPTIONS.values()), timeout=15_000)
        texts = ui.js("""() => Object.fromEntries([...document.querySelectorAll('[data-testid^="template-workflow-"]')].map((card) =>
            [card.dataset.testid.slice('template-workflow-'.length),
             [...card.querySelectorAll('h3, p, span, div')].filter((e) => !e.children.length).map((e) => e.innerText.trim()).filter(Boolean)]))""")
        cards = [{**card, "texts": texts[card["id"]]} for card in cards]
        assert sorted(card["id"] for card in cards) == sorted(TEMPLATES.values())
        for card in cards:
            assert card["id"] in card["texts"], card  # the title the frontend shows is the file name
            # ... and, in place of the name repeated, what the template does and needs
            key = next(k for k, name in TEMPLATES.items() if name == card["id"])
            assert card["texts"].count(card["id"]) == 1 and DESCRIPTIONS[key] in card["texts"], card
            assert card["image"] and card["image"]["loaded"] and card["image"]["width"] >= 256, card
            url = f"{ui.url}/api/workflow_templates/{PACK_FOLDER}/{card['id'].replace(' ', '%20')}.jpg"
            assert (200, url, "image/jpeg") in ui.responses, [r for r in ui.responses if ".jpg" in r[1]]
        ui.close_dialogs()


def _check_bad_dataset_is_refused_on_the_node(ui, comfy, workflow, folder):
    from ipa_train.data.manifest import read_manifest

    sampler_id = next(n["id"] for n in workflow["nodes"] if n["type"] == "IPAVaceSampler")
    # a bad dataset name is refused when queued: ComfyUI runs only the outputs that do not depend on Mark
    # Preferred (here the hand-mask preview), so nothing is sampled for a dataset that cannot be written
    ui.js("() => window.__ipa.setWidgets('IPAMarkPreferred', {dataset: '../elsewhere'})")
    refused = ui.queue()
    mark_id = next(n["id"] for n in workflow["nodes"] if n["type"] == "IPAMarkPreferred")
    assert "invalid dataset name" in json.dumps(refused["node_errors"][str(mark_id)]), refused
    if refused.get("prompt_id"):
        partial = comfy.wait(refused["prompt_id"], 120)
        assert str(sampler_id) not in partial["outputs"] and str(mark_id) not in partial["outputs"]
    assert ui.js("(id) => !!app.lastNodeErrors?.[String(id)] || !!document.querySelector('.p-dialog')", mark_id)
    if ui.js("() => !!document.querySelector('.p-dialog')"):
        ui.close_dialogs()
    # what the creator sees (it said nothing): the reason once, under the node, filed under `dataset`, and one
    # toast saying the node did not run; nothing was stored
    ui.page.wait_for_function("() => (window.__ipa.nodeText('IPAMarkPreferred') || '').startsWith('Refused: invalid dataset name')",
                              timeout=10_000)
    text = ui.js("() => window.__ipa.nodeText('IPAMarkPreferred')")
    assert text.count("invalid dataset name") == 1 and "nothing was stored" in text, text
    kept = ui.js("(id) => app.lastNodeErrors[String(id)].errors.map((e) => [e.extra_info?.input_name, e.details])", mark_id)
    assert len(kept) == 1 and kept[0][0] == "dataset" and kept[0][1].startswith("invalid dataset name"), kept
    notes = [toast for toast in ui.toasts() if "did not run" in toast]
    assert len(notes) == 1 and "IPA Mark Preferred did not run" in notes[0] and "Nothing was stored" in notes[0], ui.toasts()
    assert sorted(e["seed"] for e in read_manifest(folder)) == [7, 8] and not (comfy.base / "output" / "elsewhere").exists()


def _check_reopening_continues_after_stored_seeds(ui):
    # reopened, the template's seed would re-sample stored seeds: it moves past the dataset's highest, and says so
    # (the template browser only switches to the open tab: load the template's graph as opening it does, its
    # seed 0, with Mark Preferred's dataset set to this one)
    reopened = json.loads(template_path("ipa_curate").read_text())
    values = next(n for n in reopened["nodes"] if n["type"] == "IPAMarkPreferred")["widgets_values"]
    values[values.index("hands")] = DATASET
    ui.js("(workflow) => app.loadGraphData(workflow)", reopened)
    ui.page.wait_for_timeout(500)
    if ui.js("() => !!document.querySelector('.p-dialog')"):
        ui.close_dialogs()
    ui.page.wait_for_function("() => window.__ipa.widget('IPAVaceSampler', 'seed') === 9", timeout=10_000)
    ui.page.wait_for_function("() => (window.__ipa.nodeText('IPAVaceSampler') || '').includes('Seed set to 9 (was 0)')", timeout=10_000)
    assert f"dataset '{DATASET}' already holds samples up to seed 8" in ui.js("() => window.__ipa.nodeText('IPAVaceSampler')")
    assert any("Seed set to 9" in toast for toast in ui.toasts()), ui.toasts()


def test_curate_runs_as_loaded_and_shows_its_results(ui, comfy, tmp_path):
    from ipa_train.data.manifest import read_manifest

    with screenshot_on_failure(ui, tmp_path, "curate"):
        dialogs, workflow = _open(ui, "ipa_curate")
        # the missing-model dialog (errors panel on frontend 1.45) names each file in its folder, from the template's
        # `models` entries
        assert len(dialogs) == 1 and "Missing Models" in dialogs[0], dialogs
        for folder, name in (("diffusion_models", "wan2.1_vace_1.3B_fp16.safetensors"), ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
                             ("vae", "wan_2.1_vae.safetensors")):
            assert f"{folder} / {name}" in dialogs[0]
        _use_tiny_models(ui)
        ui.js(f"""() => {{
            window.__ipa.setWidgets('IPAVaceSampler', {{...{json.dumps(SIZE)}, length: {LENGTH}, steps: 2, candidates: 2, seed: 7, sampler_name: 'euler'}});
            window.__ipa.setWidgets('IPAHandMaskFromPose', {json.dumps(SIZE)});
            window.__ipa.setWidgets('IPAMarkPreferred', {{dataset: '{DATASET}'}});
        }}""")
        answer, entry = _run(ui, comfy)
        _assert_success(entry, comfy)
        sampler_id = next(n["id"] for n in workflow["nodes"] if n["type"] == "IPAVaceSampler")
        assert answer["sent"]["prompt"][str(sampler_id)]["inputs"]["seed"] == 7
        # the seed stepped by the candidate count: the next run samples 9 and 10, never 8 again
        assert ui.js("() => window.__ipa.widget('IPAVaceSampler', 'seed')") == 9
        folder = comfy.base / "output" / "ipa_datasets" / DATASET
        assert sorted(e["seed"] for e in read_manifest(folder)) == [7, 8]
        # on the canvas: one looping grid of the candidates (the frontend shows one animated preview per node), and
        # Mark Preferred's summary under the node
        ui.page.wait_for_function("(id) => app.nodeOutputs[String(id)]?.images?.length === 1", arg=sampler_id, timeout=10_000)
        outputs = ui.js("(id) => app.nodeOutputs[String(id)]", sampler_id)
        assert outputs["animated"] == [True] and all(image["filename"].endswith(".webp") for image in outputs["images"])
        ui.page.wait_for_function("() => (window.__ipa.nodeText('IPAMarkPreferred') || '').includes('Stored 2 new')", timeout=10_000)
        text = ui.js("() => window.__ipa.nodeText('IPAMarkPreferred')")
        assert f"in '{DATASET}' (seeds 7, 8)" in text and "2 pending, 0 preferred" in text, text
        _check_bad_dataset_is_refused_on_the_node(ui, comfy, workflow, folder)
        _check_reopening_continues_after_stored_seeds(ui)
    assert not _unknown_messages(ui)


def _check_cancel_says_cancelled(ui, comfy, tmp_path):
    # Cancel during a long run: interrupted as ComfyUI's own nodes are (no error event, no error dialog), and how to
    # resume on screen. (Frontend 1.35.9's queue overlay counts every cancelled job, its own nodes' too, as failed.)
    ui.js("() => window.__ipa.setWidgets('IPATrainLoRA', {lora_name: 'fe_cancel', steps: 100000})")
    answer = ui.queue()
    runs = comfy.base / "output" / "ipa_runs"
    deadline = time.monotonic() + 180
    while not any('"event": "step"' in log.read_text() for log in runs.glob("fe_cancel-*/train.log")):
        assert time.monotonic() < deadline, "the trainer never reported a step:\n" + comfy.log_tail()
        time.sleep(0.1)
    ui.command("Comfy.Interrupt")  # the queue's cancel button
    entry = comfy.wait(answer["prompt_id"], 180)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds and "execution_error" not in kinds, kinds
    ui.page.wait_for_function("() => [...document.querySelectorAll('.p-toast-message')].some((t) => t.innerText.includes('IPA training cancelled'))",
                              timeout=15_000)
    toast = next(text for text in ui.toasts() if "IPA training cancelled" in text)
    assert "resume='latest'" in toast and "checkpoint written: fe_cancel-" in toast and "/step-" in toast
    node_text = ui.js("() => window.__ipa.nodeText('IPATrainLoRA')") or ""
    assert "resume='latest'" in node_text and "(cancelled)" in node_text
    assert not ui.js("() => [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText)")  # no error dialog
    ui.screenshot(tmp_path / "align-cancelled.png")


def test_align_runs_as_shipped_on_a_cpu_machine_and_cancels_cleanly(ui, comfy, tmp_path):
    from ipa_train.data.manifest import read_manifest

    folder = comfy.base / "output" / "ipa_datasets" / DATASET
    if not folder.is_dir():
        pytest.skip("needs the dataset made by the curate test")
    entries = read_manifest(folder)
    comfy.post(f"/ipa/datasets/{DATASET}/marks", {"ids": [entries[0]["id"]], "status": "preferred"})  # as the gallery does
    with screenshot_on_failure(ui, tmp_path, "align"):
        dialogs, workflow = _open(ui, "ipa_align")
        assert any("wan2.1_vace_1.3B_fp16.safetensors" in text for text in dialogs), dialogs
        assert ui.js("() => window.__ipa.widget('IPATrainLoRA', 'gpus')") == "auto"
        train_id = next(n["id"] for n in workflow["nodes"] if n["type"] == "IPATrainLoRA")
        # refused at queue time: each reason once in the dialog, filed under the input it is about, and under the node
        ui.js(f"() => window.__ipa.setWidgets('IPATrainLoRA', {{dataset: '{DATASET}', base_model: '{UNET_FILE}', gpus: '2'}})")
        _assert_refused_once(ui, train_id, "gpus='2': no GPU is visible on this machine", "gpus")
        ui.js("() => window.__ipa.setWidgets('IPATrainLoRA', {gpus: 'auto'})")
        # as shipped but for the tiny model and a short run: gpus 'auto' and precision 'auto' on this GPU-less machine
        ui.js(f"""() => window.__ipa.setWidgets('IPATrainLoRA', {{dataset: '{DATASET}', base_model: '{UNET_FILE}', rank: 4, alpha: 4,
                                                                  steps: 3, learning_rate: 0.001}})""")
        _, entry = _run(ui, comfy)
        _assert_success(entry, comfy)
        assert (comfy.base / "models" / "loras" / "ipa" / "ipa_hands.safetensors").is_file()  # what the animate template loads
        ui.page.wait_for_function("() => (window.__ipa.nodeText('IPATrainLoRA') || '').includes('saved as: loras/ipa/ipa_hands.safetensors')",
                                  timeout=10_000)
        ui.screenshot(tmp_path / "align-finished.png")
        # resume='latest' left in the widget after the run completed: refused at queue time, the trainer never starts
        ui.js("() => window.__ipa.setWidgets('IPATrainLoRA', {resume: 'latest'})")
        _assert_refused_once(ui, train_id, "this run is complete", "resume")
        assert "clear resume to train a new LoRA" in ui.js("() => window.__ipa.nodeText('IPATrainLoRA')")
        ui.js("() => window.__ipa.setWidgets('IPATrainLoRA', {resume: ''})")
        # the live plot fits the node: the picture is no wider than the node and its preview area ends inside it
        layout = ui.js("""() => { const n = window.__ipa.byType('IPATrainLoRA')[0];
            const area = n.widgets.find((w) => w.name === '$$canvas-image-preview');
            return {node: n.size, image: (n.imgs || []).map((i) => [i.naturalWidth, i.naturalHeight]), area: area && [area.y, area.computedHeight]}; }""")
        assert layout["image"] and layout["image"][-1][0] <= layout["node"][0], layout
        assert layout["area"] and layout["area"][0] + layout["area"][1] <= layout["node"][1], layout
        # ... and it is on screen: the inputs a run usually changes stay visible, the rest are advanced (the node's
        # menu: Show Advanced), so the plot starts right under them (it sat under 29 widgets)
        visible = ui.js("""() => { const n = window.__ipa.byType('IPATrainLoRA')[0];
            return n.widgets.filter((w) => n.isWidgetVisible(w) && !w.name.startsWith('$$')).map((w) => w.name); }""")
        assert visible == ["dataset", "base_model", "lora_name", "objective", "steps", "gpus", "resume"], visible
        assert layout["area"][0] < 400, layout
        # (the plot has its own opaque dark panel; a screenshot in the light theme is kept with the test's files)
        ui.js("() => app.extensionManager.setting.set('Comfy.ColorPalette', 'light')")
        ui.page.wait_for_timeout(500)
        ui.screenshot(tmp_path / "align-finished-light.png")
        ui.js("() => app.extensionManager.setting.set('Comfy.ColorPalette', 'dark')")

        _check_cancel_says_cancelled(ui, comfy, tmp_path)
    assert not _unknown_messages(ui)


def test_animate_loads_the_trained_lora(ui, comfy, tmp_path):
    if not (comfy.base / "models" / "loras" / "ipa" / "ipa_hands.safetensors").is_file():
        pytest.skip("needs the LoRA trained by the align test")
    with screenshot_on_failure(ui, tmp_path, "animate"):
        _, workflow = _open(ui, "ipa_animate")
        _use_tiny_models(ui)
        ui.js(f"""() => {{
            window.__ipa.setWidgets('WanVaceToVideo', {{...{json.dumps(SIZE)}, length: {LENGTH}}});
            window.__ipa.setWidgets('KSampler', {{steps: 2, sampler_name: 'euler', seed: 3}});
            window.__ipa.setWidgets('SaveVideo', {{filename_prefix: 'video/fe_animate'}});
        }}""")
        assert ui.js("() => window.__ipa.widget('IPALoRALoader', 'lora_name')") == "ipa/ipa_hands.safetensors"  # as shipped
        _, entry = _run(ui, comfy)
        _assert_success(entry, comfy)
        report_id = next(n["id"] for n in workflow["nodes"] if n["type"] == "PreviewAny")
        report = entry["outputs"][str(report_id)]["text"][0]
        assert "6 weights patched, 0 keys unmatched" in report and "WARNING" not in report and "objective: ipa" in report, report
        saved = next(out for out in entry["outputs"].values() if out.get("images") and out["images"][0]["filename"].endswith(".mp4"))
        assert (comfy.base / "output" / saved["images"][0]["subfolder"] / saved["images"][0]["filename"]).stat().st_size > 0
    assert not _unknown_messages(ui) and not [e for e in ui.page_errors if "ipa" in e.lower()], ui.page_errors


@pytest.mark.parametrize("key", ["ipa_a14b_curate", "ipa_a14b_align", "ipa_a14b_animate"])
def test_the_a14b_templates_load_as_shipped(ui, tmp_path, key):
    """The Wan2.2-VACE-Fun A14B templates, picked in the template browser: every widget value where the file has it
    (``_open``), every link kept (the loader's and sampler's optional model_low_noise sockets included), and the
    missing-model dialog names both expert files."""
    from build_example_workflows import UNET_HIGH, UNET_LOW

    with screenshot_on_failure(ui, tmp_path, key):
        dialogs, workflow = _open(ui, key)
        assert len(dialogs) == 1 and "Missing Models" in dialogs[0], dialogs
        for name in (UNET_HIGH, UNET_LOW):
            assert f"diffusion_models / {name}" in dialogs[0], dialogs
        nodes = {node["id"]: node for node in workflow["nodes"]}
        expected = sorted((target, nodes[target]["inputs"][slot]["name"]) for _, _, _, target, slot, _ in workflow["links"])
        loaded = ui.js("""() => (app.graph._nodes ?? app.graph.nodes).flatMap((node) =>
            (node.inputs ?? []).filter((input) => input.link != null).map((input) => [node.id, input.name]))""")
        assert sorted(map(tuple, loaded)) == expected
        ui.close_dialogs()
    assert not [e for e in ui.page_errors if "ipa" in e.lower()], ui.page_errors
def test_animate_character_template_opens_with_its_models_named(ui, tmp_path):
    """IPA 7 (Wan2.2-Animate) opened from the template browser: every widget value where the file has it, and the
    missing-model dialog (errors panel on 1.45) naming the Animate, UMT5, VAE and CLIP-vision files in their folders."""
    with screenshot_on_failure(ui, tmp_path, "animate_character"):
        dialogs, workflow = _open(ui, "ipa_animate_character")
        assert len(dialogs) == 1 and "Missing Models" in dialogs[0], dialogs
        for folder, name in (("diffusion_models", "wan2.2_animate_14B_bf16.safetensors"), ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
                             ("vae", "wan_2.1_vae.safetensors"), ("clip_vision", "clip_vision_h.safetensors")):
            assert f"{folder} / {name}" in dialogs[0], dialogs[0]
        assert ui.js("() => window.__ipa.widget('IPALoRALoader', 'lora_name')") == "ipa/ipa_animate_hands.safetensors"
        assert ui.js("() => window.__ipa.widget('WanAnimateToVideo', 'length')") == 77
    assert not _unknown_messages(ui) and not [e for e in ui.page_errors if "ipa" in e.lower()], ui.page_errors
