"""The trainer in one process: objectives, reference, resume, bad input, LoRA output (tiny random model)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from ipa_train.data.layout import DatasetError
from ipa_train.fileio import load_safetensors, read_safetensors_metadata
from ipa_train.jobs.config import ConfigError, RunConfig
from ipa_train.training import lora
from ipa_train.training.batching import load_training_data
from ipa_train.training.checkpoints import TrainingError
from ipa_train.training.loop import train
from ipa_train.training.reference_check import sampling_patch_warning
from ipa_train.wan.model import build_tiny_transformer
from support.trainer_helpers import make_dataset, make_sample, one_thread, tiny_config  # noqa: F401 (one_thread: a fixture)

LOG2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def fixed_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, 16, 3, 4, 6, generator=g),
        timestep=torch.tensor([400.0]),
        encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
        control_hidden_states=torch.randn(1, 96, 3, 4, 6, generator=g),
    )


def predict(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def run(config, **kwargs):
    events = []
    result = train(config, callback=events.append, **kwargs)
    return result, events


# ------------------------------------------------------------------------------------------------- config, targets


def test_config_validation_names_the_key():
    base = dict(dataset="d", base_model="tiny", output_dir="o")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) \\['stepz'\\]"):
        RunConfig.from_dict({**base, "stepz": 3})
    with pytest.raises(ConfigError, match="objective='ppo' is not one of"):
        RunConfig.from_dict({**base, "objective": "ppo"})
    with pytest.raises(ConfigError, match="unknown LoRA target\\(s\\) \\['mlp'\\]"):
        RunConfig.from_dict({**base, "targets": ["self_attn_qkv", "mlp"]})
    with pytest.raises(ConfigError, match="dataset is required"):
        RunConfig.from_dict({"base_model": "tiny", "output_dir": "o"})
    with pytest.raises(ConfigError, match="rank=0 must be > 0"):
        RunConfig.from_dict({**base, "rank": 0})
    config = RunConfig.from_dict({**base, "steps": 5}).with_overrides({"steps": 7, "beta": None})
    assert config.steps == 7 and config.beta == 600.0 and config.effective_alpha == 128.0


def test_target_regex_hits_exactly_the_chosen_layers():
    model = build_tiny_transformer(0)
    lora.add_trained_lora(model, rank=2)
    modules = sorted({name.split(".lora_")[0] for name, _ in lora.trained_parameters(model)})
    assert modules == [f"blocks.{i}.attn1.to_{p}" for i in range(3) for p in "kqv"]
    model = build_tiny_transformer(0)
    lora.add_trained_lora(model, rank=2, targets=["self_attn_out", "cross_attn", "ffn", "vace_blocks"])
    modules = {name.split(".lora_")[0] for name, _ in lora.trained_parameters(model)}
    assert "vace_blocks.1.attn2.to_out.0" in modules and "blocks.2.ffn.net.0.proj" in modules and "blocks.0.ffn.net.2" in modules
    assert "blocks.0.attn1.to_out.0" in modules and not any(m.endswith("attn1.to_q") for m in modules)
    assert not any("proj_in" in m or "proj_out" in m or "condition_embedder" in m for m in modules)


def test_reference_is_bit_identical_to_a_deep_copy_and_restores_trainable_flags():
    model = build_tiny_transformer(0)
    copy_at_init = copy.deepcopy(model)
    lora.add_trained_lora(model, rank=4)
    inputs = fixed_inputs()
    expected = predict(copy_at_init, inputs)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    with lora.reference_mode(model):
        assert torch.equal(predict(model, inputs), expected)
    assert torch.equal(predict(model, inputs), expected)  # zero-initialised lora_B: policy == reference
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert all(".ipa." in name for name, p in model.named_parameters() if p.requires_grad)


def test_initial_lora_is_a_frozen_reference_adapter():
    donor = build_tiny_transformer(0)
    lora.add_trained_lora(donor, rank=3)
    state = {k: torch.randn_like(v) * 0.1 for k, v in lora.trained_state_dict(donor).items()}
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(donor, state, adapter_name=lora.TRAINED_ADAPTER)
    model = build_tiny_transformer(0)
    lora.add_reference_lora(model, state, {})
    lora.add_trained_lora(model, rank=4)
    inputs = fixed_inputs()
    expected = predict(donor, inputs)
    assert not torch.equal(expected, predict(build_tiny_transformer(0), inputs))
    assert torch.equal(predict(model, inputs), expected)
    with lora.reference_mode(model):
        assert torch.equal(predict(model, inputs), expected)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".ipa." in name for name in trainable)


# ------------------------------------------------------------------------------------------------- training


def test_ipa_training_lowers_the_loss_and_keeps_the_reference(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=2)
    config = tiny_config(data, tmp_path / "out", steps=16, learning_rate=3e-3, max_grad_norm=0.0)
    result, events = run(config)
    steps = [e for e in events if e["event"] == "step"]
    assert [e["event"] for e in events][0] == "started" and events[-1]["event"] == "finished"
    assert len(steps) == 16 and steps[0]["loss"] == pytest.approx(LOG2, abs=1e-6) and steps[0]["ipa_gap"] == 0.0
    for key in ("step", "total", "loss", "ipa_gap", "model_error", "reference_error", "lr", "sec_per_step", "eta_s", "peak_mem_gb"):
        assert key in steps[-1]
    late = steps[-6:]
    assert sum(e["loss"] for e in late) / len(late) < LOG2
    assert sum(e["ipa_gap"] for e in late) / len(late) > 0
    # the reference is still the untouched base model; the policy moved
    model = result.model.eval()
    inputs = fixed_inputs(1)
    base = predict(build_tiny_transformer(0), inputs)
    with lora.reference_mode(model):
        assert torch.equal(predict(model, inputs), base)
    assert not torch.allclose(predict(model, inputs), base)


def test_saved_lora_layout_metadata_and_reload(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=2)
    config = tiny_config(data, tmp_path / "out", steps=3, lora_name="hands_v1", targets=["self_attn_qkv", "vace_blocks"])
    result, events = run(config)
    assert result.lora_path == str(tmp_path / "out" / "hands_v1.safetensors")
    tensors, _ = load_safetensors(result.lora_path)
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in tensors
    assert "diffusion_model.blocks.2.self_attn.v.lora_B.weight" in tensors
    assert "diffusion_model.vace_blocks.1.self_attn.k.alpha" in tensors
    assert all(key.startswith("diffusion_model.") for key in tensors)
    meta = read_safetensors_metadata(result.lora_path)
    for key in ("objective", "beta", "hand_weight", "rank", "alpha", "targets", "steps", "learning_rate", "base_model",
                "base_model_hash", "dataset_size", "dataset_hash", "pack_version"):
        assert f"ipa.{key}" in meta, key
    assert meta["ipa.steps"] == "3" and meta["ipa.dataset_size"] == "2" and json.loads(meta["ipa.targets"]) == config.targets
    # a fresh model with the saved LoRA reproduces the trained prediction
    from peft import LoraConfig, set_peft_model_state_dict

    from ipa_train.wan.lora_io import load_lora_for_peft, peft_config_kwargs

    state, alphas, header = load_lora_for_peft(result.lora_path)
    assert header["ipa.objective"] == "ipa"
    fresh = build_tiny_transformer(0)
    fresh.add_adapter(LoraConfig(**peft_config_kwargs(state, alphas)))
    set_peft_model_state_dict(fresh, state)
    inputs = fixed_inputs(2)
    trained = predict(result.model.eval(), inputs)
    assert not torch.allclose(trained, predict(build_tiny_transformer(0), inputs))
    assert torch.allclose(predict(fresh, inputs), trained, atol=1e-6, rtol=0)


def test_training_from_an_initial_lora_keeps_it_in_the_reference(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=2)
    first, _ = run(tiny_config(data, tmp_path / "first", steps=3, learning_rate=1e-2))
    inputs = fixed_inputs(3)
    with_init = predict(first.model.eval(), inputs)
    second, events = run(tiny_config(data, tmp_path / "second", steps=2, rank=2, init_lora=first.lora_path))
    steps = [e for e in events if e["event"] == "step"]
    assert steps[0]["loss"] == pytest.approx(LOG2, abs=1e-6)
    with lora.reference_mode(second.model):
        assert torch.allclose(predict(second.model, inputs), with_init, atol=1e-6, rtol=0)
    from ipa_train.fileio import read_safetensors_metadata as header

    assert header(second.lora_path)["ipa.init_lora"] == "ipa_lora.safetensors"
    with pytest.raises(ConfigError, match="init_lora .* does not exist"):
        train(tiny_config(data, tmp_path / "third", init_lora=str(tmp_path / "missing.safetensors")))


def test_resume_gives_bit_identical_weights(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=3)
    common = dict(steps=6, checkpoint_every=3, dropout=0.1, lr_scheduler="cosine", warmup_steps=2, grad_accum=2)
    straight, _ = run(tiny_config(data, tmp_path / "a", **common))
    checkpoint = tmp_path / "a" / "checkpoints" / "step-3"
    assert sorted(p.suffix for p in checkpoint.iterdir()) and all(p.suffix in (".json", ".safetensors") for p in checkpoint.iterdir())
    resumed, events = run(tiny_config(data, tmp_path / "b", **common), resume=str(checkpoint))
    assert events[0]["start_step"] == 3 and [e["step"] for e in events if e["event"] == "step"] == [4, 5, 6]
    a, _ = load_safetensors(tmp_path / "a" / "checkpoints" / "step-6" / "adapter.safetensors")
    b, _ = load_safetensors(tmp_path / "b" / "checkpoints" / "step-6" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)


def test_dpo_and_sft_objectives_run(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=2, rejected=2)
    _, events = run(tiny_config(data, tmp_path / "dpo", objective="dpo", steps=2))
    steps = [e for e in events if e["event"] == "step"]
    assert steps[0]["loss"] == pytest.approx(LOG2, abs=1e-6) and "dpo_margin" in steps[0] and events[-1]["event"] == "finished"
    _, events = run(tiny_config(data, tmp_path / "sft", objective="sft", steps=2, gradient_checkpointing=True))
    steps = [e for e in events if e["event"] == "step"]
    assert steps[0]["loss"] == pytest.approx(steps[0]["model_error"]) and steps[0]["ipa_gap"] is None


def test_adamw_is_fused_on_cuda_and_the_cpu_keeps_its_path(tmp_path):
    """The fused AdamW kernel on CUDA (one launch for the LoRA's tensors, not one per tensor); the CPU run as before.
    The fused update is AdamW's own (compared where torch has both, on CPU)."""
    from ipa_train.training.distributed import Dist, Events
    from ipa_train.training.loop import Trainer, adamw_options

    assert adamw_options(torch.device("cuda", 1)) == {"fused": True} and adamw_options(torch.device("cpu")) == {}
    data = make_dataset(tmp_path / "ds", preferred=1)
    trainer = Trainer(tiny_config(data, tmp_path / "out", steps=1), Dist(), Events(Dist(), stdout=False))
    assert not trainer.optimizer.defaults["fused"]
    torch.manual_seed(0)
    plain = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    fused = [p.detach().clone().requires_grad_() for p in plain]
    optimizers = [torch.optim.AdamW(plain, lr=1e-2, weight_decay=0.1), torch.optim.AdamW(fused, lr=1e-2, weight_decay=0.1, **adamw_options("cuda"))]
    for _ in range(3):
        for a, b in zip(plain, fused):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        for optimizer in optimizers:
            optimizer.step()
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(plain, fused)) and optimizers[1].defaults["fused"] is True


