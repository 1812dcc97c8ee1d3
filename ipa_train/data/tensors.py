"""What one sample holds: its tensors (safetensors, no pickle anywhere), and the shape checks between them.

``F`` latent frames including ``ref_frames``::

    latent          [16, F, h, w]      clean latent x0 in the model's input space (after Wan's latent normalisation)
    vace_context    [96, F, h, w]      VACE context: normalised inactive (16) + reactive (16) latents, 64 mask channels
    text_embedding  [L, D]             text encoder output (ComfyUI's conditioning tensor, 512 tokens as stored)
    text_length     []  int64          number of real (non-padding) tokens
    hand_mask       [1, F - ref_frames, h, w]  latent hand mask in [0, 1] (zeros when the video has no hands)
    ref_frames      []  int64          number of reference-image latent frames at the front of ``latent``
    vace_strength   []  float32        VACE strength used when sampling (control_hidden_states_scale)

A Wan2.2-Animate sample (``model_type`` "wan_animate") holds, instead of ``vace_context`` and ``vace_strength``,
what ComfyUI's ``AnimateWanModel`` was given (``WAN22_Animate.extra_conds``, the positive side)::

    concat_latent   [20, F, h, w]      c_concat: 4 mask channels + the normalised reference/background latent
    pose_latent     [16, F - 1, h, w]  pose_latents (normalised), added to latent frames 1.. by the model
    face_pixels     [3, T, 512, 512]   face_pixel_values in -1..1, stored as float16 (README: what the rounding does)
    image_embedding [N, D]             clip_fea: CLIP-vision penultimate hidden states of the reference image

``model_type`` itself is not a tensor: ``meta.json`` and the manifest line carry it, and the tensor keys decide it
on load (a file with ``concat_latent`` is an Animate sample). Files without it are VACE samples, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from .layout import DatasetError

LATENT_CHANNELS = 16
VACE_CHANNELS = 96
ANIMATE_CONCAT_CHANNELS = 20
FACE_SIZE = 512
FACE_PIXELS_DTYPE = torch.float16  # half the size of float32 (121 MB for 77 frames); the README gives its effect

MODEL_TYPE_VACE = "wan_vace"
MODEL_TYPE_ANIMATE = "wan_animate"
MODEL_TYPES = (MODEL_TYPE_VACE, MODEL_TYPE_ANIMATE)
ANIMATE_KEYS = ("concat_latent", "pose_latent", "face_pixels", "image_embedding")


@dataclass
class AnimateTensors:
    """What a Wan2.2-Animate sample adds (see the module's docstring), each without a batch dim."""

    concat_latent: torch.Tensor
    pose_latent: torch.Tensor
    face_pixels: torch.Tensor
    image_embedding: torch.Tensor


@dataclass
class SampleTensors:
    latent: torch.Tensor
    vace_context: Optional[torch.Tensor]  # None for an Animate sample
    text_embedding: torch.Tensor
    hand_mask: torch.Tensor
    ref_frames: int = 1
    vace_strength: float = 1.0
    text_length: Optional[int] = None
    animate: Optional[AnimateTensors] = None

    @property
    def model_type(self) -> str:
        return MODEL_TYPE_ANIMATE if self.animate is not None else MODEL_TYPE_VACE

    def to_dict(self) -> dict[str, torch.Tensor]:
        text_length = self.text_embedding.shape[0] if self.text_length is None else self.text_length
        out = {
            "latent": self.latent,
            "text_embedding": self.text_embedding,
            "text_length": torch.tensor(int(text_length), dtype=torch.int64),
            "hand_mask": self.hand_mask,
            "ref_frames": torch.tensor(int(self.ref_frames), dtype=torch.int64),
        }
        if self.animate is None:
            out["vace_context"] = self.vace_context
            out["vace_strength"] = torch.tensor(float(self.vace_strength), dtype=torch.float32)
        else:
            out.update({key: getattr(self.animate, key) for key in ANIMATE_KEYS})
        return out

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor], sample: str = "?") -> "SampleTensors":
        animate = "concat_latent" in tensors
        required = ("latent", "text_embedding", "hand_mask", "ref_frames") + (ANIMATE_KEYS if animate else ("vace_context",))
        missing = [key for key in required if key not in tensors]
        if missing:
            raise DatasetError(f"sample {sample}: tensors file lacks {missing}; re-collect this sample")
        return cls(
            latent=tensors["latent"],
            vace_context=None if animate else tensors["vace_context"],
            text_embedding=tensors["text_embedding"],
            hand_mask=tensors["hand_mask"],
            ref_frames=int(tensors["ref_frames"]),
            vace_strength=float(tensors["vace_strength"]) if "vace_strength" in tensors else 1.0,
            text_length=int(tensors["text_length"]) if "text_length" in tensors else None,
            animate=AnimateTensors(**{key: tensors[key] for key in ANIMATE_KEYS}) if animate else None,
        )


