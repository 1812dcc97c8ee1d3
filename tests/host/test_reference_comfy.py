"""The trainer's reference is the sampling model, checked against a real ComfyUI (COMFYUI_PATH): candidates sampled by
the IPA VACE Sampler from tiny random Wan2.1-VACE files through ComfyUI's own loaders and patch nodes, stored by IPA Mark
Preferred, then the real trainer (in-process) either reproduces the sampling model's velocity or refuses clearly.

Cases (issue "the reference is the sampling model"): 2 LoRA strength through IPA LoRA Loader, 3 ScaleROPE, 4 another
base file of the same shapes, 5 LoraLoaderModelOnly, 7 text lengths at batch size 2; plus kijai's VACE module beside a
text-to-video base, loaded by IPA Load Wan + VACE Module for sampling and by base_model + vace_module for training.
Case 6 (the train node's init_lora / targets inputs) is in test_train_node_comfy.py."""

from __future__ import annotations

import pytest
import torch

from conftest import requires_comfyui

pytestmark = requires_comfyui

H, W, LENGTH = 16, 16, 5
SIGMAS = (0.9, 0.4)  # ComfyUI's velocity and the trainer's reference are compared at these


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.comfy_tiny import TinyComfy, load_pack_cpu, write_tiny_lora, write_tiny_vace

    load_pack_cpu()
    tiny = TinyComfy(tmp_path_factory.mktemp("reference"))
    tiny.model = tiny.load_model()
    tiny.vae = tiny.load_vae()
    tiny.lora_path = write_tiny_lora(tiny.loras / "hands_v1.safetensors", seed=3)
    tiny.other_path = write_tiny_vace(tiny.diffusion_models / "other_wan21_vace.safetensors", seed=7)  # same shapes, other weights
    return tiny


def _sample(comfy, model, dataset, positive=None, seed=0):
    """One candidate sampled by ``model`` and stored as preferred in ``dataset``; returns the candidate."""
    from comfyui_ipa_pack.nodes.collector import IPAMarkPreferred
    from comfyui_ipa_pack.nodes.vace_sampler import IPAVaceSampler

    from support.comfy_tiny import pose_video, reference_image, text_conditioning

    positive = positive if positive is not None else text_conditioning(seed=3)
    _, candidates = IPAVaceSampler.execute(
        model, positive, text_conditioning(real=3, seed=11), comfy.vae, reference_image(H, W), pose_video(LENGTH, H, W),
        W, H, LENGTH, 1, 2.0, 8.0, "euler", "simple", 1, seed, strength=0.8,
    ).args
    IPAMarkPreferred.execute(candidates, dataset, "preferred")
    return candidates[0]


_loaded: dict = {}


def _trainer(comfy, dataset, load=False, **overrides):
    """The real Trainer, in-process. The base is loaded from base_model by the trainer itself when ``load``, else a copy
    of the same file loaded once (loading is the slow part; the checks run on the model either way)."""
    import copy

    from comfyui_ipa_pack.nodes.paths import dataset_root

    from ipa_train.jobs.config import RunConfig
    from ipa_train.training.distributed import Dist, Events
    from ipa_train.training.loop import Trainer
    from ipa_train.wan.model import load_transformer

    values = dict(dataset=str(dataset_root() / dataset), base_model=str(comfy.unet_path), output_dir=str(comfy.base / "runs" / dataset),
                  rank=2, steps=1, checkpoint_every=0, precision="fp32")
    values.update(overrides)
    model = None
    if not load and not values.get("vace_module"):
        if values["base_model"] not in _loaded:
            _loaded[values["base_model"]] = load_transformer(values["base_model"])
        model = copy.deepcopy(_loaded[values["base_model"]])
    return Trainer(RunConfig.from_dict(values), Dist(), Events(Dist(), None, stdout=False), model=model)


def _assert_same_velocity(comfy, trainer, model, candidate, index=0):
    """The trainer's reference prediction on the stored sample equals ComfyUI's prediction by ``model``."""
    from ipa_train.training.batching import collate
    from support.comfy_tiny import comfy_velocities

    stored = trainer.data.preferred[index][1]
    generator = torch.Generator().manual_seed(1)
    x_t = [(1 - s) * stored.latent + s * torch.randn(stored.latent.shape, generator=generator) for s in SIGMAS]
    expected = comfy_velocities(model, candidate, x_t, SIGMAS)
    batch = collate([stored], trainer.objective.n_vace_layers, torch.device("cpu"), torch.float32)
    for x, sigma, want in zip(x_t, SIGMAS, expected):
        with torch.no_grad():
            got = trainer.objective.reference(batch, x.unsqueeze(0), torch.tensor([sigma]))[0]
        error = float((got - want).abs().max() / want.abs().max())
        assert error < 1e-4, f"sigma {sigma}: relative max error {error:.2e}"
    return expected


