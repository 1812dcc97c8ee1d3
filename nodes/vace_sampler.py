"""IPA VACE Sampler: N candidates from ComfyUI's own native VACE graph, plus what the trainer needs to replay them.

It runs, in-process, exactly what ``ModelSamplingSD3(shift) -> WanVaceToVideo -> KSampler -> TrimVideoLatent ->
VAEDecode`` does (the node classes and ``comfy.samplers.KSampler``, the same calls ``comfy.sample.sample``
makes), so candidate ``i`` is what the native graph makes with seed ``seed + i``. The CANDIDATES value keeps the
untrimmed latent, the VACE conditioning, the text conditioning and the sigmas actually used.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.v0_0_2 import io

from ..ipa_train.data.collect import Candidate
from .model_identity import base_weights_fingerprint, describe_patches
from .previews import candidate_grid_preview

log = logging.getLogger(__name__)

CANDIDATES = io.Custom("IPA_CANDIDATES")

def _vace_entries(conditioning) -> list[str]:
    return [key for entry in conditioning for key in ("vace_frames", "vace_mask", "vace_strength") if key in entry[1]]


def vace_condition(positive, vae, width, height, length, strength, control_video=None, control_masks=None, reference_image=None, negative=None):
    """Runs ComfyUI's ``WanVaceToVideo`` once (batch size 1). Returns ``(positive, negative, latent, trim_latent,
    vace)`` with ``vace`` the positive's ``vace_frames`` / ``vace_mask`` / ``vace_strength``; without a negative,
    the positive stands in for it (only the positive is kept then)."""
    from comfy_extras.nodes_wan import WanVaceToVideo

    if len(positive) != 1:
        raise ValueError(
            f"the positive conditioning has {len(positive)} entries (combined or concatenated prompts); the trainer replays "
            "one text conditioning per sample: use a single CLIP Text Encode for the positive prompt"
        )
    for name, conditioning in (("positive", positive), ("negative", negative or [])):
        if _vace_entries(conditioning):
            raise ValueError(
                f"the {name} conditioning already carries a VACE context (from a WanVaceToVideo node upstream). Chained VACE "
                "contexts are not supported: the trainer's transformer takes one. Connect the CLIP Text Encode output directly; "
                "this node runs WanVaceToVideo itself"
            )
    out = WanVaceToVideo.execute(
        positive, negative if negative is not None else positive, vae, width, height, length, 1, strength,
        control_video=control_video, control_masks=control_masks, reference_image=reference_image,
    )
    positive_out, negative_out, latent, trim_latent = out.args
    extra = positive_out[0][1]
    if len(extra["vace_frames"]) != 1:
        raise ValueError(f"expected one VACE context, got {len(extra['vace_frames'])}; chained VACE contexts are not supported")
    vace = {
        "vace_frames": extra["vace_frames"][0],
        "vace_mask": extra["vace_mask"][0],
        "vace_strength": float(extra["vace_strength"][0]),
    }
    return positive_out, negative_out, latent, int(trim_latent), vace


class IPAVaceSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import comfy.samplers

        return io.Schema(
            node_id="IPAVaceSampler",
            display_name="IPA VACE Sampler",
            category="IPA",
            description=(
                "Samples N candidates with ComfyUI's native Wan2.1-VACE graph (ModelSamplingSD3 + WanVaceToVideo + KSampler); "
                "candidate i uses seed + i, exactly like a KSampler with that seed. Outputs every candidate's frames and a "
                "CANDIDATES value for IPA Mark Preferred."
            ),
            inputs=[
                io.Model.Input("model", tooltip="Wan2.1-VACE from Load Diffusion Model (UNETLoader)."),
                io.Conditioning.Input("positive", tooltip="What the video should show (CLIP Text Encode, Wan UMT5 encoder)."),
                io.Conditioning.Input("negative", tooltip="What to avoid, e.g. deformed hands, extra fingers."),
                io.Vae.Input("vae", tooltip="The Wan VAE (wan_2.1_vae.safetensors)."),
                io.Image.Input("reference_image", tooltip="The VACE reference image: the person to animate."),
                io.Image.Input("control_video", tooltip="Control frames, e.g. DWPose renders."),
                io.Int.Input("width", default=832, min=16, max=8192, step=16, tooltip="Video width (paper: 832)."),
                io.Int.Input("height", default=480, min=16, max=8192, step=16, tooltip="Video height (paper: 480)."),
                io.Int.Input("length", default=81, min=1, max=8192, step=4, tooltip="Frames, 4k+1 (paper: 81 at 16 fps)."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Denoising steps per candidate."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale."),
                io.Float.Input("shift", default=8.0, min=0.0, max=100.0, step=0.01, tooltip="ModelSamplingSD3 shift (ComfyUI's Wan default 8)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="uni_pc", tooltip="KSampler's sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple", tooltip="KSampler's scheduler."),
                io.Int.Input("candidates", default=4, min=1, max=64, tooltip="How many videos to sample; candidate i uses seed + i."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the first candidate. With the control on increment it steps by the candidate "
                                     "count after each run, so no run samples a seed an earlier run did."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1000.0, step=0.01, optional=True, tooltip="VACE strength."),
                io.Mask.Input("control_mask", optional=True, tooltip="Optional VACE control mask (white: generate)."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="All candidates' frames, one after another (the node itself "
                                                               "shows them as a grid of looping clips, the seed on each)."),
                CANDIDATES.Output(display_name="candidates", tooltip="Everything IPA Mark Preferred stores: latents, VACE "
                                                                     "context, text conditioning, seeds, sigmas, settings."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, reference_image, control_video, width, height, length, steps, cfg, shift,
                sampler_name, scheduler, candidates, seed, strength=1.0, control_mask=None) -> io.NodeOutput:
        import comfy.sample
        import comfy.utils
        import latent_preview
        from comfy_extras.nodes_model_advanced import ModelSamplingSD3

        patches = _check_model(model, length)
        fingerprint = base_weights_fingerprint(model)

        sampling_model = ModelSamplingSD3().patch(model, shift)[0]
        positive_c, negative_c, latent, trim_latent, vace = vace_condition(
            positive, vae, width, height, length, strength, control_video, control_mask, reference_image, negative=negative,
        )
        latent_image = comfy.sample.fix_empty_latent_channels(sampling_model, latent["samples"])

        previewer = latent_preview.get_previewer(sampling_model.load_device, sampling_model.model.latent_format)
        total = steps * candidates
        pbar = comfy.utils.ProgressBar(total)
        settings = {
            "width": width, "height": height, "length": length, "steps": steps, "cfg": cfg, "shift": shift,
            "sampler_name": sampler_name, "scheduler": scheduler, "denoise": 1.0, "vace_strength": vace["vace_strength"],
            "candidates": candidates, "first_seed": seed, "model_class": type(model.model).__name__,
            "base_fingerprint": fingerprint,
        }
        if patches:
            settings["patches"] = patches

        frames_out, results = [], []
        for index in range(candidates):
            candidate_seed = (seed + index) % 2**64  # wraps like the seed widget's range (torch seeds are 64-bit)
            callback = _progress_callback(previewer, pbar, total, offset=index * steps)
            samples, sigmas = _sample_one(sampling_model, latent_image, positive_c, negative_c, candidate_seed, steps, cfg,
                                          sampler_name, scheduler, callback)
            images = _decode(vae, samples, trim_latent)
            frames_out.append(images)
            results.append(Candidate(
                latent=samples.detach().float().cpu(),
                trim_latent=trim_latent,
                vace_frames=vace["vace_frames"].detach().float().cpu(),
                vace_mask=vace["vace_mask"].detach().float().cpu(),
                vace_strength=vace["vace_strength"],
                text_embedding=positive_c[0][0].detach().float().cpu(),
                frames=images.detach().float().cpu(),
                seed=candidate_seed,
                sigmas=sigmas,
                settings=dict(settings),
            ))
        # one grid of looping clips, each tile with its seed (Wan2.1's 16 fps)
        preview = candidate_grid_preview(frames_out, [f"seed {c.seed}" for c in results], fps=16.0, prefix="ipa_candidates")
        return io.NodeOutput(torch.cat(frames_out, dim=0), results, ui=preview)


def _check_model(model, length: int) -> dict:
    """Refuses what this sampler cannot record faithfully; returns the model's patches (warned about: the trainer's
    reference must be this same model)."""
    import comfy.model_base

    if not isinstance(model.model, comfy.model_base.WAN21_Vace):
        raise ValueError(
            f"the model is {type(model.model).__name__}, not Wan2.1-VACE: load a VACE checkpoint "
            "(e.g. wan2.1_vace_1.3B_fp16.safetensors) with Load Diffusion Model"
        )
    if (length - 1) % 4 != 0:
        raise ValueError(f"length {length} must be 4k+1 (1, 5, 9, ..., 81), as WanVaceToVideo expects")
    patches = describe_patches(model)
    if patches:
        log.warning(
            "IPA VACE Sampler: the model carries patches %s. The trainer's reference must be this same model: it "
            "reproduces LoRAs given as init_lora with the same strengths and refuses anything else.", patches,
        )
    return patches


def _progress_callback(previewer, pbar, total: int, offset: int):
    """The sampler's step callback: honours Cancel, and moves the node's progress bar with a preview."""
    import comfy.model_management

    def callback(step, x0, x, total_steps):
        comfy.model_management.throw_exception_if_processing_interrupted()
        preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer else None
        pbar.update_absolute(offset + step + 1, total, preview)

    return callback


def _sample_one(sampling_model, latent_image, positive_c, negative_c, seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, callback) -> tuple[torch.Tensor, list[float]]:
    """One candidate's latent and the sigmas it was sampled with."""
    import comfy.model_management
    import comfy.sample
    import comfy.samplers

    # The same calls as nodes.common_ksampler -> comfy.sample.sample, keeping the KSampler to read its sigmas.
    noise = comfy.sample.prepare_noise(latent_image, seed, None)
    ksampler = comfy.samplers.KSampler(
        sampling_model, steps=steps, device=sampling_model.load_device, sampler=sampler_name, scheduler=scheduler,
        denoise=1.0, model_options=sampling_model.model_options,
    )
    sigmas = [float(value) for value in ksampler.sigmas]
    samples = ksampler.sample(
        noise, positive_c, negative_c, cfg=cfg, latent_image=latent_image, start_step=None, last_step=None,
        force_full_denoise=False, denoise_mask=None, sigmas=None, callback=callback, disable_pbar=True, seed=seed,
    )
    return samples.to(comfy.model_management.intermediate_device()), sigmas


def _decode(vae, samples: torch.Tensor, trim_latent: int) -> torch.Tensor:
    """IMAGE frames of a sampled latent, the reference frames trimmed off first (as TrimVideoLatent does)."""
    from comfy_extras.nodes_wan import TrimVideoLatent

    trimmed = TrimVideoLatent.execute({"samples": samples}, trim_latent).args[0]
    images = vae.decode(trimmed["samples"])
    if images.dim() == 5:
        images = images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
    return images


NODES = [IPAVaceSampler]
