from ipa_train.lora_meta import base_model_mismatch, size_tag_from_name, summarize_metadata


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
