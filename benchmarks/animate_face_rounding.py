"""What storing Wan2.2-Animate's face pixels in a smaller dtype does to the velocity (needs COMFYUI_PATH: the tiny
Animate file is written with ComfyUI's own AnimateWanModel class; nothing is downloaded):

    COMFYUI_PATH=... PYTHONPATH=<torchvision stand-ins> python benchmarks/animate_face_rounding.py

A face video as WanAnimateToVideo makes it (8-bit frames, ``common_upscale(..., 512, 512, "area", "center") * 2 - 1``)
goes through the trainer's ``animate_velocity`` on the tiny random-weight model in float32, as is and rounded to
float16 (what the dataset stores), bfloat16 and 8 bits; printed: the largest pixel change and the relative velocity
change at two flow times, next to how much the face video moves the velocity at all (all -1, the negative's). The
tiny builder's motion encoder weights are rescaled to unit variance first (EqualConv2d / EqualLinear scale them
themselves): as written, its output does not depend on the face video, which would hide any effect.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def face_video(frames: int, generator: torch.Generator) -> torch.Tensor:
    """[1, 3, T, 512, 512] in -1..1: smooth 8-bit frames area-resized as WanAnimateToVideo resizes the face video."""
    import comfy.utils

    low = torch.rand(frames, 3, 24, 24, generator=generator)
    video = torch.nn.functional.interpolate(low, size=(300, 280), mode="bilinear", align_corners=False)
    video = (video * 255).round() / 255
    face = comfy.utils.common_upscale(video, 512, 512, "area", "center") * 2.0 - 1.0
    return face.movedim(0, 1).unsqueeze(0)


def main() -> None:
    from support.comfy_tiny import load_pack_cpu

    load_pack_cpu()
    from ipa_train.wan.animate import AnimateInputs, animate_velocity, load_animate_transformer
    from support.animate_tiny import write_tiny_animate

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        model = load_animate_transformer(write_tiny_animate(Path(folder) / "tiny_animate.safetensors"), torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, parameter in model.motion_encoder.named_parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    generator = torch.Generator().manual_seed(0)
    frames, height, width, latent_frames = 5, 4, 6, 3
    face = face_video(frames, generator)
    inputs = dict(concat_latent=torch.randn(1, 20, latent_frames, height, width, generator=generator),
                  pose_latent=torch.randn(1, 16, latent_frames - 1, height, width, generator=generator),
                  image_embedding=torch.randn(1, 257, 1280, generator=generator) * 0.5)
    text = torch.zeros(1, 512, 4096)
    text[:, :7] = torch.randn(1, 7, 4096, generator=generator) * 0.2
    x0, noise = (torch.randn(1, 16, latent_frames, height, width, generator=generator) for _ in range(2))
    variants = {"float16": face.half().float(), "bfloat16": face.bfloat16().float(),
                "uint8": ((face + 1) / 2 * 255).round() / 255 * 2 - 1, "all -1 (no face)": torch.full_like(face, -1.0)}
    print("largest pixel change:", {name: f"{float((value - face).abs().max()):.2e}" for name, value in variants.items()})
    with torch.no_grad():
        for t in (0.5, 0.9):
            x_t = (1 - t) * x0 + t * noise
            reference = animate_velocity(model, x_t, torch.tensor([t]), text, AnimateInputs(face_pixels=face, **inputs))
            changes = {}
            for name, value in variants.items():
                velocity = animate_velocity(model, x_t, torch.tensor([t]), text, AnimateInputs(face_pixels=value, **inputs))
                changes[name] = f"{float((velocity - reference).norm() / reference.norm()):.2e}"
            print(f"t = {t}: relative velocity change {changes}")


if __name__ == "__main__":
    main()
