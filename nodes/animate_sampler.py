"""IPA Animate Sampler: N candidates from ComfyUI's own native Wan2.2-Animate graph, plus what the trainer replays.

It runs, in-process, what ``ModelSamplingSD3(shift) -> WanAnimateToVideo -> KSampler -> TrimVideoLatent ->
VAEDecode -> ImageFromBatch(trim_image)`` does (the node classes and ``comfy.samplers.KSampler``, as the IPA VACE
Sampler does), so candidate ``i`` is what the native graph makes with seed ``seed + i``. A pack node rather than a
collector tapped onto the native KSampler: the KSampler's LATENT carries neither the seed, the sigmas nor the
inputs ``AnimateWanModel`` was given, and N candidates would mean N queued runs. The inputs the model was given
(``c_concat``, ``pose_latents``, ``face_pixel_values``, ``clip_fea``) are read from the model's own first conditional
call (a ``model_function_wrapper`` that passes everything through), so nothing is rebuilt.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.v0_0_2 import io

from ..ipa_train.data.animate_samples import AnimateCandidate
from .model_identity import base_weights_fingerprint, describe_patches
from .previews import candidate_grid_preview
from .vace_sampler import CANDIDATES, _decode, _progress_callback, _sample_one

log = logging.getLogger(__name__)

MODEL_INPUT_KEYS = ("c_concat", "pose_latents", "face_pixel_values", "clip_fea")


class ModelInputCapture:
    """A ``model_function_wrapper`` that keeps the conditional half of what the diffusion model is given on its first
    call, then calls the model (or the wrapper that was there before) unchanged."""

    def __init__(self, previous=None):
        self.previous = previous
        self.captured: dict[str, torch.Tensor] | None = None

    def __call__(self, apply_model, args):
        cond_or_uncond = list(args["cond_or_uncond"])
        if self.captured is None and 0 in cond_or_uncond:
            chunk = args["input"].shape[0] // len(cond_or_uncond)
            start = cond_or_uncond.index(0) * chunk
            conditions = args["c"]
            self.captured = {
                key: conditions[key][start : start + chunk].detach().float().cpu().clone()
                for key in MODEL_INPUT_KEYS if key in conditions
            }  # fmt: skip
        if self.previous is not None:
            return self.previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])


def animate_condition(positive, negative, vae, width, height, length, clip_vision_output, reference_image, face_video,
                      pose_video, background_video=None, character_mask=None, continue_motion=None,
                      continue_motion_max_frames=5, video_frame_offset=0):
    """Runs ComfyUI's ``WanAnimateToVideo`` once (batch size 1); returns its outputs as a tuple."""
    from comfy_extras.nodes_wan import WanAnimateToVideo

    if len(positive) != 1:
        raise ValueError(
            f"the positive conditioning has {len(positive)} entries (combined or concatenated prompts); the trainer replays "
            "one text conditioning per sample: use a single CLIP Text Encode for the positive prompt"
        )
    for name, conditioning in (("positive", positive), ("negative", negative)):
        if any("concat_latent_image" in entry[1] or "pose_video_latent" in entry[1] for entry in conditioning):
            raise ValueError(
                f"the {name} conditioning already went through WanAnimateToVideo (or another image-to-video node); this node "
                "runs WanAnimateToVideo itself: connect the CLIP Text Encode output directly"
            )
    if reference_image.shape[0] != 1:
        raise ValueError(
            f"reference_image holds {reference_image.shape[0]} images; AnimateWanModel adds the pose from the second latent "
            "frame on, so only one reference image lines up: connect a single image"
        )
    return WanAnimateToVideo.execute(
        positive, negative, vae, width, height, length, 1, continue_motion_max_frames, video_frame_offset,
        reference_image=reference_image, clip_vision_output=clip_vision_output, face_video=face_video,
        pose_video=pose_video, continue_motion=continue_motion, background_video=background_video,
        character_mask=character_mask,
    ).args


