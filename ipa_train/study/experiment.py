"""The method study on the pretrained world: candidates, curation by the hand score, training each objective with
the pack's trainer, and evaluation on held-out poses and seeds.

Every stage uses the pack's own code: sampling is ``wan.pipeline.sample`` (diffusers' ``WanVACEPipeline``), the
dataset is written by ``data.collect.store_sampled``, training is ``python -m ipa_train.train`` in a subprocess
(``jobs.launcher.run_cpu_job``) on the pretrained transformer file, and the LoRA goes back onto the
pipeline with ``wan.pipeline.load_lora``.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..choices import Objective, Precision
from . import models, score, world

# Pose seeds of the held-out sequences: disjoint from pretraining's (``pretrain.world_pool``: below 10**6).
CANDIDATE_POSES = 10_000_000
EVALUATION_POSES = 20_000_000
SAMPLING_STEPS = 12


def log(message: str) -> None:
    print(f"[study] {message}", file=sys.stderr, flush=True)


@dataclass
class World:
    """The pretrained models with the pipeline that samples them."""

    pipe: object
    text: torch.Tensor
    model_path: Path
    fingerprint: str

    @property
    def transformer(self):
        return self.pipe.transformer


def load_world(weights: Path = models.WEIGHTS) -> World:
    from ..wan.fingerprint import diffusers_model_fingerprint

    transformer = models.load_transformer(weights)
    pipe = models.build_pipeline(transformer, models.load_vae(weights))
    return World(pipe, models.load_text_embedding(weights), weights / models.TRANSFORMER_FILE, diffusers_model_fingerprint(transformer))


def held_out_videos(first_pose: int, count: int, seed: int) -> list[world.WorldVideo]:
    """``count`` pose sequences the pretrained model never saw, with random body colours (the hands drawn good:
    the ideal the score compares with)."""
    rng = np.random.default_rng(first_pose + seed)
    return [world.WorldVideo(pose_seed=first_pose + 1000 * seed + i, body_color=int(rng.integers(len(world.BODY_COLORS))), hands=("good", "good"))
            for i in range(count)]


@dataclass
class Sample:
    video: world.WorldVideo
    seed: int
    frames: np.ndarray  # [T, H, W, 3] float 0..1
    score: score.VideoScore
    sampled: object = None  # wan.pipeline.Sampled (kept for the dataset)


def sample_world(w: World, video: world.WorldVideo, seed: int, steps: int = SAMPLING_STEPS, keep: bool = False) -> Sample:
    from PIL import Image

    from ..wan.pipeline import sample

    control = [Image.fromarray(frame) for frame in video.control()]
    sampled = sample(w.pipe, control, Image.fromarray(video.reference()), w.text, seed, width=video.width, height=video.height,
                     frames=video.frames_count, steps=steps)
    frames = sampled.frames.numpy()
    return Sample(video, seed, frames, score.score_video(frames, video, w.pipe.vae), sampled if keep else None)


def best_handed_first(samples: list[Sample]) -> list[int]:
    """Indices of ``samples`` by hand score: most good hands first, then the lowest hand error, then the index."""
    return sorted(range(len(samples)), key=lambda i: (-samples[i].score.good_hand_rate, samples[i].score.hand_error, i))


def good_hand_rate(samples: list[Sample]) -> float:
    """The good share of all hands of ``samples`` that are in the frame (NaN when there is none)."""
    hands = [h.good for s in samples for h in s.score.hands if h is not None]
    return float(np.mean(hands)) if hands else float("nan")


def sampling_settings(w: World, video: world.WorldVideo, steps: int) -> dict:
    """The sampler settings a dataset sample records (what the trainer checks the base model against)."""
    return {"width": video.width, "height": video.height, "length": video.frames_count, "steps": steps, "cfg": 1.0,
            "shift": float(w.pipe.scheduler.config.shift), "vace_strength": 1.0, "sampler": "flow-match euler (diffusers)",
            "model": w.model_path.name, "base_fingerprint": w.fingerprint}


def prompt_of(video: world.WorldVideo) -> str:
    """One prompt per pose sequence: DPO pairs a preferred sample with rejected ones of the same prompt."""
    return f"study world, pose sequence {video.pose_seed}"


def collect(w: World, videos: list[world.WorldVideo], per_pose: int, seed: int, dataset_dir: Path, keep: int,
            steps: int = SAMPLING_STEPS) -> dict:
    """Samples ``per_pose`` candidates of each video and writes them all to a dataset: the ``keep`` best by the
    hand score (among those with at least one good hand) preferred, those with no good hand rejected (Flow-DPO's
    losers), the rest pending."""
    from ..data.collect import store_sampled
    from ..data.samples import create_dataset
    from ..pose.hands import hand_boxes, pose_to_hand_masks

    started = time.perf_counter()
    candidates = [sample_world(w, video, seed + k, steps, keep=True) for video in videos for k in range(per_pose)]
    ranked = [candidates[i] for i in best_handed_first(candidates) if candidates[i].score.good_hand_rate > 0]
    chosen = {id(c) for c in ranked[:keep]}
    dataset_dir = create_dataset(dataset_dir.parent, dataset_dir.name)
    settings = sampling_settings(w, videos[0], steps)
    for candidate in candidates:
        status = "preferred" if id(candidate) in chosen else ("rejected" if candidate.score.good_hand_rate == 0 else "pending")
        poses = candidate.video.poses()
        width, height = candidate.video.width, candidate.video.height
        store_sampled(dataset_dir, candidate.sampled, pose_to_hand_masks(poses, width, height), hand_boxes(poses, width, height), poses,
                      status, settings, prompt_of(candidate.video), "ipa_study",
                      meta={"study_hand_score": [None if h is None else {"good": h.good, "error": h.error} for h in candidate.score.hands]},
                      summary={"good_hand_rate": candidate.score.good_hand_rate, "hand_error": round(candidate.score.hand_error, 6)})
        candidate.sampled = None
    rates = [c.score.good_hand_rate for c in candidates]
    return {"dataset": str(dataset_dir), "candidates": len(candidates), "preferred": len(chosen), "rejected": sum(r == 0 for r in rates),
            "candidate_good_hand_rate": float(np.mean(rates)), "seconds": round(time.perf_counter() - started, 1)}


def train(w: World, dataset_dir: Path, run_dir: Path, objective: str, steps: int, seed: int, beta: float = 600.0,
          hand_weight: float = 10.0, rank: int = 16, learning_rate: float = 1e-3, batch_size: int = 2, processes: int = 1) -> Path:
    """One LoRA with the pack's trainer (``python -m ipa_train.train``); returns the LoRA file."""
    from ..jobs.config import RunConfig
    from ..jobs.launcher import run_cpu_job

    config = RunConfig(dataset=str(dataset_dir), base_model=str(w.model_path), output_dir=str(run_dir), lora_name=run_dir.name,
                       objective=objective, beta=beta, hand_weight=hand_weight, rank=rank, learning_rate=learning_rate,
                       steps=steps, batch_size=batch_size, checkpoint_every=0, seed=seed, precision=Precision.FP32)
    config.validate(f"the study's run config {run_dir.name}")
    run_json = config.save(run_dir / "run.json")
    outcome, seconds = run_cpu_job(run_json, run_dir, processes)
    if outcome.status != "finished":
        raise RuntimeError(f"training {run_dir.name} ended {outcome.status} (exit {outcome.returncode}; log {run_dir / 'train.log'}):\n{outcome.error_text()}")
    steps_seen = [e for e in outcome.events if e["event"] == "step"]
    log(f"  {run_dir.name}: {len(steps_seen)} steps in {seconds:.0f} s, loss {steps_seen[0]['loss']:.4f} -> {steps_seen[-1]['loss']:.4f}")
    return Path(outcome.final["lora_path"])


