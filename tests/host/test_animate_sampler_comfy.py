"""IPA Animate Sampler and IPA Mark Preferred inside a real ComfyUI (COMFYUI_PATH), on a tiny random Wan2.2-Animate file
in ComfyUI's layout (tests/support/animate_tiny.py) loaded by UNETLoader and the tiny Wan VAE: candidate i equals the
native WanAnimateToVideo + KSampler graph with seed + i; the stored Animate inputs equal what WAN22_Animate.extra_conds
gives the diffusion model; replacement mode's background and character mask reach the stored c_concat."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_comfyui
from support.trainer_helpers import one_thread  # noqa: F401 (fixture)

pytestmark = [requires_comfyui, pytest.mark.usefixtures("one_thread")]

H, W, LENGTH = 32, 48, 5  # latent 4 x 6, 2 video latent frames + 1 reference frame
UNET = "tiny_wan22_animate.safetensors"
# One face frame (AnimateWanModel pads the motion tokens): the fixed-size motion encoder on 512x512 frames is what costs
# time on the CPU, so each model call encodes one.
FACE_FRAMES = 1


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.animate_tiny import write_tiny_animate
    from support.comfy_tiny import TinyComfy, load_pack_cpu

    pack = load_pack_cpu()
    import nodes  # ComfyUI's (on the path once the pack is loaded)

    tiny = TinyComfy(tmp_path_factory.mktemp("animate"))
    write_tiny_animate(tiny.diffusion_models / UNET)
    tiny.pack = pack
    tiny.model = nodes.UNETLoader().load_unet(UNET, "default")[0]
    tiny.vae = tiny.load_vae()
    return tiny


def clip_vision_output(seed: int = 6):
    """CLIPVisionEncode's output for Wan: penultimate hidden states [1, 257, 1280] (a ViT-H file is 2.5 GB: stood in)."""
    import comfy.clip_vision

    output = comfy.clip_vision.Output()
    output.penultimate_hidden_states = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(seed)) * 0.5
    return output


def _inputs(**overrides):
    from support.comfy_tiny import pose_video, reference_image, text_conditioning

    generator = torch.Generator().manual_seed(8)
    values = dict(
        positive=text_conditioning(seed=3), negative=text_conditioning(real=3, seed=11), clip_vision_output=clip_vision_output(),
        reference_image=reference_image(H, W), pose_video=pose_video(LENGTH + 2, H, W), face_video=torch.rand(FACE_FRAMES, 40, 40, 3, generator=generator),
    )
    values.update(overrides)
    return values


def _sample(comfy, candidates=2, seed=5, cfg=2.0, **overrides):
    from comfyui_ipa_pack.nodes.animate_sampler import IPAAnimateSampler

    inputs = _inputs()
    inputs.update(overrides)
    return IPAAnimateSampler.execute(
        comfy.model, inputs.pop("positive"), inputs.pop("negative"), comfy.vae, inputs.pop("clip_vision_output"),
        inputs.pop("reference_image"), inputs.pop("pose_video"), inputs.pop("face_video"), W, H, LENGTH, 2, cfg, 8.0, "euler",
        "simple", candidates, seed, **inputs,
    ).args


def _conditioning(comfy, **overrides):
    """The native WanAnimateToVideo's outputs for the test inputs."""
    from comfy_extras.nodes_wan import WanAnimateToVideo

    inputs = _inputs(**overrides)
    return WanAnimateToVideo.execute(inputs.pop("positive"), inputs.pop("negative"), comfy.vae, W, H, LENGTH, 1, 5, 0, **inputs).args


