"""The study world's automatic hand score: the stand-in for the human curator.

For each hand of a decoded video, every glyph quality is drawn at the pose-known keypoints (``world``) and, when
the VAE is given, passed through it; the decoded frames are compared with each inside the hand's region (the
pixels any glyph could cover, grown by two pixels). ``error`` is the mean squared difference to the *good* glyph; the hand counts as good when the
good glyph is nearer than every bad one (blob, mitten, missing fingers, or no hand drawn) over the video's frames and,
for decoded frames, within ``GOOD_ERROR_LIMIT`` of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import world

SCORED_BAD = world.BAD_QUALITIES + ("none",)
# A good hand must also lie within this distance of the good glyph (as the VAE renders it). Reconstructions of
# true glyphs give 0 for good and 0.021 .. 0.088 for the bad ones; the pretrained model's hands are softer than
# any reconstruction (0.03 .. 0.07), and this limit, like a curator's bar, passes about its best fifth.
GOOD_ERROR_LIMIT = 0.032


@dataclass(frozen=True)
class HandResult:
    good: bool
    error: float  # mean squared difference to the good glyph, 0..1 per channel
    bad_error: float  # the same to the nearest bad glyph


@dataclass(frozen=True)
class VideoScore:
    hands: tuple  # HandResult or None (hand off the canvas), in world.HAND_KEYS order

    @property
    def good_hand_rate(self) -> float:
        present = [h for h in self.hands if h is not None]
        return sum(h.good for h in present) / len(present) if present else float("nan")

    @property
    def hand_error(self) -> float:
        present = [h.error for h in self.hands if h is not None]
        return float(np.mean(present)) if present else float("nan")


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


@lru_cache(maxsize=512)
def glyph_templates(video: world.WorldVideo, vae=None) -> tuple:
    """Per hand key: (region masks ``[T, H, W]`` bool, templates ``{quality: [T, H, W, 3] float}``) or None.

    With ``vae``, each template is the ideal video passed through that VAE (encode, decode): what a model that
    drew the glyph perfectly would give after decoding, blur included, so that the comparison is about the glyph
    and not about the VAE's softness. One template video per quality draws both hands that way."""
    poses = video.poses()
    background = np.array(world.BACKGROUND, dtype=np.float32) / 255.0
    videos = {q: np.stack([world.render_world_frame(f, video.body_color, (q, q), video.width, video.height) for f in poses])
              for q in world.QUALITIES}
    videos["none"] = np.stack([world.render_world_frame(f, video.body_color, {}, video.width, video.height) for f in poses])
    templates = {q: _through(vae, frames) for q, frames in videos.items()}
    out = []
    for key in world.HAND_KEYS:
        if any(world.hand_points(frame, key) is None for frame in poses):
            out.append(None)
            continue
        region = np.zeros((len(poses), video.height, video.width), dtype=bool)
        for quality in world.QUALITIES:
            hand_only = np.stack([world.render_world_frame(f, video.body_color, {key: quality}, video.width, video.height, draw_body=False)
                                  for f in poses]).astype(np.float32) / 255.0
            region |= np.abs(hand_only - background).sum(axis=-1) > 0.05
        out.append((np.stack([_grow(m, 2) for m in region]), templates))
    return tuple(out)


def _through(vae, frames_u8: np.ndarray) -> np.ndarray:
    if vae is None:
        return frames_u8.astype(np.float32) / 255.0
    import torch

    from .models import decode_frames, to_model_video

    with torch.no_grad():
        return decode_frames(vae, vae.encode(to_model_video(frames_u8)).latent_dist.mode())


def hand_region_masks(video: world.WorldVideo) -> np.ndarray:
    """``[T, H, W]`` bool: every pixel a hand glyph of either hand could cover (the drift metric excludes them)."""
    mask = np.zeros((video.frames_count, video.height, video.width), dtype=bool)
    for entry in glyph_templates(video):
        if entry is not None:
            mask |= entry[0]
    return mask


def score_video(frames: np.ndarray, video: world.WorldVideo, vae=None) -> VideoScore:
    """``frames``: ``[T, H, W, 3]`` float 0..1 (or uint8), the decoded video drawn for ``video``'s poses; ``vae``:
    the VAE that decoded them (the templates then go through it too; see :func:`glyph_templates`)."""
    frames = np.asarray(frames)
    frames = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
    expected = (video.frames_count, video.height, video.width, 3)
    if frames.shape != expected:
        raise ValueError(f"frames of shape {frames.shape} do not match the world video's {expected}")
    results = []
    for entry in glyph_templates(video, vae):
        if entry is None:
            results.append(None)
            continue
        region, templates = entry
        errors = {q: float(((frames - t) ** 2).sum(axis=-1)[region].mean() / 3.0) for q, t in templates.items()}
        bad = min(errors[q] for q in SCORED_BAD)
        limit = GOOD_ERROR_LIMIT if vae is not None else float("inf")  # ideal frames (no VAE): nearest glyph only
        results.append(HandResult(good=errors["good"] < bad and errors["good"] < limit, error=errors["good"], bad_error=bad))
    return VideoScore(hands=tuple(results))
