"""example_workflows/*.json: well-formed UI-format graphs with model notes; under a real ComfyUI (COMFYUI_PATH) every
node type, input, link type and widget count matches the live schemas (what the frontend needs to load them)."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO_ROOT, requires_comfyui

sys.path.insert(0, str(REPO_ROOT / "scripts"))

WORKFLOWS = sorted((REPO_ROOT / "example_workflows").glob("*.json"))


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
    load = lambda name: json.loads((REPO_ROOT / "example_workflows" / f"{name}.json").read_text())  # noqa: E731
    curate, animate = load("ipa_curate"), load("ipa_animate")
    assert _links_into(curate, "IPAVaceSampler")["control_video"] == ("IPADWPoseEstimator", "pose_video")
    assert _links_into(curate, "IPAMarkPreferred")["pose_keypoint"] == ("IPADWPoseEstimator", "pose_keypoints")
    assert _links_into(curate, "IPAHandMaskFromPose")["pose_keypoint"] == ("IPADWPoseEstimator", "pose_keypoints")
    assert _links_into(curate, "IPADWPoseEstimator")["frames"] == ("GetVideoComponents", "images")
    assert _links_into(animate, "WanVaceToVideo")["control_video"] == ("IPADWPoseEstimator", "pose_video")
    assert _links_into(animate, "ModelSamplingSD3")["model"] == ("IPALoRALoader", "model")
    for workflow in (curate, animate):
        notes = next(node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "MarkdownNote")
        assert "models/dwpose/yolox_l.onnx" in notes and "dw-ll_ucoco_384.onnx" in notes


def test_workflows_exist_and_are_well_formed():
    assert {path.stem for path in WORKFLOWS} >= {"ipa_curate", "ipa_align", "ipa_animate"}
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
    from comfy_tiny import load_pack_cpu
    from workflow_graph import check_workflow, node_infos

    from build_example_workflows import build_all

    infos = node_infos(load_pack_cpu())
    for path in WORKFLOWS:
        assert check_workflow(json.loads(path.read_text()), infos) == [], path.name
    # the committed files are what the builder makes from today's schemas
    for name, workflow in build_all(infos).items():
        assert json.loads((REPO_ROOT / "example_workflows" / f"{name}.json").read_text()) == workflow, f"{name}: rebuild with scripts/build_example_workflows.py"
    # the API-format prompt the frontend would queue: widget values by name, links as [source id, slot]
    from workflow_graph import to_api_prompt

    curate = json.loads((REPO_ROOT / "example_workflows" / "ipa_curate.json").read_text())
    prompt = to_api_prompt(curate, infos)
    sampler = next(node for node in prompt.values() if node["class_type"] == "IPAVaceSampler")
    estimator_id = next(key for key, node in prompt.items() if node["class_type"] == "IPADWPoseEstimator")
    assert sampler["inputs"]["control_video"] == [estimator_id, 1] and sampler["inputs"]["candidates"] == 4
    assert sampler["inputs"]["seed"] == 0 and not any(":" in name for node in prompt.values() for name in node["inputs"])
    assert "MarkdownNote" not in {node["class_type"] for node in prompt.values()}
    # and the check can fail: a missing node type and a wrong widget count are reported
    broken = json.loads((REPO_ROOT / "example_workflows" / "ipa_align.json").read_text())
    broken["nodes"][0]["widgets_values"].pop()
    broken["nodes"][1]["type"] = "NoSuchNode"
    problems = check_workflow(broken, infos)
    assert any("widget values" in p for p in problems) and any("NoSuchNode" in p for p in problems)
