"""Stage 2 of ``python -m ipa_train.study pretrain``: the VACE transformer, by flow matching on world videos.

The conditioning is made by ``WanVACEPipeline``'s own helpers (``condition``), so the pretrained model sees
exactly what it will see when the pack samples with it; the latent is the VAE's, normalised as the pipeline does.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import models, world


def log(message: str) -> None:
    print(f"[pretrain] {message}", file=sys.stderr, flush=True)


def pil_frames(frames_u8: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(frame) for frame in frames_u8]


@torch.no_grad()
def condition(pipe, video: world.WorldVideo) -> torch.Tensor:
    """The 96-channel VACE context ``[1, 96, 1 + F, h, w]`` of a world video, as ``WanVACEPipeline.__call__``
    builds it from ``video=`` (the control frames, no mask) and ``reference_images=[reference]``."""
    from PIL import Image

    frames, mask, references = pipe.preprocess_conditions(
        pil_frames(video.control()), None, [Image.fromarray(video.reference())], 1, video.height, video.width,
        video.frames_count, torch.float32, torch.device("cpu"),
    )
    latents = pipe.prepare_video_latents(frames, mask, references, None, torch.device("cpu"))
    return torch.cat([latents, pipe.prepare_masks(mask, references, None)], dim=1).float()


@torch.no_grad()
def target_latent(pipe, video: world.WorldVideo, context: torch.Tensor) -> torch.Tensor:
    """``x0`` ``[1, 16, 1 + F, h, w]``: the reference image's latent (from the context, as sampling lays it out)
    in front of the video's normalised latent."""
    vae = pipe.vae
    z = vae.encode(models.to_model_video(video.frames())).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return torch.cat([context[:, :16, :1], (z - mean) / std], dim=2).float()


def shifted_sigmas(count: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise levels mapped by the sampling scheduler's shift (more time at high noise, as sampling)."""
    u = torch.rand(count, generator=generator)
    return shift * u / (1 + (shift - 1) * u)


def train_transformer(out: Path, args) -> dict:
    """Pretrains the world's VACE transformer on ``args.transformer_videos`` world videos and saves it in the original
    Wan single-file layout (with the text embedding it was trained with). Returns the figures for the study's record."""
    from ..fileio import atomic_save_safetensors
    from ..wan.model import save_original_wan_single_file

    started = time.perf_counter()
    vae = models.load_vae(out)
    transformer = models.build_transformer(args.seed)
    pipe = models.build_pipeline(transformer, vae)
    text = models.text_embedding(args.seed)
    atomic_save_safetensors(out / models.TEXT_FILE, {"text_embedding": text.contiguous()})

    rng = np.random.default_rng(args.seed + 1)
    pool = [world.random_video(rng, pose_seed=args.seed * 100_000 + 50_000 + i) for i in range(args.transformer_videos)]
    contexts, latents = encode_videos(pipe, pool, started)
    encode_seconds = time.perf_counter() - started
    batch = 8
    steps, losses = flow_matching(transformer, pipe, text, contexts, latents, args, batch)
    transformer.eval()
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ComfyUI will not rebuild")  # 32-wide heads: a diffusers-only size
        save_original_wan_single_file(transformer, out / models.TRANSFORMER_FILE)
    return {"steps": steps, "videos": len(pool), "batch": batch, "encode_seconds": round(encode_seconds, 1),
            "seconds": round(time.perf_counter() - started, 1), "loss_every_100_steps": losses}


def encode_videos(pipe, pool: list, started: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The VACE contexts and target latents of the training videos, encoded once (training reuses them)."""
    log(f"transformer: encoding {len(pool)} world videos ({world.BAD_HAND_RATE:.0%} of hands bad) through the pipeline's conditioning")
    contexts, latents = [], []
    for i, video in enumerate(pool):
        context = condition(pipe, video)
        contexts.append(context)
        latents.append(target_latent(pipe, video, context))
        if (i + 1) % 100 == 0:
            log(f"  {i + 1}/{len(pool)} encoded ({time.perf_counter() - started:.0f} s)")
    return torch.cat(contexts), torch.cat(latents)


def flow_matching(transformer, pipe, text: torch.Tensor, contexts: torch.Tensor, latents: torch.Tensor, args, batch: int) -> tuple[int, list]:
    """Full fine-tuning by flow matching (AdamW, warm-up then cosine decay) for ``args.transformer_steps`` steps or
    ``args.transformer_minutes``. Returns (steps done, mean loss of every 100 steps)."""
    steps = args.transformer_steps
    transformer.train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    generator = torch.Generator().manual_seed(args.seed + 2)
    scale = torch.ones(len(transformer.config.vace_layers))
    losses, recent, train_started = [], [], time.perf_counter()
    for step in range(steps):
        index = torch.randint(len(latents), (batch,), generator=generator)
        x0, context = latents[index], contexts[index]
        sigma = shifted_sigmas(batch, pipe.scheduler.config.shift, generator)
        noise = torch.randn(x0.shape, generator=generator)
        s = sigma.view(-1, 1, 1, 1, 1)
        pred = transformer(hidden_states=(1 - s) * x0 + s * noise, timestep=1000 * sigma, encoder_hidden_states=text.expand(batch, -1, -1),
                           control_hidden_states=context, control_hidden_states_scale=scale, return_dict=False)[0]
        loss = (pred - (noise - x0)).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        recent.append(float(loss))
        if (step + 1) % 100 == 0 or step + 1 == steps:
            losses.append(round(float(np.mean(recent)), 5))
            log(f"transformer step {step + 1}/{steps}: loss {losses[-1]:.4f} ({(time.perf_counter() - train_started) / (step + 1):.2f} s/step)")
            recent = []
        if args.transformer_minutes is not None and time.perf_counter() - train_started > 60 * args.transformer_minutes:
            log(f"transformer: time budget of {args.transformer_minutes} min reached at step {step + 1}")
            return step + 1, losses
    return steps, losses
