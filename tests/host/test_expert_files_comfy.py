"""Wan2.2-VACE-Fun A14B files as creators hold them (Comfy-Org's repackaged high/low experts in fp16, fp8_e4m3fn and
fp8_scaled), as tiny random-weight files in those layouts and under those names: ComfyUI's UNETLoader loads each as
a VACE model, the trainer's header reader (and so the planner) describes the same network and layout, the expert is
read from the name as a hint only, and the reference fingerprint the sampler records (ComfyUI's side) equals the
trainer's for each file (its own process, diffusers), so the reference check reproduces each expert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_comfyui

pytestmark = requires_comfyui

LAYOUTS = {"fp16": "fp16", "fp8_e4m3fn": "fp8", "fp8_scaled": "fp8_scaled"}  # file-name tag -> fp8_layouts layout


def comfy_org_name(expert: str, tag: str) -> str:
    return f"wan2.2_fun_vace_{expert}_noise_14B_{tag}.safetensors"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every expert x layout file in models/diffusion_models, from the two tiny experts."""
    from ipa_train.fileio import atomic_save_safetensors, load_safetensors
    from support.comfy_tiny import TinyComfyExperts, load_pack_cpu
    from support.fp8_layouts import write_fp8_file

    load_pack_cpu()
    host = TinyComfyExperts(tmp_path_factory.mktemp("experts"))
    names = {}
    for expert, source in (("high", host.high_path), ("low", host.low_path)):
        for tag, layout in LAYOUTS.items():
            target = host.diffusion_models / comfy_org_name(expert, tag)
            if layout == "fp16":
                tensors, metadata = load_safetensors(source)
                atomic_save_safetensors(target, {k: v.half() for k, v in tensors.items()}, metadata)
            else:
                write_fp8_file(source, target, layout)
            names[(expert, tag)] = target
    return host, names


def _trainer_fingerprints(paths: list[Path]) -> dict[str, str]:
    """The trainer's reference fingerprint of each file: diffusers' model as ``load_transformer`` builds it (fp8 files
    kept as stored), in its own process (no torchvision stand-in for diffusers)."""
    code = ("import json, sys\nfrom ipa_train.wan.model import load_transformer\n"
            "from ipa_train.wan.fingerprint import diffusers_model_fingerprint\n"
            "print(json.dumps({p: diffusers_model_fingerprint(load_transformer(p)) for p in sys.argv[1:]}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code, *map(str, paths)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_comfy_org_expert_files_load_and_fingerprint_alike_on_both_sides(files):
    from comfyui_ipa_pack.nodes.model_identity import base_weights_fingerprint

    import nodes
    from ipa_train.memory.plan import describe_model
    from ipa_train.wan.lora_meta import expert_from_name, size_tag_from_name
    from ipa_train.wan.model import ModelFile

    host, names = files
    reference = ModelFile.describe(host.high_path)
    trainer = _trainer_fingerprints(list(names.values()))
    comfy = {}
    for (expert, tag), path in names.items():
        patcher = nodes.UNETLoader().load_unet(path.name, "default")[0]
        assert type(patcher.model).__name__ == "WAN21_Vace", (path.name, type(patcher.model).__name__)
        described = ModelFile.describe(path)
        assert described.config == reference.config, path.name  # the same network, whatever the layout
        assert described.sources[0].layout.name == {"fp16": "none", "fp8_e4m3fn": "fp8", "fp8_scaled": "fp8_scaled"}[tag], path.name
        assert bool(describe_model(str(path)).fp8_stored) == (tag != "fp16")  # the planner reads the same header
        assert expert_from_name(path.name) == expert and size_tag_from_name(path.name) == "14B"  # hints from the name
        comfy[(expert, tag)] = base_weights_fingerprint(patcher)
        assert comfy[(expert, tag)] == trainer[str(path)], f"{path.name}: ComfyUI and the trainer fingerprint it differently"
    # each expert and each layout is its own base: a sample of one is never trained against another
    assert len(set(comfy.values())) == len(comfy)
