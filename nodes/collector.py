"""IPA Mark Preferred (the collector) and IPA Encode Good Video: candidates into a named dataset.

The conversion to the trainer's layout lives in ``ipa_train.data.collect``; atomic writes, the manifest lock and
de-duplication in ``ipa_train.data.samples``. This module only adapts ComfyUI's types.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.v0_0_2 import io, ui

from ..ipa_train.data.collect import Candidate, pixel_frames_for, store_candidates
from ..ipa_train.data.layout import DatasetError, validate_dataset_name
from .host import prompt_server
from .paths import dataset_root
from .vace_sampler import CANDIDATES, vace_condition

log = logging.getLogger(__name__)

PoseKeypoint = io.Custom("POSE_KEYPOINT")


def _parse_selection(selection: str, count: int) -> list[int]:
    selection = (selection or "").strip()
    if selection in ("", "all", "*"):
        return list(range(count))
    indices = []
    for part in selection.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                start, end = (int(value) for value in part.split("-", 1))
                indices.extend(range(start, end + 1))
            else:
                indices.append(int(part))
        except ValueError:
            raise ValueError(f"select: {part!r} is not a candidate index; write e.g. '0,2' or '1-3' (empty: all)") from None
    bad = [index for index in indices if not 0 <= index < count]
    if bad:
        raise ValueError(f"select: candidate indices {bad} out of range; there are {count} candidates (0..{count - 1})")
    return sorted(set(indices))


def _hands_from_pose(pose_keypoint, width: int, height: int, frames: int, candidate=None):
    """(pixel hand masks, hand boxes, driving pose) of the video frames from POSE_KEYPOINT frames."""
    from ..ipa_train.data.animate_samples import AnimateCandidate, animate_pose_frames
    from ..ipa_train.data.collect import driving_pose_frames
    from ..ipa_train.pose.hands import hand_boxes, pose_to_hand_masks

    if isinstance(candidate, AnimateCandidate):  # the pose frames WanAnimateToVideo used: from the offset, padded
        pose_keypoint = animate_pose_frames(pose_keypoint, candidate.pose_frame_offset, frames)
    if isinstance(pose_keypoint, dict):
        pose_keypoint = [pose_keypoint]
    pose_keypoint = list(pose_keypoint)[:frames]
    # WanVaceToVideo and WanAnimateToVideo fit the control / pose video with a centre crop; fit the keypoints the same way.
    masks = pose_to_hand_masks(pose_keypoint, width, height, resize="crop")
    boxes = hand_boxes(pose_keypoint, width, height, resize="crop")
    driving = driving_pose_frames(pose_keypoint, frames)
    return masks, [[list(box) for box in frame] for frame in boxes], driving


class IPAMarkPreferred(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAMarkPreferred",
            display_name="IPA Mark Preferred",
            category="IPA",
            description=(
                "Stores candidates in a named IPA dataset in the trainer's exact layout (normalised latent, the VACE "
                "context or the Animate inputs, text embedding, latent hand mask) with an animated preview and a hand close-up. "
                "Writes are atomic and locked; identical content is stored once. 'mark' sets the status."
            ),
            is_output_node=True,
            inputs=[
                CANDIDATES.Input("candidates", tooltip="From IPA VACE Sampler, IPA Animate Sampler or IPA Encode Good Video."),
                io.String.Input("dataset", default="hands",
                                tooltip="Dataset name: a folder under output/ipa_datasets, made on first use (letters, digits, . _ -)."),
                io.Combo.Input("mark", options=["pending", "preferred"], default="pending",
                               tooltip="pending: curate later in the gallery; preferred: accept automatically."),
                io.String.Input("select", default="", optional=True,
                                tooltip="Which candidates to store, e.g. '0,2' or '1-3'. Empty: all."),
                PoseKeypoint.Input("pose_keypoint", optional=True,
                                   tooltip="DWPose keypoints of the control / pose video: hands become the HALO mask."),
                io.Mask.Input("hand_mask", optional=True, tooltip="Pixel hand masks per video frame (instead of keypoints)."),
                io.String.Input("prompt_text", default="", multiline=True, optional=True,
                                tooltip="The prompt, kept in the sample's metadata for the gallery."),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0, optional=True,
                               tooltip="Frame rate of the stored looping previews (Wan2.1: 16)."),
            ],
            outputs=[io.String.Output(display_name="summary", tooltip="What was stored and the dataset's counts.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, dataset):
        """At queue time, before DWPose and sampling run upstream."""
        try:
            validate_dataset_name(dataset)
        except DatasetError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, candidates, dataset, mark, select="", pose_keypoint=None, hand_mask=None, prompt_text="", fps=16.0) -> io.NodeOutput:
        try:
            validate_dataset_name(dataset)
        except DatasetError as exc:
            raise ValueError(str(exc)) from None
        if not candidates:
            raise ValueError("no candidates to store: connect the CANDIDATES output of IPA VACE Sampler or IPA Encode Good Video")
        if pose_keypoint is not None and hand_mask is not None:
            raise ValueError("connect either pose_keypoint or hand_mask, not both: they are two sources of the same hand mask")
        chosen = [candidates[index] for index in _parse_selection(select, len(candidates))]
        first = chosen[0]
        frames = first.frames
        latent_h, latent_w = int(first.latent.shape[-2]), int(first.latent.shape[-1])
        height, width = (int(frames.shape[1]), int(frames.shape[2])) if frames is not None else (latent_h * 8, latent_w * 8)
        video_frames = pixel_frames_for(first.video_latent_frames)
        pixel_masks, boxes, driving = None, None, None
        if pose_keypoint is not None:
            pixel_masks, boxes, driving = _hands_from_pose(pose_keypoint, width, height, video_frames, first)
        elif hand_mask is not None:
            pixel_masks = hand_mask
        result = store_candidates(
            dataset_root(), dataset, chosen, status=mark, pixel_hand_masks=pixel_masks, hand_boxes=boxes,
            prompt=prompt_text or "", fps=fps, driving_pose=driving,
        )
        text = result.text()
        log.info("IPA Mark Preferred: %s", text)
        instance = prompt_server()
        if instance is not None and cls.hidden is not None and cls.hidden.unique_id is not None:
            instance.send_progress_text(canvas_summary(result, chosen), cls.hidden.unique_id, instance.client_id)
        return io.NodeOutput(text, ui=ui.PreviewText(text))


def canvas_summary(result, chosen) -> str:
    """A few lines for the node on the canvas: what this run stored, the dataset's counts, what to do next."""
    seeds = [candidate.seed for candidate in chosen]
    added = [seed for seed, item in zip(seeds, result.results) if item.added]
    again = [seed for seed, item in zip(seeds, result.results) if not item.added]
    counts = result.counts
    lines = [f"Stored {len(added)} new in '{result.dataset}'" + (f" (seeds {_seeds(added)})" if added and None not in added else "")]
    if again:
        lines.append(f"{len(again)} already in the dataset (identical; seeds {_seeds(again)}): these seeds were sampled before. "
                     "Give the sampler a seed above the dataset's highest (it moves there by itself when the workflow opens "
                     "or the dataset changes, and steps by the candidate count after each run).")
    lines.append(f"Dataset: {counts.get('pending', 0)} pending, {counts.get('preferred', 0)} preferred, {counts.get('rejected', 0)} rejected.")
    if counts.get("pending"):
        lines.append("Curate them in the IPA gallery (IPA tab in the left sidebar).")
    return "\n".join(lines)


