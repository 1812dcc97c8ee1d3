"""example_workflows/*.json: well-formed UI-format graphs with model notes; under a real ComfyUI (COMFYUI_PATH) every
node type, input, link type and widget count matches the live schemas (what the frontend needs to load them)."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO_ROOT, requires_comfyui

sys.path.insert(0, str(REPO_ROOT / "scripts"))

from build_example_workflows import MODEL_FILES, TEMPLATES, template_path  # noqa: E402
from workflow_graph import layout_problems  # noqa: E402

WORKFLOWS = sorted((REPO_ROOT / "example_workflows").glob("*.json"))


def _boxes(workflow):
    """[x, y, width, height] of every node (title bar included) and group."""
    return [[n["pos"][0], n["pos"][1] - 30, n["size"][0], n["size"][1] + 30] for n in workflow["nodes"]] + [g["bounding"] for g in workflow["groups"]]


def test_layout_checks_find_overlapping_group_titles_and_nodes():
    # the curate template's former "Sample candidates (looping previews)" title ran into "Store for curation"
    groups = [{"title": "Sample candidates (looping previews)", "bounding": [1356, -28, 448, 862], "font_size": 34},
              {"title": "Store for curation", "bounding": [1836, -28, 448, 1130], "font_size": 34}]
    nodes = [{"id": 1, "type": "A", "pos": [0, 0], "size": [100, 100]}, {"id": 2, "type": "B", "pos": [50, 90], "size": [100, 100]}]
    problems = layout_problems({"groups": groups, "nodes": nodes})
    assert len(problems) == 2 and "wider than the group" in problems[0] and "overlap" in problems[1], problems
    assert layout_problems({"groups": groups[1:], "nodes": nodes[:1]}) == []


def test_the_curate_prompt_is_typed_once():
    curate = _load("ipa_curate")
    assert _links_into(curate, "IPAMarkPreferred")["prompt_text"] == ("PrimitiveStringMultiline", "STRING")
    assert _links_into(curate, "CLIPTextEncode")["text"] == ("PrimitiveStringMultiline", "STRING")


def _load(key):
    return json.loads(template_path(key).read_text())


def _links_into(workflow, node_type):
    """{input name: (source node type, output name)} of the first node of ``node_type``."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    target = next(node for node in workflow["nodes"] if node["type"] == node_type)
    out = {}
    for link_id, source, slot, dest, in_slot, _ in workflow["links"]:
        if dest == target["id"]:
            out[target["inputs"][in_slot]["name"]] = (nodes[source]["type"], nodes[source]["outputs"][slot]["name"])
    return out


def test_curate_and_animate_are_driven_by_the_packs_dwpose():
    curate, animate = _load("ipa_curate"), _load("ipa_animate")
    assert _links_into(curate, "IPAVaceSampler")["control_video"] == ("IPADWPoseEstimator", "pose_video")
    assert _links_into(curate, "IPAMarkPreferred")["pose_keypoint"] == ("IPADWPoseEstimator", "pose_keypoints")
    assert _links_into(curate, "IPAHandMaskFromPose")["pose_keypoint"] == ("IPADWPoseEstimator", "pose_keypoints")
    assert _links_into(curate, "IPADWPoseEstimator")["frames"] == ("GetVideoComponents", "images")
    assert _links_into(animate, "WanVaceToVideo")["control_video"] == ("IPADWPoseEstimator", "pose_video")
    assert _links_into(animate, "ModelSamplingSD3")["model"] == ("IPALoRALoader", "model")
    for workflow in (curate, animate):
        notes = next(node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "MarkdownNote")
        assert "models/dwpose/yolox_l.onnx" in notes and "dw-ll_ucoco_384.onnx" in notes


