"""LoRA layouts -> ComfyUI native Wan layout (exact keys, values, alpha and matched counts), module name
mapping, and the save/load round trip into a peft model."""

from __future__ import annotations

import json

import pytest
import torch

from ipa_train.fileio import atomic_save_safetensors, load_safetensors
from ipa_train.wan.lora_io import (
    LoraFileError,
    load_lora_for_peft,
    peft_config_kwargs,
    read_lora_file,
    save_comfy_lora,
)
from ipa_train.wan.lora_keys import diffusers_module_to_native, native_to_diffusers_module, to_comfy_native
from ipa_train.wan.model import build_tiny_transformer, diffusers_key_to_original

# (native module, diffusers module, kohya name) written out by hand, independent of the code under test.
MODULES = [
    ("blocks.0.self_attn.q", "blocks.0.attn1.to_q", "blocks_0_self_attn_q"),
    ("blocks.0.self_attn.k", "blocks.0.attn1.to_k", "blocks_0_self_attn_k"),
    ("blocks.2.self_attn.v", "blocks.2.attn1.to_v", "blocks_2_self_attn_v"),
    ("blocks.1.self_attn.o", "blocks.1.attn1.to_out.0", "blocks_1_self_attn_o"),
    ("blocks.1.cross_attn.k", "blocks.1.attn2.to_k", "blocks_1_cross_attn_k"),
    ("blocks.2.cross_attn.o", "blocks.2.attn2.to_out.0", "blocks_2_cross_attn_o"),
    ("blocks.0.ffn.0", "blocks.0.ffn.net.0.proj", "blocks_0_ffn_0"),
    ("blocks.0.ffn.2", "blocks.0.ffn.net.2", "blocks_0_ffn_2"),
    ("vace_blocks.0.self_attn.q", "vace_blocks.0.attn1.to_q", "vace_blocks_0_self_attn_q"),
    ("vace_blocks.1.cross_attn.v", "vace_blocks.1.attn2.to_v", "vace_blocks_1_cross_attn_v"),
    ("vace_blocks.1.ffn.2", "vace_blocks.1.ffn.net.2", "vace_blocks_1_ffn_2"),
    ("vace_blocks.0.before_proj", "vace_blocks.0.proj_in", "vace_blocks_0_before_proj"),
    ("vace_blocks.1.after_proj", "vace_blocks.1.proj_out", "vace_blocks_1_after_proj"),
]
RANK = 4


def _reference_weights(alphas=True):
    g = torch.Generator().manual_seed(0)
    weights = {}
    for i, (native, _, _) in enumerate(MODULES):
        rank = RANK + (i % 2)  # mixed ranks
        a = torch.randn(rank, 24, generator=g)
        b = torch.randn(32, rank, generator=g)
        alpha = float(rank) / 2 if alphas else None
        weights[native] = (a, b, alpha)
    return weights


def _expected_native(weights, default_scale=1.0):
    out = {}
    for native, (a, b, alpha) in weights.items():
        out[f"diffusion_model.{native}.lora_A.weight"] = a
        out[f"diffusion_model.{native}.lora_B.weight"] = b
        out[f"diffusion_model.{native}.alpha"] = torch.tensor(alpha if alpha is not None else a.shape[0] * default_scale)
    return out


def _write(weights, key_fn, down="lora_A.weight", up="lora_B.weight", with_alpha=True):
    sd = {}
    for native, diffusers, kohya in MODULES:
        a, b, alpha = weights[native]
        base = key_fn(native, diffusers, kohya)
        sd[f"{base}.{down}"] = a.clone()
        sd[f"{base}.{up}"] = b.clone()
        if with_alpha and alpha is not None:
            sd[f"{base}.alpha"] = torch.tensor(alpha)
    return sd