def with_lora(w: World, lora: Optional[Path]) -> World:
    """The world with a fresh copy of the base transformer, carrying ``lora`` when given."""
    from ..wan.pipeline import load_lora

    transformer = models.load_transformer(w.model_path.parent)
    if lora is not None:
        load_lora(transformer, lora)
    pipe = models.build_pipeline(transformer, w.pipe.vae, shift=float(w.pipe.scheduler.config.shift))
    return World(pipe, w.text, w.model_path, w.fingerprint)


def evaluate(w: World, videos: list[world.WorldVideo], seeds: list[int], steps: int = SAMPLING_STEPS) -> list[Sample]:
    return [sample_world(w, video, seed, steps) for video in videos for seed in seeds]


def metrics(samples: list[Sample], base: list[Sample], seeds_per_pose: int) -> dict:
    """good-hand rate and hand error over the hands; drift: mean squared difference to the base model's video of
    the same pose and seed outside every hand region; diversity: mean pairwise squared difference of one pose's
    videos (its own, and relative to the base's)."""
    drift = []
    for mine, theirs in zip(samples, base):
        outside = ~score.hand_region_masks(mine.video)
        drift.append(float(((mine.frames - theirs.frames) ** 2).sum(axis=-1)[outside].mean() / 3.0))

    def diversity(group: list[Sample]) -> float:
        pairs = [float(((a.frames - b.frames) ** 2).mean()) for a, b in itertools.combinations(group, 2)]
        return float(np.mean(pairs)) if pairs else float("nan")

    groups = [samples[i : i + seeds_per_pose] for i in range(0, len(samples), seeds_per_pose)]
    base_groups = [base[i : i + seeds_per_pose] for i in range(0, len(base), seeds_per_pose)]
    own = float(np.mean([diversity(g) for g in groups]))
    hands = [h for s in samples for h in s.score.hands if h is not None]
    return {
        "good_hand_rate": good_hand_rate(samples),
        "hand_error": float(np.mean([h.error for h in hands])),
        "drift": float(np.mean(drift)),
        "diversity": own,
        "diversity_vs_base": own / float(np.mean([diversity(g) for g in base_groups])),
        "hands": len(hands),
    }


