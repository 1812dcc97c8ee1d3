"""Building and checking ComfyUI UI-format workflows (LiteGraph JSON, version 0.4) from node schemas.

``node_infos()`` reads the schemas of ComfyUI's core nodes and this pack's nodes in-process (what GET /object_info
returns); ``Graph`` lays nodes out and links them by socket name; ``check_workflow`` verifies a workflow file against
the schemas: every node type exists, every link joins an existing output to an input of the same type, and every
node has exactly as many widget values as its schema has widgets (a ComfyUI node may have gained outputs or optional
widgets at the end on a newer host than the oldest supported one, which the templates are built on).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def node_infos(pack_module) -> dict[str, dict[str, Any]]:
    """object_info for ComfyUI's built-in nodes (comfy_extras included) and the pack's nodes."""
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False))
    infos = {name: _info(cls, name) for name, cls in nodes.NODE_CLASS_MAPPINGS.items()}
    extension = asyncio.run(pack_module.comfy_entrypoint())
    for cls in asyncio.run(extension.get_node_list()):
        info = cls.GET_NODE_INFO_V1()
        infos[info["name"]] = {**_normalise(info), "pack": True}
    return infos


def _info(cls, name: str) -> dict[str, Any]:
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return _normalise(cls.GET_NODE_INFO_V1())
    inputs = cls.INPUT_TYPES()
    return _normalise({
        "name": name,
        "input": {"required": inputs.get("required", {}), "optional": inputs.get("optional", {})},
        "input_order": {key: list(inputs.get(key, {})) for key in ("required", "optional")},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
    })


def _normalise(info: dict[str, Any]) -> dict[str, Any]:
    inputs = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {}) or {}
        for name in info.get("input_order", {}).get(section, list(specs)):
            spec = specs[name]
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            kind = "COMBO" if isinstance(kind, (list, tuple)) else str(kind)
            inputs.append({"name": name, "type": kind, "options": options, "optional": section == "optional"})
    return {"name": info["name"], "inputs": inputs, "outputs": [str(o) for o in info["output"]],
            "output_names": [str(n) for n in info.get("output_name", info["output"])]}


# The frontend (comfyui-frontend-package 1.35.9) adds a "control after generate" combo after an INT widget declared with
# control_after_generate, or named seed / noise_seed unless it is declared False; after a FLOAT or COMBO only when
# declared. A COMBO's control also brings a filter-list text widget. Each of them is a slot in widgets_values.
SEED_NAMES = ("seed", "noise_seed")


def control_slots(spec: dict[str, Any]) -> list[str]:
    """The extra widget slots the frontend puts after widget ``spec`` for its control_after_generate."""
    declared = spec["options"].get("control_after_generate")
    if spec["type"] == "INT":
        has_control = bool(declared) if declared is not None else spec["name"] in SEED_NAMES
    else:
        has_control = spec["type"] in ("FLOAT", "COMBO") and bool(declared)
    if not has_control:
        return []
    slots = [f"{spec['name']}:control_after_generate"]
    if spec["type"] == "COMBO":
        slots.append(f"{spec['name']}:control_filter_list")
    return slots


def widget_names(info: dict[str, Any]) -> list[str]:
    """Widget value slots in the order the frontend stores them: each widget, then its control slots
    (:func:`control_slots`) and an upload button's slot."""
    names = []
    for spec in info["inputs"]:
        if spec["type"] in WIDGET_TYPES:
            names.append(spec["name"])
            names.extend(control_slots(spec))
            options = spec["options"]
            if options.get("image_upload") or options.get("video_upload"):
                names.append(f"{spec['name']}:upload")
    return names


NODE_TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos
GROUP_TITLE_HEIGHT = 58
GROUP_COLOUR = "#3f789e"