def test_fingerprint_is_the_same_on_both_sides_and_ignores_patched_in_loras(comfy):
    from comfyui_ipa_pack.nodes.model_identity import base_weights_fingerprint

    import nodes
    from ipa_train.wan.fingerprint import diffusers_model_fingerprint
    from ipa_train.wan.model import load_transformer

    fingerprint = base_weights_fingerprint(comfy.model)
    assert fingerprint == diffusers_model_fingerprint(load_transformer(comfy.unet_path))
    assert fingerprint == diffusers_model_fingerprint(load_transformer(comfy.unet_path, torch_dtype=torch.bfloat16))
    other = nodes.UNETLoader().load_unet(comfy.other_path.name, "default")[0]
    assert base_weights_fingerprint(other) != fingerprint
    patched = nodes.LoraLoaderModelOnly().load_lora_model_only(comfy.model, comfy.lora_path.name, 0.7)[0]
    patched.patch_model()  # the LoRA is now in the module's weights; the originals are in the backup
    try:
        assert base_weights_fingerprint(patched) == fingerprint
    finally:
        patched.unpatch_model()
    fp8 = nodes.UNETLoader().load_unet(comfy.unet_name, "fp8_e4m3fn")[0]  # what UNETLoader's weight_dtype makes
    assert base_weights_fingerprint(fp8) != fingerprint


def test_case2_lora_strength_is_reproduced_or_refused(comfy):
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    from ipa_train.training.reference_check import ReferenceMismatch

    model = IPALoRALoader.execute(comfy.model, comfy.lora_path.name, 0.5).args[0]
    candidate = _sample(comfy, model, "case2")
    trainer = _trainer(comfy, "case2", init_lora={"path": str(comfy.lora_path), "strength": 0.5})
    assert trainer.reference_warnings == []
    _assert_same_velocity(comfy, trainer, model, candidate)
    with pytest.raises(ReferenceMismatch, match=r"hands_v1.safetensors at strength 0.5, 4 weights, but init_lora gives hands_v1.safetensors at strength 1"):
        _trainer(comfy, "case2", init_lora=str(comfy.lora_path))
    # the same check under allow_other_base is a warning, and the reference is then base + LoRA at 1.0: not the sampler
    loose = _trainer(comfy, "case2", init_lora=str(comfy.lora_path), allow_other_base=True)
    assert "allow_other_base is set" in loose.reference_warnings[0]
    with pytest.raises(AssertionError, match="relative max error"):
        _assert_same_velocity(comfy, loose, model, candidate)


def test_case3_scalerope_is_refused(comfy):
    from comfy_extras.nodes_rope import ScaleROPE

    from ipa_train.training.reference_check import ReferenceMismatch

    model = ScaleROPE.execute(comfy.model, 2.0, 0.0, 1.0, 0.0, 1.0, 0.0).args[0]
    _sample(comfy, model, "case3")
    with pytest.raises(ReferenceMismatch, match=r"rope scaling \(ScaleROPE: transformer_options rope_options\): \{.*'scale_x': 2.0"):
        _trainer(comfy, "case3")


def test_case4_another_base_file_is_refused_unless_allowed(comfy):
    from ipa_train.training.reference_check import ReferenceMismatch

    candidate = _sample(comfy, comfy.model, "case4")
    trainer = _trainer(comfy, "case4", load=True)  # the file it was sampled with: accepted, same velocity
    assert trainer.reference_warnings == []
    _assert_same_velocity(comfy, trainer, comfy.model, candidate)
    with pytest.raises(ReferenceMismatch, match="sampled by another base model than other_wan21_vace.safetensors"):
        _trainer(comfy, "case4", base_model=str(comfy.other_path))
    allowed = _trainer(comfy, "case4", base_model=str(comfy.other_path), allow_other_base=True)
    assert "fingerprint of the base weights differs" in allowed.reference_warnings[0]


