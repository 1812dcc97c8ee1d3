"""Turns sampled (or encoded) candidates into dataset samples in exactly the layout the trainer reads.

A :class:`Candidate` holds what ComfyUI's native VACE graph produced for one seed, in ComfyUI's own terms
(raw latents, raw VACE conditioning). :func:`candidate_to_sample` converts it once, here, with the same
constants the trainer and the parity test use (:mod:`.wan_latents`):

- ``latent``: the *untrimmed* sampled latent, normalised: ``(samples - mean) / std``; the reference frames
  stay in front (``ref_frames``), because the model saw them while sampling and dropping them changes the
  velocity of the video frames. In the loss they count like the authors' published snippet counts them: weight 1,
  no hand weighting (``training/loss.py``; the hand mask covers the video frames only).
- ``vace_context``: ``cat([norm(inactive), norm(reactive), mask])`` (96 channels).
- ``text_embedding``: ComfyUI's conditioning tensor exactly as the sampler had it (512 tokens for Wan's UMT5 in
  ComfyUI), never padded nor truncated: the Wan text embedder has no attention mask, so extra zero rows would
  change the velocity. The trainer batches samples only with others of the same text length.
- ``hand_mask``: the latent hand mask of the video frames only (reference frames excluded).

``meta.json`` also keeps, for the gallery: ``hand_boxes`` (per preview frame, ``[x0, y0, x1, y1]`` in preview
pixels) and, when the hands came from a pose, ``driving_pose``: the POSE_KEYPOINT frames that drove the video, one
per video frame, in their own canvas, with ``driving_pose_resize`` (``crop``: how ``WanVaceToVideo`` fitted the
control video, and so how the gallery's hand score maps the pose onto the generated frames).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from ..wan.latents import normalize_latent, text_length, vace_context_from_conditioning
from .hand_masks import SampledFrames, fit_pixel_masks, latent_mask_from_pixels, pixel_frames_for  # noqa: F401 (re-exported)
from .manifest import read_manifest
from .marks import count_statuses
from .previews import animated_webp, boxes_from_masks, hand_closeup_webp, preview_scale, scale_boxes
from .samples import AddResult, add_sample, create_dataset
from .tensors import MODEL_TYPE_ANIMATE, MODEL_TYPE_VACE, SampleTensors

log = logging.getLogger(__name__)


@dataclass
class Candidate(SampledFrames):
    """One generated (or encoded) video, as ComfyUI's native graph had it."""

    latent: torch.Tensor  # [1, 16, F, h, w] raw sampler output, before TrimVideoLatent
    trim_latent: int  # reference latent frames at the front (WanVaceToVideo's trim_latent)
    vace_frames: torch.Tensor  # [1, 32, F, h, w] raw inactive + reactive control latents
    vace_mask: torch.Tensor  # [1, 64, F, h, w]
    vace_strength: float
    text_embedding: torch.Tensor  # [1, L, D] positive conditioning tensor
    frames: Optional[torch.Tensor] = None  # [T, H, W, 3] decoded video frames (after trimming), 0..1
    seed: Optional[int] = None
    sigmas: Optional[list[float]] = None
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "ipa_vace_sampler"


POSE_PARTS = ("pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d")  # face points are not kept
DRIVING_POSE_RESIZE = "crop"  # how WanVaceToVideo fits the control video (and so the pose) to width x height


def driving_pose_frames(pose_keypoint: Any, frames: int) -> list[dict]:
    """The POSE_KEYPOINT frames that drove the first ``frames`` video frames, as given: their own canvas and
    coordinates (the gallery's ``hand_scoring.fit_driving_pose`` maps them onto the video with
    ``meta["driving_pose_resize"]``). Body and hand points are kept; face points are dropped (nothing reads them and
    they are more than half the size)."""
    if isinstance(pose_keypoint, dict):
        pose_keypoint = [pose_keypoint]
    if not isinstance(pose_keypoint, (list, tuple)) or not pose_keypoint:
        raise ValueError("pose keypoints must be a non-empty list with one POSE_KEYPOINT dict per frame")
    kept = []
    for index, frame in enumerate(list(pose_keypoint)[:frames]):
        if not isinstance(frame, dict):
            raise ValueError(f"pose keypoint frame {index} is a {type(frame).__name__}, expected a dict with 'people'")
        people = [
            {part: [float(v) for v in person[part]] if person.get(part) is not None else None for part in POSE_PARTS}
            for person in frame.get("people") or [] if isinstance(person, dict)
        ]  # fmt: skip
        out = {"people": people}
        for key in ("canvas_width", "canvas_height"):
            if frame.get(key) is not None:
                out[key] = frame[key]
        kept.append(out)
    return kept