def test_stop_request_writes_a_checkpoint(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=2)
    config = tiny_config(data, tmp_path / "out", steps=50)
    calls = []
    result, events = run(config, stop_requested=lambda: calls.append(1) or len(calls) >= 2)
    assert result.status == "stopped" and result.step == 2
    assert events[-1]["event"] == "stopped" and events[-1]["checkpoint"].endswith("step-2") and "--resume" in events[-1]["resume"]
    assert (tmp_path / "out" / "checkpoints" / "step-2" / "state.json").is_file()
    assert not (tmp_path / "out" / "ipa_lora.safetensors").exists()
    assert events[-1]["reason"] == "signal"


def test_stop_file_writes_a_checkpoint_and_is_consumed(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=2)
    stop_file = tmp_path / "requests" / "stop-now"
    config = tiny_config(data, tmp_path / "out", steps=50, stop_file=str(stop_file))
    assert tiny_config(data, tmp_path / "o2").stop_path == tmp_path / "o2" / "STOP"  # the default

    def on_event(event):
        if event["event"] == "step" and event["step"] == 2:
            stop_file.parent.mkdir(exist_ok=True)
            stop_file.write_text("{}")

    events = []
    result = train(config, callback=lambda e: (events.append(e), on_event(e)))
    # the file appears when step 2 is reported, after that step was checked: the run stops after step 3
    assert result.status == "stopped" and result.step == 3
    assert events[-1]["event"] == "stopped" and events[-1]["reason"] == "stop file"
    assert (tmp_path / "out" / "checkpoints" / f"step-{result.step}" / "state.json").is_file()
    assert not stop_file.exists()