def test_case5_lora_loader_model_only_is_identified(comfy):
    import nodes
    from ipa_train.training.reference_check import ReferenceMismatch

    model = nodes.LoraLoaderModelOnly().load_lora_model_only(comfy.model, comfy.lora_path.name, 0.7)[0]
    candidate = _sample(comfy, model, "case5")
    trainer = _trainer(comfy, "case5", init_lora=[{"path": str(comfy.lora_path), "strength": 0.7}])
    assert trainer.reference_warnings == []  # a correct init_lora: no warning
    _assert_same_velocity(comfy, trainer, model, candidate)
    with pytest.raises(ReferenceMismatch, match="a LoRA not loaded by IPA LoRA Loader .* at strength 0.7"):
        _trainer(comfy, "case5")


def test_case7_text_lengths_at_batch_size_two(comfy):
    """Conditionings of 512 and 500 rows: each stored as sampled, never batched together, each its own velocity."""
    from support.comfy_tiny import text_conditioning

    candidates = [_sample(comfy, comfy.model, "case7", positive=text_conditioning(tokens=tokens, seed=3 + tokens), seed=tokens)
                  for tokens in (512, 500)]
    trainer = _trainer(comfy, "case7", batch_size=2)
    lengths = sorted(int(sample.text_embedding.shape[0]) for _, sample, _ in trainer.data.preferred)
    assert lengths == [500, 512]
    assert all(len(trainer.sampler.indices(step, 0)) == 1 for step in range(4))
    for index, (_, sample, _) in enumerate(trainer.data.preferred):
        candidate = next(c for c in candidates if c.text_embedding.shape[1] == sample.text_embedding.shape[0])
        _assert_same_velocity(comfy, trainer, comfy.model, candidate, index=index)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_vace_module_beside_a_t2v_base(comfy, prefix):
    from comfy.model_base import WAN21_Vace
    from comfyui_ipa_pack.nodes.model_identity import base_weights_fingerprint
    from comfyui_ipa_pack.nodes.model_loader import IPALoadWanVaceModule

    from ipa_train.fileio import atomic_save_safetensors, load_safetensors

    tensors, _ = load_safetensors(comfy.unet_path)
    bare = {key.removeprefix("model.diffusion_model."): value for key, value in tensors.items()}
    tag = "prefixed" if prefix else "bare"
    base_name, module_name = f"Wan2_1-T2V-tiny-{tag}.safetensors", f"Wan2_1-VACE_module_tiny-{tag}.safetensors"
    atomic_save_safetensors(comfy.diffusion_models / base_name, {prefix + k: v for k, v in bare.items() if not k.startswith("vace_")})
    atomic_save_safetensors(comfy.diffusion_models / module_name, {prefix + k: v for k, v in bare.items() if k.startswith("vace_")})
    import folder_paths

    folder_paths.filename_list_cache.clear()
    model = IPALoadWanVaceModule.execute(base_name, module_name).args[0]
    assert isinstance(model.model, WAN21_Vace)
    full = comfy.model.model.diffusion_model.state_dict()
    merged = model.model.diffusion_model.state_dict()
    assert set(merged) == set(full) and all(torch.equal(merged[k], full[k]) for k in full)
    assert base_weights_fingerprint(model) == base_weights_fingerprint(comfy.model)
    dataset = f"vace_module_{tag}"
    candidate = _sample(comfy, model, dataset)
    trainer = _trainer(comfy, dataset, base_model=str(comfy.diffusion_models / base_name),
                       vace_module=str(comfy.diffusion_models / module_name))
    assert trainer.reference_warnings == []
    _assert_same_velocity(comfy, trainer, model, candidate)
    with pytest.raises(ValueError, match="is a VACE module, not a base model"):
        IPALoadWanVaceModule.execute(module_name, module_name)


def test_wrappers_are_recorded_except_torch_compile(comfy):
    from comfyui_ipa_pack.nodes.model_identity import describe_patches

    def passthrough(executor, *args, **kwargs):
        return executor(*args, **kwargs)

    compiled = comfy.model.clone()
    compiled.add_wrapper_with_key("apply_model", "torch.compile", passthrough)  # TorchCompileModel: the same function
    assert describe_patches(compiled) == {"sampling_options": ["torch.compile"]}
    wrapped = comfy.model.clone()
    wrapped.add_wrapper_with_key("apply_model", "some_pack", passthrough)
    assert describe_patches(wrapped) == {"model_wrappers": ["apply_model:some_pack"]}
