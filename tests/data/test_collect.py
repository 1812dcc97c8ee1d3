"""The collector's core (ipa_train.data.collect, wan_latents, previews) without ComfyUI: layout, normalisation, previews,
concurrency, killed writes, de-duplication."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import time

import pytest
import torch

from ipa_train.data import collect
from ipa_train.data.collect import Candidate, candidate_to_sample, store_candidates
from ipa_train.data.garbage import remove_stale_staging
from ipa_train.data.layout import sample_path
from ipa_train.data.manifest import read_manifest
from ipa_train.data.previews import animated_webp, boxes_from_masks
from ipa_train.data.samples import create_dataset, load_preferred
from ipa_train.data.tensors import validate_sample_tensors
from ipa_train.wan import latents as wan_latents


def make_candidate(seed: int = 0, frames: int = 3, ref: int = 1, h: int = 4, w: int = 6, tokens: int = 512, with_frames: bool = True) -> Candidate:
    generator = torch.Generator().manual_seed(seed)
    total = frames + ref
    text = torch.zeros(1, tokens, 8)
    text[:, :5] = torch.randn(1, 5, 8, generator=generator)
    pixel_frames = (frames - 1) * 4 + 1
    return Candidate(
        latent=torch.randn(1, 16, total, h, w, generator=generator) * 2 + 0.5,
        trim_latent=ref,
        vace_frames=torch.randn(1, 32, total, h, w, generator=generator),
        vace_mask=torch.rand(1, 64, total, h, w, generator=generator),
        vace_strength=0.7,
        text_embedding=text,
        frames=torch.rand(pixel_frames, h * 8, w * 8, 3, generator=generator) if with_frames else None,
        seed=seed,
        sigmas=[1.0, 0.5, 0.0],
        settings={"steps": 2},
    )


def test_latent_normalisation_uses_wan21_constants():
    raw = torch.randn(1, 16, 2, 3, 3)
    mean = torch.tensor(wan_latents.WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(wan_latents.WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)
    assert torch.allclose(wan_latents.normalize_latent(raw, channel_dim=1), (raw - mean) / std)
    assert torch.allclose(wan_latents.denormalize_latent(wan_latents.normalize_latent(raw, 1), 1), raw, atol=1e-6)
    with pytest.raises(ValueError, match="16 latent channels"):
        wan_latents.normalize_latent(torch.zeros(1, 48, 2, 3, 3), channel_dim=1)


def test_diffusers_vae_config_has_the_same_constants():
    """AutoencoderKLWan's default latents_mean/std (read from its source: importing diffusers is slow, and impossible
    next to the import-only torchvision stand-in) equal the constants the collector uses."""
    import ast
    import importlib.util
    from pathlib import Path

    source = Path(importlib.util.find_spec("diffusers").origin).parent / "models" / "autoencoders" / "autoencoder_kl_wan.py"
    tree = ast.parse(source.read_text())
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "AutoencoderKLWan")
    init = next(node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    names = [arg.arg for arg in init.args.args][-len(init.args.defaults):]
    defaults = dict(zip(names, init.args.defaults))
    assert tuple(round(v, 4) for v in ast.literal_eval(defaults["latents_mean"])) == wan_latents.WAN21_LATENTS_MEAN
    assert tuple(round(v, 4) for v in ast.literal_eval(defaults["latents_std"])) == wan_latents.WAN21_LATENTS_STD


def test_candidate_to_sample_layout():
    candidate = make_candidate()
    tensors, meta, previews, summary = candidate_to_sample(candidate)
    raw = candidate.latent[0]
    assert torch.allclose(tensors.latent, wan_latents.normalize_latent(raw, channel_dim=0))
    context = tensors.vace_context
    assert context.shape == (96, 4, 4, 6)
    # channel order: normalised inactive (0:16), normalised reactive (16:32), mask (32:96)
    assert torch.allclose(context[:16], wan_latents.normalize_latent(candidate.vace_frames[0, :16], 0))
    assert torch.allclose(context[16:32], wan_latents.normalize_latent(candidate.vace_frames[0, 16:], 0))
    assert torch.equal(context[32:], candidate.vace_mask[0])
    assert tensors.ref_frames == 1 and tensors.vace_strength == pytest.approx(0.7)
    assert tensors.hand_mask.shape == (1, 3, 4, 6) and float(tensors.hand_mask.abs().sum()) == 0.0
    assert tensors.text_embedding.shape == (512, 8) and tensors.text_length == 5
    assert torch.equal(tensors.text_embedding, candidate.text_embedding[0])
    assert meta["sigmas"] == [1.0, 0.5, 0.0] and meta["seed"] == 0
    assert set(previews) == {"preview.webp"}
    validate_sample_tensors(tensors)


def test_text_is_stored_exactly_as_sampled():
    """No padding and no truncation: the text embedder has no attention mask, so zero rows the sampler never saw would
    change the sample's velocity (the trainer batches by text length instead)."""
    short_candidate = make_candidate(tokens=77, with_frames=False)
    short, meta, _, _ = candidate_to_sample(short_candidate)
    assert short.text_embedding.shape == (77, 8) and torch.equal(short.text_embedding, short_candidate.text_embedding[0])
    assert meta["text_tokens_stored"] == meta["text_tokens_sampled"] == 77
    long, meta, _, _ = candidate_to_sample(make_candidate(tokens=600, with_frames=False))
    assert long.text_embedding.shape == (600, 8)  # never truncated
    assert meta["text_tokens_sampled"] == 600