# ------------------------------------------------------------------------------------------------- bad input


def _bad(tmp_path, message, **overrides):
    events = []
    with pytest.raises((DatasetError, ConfigError, TrainingError, ValueError), match=message):
        train(tiny_config(overrides.pop("dataset"), tmp_path / "out", **overrides), callback=events.append)
    assert not [e for e in events if e["event"] in ("started", "step")]


def test_bad_input_is_refused_before_training(tmp_path):
    _bad(tmp_path, "does not exist", dataset=tmp_path / "missing")
    _bad(tmp_path, "no preferred samples \\(2 pending", dataset=make_dataset(tmp_path / "p", preferred=0, pending=2))
    _bad(tmp_path, "needs rejected samples", dataset=make_dataset(tmp_path / "d", preferred=2), objective="dpo")
    _bad(tmp_path, "text_embedding width 24 differs from the model's text_dim 32", dataset=make_dataset(tmp_path / "t", preferred=1, text_dim=24))
    mixed = make_dataset(tmp_path / "m", preferred=1)
    from ipa_train.data.samples import add_sample

    add_sample(mixed, make_sample(7, frames=5), status="preferred")  # batch_size 2 batches it alone (test_batching)
    _bad(tmp_path, "base_model .* does not exist", dataset=mixed, base_model=str(tmp_path / "nope.safetensors"))


