"""The study world's small pretrained models: their configs, and where their weights live.

``weights/`` holds what ``python -m ipa_train.study pretrain`` wrote: ``vae.safetensors`` (diffusers'
``AutoencoderKLWan``) and ``transformer.safetensors`` (the VACE transformer in the original Wan single-file layout,
what ComfyUI users keep and what the trainer loads), each with its ``*.json`` config, and ``text_embedding.safetensors``
(the fixed text condition) and ``pretrain.json`` (the run's settings and figures).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WEIGHTS = Path(__file__).resolve().parent / "weights"
VAE_FILE = "vae.safetensors"
TRANSFORMER_FILE = "transformer.safetensors"
TEXT_FILE = "text_embedding.safetensors"

# Wan's layout (16 latent channels, x8 spatial by three downsamplings, x4 causal temporal), made small.
VAE_CONFIG = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16, text_dim=32,
    freq_dim=64, ffn_dim=384, num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    vace_layers=[0, 2], vace_in_channels=96,
)
TEXT_TOKENS = 16  # the fixed prompt: real rows only (the pipeline pads nothing when prompt_embeds are given)


def to_model_video(frames_u8) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 (numpy) -> ``[1, 3, T, H, W]`` in -1..1 (the VAE's input range)."""
    return torch.from_numpy(frames_u8).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def decode_frames(vae, z: torch.Tensor):
    """Raw (unnormalised) latent -> ``[T, H, W, 3]`` float 0..1 numpy frames."""
    video = vae.decode(z).sample[0].clamp(-1, 1)
    return ((video.permute(1, 2, 3, 0) + 1) / 2).numpy()


class MissingWeights(FileNotFoundError):
    pass


def build_vae(seed: int = 0, config: dict | None = None):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**(config or VAE_CONFIG))


def build_transformer(seed: int = 0):
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(seed)
    return WanVACETransformer3DModel(**TRANSFORMER_CONFIG)


def text_embedding(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, TEXT_TOKENS, TRANSFORMER_CONFIG["text_dim"], generator=generator)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise MissingWeights(f"{path} is missing: run `python -m ipa_train.study pretrain` to make the study's weights")
    return path


def save_vae(vae, folder: Path = WEIGHTS) -> None:
    from ..fileio import atomic_save_safetensors, atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(folder / VAE_FILE, {k: v.detach().contiguous() for k, v in vae.state_dict().items()})
    atomic_write_json(folder / "vae.json", dict(vae.config))


def load_vae(folder: Path = WEIGHTS):
    from safetensors.torch import load_file

    config = json.loads(_require(folder / "vae.json").read_text())
    vae = build_vae(0, {k: v for k, v in config.items() if not k.startswith("_")})
    vae.load_state_dict(load_file(_require(folder / VAE_FILE)))
    return vae.eval()


def load_text_embedding(folder: Path = WEIGHTS) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(_require(folder / TEXT_FILE))["text_embedding"]


def load_transformer(folder: Path = WEIGHTS):
    """The pretrained transformer through the pack's own model loader (the path the trainer takes)."""
    from ..wan.model import load_transformer as load

    return load(_require(folder / TRANSFORMER_FILE)).eval()


def build_pipeline(transformer, vae, shift: float = 3.0):
    """diffusers' ``WanVACEPipeline`` over the study's models (no text encoder: the fixed embedding goes in)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline

    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                           transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
