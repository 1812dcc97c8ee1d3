"""Dynamic VRAM (ComfyUI v0.16+, comfy-aimdo, ``ModelPatcherDynamic``; ``--disable-dynamic-vram`` turns it off) and
the pack's nodes that read or patch model weights: IPA VACE Sampler, IPA LoRA Loader, the base-weights fingerprint
and the reference checks (nodes/model_identity.py, ipa_train/wan/fingerprint.py), IPA Encode Good Video.

What could not run here: the dynamic path itself. v0.28 turns comfy-aimdo on only for NVIDIA CUDA devices (main.py:
``enables_dynamic_vram() and is_nvidia()``; ``comfy.memory_management.aimdo_enabled`` stays False otherwise), and
``ModelPatcherDynamic`` hands a CPU load device to the plain ``ModelPatcher``. So on a CPU machine "on" and "off"
are the same code, and the regressions reported against it (LoRA patches applied twice, weights read outside the
load context) are tested against the classes' contract instead, with the switch in both positions:
  - the switch: on unless disabled (or --cpu), and on the CPU the dynamic class gives the plain patcher;
  - a LoRA from IPA LoRA Loader is applied exactly once, however often the model is loaded (W + delta, not
    W + 2 delta), and taken out again on unload;
  - the fingerprint reads the base weights: the same outside the load context, inside it (LoRA patched in) and after;
  - the sampler's and Encode Good Video's outputs are the same with the switch on and off.
On a host without Dynamic VRAM (v0.8) the first test asserts the switch and the class are absent, and the others run
on the plain patcher. (A CUDA machine would be needed to run the aimdo path; none was available.)"""

from __future__ import annotations

import contextlib

import pytest
import torch

from conftest import requires_comfyui

pytestmark = requires_comfyui

H, W, LENGTH = 16, 16, 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from support.comfy_tiny import TinyComfy, load_pack_cpu, write_tiny_lora

    load_pack_cpu()
    host = TinyComfy(tmp_path_factory.mktemp("dynamic_vram"))
    host.vae = host.load_vae()
    host.lora_path = write_tiny_lora(host.loras / "hands_dyn.safetensors", seed=5)
    return host


def _has_dynamic_vram() -> bool:
    import comfy.model_patcher

    return hasattr(comfy.model_patcher, "ModelPatcherDynamic")


@contextlib.contextmanager
def _switch(on: bool):
    """``--disable-dynamic-vram`` set (off) or not (on), ``--cpu`` cleared, for the duration (args restored)."""
    import comfy.cli_args

    args = comfy.cli_args.args
    saved = {name: getattr(args, name) for name in ("cpu", "disable_dynamic_vram") if hasattr(args, name)}
    try:
        args.cpu = False
        if hasattr(args, "disable_dynamic_vram"):
            args.disable_dynamic_vram = not on
        yield
    finally:
        for name, value in saved.items():
            setattr(args, name, value)


def test_the_switch_and_its_cpu_reroute(tiny):
    import comfy.cli_args
    import comfy.model_patcher

    model = tiny.load_model()
    if not _has_dynamic_vram():
        # v0.8: no Dynamic VRAM at all, neither the option nor the class nor the switch's function
        assert not hasattr(comfy.cli_args.args, "disable_dynamic_vram")
        assert not hasattr(comfy.cli_args, "enables_dynamic_vram")
        return
    import comfy.memory_management

    with _switch(on=True):
        assert comfy.cli_args.enables_dynamic_vram()
    with _switch(on=False):
        assert not comfy.cli_args.enables_dynamic_vram()
    assert comfy.memory_management.aimdo_enabled is False  # no CUDA device: comfy-aimdo was not started
    cpu = torch.device("cpu")
    rerouted = comfy.model_patcher.ModelPatcherDynamic(model.model, cpu, cpu)
    assert type(rerouted) is comfy.model_patcher.ModelPatcher
    assert type(model) is comfy.model_patcher.ModelPatcher  # what UNETLoader gave on this machine


def _weights_through_the_pack(tiny) -> dict:
    """Loads the model, applies the LoRA with IPA LoRA Loader and reads the weights and fingerprints as the pack does,
    outside and inside ComfyUI's load context, loading twice; samples one candidate and encodes one good video."""
    import comfy.model_management
    from comfyui_ipa_pack.nodes.collector import IPAEncodeGoodVideo
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader
    from comfyui_ipa_pack.nodes.model_identity import base_weights_fingerprint

    from support.comfy_tiny import pose_video, reference_image, text_conditioning

    key = "diffusion_model.blocks.0.self_attn.q.weight"
    model = tiny.load_model()
    base = model.model.state_dict()[key].clone()
    patched, _ = IPALoRALoader.execute(model, tiny.lora_path.name, 0.8).args[:2]
    out = {"base": base, "fingerprint_outside": base_weights_fingerprint(patched)}
    comfy.model_management.load_models_gpu([patched])
    out["loaded_once"] = patched.model.state_dict()[key].clone()
    out["fingerprint_inside"] = base_weights_fingerprint(patched)
    comfy.model_management.load_models_gpu([patched], force_full_load=True)
    patched.patch_model()  # a second patch on top of the load must not add the LoRA again
    out["loaded_twice"] = patched.model.state_dict()[key].clone()
    patched.unpatch_model()
    comfy.model_management.unload_all_models()
    out["after_unload"] = model.model.state_dict()[key].clone()
    out["fingerprint_after"] = base_weights_fingerprint(patched)
    from comfyui_ipa_pack.nodes.vace_sampler import IPAVaceSampler

    _, candidates = IPAVaceSampler.execute(
        patched, text_conditioning(seed=3), text_conditioning(real=3, seed=11), tiny.vae, reference_image(H, W),
        pose_video(LENGTH, H, W), W, H, LENGTH, 1, 2.0, 8.0, "euler", "simple", 1, 7, strength=0.8,
    ).args
    out["sampled"] = candidates[0].latent.clone()
    video = pose_video(LENGTH, H, W, seed=9)
    (good,) = IPAEncodeGoodVideo.execute(video, tiny.vae, text_conditioning(seed=3), W, H, LENGTH, 0.8,
                                         reference_image=reference_image(H, W), control_video=pose_video(LENGTH, H, W)).args[0]
    out["encoded"] = good.latent.clone()
    return out


def test_weights_are_read_and_patched_the_same_with_it_on_and_off(tiny):
    from safetensors.torch import load_file

    results = {}
    for on in (True, False):
        with _switch(on):
            results[on] = _weights_through_the_pack(tiny)
    lora = load_file(str(tiny.lora_path))
    prefix = "diffusion_model.blocks.0.self_attn.q"
    up, down, alpha = lora[f"{prefix}.lora_B.weight"], lora[f"{prefix}.lora_A.weight"], float(lora[f"{prefix}.alpha"])
    delta = 0.8 * (alpha / down.shape[0]) * (up @ down)
    for on, out in results.items():
        expected = out["base"] + delta.to(out["base"].dtype)
        assert not torch.equal(out["loaded_once"], out["base"]), on  # the LoRA is in the weights while loaded
        torch.testing.assert_close(out["loaded_once"], expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["loaded_twice"], expected, rtol=1e-4, atol=1e-5)  # once, not twice
        assert torch.equal(out["after_unload"], out["base"]), on
        assert out["fingerprint_outside"] == out["fingerprint_inside"] == out["fingerprint_after"], on
    for name in ("base", "loaded_once", "loaded_twice", "sampled", "encoded"):
        assert torch.equal(results[True][name], results[False][name]), name
    assert results[True]["fingerprint_outside"] == results[False]["fingerprint_outside"]
