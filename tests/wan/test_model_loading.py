"""Loading Wan2.1-VACE checkpoints: original single-file layout (bare and prefixed), diffusers folders,
size detection, fp8 files as stored, refusal of non-VACE files, and no hub access."""

from __future__ import annotations

import socket

import pytest
import torch

from ipa_train.fileio import atomic_save_safetensors, load_safetensors
from ipa_train.wan.model import (
    CONFIG_METADATA_KEY,
    SHIPPED_CONFIGS,
    ModelLoadError,
    build_tiny_transformer,
    detect_config,
    diffusers_key_to_original,
    load_transformer,
    save_original_wan_single_file,
    shipped_config,
)
from support.comfy_tiny import build_tiny_comfy_transformer


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


@pytest.mark.parametrize("layout", ["fp8", "fp8_scaled", "comfy_quant"])
def test_fp8_files_load_as_stored(tmp_path, layout):
    """kijai's plain fp8, ComfyUI's fp8_scaled and comfy_quant files: the block linears stay float8_e4m3fn (with the
    file's per-tensor scale) and the model computes what a full-precision model holding the dequantised weights does."""
    from ipa_train.wan.frozen_linear import FrozenLinear
    from ipa_train.wan.model import storage_summary
    from support.fp8_layouts import write_fp8_file

    source = build_tiny_comfy_transformer(seed=4)
    full = save_original_wan_single_file(source, tmp_path / "full.safetensors", record_config=False)
    expected = write_fp8_file(full, tmp_path / f"{layout}.safetensors", layout)
    model = load_transformer(tmp_path / f"{layout}.safetensors")
    layers = [m for m in model.modules() if isinstance(m, FrozenLinear)]
    assert len(layers) == len(expected) and all(m.weight.dtype == torch.float8_e4m3fn for m in layers)
    assert storage_summary(model)["fp8_scale"] == ({"none": len(expected)} if layout == "fp8" else {"tensor": len(expected)})
    reference = load_transformer(full)
    to_diffusers = {diffusers_key_to_original(k): k for k in reference.state_dict()}
    with torch.no_grad():
        for key, value in expected.items():
            reference.get_parameter(to_diffusers[key[len("model.diffusion_model."):]]).copy_(value)
    inputs = _inputs(source)
    got, want, original = _predict(model, inputs), _predict(reference, inputs), _predict(source, inputs)
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * want.abs().max().item())
    assert (got - original).norm() / original.norm() < 0.05  # and the quantisation itself is small


def test_fp8_mode_quantises_while_streaming_and_unknown_quantisations_are_refused(tmp_path, tiny):
    import json

    from ipa_train.wan.frozen_linear import FrozenLinear

    source = build_tiny_comfy_transformer(seed=4)
    full = save_original_wan_single_file(source, tmp_path / "full.safetensors", record_config=False)
    model = load_transformer(full, base_precision="fp8")
    layers = {n for n, m in model.named_modules() if isinstance(m, FrozenLinear)}
    assert layers and all(n.startswith(("blocks.", "vace_blocks.")) for n in layers)
    assert all(m.weight_scale.shape == (m.out_features, 1) for m in model.modules() if isinstance(m, FrozenLinear))
    assert not isinstance(model.proj_out, FrozenLinear) and model.proj_out.weight.dtype == torch.float32
    inputs = _inputs(source)
    original = _predict(source, inputs)
    assert (_predict(model, inputs) - original).norm() / original.norm() < 0.05

    tensors, metadata = load_safetensors(full)
    key = "model.diffusion_model.blocks.0.self_attn.q"
    tensors[f"{key}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    atomic_save_safetensors(tmp_path / "nvfp4.safetensors", tensors, metadata)
    with pytest.raises(ModelLoadError, match=r"quantised as \['nvfp4'\].*fp8 or fp16 release"):
        load_transformer(tmp_path / "nvfp4.safetensors")
    with pytest.raises(ModelLoadError, match="base_precision 'fp4' is not one of"):
        load_transformer(full, base_precision="fp4")


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
