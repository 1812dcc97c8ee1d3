"""Tiny random-weight Wan2.2-Animate models in ComfyUI's layout (``comfy.ldm.wan.model_animate.AnimateWanModel``), for
tests that load them in real ComfyUI (``UNETLoader`` detects WAN22_Animate) and in the trainer (diffusers'
``WanAnimateTransformer3DModel`` through ``ipa_train.wan.animate.load_animate_transformer``). Nothing is downloaded.

The motion encoder (face video 512x512 -> 512-d features) and the face encoder (1024-wide, 4 heads) have fixed sizes in
ComfyUI, so even the tiny model carries about 35 M parameters there; the transformer itself is tiny (one 128-wide head,
ComfyUI derives heads as width // 128). Five blocks give one face-adapter block (ComfyUI: one every 5 blocks)."""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_DIM = 4096  # ComfyUI does not detect the text width: it assumes Wan's 4096
CLIP_DIM = 1280  # CLIP-vision (ViT-H) penultimate width: ComfyUI's img_emb is MLPProj(1280, dim)
TINY_ANIMATE_DIT = dict(dim=128, ffn_dim=256, num_heads=1, num_layers=5, in_dim=36, out_dim=16)
FACE_SIZE = 512  # the motion encoder's fixed input size


def _randomize(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("gamma") or "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel() if param.dim() > 1 else param.numel()
                param.copy_(torch.randn(param.shape, generator=generator) / max(fan_in, 1) ** 0.5)


def tiny_animate_state_dict(seed: int = 0) -> dict:
    """A tiny ``AnimateWanModel`` state dict with ``model.diffusion_model.`` keys (ComfyUI's repackaged layout)."""
    import comfy.ldm.wan.model_animate
    import comfy.ops

    with torch.inference_mode(False):
        model = comfy.ldm.wan.model_animate.AnimateWanModel(text_dim=TEXT_DIM, operations=comfy.ops.disable_weight_init,
                                                            **TINY_ANIMATE_DIT)
        _randomize(model, seed)
        return {f"model.diffusion_model.{k}": v.detach().float().contiguous() for k, v in model.state_dict().items()}


def write_tiny_animate(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    state = tiny_animate_state_dict(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_tiny_animate_lora(path: Path, seed: int = 0, rank: int = 4, alpha: float = 2.0) -> Path:
    """A LoRA on the tiny model's main-block self-attention q, k and v, in ComfyUI's native layout, non-zero."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    dim = TINY_ANIMATE_DIT["dim"]
    state = {}
    for block in range(TINY_ANIMATE_DIT["num_layers"]):
        for proj in ("q", "k", "v"):
            base = f"diffusion_model.blocks.{block}.self_attn.{proj}"
            state[f"{base}.lora_A.weight"] = torch.randn(rank, dim, generator=generator) * 0.2
            state[f"{base}.lora_B.weight"] = torch.randn(dim, rank, generator=generator) * 0.2
            state[f"{base}.alpha"] = torch.tensor(alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
