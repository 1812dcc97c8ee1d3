"""Wan2.1 latent space conventions shared by the collector, the trainer and the parity test.

ComfyUI's sampler returns *raw* VAE latents (``LATENT["samples"]``) and keeps the VACE control latents raw in
the conditioning (``vace_frames``); the model normalises both on the way in with Wan2.1's per-channel
constants (``comfy.latent_formats.Wan21.process_in``, identical to diffusers' ``AutoencoderKLWan`` config
``latents_mean`` / ``latents_std``). The dataset stores what the transformer sees, so the trainer never needs
the VAE: ``x0 = (samples - mean) / std`` and the 96-channel VACE context
``cat([norm(inactive), norm(reactive), mask])``.
"""

from __future__ import annotations

import torch

LATENT_CHANNELS = 16
VACE_MASK_CHANNELS = 64
VACE_CONTEXT_CHANNELS = 2 * LATENT_CHANNELS + VACE_MASK_CHANNELS  # 96
TEXT_TOKENS = 512  # UMT5 sequence length the Wan text embedder was trained with (zero rows after EOS)

WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


def _stats(latent: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    if latent.shape[channel_dim] != LATENT_CHANNELS:
        raise ValueError(
            f"expected {LATENT_CHANNELS} latent channels at dim {channel_dim}, got shape {tuple(latent.shape)}; "
            "is this a Wan2.1 latent (Wan2.2's 5B VAE has 48 channels and is not supported)?"
        )
    shape = [1] * latent.dim()
    shape[channel_dim] = LATENT_CHANNELS
    mean = torch.tensor(WAN21_LATENTS_MEAN, dtype=latent.dtype, device=latent.device).view(shape)
    std = torch.tensor(WAN21_LATENTS_STD, dtype=latent.dtype, device=latent.device).view(shape)
    return mean, std


def normalize_latent(latent: torch.Tensor, channel_dim: int = -4) -> torch.Tensor:
    """Raw VAE latent -> model input space: ``(z - mean) / std`` per channel (``[..., 16, F, h, w]``)."""
    mean, std = _stats(latent, channel_dim)
    return (latent - mean) / std


def denormalize_latent(latent: torch.Tensor, channel_dim: int = -4) -> torch.Tensor:
    """Model input space -> raw VAE latent (what ComfyUI's ``VAEDecode`` expects)."""
    mean, std = _stats(latent, channel_dim)
    return latent * std + mean


def vace_context_from_conditioning(vace_frames: torch.Tensor, vace_mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI's raw VACE conditioning -> the 96-channel context both transformers take.

    ``vace_frames`` ``[1, 32, F, h, w]`` (raw inactive and reactive latents, reference frames in front),
    ``vace_mask`` ``[1, 64, F, h, w]``. Returns ``[96, F, h, w]`` float32: normalised inactive (16),
    normalised reactive (16), mask (64), in the order of ``comfy.model_base.WAN21_Vace.extra_conds`` and
    diffusers' ``WanVACEPipeline.prepare_video_latents`` + ``prepare_masks``.
    """
    if vace_frames.dim() == 4:
        vace_frames = vace_frames.unsqueeze(0)
    if vace_mask.dim() == 4:
        vace_mask = vace_mask.unsqueeze(0)
    if vace_frames.dim() != 5 or vace_frames.shape[0] != 1 or vace_frames.shape[1] != 2 * LATENT_CHANNELS:
        raise ValueError(f"vace_frames must be [1, 32, F, h, w], got {tuple(vace_frames.shape)}")
    if vace_mask.dim() != 5 or vace_mask.shape[0] != 1 or vace_mask.shape[1] != VACE_MASK_CHANNELS:
        raise ValueError(f"vace_mask must be [1, 64, F, h, w], got {tuple(vace_mask.shape)}")
    if vace_frames.shape[2:] != vace_mask.shape[2:]:
        raise ValueError(f"vace_frames {tuple(vace_frames.shape)} and vace_mask {tuple(vace_mask.shape)} differ in frames/size")
    frames = vace_frames[0].float()
    inactive = normalize_latent(frames[:LATENT_CHANNELS], channel_dim=0)
    reactive = normalize_latent(frames[LATENT_CHANNELS:], channel_dim=0)
    return torch.cat([inactive, reactive, vace_mask[0].float()], dim=0)


def text_length(embedding: torch.Tensor) -> int:
    """Number of rows up to the last non-zero one (ComfyUI and diffusers zero the rows after EOS)."""
    nonzero = (embedding.abs().sum(dim=-1) != 0).nonzero()
    return int(nonzero[-1]) + 1 if nonzero.numel() else 1
