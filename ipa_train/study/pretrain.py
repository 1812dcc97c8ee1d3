"""``python -m ipa_train.study pretrain``: trains the study world's VAE, then its VACE transformer, on CPU.

1. **VAE** (diffusers' ``AutoencoderKLWan``, ``models.VAE_CONFIG``): reconstructs world videos, their OpenPose
   control videos and reference images, with hand pixels weighted up so that glyph quality survives encode and
   decode. Trained on 64x64 crops (it is convolutional): single frames first (cheap: the spatial path), then
   9-frame clips (the causal temporal path); then its latent statistics become its ``latents_mean`` /
   ``latents_std``, the normalisation the pipeline applies.
2. **Transformer** (diffusers' ``WanVACETransformer3DModel``, ``models.TRANSFORMER_CONFIG``): flow matching on
   world videos in which ``world.BAD_HAND_RATE`` of the hands are bad, conditioned exactly as the pack samples:
   the VACE context comes from ``WanVACEPipeline``'s own ``preprocess_conditions`` / ``prepare_video_latents`` /
   ``prepare_masks`` on the control video and the reference image, the text is the fixed embedding, and the
   timestep is ``1000 * sigma``. Target ``v = noise - x0``, the reference latent frame in front of the video's.

Fixed seeds throughout; the weights go to ``models.WEIGHTS`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import models, world
from .models import decode_frames, to_model_video

CROP = 64


def log(message: str) -> None:
    print(f"[pretrain] {message}", file=sys.stderr, flush=True)


def world_pool(count: int, seed: int, bad_rate: float) -> list[world.WorldVideo]:
    rng = np.random.default_rng(seed)
    return [world.random_video(rng, pose_seed=seed * 100_000 + i, bad_rate=bad_rate) for i in range(count)]


# ------------------------------------------------------------------------------------------------------ VAE


def _hand_centres(poses: list[dict]) -> list[tuple[float, float]]:
    centres = []
    for frame in poses:
        for key in world.HAND_KEYS:
            points = world.hand_points(frame, key)
            if points is not None:
                centres.append(tuple(points.mean(axis=0)))
    return centres


def _crop(video: np.ndarray, centre, rng: np.random.Generator, size: int = CROP) -> tuple[np.ndarray, slice, slice]:
    T, H, W, _ = video.shape
    if size >= min(H, W):
        return video, slice(0, H), slice(0, W)
    if centre is None:
        y0, x0 = int(rng.integers(0, H - size + 1)), int(rng.integers(0, W - size + 1))
    else:
        x0 = int(np.clip(centre[0] - size / 2 + rng.integers(-12, 13), 0, W - size))
        y0 = int(np.clip(centre[1] - size / 2 + rng.integers(-12, 13), 0, H - size))
    rows, cols = slice(y0, y0 + size), slice(x0, x0 + size)
    return video[:, rows, cols], rows, cols


def vae_batch(items: list[tuple], rng: np.random.Generator, batch: int, size: int = CROP) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` crops (``size`` square) of world or control videos (half of them around a hand), with hand weights."""
    from ..pose.hands import pose_to_hand_masks

    videos, weights = [], []
    for _ in range(batch):
        frames, control, poses = items[int(rng.integers(len(items)))]
        source = control if rng.random() < 0.25 else frames
        centres = _hand_centres(poses)
        centre = centres[int(rng.integers(len(centres)))] if centres and rng.random() < 0.5 else None
        pixels, rows, cols = _crop(source, centre, rng, size)
        mask = pose_to_hand_masks(poses, source.shape[2], source.shape[1])[:, rows, cols]
        videos.append(to_model_video(pixels)[0])
        weights.append(1.0 + 4.0 * mask)
    return torch.stack(videos), torch.stack(weights)[:, None]


