"""Loading Wan2.1-VACE checkpoints: original single-file layout (bare and prefixed), diffusers folders,
size detection, refusal of fp8-scaled and non-VACE files, and no hub access."""

from __future__ import annotations

import socket

import pytest
import torch

from ipa_train.fileio import atomic_save_safetensors, load_safetensors
from ipa_train.wan.model import (
    CONFIG_METADATA_KEY,
    ModelLoadError,
    SHIPPED_CONFIGS,
    build_tiny_comfy_transformer,
    build_tiny_transformer,
    detect_config,
    diffusers_key_to_original,
    load_transformer,
    save_original_wan_single_file,
    shipped_config,
)


def _inputs(model, seed=1):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, cfg.in_channels, 3, 8, 8, generator=g),
        timestep=torch.tensor([437.5]),
        encoder_hidden_states=torch.randn(1, 7, cfg.text_dim, generator=g),
        control_hidden_states=torch.randn(1, cfg.vace_in_channels, 3, 8, 8, generator=g),
        control_hidden_states_scale=torch.full((len(cfg.vace_layers),), 0.7),
        return_dict=False,
    )


def _predict(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def _assert_same_model(source, loaded):
    assert loaded.config.vace_layers == source.config.vace_layers
    assert loaded.config.num_attention_heads == source.config.num_attention_heads
    src, dst = source.state_dict(), loaded.state_dict()
    assert set(src) == set(dst)
    for key, value in src.items():
        assert torch.equal(value, dst[key]), key
    inputs = _inputs(source)
    assert torch.equal(_predict(source, inputs), _predict(loaded, inputs))


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_transformer(seed=3)


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""])
def test_original_single_file_round_trip(tmp_path, tiny, prefix):
    path = tmp_path / "wan_vace_tiny.safetensors"
    with pytest.warns(UserWarning, match="ComfyUI will not rebuild"):
        save_original_wan_single_file(tiny, path, prefix=prefix)
    tensors, metadata = load_safetensors(path)
    # Original Wan names, as ComfyUI and the official repository store them.
    assert f"{prefix}blocks.0.self_attn.q.weight" in tensors
    assert f"{prefix}vace_blocks.0.before_proj.weight" in tensors
    assert f"{prefix}head.modulation" in tensors
    assert f"{prefix}blocks.0.norm3.weight" in tensors  # cross-attention norm (diffusers calls it norm2)
    assert not any("attn1" in k or "to_q" in k for k in tensors)
    assert CONFIG_METADATA_KEY in metadata
    _assert_same_model(tiny, load_transformer(path))


def test_comfy_sized_model_loads_from_shapes_alone(tmp_path):
    source = build_tiny_comfy_transformer(seed=4)
    path = tmp_path / "tiny.safetensors"
    save_original_wan_single_file(source, path, record_config=False)
    assert CONFIG_METADATA_KEY not in load_safetensors(path)[1]
    _assert_same_model(source, load_transformer(path))


def test_other_prefix_and_dtype(tmp_path):
    source = build_tiny_comfy_transformer(seed=5)
    path = tmp_path / "tiny.safetensors"
    save_original_wan_single_file(source, path, prefix="diffusion_model.", dtype=torch.float16)
    loaded = load_transformer(path, torch_dtype=torch.float32)
    assert loaded.dtype == torch.float32
    w = source.blocks[0].attn1.to_q.weight
    assert torch.equal(loaded.blocks[0].attn1.to_q.weight, w.half().float())


def test_diffusers_folder(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "transformer")
    _assert_same_model(tiny, load_transformer(tmp_path / "transformer"))
    _assert_same_model(tiny, load_transformer(tmp_path))  # pipeline folder with transformer/


def test_no_network_access(tmp_path, tiny, monkeypatch):
    save_original_wan_single_file(build_tiny_comfy_transformer(6), tmp_path / "a.safetensors", record_config=False)
    tiny.save_pretrained(tmp_path / "folder")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    load_transformer(tmp_path / "a.safetensors")
    load_transformer(tmp_path / "folder")


def _original_shapes_from_config(config: dict) -> dict:
    from diffusers import WanVACETransformer3DModel

    with torch.device("meta"):
        model = WanVACETransformer3DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    return {"model.diffusion_model." + diffusers_key_to_original(k): v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(SHIPPED_CONFIGS.values()))
