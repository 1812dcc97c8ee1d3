"""Wan2.2-Animate samples without ComfyUI: the stored layout (model_type wan_animate, float16 face pixels), one model type
per dataset, the hand mask mapped to latent frames as Wan-Animate maps its pose frames, and the batch the trainer gets."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ipa_train.data.animate_samples import AnimateCandidate, animate_pose_frames
from ipa_train.data.collect import driving_pose_frames, store_candidates
from ipa_train.data.layout import DatasetError, sample_path
from ipa_train.data.manifest import read_manifest, write_manifest
from ipa_train.data.samples import add_sample, create_dataset, load_sample
from ipa_train.data.tensors import FACE_PIXELS_DTYPE, MODEL_TYPE_ANIMATE
from ipa_train.pose.hands import pose_to_hand_masks
from ipa_train.training.batching import check_one_model_type, collate, load_training_data, shape_key
from ipa_train.wan import latents as wan_latents
from ipa_train.wan.animate import AnimateInputs
from support.trainer_helpers import make_sample, tiny_config

H, W = 4, 6  # latent size: 32 x 48 pixels


def make_animate(seed: int = 0, video_frames: int = 3, face_frames: int = 2, motion: int = 0, trim: int = 1, text_dim: int = 32) -> AnimateCandidate:
    generator = torch.Generator().manual_seed(seed)
    total = video_frames + trim
    text = torch.zeros(1, 8, text_dim)
    text[:, :5] = torch.randn(1, 5, text_dim, generator=generator)
    return AnimateCandidate(
        latent=torch.randn(1, 16, total, H, W, generator=generator) * 2 + 0.5,
        trim_latent=trim,
        concat_latent=torch.randn(1, 20, total, H, W, generator=generator),
        pose_latent=torch.randn(1, 16, video_frames, H, W, generator=generator),
        face_pixels=torch.rand(1, 3, face_frames, 512, 512, generator=generator) * 2 - 1,
        image_embedding=torch.randn(1, 3, 12, generator=generator),
        text_embedding=text,
        motion_latent_frames=motion,
        frames=None,
        seed=seed,
        sigmas=[1.0, 0.5, 0.0],
        settings={"steps": 2, "mode": "animation"},
    )


def hand_frame(x: float | None, y: float = 16.0, canvas=(48, 32)) -> dict:
    """One POSE_KEYPOINT frame: a right hand of 21 points within 2 px around (x, y), or no hand (x None)."""
    person = {"pose_keypoints_2d": [0.0] * 54, "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}
    if x is not None:
        points = []
        for index in range(21):
            points += [x + (index % 3) - 1.0, y + (index % 5) / 2 - 1.0, 1.0]
        person["hand_right_keypoints_2d"] = points
    return {"people": [person], "canvas_width": canvas[0], "canvas_height": canvas[1]}


def test_animate_sample_round_trip(tmp_path):
    candidate = make_animate()
    result = store_candidates(tmp_path, "anim", [candidate], status="preferred")
    sample_id = result.results[0].sample_id
    tensors, meta = load_sample(tmp_path / "anim", sample_id)
    assert tensors.model_type == MODEL_TYPE_ANIMATE and tensors.vace_context is None
    assert torch.allclose(tensors.latent, wan_latents.normalize_latent(candidate.latent[0], channel_dim=0))
    assert torch.equal(tensors.animate.concat_latent, candidate.concat_latent[0])  # as the model saw it: not rebuilt
    assert torch.equal(tensors.animate.pose_latent, candidate.pose_latent[0])
    assert torch.equal(tensors.animate.image_embedding, candidate.image_embedding[0])
    assert tensors.animate.face_pixels.dtype == FACE_PIXELS_DTYPE
    assert torch.equal(tensors.animate.face_pixels, candidate.face_pixels[0].to(FACE_PIXELS_DTYPE))
    assert tuple(tensors.hand_mask.shape) == (1, 3, H, W) and tensors.ref_frames == 1  # no reference frame in the mask
    assert meta["model_type"] == MODEL_TYPE_ANIMATE and meta["face_pixels_dtype"] == "float16" and meta["face_frames"] == 2
    assert read_manifest(tmp_path / "anim")[0]["model_type"] == MODEL_TYPE_ANIMATE
    stored = (sample_path(tmp_path / "anim", sample_id) / "tensors.safetensors").read_bytes()
    assert b"vace_context" not in stored[:4096] and b"face_pixels" in stored[:4096]


def test_vace_samples_store_and_load_as_before(tmp_path):
    folder = create_dataset(tmp_path, "vace")
    add_sample(folder, make_sample(0), status="preferred")
    entry = read_manifest(folder)[0]
    tensors, meta = load_sample(folder, entry["id"])
    assert tensors.model_type == "wan_vace" and tensors.animate is None and meta["model_type"] == "wan_vace"
    entry.pop("model_type")  # a manifest written before Animate samples existed
    meta_file = sample_path(folder, entry["id"]) / "meta.json"
    old_meta = {key: value for key, value in json.loads(meta_file.read_text()).items() if key != "model_type"}
    meta_file.write_text(json.dumps(old_meta))
    write_manifest(folder, [entry])
    tensors, meta = load_sample(folder, entry["id"])
    assert tensors.model_type == "wan_vace" and "model_type" not in meta
    with pytest.raises(DatasetError, match="holds wan_vace samples; a wan_animate sample cannot join"):
        store_candidates(tmp_path, "vace", [make_animate()])
    assert len(list((folder / "samples").iterdir())) == 1  # refused before any file was written


def test_an_animate_dataset_refuses_vace_samples(tmp_path):
    store_candidates(tmp_path, "anim", [make_animate()])
    with pytest.raises(DatasetError, match="holds wan_animate samples; a wan_vace sample cannot join"):
        add_sample(tmp_path / "anim", make_sample(0))


def test_training_refuses_a_dataset_mixed_by_hand(tmp_path):
    store_candidates(tmp_path, "anim", [make_animate(0)], status="preferred")
    vace = create_dataset(tmp_path, "vace")
    add_sample(vace, make_sample(0), status="preferred")
    entry = read_manifest(vace)[0]
    shutil.copytree(sample_path(vace, entry["id"]), sample_path(tmp_path / "anim", entry["id"]))
    write_manifest(tmp_path / "anim", read_manifest(tmp_path / "anim") + [entry])
    with pytest.raises(DatasetError, match="mixes model types: wan_animate .*wan_vace"):
        load_training_data(tiny_config(tmp_path / "anim", tmp_path / "out"))


def test_meta_and_tensors_must_agree_on_the_type(tmp_path):
    sample = ("x", make_sample(0), {"model_type": "wan_animate"})
    with pytest.raises(DatasetError, match="meta.json says wan_animate but its tensors are a wan_vace sample"):
        check_one_model_type(tmp_path, [sample])


def test_only_one_reference_frame_lines_up_with_the_pose():
    with pytest.raises(ValueError, match="only one reference image is supported"):
        store_candidates("/nonexistent-never-written", "x", [make_animate(trim=2)])


def test_pose_frames_start_at_the_offset_and_repeat_the_last_frame():
    poses = [hand_frame(float(x)) for x in range(10, 16)]  # 6 pose frames
    chosen = animate_pose_frames(poses, offset=2, length=9)
    assert [frame["people"][0]["hand_right_keypoints_2d"][0] for frame in chosen] == [11.0, 12.0, 13.0, 14.0] + [14.0] * 5
    with pytest.raises(ValueError, match="WanAnimateToVideo then drops the pose video"):
        animate_pose_frames(poses, offset=6, length=9)


@pytest.mark.parametrize("hand_frame_index, latent_frame", [(2, 0), (3, 1), (6, 1), (7, 2), (10, 2)])
def test_a_known_hand_track_lands_on_the_latent_frame_wan_animate_adds_its_pose_to(tmp_path, hand_frame_index, latent_frame):
    """A hand in pose frame p only; video_frame_offset 2, length 9: video frame p - 2 -> pose latent (causal: 0 <- 0,
    k <- 4k-3..4k), which AnimateWanModel adds to latent frame k + 1, i.e. hand-mask frame k (the mask skips the
    reference frame). The canvas is 48x32 -> 32x32 with a centre crop (8 px off each side), as common_upscale crops."""
    poses = [hand_frame(28.0 if p == hand_frame_index else None) for p in range(11)]
    frames = animate_pose_frames(poses, offset=2, length=9)
    masks = pose_to_hand_masks(frames, 32, 32, resize="crop")
    candidate = make_animate(video_frames=3)
    candidate.latent = candidate.latent[..., :4]
    candidate.concat_latent, candidate.pose_latent = candidate.concat_latent[..., :4], candidate.pose_latent[..., :4]
    result = store_candidates(tmp_path, "track", [candidate], pixel_hand_masks=masks, driving_pose=driving_pose_frames(frames, 9))
    tensors, meta = load_sample(tmp_path / "track", result.results[0].sample_id)
    per_frame = tensors.hand_mask[0].amax(dim=(1, 2))
    assert per_frame.tolist() == [1.0 if k == latent_frame else 0.0 for k in range(3)]
    cells = tensors.hand_mask[0, latent_frame].nonzero().tolist()
    assert cells and all(column == 2 for _, column in cells)  # canvas x 28 -> 20 after the crop -> latent column 2
    assert len(meta["driving_pose"]) == 9 and meta["driving_pose_resize"] == "crop"


def test_continuation_frames_get_no_hand_weighting(tmp_path):
    masks = torch.ones(9, 32, 48)
    result = store_candidates(tmp_path, "cont", [make_animate(motion=1)], pixel_hand_masks=masks)
    tensors, meta = load_sample(tmp_path / "cont", result.results[0].sample_id)
    assert tensors.hand_mask[0].amax(dim=(1, 2)).tolist() == [0.0, 1.0, 1.0]
    assert meta["motion_latent_frames"] == 1


def test_collate_builds_animate_inputs_and_buckets_keep_face_lengths_apart(tmp_path):
    store_candidates(tmp_path, "anim", [make_animate(0), make_animate(1), make_animate(2, face_frames=3)], status="preferred")
    data = load_training_data(tiny_config(tmp_path / "anim", tmp_path / "out"))
    samples = [tensors for _, tensors, _ in data.preferred]
    keys = [shape_key(tensors) for tensors in samples]
    assert len(set(keys)) == 2  # two face lengths: two buckets
    same = [tensors for tensors in samples if tensors.animate.face_pixels.shape[1] == 2]
    batch = collate(same, 0, torch.device("cpu"), torch.float32)
    assert batch.context is None and batch.scale is None and isinstance(batch.animate, AnimateInputs)
    assert tuple(batch.animate.concat_latent.shape) == (2, 20, 4, H, W)
    assert tuple(batch.animate.pose_latent.shape) == (2, 16, 3, H, W)
    assert tuple(batch.animate.face_pixels.shape) == (2, 3, 2, 512, 512) and batch.animate.face_pixels.dtype == torch.float32
    assert tuple(batch.animate.image_embedding.shape) == (2, 3, 12)
    assert torch.equal(batch.animate.face_pixels[1], same[1].animate.face_pixels.float())
    with pytest.raises(ValueError, match="a micro-batch needs one"):
        collate(samples, 0, torch.device("cpu"), torch.float32)