FORMATS = {
    "native_AB": (lambda n, d, k: f"diffusion_model.{n}", "lora_A.weight", "lora_B.weight", True),
    "native_down_up": (lambda n, d, k: f"diffusion_model.{n}", "lora_down.weight", "lora_up.weight", True),
    "native_no_alpha": (lambda n, d, k: f"diffusion_model.{n}", "lora_A.weight", "lora_B.weight", False),
    "diffusers": (lambda n, d, k: f"transformer.{d}", "lora_A.weight", "lora_B.weight", False),
    "diffsynth": (lambda n, d, k: n, "lora_A.default.weight", "lora_B.default.weight", False),
    "peft_base_model": (lambda n, d, k: f"base_model.model.{n}", "lora_A.default.weight", "lora_B.default.weight", False),
    "peft_diffusers_names": (lambda n, d, k: f"base_model.model.{d}", "lora_A.weight", "lora_B.weight", False),
    "kohya": (lambda n, d, k: f"lora_unet_{k}", "lora_down.weight", "lora_up.weight", True),
    "kohya_no_alpha": (lambda n, d, k: f"lora_unet_{k}", "lora_down.weight", "lora_up.weight", False),
    "wan_fun": (lambda n, d, k: f"lora_unet__{k}", "lora_down.weight", "lora_up.weight", True),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_converts_to_the_same_native_dict(fmt):
    key_fn, down, up, with_alpha = FORMATS[fmt]
    weights = _reference_weights(alphas=with_alpha)
    source = _write(weights, key_fn, down, up, with_alpha)
    snapshot = {k: v.clone() for k, v in source.items()}
    native, report = to_comfy_native(source)
    expected = _expected_native(weights)
    assert set(native) == set(expected)
    for key, value in expected.items():
        assert torch.equal(native[key], value.to(native[key].dtype)), key
        assert native[key].data_ptr() != 0
    assert len(report.matched) == len(source) and report.unmatched == []
    assert len(report.modules) == len(MODULES)
    assert set(report.alpha_from.values()) == ({"file"} if with_alpha else {"default (scale 1)"})
    # Source untouched, outputs never alias it.
    for key, value in source.items():
        assert torch.equal(value, snapshot[key])
    source_ptrs = {v.data_ptr() for v in source.values()}
    assert not any(v.data_ptr() in source_ptrs for v in native.values())


def test_diffusers_metadata_alpha_is_honoured():
    weights = _reference_weights(alphas=False)
    source = _write(weights, FORMATS["diffusers"][0], with_alpha=False)
    metadata = {"lora_adapter_metadata": json.dumps({
        "transformer.r": 4, "transformer.lora_alpha": 8,
        "transformer.alpha_pattern": {"blocks.0.ffn.net.0.proj": 2},
    })}
    native, report = to_comfy_native(source, metadata)
    for native_name, diffusers, _ in MODULES:
        # peft scale = lora_alpha / r per module, written as alpha = scale * rank.
        want = 2.0 if diffusers == "blocks.0.ffn.net.0.proj" else 8.0
        assert native[f"diffusion_model.{native_name}.alpha"].item() == pytest.approx(want)
        assert report.alpha_from[f"diffusion_model.{native_name}"] == "metadata"


def test_unmatched_and_partial_keys_are_reported():
    weights = _reference_weights()
    source = _write(weights, FORMATS["native_AB"][0])
    source["diffusion_model.blocks.0.norm3.weight"] = torch.zeros(3)
    source["text_encoders.clip_l.lora_A.weight"] = torch.zeros(2, 2)
    source["diffusion_model.blocks.2.self_attn.q.lora_A.weight"] = torch.zeros(2, 24)  # no lora_B
    source["lora_unet_blocks_0_self_attn_qq.lora_down.weight"] = torch.zeros(2, 2)
    native, report = to_comfy_native(source)
    assert set(native) == set(_expected_native(weights))
    assert sorted(report.unmatched) == sorted([
        "diffusion_model.blocks.0.norm3.weight",
        "text_encoders.clip_l.lora_A.weight",
        "diffusion_model.blocks.2.self_attn.q.lora_A.weight",
        "lora_unet_blocks_0_self_attn_qq.lora_down.weight",
    ])
    assert len(report.matched) == len(source) - 4
    assert report.summary().startswith(f"{len(source) - 4} of {len(source)} keys matched")


def test_conflicting_duplicate_keys_raise():
    source = {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 3),
        "lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.zeros(2, 3),
    }
    with pytest.raises(ValueError, match="both give A"):
        to_comfy_native(source)