def test_detect_released_sizes(name):
    config = shipped_config(name)
    assert detect_config(_original_shapes_from_config(config)) == config
    # A config derived from the shapes alone agrees with the shipped one on everything the model builds from.
    derived = detect_config(_original_shapes_from_config(config), {CONFIG_METADATA_KEY: "{}"})
    for key in ("num_attention_heads", "attention_head_dim", "ffn_dim", "num_layers", "vace_layers", "text_dim",
                "in_channels", "out_channels", "vace_in_channels", "qk_norm", "cross_attn_norm", "freq_dim"):
        assert derived[key] == config[key], key


def test_shipped_configs_match_diffusers_signature():
    import inspect

    from diffusers import WanVACETransformer3DModel

    params = set(inspect.signature(WanVACETransformer3DModel.__init__).parameters) - {"self"}
    for name in SHIPPED_CONFIGS.values():
        config = shipped_config(name)
        assert {k for k in config if not k.startswith("_")} == params
        assert config["_class_name"] == "WanVACETransformer3DModel"
    assert shipped_config("wan2.1-vace-1.3b")["vace_layers"] == list(range(0, 30, 2))
    assert shipped_config("wan2.1-vace-14b")["vace_layers"] == list(range(0, 40, 5))


def _tiny_tensors(tmp_path, tiny):
    path = tmp_path / "base.safetensors"
    with pytest.warns(UserWarning):
        save_original_wan_single_file(tiny, path)
    return load_safetensors(path)


def test_fp8_scaled_refused(tmp_path, tiny):
    tensors, metadata = _tiny_tensors(tmp_path, tiny)
    tensors["model.diffusion_model.scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    tensors["model.diffusion_model.blocks.0.self_attn.q.scale_weight"] = torch.ones(1)
    atomic_save_safetensors(tmp_path / "scaled.safetensors", tensors, metadata)
    with pytest.raises(ModelLoadError, match="fp8-scaled.*fp16 or bf16"):
        load_transformer(tmp_path / "scaled.safetensors")
    # A released width names the exact file to use instead.
    header_only = {
        "patch_embedding.weight": torch.zeros(1536, 16, 1, 2, 2, dtype=torch.float16),
        "blocks.0.self_attn.q.scale_weight": torch.ones(1),
    }
    atomic_save_safetensors(tmp_path / "wan2.1_vace_1.3B_fp8_scaled.safetensors", header_only)
    with pytest.raises(ModelLoadError, match="wan2.1_vace_1.3B_fp16.safetensors"):
        load_transformer(tmp_path / "wan2.1_vace_1.3B_fp8_scaled.safetensors")


def test_bad_files_refused(tmp_path, tiny):
    with pytest.raises(ModelLoadError, match="not found"):
        load_transformer(tmp_path / "missing.safetensors")
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04junk")
    with pytest.raises(ModelLoadError, match="only .safetensors"):
        load_transformer(tmp_path / "model.ckpt")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="garbage.safetensors is truncated or not a safetensors file .*download the model file again"):
        load_transformer(tmp_path / "garbage.safetensors")
    atomic_save_safetensors(tmp_path / "sdxl.safetensors", {"conv_in.weight": torch.zeros(4, 4)})
    with pytest.raises(ModelLoadError, match="not a Wan2.1 transformer"):
        load_transformer(tmp_path / "sdxl.safetensors")

    tensors, metadata = _tiny_tensors(tmp_path, tiny)
    t2v = {k: v for k, v in tensors.items() if "vace" not in k}
    atomic_save_safetensors(tmp_path / "t2v.safetensors", t2v)
    with pytest.raises(ModelLoadError, match="without VACE"):
        load_transformer(tmp_path / "t2v.safetensors")

    truncated = dict(tensors)
    del truncated["model.diffusion_model.blocks.1.ffn.2.weight"]
    atomic_save_safetensors(tmp_path / "truncated.safetensors", truncated, metadata)
    with pytest.raises(ModelLoadError, match=r"1 weights missing \['blocks.1.ffn.net.2.weight'\]"):
        load_transformer(tmp_path / "truncated.safetensors")

    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_transformer(tmp_path / "empty_dir")

    diffusers_single = {k: v for k, v in tiny.state_dict().items()}
    atomic_save_safetensors(tmp_path / "diffusers_single.safetensors", diffusers_single)
    with pytest.raises(ModelLoadError, match="diffusers' key layout"):
        load_transformer(tmp_path / "diffusers_single.safetensors")