def candidate_to_sample(
    candidate: Candidate,
    pixel_hand_masks: Optional[torch.Tensor] = None,
    hand_boxes: Optional[Sequence[Sequence[Sequence[float]]]] = None,
    prompt: str = "",
    fps: float = 16.0,
    preview_max_side: int = 512,
    driving_pose: Optional[list[dict]] = None,
) -> tuple[SampleTensors, dict[str, Any], dict[str, bytes], dict[str, Any]]:
    """Returns ``(tensors, meta, previews, summary)`` for :func:`ipa_train.data.samples.add_sample`.

    ``pixel_hand_masks``: ``[T, H, W]`` masks of the video frames (from DWPose keypoints or a MASK), or ``None``
    for "no hands". ``hand_boxes``: per video frame, a list of ``[x0, y0, x1, y1]`` in video pixels (from the
    pose); derived from the masks when ``None``. ``driving_pose``: the POSE_KEYPOINT frames of the video
    (:func:`driving_pose_frames`), stored as ``meta["driving_pose"]``.
    """
    animate = getattr(candidate, "model_type", MODEL_TYPE_VACE) == MODEL_TYPE_ANIMATE
    if animate:
        from .animate_samples import animate_candidate_tensors

        tensors, latent_shape, sampled_tokens = animate_candidate_tensors(candidate, pixel_hand_masks)
    else:
        tensors, latent_shape, sampled_tokens = candidate_tensors(candidate, pixel_hand_masks)
    hand_area = float(tensors.hand_mask.mean())
    meta: dict[str, Any] = {
        "source": candidate.source,
        "seed": candidate.seed,
        "prompt": prompt,
        "sigmas": candidate.sigmas,
        "settings": dict(candidate.settings),
        "latent_shape": latent_shape,
        "text_tokens_stored": int(tensors.text_embedding.shape[0]),
        "text_tokens_sampled": sampled_tokens,
        "hand_mask_source": "none" if pixel_hand_masks is None else ("pose" if driving_pose is not None else "mask"),
        "hand_area": hand_area,
    }
    if animate:
        from .animate_samples import animate_meta

        meta.update(animate_meta(candidate))
    if driving_pose is not None:
        meta["driving_pose"] = driving_pose
        meta["driving_pose_resize"] = DRIVING_POSE_RESIZE  # WanAnimateToVideo fits its pose video the same way
    previews: dict[str, bytes] = {}
    if candidate.frames is not None:
        previews, video_meta = video_previews(candidate.frames, pixel_hand_masks, hand_boxes, fps, preview_max_side)
        meta.update(video_meta)
    summary = {
        "seed": candidate.seed,
        "prompt": prompt[:200],
        "source": candidate.source,
        "hand_area": round(hand_area, 6),
        "has_preview": "preview.webp" in previews,
    }
    return tensors, meta, previews, summary


def candidate_tensors(candidate: Candidate, pixel_hand_masks: Optional[torch.Tensor] = None) -> tuple[SampleTensors, list[int], int]:
    """The sample's tensors from a candidate: the normalised clean latent, the VACE context, the text embedding as
    sampled and the latent hand mask (zeros without ``pixel_hand_masks``). Also returns the latent's shape
    (``[16, F, h, w]``) and the number of text tokens sampling was given, which ``meta.json`` records."""
    latent = candidate.latent
    if latent.dim() == 4:
        latent = latent.unsqueeze(0)
    if latent.dim() != 5 or latent.shape[0] != 1:
        raise ValueError(f"candidate latent must be [1, 16, F, h, w], got {tuple(latent.shape)}")
    _, _, frames, latent_h, latent_w = latent.shape
    ref = int(candidate.trim_latent)
    video_frames = frames - ref
    if video_frames < 1:
        raise ValueError(f"candidate has {frames} latent frames and trim_latent={ref}: no video frames left")
    context = vace_context_from_conditioning(candidate.vace_frames, candidate.vace_mask)
    if tuple(context.shape[1:]) != (frames, latent_h, latent_w):
        raise ValueError(
            f"VACE context {tuple(context.shape)} does not match the latent {tuple(latent.shape)}: the latent must be the "
            "untrimmed sampler output (before TrimVideoLatent) of the same WanVaceToVideo conditioning"
        )
    text = _text_embedding(candidate)
    if pixel_hand_masks is not None:
        hand_mask = latent_mask_from_pixels(pixel_hand_masks, video_frames, latent_h, latent_w)
    else:
        hand_mask = torch.zeros((1, video_frames, latent_h, latent_w), dtype=torch.float32)
    tensors = SampleTensors(
        latent=normalize_latent(latent[0].float(), channel_dim=0).contiguous(),
        vace_context=context.contiguous(),
        text_embedding=text.contiguous(),
        hand_mask=hand_mask.contiguous(),
        ref_frames=ref,
        vace_strength=float(candidate.vace_strength),
        text_length=text_length(text),
    )
    return tensors, list(latent.shape[1:]), int(text.shape[0])


def _text_embedding(candidate: Candidate) -> torch.Tensor:
    """The positive conditioning tensor as ``[tokens, dim]`` (all of it: padding tokens are stored too)."""
    text = candidate.text_embedding.float()
    if text.dim() == 3:
        text = text[0]
    if text.dim() != 2:
        raise ValueError(f"text conditioning must be [1, tokens, dim], got {tuple(candidate.text_embedding.shape)}")
    return text