class Graph:
    def __init__(self, infos: dict[str, dict[str, Any]], model_files: Optional[dict[str, dict[str, str]]] = None, first_id: int = 1):
        """``first_id``: the first node id. The frontend shows a running prompt's progress on the node with the same id
        in whichever workflow tab is open, so templates that run long (the trainer) take ids no other template uses."""
        self.infos = infos
        self.first_id = first_id
        self.model_files = model_files or {}  # file name -> {"url": ..., "directory": ...}
        self.nodes: list[dict[str, Any]] = []
        self.links: list[list[Any]] = []
        self.groups: list[dict[str, Any]] = []

    def note(self, pos: tuple[int, int], width: int, height: int, text: str) -> int:
        return self.add("MarkdownNote", pos, {"text": text}, title="Read me", size=(width, height))

    def group(self, title: str, node_ids: list[int], padding: int = 14) -> None:
        """A titled box around ``node_ids`` (their title bars included)."""
        boxes = [(n["pos"][0], n["pos"][1] - NODE_TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
                 for n in self.nodes if n["id"] in node_ids]
        x0, y0 = min(b[0] for b in boxes) - padding, min(b[1] for b in boxes) - GROUP_TITLE_HEIGHT
        x1, y1 = max(b[2] for b in boxes) + padding, max(b[3] for b in boxes) + padding
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": GROUP_COLOUR, "font_size": 34, "flags": {}})

    def add(self, node_type: str, pos: tuple[int, int], widgets: Optional[dict[str, Any]] = None, title: Optional[str] = None,
            size: tuple[int, int] = (320, 200), models: Optional[list[str]] = None) -> int:
        """``models``: file names among this node's widget values to list in ``properties.models`` (with the download
        URL and folder from ``model_files``), which the frontend's missing-model dialog reads."""
        node_id = self.first_id + len(self.nodes)
        order = len(self.nodes)
        if node_type in FRONTEND_ONLY:
            node = {"id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {}, "order": order,
                    "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [widgets["text"]],
                    "color": "#432", "bgcolor": "#653"}
            if title:
                node["title"] = title
            self.nodes.append(node)
            return node_id
        info = self.infos[node_type]
        widgets = dict(widgets or {})
        values = []
        for name in widget_names(info):
            if name.endswith(":control_after_generate"):
                values.append(widgets.pop(name, "fixed"))
            elif name.endswith(":control_filter_list"):
                values.append(widgets.pop(name, ""))
            elif name.endswith(":upload"):
                values.append(widgets.pop(name, "image"))
            else:
                spec = next(s for s in info["inputs"] if s["name"] == name)
                if name in widgets:
                    values.append(widgets.pop(name))
                elif "default" in spec["options"]:
                    values.append(spec["options"]["default"])
                else:
                    raise ValueError(f"{node_type}.{name}: give a value (no default)")
        if widgets:
            raise ValueError(f"{node_type}: unknown widgets {sorted(widgets)}")
        inputs = []
        for spec in info["inputs"]:
            entry = {"name": spec["name"], "type": spec["type"], "link": None}
            if spec["type"] in WIDGET_TYPES:
                entry["widget"] = {"name": spec["name"]}
            elif spec["optional"]:
                entry["shape"] = 7
            inputs.append(entry)
        outputs = [{"name": name, "type": kind, "links": [], "slot_index": index}
                   for index, (name, kind) in enumerate(zip(info["output_names"], info["outputs"]))]
        properties: dict[str, Any] = {"Node name for S&R": node_type}
        if models:
            missing = [name for name in models if name not in values or name not in self.model_files]
            if missing:
                raise ValueError(f"{node_type}: models {missing} are not among its widget values or have no download entry")
            properties["models"] = [{"name": name, **self.model_files[name]} for name in models]
        node = {"id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {}, "order": order, "mode": 0,
                "inputs": inputs, "outputs": outputs, "properties": properties, "widgets_values": values}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def link(self, source: int, output: str, target: int, input_name: str) -> None:
        src, dst = self.nodes[source - self.first_id], self.nodes[target - self.first_id]
        slot = next(i for i, o in enumerate(src["outputs"]) if o["name"] == output)
        in_slot = next(i for i, n in enumerate(dst["inputs"]) if n["name"] == input_name)
        kind = src["outputs"][slot]["type"]
        if dst["inputs"][in_slot]["type"] not in (kind, "*"):
            raise ValueError(f"{src['type']}.{output} ({kind}) cannot feed {dst['type']}.{input_name} ({dst['inputs'][in_slot]['type']})")
        link_id = len(self.links) + 1
        self.links.append([link_id, source, slot, target, in_slot, kind])
        src["outputs"][slot]["links"].append(link_id)
        dst["inputs"][in_slot]["link"] = link_id

    def to_json(self, notes: str, description: str = "", view: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The workflow. ``view``: the saved view (``extra.ds``: scale and offset) it opens with; without one the
        frontend fits the whole graph into the window, at whatever zoom that takes. ``description``: what the
        template does and needs (``extra.description``)."""
        extra: dict[str, Any] = {"ipa_notes": notes}
        if description:
            extra["description"] = description
        if view:
            extra["ds"] = {"scale": view["scale"], "offset": list(view["offset"])}
        return {
            "id": "00000000-0000-4000-8000-000000000000",
            "revision": 0,
            "last_node_id": self.first_id + len(self.nodes) - 1,
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": extra,
            "version": 0.4,
        }


def outputs_compatible(saved: list[str], live: list[str]) -> bool:
    """Saved output types load on a host whose node has ``live`` outputs: the same, or a prefix of them (the node
    gained outputs at the end on a newer ComfyUI, e.g. GetVideoComponents' INT in v0.28). The frontend keeps links
    by slot, so links from the old slots stay valid; an output removed, retyped or inserted before others is not
    compatible."""
    return len(saved) <= len(live) and list(saved) == list(live[: len(saved)])


def appended_optional_widgets(info: dict[str, Any], saved_count: int) -> bool:
    """The widget slots past the first ``saved_count`` are optional inputs with a default (and their control
    slots), which a newer host appended to the node (e.g. CreateVideo's bit_depth in v0.28): the frontend gives a
    widget that has no saved value its default, and ComfyUI its own default when the prompt leaves it out."""
    names = widget_names(info)
    if saved_count > len(names):
        return False
    specs = {spec["name"]: spec for spec in info["inputs"]}
    for name in names[saved_count:]:
        spec = specs[name.split(":")[0]]
        if not spec["optional"] or "default" not in spec["options"]:
            return False
    return True


def as_built_on_older_host(built: dict[str, Any], committed: dict[str, Any], infos: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``built`` (a workflow made from this host's schemas) without what a newer host appended to a node, where the
    committed workflow (built on the oldest supported host) lacks it: outputs at the end that carry no links
    (:func:`outputs_compatible`), and optional widget inputs at the end left at their defaults
    (:func:`appended_optional_widgets`). The committed templates stay built on the oldest host and compare equal to
    a newer host's build modulo those. Nodes are matched by id; the pack's own nodes and anything else are left as
    built."""
    committed_nodes = {node["id"]: node for node in committed.get("nodes", [])}
    nodes = []
    for node in built["nodes"]:
        old = committed_nodes.get(node["id"])
        if old is None or old.get("type") != node["type"] or node["type"] not in infos or infos[node["type"]].get("pack"):
            nodes.append(node)
            continue
        node = dict(node)
        outputs, old_outputs = node.get("outputs", []), old.get("outputs", [])
        if len(old_outputs) < len(outputs) and not any(o["links"] for o in outputs[len(old_outputs):]) \
                and outputs_compatible([o["type"] for o in old_outputs], [o["type"] for o in outputs]):
            node["outputs"] = outputs[: len(old_outputs)]
        inputs, old_inputs = node.get("inputs", []), old.get("inputs", [])
        values, old_values = node.get("widgets_values", []), old.get("widgets_values", [])
        defaults = [spec["options"].get("default") for name in widget_names(infos[node["type"]])[len(old_values):]
                    for spec in infos[node["type"]]["inputs"] if spec["name"] == name]
        if len(old_inputs) < len(inputs) and [i["name"] for i in inputs[: len(old_inputs)]] == [i["name"] for i in old_inputs] \
                and all("widget" in i and i.get("link") is None for i in inputs[len(old_inputs):]) \
                and appended_optional_widgets(infos[node["type"]], len(old_values)) and values[len(old_values):] == defaults:
            node["inputs"], node["widgets_values"] = inputs[: len(old_inputs)], values[: len(old_values)]
        nodes.append(node)
    return {**built, "nodes": nodes}


GROUP_TITLE_CHAR_WIDTH = 0.6  # of the font size: a generous average for LiteGraph's sans-serif group titles


def _overlap(a, b) -> bool:
    """Whether two [x, y, width, height] boxes overlap (touching edges do not)."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def layout_problems(workflow: dict[str, Any]) -> list[str]:
    """What a person would see as broken layout: groups over each other, a group title longer than its group (it
    runs into the next group's title), nodes over each other (their title bars included)."""
    problems = []
    groups = workflow.get("groups", [])
    for index, group in enumerate(groups):
        title_width = group.get("font_size", 24) * GROUP_TITLE_CHAR_WIDTH * len(group["title"]) + 16
        if title_width > group["bounding"][2]:
            problems.append(f"group {group['title']!r}: its title (about {title_width:.0f} px) is wider than the group ({group['bounding'][2]} px)")
        for other in groups[index + 1:]:
            if _overlap(group["bounding"], other["bounding"]):
                problems.append(f"groups {group['title']!r} and {other['title']!r} overlap")
    boxes = [(n, [n["pos"][0], n["pos"][1] - NODE_TITLE_HEIGHT, n["size"][0], n["size"][1] + NODE_TITLE_HEIGHT]) for n in workflow["nodes"]]
    for index, (node, box) in enumerate(boxes):
        for other, other_box in boxes[index + 1:]:
            if _overlap(box, other_box):
                problems.append(f"nodes {node['id']} {node['type']} and {other['id']} {other['type']} overlap")
    return problems


def check_workflow(workflow: dict[str, Any], infos: dict[str, dict[str, Any]]) -> list[str]:
    """Problems found (empty when the workflow matches the schemas and its layout is clean)."""
    problems = layout_problems(workflow)
    nodes_by_id = {node["id"]: node for node in workflow["nodes"]}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        info = infos.get(node["type"])
        if info is None:
            problems.append(f"node {node['id']}: unknown node type {node['type']} (missing node)")
            continue
        expected = widget_names(info)
        saved = len(node.get("widgets_values", []))
        # the pack's own nodes match exactly (the templates are built from the same code); a ComfyUI node may have
        # gained optional widgets at the end on a newer host
        tolerated = not info.get("pack") and saved < len(expected) and appended_optional_widgets(info, saved)
        if saved != len(expected) and not tolerated:
            problems.append(f"node {node['id']} {node['type']}: {len(node.get('widgets_values', []))} widget values, schema has {len(expected)} {expected}")
        input_names = {spec["name"]: spec for spec in info["inputs"]}
        for entry in node.get("inputs", []):
            if entry["name"] not in input_names:
                problems.append(f"node {node['id']} {node['type']}: no input named {entry['name']}")
        for spec in info["inputs"]:
            if not spec["optional"] and spec["type"] not in WIDGET_TYPES:
                linked = any(entry["name"] == spec["name"] and entry.get("link") for entry in node.get("inputs", []))
                if not linked:
                    problems.append(f"node {node['id']} {node['type']}: required input {spec['name']} is not connected")
        if not outputs_compatible([o["type"] for o in node.get("outputs", [])], info["outputs"]):
            problems.append(f"node {node['id']} {node['type']}: outputs {[o['type'] for o in node.get('outputs', [])]} != {info['outputs']}")
    for link_id, source, slot, target, in_slot, kind in workflow["links"]:
        src, dst = nodes_by_id.get(source), nodes_by_id.get(target)
        if src is None or dst is None:
            problems.append(f"link {link_id}: missing node")
            continue
        if src["outputs"][slot]["type"] != kind or dst["inputs"][in_slot]["type"] not in (kind, "*"):
            problems.append(f"link {link_id}: type {kind} does not match {src['type']}[{slot}] -> {dst['type']}[{in_slot}]")
        if dst["inputs"][in_slot].get("link") != link_id or link_id not in src["outputs"][slot]["links"]:
            problems.append(f"link {link_id}: not recorded on both ends")
    return problems


def dumps(workflow: dict[str, Any]) -> str:
    return json.dumps(workflow, indent=2) + "\n"


def to_api_prompt(workflow: dict[str, Any], infos: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The API-format prompt (what the frontend POSTs to /prompt) for a UI-format workflow: frontend-only nodes
    dropped, widget values by input name (without the frontend's control_after_generate / upload slots), links as
    ``[source id, output slot]``."""
    prompt: dict[str, dict[str, Any]] = {}
    links = {link[0]: link for link in workflow["links"]}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        info = infos[node["type"]]
        inputs: dict[str, Any] = {}
        for name, value in zip(widget_names(info), node.get("widgets_values", [])):
            if ":" not in name:
                inputs[name] = value
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                _, source, slot, _, _, _ = links[entry["link"]]
                inputs[entry["name"]] = [str(source), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node.get("title", node["type"])}}
    return prompt
