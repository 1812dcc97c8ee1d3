"""Wan2.1-VACE transformer construction and loading (diffusers' ``WanVACETransformer3DModel``)."""

from __future__ import annotations

import torch

# diffusers' own tiny test configuration of the VACE transformer: same classes and module layout as the real
# models, random weights, fast on CPU. Used by tests, the demo and benchmarks; never downloads anything.
TINY_VACE_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=3,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
    vace_layers=[0, 2],
    vace_in_channels=96,
)


def build_tiny_transformer(seed: int = 0, **overrides):
    """A tiny random-weight ``WanVACETransformer3DModel`` (float32, eval mode)."""
    from diffusers import WanVACETransformer3DModel

    config = {**TINY_VACE_CONFIG, **overrides}
    torch.manual_seed(seed)
    model = WanVACETransformer3DModel(**config)
    return model.eval()
