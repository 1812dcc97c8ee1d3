"""Wan2.2-Animate in a real ComfyUI (COMFYUI_PATH) against the trainer, on a tiny random AnimateWanModel file in
ComfyUI's layout: UNETLoader reads it as WAN22_Animate; a LoRA trained and saved by the trainer loads with
LoraLoaderModelOnly and with IPA LoRA Loader; and with that LoRA on both sides the trainer's velocity
(``animate_velocity`` on diffusers' WanAnimateTransformer3DModel with the trainer's peft adapter) equals ComfyUI's,
cond and uncond, at several sigmas, on the inputs a real WanAnimateToVideo run gave the diffusion model."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_comfyui

pytestmark = requires_comfyui

H, W, LENGTH = 32, 32, 5
FACE_FRAMES = 3  # fewer than LENGTH: ComfyUI pads the face motion tokens, animate_velocity must do the same
SIGMAS = (0.9, 0.35)
RANK, ALPHA = 4, 2.0


@pytest.fixture(scope="module")
def animate(tmp_path_factory):
    from support.animate_tiny import TinyAnimateComfy
    from support.comfy_tiny import load_pack_cpu

    pack = load_pack_cpu()
    comfy = TinyAnimateComfy(tmp_path_factory.mktemp("animate"))
    comfy.pack = pack
    comfy.trainer_model, comfy.lora_name = _trained_lora(comfy)
    return comfy


def _trained_lora(comfy):
    """The trainer's model with its ``ipa`` adapter (non-zero, as after training), saved as the trainer saves it."""
    from ipa_train.training import lora as lora_setup
    from ipa_train.training.model_setup import gathered_adapter, save_comfy_lora
    from ipa_train.wan.animate import load_animate_transformer

    model = load_animate_transformer(comfy.unet_path)
    lora_setup.add_trained_lora(model, RANK, ALPHA, targets=("self_attn_qkv",))
    generator = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for _, parameter in lora_setup.trained_parameters(model):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    name = "ipa_animate_tiny.safetensors"
    save_comfy_lora(comfy.folders["loras"] / name, gathered_adapter(model), ALPHA, {"ipa.objective": "ipa"})
    return model.eval(), name


def _conditioning(comfy):
    from comfy_extras.nodes_wan import WanAnimateToVideo

    from support.animate_tiny import clip_vision_output, face_video
    from support.comfy_tiny import pose_video, reference_image, text_conditioning

    out = WanAnimateToVideo.execute(
        text_conditioning(seed=3), text_conditioning(real=3, seed=11), comfy.load_vae(), W, H, LENGTH, 1,
        continue_motion_max_frames=5, video_frame_offset=0, clip_vision_output=clip_vision_output(),
        reference_image=reference_image(H, W), face_video=face_video(FACE_FRAMES), pose_video=pose_video(LENGTH, H, W),
    ).args
    positive, negative, latent, trim_latent = out[0], out[1], out[2], out[3]
    return positive, negative, latent["samples"], trim_latent


def _noisy(latent):
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(latent.shape[1:], generator=generator)
    return [(1 - s) * x0 + s * torch.randn(x0.shape, generator=generator) for s in SIGMAS]


def _trainer_velocity(model, x_t, sigma, seen):
    from ipa_train.wan.animate import AnimateInputs, animate_velocity

    inputs = AnimateInputs(concat_latent=seen["c_concat"], pose_latent=seen["pose_latents"],
                           face_pixels=seen["face_pixel_values"], image_embedding=seen["clip_fea"])
    with torch.no_grad():
        return animate_velocity(model, x_t.unsqueeze(0), torch.tensor([sigma]), seen["c_crossattn"], inputs)[0]


def test_unet_loader_reads_the_tiny_file_as_wan22_animate(animate):
    import comfy.model_base

    model = animate.load_model()
    assert isinstance(model.model, comfy.model_base.WAN22_Animate)
    assert model.model.diffusion_model.num_heads == 1 and len(model.model.diffusion_model.face_adapter.fuser_blocks) == 1


