"""Wan2.2-VACE-Fun A14B's two experts in the IPA VACE Sampler, inside a real ComfyUI (COMFYUI_PATH): two tiny random
VACE models (different seeds) written in ComfyUI's layout and loaded by UNETLoader. Candidate i must equal, bit for bit,
Wan2.2's native graph run through ComfyUI's own nodes with seed + i: ModelSamplingSD3 on each model -> one
WanVaceToVideo -> KSamplerAdvanced (high, add noise, 0..S, leftover noise) -> KSamplerAdvanced (low, no noise, S..end)
-> TrimVideoLatent -> VAEDecode."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import requires_comfyui

pytestmark = requires_comfyui

H, W, LENGTH = 32, 48, 9
STEPS, SWITCH, CFG, SHIFT = 4, 2, 2.5, 8.0


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    from support.comfy_tiny import TinyComfyExperts, load_pack_cpu

    pack = load_pack_cpu()
    tiny = TinyComfyExperts(tmp_path_factory.mktemp("comfy_experts"))
    tiny.pack = pack
    tiny.high, tiny.low = tiny.load_high(), tiny.load_low()
    tiny.vae = tiny.load_vae()
    return tiny


def _inputs():
    from support.comfy_tiny import pose_video, reference_image, text_conditioning

    return dict(
        positive=text_conditioning(seed=3), negative=text_conditioning(real=3, seed=11),
        reference_image=reference_image(H, W), control_video=pose_video(LENGTH, H, W),
    )


def _sample(experts, model=None, low="tiny", candidates=2, seed=5, steps=STEPS, switch_step=SWITCH, sampler="euler"):
    from comfyui_ipa_pack.nodes.vace_sampler import IPAVaceSampler

    inputs = _inputs()
    extra = {} if low is None else {"model_low_noise": experts.low if low == "tiny" else low, "switch_step": switch_step}
    return IPAVaceSampler.execute(
        model or experts.high, inputs["positive"], inputs["negative"], experts.vae, inputs["reference_image"], inputs["control_video"],
        W, H, LENGTH, steps, CFG, SHIFT, sampler, "simple", candidates, seed, **extra,
    ).args


def _native_two_experts(experts, seed: int, sampler="euler", high=None, low=None):
    """Wan2.2's native graph, node by node, through ComfyUI's own node classes: (untrimmed LATENT, decoded frames)."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from comfy_extras.nodes_wan import TrimVideoLatent, WanVaceToVideo

    import nodes

    inputs = _inputs()
    high = ModelSamplingSD3().patch(high or experts.high, SHIFT)[0]
    low = ModelSamplingSD3().patch(low or experts.low, SHIFT)[0]
    positive, negative, latent, trim = WanVaceToVideo.execute(
        inputs["positive"], inputs["negative"], experts.vae, W, H, LENGTH, 1, 1.0,
        control_video=inputs["control_video"], reference_image=inputs["reference_image"],
    ).args
    first = nodes.KSamplerAdvanced().sample(high, "enable", seed, STEPS, CFG, sampler, "simple", positive, negative, latent,
                                            0, SWITCH, "enable")[0]
    second = nodes.KSamplerAdvanced().sample(low, "disable", seed, STEPS, CFG, sampler, "simple", positive, negative, first,
                                             SWITCH, 10000, "disable")[0]
    trimmed = TrimVideoLatent.execute(second, trim).args[0]
    return second, nodes.VAEDecode().decode(experts.vae, trimmed)[0]


class _RecordingProgressBar:
    """Stands in for comfy.utils.ProgressBar: records every absolute position; ``cancel_at`` presses Cancel there."""

    positions: list[int] = []
    cancel_at = None

    def __init__(self, total, node_id=None):
        self.total = total

    def update_absolute(self, value, total=None, preview=None):
        import comfy.model_management

        type(self).positions.append(value)
        if value == type(self).cancel_at:
            comfy.model_management.interrupt_current_processing(True)