def validate_sample_tensors(tensors: SampleTensors, sample: str = "?") -> None:
    """Checks every tensor's shape against the others; the error names the sample and the mismatch."""
    latent, context, text, mask = tensors.latent, tensors.vace_context, tensors.text_embedding, tensors.hand_mask

    def fail(message: str) -> None:
        raise DatasetError(f"sample {sample}: {message}")

    if latent.dim() != 4 or latent.shape[0] != LATENT_CHANNELS:
        fail(f"latent must be [{LATENT_CHANNELS}, F, h, w], got {tuple(latent.shape)}")
    _, frames, height, width = latent.shape
    if tensors.animate is not None:
        _validate_animate(tensors.animate, frames, height, width, tensors.ref_frames, fail)
    elif context is None or context.dim() != 4 or context.shape[0] != VACE_CHANNELS:
        fail(f"vace_context must be [{VACE_CHANNELS}, F, h, w], got {None if context is None else tuple(context.shape)}")
    elif tuple(context.shape[1:]) != (frames, height, width):
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
    checked = {"latent": latent, "vace_context": context, "text_embedding": text, "hand_mask": mask}
    if tensors.animate is not None:
        checked = {key: value for key, value in checked.items() if key != "vace_context"}
        checked.update({key: getattr(tensors.animate, key) for key in ANIMATE_KEYS})
    for name, value in checked.items():
        if not value.is_floating_point():
            fail(f"{name} must be a floating-point tensor, got {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            fail(f"{name} contains NaN or infinite values")


def _validate_animate(animate: AnimateTensors, frames: int, height: int, width: int, ref_frames: int, fail) -> None:
    """The Animate tensors against the latent: ``AnimateWanModel`` adds pose latent k to latent frame k + 1, so the
    pose must cover the frames after the single reference frame."""
    concat, pose, face, image = animate.concat_latent, animate.pose_latent, animate.face_pixels, animate.image_embedding
    if ref_frames != 1:
        fail(f"an Animate sample has one reference latent frame (the model adds the pose from frame 1 on), got ref_frames={ref_frames}")
    if tuple(concat.shape) != (ANIMATE_CONCAT_CHANNELS, frames, height, width):
        fail(f"concat_latent must be {(ANIMATE_CONCAT_CHANNELS, frames, height, width)} (the latent's frames and size), got {tuple(concat.shape)}")
    if tuple(pose.shape) != (LATENT_CHANNELS, frames - 1, height, width):
        fail(f"pose_latent must be {(LATENT_CHANNELS, frames - 1, height, width)} (one frame per video latent frame), got {tuple(pose.shape)}")
    if face.dim() != 4 or face.shape[0] != 3 or tuple(face.shape[2:]) != (FACE_SIZE, FACE_SIZE) or face.shape[1] < 1:
        fail(f"face_pixels must be [3, T, {FACE_SIZE}, {FACE_SIZE}], got {tuple(face.shape)}")
    if image.dim() != 2:
        fail(f"image_embedding must be [tokens, dim] (CLIP-vision hidden states), got {tuple(image.shape)}")