def _schema_inputs():
    import comfy.samplers

    return [
        io.Model.Input("model", tooltip="Wan2.2-Animate-14B from Load Diffusion Model (UNETLoader)."),
        io.Conditioning.Input("positive", tooltip="What the video should show (CLIP Text Encode, Wan UMT5 encoder)."),
        io.Conditioning.Input("negative", tooltip="What to avoid, e.g. deformed hands, extra fingers."),
        io.Vae.Input("vae", tooltip="The Wan VAE (wan_2.1_vae.safetensors)."),
        io.ClipVisionOutput.Input("clip_vision_output", tooltip="CLIP Vision Encode of the reference image."),
        io.Image.Input("reference_image", tooltip="The character to animate (one image)."),
        io.Image.Input("pose_video", tooltip="Pose frames that drive the body (e.g. DWPose renders of the driving video)."),
        io.Image.Input("face_video", tooltip="Face crops of the driving video (fitted to 512x512 by WanAnimateToVideo)."),
        io.Int.Input("width", default=832, min=16, max=8192, step=16, tooltip="Video width."),
        io.Int.Input("height", default=480, min=16, max=8192, step=16, tooltip="Video height."),
        io.Int.Input("length", default=77, min=1, max=8192, step=4, tooltip="Frames, 4k+1 (Wan-Animate: 77 per segment)."),
        io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Denoising steps per candidate."),
        io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale."),
        io.Float.Input("shift", default=8.0, min=0.0, max=100.0, step=0.01, tooltip="ModelSamplingSD3 shift (ComfyUI's Wan default 8)."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler", tooltip="KSampler's sampler."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple", tooltip="KSampler's scheduler."),
        io.Int.Input("candidates", default=4, min=1, max=64, tooltip="How many videos to sample; candidate i uses seed + i."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Seed of the first candidate. With the control on increment it steps by the candidate count "
                             "after each run, so no run samples a seed an earlier run did."),
        io.Image.Input("background_video", optional=True, tooltip="Replacement mode: the video whose person is replaced."),
        io.Mask.Input("character_mask", optional=True, tooltip="Replacement mode: where the person is (white: generate)."),
        io.Image.Input("continue_motion", optional=True, tooltip="Last frames of the previous segment, to extend a video."),
        io.Int.Input("continue_motion_max_frames", default=5, min=1, max=8192, step=4, optional=True,
                     tooltip="How many of continue_motion's last frames to keep."),
        io.Int.Input("video_frame_offset", default=0, min=0, max=8192, optional=True,
                     tooltip="Frames to skip in the pose, face and background videos (the previous segment's offset output)."),
    ]


class IPAAnimateSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAAnimateSampler",
            display_name="IPA Animate Sampler",
            category="IPA",
            description=(
                "Samples N candidates with ComfyUI's native Wan2.2-Animate graph (ModelSamplingSD3 + WanAnimateToVideo + "
                "KSampler); candidate i uses seed + i, exactly like a KSampler with that seed. Animation mode, or replacement "
                "mode with background_video and character_mask. Feed candidates to IPA Mark Preferred."
            ),
            inputs=_schema_inputs(),
            outputs=[
                io.Image.Output(display_name="images", tooltip="All candidates' frames, one after another (continuation "
                                                               "frames trimmed off, as ImageFromBatch(trim_image) does)."),
                CANDIDATES.Output(display_name="candidates", tooltip="Everything IPA Mark Preferred stores: latents, the "
                                                                     "model's Animate inputs, text, seeds, sigmas, settings."),
                io.Int.Output(display_name="video_frame_offset", tooltip="Offset for the next segment's sampler."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, clip_vision_output, reference_image, pose_video, face_video, width,
                height, length, steps, cfg, shift, sampler_name, scheduler, candidates, seed, background_video=None,
                character_mask=None, continue_motion=None, continue_motion_max_frames=5, video_frame_offset=0) -> io.NodeOutput:
        from comfy_extras.nodes_model_advanced import ModelSamplingSD3

        settings = _settings(model, width, height, length, steps, cfg, shift, sampler_name, scheduler, candidates, seed,
                             background_video, character_mask, continue_motion, video_frame_offset)
        positive_c, negative_c, latent, trim_latent, trim_image, next_offset = animate_condition(
            positive, negative, vae, width, height, length, clip_vision_output, reference_image, face_video, pose_video,
            background_video, character_mask, continue_motion, continue_motion_max_frames, video_frame_offset,
        )
        sampling_model = ModelSamplingSD3().patch(model, shift)[0].clone()
        capture = ModelInputCapture(sampling_model.model_options.get("model_function_wrapper"))
        sampling_model.set_model_unet_function_wrapper(capture)
        motion_latent_frames = (int(trim_image) + 3) // 4  # WanAnimateToVideo: trim_image = 4 * frames - 3
        results, frames_out = _sample_candidates(
            sampling_model, capture, vae, latent, positive_c, negative_c, int(trim_latent), steps, cfg, sampler_name,
            scheduler, candidates, seed, settings, motion_latent_frames, video_frame_offset,
        )
        preview = candidate_grid_preview(frames_out, [f"seed {c.seed}" for c in results], fps=16.0, prefix="ipa_candidates")
        images = torch.cat([frames[int(trim_image):] for frames in frames_out], dim=0)
        return io.NodeOutput(images, results, int(next_offset), ui=preview)


def _settings(model, width, height, length, steps, cfg, shift, sampler_name, scheduler, candidates, seed, background_video,
              character_mask, continue_motion, video_frame_offset) -> dict:
    """What the candidates were sampled with (meta.json's ``settings``); refuses what cannot be recorded faithfully."""
    import comfy.model_base

    if not isinstance(model.model, comfy.model_base.WAN22_Animate):
        raise ValueError(
            f"the model is {type(model.model).__name__}, not Wan2.2-Animate: load an Animate checkpoint "
            "(e.g. wan2.2_animate_14B_bf16.safetensors) with Load Diffusion Model"
        )
    if (length - 1) % 4 != 0:
        raise ValueError(f"length {length} must be 4k+1 (e.g. 77 or 81), so the hand mask's frames line up with the latent's")
    patches = describe_patches(model)
    if patches:
        log.warning("IPA Animate Sampler: the model carries patches %s. The trainer's reference must be this same model: "
                    "it reproduces LoRAs given as init_lora with the same strengths and refuses anything else.", patches)
    replacement = background_video is not None or character_mask is not None
    settings = {
        "width": width, "height": height, "length": length, "steps": steps, "cfg": cfg, "shift": shift,
        "sampler_name": sampler_name, "scheduler": scheduler, "denoise": 1.0, "candidates": candidates, "first_seed": seed,
        "model_class": type(model.model).__name__, "base_fingerprint": base_weights_fingerprint(model),
        "mode": "replacement" if replacement else "animation", "video_frame_offset": int(video_frame_offset),
        "continue_motion_frames": 0 if continue_motion is None else int(continue_motion.shape[0]),
    }
    if patches:
        settings["patches"] = patches
    return settings


def _sample_candidates(sampling_model, capture, vae, latent, positive_c, negative_c, trim_latent, steps, cfg, sampler_name,
                       scheduler, candidates, seed, settings, motion_latent_frames, video_frame_offset):
    import comfy.sample
    import comfy.utils
    import latent_preview

    latent_image = comfy.sample.fix_empty_latent_channels(sampling_model, latent["samples"])
    previewer = latent_preview.get_previewer(sampling_model.load_device, sampling_model.model.latent_format)
    total = steps * candidates
    pbar = comfy.utils.ProgressBar(total)
    frames_out, results = [], []
    for index in range(candidates):
        candidate_seed = (seed + index) % 2**64  # wraps like the seed widget's range (torch seeds are 64-bit)
        callback = _progress_callback(previewer, pbar, total, offset=index * steps)
        samples, sigmas = _sample_one(sampling_model, latent_image, positive_c, negative_c, candidate_seed, steps, cfg,
                                      sampler_name, scheduler, callback)
        inputs = _captured_inputs(capture)
        images = _decode(vae, samples, trim_latent)
        frames_out.append(images)
        results.append(AnimateCandidate(
            latent=samples.detach().float().cpu(), trim_latent=trim_latent, concat_latent=inputs["c_concat"],
            pose_latent=inputs["pose_latents"], face_pixels=inputs["face_pixel_values"], image_embedding=inputs["clip_fea"],
            text_embedding=positive_c[0][0].detach().float().cpu(), motion_latent_frames=motion_latent_frames,
            pose_frame_offset=int(video_frame_offset), frames=images.detach().float().cpu(), seed=candidate_seed,
            sigmas=sigmas, settings=dict(settings),
        ))
    return results, frames_out


def _captured_inputs(capture: ModelInputCapture) -> dict:
    missing = [key for key in MODEL_INPUT_KEYS if key not in (capture.captured or {})]
    if missing:
        raise ValueError(
            f"the Animate model was sampled without {missing}: connect clip_vision_output, pose_video and face_video (the "
            "trainer replays all of them)"
        )
    return capture.captured


NODES = [IPAAnimateSampler]