def test_resume_from_a_missing_checkpoint_is_a_clear_error(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=1)
    with pytest.raises(TrainingError, match="no complete checkpoint there"):
        train(tiny_config(data, tmp_path / "out"), resume=str(tmp_path / "nothing"))


def test_samples_from_a_patched_model_are_warned_about(tmp_path):
    """The sampler records a LoRA it sampled with (meta settings.patches); the trainer says when its reference lacks it."""
    from ipa_train.data.samples import add_sample, create_dataset

    data = tmp_path / "ds"
    folder = create_dataset(tmp_path, "ds")
    patches = {"weight_patches": {"weights": 6, "strengths": [1.0]}, "ipa_loras": [{"name": "ipa/hands_v1.safetensors", "strength": 1.0, "weights": 6}]}
    add_sample(folder, make_sample(0), meta={"settings": {"patches": patches}}, status="preferred")
    add_sample(folder, make_sample(1), meta={"settings": {}}, status="preferred")
    config = tiny_config(data, tmp_path / "out", steps=1)
    loaded = load_training_data(config)
    warning = sampling_patch_warning(loaded, config)
    assert warning.startswith("1 of 2 samples were sampled with a patched model (LoRA(s) ['ipa/hands_v1.safetensors']")
    assert "set init_lora" in warning
    with_init = tiny_config(data, tmp_path / "out", steps=1, init_lora=str(tmp_path / "hands_v1.safetensors"))
    assert sampling_patch_warning(loaded, with_init) is None  # the reference starts from that LoRA
    _, events = run(config)
    assert events[0]["event"] == "started" and events[0]["warnings"][1:] == [warning]
    assert events[0]["warnings"][0].startswith("2 of 2 samples carry no record of the model that sampled them")