def _native(comfy, seed, cfg=2.0, **overrides):
    """The native graph node by node: WanAnimateToVideo -> ModelSamplingSD3 -> KSampler -> TrimVideoLatent -> VAEDecode."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from comfy_extras.nodes_wan import TrimVideoLatent

    import nodes

    positive, negative, latent, trim, _, _ = _conditioning(comfy, **overrides)
    model = ModelSamplingSD3().patch(comfy.model, 8.0)[0]
    sampled = nodes.KSampler().sample(model, seed, 2, cfg, "euler", "simple", positive, negative, latent)[0]
    decoded = nodes.VAEDecode().decode(comfy.vae, TrimVideoLatent.execute(sampled, trim).args[0])[0]
    return positive, sampled, decoded, trim


def _model_inputs(comfy, positive):
    """What WAN22_Animate.extra_conds gives the diffusion model for this positive conditioning."""
    extra = positive[0][1]
    noise = torch.zeros(1, 16, 3, H // 8, W // 8)
    out = comfy.model.model.extra_conds(noise=noise, device=torch.device("cpu"), **extra)
    return {key: out[key].cond.float() for key in ("c_concat", "pose_latents", "face_pixel_values", "clip_fea")}


def test_candidates_equal_the_native_graph_and_keep_what_the_model_saw(comfy):
    images, candidates, offset = _sample(comfy)
    assert images.shape == (2 * LENGTH, H, W, 3) and len(candidates) == 2 and offset == LENGTH
    positive, sampled, decoded, trim = _native(comfy, seed=6)
    candidate = candidates[1]
    assert candidate.seed == 6 and candidate.trim_latent == trim == 1 and candidate.model_type == "wan_animate"
    assert torch.equal(candidate.latent, sampled["samples"].float())
    assert torch.equal(images[LENGTH:], decoded)
    expected = _model_inputs(comfy, positive)
    assert torch.equal(candidate.concat_latent, expected["c_concat"]) and candidate.concat_latent.shape == (1, 20, 3, 4, 6)
    assert torch.equal(candidate.pose_latent, expected["pose_latents"]) and candidate.pose_latent.shape == (1, 16, 2, 4, 6)
    assert torch.equal(candidate.face_pixels, expected["face_pixel_values"]) and candidate.face_pixels.shape == (1, 3, FACE_FRAMES, 512, 512)
    assert bool((candidate.face_pixels > -1).any())  # the positive's face video, not the negative's all -1
    assert torch.equal(candidate.image_embedding, expected["clip_fea"])
    assert candidate.settings["mode"] == "animation" and len(candidate.sigmas) == 3
    assert not torch.equal(candidates[0].latent, candidates[1].latent)


def test_marked_candidates_become_animate_samples(comfy):
    from comfyui_ipa_pack.ipa_train.data.samples import load_sample
    from comfyui_ipa_pack.nodes.collector import IPAMarkPreferred

    _, candidates, _ = _sample(comfy, candidates=1, cfg=1.0)
    # one right hand of 21 points around (31, 12) in every pose frame
    poses = [{"people": [{"pose_keypoints_2d": [0.0] * 54, "hand_right_keypoints_2d": [v for i in range(21) for v in (30.0 + i % 3, 10.0 + i % 5, 1.0)],
                          "hand_left_keypoints_2d": None}], "canvas_width": W, "canvas_height": H}] * (LENGTH + 2)
    IPAMarkPreferred.execute(candidates, "animate_hands", "preferred", pose_keypoint=poses, prompt_text="a dancer")
    folder = comfy.output / "ipa_datasets" / "animate_hands"
    sample_id = next((folder / "samples").iterdir()).name
    tensors, meta = load_sample(folder, sample_id)
    assert meta["model_type"] == "wan_animate" and meta["hand_mask_source"] == "pose" and meta["face_pixels_dtype"] == "float16"
    assert tuple(tensors.hand_mask.shape) == (1, 2, 4, 6) and bool((tensors.hand_mask[0].amax(dim=(1, 2)) == 1).all())
    assert tensors.hand_mask[0, :, 1, 3].tolist() == [1.0, 1.0]  # (31, 12) -> latent cell (row 1, column 3)
    assert tensors.animate.face_pixels.dtype == torch.float16 and len(meta["driving_pose"]) == LENGTH


def test_replacement_mode_puts_background_and_character_mask_into_the_stored_inputs(comfy):
    from comfyui_ipa_pack.ipa_train.data.collect import store_candidates

    background = torch.full((LENGTH, H, W, 3), 0.2)
    character = torch.zeros(LENGTH, H, W)
    character[:, :, : W // 2] = 1.0  # the person on the left half: generated; the right half: the background video
    _, candidates, _ = _sample(comfy, candidates=1, cfg=1.0, background_video=background, character_mask=character)
    positive = _conditioning(comfy, background_video=background, character_mask=character)[0]
    candidate = candidates[0]
    assert candidate.settings["mode"] == "replacement"
    assert torch.equal(candidate.concat_latent, _model_inputs(comfy, positive)["c_concat"])
    # WAN21.concat_cond: 1 - concat_mask; WanAnimateToVideo puts pixel frame 4j + c of the mask in channel c of latent
    # frame j + 1 (after the reference frame): pixel frame 4 -> channel 0 of latent frame 2
    frame_4 = candidate.concat_latent[0, 0, 2]
    assert bool((frame_4[:, : W // 16] == 0).all()) and bool((frame_4[:, W // 16 :] == 1).all())
    animation = _model_inputs(comfy, _conditioning(comfy)[0])["c_concat"]
    assert not torch.equal(candidate.concat_latent[:, 4:], animation[:, 4:])  # the background video is encoded in it
    result = store_candidates(comfy.output / "ipa_datasets", "replaced", candidates)
    assert result.added == 1


def test_refusals(comfy):
    with pytest.raises(ValueError, match="only one reference image lines up"):
        _sample(comfy, candidates=1, reference_image=torch.rand(2, H, W, 3))
    conditioned = _conditioning(comfy)[0]
    with pytest.raises(ValueError, match="already went through WanAnimateToVideo"):
        _sample(comfy, candidates=1, positive=conditioned)
    with pytest.raises(ValueError, match="not Wan2.2-Animate"):
        from comfyui_ipa_pack.nodes.animate_sampler import IPAAnimateSampler

        inputs = _inputs()
        IPAAnimateSampler.execute(comfy.load_model(), inputs["positive"], inputs["negative"], comfy.vae, inputs["clip_vision_output"],
                                  inputs["reference_image"], inputs["pose_video"], inputs["face_video"], W, H, LENGTH, 2, 1.0, 8.0,
                                  "euler", "simple", 1, 0)