@dataclass
class StudyPlan:
    candidate_poses: int
    per_pose: int
    keep: int
    evaluation_poses: int
    evaluation_seeds: int
    steps: int
    betas: tuple = (100.0, 600.0, 3000.0)
    methods: dict = field(default_factory=dict)


def plan(quick: bool, steps: Optional[int]) -> StudyPlan:
    if quick:
        return StudyPlan(candidate_poses=6, per_pose=6, keep=6, evaluation_poses=4, evaluation_seeds=3, steps=steps or 60)
    return StudyPlan(candidate_poses=16, per_pose=8, keep=12, evaluation_poses=10, evaluation_seeds=4, steps=steps or 200)


def method_runs(p: StudyPlan) -> dict[str, dict]:
    """Name -> trainer settings; every run gets the same steps, seed and samples."""
    runs = {"ipa": {"objective": Objective.IPA, "beta": 600.0}, "sft": {"objective": Objective.SFT},
            "dpo": {"objective": Objective.DPO, "beta": 600.0},
            "ipa_no_halo": {"objective": Objective.IPA, "beta": 600.0, "hand_weight": 1.0}}
    for beta in p.betas:
        if beta != 600.0:
            runs[f"ipa_beta_{beta:g}"] = {"objective": Objective.IPA, "beta": beta}
    return runs