def video_previews(
    video: torch.Tensor, pixel_hand_masks: Optional[torch.Tensor], hand_boxes: Optional[Sequence[Sequence[Sequence[float]]]],
    fps: float, preview_max_side: int,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The previews of the decoded video (``preview.webp``, and ``hands.webp`` when there are hands) and the meta
    fields that describe them: sizes, and the hand boxes in preview pixels (derived from the masks when not given)."""
    height, width = int(video.shape[1]), int(video.shape[2])
    preview, (preview_w, preview_h) = animated_webp(video, fps=fps, max_side=preview_max_side)
    previews = {"preview.webp": preview}
    meta: dict[str, Any] = {"preview_size": [preview_w, preview_h], "video_size": [width, height], "video_frames": int(video.shape[0])}
    if hand_boxes is None and pixel_hand_masks is not None:
        hand_boxes = boxes_from_masks(fit_pixel_masks(pixel_hand_masks, int(video.shape[0]), height, width))
    if hand_boxes is not None:
        scale = preview_scale(width, height, preview_max_side)
        meta["hand_boxes"] = scale_boxes(hand_boxes, scale, preview_w, preview_h)
        closeup = hand_closeup_webp(video, hand_boxes, fps=fps)
        if closeup is not None:
            previews["hands.webp"] = closeup
    return previews, meta


@dataclass
class CollectResult:
    dataset: str
    results: list[AddResult]
    counts: dict[str, int]

    @property
    def added(self) -> int:
        return sum(1 for result in self.results if result.added)

    @property
    def duplicates(self) -> int:
        return sum(1 for result in self.results if not result.added)

    def text(self) -> str:
        counts = ", ".join(f"{value} {key}" for key, value in self.counts.items())
        total = sum(self.counts.values())
        ids = ", ".join(result.sample_id for result in self.results)
        return (
            f"dataset {self.dataset}: {total} samples ({counts}); this run added {self.added}, "
            f"{self.duplicates} already stored [{ids}]"
        )


def store_candidates(
    root,
    dataset: str,
    candidates: Sequence[Candidate],
    status: str = "pending",
    pixel_hand_masks: Optional[torch.Tensor] = None,
    hand_boxes=None,
    prompt: str = "",
    fps: float = 16.0,
    extra_meta: Optional[dict[str, Any]] = None,
    driving_pose: Optional[list[dict]] = None,
) -> CollectResult:
    """Creates ``dataset`` under ``root`` if needed and adds every candidate (atomic, locked, de-duplicated)."""
    dataset_dir = create_dataset(root, dataset)
    results = []
    for candidate in candidates:
        tensors, meta, previews, summary = candidate_to_sample(
            candidate, pixel_hand_masks, hand_boxes, prompt=prompt, fps=fps, driving_pose=driving_pose
        )
        meta.update(extra_meta or {})
        results.append(add_sample(dataset_dir, tensors, meta=meta, previews=previews, status=status, summary=summary))
    return CollectResult(dataset, results, count_statuses(read_manifest(dataset_dir)))


def store_sampled(dataset_dir, sampled, pixel_masks, boxes, poses, status: str, settings: dict, prompt: str, source: str,
                  meta: Optional[dict] = None, summary: Optional[dict] = None):
    """One video sampled by ``wan.pipeline.sample`` -> one dataset sample, with the latent and VACE context its
    transformer saw, bit for bit (the demo's and the method study's collector). ``meta`` and ``summary`` add
    entries (e.g. the hand score) to the sample's metadata and its manifest line."""
    from ..wan.latents import LATENT_CHANNELS, denormalize_latent

    context = sampled.vace_context
    raw_frames = torch.cat(
        [denormalize_latent(context[:, :LATENT_CHANNELS]), denormalize_latent(context[:, LATENT_CHANNELS : 2 * LATENT_CHANNELS])], dim=1
    )
    candidate = Candidate(
        latent=denormalize_latent(sampled.latent),  # the collector's input is ComfyUI's raw latent
        trim_latent=sampled.ref_frames,
        vace_frames=raw_frames,
        vace_mask=context[:, 2 * LATENT_CHANNELS :],
        vace_strength=1.0,
        text_embedding=sampled.text_embedding,
        frames=sampled.frames,
        seed=sampled.seed,
        sigmas=sampled.sigmas,
        settings=settings,
        source=source,
    )
    tensors, sample_meta, previews, sample_summary = candidate_to_sample(candidate, pixel_masks, boxes, prompt=prompt)
    # The collector re-normalises ComfyUI's raw tensors; here the model-space tensors are at hand, so store them as
    # they are (the round trip through raw space would move them by float rounding).
    tensors.latent = sampled.latent[0].contiguous()
    tensors.vace_context = context[0].contiguous()
    sample_meta.update({"driving_pose": poses, **(meta or {})})
    sample_summary.update(summary or {})
    return add_sample(dataset_dir, tensors, meta=sample_meta, previews=previews, status=status, summary=sample_summary)
