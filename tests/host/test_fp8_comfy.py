"""fp8 files as stored, against a real ComfyUI (COMFYUI_PATH): a tiny Wan2.1-VACE file written by ComfyUI's own model
class, turned into kijai's plain fp8, ComfyUI's fp8_scaled and its comfy_quant layout, loaded by UNETLoader and asked
for the velocity through the sampler's own conditioning path; the trainer's reference (``load_transformer``, in its
own process without the torchvision stand-in) on the same file gives the same velocity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import requires_comfyui

pytestmark = requires_comfyui

FRAMES, H, W = 3, 4, 6  # latent frames and size


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.comfy_tiny import TinyComfy, load_pack_cpu

    load_pack_cpu()
    tiny = TinyComfy(tmp_path_factory.mktemp("comfy"))
    return tiny


def _inputs():
    g = torch.Generator().manual_seed(7)
    from support.comfy_tiny import text_conditioning

    return dict(
        text=text_conditioning(real=9, seed=2)[0][0],
        vace_frames=torch.randn(1, 32, FRAMES, H, W, generator=g),
        vace_mask=(torch.rand(1, 64, FRAMES, H, W, generator=g) > 0.5).float(),
        strength=0.8,
        x_t=[torch.randn(16, FRAMES, H, W, generator=g) for _ in range(2)],
        sigmas=[0.9, 0.35],
    )


def _comfy_velocities(patcher, inputs):
    """ComfyUI's own prediction (sampler conditioning path, ModelSamplingSD3 shift 8) at the given latents."""
    import comfy.samplers
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    model = ModelSamplingSD3().patch(patcher, 8.0)[0]
    extra = {"vace_frames": [inputs["vace_frames"]], "vace_mask": [inputs["vace_mask"]], "vace_strength": [inputs["strength"]]}
    positive = [[inputs["text"], extra]]
    outputs = []

    def evaluate(model_wrap, x, sigmas_in, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for x_t, sigma in zip(inputs["x_t"], inputs["sigmas"]):
            denoised = model_wrap(x_t.unsqueeze(0).to(x), sigma * s_in, **extra_args)
            outputs.append(((x_t.unsqueeze(0).to(x) - denoised) / sigma)[0].float().cpu())
        return x

    latent = torch.zeros(1, 16, FRAMES, H, W)
    comfy.samplers.sample(model, torch.zeros_like(latent), positive, positive, 1.0, model.load_device,
                          comfy.samplers.KSAMPLER(evaluate), torch.tensor([1.0, 0.0]), model_options=model.model_options,
                          latent_image=latent, seed=0)
    return outputs


def _trainer_velocities(model_files: list[Path], inputs, tmp_path: Path) -> list[torch.Tensor]:
    from comfyui_ipa_pack.ipa_train.wan.latents import vace_context_from_conditioning
    from safetensors.torch import load_file, save_file

    save_file({"x_t": torch.stack(inputs["x_t"]).contiguous(), "sigmas": torch.tensor(inputs["sigmas"]),
               "text": inputs["text"][0].contiguous(),
               "context": vace_context_from_conditioning(inputs["vace_frames"], inputs["vace_mask"]).contiguous(),
               "strength": torch.tensor(inputs["strength"])}, str(tmp_path / "inputs.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no torchvision stand-in for diffusers
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "support" / "trainer_replay.py"), str(tmp_path / "inputs.safetensors"),
                           str(tmp_path / "out.safetensors"), *map(str, model_files)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = load_file(str(tmp_path / "out.safetensors"))
    return [out[f"velocity_{i}"] for i in range(len(model_files))]


def test_fp8_files_give_comfyuis_velocity(comfy, tmp_path):
    import nodes
    from support.fp8_layouts import write_fp8_file

    inputs = _inputs()
    full_velocity = _comfy_velocities(comfy.load_model(), inputs)
    layouts = ("fp8_scaled", "fp8", "comfy_quant")
    files, expected = [], {}
    for layout in layouts:
        name = f"tiny_wan21_vace_{layout}.safetensors"
        write_fp8_file(comfy.unet_path, comfy.diffusion_models / name, layout)
        patcher = nodes.UNETLoader().load_unet(name, "default")[0]
        q = patcher.model.diffusion_model.blocks[0].self_attn.q.weight
        if layout != "fp8":  # ComfyUI keeps these as QuantizedTensor (fp8 data + scale); plain fp8 it upcasts on a small CPU model
            assert type(q).__name__ == "QuantizedTensor" and q._qdata.dtype == torch.float8_e4m3fn
        expected[layout] = _comfy_velocities(patcher, inputs)
        files.append(comfy.diffusion_models / name)
    trainer = dict(zip(layouts, _trainer_velocities(files, inputs, tmp_path)))
    for layout in layouts:
        for sigma, got, want, full in zip(inputs["sigmas"], trainer[layout], expected[layout], full_velocity):
            want, full = want.detach(), full.detach()
            scale = want.abs().max()
            error = float((got - want).abs().max() / scale)
            print(f"{layout} sigma {sigma}: trainer vs ComfyUI relative max error {error:.2e}, "
                  f"fp8 vs full precision {float((want - full).abs().max() / scale):.2e}")
            assert error < 1e-4, f"{layout} sigma {sigma}: {error:.2e}"
            assert (want - full).abs().max() / scale > 1e-3  # the test sees the quantisation