def run_study(out: Path, quick: bool = False, seed: int = 0, steps: Optional[int] = None, weights: Path = models.WEIGHTS,
              only: Optional[list[str]] = None) -> dict:
    """The whole study; returns ``{"base": {...}, "ipa": {...}, ...}`` plus ``"_study"`` (settings and timings)."""
    p = plan(quick, steps)
    started = time.perf_counter()
    w = load_world(weights)
    out.mkdir(parents=True, exist_ok=True)
    candidate_videos = held_out_videos(CANDIDATE_POSES, p.candidate_poses, seed)
    log(f"sampling {p.candidate_poses} x {p.per_pose} candidates on held-out poses; keeping the best {p.keep} by the hand score")
    collected = collect(w, candidate_videos, p.per_pose, 1000 * seed, out / "dataset", p.keep)
    log(f"  {collected}")
    eval_videos = held_out_videos(EVALUATION_POSES, p.evaluation_poses, seed)
    eval_seeds = [10_000 + 100 * seed + k for k in range(p.evaluation_seeds)]
    log(f"evaluating the base model on {p.evaluation_poses} other held-out poses x {p.evaluation_seeds} seeds")
    base = evaluate(w, eval_videos, eval_seeds)
    results = {"base": metrics(base, base, p.evaluation_seeds)}
    samples = {"base": base}
    for name, settings in method_runs(p).items():
        if only and name not in only:
            continue
        log(f"training {name} ({settings}) for {p.steps} steps")
        lora = train(w, Path(collected["dataset"]), out / "runs" / name, steps=p.steps, seed=seed, **settings)
        samples[name] = evaluate(with_lora(w, lora), eval_videos, eval_seeds)
        results[name] = metrics(samples[name], base, p.evaluation_seeds)
        log(f"  {name}: {results[name]}")
    results["_study"] = {"quick": quick, "seed": seed, "steps": p.steps, "collected": collected, "plan": p.__dict__ | {"methods": list(results)},
                         "seconds": round(time.perf_counter() - started, 1)}
    return results, samples


def table(results: dict) -> str:
    names = [k for k in results if not k.startswith("_")]
    lines = [f"{'method':<16}{'good hands':>12}{'hand error':>12}{'drift':>11}{'diversity':>11}{'vs base':>9}"]
    for name in names:
        r = results[name]
        lines.append(f"{name:<16}{r['good_hand_rate']:>12.3f}{r['hand_error']:>12.4f}{r['drift']:>11.2e}{r['diversity']:>11.4f}{r['diversity_vs_base']:>9.2f}")
    return "\n".join(lines)


def hands_sheet(samples: dict[str, list[Sample]], rows: int = 6, scale: int = 3):
    """Hand close-ups at the middle frame: one row per (sample, hand), one column per method, labelled."""
    from PIL import Image, ImageDraw

    names = list(samples)
    base = samples["base"]
    picks = []
    for index, s in enumerate(base):
        for hand, entry in enumerate(score.glyph_templates(s.video)):
            if entry is not None:
                picks.append((index, hand))
    picks = picks[:: max(1, len(picks) // rows)][:rows]
    size, label_h = 40, 14
    sheet = Image.new("RGB", (len(names) * size * scale, label_h + len(picks) * size * scale), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    for col, name in enumerate(names):
        draw.text((col * size * scale + 4, 2), name, fill=(20, 20, 20))
    for row, (index, hand) in enumerate(picks):
        video = base[index].video
        t = video.frames_count // 2
        points = world.hand_points(video.poses()[t], world.HAND_KEYS[hand])
        cx, cy = points.mean(axis=0)
        x0 = int(np.clip(cx - size / 2, 0, video.width - size))
        y0 = int(np.clip(cy - size / 2, 0, video.height - size))
        for col, name in enumerate(names):
            s = samples[name][index]
            crop = (np.clip(s.frames[t, y0 : y0 + size, x0 : x0 + size], 0, 1) * 255).astype(np.uint8)
            tile = Image.fromarray(crop).resize((size * scale, size * scale), Image.Resampling.NEAREST)
            sheet.paste(tile, (col * size * scale, label_h + row * size * scale))
            hand_score = s.score.hands[hand]
            if hand_score is not None:
                colour = (40, 190, 80) if hand_score.good else (200, 60, 60)
                draw.rectangle([col * size * scale, label_h + row * size * scale, (col + 1) * size * scale - 1,
                                label_h + (row + 1) * size * scale - 1], outline=colour, width=2)
    return sheet
