"""Two experts (Wan2.2-VACE-Fun A14B, issue 21) against a real ComfyUI (COMFYUI_PATH): the trainer's velocity equals
ComfyUI's for each expert, at sigmas on both sides of the switch, cond and uncond, with a LoRA on each expert (another
LoRA and strength on each side), on two tiny random VACE files in ComfyUI's layout loaded by the real UNETLoader.

The candidate is sampled by the IPA VACE Sampler with the high-noise model and its two-expert record is written here
the way the sampler writes it (settings["experts"] with each expert's fingerprint and patches from the pack's own
model_identity, switch_step, switch_sigma = sigmas[switch_step]); IPA Mark Preferred stores it. The trainer then
loads each expert from its file (base_model: high, low_noise_model: low) with init_lora at that expert's strength,
checks it against that expert's record, and its reference predicts ComfyUI's velocity to <= 1e-4 relative."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_comfyui

pytestmark = requires_comfyui

H, W, LENGTH, STEPS, SWITCH_STEP = 16, 16, 5, 4, 2
LORA_STRENGTH = {"high": 0.5, "low": 0.8}


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """The tiny pair in ComfyUI's layout, each with its own LoRA through IPA LoRA Loader, and one stored candidate."""
    from support.comfy_tiny import TinyComfy, load_pack_cpu, pose_video, reference_image, text_conditioning, write_tiny_lora, write_tiny_vace

    load_pack_cpu()
    from comfyui_ipa_pack.nodes.collector import IPAMarkPreferred
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader
    from comfyui_ipa_pack.nodes.model_identity import base_weights_fingerprint, describe_patches
    from comfyui_ipa_pack.nodes.vace_sampler import IPAVaceSampler

    import nodes

    tiny = TinyComfy(tmp_path_factory.mktemp("two_experts"))
    tiny.files = {"high": tiny.unet_path, "low": write_tiny_vace(tiny.diffusion_models / "tiny_low_noise.safetensors", seed=9)}
    tiny.loras_of = {"high": write_tiny_lora(tiny.loras / "hands_high.safetensors", seed=3),
                     "low": write_tiny_lora(tiny.loras / "hands_low.safetensors", seed=4)}
    tiny.models = {}
    for expert, path in tiny.files.items():
        base = nodes.UNETLoader().load_unet(path.name, "default")[0]
        tiny.models[expert] = IPALoRALoader.execute(base, tiny.loras_of[expert].name, LORA_STRENGTH[expert]).args[0]
    tiny.vae = tiny.load_vae()
    tiny.negative = text_conditioning(real=3, seed=11)
    _, candidates = IPAVaceSampler.execute(
        tiny.models["high"], text_conditioning(seed=3), tiny.negative, tiny.vae, reference_image(H, W), pose_video(LENGTH, H, W),
        W, H, LENGTH, STEPS, 1.0, 8.0, "euler", "simple", 1, 0, strength=0.8,
    ).args
    candidate = candidates[0]
    sigmas = [float(s) for s in candidate.sigmas]
    record = {expert: {"base_fingerprint": base_weights_fingerprint(model), "patches": describe_patches(model),
                       "model_class": type(model.model).__name__} for expert, model in tiny.models.items()}
    record["high"]["sigmas"], record["low"]["sigmas"] = sigmas[: SWITCH_STEP + 1], sigmas[SWITCH_STEP:]
    candidate.settings.update(experts=record, switch_step=SWITCH_STEP, switch_sigma=sigmas[SWITCH_STEP])
    IPAMarkPreferred.execute(candidates, "two_experts", "preferred")
    tiny.candidate, tiny.switch_sigma = candidate, sigmas[SWITCH_STEP]
    return tiny


def _trainer(tiny, expert: str, **overrides):
    from comfyui_ipa_pack.nodes.paths import dataset_root

    from ipa_train.jobs.config import RunConfig
    from ipa_train.training.distributed import Dist, Events
    from ipa_train.training.loop import Trainer

    values = dict(dataset=str(dataset_root() / "two_experts"), base_model=str(tiny.files["high"]), low_noise_model=str(tiny.files["low"]),
                  output_dir=str(tiny.base / "runs" / expert), expert=expert, rank=2, steps=1, checkpoint_every=0, precision="fp32",
                  init_lora={"path": str(tiny.loras_of[expert]), "strength": LORA_STRENGTH[expert]})
    values.update(overrides)
    return Trainer(RunConfig.from_dict(values), Dist(), Events(Dist(), None, stdout=False))


def _velocity_errors(tiny, trainer, model, sigmas, uncond: bool) -> list[float]:
    """Relative max errors of the trainer's reference against ComfyUI's prediction by ``model`` at ``sigmas``."""
    import dataclasses

    from ipa_train.training.batching import collate
    from support.comfy_tiny import comfy_velocities

    stored = trainer.data.preferred[0][1]
    candidate = tiny.candidate
    batch = collate([stored], trainer.objective.n_vace_layers, torch.device("cpu"), torch.float32)
    if uncond:  # the negative conditioning through the same model function (WanVaceToVideo gives it the same VACE context)
        text = tiny.negative[0][0]
        candidate = dataclasses.replace(candidate, text_embedding=text)
        batch.text = text.float()
    generator = torch.Generator().manual_seed(1)
    x_t = [(1 - s) * stored.latent + s * torch.randn(stored.latent.shape, generator=generator) for s in sigmas]
    expected = comfy_velocities(model, candidate, x_t, sigmas)
    errors = []
    for x, sigma, want in zip(x_t, sigmas, expected):
        with torch.no_grad():
            got = trainer.objective.reference(batch, x.unsqueeze(0), torch.tensor([sigma]))[0]
        errors.append(float((got - want).abs().max() / want.abs().max()))
    return errors


