"""Pixel hand masks of the video frames -> the latent hand mask the loss weights (VACE and Animate samples alike)."""

from __future__ import annotations

import torch


def fit_pixel_masks(masks: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """``[T, H', W']`` masks -> ``[frames, height, width]``: resized to cover and centre-cropped as ComfyUI's
    ``common_upscale(..., "center")`` does with the control video, cut to ``frames`` or padded with zeros."""
    if masks.dim() == 2:
        masks = masks.unsqueeze(0)
    if masks.dim() != 3:
        raise ValueError(f"hand masks must be [T, H, W], got {tuple(masks.shape)}")
    masks = masks.float()
    _, mask_h, mask_w = masks.shape
    if (mask_h, mask_w) != (height, width):
        scale = max(height / mask_h, width / mask_w)
        new_h, new_w = max(height, round(mask_h * scale)), max(width, round(mask_w * scale))
        masks = torch.nn.functional.interpolate(masks.unsqueeze(1), size=(new_h, new_w), mode="bilinear", align_corners=False)[:, 0]
        top, left = (new_h - height) // 2, (new_w - width) // 2
        masks = masks[:, top : top + height, left : left + width]
    masks = masks[:frames]
    if masks.shape[0] < frames:
        masks = torch.cat([masks, masks.new_zeros((frames - masks.shape[0], height, width))], dim=0)
    return masks.clamp(0, 1)


def pixel_frames_for(latent_frames: int) -> int:
    return (latent_frames - 1) * 4 + 1


class SampledFrames:
    """Frame counts of a sampled candidate (VACE or Animate): ``latent`` [1, 16, F, h, w] untrimmed, with
    ``trim_latent`` reference frames in front."""

    latent: torch.Tensor
    trim_latent: int

    @property
    def latent_frames(self) -> int:
        return int(self.latent.shape[2])

    @property
    def video_latent_frames(self) -> int:
        return self.latent_frames - int(self.trim_latent)


def latent_mask_from_pixels(pixel_masks: torch.Tensor, latent_frames: int, latent_h: int, latent_w: int) -> torch.Tensor:
    """Pixel hand masks of the video frames -> ``[1, latent_frames, h, w]`` via ``hands.latent_hand_mask``."""
    from ..pose.hands import latent_hand_mask

    frames = pixel_frames_for(latent_frames)
    fitted = fit_pixel_masks(pixel_masks, frames, latent_h * 8, latent_w * 8)
    mask = latent_hand_mask(fitted)
    mask = mask.reshape(1, latent_frames, latent_h, latent_w)
    return mask.float().clamp(0, 1)
