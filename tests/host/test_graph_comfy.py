"""The sampler and collector nodes inside a real ComfyUI (COMFYUI_PATH), on tiny random Wan2.1-VACE and Wan VAE
files written in ComfyUI's layout and loaded by UNETLoader / VAELoader; and the parity between ComfyUI's native
model and diffusers' transformer on the tensors the collector stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import requires_comfyui

pytestmark = requires_comfyui

H, W, LENGTH = 32, 48, 9


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.comfy_tiny import TinyComfy, load_pack_cpu

    pack = load_pack_cpu()
    tiny = TinyComfy(tmp_path_factory.mktemp("comfy"))
    tiny.pack = pack
    tiny.model = tiny.load_model()
    tiny.vae = tiny.load_vae()
    return tiny


def _inputs(seed_text=3):
    from support.comfy_tiny import pose_video, reference_image, text_conditioning

    return dict(
        positive=text_conditioning(seed=seed_text), negative=text_conditioning(real=3, seed=11),
        reference_image=reference_image(H, W), control_video=pose_video(LENGTH, H, W),
    )


def _sample(comfy, candidates=2, seed=5, steps=3, strength=1.0, sampler="euler", **overrides):
    from comfyui_ipa_pack.nodes.vace_sampler import IPAVaceSampler

    inputs = {**_inputs(), **overrides}
    return IPAVaceSampler.execute(
        comfy.model, inputs["positive"], inputs["negative"], comfy.vae, inputs["reference_image"], inputs["control_video"],
        W, H, LENGTH, steps, 2.5, 8.0, sampler, "simple", candidates, seed, strength=strength,
    ).args


def test_candidates_equal_the_native_graph(comfy):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from comfy_extras.nodes_wan import TrimVideoLatent, WanVaceToVideo

    import nodes

    images, candidates = _sample(comfy, candidates=2, seed=5)
    assert images.shape == (2 * LENGTH, H, W, 3) and len(candidates) == 2
    inputs = _inputs()
    # The native graph, node by node, for candidate 1 (seed 6).
    model = ModelSamplingSD3().patch(comfy.model, 8.0)[0]
    positive, negative, latent, trim = WanVaceToVideo.execute(
        inputs["positive"], inputs["negative"], comfy.vae, W, H, LENGTH, 1, 1.0,
        control_video=inputs["control_video"], reference_image=inputs["reference_image"],
    ).args
    sampled = nodes.KSampler().sample(model, 6, 3, 2.5, "euler", "simple", positive, negative, latent)[0]
    trimmed = TrimVideoLatent.execute(sampled, trim).args[0]
    decoded = nodes.VAEDecode().decode(comfy.vae, trimmed)[0]
    candidate = candidates[1]
    assert candidate.seed == 6 and candidate.trim_latent == trim == 1
    assert torch.equal(candidate.latent, sampled["samples"].float())
    assert torch.equal(images[LENGTH:], decoded)
    assert torch.equal(candidate.vace_frames, positive[0][1]["vace_frames"][0].float())
    assert torch.equal(candidate.vace_mask, positive[0][1]["vace_mask"][0].float())
    assert candidate.sigmas[0] == pytest.approx(1.0) and candidate.sigmas[-1] == 0.0 and len(candidate.sigmas) == 4
    assert not torch.equal(candidates[0].latent, candidates[1].latent)


def test_candidate_seeds_wrap_at_the_widget_maximum(comfy):
    _, wrapped = _sample(comfy, candidates=2, seed=2**64 - 1, steps=1)
    _, from_zero = _sample(comfy, candidates=1, seed=0, steps=1)
    assert [c.seed for c in wrapped] == [2**64 - 1, 0]
    assert torch.equal(wrapped[1].latent, from_zero[0].latent)


def test_chained_vace_and_wrong_models_are_refused(comfy):
    from comfy_extras.nodes_wan import WanVaceToVideo

    inputs = _inputs()
    chained = WanVaceToVideo.execute(inputs["positive"], inputs["negative"], comfy.vae, W, H, LENGTH, 1, 1.0).args
    with pytest.raises(ValueError, match="Chained VACE contexts are not supported"):
        _sample(comfy, candidates=1, positive=chained[0], negative=chained[1])
    with pytest.raises(ValueError, match="4k\\+1"):
        from comfyui_ipa_pack.nodes.vace_sampler import IPAVaceSampler

        IPAVaceSampler.execute(comfy.model, inputs["positive"], inputs["negative"], comfy.vae, inputs["reference_image"],
                               inputs["control_video"], W, H, 8, 1, 1.0, 8.0, "euler", "simple", 1, 0)


def test_patched_model_is_recorded(comfy):
    from comfyui_ipa_pack.nodes.vace_sampler import describe_patches

    patched = comfy.model.clone()
    key = next(k for k in patched.model.state_dict() if k.endswith("blocks.0.self_attn.q.weight"))
    patched.add_patches({key: (torch.zeros_like(patched.model.state_dict()[key]),)}, 0.5)  # a full-weight diff, not a LoRA
    report = describe_patches(patched)
    assert report == {"unidentified_weight_patches": {"tuple": 1}}
    assert describe_patches(comfy.model) == {}


def test_collector_node_stores_candidates(comfy):
    import json

    from comfyui_ipa_pack.ipa_train.data.layout import dataset_path
    from comfyui_ipa_pack.ipa_train.data.manifest import read_manifest
    from comfyui_ipa_pack.nodes.collector import IPAMarkPreferred
    from comfyui_ipa_pack.nodes.paths import dataset_root

    _, candidates = _sample(comfy, candidates=2, seed=21, steps=2)
    mask = torch.zeros(LENGTH, H, W)
    out = IPAMarkPreferred.execute(candidates, "node_ds", "preferred", select="1", prompt_text="wave")
    text = out.args[0]
    assert "node_ds: 1 samples" in text and "1 preferred" in text
    folder = dataset_path(dataset_root(), "node_ds")
    entries = read_manifest(folder)
    assert [entry["seed"] for entry in entries] == [22]
    meta = json.loads((folder / "samples" / entries[0]["id"] / "meta.json").read_text())
    assert meta["settings"]["steps"] == 2 and meta["prompt"] == "wave" and len(meta["sigmas"]) == 3
    again = IPAMarkPreferred.execute(candidates, "node_ds", "pending").args[0]
    assert "added 1, 1 already stored" in again
    with pytest.raises(ValueError, match="out of range"):
        IPAMarkPreferred.execute(candidates, "node_ds", "pending", select="5")
    with pytest.raises(ValueError, match="invalid dataset name"):
        IPAMarkPreferred.execute(candidates, "../evil", "pending")
    with pytest.raises(ValueError, match="either pose_keypoint or hand_mask"):
        IPAMarkPreferred.execute(candidates, "node_ds", "pending", pose_keypoint=[{}], hand_mask=mask)
    # hands from POSE_KEYPOINT: the latent mask, the preview boxes and the driving pose (in video pixels) for the gallery
    from comfyui_ipa_pack.ipa_train.pose.synthetic import synthetic_pose_sequence

    pose = synthetic_pose_sequence(LENGTH + 4, 2 * W, 2 * H, seed=1)
    IPAMarkPreferred.execute(candidates, "posed_ds", "pending", select="0", pose_keypoint=pose)
    posed = dataset_path(dataset_root(), "posed_ds")
    (entry,) = read_manifest(posed)
    meta = json.loads((posed / "samples" / entry["id"] / "meta.json").read_text())
    assert len(meta["driving_pose"]) == LENGTH and meta["driving_pose"][0]["canvas_width"] == 2 * W
    assert meta["driving_pose_resize"] == "crop" and meta["video_size"] == [W, H]
    assert meta["hand_mask_source"] == "pose" and len(meta["hand_boxes"]) == LENGTH and entry["hand_area"] > 0


def test_encode_good_video_matches_native_conditioning(comfy):
    from comfy_extras.nodes_wan import WanVaceToVideo
    from comfyui_ipa_pack.ipa_train.data.collect import candidate_to_sample
    from comfyui_ipa_pack.nodes.collector import IPAEncodeGoodVideo

    inputs = _inputs()
    video = torch.rand(LENGTH + 2, H, W, 3, generator=torch.Generator().manual_seed(8))
    (candidates,) = IPAEncodeGoodVideo.execute(video, comfy.vae, inputs["positive"], W, H, LENGTH, 0.8,
                                               reference_image=inputs["reference_image"], control_video=inputs["control_video"]).args
    candidate = candidates[0]
    positive = WanVaceToVideo.execute(inputs["positive"], inputs["positive"], comfy.vae, W, H, LENGTH, 1, 0.8,
                                      control_video=inputs["control_video"], reference_image=inputs["reference_image"]).args[0]
    assert torch.equal(candidate.vace_frames, positive[0][1]["vace_frames"][0].float())
    assert candidate.trim_latent == 1 and candidate.vace_strength == pytest.approx(0.8)
    assert candidate.latent.shape == (1, 16, 4, H // 8, W // 8)
    assert torch.equal(candidate.latent[:, :, 1:], comfy.vae.encode(video[:LENGTH]).float())
    tensors, _, _, _ = candidate_to_sample(candidate)
    assert tensors.hand_mask.shape == (1, 3, H // 8, W // 8)


def test_parity_native_comfyui_vs_diffusers_on_stored_tensors(comfy, tmp_path):
    from comfyui_ipa_pack.ipa_train.data.layout import dataset_path
    from comfyui_ipa_pack.ipa_train.data.samples import load_preferred
    from comfyui_ipa_pack.nodes.collector import IPAMarkPreferred
    from comfyui_ipa_pack.nodes.paths import dataset_root

    from support.comfy_tiny import comfy_velocities, write_diffusers_config

    _, candidates = _sample(comfy, candidates=1, seed=31, steps=2, strength=0.7)
    IPAMarkPreferred.execute(candidates, "parity", "preferred")
    ((_, stored, _),) = load_preferred(dataset_path(dataset_root(), "parity"))
    assert stored.ref_frames == 1 and stored.vace_strength == pytest.approx(0.7)

    sigmas = [0.93, 0.6, 0.25]
    generator = torch.Generator().manual_seed(1)
    noises = [torch.randn(stored.latent.shape, generator=generator) for _ in sigmas]
    x_t = [(1 - s) * stored.latent + s * n for s, n in zip(sigmas, noises)]
    comfy_v = comfy_velocities(comfy.model, candidates[0], x_t, sigmas)

    from safetensors.torch import load_file, save_file

    save_file({"x_t": torch.stack(x_t).contiguous(), "sigmas": torch.tensor(sigmas, dtype=torch.float32),
               "text": stored.text_embedding.contiguous(), "context": stored.vace_context.contiguous(),
               # inactive and reactive latents swapped: must NOT match (shows the check sees the channel order)
               "context_control": torch.cat([stored.vace_context[16:32], stored.vace_context[:16], stored.vace_context[32:]]).contiguous(),
               "strength": torch.tensor(stored.vace_strength)}, str(tmp_path / "inputs.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no torchvision stand-in for diffusers
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "support" / "diffusers_replay.py"), str(comfy.unet_path), str(tmp_path / "inputs.safetensors"),
         str(tmp_path / "out.safetensors"), str(write_diffusers_config(tmp_path / "config"))],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    replay = load_file(str(tmp_path / "out.safetensors"))
    for sigma, prediction, control, expected in zip(sigmas, replay["velocity"], replay["velocity_control"], comfy_v):
        scale = expected.abs().max()
        assert scale > 1e-3
        error = (prediction - expected).abs().max() / scale
        print(f"parity sigma {sigma}: relative max error {error:.2e}")
        assert error < 1e-4, f"sigma {sigma}: relative max error {error:.2e}"
        assert (control - expected).abs().max() / scale > 1e-2


def test_comfyui_latent_constants_equal_ours(comfy):
    import comfy.latent_formats  # noqa: F811  (the fixture is only needed to have ComfyUI importable)
    from comfyui_ipa_pack.ipa_train.wan import latents as wan_latents

    wan21 = comfy.latent_formats.Wan21()
    assert tuple(round(v, 4) for v in wan21.latents_mean.flatten().tolist()) == wan_latents.WAN21_LATENTS_MEAN
    assert tuple(round(v, 4) for v in wan21.latents_std.flatten().tolist()) == wan_latents.WAN21_LATENTS_STD
