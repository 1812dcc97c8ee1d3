"""IPA VACE Sampler: N candidates from ComfyUI's own native VACE graph, plus what the trainer needs to replay them.

It runs, in-process, exactly what ``ModelSamplingSD3(shift) -> WanVaceToVideo -> KSampler -> TrimVideoLatent ->
VAEDecode`` does (the node classes and ``comfy.samplers.KSampler``, the same calls ``comfy.sample.sample``
makes), so candidate ``i`` is what the native graph makes with seed ``seed + i``. The CANDIDATES value keeps the
untrimmed latent, the VACE conditioning, the text conditioning and the sigmas actually used.

With a second model (Wan2.2-VACE-Fun A14B's low-noise expert) it runs Wan2.2's native two-expert graph instead:
``ModelSamplingSD3`` on each model, one ``WanVaceToVideo``, then ``KSamplerAdvanced`` (high-noise model, add noise,
steps 0..switch_step, leftover noise returned) and ``KSamplerAdvanced`` (low-noise model, no noise added, steps
switch_step..end), each stage the very calls ``nodes.common_ksampler`` makes.
"""

from __future__ import annotations

import logging
from functools import partial

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
                "CANDIDATES value for IPA Mark Preferred. With model_low_noise connected (Wan2.2-VACE-Fun A14B) it samples like "
                "Wan2.2's native graph: two KSamplerAdvanced, the high-noise model up to switch_step, the low-noise model after."
            ),
            inputs=[
                io.Model.Input("model", tooltip="Wan2.1-VACE from Load Diffusion Model (UNETLoader); for Wan2.2-VACE-Fun A14B "
                                                "the high-noise expert (..._high_noise_...)."),
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
                io.Model.Input("model_low_noise", optional=True,
                               tooltip="Wan2.2-VACE-Fun A14B's low-noise expert (..._low_noise_..., Load Diffusion Model). Connected, "
                                       "each candidate is sampled as Wan2.2's native graph does it: two KSamplerAdvanced, `model` "
                                       "(the high-noise expert) for steps 0..switch_step with the noise added, this model from "
                                       "switch_step to the end on the leftover noise. Both get ModelSamplingSD3(shift)."),
                io.Int.Input("switch_step", default=10, min=1, max=10000, optional=True,
                             tooltip="Used only with model_low_noise: the step where the low-noise model takes over (the "
                                     "second KSamplerAdvanced's start_at_step and the first's end_at_step); below steps. It "
                                     "switches at sigma = sigmas[switch_step] of the full schedule (steps, scheduler, shift): "
                                     "the high-noise model denoises from sigmas[0] down to that sigma, the low-noise one from "
                                     "there to 0. Each candidate records both experts' sigmas and the switch sigma. The second "
                                     "stage's noise_seed is the candidate's seed too (it matters only for ancestral and SDE samplers)."),
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
                sampler_name, scheduler, candidates, seed, strength=1.0, control_mask=None, model_low_noise=None,
                switch_step=10) -> io.NodeOutput:
        import comfy.sample
        import comfy.utils
        import latent_preview
        from comfy_extras.nodes_model_advanced import ModelSamplingSD3

        patches = _check_model(model, length)
        fingerprint = base_weights_fingerprint(model)
        if model_low_noise is not None:
            _check_low_noise_model(model, model_low_noise, steps, switch_step)

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
            "base_fingerprint": fingerprint, **({"patches": patches} if patches else {}),
        }
        experts = None
        if model_low_noise is not None:
            experts = TwoExperts(sampling_model, ModelSamplingSD3().patch(model_low_noise, shift)[0], switch_step, steps, sampler_name, scheduler)
            settings.update(experts.settings(model, fingerprint, patches, model_low_noise))

        seeds = [(seed + index) % 2**64 for index in range(candidates)]  # wraps like the seed widget's range (64-bit)
        callback_at = partial(_progress_callback, previewer, pbar, total)  # (steps done before) -> the step callback
        if experts is None:  # one candidate after the other, each decoded before the next is sampled
            sampled = (_sample_one(sampling_model, latent_image, positive_c, negative_c, candidate_seed, steps, cfg, sampler_name,
                                   scheduler, callback_at(index * steps)) for index, candidate_seed in enumerate(seeds))
        else:
            sampled = experts.sample(latent_image, positive_c, negative_c, seeds, cfg, callback_at)

        frames_out, results = [], []
        for candidate_seed, (samples, sigmas) in zip(seeds, sampled):
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


def _check_low_noise_model(model, model_low_noise, steps: int, switch_step: int) -> None:
    """Refuses a second model that is not a VACE model of the first one's size, and a switch that leaves the
    low-noise model no step."""
    import comfy.model_base

    if not isinstance(model_low_noise.model, comfy.model_base.WAN21_Vace):
        raise ValueError(
            f"model_low_noise is {type(model_low_noise.model).__name__}, not a Wan VACE model: connect Wan2.2-VACE-Fun A14B's "
            "low-noise expert (e.g. wan2.2_fun_vace_low_noise_14B_fp16.safetensors) through Load Diffusion Model, or disconnect "
            "model_low_noise to sample with one model"
        )
    high, low = _architecture(model), _architecture(model_low_noise)
    if high != low:
        differences = ", ".join(f"{key} {high.get(key)} vs {low.get(key)}" for key in sorted(high.keys() | low.keys()) if high.get(key) != low.get(key))
        raise ValueError(
            f"model and model_low_noise are VACE models of different sizes ({differences}): connect the two experts of one "
            "Wan2.2-VACE-Fun model (the high-noise one to model, the low-noise one to model_low_noise)"
        )
    if switch_step >= steps:
        raise ValueError(
            f"switch_step {switch_step} must be below steps {steps}: the low-noise model takes over at that step and would "
            "do none (the native second KSamplerAdvanced would return its input unchanged). Lower switch_step or raise steps"
        )