def test_mismatched_context_is_refused():
    candidate = make_candidate(with_frames=False)
    candidate.latent = candidate.latent[:, :, 1:]  # a trimmed latent with an untrimmed control: misaligned
    candidate.trim_latent = 0
    with pytest.raises(ValueError, match="untrimmed sampler output"):
        candidate_to_sample(candidate)


def test_animated_preview_and_boxes():
    frames = torch.rand(5, 40, 64, 3)
    data, size = animated_webp(frames, max_side=32)
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "WEBP" and getattr(image, "n_frames", 1) == 5 and image.size == (32, 20) == size
    masks = torch.zeros(2, 10, 10)
    masks[0, 2:5, 3:7] = 1
    assert boxes_from_masks(masks) == [[(3, 2, 7, 5)], []]


def test_mask_hand_boxes_and_closeup_go_into_meta(tmp_path):
    candidate = make_candidate(h=4, w=8)
    masks = torch.zeros(9, 32, 64)
    masks[:, 8:16, 40:56] = 1
    tensors, meta, previews, _ = candidate_to_sample(candidate, pixel_hand_masks=masks)
    assert "hands.webp" in previews
    assert meta["hand_boxes"][0] == [[40, 8, 56, 16]]
    assert float(tensors.hand_mask.sum()) > 0