def test_candidates_equal_the_native_two_sampler_graph(experts, monkeypatch):
    import comfy.utils

    monkeypatch.setattr(comfy.utils, "ProgressBar", _RecordingProgressBar)
    _RecordingProgressBar.positions = []
    images, candidates = _sample(experts, candidates=2, seed=5)
    assert images.shape == (2 * LENGTH, H, W, 3) and [c.seed for c in candidates] == [5, 6]
    # progress runs one step at a time through the high-noise stage of both candidates, then the low-noise stage
    assert _RecordingProgressBar.positions == list(range(1, 2 * STEPS + 1))
    for index, candidate in enumerate(candidates):
        native, decoded = _native_two_experts(experts, 5 + index)
        assert torch.equal(candidate.latent, native["samples"].float()), f"candidate {index}"
        assert torch.equal(images[index * LENGTH : (index + 1) * LENGTH], decoded)
        assert candidate.trim_latent == 1
    # the test can fail: the low-noise expert's half changes the result, and so does where it takes over
    (_, (single,)) = _sample(experts, low=None, candidates=1, seed=5)
    assert not torch.equal(single.latent, candidates[0].latent)
    (_, (late,)) = _sample(experts, candidates=1, seed=5, switch_step=3)
    assert not torch.equal(late.latent, candidates[0].latent)
    assert "experts" not in single.settings and "switch_step" not in single.settings  # one model: settings as before


@pytest.mark.parametrize("sampler", ["euler_ancestral", "uni_pc"])
def test_other_samplers_equal_the_native_graph_too(experts, sampler):
    # euler_ancestral draws fresh noise in each stage from the seed (the low stage's noise_seed is the candidate's);
    # uni_pc, the node's default, is multistep and drops the penultimate sigma of its schedule
    (_, (candidate,)) = _sample(experts, candidates=1, seed=9, sampler=sampler)
    native, _ = _native_two_experts(experts, 9, sampler=sampler)
    assert torch.equal(candidate.latent, native["samples"].float())
    assert candidate.settings["experts"]["low"]["sigmas"][0] == candidate.sigmas[SWITCH] == candidate.settings["switch_sigma"]


def test_settings_record_both_experts_and_the_switch(experts):
    import comfy.samplers
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from comfyui_ipa_pack.nodes.model_identity import base_weights_fingerprint

    import nodes
    from support.comfy_tiny import write_tiny_lora

    write_tiny_lora(experts.loras / "tiny_low_lora.safetensors", seed=2)
    low_with_lora = nodes.LoraLoaderModelOnly().load_lora_model_only(experts.low, "tiny_low_lora.safetensors", 0.5)[0]
    _, candidates = _sample(experts, low=low_with_lora, candidates=2, seed=40)
    native, _ = _native_two_experts(experts, 41, low=low_with_lora)
    assert torch.equal(candidates[1].latent, native["samples"].float())

    full = comfy.samplers.KSampler(ModelSamplingSD3().patch(experts.high, SHIFT)[0], steps=STEPS, device="cpu", sampler="euler",
                                   scheduler="simple", denoise=1.0).sigmas.tolist()
    for candidate in candidates:
        settings = candidate.settings
        high, low = settings["experts"]["high"], settings["experts"]["low"]
        assert high["base_fingerprint"] == base_weights_fingerprint(experts.high) == settings["base_fingerprint"]
        assert low["base_fingerprint"] == base_weights_fingerprint(experts.low) != high["base_fingerprint"]
        assert high["model_class"] == low["model_class"] == settings["model_class"] == "WAN21_Vace"
        assert high["patches"] == {} and "patches" not in settings  # top level: the high-noise model, as before
        assert low["patches"]["loras"][0]["strength"] == 0.5, low["patches"]
        assert settings["switch_step"] == SWITCH and settings["switch_sigma"] == full[SWITCH]
        assert high["sigmas"] == full[: SWITCH + 1] and low["sigmas"] == full[SWITCH:]
        assert high["sigmas"][-1] == low["sigmas"][0] == settings["switch_sigma"]
        assert candidate.sigmas == full and len(full) == STEPS + 1
    _stored_meta_keeps_the_experts(candidates)


