"""What one sample holds: its tensors (safetensors, no pickle anywhere), and the shape checks between them.

``F`` latent frames including ``ref_frames``::

    latent          [16, F, h, w]      clean latent x0 in the model's input space (after Wan's latent normalisation)
    vace_context    [96, F, h, w]      VACE context: normalised inactive (16) + reactive (16) latents, 64 mask channels
    text_embedding  [L, D]             text encoder output (ComfyUI's conditioning tensor, 512 tokens as stored)
    text_length     []  int64          number of real (non-padding) tokens
    hand_mask       [1, F - ref_frames, h, w]  latent hand mask in [0, 1] (zeros when the video has no hands)
    ref_frames      []  int64          number of reference-image latent frames at the front of ``latent``
    vace_strength   []  float32        VACE strength used when sampling (control_hidden_states_scale)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from .layout import DatasetError

LATENT_CHANNELS = 16
VACE_CHANNELS = 96


@dataclass
class SampleTensors:
    latent: torch.Tensor
    vace_context: torch.Tensor
    text_embedding: torch.Tensor
    hand_mask: torch.Tensor
    ref_frames: int = 1
    vace_strength: float = 1.0
    text_length: Optional[int] = None

    def to_dict(self) -> dict[str, torch.Tensor]:
        text_length = self.text_embedding.shape[0] if self.text_length is None else self.text_length
        return {
            "latent": self.latent,
            "vace_context": self.vace_context,
            "text_embedding": self.text_embedding,
            "text_length": torch.tensor(int(text_length), dtype=torch.int64),
            "hand_mask": self.hand_mask,
            "ref_frames": torch.tensor(int(self.ref_frames), dtype=torch.int64),
            "vace_strength": torch.tensor(float(self.vace_strength), dtype=torch.float32),
        }

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor], sample: str = "?") -> "SampleTensors":
        required = ("latent", "vace_context", "text_embedding", "hand_mask", "ref_frames")
        missing = [key for key in required if key not in tensors]
        if missing:
            raise DatasetError(f"sample {sample}: tensors file lacks {missing}; re-collect this sample")
        return cls(
            latent=tensors["latent"],
            vace_context=tensors["vace_context"],
            text_embedding=tensors["text_embedding"],
            hand_mask=tensors["hand_mask"],
            ref_frames=int(tensors["ref_frames"]),
            vace_strength=float(tensors["vace_strength"]) if "vace_strength" in tensors else 1.0,
            text_length=int(tensors["text_length"]) if "text_length" in tensors else None,
        )


def validate_sample_tensors(tensors: SampleTensors, sample: str = "?") -> None:
    """Checks every tensor's shape against the others; the error names the sample and the mismatch."""
    latent, context, text, mask = tensors.latent, tensors.vace_context, tensors.text_embedding, tensors.hand_mask

    def fail(message: str) -> None:
        raise DatasetError(f"sample {sample}: {message}")

    if latent.dim() != 4 or latent.shape[0] != LATENT_CHANNELS:
        fail(f"latent must be [{LATENT_CHANNELS}, F, h, w], got {tuple(latent.shape)}")
    _, frames, height, width = latent.shape
    if context.dim() != 4 or context.shape[0] != VACE_CHANNELS:
        fail(f"vace_context must be [{VACE_CHANNELS}, F, h, w], got {tuple(context.shape)}")
    if tuple(context.shape[1:]) != (frames, height, width):
        fail(f"vace_context frames/size {tuple(context.shape[1:])} differ from the latent's {(frames, height, width)}")
    if not 0 <= tensors.ref_frames < frames:
        fail(f"ref_frames={tensors.ref_frames} must be below the latent frame count {frames}")
    expected_mask = (1, frames - tensors.ref_frames, height, width)
    if tuple(mask.shape) != expected_mask:
        fail(f"hand_mask must be {expected_mask} (latent frames minus {tensors.ref_frames} reference frames), got {tuple(mask.shape)}")
    if text.dim() != 2 or text.shape[0] < 1:
        fail(f"text_embedding must be [tokens, dim], got {tuple(text.shape)}")
    if tensors.text_length is not None and not 0 < tensors.text_length <= text.shape[0]:
        fail(f"text_length={tensors.text_length} is outside 1..{text.shape[0]}")
    for name, value in (("latent", latent), ("vace_context", context), ("text_embedding", text), ("hand_mask", mask)):
        if not value.is_floating_point():
            fail(f"{name} must be a floating-point tensor, got {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            fail(f"{name} contains NaN or infinite values")
