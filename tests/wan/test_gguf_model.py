"""GGUF bases (city96's Wan layout) train as stored: diffusers' GGUF loader keeps the quantised weights, peft wraps
its GGUFLinear, and forward and LoRA gradients equal those of the same weights dequantised up front."""

from __future__ import annotations

import gguf
import pytest
import torch

from ipa_train.data.samples import add_sample, create_dataset
from ipa_train.training.loop import train
from ipa_train.wan.fingerprint import diffusers_model_fingerprint, weights_fingerprint
from ipa_train.wan.model import ModelLoadError, load_transformer, save_original_wan_single_file
from support.comfy_tiny import build_tiny_comfy_transformer
from support.trainer_helpers import make_sample, tiny_config


def write_city96_gguf(path, state, quant=gguf.GGMLQuantizationType.Q8_0, arch="wan", prefix=""):
    """What city96's tools/convert.py (+ fix_5d_tensors.py) writes: original key names, 2-D weights quantised, 1-D
    tensors, small ones and ``.modulation`` in F32, the 5-D patch embeddings in F32 at full shape."""
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in state.items():
        data = value.float().numpy()
        kind = quant
        if data.ndim == 1 or data.size <= 1024 or ".modulation" in key or "modulation" == key.split(".")[-1] or data.ndim > 4:
            kind = gguf.GGMLQuantizationType.F32
        try:
            packed = gguf.quants.quantize(data, kind)
        except (AttributeError, gguf.QuantError):
            kind = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, kind)
        writer.add_tensor(prefix + key, packed, raw_dtype=kind)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from ipa_train.fileio import load_safetensors

    folder = tmp_path_factory.mktemp("gguf")
    source = save_original_wan_single_file(build_tiny_comfy_transformer(seed=2), folder / "tiny.safetensors", prefix="", record_config=False)
    state, _ = load_safetensors(source)
    return folder, state, write_city96_gguf(folder / "tiny-Q8_0.gguf", state)


def _inputs(batch=1):
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(batch, 16, 2, 4, 4, generator=g), timestep=torch.full((batch,), 600.0),
                encoder_hidden_states=torch.randn(batch, 8, 4096, generator=g) * 0.2,
                control_hidden_states=torch.randn(batch, 96, 2, 4, 4, generator=g), control_hidden_states_scale=torch.ones(2),
                return_dict=False)


def test_gguf_base_keeps_its_quantised_weights_and_trains_like_the_dequantised_one(files):
    from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor
    from peft import LoraConfig

    from ipa_train.wan.gguf_model import is_gguf_model, logical_shapes, read_gguf_state_dict
    from ipa_train.wan.model import _from_single_file, detect_config

    _, _, path = files
    quantised = load_transformer(path)
    assert is_gguf_model(quantised) and isinstance(quantised.blocks[0].attn1.to_q, GGUFLinear)
    assert quantised.blocks[0].attn1.to_q.weight.dtype == torch.uint8  # Q8_0 blocks, as stored
    tensors = read_gguf_state_dict(path)
    dequantised = {k: dequantize_gguf_tensor(v).float() if hasattr(v, "quant_type") else v.float() for k, v in tensors.items()}
    dense = _from_single_file(dequantised, detect_config(logical_shapes(tensors)), torch.float32).eval()
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(quantised(**inputs)[0], dense(**inputs)[0])
    grads = []
    for model in (quantised, dense):
        torch.manual_seed(0)
        model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=r"blocks\.\d+\.attn1\.to_[qkv]", init_lora_weights=False), adapter_name="ipa")
        model.requires_grad_(False)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_("lora_" in name)
        (model(**inputs)[0] ** 2).mean().backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert len(grads[0]) == len(grads[1]) == 24
    for name, grad in grads[1].items():
        assert torch.equal(grads[0][name], grad), name
    # The fingerprint is of the stored (quantised) weights: the GGUF is not the safetensors file it came from.
    assert diffusers_model_fingerprint(load_transformer(path)) == weights_fingerprint(tensors.get)
    assert weights_fingerprint(tensors.get) != weights_fingerprint(files[1].get)