_ARCHITECTURE_KEYS = ("model_type", "dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "patch_size", "vace_layers", "vace_in_dim")


def _architecture(model) -> dict:
    """What makes two Wan models the same network: the sizes ComfyUI detected from the weights (not their dtype)."""
    config = getattr(model.model.model_config, "unet_config", {}) or {}
    return {key: config.get(key) for key in _ARCHITECTURE_KEYS if key in config}


class TwoExperts:
    """Wan2.2's native two-expert sampling: two ``KSamplerAdvanced`` split at ``switch_step`` (high-noise model first)."""

    def __init__(self, high, low, switch_step: int, steps: int, sampler_name: str, scheduler: str):
        self.high, self.low = high, low  # ModelPatchers with ModelSamplingSD3(shift) applied
        self.switch_step, self.steps = switch_step, steps
        self.sampler_name, self.scheduler = sampler_name, scheduler
        # The sigmas each KSamplerAdvanced slices (comfy.samplers.KSampler.sample): the high one [0..S], the low one [S..].
        self.high_sigmas = self._schedule(high)[: switch_step + 1]
        self.low_sigmas = self._schedule(low)[switch_step:]
        log.info("IPA VACE Sampler: two experts, the low-noise model takes over at step %d of %d (sigma %.4f)", switch_step, steps,
                 self.low_sigmas[0])

    def _schedule(self, model) -> list[float]:
        import comfy.samplers

        ksampler = comfy.samplers.KSampler(model, steps=self.steps, device=model.load_device, sampler=self.sampler_name,
                                           scheduler=self.scheduler, denoise=1.0, model_options=model.model_options)
        return [float(value) for value in ksampler.sigmas]

    @property
    def switch_sigma(self) -> float:
        return self.low_sigmas[0]

    def settings(self, high_model, high_fingerprint: str, high_patches: dict, low_model) -> dict:
        """The candidate settings that describe both experts (the top-level fingerprint and patches stay the high one's)."""
        low_patches = describe_patches(low_model)
        if low_patches:
            log.warning("IPA VACE Sampler: the low-noise model carries patches %s. The trainer's reference must be this same "
                        "model: it reproduces LoRAs given as init_lora with the same strengths and refuses anything else.", low_patches)
        return {
            "experts": {"high": _expert_record(high_model, high_fingerprint, high_patches, self.high_sigmas),
                        "low": _expert_record(low_model, base_weights_fingerprint(low_model), low_patches, self.low_sigmas)},
            "switch_step": self.switch_step, "switch_sigma": self.switch_sigma,
        }

    def sample(self, latent_image, positive, negative, seeds: list[int], cfg: float, callback_at) -> list[tuple[torch.Tensor, list[float]]]:
        """Every candidate's latent after both stages, with the sigmas of the whole schedule. The high-noise stage of
        all candidates runs first, then the low-noise stage: each model is loaded once, not once per candidate (two
        14B experts rarely fit in VRAM together), and each stage is the same computation as in the native graph.
        ``callback_at(done)`` makes the step callback of a stage that starts after ``done`` steps of the run."""
        common = dict(steps=self.steps, cfg=cfg, sampler_name=self.sampler_name, scheduler=self.scheduler, positive=positive, negative=negative)
        high_steps, low_steps = self.switch_step, self.steps - self.switch_step
        leftovers = [
            _ksampler_advanced(self.high, latent_image, seed=seed, add_noise=True, start_step=0, last_step=self.switch_step,
                               return_with_leftover_noise=True, callback=callback_at(index * high_steps), **common)
            for index, seed in enumerate(seeds)
        ]
        done = len(seeds) * high_steps
        sigmas = self.high_sigmas + self.low_sigmas[1:]
        return [
            (_ksampler_advanced(self.low, leftover, seed=seed, add_noise=False, start_step=self.switch_step, last_step=10000,
                                return_with_leftover_noise=False, callback=callback_at(done + index * low_steps), **common), list(sigmas))
            for index, (seed, leftover) in enumerate(zip(seeds, leftovers))
        ]


def _expert_record(model, fingerprint: str, patches: dict, sigmas: list[float]) -> dict:
    """One expert in a candidate's settings: what the trainer checks its reference against, and the sigmas it saw."""
    return {"base_fingerprint": fingerprint, "patches": dict(patches), "model_class": type(model.model).__name__, "sigmas": list(sigmas)}


def _ksampler_advanced(model, latent_image, seed, steps, cfg, sampler_name, scheduler, positive, negative, add_noise: bool, start_step: int,
                       last_step: int, return_with_leftover_noise: bool, callback) -> torch.Tensor:
    """``KSamplerAdvanced.sample`` -> ``nodes.common_ksampler`` on a latent without batch_index or noise mask, with the
    node's callback (progress, preview, Cancel) instead of ComfyUI's own."""
    import comfy.sample

    latent_image = comfy.sample.fix_empty_latent_channels(model, latent_image)
    if add_noise:
        noise = comfy.sample.prepare_noise(latent_image, seed, None)
    else:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
                               disable_noise=not add_noise, start_step=start_step, last_step=last_step,
                               force_full_denoise=not return_with_leftover_noise, noise_mask=None, callback=callback, disable_pbar=True, seed=seed)


def _progress_callback(previewer, pbar, total: int, offset: int):
    """The sampler's step callback: honours Cancel, and moves the node's progress bar with a preview. The step the
    sampler reports counts from its own first step, ``offset`` steps into the whole run."""
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
