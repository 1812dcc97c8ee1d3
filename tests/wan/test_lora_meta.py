import pytest

from ipa_train.wan.lora_meta import base_model_mismatch, size_tag_from_name, summarize_metadata


def test_size_tags():
    assert size_tag_from_name("wan2.1_vace_14B_fp16.safetensors") == "14B"
    assert size_tag_from_name("Wan2.1-VACE-1.3B") == "1.3B"
    assert size_tag_from_name("wan2.1_vace.safetensors") is None


def test_mismatch_warning():
    assert base_model_mismatch({"base_model": "wan2.1_vace_14B_bf16.safetensors"}, 1536).startswith("this LoRA was trained on")
    assert base_model_mismatch({"base_model": "wan2.1_vace_1.3B_fp16.safetensors"}, 1536) is None
    assert base_model_mismatch({}, 1536) is None
    assert base_model_mismatch({"base_model": "x_14B"}, 128) is None  # unknown width: no claim


def test_summary_order():
    text = summarize_metadata({"zeta": "1", "steps": "10", "objective": "ipa", "long": "x" * 500})
    assert text.splitlines()[:2] == ["objective: ipa", "steps: 10"]
    assert text.splitlines()[2].endswith("...") and len(text.splitlines()[2]) < 130
    assert summarize_metadata({}) == "(no metadata in this LoRA)"


def test_reads_what_the_real_trainer_writes(tmp_path):
    """A LoRA from the real trainer: its ``ipa.*`` header is what the loader summarises and checks."""
    import torch

    from ipa_train.fileio import read_safetensors_metadata
    from ipa_train.training.distributed import Dist, Events
    from ipa_train.training.loop import Trainer
    from ipa_train.wan.model import build_tiny_transformer
    from support.trainer_helpers import make_dataset, tiny_config

    torch.set_num_threads(1)
    data = make_dataset(tmp_path / "ds", preferred=1)
    # the base model is named like the 14B file; the weights are the tiny model (the name only goes into the metadata)
    config = tiny_config(data, tmp_path / "out", steps=1, base_model=str(tmp_path / "wan2.1_vace_14B_fp16.safetensors"), beta=300.0)
    events = Events(Dist(), stdout=False)
    result = Trainer(config, Dist(), events, model=build_tiny_transformer(0)).run()
    metadata = read_safetensors_metadata(result.lora_path)
    assert metadata["ipa.base_model"] == "wan2.1_vace_14B_fp16.safetensors" and "base_model" not in metadata
    lines = summarize_metadata(metadata).splitlines()
    assert lines[:5] == ["objective: ipa", "beta: 300.0", "hand_weight: 10.0", "steps: 1", "rank: 4"]
    assert "base_model: wan2.1_vace_14B_fp16.safetensors" in lines and not any(line.startswith("ipa.") for line in lines)
    warning = base_model_mismatch(metadata, 1536)  # applied to a 1.3B model
    assert warning and "wan2.1_vace_14B_fp16.safetensors (14B)" in warning and "1.3B" in warning
    assert base_model_mismatch(metadata, 5120) is None


@pytest.mark.parametrize("name, expert, partner", [
    ("ipa/hands_high.safetensors", "high", "ipa/hands_low.safetensors"),
    ("ipa\\hands_LOW.safetensors", "low", "ipa\\hands_HIGH.safetensors"),
    ("wan2.2_fun_vace_high_noise_14B_fp16.safetensors", "high", "wan2.2_fun_vace_low_noise_14B_fp16.safetensors"),
    ("Wan2.2_Fun_VACE_Low_Noise_14B_fp8_scaled.safetensors", "low", "Wan2.2_Fun_VACE_High_Noise_14B_fp8_scaled.safetensors"),
    ("hands.safetensors", None, None),
    ("highlights_lowkey.safetensors", None, None),  # words that merely contain high/low
    ("high_noise_to_low_noise.safetensors", None, None),  # both: no hint
])
def test_expert_and_pair_partner_from_a_file_name(name, expert, partner):
    from ipa_train.wan.lora_meta import expert_from_name, pair_partner_name

    assert expert_from_name(name) == expert
    assert pair_partner_name(name) == partner


def test_expert_from_metadata_reads_only_high_or_low():
    from ipa_train.wan.lora_meta import expert_from_metadata

    assert expert_from_metadata({"ipa.expert": "Low"}) == "low" and expert_from_metadata({"expert": "high"}) == "high"
    assert expert_from_metadata({}) is None and expert_from_metadata({"ipa.expert": "both"}) is None
