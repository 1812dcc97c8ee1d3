"""The memory of Wan2.2-Animate's own parts, for the planner (``plan.py``), measured like the blocks are
(``memory_trace.py``: the real diffusers modules on the meta device, bytes counted by ``LiveBytes``):

- ``motion encoder``: the face video (``[T, 3, 512, 512]``) runs through the motion encoder in chunks of
  ``motion_encoder_batch_size`` frames before the blocks, without a graph (its weights are frozen and its input needs
  no gradient): its forward peak on one chunk, and the face pixels themselves (float32) as an input;
- ``face adapter``: a cross-attention from the video tokens to the face motion tokens after every 5th block. diffusers
  calls it outside the blocks' gradient checkpoints, so with a gradient each one keeps its saved activations until
  the backward pass reaches it, checkpointing or not: ``saved`` bytes per face-adapter block, times their count;
- the image tokens (CLIP-vision, 257) the cross-attention reads before the text, and the pose latents as inputs.

The parameters of these parts (motion encoder, face encoder, face adapter, pose patch embedding) are in the weights
term already: the planner counts every parameter of the model built on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ANIMATE_CLASS = "WanAnimateTransformer3DModel"
IMAGE_TOKENS = 257  # CLIP ViT-H/14 penultimate states of a 224x224 image: 16 x 16 patches + the class token
FACE_PIXELS_PER_LATENT_FRAME = 4  # the face video has one frame per video frame: 4 per latent frame (Wan's VAE)


def is_animate(config: dict) -> bool:
    return config.get("_class_name") == ANIMATE_CLASS or "inject_face_latents_blocks" in config


@dataclass
class AnimateMemory:
    motion_encoder_peak: int  # one chunk of face frames through the motion encoder (no graph)
    face_block_saved: int  # one face-adapter block's activations kept for the backward pass
    face_block_peak: int  # one face-adapter block's forward peak without a graph (the reference)
    face_blocks: int
    inputs: int  # face pixels (float32), pose latents, image embedding


def face_frames(latent_frames: int, ref_frames: int = 1) -> int:
    """Face video frames for ``latent_frames`` (the reference frame(s) included): ``4 (F - ref) - 3``."""
    return max(1, FACE_PIXELS_PER_LATENT_FRAME * (latent_frames - ref_frames) - 3)


def animate_memory(config: dict, batch: int, frames: int, height: int, width: int, tokens: int, dtype: torch.dtype) -> AnimateMemory:
    """The Animate terms for a batch of ``batch`` samples of ``frames`` latent frames (``height x width`` latent)."""
    a = torch.tensor([], dtype=dtype).element_size()
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    face = face_frames(frames)
    motion_tokens = frames  # the face encoder's tokens, aligned to the latent frames (one zero frame in front)
    saved, peak = _trace_face_block(config, batch, tokens, motion_tokens, dtype)
    size = config["motion_encoder_size"]
    inputs = (batch * 3 * face * size * size * 4 + batch * config["latent_channels"] * (frames - 1) * height * width * a
              + batch * IMAGE_TOKENS * (config["image_dim"] + dim) * a)
    return AnimateMemory(
        motion_encoder_peak=_trace_motion_encoder(config, min(config["motion_encoder_batch_size"], batch * face), dtype),
        face_block_saved=saved, face_block_peak=peak, face_blocks=config["num_layers"] // config["inject_face_latents_blocks"],
        inputs=inputs,
    )


_CACHE: dict = {}


def _trace_face_block(config: dict, batch: int, tokens: int, motion_tokens: int, dtype: torch.dtype) -> tuple[int, int]:
    from diffusers.models.transformers.transformer_wan_animate import (
        WanAnimateFaceBlockAttnProcessor,
        WanAnimateFaceBlockCrossAttention,
    )

    from .memory_trace import LiveBytes, flash_attention_memory

    key = ("face", config["num_attention_heads"], config["attention_head_dim"], batch, tokens, motion_tokens, str(dtype))
    if key in _CACHE:
        return _CACHE[key]
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    dim = heads * head_dim
    with torch.device("meta"):
        block = WanAnimateFaceBlockCrossAttention(dim=dim, heads=heads, dim_head=head_dim, eps=config["eps"],
                                                  cross_attention_dim_head=head_dim, processor=WanAnimateFaceBlockAttnProcessor())
        block.to(dtype).requires_grad_(False)
        hidden = torch.empty(batch, tokens, dim, dtype=dtype, requires_grad=True)
        motion = torch.empty(batch, motion_tokens, config["face_encoder_num_heads"] + 1, dim, dtype=dtype)
    with flash_attention_memory():
        mode = LiveBytes()
        with mode:
            out = block(hidden, motion)
            saved = mode.live - out.untyped_storage().nbytes()
            del out
        mode = LiveBytes()
        with torch.no_grad(), mode:
            out = block(hidden, motion)
            del out
    _CACHE[key] = (saved, mode.peak)
    return _CACHE[key]


def _trace_motion_encoder(config: dict, frames: int, dtype: torch.dtype) -> int:
    """Forward peak of the motion encoder on ``frames`` face frames, up to its last convolution (the linear layers and
    the 20-direction projection after it are tiny)."""
    from diffusers.models.transformers.transformer_wan_animate import WanAnimateMotionEncoder

    from .memory_trace import LiveBytes

    key = ("motion", config["motion_encoder_size"], config["motion_style_dim"], frames, str(dtype))
    if key in _CACHE:
        return _CACHE[key]
    size = config["motion_encoder_size"]
    with torch.device("meta"):
        encoder = WanAnimateMotionEncoder(size=size, style_dim=config["motion_style_dim"], motion_dim=config["motion_dim"],
                                          out_dim=config["motion_encoder_dim"], channels=config.get("motion_encoder_channel_sizes"))
        encoder.to(dtype)
        image = torch.empty(frames, 3, size, size, dtype=dtype)
    mode = LiveBytes()
    with torch.no_grad(), mode:
        x = encoder.conv_in(image)
        for block in encoder.res_blocks:
            x = block(x)
        x = encoder.conv_out(x)
        del x
    _CACHE[key] = mode.peak
    return mode.peak
