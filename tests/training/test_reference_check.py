"""The trainer's reference against the sampling model's record (issue: the reference is the sampling model): base
fingerprints, init_lora with strengths (several allowed), patches it cannot reproduce, allow_other_base, old datasets.
CPU only; the ComfyUI side of the same records is tested in test_reference_comfy.py."""

from __future__ import annotations

import pytest
import torch

from ipa_train.data.samples import add_sample, create_dataset
from ipa_train.jobs.config import ConfigError, InitLora, RunConfig, parse_init_lora
from ipa_train.training.loop import train
from ipa_train.training.reference_check import ReferenceMismatch
from ipa_train.wan.fingerprint import (
    diffusers_model_fingerprint,
    lora_group_digest,
    native_lora_patch_digests,
    weights_fingerprint,
)
from ipa_train.wan.lora_io import read_lora_file, save_comfy_lora
from ipa_train.wan.model import build_tiny_transformer
from support.trainer_helpers import make_sample, tiny_config

TINY_FINGERPRINT = None


def tiny_fingerprint() -> str:
    global TINY_FINGERPRINT
    if TINY_FINGERPRINT is None:
        TINY_FINGERPRINT = diffusers_model_fingerprint(build_tiny_transformer(seed=0))
    return TINY_FINGERPRINT