def _stored_meta_keeps_the_experts(candidates):
    """IPA Mark Preferred stores the settings in meta.json as they are; the trainer's loader and the gallery read it."""
    from comfyui_ipa_pack.ipa_train.data.layout import dataset_path
    from comfyui_ipa_pack.ipa_train.data.manifest import read_manifest
    from comfyui_ipa_pack.ipa_train.data.samples import load_preferred
    from comfyui_ipa_pack.nodes.collector import IPAMarkPreferred
    from comfyui_ipa_pack.nodes.paths import dataset_root

    from support.gallery_fixture import serve

    IPAMarkPreferred.execute(candidates, "experts_ds", "preferred", prompt_text="wave")
    folder = dataset_path(dataset_root(), "experts_ds")
    entries = read_manifest(folder)
    assert sorted(entry["seed"] for entry in entries) == [40, 41]
    for entry in entries:
        meta = json.loads((folder / "samples" / entry["id"] / "meta.json").read_text())
        candidate = next(c for c in candidates if c.seed == entry["seed"])
        assert meta["settings"] == json.loads(json.dumps(candidate.settings))
        assert meta["settings"]["experts"]["low"]["sigmas"][0] == meta["settings"]["switch_sigma"]
    assert len(load_preferred(folder)) == 2

    async def scenario(client):
        listing = await client.get("/ipa/datasets/experts_ds/samples")
        detail = await client.get(f"/ipa/datasets/experts_ds/samples/{entries[0]['id']}")
        return listing.status, await listing.json(), detail.status, await detail.json()

    listing_status, listing, detail_status, detail = serve(dataset_root(), scenario)
    assert listing_status == 200 and len(listing["samples"]) == 2
    assert detail_status == 200 and detail["meta"]["settings"]["switch_step"] == SWITCH, detail.get("omitted")


def test_switch_at_or_after_the_last_step_is_refused(experts):
    for switch_step in (STEPS, STEPS + 3):
        with pytest.raises(ValueError, match=f"switch_step {switch_step} must be below steps {STEPS}"):
            _sample(experts, candidates=1, switch_step=switch_step)


def test_a_second_model_that_is_not_a_matching_vace_model_is_refused(experts):
    import nodes
    from support.comfy_tiny import write_tiny_vace, write_tiny_wan_t2v

    write_tiny_wan_t2v(experts.diffusion_models / "tiny_wan21_t2v.safetensors")
    t2v = nodes.UNETLoader().load_unet("tiny_wan21_t2v.safetensors", "default")[0]
    assert type(t2v.model).__name__ == "WAN21"
    with pytest.raises(ValueError, match="model_low_noise is WAN21, not a Wan VACE model"):
        _sample(experts, low=t2v, candidates=1)
    write_tiny_vace(experts.diffusion_models / "tiny_vace_deeper.safetensors", seed=3, num_layers=4)
    deeper = nodes.UNETLoader().load_unet("tiny_vace_deeper.safetensors", "default")[0]
    with pytest.raises(ValueError, match="different sizes \\(num_layers 2 vs 4\\)"):
        _sample(experts, low=deeper, candidates=1)


def test_cancel_stops_the_low_noise_stage(experts, monkeypatch):
    import comfy.model_management
    import comfy.utils

    monkeypatch.setattr(comfy.utils, "ProgressBar", _RecordingProgressBar)
    # the high-noise stage runs for both candidates first: 2 * SWITCH + 1 is the low-noise model's first step
    _RecordingProgressBar.positions, _RecordingProgressBar.cancel_at = [], 2 * SWITCH + 1
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _sample(experts, candidates=2)
    finally:
        _RecordingProgressBar.cancel_at = None
        comfy.model_management.interrupt_current_processing(False)
    assert _RecordingProgressBar.positions == list(range(1, 2 * SWITCH + 2))