def _sources(workflow, node):
    """{input name: (source node, output name)} of ``node`` (a node dict)."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    return {node["inputs"][in_slot]["name"]: (nodes[source], nodes[source]["outputs"][slot]["name"])
            for _, source, slot, dest, in_slot, _ in workflow["links"] if dest == node["id"]}


def test_the_a14b_templates_wire_both_experts():
    """Curate samples with both experts (the sampler's model_low_noise and switch_step), align trains both (expert both,
    low_noise_model), animate applies the pair with IPA LoRA Loader and samples as the native graph does: two
    ModelSamplingSD3, one WanVaceToVideo, KSamplerAdvanced high (0..10, noise added, leftover returned) then low."""
    from build_example_workflows import UNET_HIGH, UNET_LOW

    curate, align, animate = _load("ipa_a14b_curate"), _load("ipa_a14b_align"), _load("ipa_a14b_animate")
    unet = {n["widgets_values"][0]: n["id"] for w in (curate, animate) for n in w["nodes"] if n["type"] == "UNETLoader"}
    assert set(unet) == {UNET_HIGH, UNET_LOW}
    sampler = next(n for n in curate["nodes"] if n["type"] == "IPAVaceSampler")
    wired = _sources(curate, sampler)
    assert wired["model"][0]["widgets_values"][0] == UNET_HIGH and wired["model_low_noise"][0]["widgets_values"][0] == UNET_LOW
    assert wired["control_video"][0]["type"] == "IPADWPoseEstimator"
    assert sampler["widgets_values"][-1] == 10 and sampler["widgets_values"][3] == 20  # switch_step 10 of 20 steps
    train = next(n for n in align["nodes"] if n["type"] == "IPATrainLoRA")
    assert train["widgets_values"][1] == UNET_HIGH and train["widgets_values"][-2:] == ["both", UNET_LOW]
    lora = next(n for n in animate["nodes"] if n["type"] == "IPALoRALoader")
    wired = _sources(animate, lora)
    assert wired["model"][0]["widgets_values"][0] == UNET_HIGH and wired["model_low_noise"][0]["widgets_values"][0] == UNET_LOW
    assert lora["widgets_values"][0] == "ipa/ipa_hands_a14b_low.safetensors"
    first, second = (n for n in animate["nodes"] if n["type"] == "KSamplerAdvanced")
    for sampler, output, noise, start, end, leftover in ((first, "model", "enable", 0, 10, "enable"),
                                                         (second, "model_low_noise", "disable", 10, 10000, "disable")):
        shift = _sources(animate, sampler)["model"][0]
        assert shift["type"] == "ModelSamplingSD3" and _sources(animate, shift)["model"] == (lora, output)
        values = sampler["widgets_values"]
        assert (values[0], values[-3], values[-2], values[-1]) == (noise, start, end, leftover)
        assert _sources(animate, sampler)["positive"][0]["type"] == "WanVaceToVideo"
    assert _sources(animate, second)["latent_image"] == (first, "LATENT")
    assert _sources(animate, next(n for n in animate["nodes"] if n["type"] == "TrimVideoLatent"))["samples"] == (second, "LATENT")
def test_the_animate_character_template_runs_native_wan_animate_with_the_lora():
    """Wan2.2-Animate's native graph: the DWPose pose video, the driving frames as the face video, CLIP vision of the
    character, the LoRA through IPA LoRA Loader; the notes say how to collect and train on Animate."""
    workflow = _load("ipa_animate_character")
    into = _links_into(workflow, "WanAnimateToVideo")
    assert into["pose_video"] == ("IPADWPoseEstimator", "pose_video") and into["face_video"] == ("GetVideoComponents", "images")
    assert into["clip_vision_output"] == ("CLIPVisionEncode", "CLIP_VISION_OUTPUT") and into["reference_image"] == ("LoadImage", "IMAGE")
    assert _links_into(workflow, "ModelSamplingSD3")["model"] == ("IPALoRALoader", "model")
    assert _links_into(workflow, "KSampler")["positive"] == ("WanAnimateToVideo", "positive")
    assert _links_into(workflow, "TrimVideoLatent")["trim_amount"] == ("WanAnimateToVideo", "trim_latent")
    unet = next(node for node in workflow["nodes"] if node["type"] == "UNETLoader")
    assert unet["widgets_values"][0] == "wan2.2_animate_14B_bf16.safetensors"
    notes = next(node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "MarkdownNote")
    assert "IPA Animate Sampler" in notes and "IPA Mark Preferred" in notes and "models/clip_vision/clip_vision_h.safetensors" in notes


def test_template_browser_metadata():
    """What ComfyUI's template browser (frontend 1.35.9) shows for a pack: the file name as title and description, and
    <name>.jpg next to the JSON as the card's thumbnail (served under /api/workflow_templates/<pack folder>/)."""
    from PIL import Image

    assert {path.stem for path in WORKFLOWS} == set(TEMPLATES.values())
    for name in TEMPLATES.values():
        thumbnail = REPO_ROOT / "example_workflows" / f"{name}.jpg"
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG" and 300 <= image.width <= 1024 and image.height >= 150
        assert thumbnail.stat().st_size < 150_000  # small, committed
    for key in TEMPLATES:
        workflow = _load(key)
        # a saved view that opens readable: 65 % zoom or more, with the whole graph (notes included) in a 1600x1000
        # window (fitting the graph instead gave 46-52 %, where nodes draw as blank boxes)
        view = workflow["extra"]["ds"]
        assert view["scale"] >= 0.65, key
        for x, y, w, h in _boxes(workflow):
            left, top = (x + view["offset"][0]) * view["scale"], (y + view["offset"][1]) * view["scale"]
            # clear of the side bar (left) and the tab bar (top) the frontend draws over the canvas
            assert left >= 48 and top >= 40 and left + w * view["scale"] <= 1600 and top + h * view["scale"] <= 1000, (key, x, y, w, h)
        # what the template does and needs, in the file and at the top of its Read me note
        description = workflow["extra"]["description"]
        assert "Needs" in description and len(description) > 100, key
        assert next(n for n in workflow["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0].startswith(description)
        assert layout_problems(workflow) == [], key
        nodes = workflow["nodes"]
        note = next(n for n in nodes if n["type"] == "MarkdownNote")
        assert note["pos"][0] <= min(n["pos"][0] for n in nodes) and note["pos"][1] <= min(n["pos"][1] for n in nodes)
        # every non-note node sits inside a group
        assert workflow["groups"]
        for node in nodes:
            if node["type"] == "MarkdownNote":
                continue
            x, y = node["pos"]
            w, h = node["size"]
            assert any(g["bounding"][0] <= x and g["bounding"][1] <= y - 30 and x + w <= g["bounding"][0] + g["bounding"][2]
                       and y + h <= g["bounding"][1] + g["bounding"][3] for g in workflow["groups"]), (key, node["type"])
        # each model file the workflow selects has a download entry the missing-model dialog can offer
        selected = {v for n in nodes for v in n.get("widgets_values", []) if isinstance(v, str) and v in MODEL_FILES}
        listed = {m["name"]: m for n in nodes for m in n.get("properties", {}).get("models", [])}
        assert selected and set(listed) == selected, key
        for name, entry in listed.items():
            repository = "Wan_2.2_ComfyUI_Repackaged" if name.startswith("wan2.2_") else "Wan_2.1_ComfyUI_repackaged"
            assert entry["url"].startswith(f"https://huggingface.co/Comfy-Org/{repository}/resolve/main/split_files/")
            assert entry["url"].endswith(f"/{entry['directory']}/{name}")
            assert entry["directory"] in ("diffusion_models", "text_encoders", "vae", "clip_vision")
    notes = next(n["widgets_values"][0] for n in _load("ipa_curate")["nodes"] if n["type"] == "MarkdownNote")
    assert "https://huggingface.co/yzd-v/DWPose/resolve/main/yolox_l.onnx" in notes


def test_workflows_exist_and_are_well_formed():
    assert {path.stem for path in WORKFLOWS} >= set(TEMPLATES.values())
    for path in WORKFLOWS:
        workflow = json.loads(path.read_text())
        nodes = {node["id"]: node for node in workflow["nodes"]}
        assert workflow["version"] == 0.4 and workflow["last_node_id"] == max(nodes)
        for link_id, source, slot, target, in_slot, kind in workflow["links"]:
            assert link_id in nodes[source]["outputs"][slot]["links"]
            assert nodes[target]["inputs"][in_slot]["link"] == link_id
            assert nodes[source]["outputs"][slot]["type"] == kind
        notes = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "MarkdownNote"]
        assert notes and "Model files" in notes[0] and ".safetensors" in notes[0], path.name


@requires_comfyui
def test_workflows_match_the_live_schemas():
    from build_example_workflows import build_all
    from workflow_graph import as_built_on_older_host, check_workflow, node_infos

    from support.comfy_tiny import load_pack_cpu

    infos = node_infos(load_pack_cpu())
    for path in WORKFLOWS:
        assert check_workflow(json.loads(path.read_text()), infos) == [], path.name
    # the committed files are what the builder makes from today's schemas (built on the oldest supported host; a
    # newer host's build may add outputs or optional widgets at the end of a node, e.g. v0.28's GetVideoComponents INT
    # and CreateVideo bit_depth)
    for name, workflow in build_all(infos).items():
        committed = _load(name)
        assert committed == as_built_on_older_host(workflow, committed, infos), f"{name}: rebuild with scripts/build_example_workflows.py"
    # the API-format prompt the frontend would queue: widget values by name, links as [source id, slot]
    from workflow_graph import to_api_prompt

    curate = _load("ipa_curate")
    prompt = to_api_prompt(curate, infos)
    sampler = next(node for node in prompt.values() if node["class_type"] == "IPAVaceSampler")
    estimator_id = next(key for key, node in prompt.items() if node["class_type"] == "IPADWPoseEstimator")
    assert sampler["inputs"]["control_video"] == [estimator_id, 1] and sampler["inputs"]["candidates"] == 4
    assert sampler["inputs"]["seed"] == 0 and not any(":" in name for node in prompt.values() for name in node["inputs"])
    assert "MarkdownNote" not in {node["class_type"] for node in prompt.values()}
    # and the check can fail: a missing node type and a wrong widget count are reported
    broken = _load("ipa_align")
    train, preview = (next(n for n in broken["nodes"] if n["type"] == kind) for kind in ("IPATrainLoRA", "PreviewImage"))
    train["widgets_values"].pop()
    preview["type"] = "NoSuchNode"
    problems = check_workflow(broken, infos)
    assert any("widget values" in p for p in problems) and any("NoSuchNode" in p for p in problems)
    # the frontend's control_after_generate slot after an INT named seed (the trainer's, undeclared) and after a
    # declared one (the sampler's); the real-frontend test checks the same against the frontend itself
    from workflow_graph import widget_names

    assert widget_names(infos["IPATrainLoRA"])[widget_names(infos["IPATrainLoRA"]).index("seed") + 1] == "seed:control_after_generate"
    assert "seed:control_after_generate" in widget_names(infos["IPAVaceSampler"])
    assert "noise_seed:control_after_generate" in widget_names(infos["KSamplerAdvanced"])
    train = next(n for n in _load("ipa_align")["nodes"] if n["type"] == "IPATrainLoRA")
    values = dict(zip(widget_names(infos["IPATrainLoRA"]), train["widgets_values"]))
    assert values["seed:control_after_generate"] == "fixed" and values["checkpoint_every"] == 100 and values["gpus"] == "auto"


def test_pack_metadata_icon_and_node_count():
    """[tool.comfy] Icon names the committed icon (the registry shows it), and the README counts the nodes there are."""
    import ast
    import re

    from PIL import Image

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    icon = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["Icon"]
    repository = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    prefix = repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert icon.startswith(prefix), icon
    with Image.open(REPO_ROOT / icon[len(prefix):]) as image:
        assert image.format == "PNG" and image.width == image.height >= 128
    nodes = 0
    for path in (REPO_ROOT / "nodes").glob("*.py"):
        for statement in ast.parse(path.read_text()).body:
            if isinstance(statement, ast.Assign) and any(getattr(t, "id", None) == "NODES" for t in statement.targets):
                nodes += len(statement.value.elts)
    words = {5: "Five", 6: "Six", 7: "Seven", 8: "Eight", 9: "Nine", 10: "Ten"}
    assert re.search(rf"\b{words[nodes]} nodes\b", (REPO_ROOT / "README.md").read_text()), f"README: say {words[nodes]} nodes"


def test_what_a_newer_host_appended_is_accepted_and_nothing_else():
    """A template built on the oldest host loads on a newer one whose node gained outputs at the end (the frontend
    keeps links by slot) or optional widgets with defaults at the end; removed, retyped or inserted outputs, required
    widgets, linked extra outputs and non-default extra values are still told apart."""
    from workflow_graph import Graph, appended_optional_widgets, as_built_on_older_host, outputs_compatible

    assert outputs_compatible(["IMAGE", "AUDIO", "FLOAT"], ["IMAGE", "AUDIO", "FLOAT", "INT"])
    assert outputs_compatible(["IMAGE"], ["IMAGE"])
    assert not outputs_compatible(["IMAGE", "AUDIO", "FLOAT"], ["IMAGE", "FLOAT"])
    assert not outputs_compatible(["IMAGE", "AUDIO"], ["IMAGE", "INT", "AUDIO"])
    assert not outputs_compatible(["IMAGE", "INT"], ["IMAGE"])

    def spec(name, kind, optional=False, **options):
        return {"name": name, "type": kind, "options": options, "optional": optional}
    old = {"name": "N", "inputs": [spec("images", "IMAGE"), spec("fps", "FLOAT", default=30.0)],
           "outputs": ["VIDEO"], "output_names": ["VIDEO"]}
    new = {**old, "inputs": old["inputs"] + [spec("bit_depth", "INT", optional=True, default=8)],
           "outputs": ["VIDEO", "INT"], "output_names": ["VIDEO", "bit_depth"]}
    assert appended_optional_widgets(new, 1) and not appended_optional_widgets(new, 0) and not appended_optional_widgets(new, 3)
    required = {**new, "inputs": old["inputs"] + [spec("bit_depth", "INT", default=8)]}
    assert not appended_optional_widgets(required, 1)

    def build(infos, **widgets):
        graph = Graph(infos)
        graph.add("N", (0, 0), widgets)
        return {"nodes": graph.nodes}
    committed = build({"N": old})
    assert as_built_on_older_host(build({"N": new}), committed, {"N": new}) == committed
    changed = build({"N": new}, bit_depth=10)
    assert as_built_on_older_host(changed, committed, {"N": new}) != committed
    linked = build({"N": new})
    linked["nodes"][0]["outputs"][1]["links"].append(5)
    assert as_built_on_older_host(linked, committed, {"N": new}) != committed
    retyped = {**new, "outputs": ["IMAGE", "INT"]}
    assert as_built_on_older_host(build({"N": retyped}), committed, {"N": retyped}) != committed


def test_no_two_templates_share_a_node_id():
    """The frontend shows a running prompt's progress on the node with that id in whichever tab is open: with shared
    ids the trainer's progress and live plot appeared on "Load Diffusion Model" in the curate tab."""
    ids = {key: {node["id"] for node in _load(key)["nodes"]} for key in TEMPLATES}
    for key, own in ids.items():
        others = set().union(*(other for name, other in ids.items() if name != key))
        assert not own & others, (key, sorted(own & others))
    trainer = next(node["id"] for node in _load("ipa_align")["nodes"] if node["type"] == "IPATrainLoRA")
    assert all(trainer not in ids[key] for key in TEMPLATES if key != "ipa_align")
    for key in TEMPLATES:  # the frontend gives new nodes ids after last_node_id
        workflow = _load(key)
        assert workflow["last_node_id"] == max(ids[key])
