"""The sampling path shared by the demo and the method study: diffusers' ``WanVACEPipeline``.

:func:`build_tiny_pipeline` makes the demo's tiny random-weight pipeline (the transformer of
``model.TINY_VACE_CONFIG``, a tiny ``AutoencoderKLWan``, no text encoder: fixed random text embeddings go in as
``prompt_embeds``; nothing is downloaded). :func:`sample` runs a real pipeline call and records what its
transformer saw: the 96-channel VACE context and the text embedding (a forward pre-hook), and the final,
untrimmed latent (the step-end callback). Those are stored in the dataset as they are, so the trainer's
reference model gets exactly the inputs sampling used. :func:`load_lora` puts a trained LoRA file on the
pipeline's transformer with peft.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

# diffusers' own tiny test configuration of the Wan VAE (16 latent channels, x8 spatial, x4 causal temporal);
# its default latents_mean/std are Wan2.1's, as in ``wan_latents``.
TINY_VAE_CONFIG = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TEXT_TOKENS = 512  # Wan pads UMT5 output to 512 rows with zeros after the prompt's tokens
SCHEDULER_SHIFT = 3.0  # the diffusers hub scheduler's Wan shift


def build_tiny_pipeline(seed: int = 0, transformer=None):
    """``WanVACEPipeline`` with random tiny weights (the transformer from ``model.build_tiny_transformer(seed)``
    unless given), a flow-matching Euler scheduler and no tokenizer or text encoder."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanVACEPipeline

    from .model import build_tiny_transformer

    if transformer is None:
        transformer = build_tiny_transformer(seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(**TINY_VAE_CONFIG).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT)
    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class Sampled:
    """One generated video and exactly what the transformer saw while making it."""

    seed: int
    latent: torch.Tensor  # [1, 16, F, h, w] final latent in the model's space, reference frames in front
    vace_context: torch.Tensor  # [1, 96, F, h, w] control_hidden_states of every step (checked identical)
    text_embedding: torch.Tensor  # [1, L, D] encoder_hidden_states
    frames: torch.Tensor  # [T, H, W, 3] decoded video frames, 0..1
    ref_frames: int
    timesteps: list[float] = field(default_factory=list)
    sigmas: list[float] = field(default_factory=list)


def sample(
    pipe,
    control_video: Sequence,
    reference_image,
    text_embedding: torch.Tensor,
    seed: int,
    width: int,
    height: int,
    frames: int,
    steps: int,
    conditioning_scale: float = 1.0,
) -> Sampled:
    """One pipeline call (no classifier-free guidance: guidance 1) with the VACE context and final latent captured."""
    seen: dict[str, list] = {"context": [], "text": [], "timestep": []}

    def record_inputs(module, args, kwargs):
        seen["context"].append(kwargs["control_hidden_states"].detach().clone())
        seen["text"].append(kwargs["encoder_hidden_states"].detach().clone())
        seen["timestep"].append(float(kwargs["timestep"].reshape(-1)[0]))

    final: dict[str, torch.Tensor] = {}

    def record_latent(pipeline, step, timestep, callback_kwargs):
        final["latent"] = callback_kwargs["latents"].detach().clone()
        return {}

    hook = pipe.transformer.register_forward_pre_hook(record_inputs, with_kwargs=True)
    try:
        output = pipe(
            video=list(control_video),
            reference_images=[reference_image] if reference_image is not None else None,
            conditioning_scale=conditioning_scale,
            prompt_embeds=text_embedding,
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(int(seed)),
            output_type="pt",
            callback_on_step_end=record_latent,
        )
    finally:
        hook.remove()
    context = seen["context"][0]
    if any(not torch.equal(context, other) for other in seen["context"][1:]):
        raise RuntimeError("the VACE context changed between denoising steps; the demo stores one context per sample")
    video = output.frames[0].permute(0, 2, 3, 1).float().clamp(0, 1)  # [T, 3, H, W] -> [T, H, W, 3]
    return Sampled(
        seed=int(seed),
        latent=final["latent"].float(),
        vace_context=context.float(),
        text_embedding=seen["text"][0].float(),
        frames=video.contiguous(),
        ref_frames=1 if reference_image is not None else 0,
        timesteps=seen["timestep"],
        sigmas=[float(s) for s in pipe.scheduler.sigmas],
    )


def load_lora(transformer, path, adapter_name: str = "ipa") -> dict[str, str]:
    """Loads a LoRA file (any supported layout) into ``transformer`` with peft, exactly as trained
    (``alpha / rank`` per module); returns the file's metadata."""
    from peft import LoraConfig, set_peft_model_state_dict

    from .lora_io import load_lora_for_peft, peft_config_kwargs

    state, alphas, metadata = load_lora_for_peft(path)
    transformer.add_adapter(LoraConfig(**peft_config_kwargs(state, alphas)), adapter_name=adapter_name)
    result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"LoRA {path}: {len(unexpected)} weights match no layer of the model, e.g. {unexpected[0]}")
    transformer.set_adapter(adapter_name)
    transformer.eval()
    return metadata