def test_diff_entries_pass_through_and_block_peft(tmp_path):
    source = {
        "diffusion_model.blocks.0.self_attn.q.diff": torch.ones(4, 4),
        "diffusion_model.blocks.0.self_attn.q.diff_b": torch.ones(4),
    }
    native, report = to_comfy_native(source)
    assert set(native) == set(source) and report.diff_modules == ["diffusion_model.blocks.0.self_attn.q"]
    atomic_save_safetensors(tmp_path / "diff.safetensors", source)
    with pytest.raises(LoraFileError, match="full weights"):
        load_lora_for_peft(tmp_path / "diff.safetensors")


def test_module_name_mapping_covers_every_linear_layer():
    model = build_tiny_transformer(0)
    original_keys = {diffusers_key_to_original(k) for k in model.state_dict()}
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) > 40
    for name in linears:
        native = diffusers_module_to_native(name)
        assert native.startswith("diffusion_model.")
        # The native name is the module's name in the original Wan (ComfyUI) checkpoint.
        assert native[len("diffusion_model."):] + ".weight" in original_keys, name
        assert native_to_diffusers_module(native) == name
    assert diffusers_module_to_native("blocks.0.attn1.to_q") == "diffusion_model.blocks.0.self_attn.q"
    assert native_to_diffusers_module("diffusion_model.vace_blocks.3.cross_attn.o") == "vace_blocks.3.attn2.to_out.0"
    assert native_to_diffusers_module("blocks.7.ffn.0") == "blocks.7.ffn.net.0.proj"
    with pytest.raises(ValueError):
        diffusers_module_to_native("blocks.0.norm2")


# ---------------------------------------------------------------------------------------------------------
# Round trip through peft

def _peft_model(config_kwargs, seed=0):
    from peft import LoraConfig, inject_adapter_in_model

    model = build_tiny_transformer(seed)
    return inject_adapter_in_model(LoraConfig(**config_kwargs), model)


def _inputs():
    g = torch.Generator().manual_seed(5)
    return dict(
        hidden_states=torch.randn(1, 16, 3, 8, 8, generator=g),
        timestep=torch.tensor([611.0]),
        encoder_hidden_states=torch.randn(1, 6, 32, generator=g),
        control_hidden_states=torch.randn(1, 96, 3, 8, 8, generator=g),
        control_hidden_states_scale=torch.ones(2),
        return_dict=False,
    )


def _predict(model):
    with torch.no_grad():
        return model(**_inputs())[0]


