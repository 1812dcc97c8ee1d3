"""A VACE module beside a Wan2.1 text-to-video base (kijai's split files): the trainer's base_model + vace_module is
exactly the complete Wan2.1-VACE model, in both key layouts; wrong pairs are refused with what to choose."""

from __future__ import annotations

import pytest
import torch

from ipa_train.fileio import atomic_save_safetensors, load_safetensors
from ipa_train.wan.model import ModelLoadError, load_transformer, save_original_wan_single_file
from ipa_train.wan.vace_module import VaceModuleError, is_vace_module, merge_vace_module
from support.comfy_tiny import build_tiny_comfy_transformer

MODULE_PARTS = ("vace_blocks.", "vace_patch_embedding.")


def split_vace_files(full_path, folder, prefix=""):
    """(t2v base, VACE module) files made from a complete Wan2.1-VACE file, keys bare or with ``prefix``."""
    tensors, _ = load_safetensors(full_path)
    tensors = {key.removeprefix("model.diffusion_model."): value for key, value in tensors.items()}
    base = {prefix + k: v for k, v in tensors.items() if not k.startswith(MODULE_PARTS)}
    module = {prefix + k: v for k, v in tensors.items() if k.startswith(MODULE_PARTS)}
    tag = "prefixed" if prefix else "bare"
    return (atomic_save_safetensors(folder / f"Wan2_1-T2V-tiny_{tag}.safetensors", base),
            atomic_save_safetensors(folder / f"Wan2_1-VACE_module_tiny_{tag}.safetensors", module))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vace")
    model = build_tiny_comfy_transformer(seed=6)
    return folder, model, save_original_wan_single_file(model, folder / "wan2.1_vace_tiny.safetensors", record_config=False)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_base_plus_module_is_the_complete_model(full, prefix):
    folder, model, path = full
    base, module = split_vace_files(path, folder, prefix)
    assert is_vace_module(load_safetensors(module)[0]) and not is_vace_module(load_safetensors(base)[0])
    loaded = load_transformer(base, vace_module=module)
    expected = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_wrong_pairs_are_refused(full, tmp_path):
    folder, _, path = full
    base, module = split_vace_files(path, folder)
    with pytest.raises(ModelLoadError, match="add its VACE module as vace_module"):
        load_transformer(base)
    with pytest.raises(ModelLoadError, match="is a VACE module .* choose the Wan2.1 text-to-video file"):
        load_transformer(module)
    with pytest.raises(ModelLoadError, match="already has VACE blocks"):
        load_transformer(path, vace_module=module)
    with pytest.raises(ModelLoadError, match="is not a VACE module"):
        load_transformer(base, vace_module=base)
    with pytest.raises(ModelLoadError, match="vace_module file not found"):
        load_transformer(base, vace_module=tmp_path / "missing.safetensors")
    wide = build_tiny_comfy_transformer(seed=1, num_attention_heads=2)  # 256 wide
    wide_path = save_original_wan_single_file(wide, tmp_path / "wide.safetensors", record_config=False)
    _, wide_module = split_vace_files(wide_path, tmp_path)
    with pytest.raises(ModelLoadError, match="must be the same size"):
        load_transformer(base, vace_module=wide_module)
    shapes = {"patch_embedding.weight": (128, 36, 1, 2, 2), "head.modulation": (1, 2, 128), "img_emb.proj.0.weight": (1280,)}
    with pytest.raises(VaceModuleError, match="image-to-video"):
        merge_vace_module(shapes, {"vace_blocks.0.after_proj.weight": (128, 128), "vace_patch_embedding.weight": (128, 96, 1, 2, 2)})


def test_fp8_module_and_fp8_mode_with_a_split_pair(full, tmp_path):
    """kijai ships VACE modules in fp8 too: the module's fp8 linears stay fp8 as stored next to a bf16 base, and
    base_precision fp8 quantises both files while they stream in; the planner reads the same pair from the headers."""
    from ipa_train.memory.plan import describe_model
    from ipa_train.wan.frozen_linear import FrozenLinear
    from support.fp8_layouts import write_fp8_file

    folder, model, path = full
    base, module = split_vace_files(path, folder)
    write_fp8_file(module, tmp_path / "Wan2_1-VACE_module_tiny_fp8_e4m3fn.safetensors", "fp8", prefix="")
    loaded = load_transformer(base, vace_module=tmp_path / "Wan2_1-VACE_module_tiny_fp8_e4m3fn.safetensors")
    frozen = {n for n, m in loaded.named_modules() if isinstance(m, FrozenLinear)}
    assert frozen and all(n.startswith("vace_blocks.") for n in frozen)
    assert torch.equal(loaded.blocks[0].attn1.to_q.weight, model.blocks[0].attn1.to_q.weight)  # the base as stored
    assert torch.equal(loaded.vace_blocks[0].attn1.to_q.weight.float(), model.vace_blocks[0].attn1.to_q.weight.to(torch.float8_e4m3fn).float())
    quantised = load_transformer(base, vace_module=module, base_precision="fp8")
    frozen = {n for n, m in quantised.named_modules() if isinstance(m, FrozenLinear)}
    assert any(n.startswith("blocks.") for n in frozen) and any(n.startswith("vace_blocks.") for n in frozen)
    spec = describe_model(str(base), str(tmp_path / "Wan2_1-VACE_module_tiny_fp8_e4m3fn.safetensors"))
    assert spec.fp8_stored and all(n.startswith("vace_blocks.") for n in spec.fp8_stored)
    assert spec.total_params == sum(p.numel() for p in model.parameters())
