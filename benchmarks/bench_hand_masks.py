"""Hand-mask speed on one CPU core: pixel masks for 81 frames at 480x832 from synthetic DWPose keypoints,
against naive baselines measured in the same run.

    python benchmarks/bench_hand_masks.py [--frames 81] [--width 832] [--height 480] [--people 2] [--repeats 15]

Baselines: pixel masks by testing every pixel of the frame against every hand box (dense comparisons per
hand, what a direct implementation does; it even gets the parsed boxes for free), and latent masks by one
strided ``amax`` over ``[T, h, 8, w, 8]`` followed by the temporal grouping. Figures: best of N runs
(robust to other load on a shared machine), median in brackets; ratios compare the best times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipa_train.pose.hands import hand_boxes, latent_hand_mask, pose_to_hand_masks  # noqa: E402
from ipa_train.pose.synthetic import synthetic_pose_sequence  # noqa: E402


class Timing(float):
    """Best-of-N milliseconds (robust to other processes on a shared machine); ``median`` alongside."""

    median: float

    def __format__(self, spec: str) -> str:
        return f"{format(float(self), spec)} (median {format(self.median, spec)})"


def median_ms(fn, repeats: int) -> Timing:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    result = Timing(1000 * min(times))
    result.median = 1000 * statistics.median(times)
    return result


def naive_pixel_masks(boxes, width, height):
    ys = torch.arange(height).view(-1, 1)
    xs = torch.arange(width).view(1, -1)
    masks = torch.zeros(len(boxes), height, width)
    for t, frame_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in frame_boxes:
            inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
            masks[t] = torch.maximum(masks[t], inside.float())
    return masks


def naive_latent(masks):
    T, H, W = masks.shape
    m = masks.reshape(T, H // 8, 8, W // 8, 8).amax(dim=(2, 4))
    rest = m[1:].reshape((T - 1) // 4, 4, H // 8, W // 8).amax(dim=1)
    return torch.cat([m[:1], rest])[None, None]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--people", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    W, H, T = args.width, args.height, args.frames
    poses = synthetic_pose_sequence(T, W, H, people=args.people, seed=0)
    boxes = hand_boxes(poses, W, H)
    hands = sum(len(b) for b in boxes)

    box_ms = median_ms(lambda: pose_to_hand_masks(poses, W, H, shape="box"), args.repeats)
    hull_ms = median_ms(lambda: pose_to_hand_masks(poses, W, H, shape="hull"), args.repeats)
    boxes_ms = median_ms(lambda: hand_boxes(poses, W, H), args.repeats)
    naive_ms = median_ms(lambda: naive_pixel_masks(boxes, W, H), max(3, args.repeats // 3))
    masks = pose_to_hand_masks(poses, W, H)
    if not torch.equal(masks, naive_pixel_masks(boxes, W, H)):
        raise SystemExit("the vectorised and naive box masks disagree")
    latent_ms = median_ms(lambda: latent_hand_mask(masks), args.repeats)
    naive_latent_ms = median_ms(lambda: naive_latent(masks), max(3, args.repeats // 3))
    if not torch.equal(latent_hand_mask(masks), naive_latent(masks)):
        raise SystemExit("the latent masks disagree with the baseline")

    print(f"hand masks: {T} frames at {H}x{W}, {args.people} people, {hands} hands, 1 CPU thread, best of {args.repeats} in ms")
    print(f"  pixel masks, box            {box_ms:8.1f}    (naive dense per-hand test {naive_ms:8.1f}, {naive_ms / box_ms:5.1f}x faster)")
    print(f"  pixel masks, hull           {hull_ms:8.1f}")
    print(f"  hand boxes only             {boxes_ms:8.1f}")
    print(f"  latent mask {tuple(latent_hand_mask(masks).shape)} {latent_ms:6.1f}   (one strided amax {naive_latent_ms:8.1f}, {naive_latent_ms / latent_ms:5.1f}x faster)")


if __name__ == "__main__":
    main()