def test_save_load_round_trip_into_peft(tmp_path):
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    # alpha != rank, so a wrong scale anywhere shows in the prediction.
    trained = _peft_model(dict(r=4, lora_alpha=6.0, target_modules=r"blocks\.\d+\.attn1\.to_[qkv]",
                               init_lora_weights=False))
    torch.manual_seed(7)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    reference = _predict(trained)
    base = _predict(build_tiny_transformer(0))
    assert not torch.allclose(reference, base)

    path = save_comfy_lora(tmp_path / "ipa.safetensors", get_peft_model_state_dict(trained), 6.0,
                           {"objective": "ipa", "beta": 600.0, "steps": 3})
    tensors, metadata = load_safetensors(path)
    assert metadata["objective"] == "ipa" and metadata["beta"] == "600.0" and metadata["steps"] == "3"
    assert len(tensors) == 3 * 3 * 3  # 3 blocks x q,k,v x (A, B, alpha)
    assert all(k.startswith("diffusion_model.blocks.") and ".self_attn." in k for k in tensors)
    assert tensors["diffusion_model.blocks.1.self_attn.v.alpha"].item() == 6.0
    assert not list(tmp_path.glob(".*.tmp"))

    state, alphas, meta = load_lora_for_peft(path)
    assert meta["objective"] == "ipa"
    kwargs = peft_config_kwargs(state, alphas)
    assert kwargs["r"] == 4 and kwargs["lora_alpha"] == 6.0 and len(kwargs["target_modules"]) == 9
    fresh = _peft_model(dict(kwargs, init_lora_weights=False))
    result = set_peft_model_state_dict(fresh, state)
    assert not result.unexpected_keys
    assert torch.equal(_predict(fresh), reference)

    # The same LoRA in kohya layout (alpha kept) and in diffusers layout (alpha in peft metadata) loads the same.
    kohya = {}
    for key, value in tensors.items():
        body, _, tail = key[len("diffusion_model."):].rpartition(".self_attn.")
        proj, _, role = tail.partition(".")
        name = f"lora_unet_{body.replace('.', '_')}_self_attn_{proj}"
        role = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}.get(role, role)
        kohya[f"{name}.{role}"] = value
    atomic_save_safetensors(tmp_path / "kohya.safetensors", kohya)
    diffusers_sd = {f"transformer.{k}": v for k, v in state.items()}
    atomic_save_safetensors(tmp_path / "diffusers.safetensors", diffusers_sd,
                            {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 6.0})})
    for other in ("kohya.safetensors", "diffusers.safetensors"):
        state2, alphas2, _ = load_lora_for_peft(tmp_path / other)
        assert alphas2 == alphas
        fresh2 = _peft_model(dict(peft_config_kwargs(state2, alphas2), init_lora_weights=False))
        set_peft_model_state_dict(fresh2, state2)
        assert torch.equal(_predict(fresh2), reference), other


def test_peft_model_wrapper_prefix(tmp_path):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    config = LoraConfig(r=2, lora_alpha=2, target_modules=r"blocks\.\d+\.attn1\.to_[qkv]", init_lora_weights=False)
    wrapped = get_peft_model(build_tiny_transformer(0), config)
    sd = get_peft_model_state_dict(wrapped)
    path = save_comfy_lora(tmp_path / "w.safetensors", sd, 2.0, {})
    state, alphas, _ = load_lora_for_peft(path, prefix="base_model.model.")
    assert set(state) == {f"base_model.model.{k}" if not k.startswith("base_model.model.") else k for k in sd}
    other = get_peft_model(build_tiny_transformer(0), config)
    set_peft_model_state_dict(other, state)
    for key, value in get_peft_model_state_dict(other).items():
        assert torch.equal(value, sd[key])


def test_bad_lora_files(tmp_path):
    with pytest.raises(LoraFileError, match="not found"):
        read_lora_file(tmp_path / "none.safetensors")
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(LoraFileError, match="only .safetensors"):
        read_lora_file(tmp_path / "x.pt")
    atomic_save_safetensors(tmp_path / "sdxl.safetensors", {"lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(2, 2)})
    with pytest.raises(LoraFileError, match="no key is a Wan2.1 LoRA") as info:
        read_lora_file(tmp_path / "sdxl.safetensors")
    # what to check: the family its keys suggest, the file's origin, and the layouts that are read
    message = str(info.value)
    assert "look like a LoRA for Stable Diffusion / SDXL" in message and "where the file came from" in message
    assert "Wan2.1 or Wan2.1-VACE (1.3B or 14B)" in message
    for example in ("diffusion_model.blocks.0.self_attn.q.lora_A.weight", "transformer.blocks.0.attn1.to_q.lora_A.weight",
                    "blocks.0.self_attn.q.lora_A.default.weight", "lora_unet_blocks_0_self_attn_q.lora_down.weight"):
        assert example in message
    atomic_save_safetensors(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(2, 2)},
                            {"modelspec.architecture": "flux-1-dev/lora"})
    with pytest.raises(LoraFileError, match=r"look like a LoRA for Flux or HunyuanVideo\. Its metadata names the model 'flux-1-dev/lora'"):
        read_lora_file(tmp_path / "flux.safetensors")
    with pytest.raises(ValueError, match="Unexpected key"):
        save_comfy_lora(tmp_path / "y.safetensors", {"blocks.0.attn1.to_q.lora_magnitude_vector": torch.ones(3)}, 1.0, {})
