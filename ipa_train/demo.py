"""``python -m ipa_train demo``: a short showcase of the hand-mask and loss path on synthetic poses.

Synthetic DWPose keypoints (stick figures waving) -> pixel hand masks -> Wan latent hand masks -> the
Flow-IPA loss on random latents with that mask, with and without hand weighting. Writes a PNG preview
(pixel masks over the rendered poses, and the latent cells they mark) and prints where it is.
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_write_bytes
from .hands import hand_boxes, hand_mask_preview, latent_hand_mask, pose_to_hand_masks
from .loss import flow_ipa_loss
from .synthetic import render_pose_frames, synthetic_pose_sequence


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ipa_train demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=81, help="pixel frames, 4k+1 (default 81)")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--people", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=["box", "hull"], default="hull")
    parser.add_argument("--output", default="outputs/demo", help="folder for the preview PNG (default outputs/demo)")
    return parser.parse_args(argv)


def _preview_png(poses, pixel, latent, width, height, picks) -> bytes:
    from PIL import Image

    chosen = [poses[i] for i in picks]
    frames = render_pose_frames(chosen, width, height)
    top = hand_mask_preview(pixel[picks], frames, [hand_boxes(chosen, width, height)[k] for k in range(len(picks))])
    # The latent cells each pixel frame falls into (latent frame (i + 3) // 4), blown up 8x.
    cells = latent[0, 0, [(i + 3) // 4 for i in picks]]
    cells = cells.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
    bottom = hand_mask_preview(cells, frames, color=(1.0, 0.25, 0.85))
    grid = torch.cat([torch.cat(list(top), dim=1), torch.cat(list(bottom), dim=1)], dim=0)
    if grid.shape[1] > 2048:  # keep the sheet viewable: halve it
        grid = torch.nn.functional.interpolate(grid.movedim(-1, 0)[None], scale_factor=0.5, mode="area")[0].movedim(0, -1)
    image = Image.fromarray((grid.numpy() * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    W, H, T = args.width, args.height, args.frames

    print(f"[1/4] synthetic DWPose keypoints: {T} frames, {args.people} people waving, canvas {W}x{H}")
    poses = synthetic_pose_sequence(T, W, H, people=args.people, seed=args.seed)

    pixel = pose_to_hand_masks(poses, W, H, shape=args.shape)
    start = time.perf_counter()  # timed on the second call: the first pays one-off page faults and imports
    pixel = pose_to_hand_masks(poses, W, H, shape=args.shape)
    pixel_ms = 1000 * (time.perf_counter() - start)
    print(f"[2/4] pixel hand masks {tuple(pixel.shape)} ({args.shape}): {pixel_ms:.1f} ms, {100 * float(pixel.mean()):.2f}% of pixels are hand")

    latent = latent_hand_mask(pixel)
    print(f"[3/4] latent hand mask {tuple(latent.shape)}: {100 * float(latent.mean()):.2f}% of latent cells are hand")

    # Random latents with VACE's reference frame in front; the reference model errs equally everywhere, the
    # policy halves its error on hand cells only: a hand-only improvement, which hand weighting amplifies.
    frames_latent = latent.shape[2] + 1
    x0 = torch.randn(1, 16, frames_latent, H // 8, W // 8)
    noise = torch.randn_like(x0)
    target = noise - x0
    t = torch.tensor([0.4])
    ref_err = 0.3 * torch.randn_like(x0)
    hand = torch.nn.functional.pad(latent, (0, 0, 0, 0, 1, 0)).expand_as(x0)  # no hands on the reference frame
    ref_pred = target + ref_err
    model_pred = target + ref_err * (1 - 0.5 * hand)
    _, same = flow_ipa_loss(ref_pred, ref_pred, target, t, latent, beta=600.0, hand_weight=10.0)
    plain_loss, plain = flow_ipa_loss(model_pred, ref_pred, target, t, None, beta=600.0)
    hand_loss, weighted = flow_ipa_loss(model_pred, ref_pred, target, t, latent, beta=600.0, hand_weight=10.0)
    equal_loss, _ = flow_ipa_loss(ref_pred, ref_pred, target, t, latent)
    print("[4/4] Flow-IPA loss on random latents (beta 600, t 0.4):")
    print(f"      policy == reference:           loss {float(equal_loss):.4f} (log 2 = {math.log(2):.4f}), gap {float(same['ipa_gap']):.2e}")
    print(f"      better hands, no hand weight:  loss {float(plain_loss):.4f}, ipa_gap {float(plain['ipa_gap']):.5f}")
    print(f"      better hands, hand weight 10:  loss {float(hand_loss):.4f}, ipa_gap {float(weighted['ipa_gap']):.5f}")

    picks = sorted({0, T // 3, (2 * T) // 3, T - 1})
    png = _preview_png(poses, pixel, latent, W, H, picks)
    path = atomic_write_bytes(Path(args.output) / "hand_masks_preview.png", png)
    print(f"preview (top: pixel masks and boxes at frames {picks}; bottom: the latent cells they mark): {path.resolve()}")
    return 0
