"""A small real dataset for the gallery tests: samples stored with ``add_sample`` (tiny tensors), animated WebP
previews drawn with Pillow (two moving "hands"), and hand boxes in meta.json matching the drawn hands."""

from __future__ import annotations

import asyncio
import colorsys
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ipa_train.data.samples import add_sample, create_dataset
from ipa_train.data.tensors import SampleTensors

PREVIEW_SIZE = (160, 96)
PREVIEW_FRAMES = 8


def tiny_tensors(seed: int) -> SampleTensors:
    g = torch.Generator().manual_seed(seed)
    frames, h, w = 2, 2, 2
    return SampleTensors(
        latent=torch.randn(16, frames, h, w, generator=g),
        vace_context=torch.randn(96, frames, h, w, generator=g),
        text_embedding=torch.randn(4, 8, generator=g),
        hand_mask=torch.zeros(1, frames - 1, h, w),
        ref_frames=1,
    )


def hand_boxes(seed: int) -> list[list[list[float]]]:
    boxes = []
    for frame in range(PREVIEW_FRAMES):
        left = [10 + 4 * frame + seed % 5, 30, 34 + 4 * frame + seed % 5, 54]
        right = [120 - 3 * frame, 50 - frame, 142 - 3 * frame, 72 - frame]
        boxes.append([left, right])
    return boxes


def preview_webp(seed: int) -> bytes:
    hue = (seed * 0.137) % 1.0
    background = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, 0.45, 0.55))
    frames = []
    for frame, boxes in enumerate(hand_boxes(seed)):
        image = Image.new("RGB", PREVIEW_SIZE, background)
        draw = ImageDraw.Draw(image)
        draw.ellipse([60, 10 + frame, 100, 90], fill=(230, 200, 170))  # a "body"
        for box in boxes:
            draw.rectangle(box, fill=(250, 220, 190), outline=(90, 40, 20), width=2)
        draw.text((4, 4), f"#{seed}", fill=(255, 255, 255))
        frames.append(image)
    out = io.BytesIO()
    frames[0].save(out, format="WEBP", save_all=True, append_images=frames[1:], duration=120, loop=0, quality=70)
    return out.getvalue()


def make_dataset(
    root: Path, name: str = "hands_v1", count: int = 6, previews: bool = True, first_seed: int = 100
) -> tuple[Path, list[str]]:
    """Creates dataset ``name`` with ``count`` pending samples (seeds first_seed, first_seed + 1, ...); returns its
    folder and ids."""
    path = create_dataset(root, name)
    ids = []
    for index in range(count):
        seed = first_seed + index
        meta = {
            "seed": seed,
            "prompt": f"a dancer waving both hands, take {index}",
            "steps": 20,
            "cfg": 5.0,
            "hand_boxes": hand_boxes(seed),
        }
        files = {"preview.webp": preview_webp(seed)} if previews else None
        summary = {"seed": seed, "prompt": meta["prompt"]}
        ids.append(add_sample(path, tiny_tensors(seed), meta=meta, previews=files, summary=summary).sample_id)
    return path, ids


# ------------------------------------------------------------------------------ hand scoring stand-ins

GRID = [(fx, fy) for fy in (0.1, 0.3, 0.5, 0.7, 0.9) for fx in (0.1, 0.3, 0.5, 0.7, 0.9)][:21]


def hand_from_box(box, confidence=1.0):
    x0, y0, x1, y1 = box
    return [v for fx, fy in GRID for v in (x0 + fx * (x1 - x0), y0 + fy * (y1 - y0), confidence)]


def pose_frame(boxes):
    people = [{"hand_left_keypoints_2d": hand_from_box(boxes[0]), "hand_right_keypoints_2d": hand_from_box(boxes[1]) if len(boxes) > 1 else None}]
    return {"people": people, "canvas_width": PREVIEW_SIZE[0], "canvas_height": PREVIEW_SIZE[1]}


def skin_detector(frames):
    """Finds the fixture's hands: the pixels of the hand colour, left and right of the body (a stand-in for
    DWPose with the same interface: RGB frames -> POSE_KEYPOINT frames)."""
    result = []
    for frame in frames:
        rgb = frame.astype(int)
        mask = (abs(rgb[..., 0] - 250) < 12) & (abs(rgb[..., 1] - 220) < 12) & (abs(rgb[..., 2] - 190) < 12)
        boxes = []
        for columns in (slice(0, 60), slice(100, frame.shape[1])):
            ys, xs = np.nonzero(mask[:, columns])
            if len(xs):
                offset = columns.start
                boxes.append((xs.min() + offset, ys.min(), xs.max() + offset + 1, ys.max() + 1))
        result.append(pose_frame(boxes) if boxes else {"people": [], "canvas_width": frame.shape[1], "canvas_height": frame.shape[0]})
    return result


def add_driving_poses(path: Path, ids: list[str], wrong=(1,), missing=(3,)) -> None:
    """Writes ``meta["driving_pose"]`` for the samples: the drawn hands' boxes as keypoints, shifted away from the
    drawn hands for the ``wrong`` positions (bad candidates), none for the ``missing`` ones (nothing to score)."""
    for index, sample_id in enumerate(ids):
        meta_file = path / "samples" / sample_id / "meta.json"
        meta = json.loads(meta_file.read_text())
        boxes = hand_boxes(meta["seed"])
        if index in wrong:
            boxes = [[[x0 + 40, y0 + 20, x1 + 40, y1 + 20] for x0, y0, x1, y1 in frame] for frame in boxes]
        if index not in missing:
            meta["driving_pose"] = [pose_frame(frame) for frame in boxes]
        meta_file.write_text(json.dumps(meta))


def serve(root, scenario, **app_options):
    """Runs ``await scenario(client)`` against a fresh gallery app over ``root`` (no pytest asyncio plugin needed)."""
    from aiohttp.test_utils import TestClient, TestServer

    from ipa_train.gallery.api import create_app

    async def main():
        client = TestClient(TestServer(create_app(root, **app_options)))
        await client.start_server()
        try:
            return await scenario(client)
        finally:
            await client.close()

    return asyncio.run(main())