def test_trainer_velocity_equals_comfyui_with_the_lora(animate):
    import nodes
    from support.animate_tiny import comfy_animate_capture

    model = nodes.LoraLoaderModelOnly().load_lora_model_only(animate.load_model(), animate.lora_name, 1.0)[0]
    positive, negative, latent, trim_latent = _conditioning(animate)
    assert trim_latent == 1 and latent.shape == (1, 16, 3, H // 8, W // 8)
    x_t = _noisy(latent)
    for side, conditioning in (("cond", positive), ("uncond", negative)):
        captured = comfy_animate_capture(model, conditioning, x_t, SIGMAS)
        if side == "cond":
            captured_cond = captured
        for sigma, x, seen in zip(SIGMAS, x_t, captured):
            assert seen["c_concat"].shape == (1, 20, 3, H // 8, W // 8) and seen["pose_latents"].shape == (1, 16, 2, H // 8, W // 8)
            assert seen["face_pixel_values"].shape == (1, 3, FACE_FRAMES, 512, 512) and seen["clip_fea"].shape == (1, 257, 1280)
            if side == "uncond":
                assert bool((seen["face_pixel_values"] == -1).all())
            expected = seen["velocity"]
            prediction = _trainer_velocity(animate.trainer_model, x, sigma, seen)
            scale = expected.abs().max()
            error = ((prediction - expected).abs().max() / scale).item()
            print(f"animate parity {side} sigma {sigma}: relative max error {error:.2e}")
            assert error < 1e-4, f"{side} sigma {sigma}: relative max error {error:.2e}"
    # the face video matters: the same conditional call with the face all -1 moves the velocity
    first = captured_cond[-1]
    faceless = dict(first, face_pixel_values=torch.full_like(first["face_pixel_values"], -1.0))
    moved = _trainer_velocity(animate.trainer_model, x_t[-1], SIGMAS[-1], faceless) - first["velocity"]
    assert moved.abs().max() / first["velocity"].abs().max() > 1e-3
    # the LoRA matters: the trainer's reference (adapter off) is far from ComfyUI's LoRA-patched velocity
    from ipa_train.training import lora as lora_setup

    with lora_setup.reference_mode(animate.trainer_model):
        base = _trainer_velocity(animate.trainer_model, x_t[-1], SIGMAS[-1], captured[-1])
    assert (base - captured[-1]["velocity"]).abs().max() / captured[-1]["velocity"].abs().max() > 1e-2


def _patched_qkv(patcher) -> dict:
    patcher.patch_model()
    try:
        state = patcher.model.diffusion_model.state_dict()
        return {k: v.detach().float().clone() for k, v in state.items() if ".self_attn." in k and k.endswith((".q.weight", ".k.weight", ".v.weight"))}
    finally:
        patcher.unpatch_model()


def test_the_trainer_lora_loads_natively_and_through_ipa_lora_loader_as_trained(animate):
    import importlib

    import nodes
    from ipa_train.training import lora as lora_setup

    loader = importlib.import_module(f"{animate.pack.__name__}.nodes.lora_loader").IPALoRALoader
    native = nodes.LoraLoaderModelOnly().load_lora_model_only(animate.load_model(), animate.lora_name, 1.0)[0]
    ipa, report = loader.execute(animate.load_model(), animate.lora_name, 1.0).args[:2]
    assert "15" in report  # 5 blocks x q, k, v applied
    native_w, ipa_w = _patched_qkv(native), _patched_qkv(ipa)
    assert len(native_w) == 15 and native_w.keys() == ipa_w.keys()
    base = {k: v.detach().float() for k, v in animate.load_model().model.diffusion_model.state_dict().items()}
    trainer = dict(animate.trainer_model.named_modules())
    for key, weight in native_w.items():
        assert torch.equal(weight, ipa_w[key]), key
        block, _, proj = key[len("blocks."):].split(".")[:3]
        layer = trainer[f"blocks.{block}.attn1.to_{proj}"]  # peft's LoraLayer: W + alpha / r * B @ A
        delta = ALPHA / RANK * layer.lora_B[lora_setup.TRAINED_ADAPTER].weight @ layer.lora_A[lora_setup.TRAINED_ADAPTER].weight
        torch.testing.assert_close(weight - base[key], delta.detach(), rtol=1e-5, atol=1e-6)


def test_comfyui_and_trainer_fingerprint_the_animate_model_alike(animate):
    import importlib

    from ipa_train.wan.animate import load_animate_transformer
    from ipa_train.wan.fingerprint import diffusers_model_fingerprint, file_weights_fingerprint

    identity = importlib.import_module(f"{animate.pack.__name__}.nodes.model_identity").base_weights_fingerprint
    comfy_print = identity(animate.load_model())
    assert comfy_print == diffusers_model_fingerprint(load_animate_transformer(animate.unet_path))
    assert comfy_print == file_weights_fingerprint(animate.unet_path)
    # Animate's own parts count: another face encoder is another model
    from support.animate_tiny import tiny_animate_state_dict

    other = tiny_animate_state_dict(seed=0)
    other["model.diffusion_model.face_encoder.out_proj.weight"] += 1.0
    from safetensors.torch import save_file

    path = animate.folders["diffusion_models"] / "other_face.safetensors"
    save_file(other, str(path))
    assert file_weights_fingerprint(path) != comfy_print