def test_trainer_trains_a_lora_on_a_gguf_base(files, tmp_path):
    _, _, path = files
    folder = create_dataset(tmp_path, "g")
    for seed in range(2):
        sample = make_sample(seed, frames=2, h=4, w=4, text_dim=4096)
        add_sample(folder, sample, status="preferred")
    events = []
    result = train(tiny_config(folder, tmp_path / "out", base_model=str(path), steps=2, rank=2), callback=events.append)
    assert result.status == "finished" and events[0]["trainable_parameters"] > 0
    assert all(torch.isfinite(torch.tensor(step["loss"])) for step in result.history)


def test_bad_gguf_files_are_refused_clearly(files, tmp_path, monkeypatch):
    _, state, path = files
    other_arch = write_city96_gguf(tmp_path / "flux.gguf", {"img_in.weight": torch.zeros(64, 64)}, arch="flux")
    with pytest.raises(ModelLoadError, match="architecture 'flux', not Wan"):
        load_transformer(other_arch)
    t2v = write_city96_gguf(tmp_path / "t2v.gguf", {k: v for k, v in state.items() if not k.startswith("vace_")})
    with pytest.raises(ModelLoadError, match="text-to-video or other model without VACE blocks"):
        load_transformer(t2v)
    with pytest.raises(ModelLoadError, match="vace_module with a GGUF base"):
        load_transformer(path, vace_module=str(tmp_path / "module.safetensors"))
    import builtins

    real_import = builtins.__import__

    def no_gguf(name, *args, **kwargs):
        if name == "gguf":
            raise ImportError("no gguf")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gguf)
    with pytest.raises(ModelLoadError, match="needs the 'gguf' package"):
        load_transformer(path)


def test_gguf_base_is_never_swapped_nor_fp8(files, tmp_path, monkeypatch):
    """Block swap would hand the matmul a still-packed GGUF weight ("self and mat2 must have the same dtype"), and the
    loader refuses fp8 for GGUF: the planner never offers either, and the trainer refuses them before any weight loads."""
    from ipa_train.jobs.config import ConfigError
    from ipa_train.memory.plan import GIB, PlanError, RunShape, Settings, candidates, check_settings, choose, describe_model
    from ipa_train.wan import model as wan_model

    _, _, path = files
    spec = describe_model(str(path))
    assert spec.gguf and not describe_model("tiny").gguf
    offered = candidates(spec, Settings())
    assert offered and all(s.blocks_to_swap == 0 and s.base_precision == "bf16" for s in offered)
    assert any(s.blocks_to_swap for s in candidates(describe_model("tiny"), Settings()))  # the same model as a safetensors: offered
    with pytest.raises(PlanError, match="blocks_to_swap=2 with the GGUF file tiny-Q8_0.gguf: its weights stay packed"):
        check_settings(spec, Settings(blocks_to_swap=2, activation_offload=True))
    with pytest.raises(PlanError, match="base_precision 'fp8' with the GGUF file"):
        check_settings(spec, Settings("fp8"))
    with pytest.raises(PlanError, match=r"No memory setting fits.*blocks_to_swap 0"):  # nothing left to offer: swap is not
        choose(spec, RunShape(frames=2, height=4, width=4, text_tokens=8, rank=2), Settings(), int(1e-3 * GIB))

    folder = create_dataset(tmp_path, "g")
    add_sample(folder, make_sample(0, frames=2, h=4, w=4, text_dim=4096), status="preferred")

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(wan_model, "load_transformer", no_loading)
    for settings, message in ((dict(blocks_to_swap=2, gradient_checkpointing=True), "blocks_to_swap=2 with the GGUF file"),
                              (dict(base_precision="fp8"), "base_precision 'fp8' with the GGUF file")):
        with pytest.raises(ConfigError, match=message):
            train(tiny_config(folder, tmp_path / "out", base_model=str(path), steps=1, rank=2, **settings))