def _lora_file(path, seed=1, rank=2, alpha=3.0):
    """A LoRA on the tiny model's self-attention q/v (native layout, non-zero B)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for block in range(3):
        for proj, width in (("to_q", 24), ("to_v", 24)):
            state[f"blocks.{block}.attn1.{proj}.lora_A.weight"] = torch.randn(rank, width, generator=g) * 0.3
            state[f"blocks.{block}.attn1.{proj}.lora_B.weight"] = torch.randn(width, rank, generator=g) * 0.3
    return save_comfy_lora(path, state, alpha)


def _group(path, strength):
    native, _, _ = read_lora_file(path)
    return {"strength": strength, "weights": 6, "digest": lora_group_digest(native_lora_patch_digests(native))}


def _dataset(tmp_path, settings_list, name="ds"):
    folder = create_dataset(tmp_path, name)
    for i, settings in enumerate(settings_list):
        add_sample(folder, make_sample(i), meta={"settings": settings, "source": "ipa_vace_sampler"}, status="preferred")
    return folder


def _run(config):
    events = []
    result = train(config, callback=events.append)
    return result, events


def test_fingerprint_is_the_same_for_every_holder_of_the_same_stored_weights():
    g = torch.Generator().manual_seed(0)
    stored = {"patch_embedding.weight": torch.randn(8, 16, 1, 2, 2, generator=g).half(),
              "blocks.0.self_attn.q.weight": torch.randn(8, 8, generator=g).half(), "head.modulation": torch.randn(1, 2, 8, generator=g)}
    as_stored = weights_fingerprint(stored.get)
    upcast = weights_fingerprint({k: v.float() for k, v in stored.items()}.get)  # ComfyUI on CPU, patch embeddings in fp32
    bf16 = weights_fingerprint({k: v.bfloat16() for k, v in stored.items()}.get)  # the trainer's bf16 cast on GPU
    assert as_stored == upcast == bf16
    changed = dict(stored, **{"blocks.0.self_attn.q.weight": stored["blocks.0.self_attn.q.weight"] * 1.5})
    assert weights_fingerprint(changed.get) != as_stored
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in stored.items()}  # another quantisation of the same weights
    assert weights_fingerprint(fp8.get) != as_stored
    with pytest.raises(ValueError, match="not a Wan2.1 model"):
        weights_fingerprint({}.get)


@pytest.mark.filterwarnings("ignore:ComfyUI will not rebuild")
def test_trainer_fingerprint_of_a_file_equals_the_fingerprint_of_its_weights(tmp_path):
    from ipa_train.fileio import load_safetensors
    from ipa_train.wan.model import load_transformer, save_original_wan_single_file
    from ipa_train.wan.vace_module import strip_prefix

    model = build_tiny_transformer(seed=4)
    path = save_original_wan_single_file(model, tmp_path / "tiny.safetensors", dtype=torch.float16)
    tensors, _ = load_safetensors(path)
    from_file = weights_fingerprint(strip_prefix(tensors).get)
    assert diffusers_model_fingerprint(load_transformer(path)) == from_file  # fp16 file loaded in fp32
    assert diffusers_model_fingerprint(load_transformer(path, torch_dtype=torch.bfloat16)) == from_file
    assert diffusers_model_fingerprint(build_tiny_transformer(seed=5)) != diffusers_model_fingerprint(model)


def test_init_lora_forms():
    assert parse_init_lora(None) == [] and parse_init_lora([]) == []
    assert parse_init_lora("a.safetensors") == [InitLora("a.safetensors", 1.0)]
    assert parse_init_lora({"path": "a.safetensors", "strength": 0.5}) == [InitLora("a.safetensors", 0.5)]
    assert parse_init_lora(["a.safetensors", {"path": "b.safetensors", "strength": -1}]) == [InitLora("a.safetensors"), InitLora("b.safetensors", -1.0)]
    for bad, message in (({"path": "a", "strength": 0}, "non-zero"), ({"file": "a"}, "must be a LoRA file path"), (3, "must be a LoRA file path"),
                         ({"path": "a", "strength": "half"}, "non-zero number")):
        with pytest.raises(ConfigError, match=message):
            RunConfig.from_dict({"dataset": "d", "base_model": "tiny", "output_dir": "o", "init_lora": bad})
    with pytest.raises(ConfigError, match="allow_other_base"):
        RunConfig.from_dict({"dataset": "d", "base_model": "tiny", "output_dir": "o", "allow_other_base": "yes"})
    with pytest.raises(ConfigError, match="vace_module"):
        RunConfig.from_dict({"dataset": "d", "base_model": "tiny", "output_dir": "o", "vace_module": "m.safetensors"})


def test_init_loras_at_their_strengths_are_comfyuis_merged_weights(tmp_path):
    """reference = base + sum_i strength_i * alpha_i / rank_i * B_i A_i, as ComfyUI patches the weights."""
    from ipa_train.training import lora as lora_setup
    from ipa_train.training.model_setup import add_adapters

    first, second = _lora_file(tmp_path / "a.safetensors", seed=1), _lora_file(tmp_path / "b.safetensors", seed=2, rank=3, alpha=1.0)
    config = tiny_config(tmp_path, tmp_path / "o", init_lora=[{"path": str(first), "strength": 0.5}, {"path": str(second), "strength": -0.7}])
    model = build_tiny_transformer(seed=0)
    merged = build_tiny_transformer(seed=0)
    with torch.no_grad():
        for path, strength in ((first, 0.5), (second, -0.7)):
            native, _, _ = read_lora_file(path)
            for key, down in native.items():
                if key.endswith(".lora_A.weight"):
                    module = key[len("diffusion_model."): -len(".lora_A.weight")]
                    up, alpha = native[key.replace("lora_A", "lora_B")], float(native[key.replace(".lora_A.weight", ".alpha")])
                    name = module.replace("self_attn.", "attn1.to_")
                    merged.get_submodule(name).weight += strength * alpha / down.shape[0] * up @ down
    add_adapters(model, config)
    assert lora_setup.reference_adapters(model) == ["reference", "reference_1"]
    g = torch.Generator().manual_seed(3)
    inputs = dict(hidden_states=torch.randn(1, 16, 2, 4, 4, generator=g), timestep=torch.tensor([400.0]),
                  encoder_hidden_states=torch.randn(1, 6, 32, generator=g), control_hidden_states=torch.randn(1, 96, 2, 4, 4, generator=g),
                  control_hidden_states_scale=torch.ones(2), return_dict=False)
    with torch.no_grad(), lora_setup.reference_mode(model):
        reference = model(**inputs)[0]
    with torch.no_grad():
        expected = merged(**inputs)[0]
        base = build_tiny_transformer(seed=0)(**inputs)[0]
    assert (reference - base).abs().max() > 1e-3  # the LoRAs change the model
    assert (reference - expected).abs().max() < 1e-5
    assert [name for name, _ in lora_setup.trained_parameters(model)] and all(".ipa." in n for n, _ in lora_setup.trained_parameters(model))


def test_lora_and_strength_are_reproduced_or_refused(tmp_path):
    lora = _lora_file(tmp_path / "hands_v1.safetensors")
    patches = {"loras": [_group(lora, 0.5)], "ipa_loras": [{"name": "ipa/hands_v1.safetensors", "strength": 0.5, "weights": 6}]}
    data = _dataset(tmp_path, [{"base_fingerprint": tiny_fingerprint(), "patches": patches}])
    result, events = _run(tiny_config(data, tmp_path / "ok", steps=1, init_lora={"path": str(lora), "strength": 0.5}))
    assert result.status == "finished" and events[0]["warnings"] == []
    with pytest.raises(ReferenceMismatch, match=r"hands_v1.safetensors at strength 0.5, 6 weights, but init_lora gives hands_v1.safetensors at strength 1"):
        _run(tiny_config(data, tmp_path / "s1", steps=1, init_lora=str(lora)))
    with pytest.raises(ReferenceMismatch, match=r'"strength": 0.5'):  # the message says what to set
        _run(tiny_config(data, tmp_path / "none", steps=1))
    other = _lora_file(tmp_path / "other.safetensors", seed=9)
    with pytest.raises(ReferenceMismatch, match="the same strengths but other LoRA weights"):
        _run(tiny_config(data, tmp_path / "other", steps=1, init_lora={"path": str(other), "strength": 0.5}))
    # sampled without a LoRA, trained with one: the reference is not the sampler either
    plain = _dataset(tmp_path, [{"base_fingerprint": tiny_fingerprint()}], name="plain")
    with pytest.raises(ReferenceMismatch, match="sampled with no LoRA"):
        _run(tiny_config(plain, tmp_path / "extra", steps=1, init_lora=str(lora)))


def test_unreproducible_patches_and_other_bases_are_refused_unless_allowed(tmp_path):
    rope = {"transformer_options": ["rope_options"], "rope_options": {"scale_t": 1.0, "scale_x": 2.0, "scale_y": 1.0}}
    data = _dataset(tmp_path, [{"base_fingerprint": tiny_fingerprint(), "patches": rope},
                               {"base_fingerprint": tiny_fingerprint(), "patches": {"unidentified_weight_patches": {"LoHaAdapter": 4}}},
                               {"base_fingerprint": tiny_fingerprint(), "patches": {"model_wrappers": ["diffusion_model"]}}])
    with pytest.raises(ReferenceMismatch) as caught:
        _run(tiny_config(data, tmp_path / "o", steps=1))
    message = str(caught.value)
    assert "rope scaling (ScaleROPE" in message and "scale_x" in message and "not plain LoRAs" in message and "model wrappers" in message
    assert "allow_other_base: true" in message
    other = _dataset(tmp_path, [{"base_fingerprint": "wan-weights-sha256:" + "0" * 64}], name="other")
    with pytest.raises(ReferenceMismatch, match="sampled by another base model than tiny"):
        _run(tiny_config(other, tmp_path / "b", steps=1))
    result, events = _run(tiny_config(other, tmp_path / "allowed", steps=1, allow_other_base=True))
    assert result.status == "finished" and "allow_other_base is set: training anyway" in events[0]["warnings"][0]


def test_records_are_checked_before_the_model_loads_and_old_datasets_only_warn(tmp_path):
    rope = {"rope_options": {"scale_x": 2.0}, "transformer_options": ["rope_options"]}
    data = _dataset(tmp_path, [{"base_fingerprint": tiny_fingerprint(), "patches": rope}])
    with pytest.raises(ReferenceMismatch):  # a missing base model would fail later: the patch check comes first
        _run(tiny_config(data, tmp_path / "o", steps=1, base_model=str(tmp_path / "missing.safetensors")))
    old = _dataset(tmp_path, [{}, {"base_fingerprint": tiny_fingerprint()}], name="old")
    folder = create_dataset(tmp_path, "old")
    add_sample(folder, make_sample(9), meta={"source": "outside_video"}, status="preferred")  # never sampled: not checked
    result, events = _run(tiny_config(old, tmp_path / "old_run", steps=1))
    assert result.status == "finished"
    assert events[0]["warnings"] == ["1 of 2 samples carry no record of the model that sampled them (collected before the IPA VACE "
                                     "Sampler recorded it, or by another tool): the trainer cannot check that base_model and "
                                     "init_lora are that model."]