def test_driving_pose_goes_into_meta_as_the_gallery_reads_it(tmp_path):
    """The collector's pose-derived meta (driving_pose + driving_pose_resize, hand_boxes) is what the gallery's hand
    score and close-ups read: its fit of the stored pose lands where the collector's hand boxes are, scoring that
    pose against itself gives 1, and the boxes parse into hand tracks."""
    from ipa_train.gallery import hand_scoring
    from ipa_train.pose import hand_crops
    from ipa_train.pose.hands import hand_boxes, pose_to_hand_masks
    from ipa_train.pose.synthetic import synthetic_pose_sequence

    candidate = make_candidate(h=4, w=8)  # video 64 x 32, 9 frames
    pose = synthetic_pose_sequence(12, 96, 64, seed=3)  # another aspect and more frames than the video
    driving = collect.driving_pose_frames(pose, 9)
    assert len(driving) == 9 and driving[4]["canvas_width"] == 96
    assert driving[4]["people"][0]["hand_left_keypoints_2d"] == pose[4]["people"][0]["hand_left_keypoints_2d"]  # as given
    assert set(driving[0]["people"][0]) == {"pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"}
    masks = pose_to_hand_masks(pose[:9], 64, 32, resize="crop")
    boxes = [[list(box) for box in frame] for frame in hand_boxes(pose[:9], 64, 32, resize="crop")]
    result = store_candidates(tmp_path, "posed", [candidate], status="pending", pixel_hand_masks=masks, hand_boxes=boxes,
                              driving_pose=driving)
    sample_id = result.results[0].sample_id
    meta = json.loads((sample_path(tmp_path / "posed", sample_id) / "meta.json").read_text())
    assert meta["driving_pose"] == driving and meta["driving_pose_resize"] == "crop" and meta["hand_mask_source"] == "pose"
    assert meta["video_size"] == [64, 32]
    assert hand_crops.hand_tracks_from_meta(meta)  # the gallery's close-ups find the hands
    # the gallery's fit of the stored pose gives the very boxes the collector computed for the loss mask
    fitted = hand_scoring.fit_driving_pose(hand_scoring.driving_pose(meta), *meta["video_size"], meta["driving_pose_resize"])
    assert hand_boxes(fitted, 64, 32) == hand_boxes(pose[:9], 64, 32, resize="crop")

    def perfect_detector(frames):  # sees exactly the driving hands at each preview frame's time
        n = len(frames)
        return [fitted[round(i * (len(fitted) - 1) / max(n - 1, 1))] for i in range(n)]

    summary = hand_scoring.score_sample(tmp_path / "posed", sample_id, perfect_detector)
    assert summary["hand_score"] == pytest.approx(1.0)


def test_duplicate_is_detected(tmp_path):
    candidate = make_candidate(with_frames=False)
    first = store_candidates(tmp_path, "ds", [candidate], status="preferred")
    second = store_candidates(tmp_path, "ds", [candidate], status="pending")
    assert first.added == 1 and second.added == 0 and second.duplicates == 1
    entries = read_manifest(tmp_path / "ds")
    assert len(entries) == 1 and entries[0]["status"] == "preferred"  # the stored status is never overwritten
    assert "1 already stored" in second.text()
    samples = load_preferred(tmp_path / "ds")
    assert len(samples) == 1


def _writer(root, seeds):
    torch.set_num_threads(1)
    store_candidates(root, "shared", [make_candidate(seed=seed, with_frames=False) for seed in seeds])


def test_two_writers_at_once_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(tmp_path), range(start, start + 6))) for start in (0, 100)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    entries = read_manifest(tmp_path / "shared")
    assert len(entries) == 12 and len({entry["id"] for entry in entries}) == 12
    for entry in entries:
        assert (tmp_path / "shared" / "samples" / entry["id"] / "tensors.safetensors").is_file()


def _slow_writer(root, ready):
    import ipa_train.data.samples as samples_module

    real = samples_module.atomic_write_bytes

    def slow(path, data):
        ready.set()
        time.sleep(60)  # killed here, mid-sample
        return real(path, data)

    samples_module.atomic_write_bytes = slow
    store_candidates(root, "killed", [make_candidate(seed=7)])


def test_killed_write_leaves_no_half_sample(tmp_path):
    create_dataset(tmp_path, "killed")
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=_slow_writer, args=(str(tmp_path), ready))
    process.start()
    assert ready.wait(60)
    os.kill(process.pid, signal.SIGKILL)
    process.join(30)
    folder = tmp_path / "killed"
    assert read_manifest(folder) == []
    assert [p.name for p in (folder / "samples").iterdir() if not p.name.startswith(".tmp-")] == []
    # the same sample can be written afterwards, and the stale staging folder is cleaned up
    result = store_candidates(tmp_path, "killed", [make_candidate(seed=7)])
    assert result.added == 1
    assert remove_stale_staging(folder, older_than_s=0) == 1
    assert len(read_manifest(folder)) == 1


def test_meta_is_json(tmp_path):
    result = store_candidates(tmp_path, "m", [make_candidate()], prompt="a person waving")
    sample_id = result.results[0].sample_id
    meta = json.loads((tmp_path / "m" / "samples" / sample_id / "meta.json").read_text())
    assert meta["prompt"] == "a person waving" and meta["preview_size"] == [48, 32]
    assert (tmp_path / "m" / "samples" / sample_id / "preview.webp").is_file()
