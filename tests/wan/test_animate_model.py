"""``ipa_train.wan.animate`` without ComfyUI: the face-token alignment ComfyUI does, input checks, model type and the
loader's refusals (loading ComfyUI's file and the parity are host tests: tests/host/test_animate_parity_comfy.py)."""

from __future__ import annotations

import pytest
import torch

from ipa_train.wan.animate import (
    AnimateInputs,
    animate_velocity,
    build_tiny_animate_transformer,
    detect_animate_config,
    load_animate_transformer,
    model_type_of,
)
from ipa_train.wan.model import ModelLoadError, build_tiny_transformer, save_original_wan_single_file

FRAMES, H, W, FACE = 3, 4, 4, 16


def inputs(face_frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, AnimateInputs]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, FRAMES, H, W, generator=g)
    text = torch.randn(1, 8, 32, generator=g)
    face = torch.rand(1, 3, 9, FACE, FACE, generator=g) * 2 - 1
    return x, text, AnimateInputs(torch.randn(1, 20, FRAMES, H, W, generator=g), torch.randn(1, 16, FRAMES - 1, H, W, generator=g),
                                  face[:, :, :face_frames], torch.randn(1, 4, 16, generator=g))


def test_face_tokens_are_cut_like_comfyui_keeping_the_first_ones():
    """ComfyUI cuts the motion tokens of a longer face video to the latent frames: its causal face encoder makes the
    first tokens those of the exact-length video (5 frames for 3 latent frames), so both give the same velocity."""
    model = build_tiny_animate_transformer(seed=1)
    x, text, exact = inputs(5)
    _, _, longer = inputs(9)
    t = torch.tensor([0.6])
    with torch.no_grad():
        v_exact = animate_velocity(model, x, t, text, exact)
        v_longer = animate_velocity(model, x, t, text, longer)
        v_other = animate_velocity(model, x, t, text, exact.unconditional_face())
    torch.testing.assert_close(v_longer, v_exact, rtol=1e-5, atol=1e-6)
    assert (v_other - v_exact).abs().max() > 1e-3  # the face matters
    # diffusers alone attends 4 motion tokens over 3 frames' video tokens (12 divide by 4): silently misaligned
    with torch.no_grad():
        raw = model(hidden_states=torch.cat([x, longer.concat_latent], 1), timestep=1000 * t, encoder_hidden_states=text,
                    encoder_hidden_states_image=longer.image_embedding, pose_hidden_states=longer.pose_latent,
                    face_pixel_values=longer.face_pixels, return_dict=False)[0]
    assert (raw - v_exact).abs().max() > 1e-3


def test_inputs_that_do_not_fit_are_named():
    model = build_tiny_animate_transformer()
    x, text, good = inputs(5)
    bad = AnimateInputs(good.concat_latent, good.pose_latent[:, :, :1], good.face_pixels, good.image_embedding)
    with pytest.raises(ValueError, match="pose_latent"):
        animate_velocity(model, x, torch.tensor([0.5]), text, bad)
    with pytest.raises(ValueError, match="face_pixels"):
        animate_velocity(model, x, torch.tensor([0.5]), text, AnimateInputs(good.concat_latent, good.pose_latent,
                                                                             good.face_pixels[..., :8, :8], good.image_embedding))
    half = AnimateInputs(good.concat_latent.half(), good.pose_latent.half(), good.face_pixels.half(), good.image_embedding.half())
    with torch.no_grad():  # inputs stored in float16 are computed as x_t is (float32 here)
        assert animate_velocity(model, x, torch.tensor([0.5]), text, half).dtype == torch.float32
    both = AnimateInputs.cat([good, good.unconditional_face()])
    assert both.face_pixels.shape[0] == 2 and bool((both.take([1]).face_pixels == -1).all())
    assert model_type_of(model) == "wan_animate" and model_type_of(build_tiny_transformer()) == "wan_vace"


def test_loader_refuses_other_models_and_fp8(tmp_path):
    from safetensors.torch import save_file

    with pytest.warns(UserWarning, match="ComfyUI will not rebuild"):  # a diffusers-sized tiny VACE: fine for a refusal
        vace = save_original_wan_single_file(build_tiny_transformer(), tmp_path / "vace.safetensors")
    with pytest.raises(ModelLoadError, match="not Wan2.2-Animate"):
        load_animate_transformer(vace)
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_animate_transformer(tmp_path / "animate.ckpt") if (tmp_path / "animate.ckpt").write_bytes(b"x") else None
    fp8 = {"model.diffusion_model.face_adapter.fuser_blocks.0.k_norm.weight": torch.ones(128),
           "model.diffusion_model.patch_embedding.weight": torch.zeros(128, 36, 1, 2, 2).to(torch.float8_e4m3fn)}
    save_file(fp8, str(tmp_path / "animate_fp8.safetensors"))
    with pytest.raises(ModelLoadError, match="fp8"):
        load_animate_transformer(tmp_path / "animate_fp8.safetensors")
    with pytest.raises(ModelLoadError, match="not Wan2.2-Animate"):
        detect_animate_config({"patch_embedding.weight": (128, 36, 1, 2, 2), "head.modulation": (1, 2, 128)})