def _seeds(seeds) -> str:
    return ", ".join(str(seed) for seed in seeds) if len(seeds) <= 8 else f"{seeds[0]}..{seeds[-1]}"


class IPAEncodeGoodVideo(io.ComfyNode):
    """An outside good video (frames) encoded as the native VACE graph would have produced it, as a candidate."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAEncodeGoodVideo",
            display_name="IPA Encode Good Video",
            category="IPA",
            description=(
                "Turns an outside good video into an IPA candidate: the frames are VAE-encoded and the VACE context is "
                "built by ComfyUI's own WanVaceToVideo code from the same control video, mask and reference image. "
                "Feed the result to IPA Mark Preferred."
            ),
            inputs=[
                io.Image.Input("video", tooltip="The good video's frames (IMAGE batch)."),
                io.Vae.Input("vae", tooltip="The Wan VAE (wan_2.1_vae.safetensors) the sampler uses."),
                io.Conditioning.Input("positive", tooltip="Text conditioning (CLIP Text Encode with the Wan UMT5 encoder)."),
                io.Int.Input("width", default=832, min=16, max=8192, step=16, tooltip="Video width, as the sampler would use it."),
                io.Int.Input("height", default=480, min=16, max=8192, step=16, tooltip="Video height, as the sampler would use it."),
                io.Int.Input("length", default=81, min=1, max=8192, step=4, tooltip="Frames to use, 4k+1 (81 in the paper)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1000.0, step=0.01, tooltip="VACE strength used when sampling."),
                io.Image.Input("reference_image", optional=True, tooltip="The VACE reference image (e.g. the person)."),
                io.Image.Input("control_video", optional=True, tooltip="Pose frames of the video (the VACE control)."),
                io.Mask.Input("control_masks", optional=True, tooltip="VACE control masks, if the sampler used them."),
            ],
            outputs=[CANDIDATES.Output(display_name="candidates", tooltip="One candidate for IPA Mark Preferred.")],
        )

    @classmethod
    def execute(cls, video, vae, positive, width, height, length, strength, reference_image=None, control_video=None, control_masks=None) -> io.NodeOutput:
        import comfy.utils

        if (length - 1) % 4 != 0:
            raise ValueError(f"length {length} must be 4k+1 (1, 5, 9, ..., 81) as in WanVaceToVideo")
        if video.shape[0] < length:
            raise ValueError(f"the video has {video.shape[0]} frames but length is {length}; lower length or give more frames")
        frames = comfy.utils.common_upscale(video[:length].movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)
        frames = frames[..., :3].clamp(0, 1)
        positive_out, _, _, trim_latent, vace = vace_condition(positive, vae, width, height, length, strength, control_video, control_masks, reference_image)
        video_latent = vae.encode(frames).to(torch.float32)
        vace_frames = vace["vace_frames"].float()
        if trim_latent:
            # The native graph denoises the reference slot too; its clean target is the reference image's latent.
            video_latent = torch.cat([vace_frames[:, :16, :trim_latent].to(video_latent.device), video_latent], dim=2)
        candidate = Candidate(
            latent=video_latent.cpu(),
            trim_latent=int(trim_latent),
            vace_frames=vace_frames.cpu(),
            vace_mask=vace["vace_mask"].float().cpu(),
            vace_strength=float(vace["vace_strength"]),
            text_embedding=positive_out[0][0].float().cpu(),
            frames=frames.cpu(),
            seed=None,
            sigmas=None,
            settings={"width": width, "height": height, "length": length, "strength": strength},
            source="outside_video",
        )
        return io.NodeOutput([candidate])


NODES = [IPAMarkPreferred, IPAEncodeGoodVideo]
