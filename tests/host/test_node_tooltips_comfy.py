"""Every input and output of every node of the pack has a tooltip, as ComfyUI's own training nodes do (needs
COMFYUI_PATH: the schemas are built by ComfyUI's V3 API)."""

from __future__ import annotations

from conftest import requires_comfyui

pytestmark = requires_comfyui


def test_every_input_and_output_has_a_tooltip():
    from support.comfy_tiny import load_pack_cpu

    load_pack_cpu()
    from comfyui_ipa_pack.nodes import NODE_MODULES

    missing, nodes = [], 0
    for module in NODE_MODULES:
        for node in module.NODES:
            nodes += 1
            schema = node.define_schema()
            info = node.GET_NODE_INFO_V1()  # what GET /object_info sends to the frontend
            for spec in schema.inputs:
                if not (spec.tooltip or "").strip():
                    missing.append(f"{schema.node_id} input {spec.id}")
            for index, spec in enumerate(schema.outputs):
                if not (spec.tooltip or "").strip():
                    missing.append(f"{schema.node_id} output {spec.display_name or index}")
            assert len(info["output_tooltips"]) == len(schema.outputs) and all(info["output_tooltips"]), schema.node_id
            assert (schema.description or "").strip(), schema.node_id
    assert nodes >= 9 and not missing, missing
