"""Against a real ComfyUI (COMFYUI_PATH): files written by ``save_original_wan_single_file`` load through
UNETLoader's code path as a VACE model with the same weights; LoRAs written by ``save_comfy_lora`` (and every
layout ``to_comfy_native`` converts) apply through ComfyUI's own LoRA loader with exactly
``W + strength * alpha / rank * B @ A``; and the native ComfyUI model and diffusers' transformer predict the
same velocity for the same inputs, with and without the LoRA."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import comfyui_path, requires_comfyui
from ipa_train.fileio import load_safetensors
from ipa_train.wan.lora_io import load_lora_for_peft, peft_config_kwargs, save_comfy_lora
from ipa_train.wan.lora_keys import to_comfy_native
from ipa_train.wan.model import load_transformer, save_original_wan_single_file
from support.comfy_tiny import build_tiny_comfy_transformer

pytestmark = requires_comfyui

TARGETS = r"(vace_)?blocks\.\d+\.(attn1\.to_[qkv]|attn1\.to_out\.0|attn2\.to_[qv]|ffn\.net\.2)"


def _comfy():
    path = str(comfyui_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported: no CUDA probing
    import comfy.lora
    import comfy.model_base
    import comfy.sd

    return comfy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan")
    source = build_tiny_comfy_transformer(seed=11)
    path = save_original_wan_single_file(source, folder / "wan2.1_vace_tiny.safetensors", record_config=False)
    return source, path


@pytest.fixture(scope="module")
def lora(checkpoint, tmp_path_factory):
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    source, _ = checkpoint
    model = inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=3.0, target_modules=TARGETS, init_lora_weights=False),
        build_tiny_comfy_transformer(seed=11),
    )
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    path = save_comfy_lora(tmp_path_factory.mktemp("lora") / "ipa_tiny.safetensors",
                           get_peft_model_state_dict(model), 3.0, {"objective": "ipa"})
    return model, path


def test_unet_loader_reads_the_single_file_as_vace(checkpoint):
    comfy = _comfy()
    _, path = checkpoint
    patcher = comfy.sd.load_diffusion_model(str(path))
    assert isinstance(patcher.model, comfy.model_base.WAN21_Vace)
    dm = patcher.model.diffusion_model
    assert dm.vace_layers_mapping == {0: 0, 2: 1} and dm.num_heads == 1
    tensors, _ = load_safetensors(path)
    native = dm.state_dict()
    assert set(native) == {k[len("model.diffusion_model."):] for k in tensors}
    for key, value in tensors.items():
        assert torch.equal(native[key[len("model.diffusion_model."):]], value), key


def _patched_weights(comfy, patcher, lora_sd, strength):
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, strength, 0.0)
    keys = set(patched.patches)
    patched.patch_model()
    try:
        weights = {k: v.detach().clone() for k, v in patched.model.diffusion_model.state_dict().items()}
    finally:
        patched.unpatch_model()
    return keys, weights


def _expected_delta(native_sd, strength):
    out = {}
    for key, a in native_sd.items():
        if key.endswith(".lora_A.weight"):
            base = key[: -len(".lora_A.weight")]
            b = native_sd[f"{base}.lora_B.weight"]
            scale = native_sd[f"{base}.alpha"].item() / a.shape[0]
            out[base[len("diffusion_model."):] + ".weight"] = (strength * scale) * torch.mm(b.float(), a.float())
    return out


def test_comfy_lora_loader_applies_saved_lora_exactly(checkpoint, lora):
    comfy = _comfy()
    _, path = checkpoint
    _, lora_path = lora
    patcher = comfy.sd.load_diffusion_model(str(path))
    base = {k: v.detach().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
    lora_sd, _ = load_safetensors(lora_path)
    modules = {k[: -len(".lora_A.weight")] for k in lora_sd if k.endswith(".lora_A.weight")}
    assert len(lora_sd) == 3 * len(modules)
    assert any(m.startswith("diffusion_model.vace_blocks.") for m in modules)

    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    loaded = comfy.lora.load_lora(lora_sd, key_map)
    assert len(loaded) == len(modules)  # every module matched, nothing left over

    strength = 0.8
    keys, weights = _patched_weights(comfy, patcher, lora_sd, strength)
    assert keys == {m + ".weight" for m in modules}
    delta = _expected_delta(lora_sd, strength)
    for key, value in weights.items():
        expected = base[key] + delta[key] if key in delta else base[key]
        assert torch.allclose(value, expected, rtol=0, atol=1e-7), key
        if key in delta:
            assert not torch.equal(value, base[key])

    # Every other layout, converted by to_comfy_native, patches ComfyUI's model identically.
    state, alphas, _ = load_lora_for_peft(lora_path)
    kohya = {}
    roles = {".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight", ".alpha": ".alpha"}
    for key, value in lora_sd.items():
        suffix = next(s for s in roles if key.endswith(s))
        module = key[len("diffusion_model."): -len(suffix)]
        kohya["lora_unet_" + module.replace(".", "_") + roles[suffix]] = value
    for variant in (kohya, {f"transformer.{k}": v for k, v in state.items()}):
        native, report = to_comfy_native(variant, {"lora_adapter_metadata": '{"lora_alpha": 3.0}'})
        assert not report.unmatched
        keys2, weights2 = _patched_weights(comfy, patcher, native, strength)
        assert keys2 == keys
        for key in delta:
            assert torch.equal(weights2[key], weights[key]), key


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(1, 16, 3, 8, 8, generator=g),
        sigma=0.63,
        context=torch.cat([torch.randn(1, 9, 4096, generator=g), torch.zeros(1, 3, 4096)], dim=1),
        control=torch.randn(1, 96, 3, 8, 8, generator=g),
        strength=0.7,
    )


def _comfy_velocity(dm, inp):
    with torch.no_grad():
        return dm(inp["x"], torch.tensor([1000.0 * inp["sigma"]]), inp["context"],
                  vace_context=inp["control"][:, None], vace_strength=[inp["strength"]])


def _diffusers_velocity(model, inp):
    with torch.no_grad():
        return model(
            hidden_states=inp["x"], timestep=torch.tensor([1000.0 * inp["sigma"]]),
            encoder_hidden_states=inp["context"], control_hidden_states=inp["control"],
            control_hidden_states_scale=torch.full((len(model.config.vace_layers),), inp["strength"]),
            return_dict=False,
        )[0]


def test_native_and_diffusers_models_give_the_same_velocity(checkpoint, lora):
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    comfy = _comfy()
    _, path = checkpoint
    _, lora_path = lora
    patcher = comfy.sd.load_diffusion_model(str(path))
    diffusers_model = load_transformer(path)
    inp = _inputs()

    v_comfy = _comfy_velocity(patcher.model.diffusion_model, inp)
    v_diffusers = _diffusers_velocity(diffusers_model, inp)
    scale = v_diffusers.abs().mean().item()
    assert (v_comfy - v_diffusers).abs().max().item() < 1e-4 * max(scale, 1.0)

    # With the LoRA: ComfyUI patches the weights, peft adds the low-rank path; same function.
    lora_sd, _ = load_safetensors(lora_path)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, 1.0, 0.0)
    patched.patch_model()
    try:
        v_comfy_lora = _comfy_velocity(patched.model.diffusion_model, inp)
    finally:
        patched.unpatch_model()
    state, alphas, _ = load_lora_for_peft(lora_path)
    peft_model = inject_adapter_in_model(LoraConfig(**peft_config_kwargs(state, alphas)), diffusers_model)
    set_peft_model_state_dict(peft_model, state)
    v_diffusers_lora = _diffusers_velocity(peft_model, inp)
    assert (v_comfy_lora - v_diffusers).abs().max().item() > 1e-3 * scale  # the LoRA does something
    assert (v_comfy_lora - v_diffusers_lora).abs().max().item() < 1e-4 * max(scale, 1.0)
