"""The trainer on Wan2.2-Animate (tiny random WanAnimateTransformer3DModel): Flow-IPA, SFT and DPO run two steps and
write a LoRA; the reference equals the base at step 0; gradient checkpointing covers the face adapter; block swap and
activation offload run over its blocks.

The samples are hand-built with the issue-22 contract's tensors, batched by a stand-in collate into ``AnimateInputs``
(the dataset format and the real collate are i22-collect's; its end-to-end test runs them)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ipa_train.fileio import load_safetensors
from ipa_train.training import batching, loop, objective
from ipa_train.training.batching import Batch, TrainingData
from ipa_train.wan.animate import AnimateInputs, animate_velocity, build_tiny_animate_transformer
from support.trainer_helpers import one_thread, tiny_config  # noqa: F401 (one_thread: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES, H, W, FACE = 3, 4, 4, 16  # latent frames (1 reference + 2), latent size, the tiny model's face size


@dataclass
class AnimateSample:
    """One sample's tensors as the contract names them (no batch dim)."""

    latent: torch.Tensor
    concat_latent: torch.Tensor
    pose_latent: torch.Tensor
    face_pixels: torch.Tensor
    image_embedding: torch.Tensor
    text_embedding: torch.Tensor
    hand_mask: torch.Tensor
    ref_frames: int = 1
    text_length: int = 6


def make_sample(seed: int, face_frames: int = 5) -> AnimateSample:
    g = torch.Generator().manual_seed(2000 + seed)
    return AnimateSample(
        latent=torch.randn(16, FRAMES, H, W, generator=g), concat_latent=torch.randn(20, FRAMES, H, W, generator=g),
        pose_latent=torch.randn(16, FRAMES - 1, H, W, generator=g),
        face_pixels=torch.rand(3, face_frames, FACE, FACE, generator=g) * 2 - 1,
        image_embedding=torch.randn(4, 16, generator=g), text_embedding=torch.randn(8, 32, generator=g),
        hand_mask=(torch.rand(1, FRAMES - 1, H, W, generator=g) > 0.6).float(),
    )


def collate_animate(samples, n_vace_layers, device, dtype) -> Batch:
    batch = Batch(
        x0=torch.stack([s.latent for s in samples]).to(device), context=None,
        text=torch.stack([s.text_embedding for s in samples]).to(device, dtype),
        hand_mask=torch.stack([s.hand_mask for s in samples]).to(device), scale=None, ref_frames=samples[0].ref_frames,
    )
    batch.animate = AnimateInputs(*(torch.stack([getattr(s, name) for s in samples]) for name in
                                    ("concat_latent", "pose_latent", "face_pixels", "image_embedding"))).to(device, dtype)
    return batch


@pytest.fixture()
def animate_data(monkeypatch):
    preferred = [(f"p{i}", make_sample(i), {}) for i in range(2)]
    rejected = [(f"r{i}", make_sample(10 + i), {}) for i in range(2)]
    data = TrainingData(preferred, rejected, [[0, 1], [0, 1]], "sha256:animate-test")
    monkeypatch.setattr(loop, "load_training_data", lambda config: data)
    monkeypatch.setattr(batching, "check_data_fits_model", lambda data, model: None)
    monkeypatch.setattr(objective, "collate", collate_animate)
    return data


@pytest.mark.parametrize("name", ["ipa", "sft", "dpo"])
def test_two_steps_of_each_objective_write_a_lora(animate_data, tmp_path, name):
    from ipa_train.training.distributed import Dist, Events

    config = tiny_config(tmp_path / "ds", tmp_path / "out", objective=name, steps=2, gradient_checkpointing=True)
    events = []
    trainer = loop.Trainer(config, Dist(), Events(Dist(), events.append, stdout=False), model=build_tiny_animate_transformer(seed=0))
    result = trainer.run()
    assert result.status == "finished" and result.step == 2
    losses = [e["loss"] for e in events if e.get("event") == "step"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    tensors, _ = load_safetensors(result.lora_path)
    assert len([k for k in tensors if k.endswith(".lora_B.weight")]) == 15  # 5 blocks x self-attention q, k, v
    assert all(k.startswith("diffusion_model.blocks.") and ".self_attn." in k for k in tensors)
    assert any(float(v.abs().max()) > 0 for k, v in tensors.items() if k.endswith(".lora_B.weight"))  # it trained


def test_reference_equals_the_base_at_step_0_and_face_adapter_is_checkpointed(animate_data, tmp_path):
    from ipa_train.training.distributed import Dist, Events

    config = tiny_config(tmp_path / "ds", tmp_path / "out", steps=1, gradient_checkpointing=True)
    trainer = loop.Trainer(config, Dist(), Events(Dist(), stdout=False), model=build_tiny_animate_transformer(seed=0))
    base = build_tiny_animate_transformer(seed=0)
    batch = collate_animate([s for _, s, _ in animate_data.preferred], 0, torch.device("cpu"), torch.float32)
    t = torch.tensor([0.7, 0.3])
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * batch.x0 + t.view(-1, 1, 1, 1, 1) * torch.randn(batch.x0.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = animate_velocity(base, x_t, t, batch.text, batch.animate)
        policy = trainer.objective.predict(trainer.bare, batch, x_t, t)
    assert torch.equal(trainer.objective.reference(batch, x_t, t), expected)
    assert torch.equal(policy, expected)  # zero-initialised LoRA
    # every face-adapter block runs inside a checkpoint while a gradient is built
    calls = []
    checkpoint = trainer.bare._gradient_checkpointing_func
    trainer.bare._gradient_checkpointing_func = lambda fn, *args: calls.append(fn) or checkpoint(fn, *args)
    try:
        trainer.objective.predict(trainer.bare, batch, x_t, t).sum().backward()
    finally:
        trainer.bare._gradient_checkpointing_func = checkpoint
    assert sum(type(fn).__name__ == "_FaceBlockCall" for fn in calls) >= 1


def test_block_swap_and_activation_offload_over_animate_blocks_give_the_same_velocity(animate_data, tmp_path, monkeypatch):
    from ipa_train.memory import activation_offload
    from ipa_train.training.distributed import Dist, Events

    monkeypatch.setattr(activation_offload, "MIN_OFFLOAD_BYTES", 0)

    config = tiny_config(tmp_path / "ds", tmp_path / "out", steps=1, gradient_checkpointing=True, blocks_to_swap=3,
                         activation_offload=True)
    trainer = loop.Trainer(config, Dist(), Events(Dist(), stdout=False), model=build_tiny_animate_transformer(seed=0))
    assert trainer.memory.swapped == ["blocks.0", "blocks.1", "blocks.2"]
    batch = collate_animate([s for _, s, _ in animate_data.preferred[:1]], 0, torch.device("cpu"), torch.float32)
    t = torch.tensor([0.5])
    with torch.no_grad():
        expected = animate_velocity(build_tiny_animate_transformer(seed=0), batch.x0, t, batch.text, batch.animate)
        torch.testing.assert_close(trainer.objective.reference(batch, batch.x0, t), expected, rtol=1e-5, atol=1e-6)
    result = trainer.run()
    assert result.status == "finished"
    packed = [shape for what, shape in trainer.memory.offload.stats.log if what == "pack"]
    motion_tokens = [s for s in packed if len(s) == 4 and s[2] == 5]  # [B, F, face heads + 1, width]: a face block's input
    assert packed and motion_tokens  # the blocks' and the face adapter's checkpoint inputs went to host memory
