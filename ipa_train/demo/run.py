"""``python -m ipa_train demo``: the whole IPA loop on the study world's small pretrained Wan2.1-VACE model, on CPU.

1. Loads the world's pretrained model (``ipa_train/study/weights``: a VACE transformer in the original Wan
   single-file layout, what ComfyUI users keep, and a small Wan VAE) into diffusers' ``WanVACEPipeline``.
2. Takes a dance the model never saw (``study.world``): its OpenPose control video, reference image and hand
   masks (``pose.hands``).
3. Samples ``--candidates`` videos (seeds ``seed ..``) and ``--eval-seeds`` more (seeds ``seed + 1000 ..``),
   recording what the transformer saw.
4. Marks the ``--preferred`` candidates with the best automatic hand score preferred and the rest rejected
   (``study.score``: each hand compared with the ideal glyphs drawn at its keypoints; the stand-in for the
   human curator of the real workflow).
5. Writes the candidates in the dataset format (``data.dataset``: latent, VACE context and text embedding
   exactly as sampling used them, latent hand masks, previews).
6. Trains Flow-IPA with ``--nproc`` torchrun ranks (gloo on CPU) through the real ``python -m ipa_train.train``,
   reading its JSON events; the LoRA comes out in ComfyUI's native layout.
7. Loads the LoRA into the pipeline and samples the same seeds again: the good-hand rate before and after, on
   the candidates and on the held-out seeds; and the IPA gap of the LoRA on the stored samples.
8. Writes ``report/``: training curves, hands before and after, before/after frames, hand masks,
   ``metrics.json`` and the frames as safetensors.

Progress goes to stderr; the summary of where everything went to stdout. Ctrl-C stops the training job
gracefully (its ranks finish the step and write a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARKER = ".ipa-demo"  # marks a folder as this demo's output, so a re-run may clear it
OWNED = ("model", "dataset", "training", "report")
DATASET_NAME = "demo_hands"
LORA_NAME = "ipa_demo"
PROMPT = "a stick figure dancing (the study world)"
EVAL_T = (0.1, 0.3, 0.5, 0.7, 0.9)


class DemoError(ValueError):
    """Bad demo options or a failed stage, with what to do."""


def log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ipa_train demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/demo", help="output folder (default outputs/demo); a previous demo output there is replaced")
    parser.add_argument("--steps", type=int, default=40, help="training steps (default 40)")
    parser.add_argument("--candidates", type=int, default=8, help="videos to sample and curate (default 8)")
    parser.add_argument("--preferred", type=int, default=None, help="how many become preferred (default: a quarter of the candidates)")
    parser.add_argument("--eval-seeds", type=int, default=4, help="more seeds sampled before and after, not trained on (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="pose and first candidate seed (default 0)")
    parser.add_argument("--nproc", type=int, default=2, help="training processes under torchrun (default 2; 1 = plain python)")
    parser.add_argument("--sampling-steps", type=int, default=12, help="denoising steps per video (default 12)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="LoRA learning rate (default 1e-3)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--weights", default=None, help="the world's weights folder (default: the shipped ipa_train/study/weights)")
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args) -> None:
    problems = []
    if args.candidates < 2:
        problems.append(f"--candidates {args.candidates}: need at least 2 (some preferred, some rejected)")
    if args.preferred is None:
        args.preferred = max(1, args.candidates // 4)
    if not 1 <= args.preferred < max(args.candidates, 2):
        problems.append(f"--preferred {args.preferred}: must be 1..{max(args.candidates - 1, 1)} (fewer than the candidates: some are rejected)")
    if args.eval_seeds < 0:
        problems.append(f"--eval-seeds {args.eval_seeds}: must be >= 0")
    if args.steps < 1:
        problems.append(f"--steps {args.steps}: must be >= 1")
    if args.nproc < 1:
        problems.append(f"--nproc {args.nproc}: must be >= 1")
    if args.sampling_steps < 1:
        problems.append(f"--sampling-steps {args.sampling_steps}: must be >= 1")
    if not args.learning_rate > 0:
        problems.append(f"--learning-rate {args.learning_rate}: must be > 0")
    if args.rank < 1:
        problems.append(f"--rank {args.rank}: must be >= 1")
    if args.seed < 0:
        problems.append(f"--seed {args.seed}: must be >= 0")
    if problems:
        raise DemoError("; ".join(problems))


def prepare_output(path: Path) -> Path:
    """Creates the output folder, or clears a previous demo output there; refuses any other non-empty folder."""
    path = path.expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise DemoError(f"--output {path} is a file; give a folder")
    if path.is_dir() and any(path.iterdir()):
        if not (path / MARKER).is_file():
            raise DemoError(f"--output {path} is not empty and is not a previous demo output; give an empty or new folder")
        for name in OWNED:
            if (path / name).is_dir():
                shutil.rmtree(path / name)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("written by python -m ipa_train demo; a re-run replaces model/, dataset/, training/ and report/\n")
    return path


# ----------------------------------------------------------------------------------------------- stages


def choose_preferred(candidates, count: int) -> list[bool]:
    """The ``count`` best-handed candidates (``study.experiment.best_handed_first``)."""
    from ..study.experiment import best_handed_first

    chosen = set(best_handed_first(candidates)[:count])
    return [i in chosen for i in range(len(candidates))]


def train_with_torchrun(run_json: Path, output_dir: Path, nproc: int) -> tuple[list[dict], dict, float]:
    """Runs ``python -m ipa_train.train --config run_json`` (under torchrun when ``nproc`` > 1) and relays its
    step events. Returns (step events, finished event, wall seconds)."""
    from ..jobs.launcher import run_cpu_job

    def relay(event):
        if event["event"] == "started":
            log(f"  trainer started: {event.get('world_size')} rank(s), {event.get('distributed')}, {event.get('samples')} preferred samples, "
                f"{event.get('trainable_parameters')} LoRA parameters")
        elif event["event"] == "step":
            step, total = event["step"], event["total"]
            if step == 1 or step == total or step % max(1, total // 8) == 0:
                log(f"  step {step}/{total}: loss {event['loss']:.5f}, ipa_gap {event['ipa_gap']:+.3e}, {event['sec_per_step']:.2f} s/step")
        elif event["event"] == "stopped":
            log(f"trainer stopped at step {event.get('step')}; checkpoint {event.get('checkpoint')} (continue with: {event.get('resume')})")

    try:
        outcome, seconds = run_cpu_job(run_json, output_dir, nproc, on_event=relay, threads=None if nproc > 1 else os.environ.get("OMP_NUM_THREADS"))
    except KeyboardInterrupt:
        log("interrupted: the trainer was stopped (its ranks finish the current step and write a checkpoint)")
        raise
    if outcome.status == "stopped":
        final = outcome.final or {}
        raise DemoError(f"training was stopped at step {final.get('step')} by a signal; its checkpoint is {final.get('checkpoint')} "
                        f"(continue with: {final.get('resume')})")
    if outcome.status != "finished":
        # The first rank to fail is the cause; the others then fail in a collective ("connection closed by peer").
        raise DemoError(f"training failed (exit status {outcome.returncode}; full log {output_dir / 'train.log'}):\n{outcome.error_text()}")
    steps = [event for event in outcome.events if event["event"] == "step"]
    return steps, outcome.final, seconds


@torch.no_grad()
def evaluation_gaps(transformer, samples, hand_weight: float, load_adapter) -> dict[str, Any]:
    """Mean ``err_ref - err_model`` (the loss's weighted error) per status over fixed noise levels ``EVAL_T`` and
    fixed noise: the reference is the base model, the model the base with the trained LoRA (``load_adapter``)."""
    from ..training.loss import weighted_error

    def predictions(tensors, seed):
        x0 = tensors.latent[None].float()
        out = []
        for k, t in enumerate(EVAL_T):
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(10_000 + 97 * seed + k))
            x_t = (1 - t) * x0 + t * noise
            pred = transformer(
                hidden_states=x_t, timestep=torch.tensor([1000.0 * t]), encoder_hidden_states=tensors.text_embedding[None].float(),
                control_hidden_states=tensors.vace_context[None].float(),
                control_hidden_states_scale=tensors.vace_strength * torch.ones(len(transformer.config.vace_layers)), return_dict=False,
            )[0]
            out.append((pred, noise - x0))
        return out

    def errors(tensors, pairs):
        return [float(weighted_error(pred, target, tensors.hand_mask[None], hand_weight, tensors.ref_frames)) for pred, target in pairs]

    reference = [errors(tensors, predictions(tensors, i)) for i, (_, tensors, _) in enumerate(samples)]
    load_adapter()
    model = [errors(tensors, predictions(tensors, i)) for i, (_, tensors, _) in enumerate(samples)]
    result: dict[str, Any] = {"t": list(EVAL_T), "hand_weight": hand_weight, "per_sample": []}
    by_status: dict[str, list[float]] = {}
    for (sample_id, _, status), ref, mod in zip(samples, reference, model):
        gaps = [r - m for r, m in zip(ref, mod)]
        result["per_sample"].append({"id": sample_id, "status": status, "ipa_gap_by_t": gaps, "ipa_gap": sum(gaps) / len(gaps)})
        by_status.setdefault(status, []).extend(gaps)
    for status, gaps in by_status.items():
        result[f"ipa_gap_{status}"] = sum(gaps) / len(gaps)
    return result


# ----------------------------------------------------------------------------------------------- main


@dataclass
class Dance:
    """Stage 2: the held-out pose sequence the demo samples, its control video and its hand masks."""

    video: Any
    poses: Any
    control: torch.Tensor
    pixel_masks: torch.Tensor
    boxes: Any
    latent_mask: torch.Tensor


def held_out_dance(args, stages: int) -> Dance:
    from ..pose.hands import hand_boxes, latent_hand_mask, pose_to_hand_masks
    from ..study import experiment

    video = experiment.held_out_videos(experiment.CANDIDATE_POSES, 1, args.seed)[0]
    log(f"[2/{stages}] a held-out dance: {video.frames_count} frames at {video.width}x{video.height} (pose seed {video.pose_seed}); "
        "control video and hand masks")
    poses = video.poses()
    pixel_masks = pose_to_hand_masks(poses, video.width, video.height)
    return Dance(video, poses, torch.from_numpy(video.control()).float() / 255.0, pixel_masks,
                 hand_boxes(poses, video.width, video.height), latent_hand_mask(pixel_masks))


def sample_candidates(w, dance: Dance, seeds: list[int], held_out: list[int], sampling_steps: int, stages: int):
    """Stage 3: the candidates (kept with what the transformer saw, for the dataset) and the held-out seeds."""
    from ..study import experiment

    log(f"[3/{stages}] sampling {len(seeds)} candidates (seeds {seeds[0]}..{seeds[-1]}) and {len(held_out)} held-out seeds, "
        f"{sampling_steps} steps each")
    before = [experiment.sample_world(w, dance.video, seed, sampling_steps, keep=True) for seed in seeds]
    return before, [experiment.sample_world(w, dance.video, seed, sampling_steps) for seed in held_out]


def store_dataset(out: Path, w, dance: Dance, before: list, preferred: list[bool], sampling_steps: int, stages: int):
    """Stage 5: the candidates in the dataset format, preferred or rejected; returns (folder, sample ids, counts)."""
    from ..data.collect import store_sampled
    from ..data.dataset import create_dataset, read_manifest
    from ..study import experiment

    dataset_dir = create_dataset(out / "dataset", DATASET_NAME)
    settings = experiment.sampling_settings(w, dance.video, sampling_steps)
    sample_ids = []
    for candidate, good in zip(before, preferred):
        result = store_sampled(
            dataset_dir, candidate.sampled, dance.pixel_masks, dance.boxes, dance.poses, "preferred" if good else "rejected", settings,
            PROMPT, "ipa_demo",
            meta={"hand_error": candidate.score.hand_error, "good_hand_rate": candidate.score.good_hand_rate,
                  "preference_rule": "best hand score (ipa_train/study/score.py; see ipa_train/demo/run.py)"},
            summary={"hand_error": round(candidate.score.hand_error, 6), "good_hand_rate": candidate.score.good_hand_rate},
        )
        sample_ids.append(result.sample_id)
    counts = {status: sum(1 for e in read_manifest(dataset_dir) if e["status"] == status) for status in ("preferred", "rejected")}
    log(f"[5/{stages}] dataset {dataset_dir}: {counts['preferred']} preferred, {counts['rejected']} rejected")
    return dataset_dir, sample_ids, counts


def train_stage(args, out: Path, dataset_dir: Path, model_path: Path, stages: int):
    """Stage 6: the run config (a RunConfig, saved as run.json) trained through the real entry point; returns
    (config, step events, finished event, seconds)."""
    from ..choices import Objective, Precision
    from ..jobs.config import RunConfig

    run_config = RunConfig(
        dataset=str(dataset_dir), base_model=str(model_path), output_dir=str(out / "training"), lora_name=LORA_NAME,
        objective=Objective.IPA, beta=600.0, hand_weight=10.0, rank=args.rank, learning_rate=args.learning_rate,
        steps=args.steps, batch_size=1, checkpoint_every=0, seed=args.seed, precision=Precision.FP32,
    )
    run_config.validate("the demo's run config")
    run_json = run_config.save(out / "training" / "run.json")
    how = f"torchrun, {args.nproc} ranks (gloo, CPU)" if args.nproc > 1 else "one process (CPU)"
    log(f"[6/{stages}] Flow-IPA training, {args.steps} steps, {how}: python -m ipa_train.train --config {run_json}")
    history, finished, seconds = train_with_torchrun(run_json, out / "training", args.nproc)
    return run_config, history, finished, seconds


def evaluate_lora(w, dataset_dir: Path, sample_ids: list[str], lora_path: Path, hand_weight: float) -> tuple[dict, dict[str, str]]:
    """Stage 7's IPA gap of the LoRA on the stored samples (it loads the LoRA into the pipeline); returns
    (evaluation, the LoRA's metadata)."""
    from ..data.dataset import load_sample, read_manifest
    from ..wan.pipeline import load_lora

    stored = []
    for sample_id in sample_ids:
        tensors, _ = load_sample(dataset_dir, sample_id)
        status = next(e["status"] for e in read_manifest(dataset_dir) if e["id"] == sample_id)
        stored.append((sample_id, tensors, status))
    lora_metadata: dict[str, str] = {}

    def load_adapter():
        lora_metadata.update(load_lora(w.transformer, lora_path))

    return evaluation_gaps(w.transformer, stored, hand_weight, load_adapter), lora_metadata


def run(args) -> dict[str, Any]:
    from ..fileio import atomic_write_json, read_safetensors_metadata
    from ..study import experiment, models

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    stages = 7

    # 1. the pretrained world model (shipped weights)
    weights = Path(args.weights) if args.weights else models.WEIGHTS
    log(f"[1/{stages}] the study world's pretrained Wan2.1-VACE model ({weights}): diffusers WanVACEPipeline")
    try:
        w = experiment.load_world(weights)
    except models.MissingWeights as exc:
        raise DemoError(str(exc)) from exc
    out = prepare_output(Path(args.output))
    timings["build"] = time.perf_counter() - clock

    # 2. a pose sequence the model never saw -> control video, reference image, hand masks
    dance = held_out_dance(args, stages)

    # 3. candidates (seeds seed..), and held-out seeds for the good-hand rate
    seeds = [args.seed + i for i in range(args.candidates)]
    held_out = [args.seed + 1000 + i for i in range(args.eval_seeds)]
    clock = time.perf_counter()
    before, before_held_out = sample_candidates(w, dance, seeds, held_out, args.sampling_steps, stages)
    timings["sample_before"] = time.perf_counter() - clock

    # 4. the preference rule (the automatic hand score), and 5. the dataset
    preferred = choose_preferred(before, args.preferred)
    log(f"[4/{stages}] hand score: the {args.preferred} best-handed candidates are preferred: "
        + ", ".join(f"seed {s.seed} {s.score.good_hand_rate:.1f} good, err {s.score.hand_error:.4f}{' *' if p else ''}" for s, p in zip(before, preferred)))
    dataset_dir, sample_ids, counts = store_dataset(out, w, dance, before, preferred, args.sampling_steps, stages)

    # 6. training through the real entry point
    run_config, history, finished, timings["train"] = train_stage(args, out, dataset_dir, w.model_path, stages)
    lora_path = Path(finished["lora_path"])

    # 7. sample again with the LoRA (same seeds), and the gap on the stored samples
    log(f"[7/{stages}] sampling the same seeds with the LoRA {lora_path.name}; IPA gap on the stored samples at t = {list(EVAL_T)}")
    clock = time.perf_counter()
    evaluation, lora_metadata = evaluate_lora(w, dataset_dir, sample_ids, lora_path, run_config.hand_weight)
    after = [experiment.sample_world(w, dance.video, seed, args.sampling_steps) for seed in seeds]
    after_held_out = [experiment.sample_world(w, dance.video, seed, args.sampling_steps) for seed in held_out]
    timings["sample_after"] = time.perf_counter() - clock
    rates = good_hand_rates(before, after, before_held_out, after_held_out)

    files = write_report(out / "report", args, history, dance, (before, after), (before_held_out, after_held_out), preferred, rates, seeds)
    files = {"model": str(w.model_path), "dataset": str(dataset_dir), "training": str(out / "training"), "lora": str(lora_path),
             **files, "train_log": str(out / "training" / "train.log")}
    metrics = {
        "settings": {key: getattr(args, key) for key in ("steps", "candidates", "preferred", "eval_seeds", "seed", "nproc", "sampling_steps",
                                                        "learning_rate", "rank")},
        "world": {"pose_seed": dance.video.pose_seed, "body_color": dance.video.body_color, "frames": dance.video.frames_count,
                  "width": dance.video.width, "height": dance.video.height, "weights": str(weights)},
        **outcome_metrics(before, after, before_held_out, after_held_out, sample_ids, preferred, rates),
        "dataset": {"path": str(dataset_dir), "preferred": counts["preferred"], "rejected": counts["rejected"]},
        "training": training_metrics(history, args.nproc, timings["train"]),
        "lora": {"path": str(lora_path), "metadata": lora_metadata or read_safetensors_metadata(lora_path)},
        "evaluation": evaluation,
        "timings_s": {key: round(value, 3) for key, value in timings.items()},
        "files": files,
    }
    atomic_write_json(files["metrics"], metrics)
    return metrics


def good_hand_rates(before, after, before_held_out, after_held_out) -> dict[str, float]:
    """The good-hand rate of the candidates and of the held-out seeds, before and after the LoRA (logged)."""
    from ..study.experiment import good_hand_rate

    rates = {
        "candidates_before": good_hand_rate(before), "candidates_after": good_hand_rate(after),
        "held_out_seeds_before": good_hand_rate(before_held_out), "held_out_seeds_after": good_hand_rate(after_held_out),
    }
    log(f"  good-hand rate: candidates {rates['candidates_before']:.2f} -> {rates['candidates_after']:.2f}, "
        f"held-out seeds {rates['held_out_seeds_before']:.2f} -> {rates['held_out_seeds_after']:.2f}")
    return rates


def write_report(report: Path, args, history: list[dict], dance: Dance, candidates: tuple, held_out: tuple, preferred: list[bool],
                 rates: dict, seeds: list[int]) -> dict[str, str]:
    """Stage 8: the report's pictures and frames; returns the files by name (``metrics`` is written last, by run)."""
    from ..fileio import atomic_save_safetensors
    from .report import curves_image, frames_sheet, hand_masks_sheet, hands_sheet, overlay

    (before, after), (before_held_out, after_held_out) = candidates, held_out
    T = dance.video.frames_count
    paths = {"curves": report / "training_curves.png", "before_after": report / "before_after.png",
             "hands": report / "hands_before_after.png", "hand_masks": report / "hand_masks.png",
             "frames": report / "frames.safetensors", "metrics": report / "metrics.json"}
    report.mkdir(parents=True, exist_ok=True)
    frames_of = lambda samples: [torch.from_numpy(s.frames) for s in samples]  # noqa: E731
    _save_png(paths["curves"], curves_image(history, f"Flow-IPA, {args.nproc} rank(s)", math.log(2)))
    labels = [f"seed {s.seed}" for s in before]
    _save_png(paths["before_after"], frames_sheet(overlay(dance.control, dance.pixel_masks, dance.boxes), frames_of(before), frames_of(after),
                                                  labels, preferred, sorted({0, T // 2, T - 1}), dance.boxes))
    _save_png(paths["hands"], hands_sheet(before + before_held_out, after + after_held_out, [s.seed for s in before + before_held_out],
                                          [True] * len(before) + [False] * len(before_held_out), rates))
    _save_png(paths["hand_masks"], hand_masks_sheet(dance.control, dance.pixel_masks, dance.latent_mask, dance.boxes, list(range(T))))
    atomic_save_safetensors(paths["frames"], {
        "before": torch.stack(frames_of(before)).contiguous(),
        "after": torch.stack(frames_of(after)).contiguous(),
        "control": dance.control.contiguous(),
        "hand_masks": dance.pixel_masks.float().contiguous(),
    }, {"seeds": json.dumps(seeds), "layout": "[candidate, frame, height, width, rgb] 0..1"})
    return {name: str(path) for name, path in paths.items()}


def outcome_metrics(before, after, before_held_out, after_held_out, sample_ids, preferred, rates) -> dict[str, Any]:
    """metrics.json's preference rule, good-hand rates and each candidate and held-out seed before and after."""
    return {
        "preference_rule": "preferred = the N candidates with the best automatic hand score (most good hands, then the lowest hand "
                           "error to the ideal glyphs at the pose's hand keypoints; ipa_train/study/score.py); ties by seed",
        "good_hand_rate": rates,
        "candidates": [
            {"seed": s.seed, "sample_id": sid, "status": "preferred" if good else "rejected", "hand_error_before": s.score.hand_error,
             "hand_error_after": a.score.hand_error, "good_hand_rate_before": s.score.good_hand_rate, "good_hand_rate_after": a.score.good_hand_rate,
             "frames_mean_abs_change": float(np.abs(a.frames - s.frames).mean())}
            for s, a, sid, good in zip(before, after, sample_ids, preferred)
        ],
        "held_out_seeds": [{"seed": s.seed, "good_hand_rate_before": s.score.good_hand_rate, "good_hand_rate_after": a.score.good_hand_rate}
                           for s, a in zip(before_held_out, after_held_out)],
    }


def training_metrics(history: list[dict], nproc: int, wall_s: float) -> dict[str, Any]:
    """metrics.json's training record: first and last loss and gap, speed, and the step history."""
    first, last = history[0], history[-1]
    return {
        "world_size": nproc, "steps": len(history), "log2": math.log(2), "first_loss": first["loss"], "first_ipa_gap": first["ipa_gap"],
        "final_loss": last["loss"], "final_ipa_gap": last["ipa_gap"], "sec_per_step": last["sec_per_step"], "wall_s": wall_s,
        "history": [{k: e.get(k) for k in ("step", "loss", "ipa_gap", "model_error", "reference_error", "lr", "grad_norm")} for e in history],
    }


def _save_png(path: Path, image) -> Path:
    import io

    from ..fileio import atomic_write_bytes

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def summary_text(metrics: dict[str, Any], seconds: float) -> str:
    files, training, evaluation = metrics["files"], metrics["training"], metrics["evaluation"]
    lines = [
        f"IPA demo finished in {seconds:.1f} s.",
        f"  training ({training['world_size']} rank(s), {training['steps']} steps): loss {training['first_loss']:.4f} (log 2 = {training['log2']:.4f}) "
        f"-> {training['final_loss']:.4f}, ipa_gap {training['first_ipa_gap']:+.2e} -> {training['final_ipa_gap']:+.2e}",
        f"  IPA gap of the LoRA on the stored samples (mean over t = {evaluation['t']}): "
        + ", ".join(f"{status} {evaluation[f'ipa_gap_{status}']:+.3e}" for status in ("preferred", "rejected") if f"ipa_gap_{status}" in evaluation),
        f"  good-hand rate: candidates {metrics['good_hand_rate']['candidates_before']:.2f} -> {metrics['good_hand_rate']['candidates_after']:.2f}, "
        f"held-out seeds {metrics['good_hand_rate']['held_out_seeds_before']:.2f} -> {metrics['good_hand_rate']['held_out_seeds_after']:.2f}",
        f"  base model (the study world's, original Wan layout): {files['model']}",
        f"  dataset ({metrics['dataset']['preferred']} preferred, {metrics['dataset']['rejected']} rejected): {files['dataset']}",
        f"  LoRA (ComfyUI native layout): {files['lora']}",
        f"  training run (run.json, checkpoints, train.log): {files['training']}",
        f"  training curves: {files['curves']}",
        f"  hands before/after: {files['hands']}",
        f"  before/after frames: {files['before_after']}",
        f"  hand masks: {files['hand_masks']}",
        f"  metrics: {files['metrics']}",
    ]
    return "\n".join(lines)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    started = time.perf_counter()
    # The demo's tensors are tiny: one thread is several times faster than a pool whose synchronisation costs
    # more than the work (and much faster still on a machine whose cores are busy).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # SIGTERM stops the demo like Ctrl-C: the training job (its own process group) gets stopped, never orphaned.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        args = parse_args(argv)
        metrics = run(args)
    except KeyboardInterrupt:
        log("stopped by the user")
        return 130
    except DemoError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        torch.set_num_threads(threads)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(summary_text(metrics, time.perf_counter() - started))
    return 0