def vae_loss(vae, video: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    z = vae.encode(video).latent_dist.mode()
    recon = vae.decode(z).sample
    return (weight * (recon - video).square()).mean() / weight.mean() + 1e-5 * z.square().mean()


def _train_phase(vae, make_batch, steps: int, lr: float, label: str, started: float, minutes: float | None) -> None:
    """Adam under a cosine schedule (50 warm-up steps, down to 5 %) for ``steps`` batches of ``make_batch()``."""
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    recent, phase_started = [], time.perf_counter()
    for step in range(steps):
        video, weight, kind = make_batch(step)
        loss = vae_loss(vae, video, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        recent.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"VAE {label} step {step + 1}/{steps} ({kind}): loss {np.mean(recent):.4f} ({(time.perf_counter() - phase_started) / (step + 1):.2f} s/step)")
            recent = []
        if minutes is not None and time.perf_counter() - started > 60 * minutes:
            log(f"VAE: time budget of {minutes} min reached in {label} at step {step + 1}")
            return


def train_vae(pool: list[world.WorldVideo], image_steps: int, clip_steps: int, full_steps: int, seed: int, lr: float = 1e-3,
              minutes: float | None = None, init=None, full_size: int = CROP, second_runs: int = 2):
    """Two runs. The first, one cosine schedule over single 64x64 frames (batch 32; the spatial path, 20x cheaper
    per crop than a clip) and then 9-frame 64x64 clips (batch 2; the causal temporal path), the reference images
    among the single frames. Then ``second_runs`` times, from the weights so far with a fresh optimizer: 9-frame
    clips of ``full_size`` (batch 2; the temporal path, which the first run leaves far behind the spatial one;
    each such run draws the same clips). ``init``: a VAE that finished the first run (the second runs start
    from it)."""
    log(f"VAE: rendering {len(pool)} world videos")
    items = [(v.frames(), v.control(), v.poses()) for v in pool]
    references = np.stack([world.render_reference(c) for c in range(len(world.BODY_COLORS))])
    started = time.perf_counter()
    if init is None:
        vae = models.build_vae(seed).train()
        rng = np.random.default_rng(seed)

        def crops(step):
            if step >= image_steps:
                return (*vae_batch(items, rng, 2), "clips")
            video, weight = vae_batch(items, rng, 32)
            first = rng.integers(0, video.shape[2], size=len(video))
            pick = torch.from_numpy(first)[:, None, None, None, None].expand(-1, video.shape[1], 1, *video.shape[3:])
            if step % 8 == 7:  # the reference images' path: whole frames, as VACE encodes them
                video = to_model_video(references[rng.integers(len(references), size=4)])[0].permute(1, 0, 2, 3)[:, :, None]
                return video, torch.ones_like(video[:, :1]), "references"
            return video.gather(2, pick), weight.gather(2, pick[:, :1]), "frames"

        _train_phase(vae, crops, image_steps + clip_steps, lr, "run 1", started, minutes)
    else:
        vae = init.train()
    for run in range(second_runs):
        rng_full = np.random.default_rng(seed + 3)
        _train_phase(vae, lambda step: (*vae_batch(items, rng_full, 2, size=full_size), f"{full_size}px clips"), full_steps, lr,
                     f"run {run + 2}", started, minutes)
    vae.eval()
    set_latent_statistics(vae, items[: min(len(items), 24)])
    return vae


@torch.no_grad()
def set_latent_statistics(vae, items) -> None:
    """Per-channel mean and std of the VAE's latents over world videos, stored as its ``latents_mean/std``."""
    latents = torch.cat([vae.encode(to_model_video(frames)).latent_dist.mode().flatten(2) for frames, _, _ in items], dim=2)
    mean, std = latents.mean(dim=(0, 2)), latents.std(dim=(0, 2)).clamp_min(1e-3)
    vae.register_to_config(latents_mean=[round(float(v), 6) for v in mean], latents_std=[round(float(v), 6) for v in std])


@torch.no_grad()
def vae_figures(vae, pool: list[world.WorldVideo]) -> dict:
    """Reconstruction error overall and inside the hands, and whether the hand score still tells good from bad
    hands after encode and decode (the score's accuracy on reconstructions)."""
    from . import score

    errors, hand_errors, correct, total = [], [], 0, 0
    for video in pool:
        frames = video.frames()
        recon = decode_frames(vae, vae.encode(to_model_video(frames)).latent_dist.mode())
        diff = (recon - frames.astype(np.float32) / 255.0) ** 2
        errors.append(float(diff.mean()))
        result = score.score_video(recon, video, vae)
        for hand, quality in zip(result.hands, video.hands):
            if hand is not None:
                total += 1
                correct += int(hand.good == (quality == "good"))
                hand_errors.append(hand.error)
    return {"reconstruction_mse": float(np.mean(errors)), "hand_error": float(np.mean(hand_errors)),
            "score_accuracy_on_reconstructions": correct / max(total, 1)}


# ------------------------------------------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ipa_train.study pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("all", "vae", "transformer"), default="all")
    parser.add_argument("--output", default=str(models.WEIGHTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-image-steps", type=int, default=1400, help="VAE steps on single frames (batch 32)")
    parser.add_argument("--vae-clip-steps", type=int, default=400, help="VAE steps on 9-frame 64x64 clips (batch 2)")
    parser.add_argument("--vae-full-steps", type=int, default=700, help="VAE steps of each second run: 9-frame clips (batch 2)")
    parser.add_argument("--vae-full-size", type=int, default=CROP, help="the second runs' clip size (default 64)")
    parser.add_argument("--vae-second-runs", type=int, default=2, help="how many second runs (default 2)")
    parser.add_argument("--vae-videos", type=int, default=300)
    parser.add_argument("--vae-resume", action="store_true", help="start the VAE's second runs from the output folder's VAE")
    parser.add_argument("--vae-minutes", type=float, default=None, help="stop the VAE early after this many minutes")
    parser.add_argument("--transformer-steps", type=int, default=2000)
    parser.add_argument("--transformer-videos", type=int, default=500)
    parser.add_argument("--transformer-minutes", type=float, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from ..fileio import atomic_write_json

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "pretrain.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if args.stage in ("all", "vae"):
        started = time.perf_counter()
        vae = train_vae(world_pool(args.vae_videos, args.seed, bad_rate=0.5), args.vae_image_steps, args.vae_clip_steps, args.vae_full_steps, args.seed,
                        minutes=args.vae_minutes, init=models.load_vae(out) if args.vae_resume else None, full_size=args.vae_full_size,
                        second_runs=args.vae_second_runs)
        models.save_vae(vae, out)
        figures = vae_figures(vae, world_pool(16, args.seed + 7, bad_rate=0.5))
        record["vae"] = {"image_steps": args.vae_image_steps, "clip_steps": args.vae_clip_steps, "full_steps": args.vae_full_steps, "full_size": args.vae_full_size, "second_runs": args.vae_second_runs, "resumed": bool(args.vae_resume), "videos": args.vae_videos, "seconds": round(time.perf_counter() - started, 1), **figures}
        log(f"VAE done: {record['vae']}")
        atomic_write_json(record_path, record)
    if args.stage in ("all", "transformer"):
        from .pretrain_transformer import train_transformer

        record["transformer"] = train_transformer(out, args)
        atomic_write_json(record_path, record)
    return 0
