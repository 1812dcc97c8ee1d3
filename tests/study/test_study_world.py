"""The method study's world: dance poses, hand glyphs of known quality, the automatic hand score, and the
pretraining script (a few steps, into a temporary folder)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from ipa_train.pose.synthetic import MOTIONS, dance_pose_sequence
from ipa_train.study import models, score, world
from support.trainer_helpers import subprocess_env


@pytest.mark.parametrize("motion", MOTIONS)
def test_every_motion_moves_the_hands_inside_the_canvas(motion):
    poses = dance_pose_sequence(9, 128, 128, seed=3, motion=motion, hand_scale=world.HAND_SCALE)
    assert len(poses) == 9 and all(p["canvas_width"] == 128 and len(p["people"]) == 1 for p in poses)
    wrists = []
    for frame in poses:
        for key in world.HAND_KEYS:
            points = world.hand_points(frame, key)
            assert points is not None, (motion, key)  # the whole reach fits the canvas
            assert points.min() >= 0 and points.max() < 128
        wrists.append([world.hand_points(frame, key)[12] for key in world.HAND_KEYS])  # the middle fingertips
    assert np.ptp(np.array(wrists), axis=0).max() > 5, "a hand moves over the clip"


def test_body_size_and_motion_vary_with_the_seed_and_bad_options_are_refused():
    spans = {round(float(np.ptp(np.array(dance_pose_sequence(1, 128, 128, seed=s)[0]["people"][0]["pose_keypoints_2d"]).reshape(-1, 3)[:, 1])))
             for s in range(8)}
    assert len(spans) > 3
    with pytest.raises(ValueError, match="unknown motion 'moonwalk'"):
        dance_pose_sequence(9, 128, 128, motion="moonwalk")
    with pytest.raises(ValueError, match="hand_scale must be > 0"):
        dance_pose_sequence(9, 128, 128, hand_scale=0)


def test_each_glyph_quality_is_drawn_differently_and_only_at_the_hands():
    video = world.WorldVideo(pose_seed=5, body_color=1, hands=("good", "good"))
    frames = {q: world.WorldVideo(pose_seed=5, body_color=1, hands=(q, q)).frames().astype(np.float32) for q in world.QUALITIES}
    hands = score.hand_region_masks(video)
    for a in world.QUALITIES:
        for b in world.QUALITIES:
            if a < b:
                difference = np.abs(frames[a] - frames[b]).sum(axis=-1)
                assert difference[hands].mean() > 10, (a, b)
                assert difference[~hands].max() == 0, (a, b)  # glyphs stay inside the hand regions
    with pytest.raises(ValueError, match="unknown hand quality 'claw'"):
        world.WorldVideo(pose_seed=5, body_color=1, hands=("claw", "good")).frames()


def test_the_hand_score_reads_every_quality_and_calls_a_missing_hand_bad():
    rng = np.random.default_rng(0)
    for index, quality in enumerate(world.QUALITIES):
        video = world.WorldVideo(pose_seed=100 + index, body_color=index, hands=(quality, "good"))
        frames = video.frames().astype(np.float32) / 255.0
        noisy = np.clip(frames + rng.normal(0, 0.05, frames.shape), 0, 1)
        for candidate in (frames, noisy):
            result = score.score_video(candidate, video)
            assert [h.good for h in result.hands] == [quality == "good", True], quality
        assert result.good_hand_rate == (1.0 if quality == "good" else 0.5)
    video = world.WorldVideo(pose_seed=7, body_color=0, hands=("good", "good"))
    no_hands = np.stack([world.render_world_frame(f, 0, {}, 128, 128) for f in video.poses()])
    assert score.score_video(no_hands, video).good_hand_rate == 0.0
    with pytest.raises(ValueError, match="do not match the world video"):
        score.score_video(no_hands[:5], video)


def test_the_training_mix_has_mostly_bad_hands():
    rng = np.random.default_rng(1)
    hands = [q for _ in range(400) for q in world.random_video(rng, 0).hands]
    assert abs(sum(q != "good" for q in hands) / len(hands) - world.BAD_HAND_RATE) < 0.05
    assert set(hands) == set(world.QUALITIES)


def test_pretrain_runs_end_to_end_and_writes_loadable_weights(tmp_path):
    """The reproducible script at a few steps: both stages run, and what they write loads through the pack's own
    model loader and the study's pipeline."""
    out = tmp_path / "weights"
    command = [sys.executable, "-m", "ipa_train.study", "pretrain", "--output", str(out), "--vae-image-steps", "2", "--vae-clip-steps", "1",
               "--vae-full-steps", "1", "--vae-second-runs", "1", "--vae-videos", "3", "--transformer-steps", "2", "--transformer-videos", "2"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "pretrain.json").read_text())
    assert record["vae"]["image_steps"] == 2 and record["transformer"]["steps"] == 2 and len(record["transformer"]["loss_every_100_steps"]) == 1
    vae, transformer = models.load_vae(out), models.load_transformer(out)
    assert len(vae.config.latents_mean) == 16 and all(s > 0 for s in vae.config.latents_std)
    assert {k: transformer.config[k] for k in models.TRANSFORMER_CONFIG} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in models.TRANSFORMER_CONFIG.items()}
    assert models.load_text_embedding(out).shape == (1, models.TEXT_TOKENS, 32)
    with pytest.raises(models.MissingWeights, match="run `python -m ipa_train.study pretrain`"):
        models.load_vae(tmp_path / "nowhere")