@pytest.mark.parametrize("expert", ["low", "high"])
def test_each_experts_velocity_equals_comfyuis_on_both_sides_of_the_switch(experts, expert):
    tiny = experts
    trainer = _trainer(tiny, expert)
    assert trainer.reference_warnings == []  # the expert's file and LoRA reproduce its record
    s = tiny.switch_sigma
    assert trainer.data.t_range == ((0.0, s) if expert == "low" else (s, 1.0))
    sigmas = ((1.0 + s) / 2, s + 1e-3, s, s / 2, 0.05)  # two above the switch, the switch, two below
    for uncond in (False, True):
        errors = _velocity_errors(tiny, trainer, tiny.models[expert], sigmas, uncond)
        print(f"{expert} {'uncond' if uncond else 'cond'}: sigmas {[round(x, 4) for x in sigmas]} relative max errors "
              f"{[f'{e:.1e}' for e in errors]}")
        assert max(errors) < 1e-4, f"{expert} {'uncond' if uncond else 'cond'}: relative max errors {errors} at sigmas {sigmas}"
    # the other expert's model is another function: the comparison can fail
    other = "high" if expert == "low" else "low"
    assert min(_velocity_errors(tiny, trainer, tiny.models[other], sigmas[:1], False)) > 1e-2


def test_each_expert_is_checked_against_its_own_record(experts):
    from ipa_train.training.reference_check import ReferenceMismatch

    tiny = experts
    # the low expert with the high expert's LoRA strength: its own record says 0.8
    with pytest.raises(ReferenceMismatch, match="at strength 0.8"):
        _trainer(tiny, "low", init_lora={"path": str(tiny.loras_of["low"]), "strength": LORA_STRENGTH["high"]})
    # the high-noise file given as the low expert: the low record's fingerprint is the low file's
    with pytest.raises(ReferenceMismatch, match="another base model"):
        _trainer(tiny, "low", low_noise_model=str(tiny.files["high"]))


def test_both_trains_the_comfyui_files_into_two_loras_that_comfyui_loads(experts):
    """expert 'both' on the two ComfyUI-layout files (each expert with its own init_lora would differ: here without
    LoRAs, so the samples' records are those of the bare experts): two LoRAs, each with its expert's metadata, each
    loaded by ComfyUI's own LoraLoaderModelOnly onto its expert."""
    import dataclasses

    from comfyui_ipa_pack.nodes.collector import IPAMarkPreferred
    from comfyui_ipa_pack.nodes.model_identity import base_weights_fingerprint
    from comfyui_ipa_pack.nodes.paths import dataset_root

    import nodes
    from ipa_train.fileio import load_safetensors, read_safetensors_metadata
    from ipa_train.jobs.config import RunConfig
    from ipa_train.training.loop import train

    tiny = experts
    bare = {expert: nodes.UNETLoader().load_unet(path.name, "default")[0] for expert, path in tiny.files.items()}
    record = {expert: {"base_fingerprint": base_weights_fingerprint(model), "patches": {}, "model_class": "WAN21_Vace"}
              for expert, model in bare.items()}
    settings = {**tiny.candidate.settings, "base_fingerprint": record["high"]["base_fingerprint"], "patches": {}, "experts": record}
    IPAMarkPreferred.execute([dataclasses.replace(tiny.candidate, settings=settings)], "two_experts_bare", "preferred")
    output = tiny.base / "runs" / "both"
    result = train(RunConfig.from_dict(dict(
        dataset=str(dataset_root() / "two_experts_bare"), base_model=str(tiny.files["high"]), low_noise_model=str(tiny.files["low"]),
        output_dir=str(output), lora_name="pair", expert="both", rank=2, steps=1, checkpoint_every=0, precision="fp32")))
    assert result.status == "finished" and sorted(result.lora_paths) == ["high", "low"]
    for expert in ("low", "high"):
        path = output / f"pair_{expert}.safetensors"
        meta = read_safetensors_metadata(path)
        assert meta["ipa.expert"] == expert and meta["ipa.base_model"] == tiny.files[expert].name
        assert meta["ipa.switch_step"] == str(SWITCH_STEP) and float(meta["ipa.switch_sigma"]) == tiny.switch_sigma
        (tiny.loras / path.name).write_bytes(path.read_bytes())
        patched = nodes.LoraLoaderModelOnly().load_lora_model_only(bare[expert], path.name, 1.0)[0]
        modules = [key for key in load_safetensors(path)[0] if key.endswith(("lora_A.weight", "lora_down.weight"))]
        assert len(modules) == 6 and len(patched.patches) == len(modules)  # every LoRA module maps onto ComfyUI's model
