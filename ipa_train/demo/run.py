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
5. Writes the candidates in the dataset format (``data.samples``: latent, VACE context and text embedding
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


def run(args) -> dict[str, Any]:
    """The demo's phases, in order; returns the metrics it wrote to ``report/metrics.json``."""
    demo = _Demo(args)
    demo.load_model()  # 1. the pretrained world model (shipped weights)
    demo.held_out_dance()  # 2. a pose sequence the model never saw -> control video, reference image, hand masks
    demo.sample_before()  # 3. candidates (seeds seed..), and held-out seeds for the good-hand rate
    demo.store_dataset()  # 4. the preference rule (the automatic hand score), and 5. the dataset
    demo.train()  # 6. training through the real entry point
    demo.sample_after()  # 7. sample again with the LoRA (same seeds), and the gap on the stored samples
    return demo.write_report()  # report/: pictures, frames and metrics.json


class _Demo:
    """What the phases of ``run`` hand to each other; each phase is one method and fills the fields it makes."""

    STAGES = 7

    def __init__(self, args):
        self.args = args
        self.timings: dict[str, float] = {}

    def load_model(self) -> None:
        from ..study import experiment, models

        clock = time.perf_counter()
        self.weights = Path(self.args.weights) if self.args.weights else models.WEIGHTS
        log(f"[1/{self.STAGES}] the study world's pretrained Wan2.1-VACE model ({self.weights}): diffusers WanVACEPipeline")
        try:
            self.w = experiment.load_world(self.weights)
        except models.MissingWeights as exc:
            raise DemoError(str(exc)) from exc
        self.out = prepare_output(Path(self.args.output))
        self.model_path = self.w.model_path
        self.timings["build"] = time.perf_counter() - clock

    def held_out_dance(self) -> None:
        from ..pose.hands import hand_boxes, latent_hand_mask, pose_to_hand_masks
        from ..study import experiment

        video = self.video = experiment.held_out_videos(experiment.CANDIDATE_POSES, 1, self.args.seed)[0]
        W, H, T = video.width, video.height, video.frames_count
        log(f"[2/{self.STAGES}] a held-out dance: {T} frames at {W}x{H} (pose seed {video.pose_seed}); control video and hand masks")
        self.poses = video.poses()
        self.control = torch.from_numpy(video.control()).float() / 255.0
        self.pixel_masks = pose_to_hand_masks(self.poses, W, H)
        self.boxes = hand_boxes(self.poses, W, H)
        self.latent_mask = latent_hand_mask(self.pixel_masks)

    def sample_before(self) -> None:
        from ..study import experiment

        args = self.args
        self.seeds = [args.seed + i for i in range(args.candidates)]
        self.held_out = [args.seed + 1000 + i for i in range(args.eval_seeds)]
        log(f"[3/{self.STAGES}] sampling {len(self.seeds)} candidates (seeds {self.seeds[0]}..{self.seeds[-1]}) and {len(self.held_out)} "
            f"held-out seeds, {args.sampling_steps} steps each")
        clock = time.perf_counter()
        self.before = [experiment.sample_world(self.w, self.video, seed, args.sampling_steps, keep=True) for seed in self.seeds]
        self.before_held_out = [experiment.sample_world(self.w, self.video, seed, args.sampling_steps) for seed in self.held_out]
        self.timings["sample_before"] = time.perf_counter() - clock

    def store_dataset(self) -> None:
        from ..data.collect import store_sampled
        from ..data.manifest import read_manifest
        from ..data.samples import create_dataset
        from ..study import experiment

        self.preferred = choose_preferred(self.before, self.args.preferred)
        log(f"[4/{self.STAGES}] hand score: the {self.args.preferred} best-handed candidates are preferred: "
            + ", ".join(f"seed {s.seed} {s.score.good_hand_rate:.1f} good, err {s.score.hand_error:.4f}{' *' if p else ''}"
                        for s, p in zip(self.before, self.preferred)))
        self.dataset_dir = create_dataset(self.out / "dataset", DATASET_NAME)
        settings = experiment.sampling_settings(self.w, self.video, self.args.sampling_steps)
        self.sample_ids = []
        for candidate, good in zip(self.before, self.preferred):
            result = store_sampled(
                self.dataset_dir, candidate.sampled, self.pixel_masks, self.boxes, self.poses, "preferred" if good else "rejected", settings,
                PROMPT, "ipa_demo",
                meta={"hand_error": candidate.score.hand_error, "good_hand_rate": candidate.score.good_hand_rate,
                      "preference_rule": "best hand score (ipa_train/study/score.py; see ipa_train/demo/run.py)"},
                summary={"hand_error": round(candidate.score.hand_error, 6), "good_hand_rate": candidate.score.good_hand_rate},
            )
            self.sample_ids.append(result.sample_id)
        manifest = read_manifest(self.dataset_dir)
        self.counts = {status: sum(1 for e in manifest if e["status"] == status) for status in ("preferred", "rejected")}
        log(f"[5/{self.STAGES}] dataset {self.dataset_dir}: {self.counts['preferred']} preferred, {self.counts['rejected']} rejected")

    def train(self) -> None:
        from ..choices import Objective, Precision
        from ..jobs.config import RunConfig

        args = self.args
        self.run_config = RunConfig(
            dataset=str(self.dataset_dir), base_model=str(self.model_path), output_dir=str(self.out / "training"), lora_name=LORA_NAME,
            objective=Objective.IPA, beta=600.0, hand_weight=10.0, rank=args.rank, learning_rate=args.learning_rate,
            steps=args.steps, batch_size=1, checkpoint_every=0, seed=args.seed, precision=Precision.FP32,
        )
        self.run_config.validate("the demo's run config")
        run_json = self.run_config.save(self.out / "training" / "run.json")
        how = f"torchrun, {args.nproc} ranks (gloo, CPU)" if args.nproc > 1 else "one process (CPU)"
        log(f"[6/{self.STAGES}] Flow-IPA training, {args.steps} steps, {how}: python -m ipa_train.train --config {run_json}")
        self.history, finished, self.timings["train"] = train_with_torchrun(run_json, self.out / "training", args.nproc)
        self.lora_path = Path(finished["lora_path"])

    def sample_after(self) -> None:
        from ..study import experiment

        log(f"[7/{self.STAGES}] sampling the same seeds with the LoRA {self.lora_path.name}; IPA gap on the stored samples at t = {list(EVAL_T)}")
        clock = time.perf_counter()
        self.evaluate_lora()
        steps = self.args.sampling_steps
        self.after = [experiment.sample_world(self.w, self.video, seed, steps) for seed in self.seeds]
        self.after_held_out = [experiment.sample_world(self.w, self.video, seed, steps) for seed in self.held_out]
        self.timings["sample_after"] = time.perf_counter() - clock
        rate = experiment.good_hand_rate
        self.rates = {
            "candidates_before": rate(self.before), "candidates_after": rate(self.after),
            "held_out_seeds_before": rate(self.before_held_out), "held_out_seeds_after": rate(self.after_held_out),
        }
        log(f"  good-hand rate: candidates {self.rates['candidates_before']:.2f} -> {self.rates['candidates_after']:.2f}, "
            f"held-out seeds {self.rates['held_out_seeds_before']:.2f} -> {self.rates['held_out_seeds_after']:.2f}")

    def evaluate_lora(self) -> None:
        """The IPA gap of the LoRA on the stored samples; loads the LoRA into the pipeline's transformer."""
        from ..data.manifest import read_manifest
        from ..data.samples import load_sample
        from ..wan.pipeline import load_lora

        stored = []
        for sample_id in self.sample_ids:
            tensors, _ = load_sample(self.dataset_dir, sample_id)
            status = next(e["status"] for e in read_manifest(self.dataset_dir) if e["id"] == sample_id)
            stored.append((sample_id, tensors, status))
        self.lora_metadata: dict[str, str] = {}

        def load_adapter():
            self.lora_metadata.update(load_lora(self.w.transformer, self.lora_path))

        self.evaluation = evaluation_gaps(self.w.transformer, stored, self.run_config.hand_weight, load_adapter)

    def write_report(self) -> dict[str, Any]:
        from ..fileio import atomic_write_json

        report = self.out / "report"
        report.mkdir(parents=True, exist_ok=True)
        self.files = {
            "model": str(self.model_path), "dataset": str(self.dataset_dir), "training": str(self.out / "training"),
            "lora": str(self.lora_path), "curves": str(report / "training_curves.png"), "before_after": str(report / "before_after.png"),
            "hands": str(report / "hands_before_after.png"), "hand_masks": str(report / "hand_masks.png"),
            "frames": str(report / "frames.safetensors"), "metrics": str(report / "metrics.json"),
            "train_log": str(self.out / "training" / "train.log"),
        }
        self.write_pictures()
        metrics = self.metrics()
        atomic_write_json(report / "metrics.json", metrics)
        return metrics

    def write_pictures(self) -> None:
        from ..fileio import atomic_save_safetensors
        from ..jobs.curves import training_curves
        from .report import frames_sheet, hand_masks_sheet, hands_sheet, overlay

        T, files = self.video.frames_count, self.files
        picks = sorted({0, T // 2, T - 1})
        frames_of = lambda samples: [torch.from_numpy(s.frames) for s in samples]  # noqa: E731
        before, after, before_held_out = self.before, self.after, self.before_held_out
        _save_png(Path(files["curves"]), training_curves(self.history, width=640, height=520, title=f"Flow-IPA, {self.args.nproc} rank(s)"))
        labels = [f"seed {s.seed}" for s in before]
        _save_png(Path(files["before_after"]), frames_sheet(overlay(self.control, self.pixel_masks, self.boxes), frames_of(before),
                                                            frames_of(after), labels, self.preferred, picks, self.boxes))
        _save_png(Path(files["hands"]), hands_sheet(before + before_held_out, after + self.after_held_out,
                                                    [s.seed for s in before + before_held_out],
                                                    [True] * len(before) + [False] * len(before_held_out), self.rates))
        _save_png(Path(files["hand_masks"]), hand_masks_sheet(self.control, self.pixel_masks, self.latent_mask, self.boxes, list(range(T))))
        atomic_save_safetensors(Path(files["frames"]), {
            "before": torch.stack(frames_of(before)).contiguous(),
            "after": torch.stack(frames_of(after)).contiguous(),
            "control": self.control.contiguous(),
            "hand_masks": self.pixel_masks.float().contiguous(),
        }, {"seeds": json.dumps(self.seeds), "layout": "[candidate, frame, height, width, rgb] 0..1"})

    def metrics(self) -> dict[str, Any]:
        from ..fileio import read_safetensors_metadata

        args, video = self.args, self.video
        return {
            "settings": {key: getattr(args, key) for key in ("steps", "candidates", "preferred", "eval_seeds", "seed", "nproc",
                                                            "sampling_steps", "learning_rate", "rank")},
            "world": {"pose_seed": video.pose_seed, "body_color": video.body_color, "frames": video.frames_count, "width": video.width,
                      "height": video.height, "weights": str(self.weights)},
            "preference_rule": "preferred = the N candidates with the best automatic hand score (most good hands, then the lowest hand "
                               "error to the ideal glyphs at the pose's hand keypoints; ipa_train/study/score.py); ties by seed",
            "good_hand_rate": self.rates,
            "candidates": [
                {"seed": s.seed, "sample_id": sid, "status": "preferred" if good else "rejected", "hand_error_before": s.score.hand_error,
                 "hand_error_after": a.score.hand_error, "good_hand_rate_before": s.score.good_hand_rate,
                 "good_hand_rate_after": a.score.good_hand_rate, "frames_mean_abs_change": float(np.abs(a.frames - s.frames).mean())}
                for s, a, sid, good in zip(self.before, self.after, self.sample_ids, self.preferred)
            ],
            "held_out_seeds": [{"seed": s.seed, "good_hand_rate_before": s.score.good_hand_rate, "good_hand_rate_after": a.score.good_hand_rate}
                               for s, a in zip(self.before_held_out, self.after_held_out)],
            "dataset": {"path": str(self.dataset_dir), "preferred": self.counts["preferred"], "rejected": self.counts["rejected"]},
            "training": self.training_metrics(),
            "lora": {"path": str(self.lora_path), "metadata": self.lora_metadata or read_safetensors_metadata(self.lora_path)},
            "evaluation": self.evaluation,
            "timings_s": {key: round(value, 3) for key, value in self.timings.items()},
            "files": self.files,
        }

    def training_metrics(self) -> dict[str, Any]:
        first, last = self.history[0], self.history[-1]
        return {
            "world_size": self.args.nproc, "steps": len(self.history), "log2": math.log(2), "first_loss": first["loss"],
            "first_ipa_gap": first["ipa_gap"], "final_loss": last["loss"], "final_ipa_gap": last["ipa_gap"],
            "sec_per_step": last["sec_per_step"], "wall_s": self.timings["train"],
            "history": [{k: e.get(k) for k in ("step", "loss", "ipa_gap", "model_error", "reference_error", "lr", "grad_norm")}
                        for e in self.history],
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
