"""The memory planner on Wan2.2-Animate-14B (the shipped config, built on the meta device): its own parts (motion
encoder, face encoder and adapter, pose patch embedding) are counted in the weights, the face adapter's activations
and the motion encoder's pass in the activations, the face video and the other conditions in the inputs; it has no
VACE blocks, and fp8 is refused (not supported on Animate yet)."""

from __future__ import annotations

import pytest

from ipa_train.memory.animate_terms import animate_memory, face_frames
from ipa_train.memory.plan import GIB, PlanError, RunShape, Settings, block_memory, choose, describe_model, lora_params, predict, weight_bytes
from ipa_train.training import lora
from ipa_train.wan.animate import empty_animate_transformer, shipped_animate_config

ANIMATE_PARTS = ("motion_encoder.", "face_encoder.", "face_adapter.", "pose_patch_embedding.")


@pytest.fixture(scope="module")
def spec():
    return describe_model("wan2.2-animate-14b")


def test_the_animate_parts_are_in_the_weights_and_only_main_blocks_train(spec):
    model = empty_animate_transformer(shipped_animate_config())
    total = sum(p.numel() for p in model.parameters())
    parts = sum(p.numel() for n, p in model.named_parameters() if n.startswith(ANIMATE_PARTS))
    assert spec.total_params == total and parts > 0.85e9  # the 8 face-adapter blocks alone are 0.84 B
    assert spec.block_names == [f"blocks.{i}" for i in range(40)]
    run = RunShape.from_pixels(77, 480, 832)
    assert weight_bytes(spec, run, Settings())[0] == 2 * total
    lora.add_trained_lora(model, rank=128)
    injected = sum(p.numel() for _, p in lora.trained_parameters(model))
    assert lora_params(spec, run) == injected == 40 * 3 * 128 * (5120 + 5120)  # main-block self-attention q, k, v only
    assert not any(n.startswith(ANIMATE_PARTS) for n, _ in lora.trained_parameters(model))


def test_face_adapter_motion_encoder_and_inputs_are_counted(spec):
    run = RunShape.from_pixels(77, 480, 832)  # 20 latent frames + the reference frame
    plain = predict(spec, run, Settings(gradient_checkpointing=False))
    terms = animate_memory(spec.config, 1, run.frames, run.height, run.width, plain.tokens, run_dtype(run))
    assert face_frames(run.frames) == 77 and terms.face_blocks == 8 and terms.face_block_saved > 0
    main = block_memory(spec, run, 1, vace=False)
    # without checkpointing every face-adapter block keeps its activations next to the blocks'
    assert plain.breakdown["of which block_working_set"] == 40 * main.saved + 8 * terms.face_block_saved
    checkpointed = predict(spec, run, Settings())
    assert checkpointed.breakdown["of which block_working_set"] == main.backward_peak  # the trainer checkpoints them too
    h = plain.tokens * 5120 * 2
    assert terms.motion_encoder_peak > 0
    # the face video (77 frames of 512x512, float32) is an input
    assert checkpointed.breakdown["inputs"] > 3 * 77 * 512 * 512 * 4
    assert predict(spec, run, Settings()).peak >= 2 * h + terms.motion_encoder_peak


def run_dtype(run):
    import torch

    return torch.bfloat16 if run.bf16 else torch.float32


def test_fp8_is_refused_and_the_budget_never_picks_it(spec):
    run = RunShape.from_pixels(77, 480, 832)
    with pytest.raises(PlanError, match="fp8.*Wan2.2-Animate"):
        choose(spec, run, Settings("fp8"), None)
    plan = choose(spec, run, Settings(), int(48 * GIB))
    assert plan.settings.base_precision == "bf16" and plan.settings.blocks_to_swap > 0
