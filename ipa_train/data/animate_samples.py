"""Wan2.2-Animate candidates into dataset samples (``model_type`` "wan_animate").

An :class:`AnimateCandidate` holds what ComfyUI's ``AnimateWanModel`` was given while one seed was sampled (the
positive side of ``WAN22_Animate.extra_conds``: ``c_concat``, ``pose_latents``, ``face_pixel_values``,
``clip_fea``), taken from the sampler's own model call, so nothing is rebuilt here. Only the sampled latent is
normalised, with the Wan2.1 constants the model's ``process_latent_in`` uses.

How the pose video drives the frames, and so where the hand mask goes (``WanAnimateToVideo`` and
``AnimateWanModel.after_patch_embedding``, v0.8.0 and v0.28.0):

- the pose video is cut at ``video_frame_offset``, fitted to ``width x height`` with ``common_upscale("area",
  "center")`` (a centre crop: ``hands.pose_to_hand_masks(resize="crop")`` maps keypoints the same way), cut to
  ``length`` frames and padded with its last frame when shorter;
- the VAE encodes it causally (pose latent 0 <- pose frame 0, pose latent k <- pose frames 4k-3..4k), and the model
  adds pose latent k to latent frame k + 1, the frames after the single reference frame: the same mapping as the
  video frames' own latents, so the hand mask of video frames 0..length-1 is ``hands.latent_hand_mask`` of the
  pose's hand masks;
- the reference frame has no hand mask (weight 1, like VACE's); the latent frames of ``continue_motion`` frames
  (given, not generated: their ``concat_mask`` is 0) get no hand weighting either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..wan.latents import normalize_latent, text_length
from .hand_masks import SampledFrames, latent_mask_from_pixels
from .tensors import FACE_PIXELS_DTYPE, MODEL_TYPE_ANIMATE, AnimateTensors, SampleTensors


@dataclass
class AnimateCandidate(SampledFrames):
    """One video sampled by ComfyUI's Wan2.2-Animate model, with its inputs as the diffusion model had them."""

    latent: torch.Tensor  # [1, 16, F, h, w] raw sampler output, before TrimVideoLatent
    trim_latent: int  # reference latent frames at the front (WanAnimateToVideo's trim_latent): 1
    concat_latent: torch.Tensor  # [1, 20, F, h, w] c_concat as the model got it
    pose_latent: torch.Tensor  # [1, 16, F - 1, h, w] pose_latents as the model got it (normalised)
    face_pixels: torch.Tensor  # [1, 3, T, 512, 512] the positive's face_pixel_values, -1..1
    image_embedding: torch.Tensor  # [1, N, D] clip_fea
    text_embedding: torch.Tensor  # [1, L, D] positive conditioning tensor
    motion_latent_frames: int = 0  # video latent frames given by continue_motion (not generated)
    pose_frame_offset: int = 0  # video_frame_offset: the first pose / face frame used
    frames: Optional[torch.Tensor] = None  # [T, H, W, 3] decoded video frames (after trimming), 0..1
    seed: Optional[int] = None
    sigmas: Optional[list[float]] = None
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "ipa_animate_sampler"
    model_type: str = MODEL_TYPE_ANIMATE


def animate_pose_frames(pose_keypoint: Any, offset: int, length: int) -> list:
    """The POSE_KEYPOINT frames behind video frames 0..length-1, chosen as ``WanAnimateToVideo`` chooses the pose
    video's frames: from ``offset`` on, cut to ``length``, padded with the last frame when shorter."""
    if isinstance(pose_keypoint, dict):
        pose_keypoint = [pose_keypoint]
    frames = list(pose_keypoint or [])
    if len(frames) <= offset:
        raise ValueError(
            f"the pose keypoints have {len(frames)} frames but video_frame_offset is {offset}: WanAnimateToVideo then drops "
            "the pose video, and the hands have no keypoints. Give keypoints of the whole pose video"
        )
    frames = frames[offset : offset + length]
    return frames + [frames[-1]] * (length - len(frames))


def animate_candidate_tensors(candidate: AnimateCandidate, pixel_hand_masks: Optional[torch.Tensor] = None) -> tuple[SampleTensors, list[int], int]:
    """The sample's tensors (see ``tensors.py``), the latent's shape and the number of text tokens sampled with."""
    latent = _batch_of_one(candidate.latent, "latent", 5)
    _, _, frames, latent_h, latent_w = latent.shape
    if int(candidate.trim_latent) != 1:
        raise ValueError(
            f"the Animate latent has {candidate.trim_latent} reference frames; AnimateWanModel adds the pose from latent frame 1 "
            "on, so only one reference image is supported: connect a single image as reference_image"
        )
    video_frames = frames - 1
    text = _batch_of_one(candidate.text_embedding, "text conditioning", 3)[0].float()
    if pixel_hand_masks is not None:
        hand_mask = latent_mask_from_pixels(pixel_hand_masks, video_frames, latent_h, latent_w)
    else:
        hand_mask = torch.zeros((1, video_frames, latent_h, latent_w), dtype=torch.float32)
    hand_mask[:, : int(candidate.motion_latent_frames)] = 0.0  # continuation frames: given, weight 1
    animate = AnimateTensors(
        concat_latent=_batch_of_one(candidate.concat_latent, "concat latent", 5)[0].float().contiguous(),
        pose_latent=_batch_of_one(candidate.pose_latent, "pose latent", 5)[0].float().contiguous(),
        face_pixels=_batch_of_one(candidate.face_pixels, "face pixels", 5)[0].to(FACE_PIXELS_DTYPE).contiguous(),
        image_embedding=_batch_of_one(candidate.image_embedding, "CLIP-vision embedding", 3)[0].float().contiguous(),
    )
    tensors = SampleTensors(
        latent=normalize_latent(latent[0].float(), channel_dim=0).contiguous(),
        vace_context=None,
        text_embedding=text.contiguous(),
        hand_mask=hand_mask.contiguous(),
        ref_frames=1,
        text_length=text_length(text),
        animate=animate,
    )
    return tensors, list(latent.shape[1:]), int(text.shape[0])


def animate_meta(candidate: AnimateCandidate) -> dict[str, Any]:
    """``meta.json`` fields only an Animate sample has."""
    return {
        "model_type": MODEL_TYPE_ANIMATE,
        "pose_frame_offset": int(candidate.pose_frame_offset),
        "motion_latent_frames": int(candidate.motion_latent_frames),
        "face_frames": int(candidate.face_pixels.shape[-3]),
        "face_pixels_dtype": str(FACE_PIXELS_DTYPE).replace("torch.", ""),
    }


def _batch_of_one(value: torch.Tensor, name: str, dims: int) -> torch.Tensor:
    if value.dim() == dims - 1:
        value = value.unsqueeze(0)
    if value.dim() != dims or value.shape[0] != 1:
        raise ValueError(f"the candidate's {name} must have a batch of one and {dims} dims, got {tuple(value.shape)}")
    return value
