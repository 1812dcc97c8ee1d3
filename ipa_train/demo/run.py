"""``python -m ipa_train demo``: the whole IPA loop on an embedded tiny random-weight Wan2.1-VACE model, on CPU.

1. Builds a tiny ``WanVACEPipeline`` (diffusers; random weights, no text encoder: a fixed random text embedding)
   and saves its transformer as a single file in the original Wan layout (what ComfyUI users keep).
2. Makes a synthetic pose sequence (a stick figure waving, ``synthetic.py``), renders it as the VACE control
   video (``pose_render.py``, the OpenPose picture) and its hand masks (``hands.py``).
3. Samples ``--candidates`` videos, seeds ``seed .. seed + N - 1``, recording what the transformer saw.
4. Marks the ``--preferred`` candidates with the lowest *hand error* preferred and the rest rejected. The rule:
   hand error = mean squared difference between a candidate's decoded frames and the control frames inside the
   pixel hand masks (ties: lower seed first). It stands in for the human (or hand-score) judgement of the real
   workflow: fixed, deterministic, and about hands.
5. Writes the candidates in the dataset format (``dataset.py``: normalised latent, the 96-channel VACE context
   and text embedding exactly as sampling used them, latent hand masks, previews).
6. Trains Flow-IPA with ``--nproc`` torchrun ranks (gloo on CPU) through the real ``python -m ipa_train.train``,
   reading its JSON events; the LoRA comes out in ComfyUI's native layout.
7. Loads the LoRA into the pipeline and samples the same seeds again; measures the IPA gap of the trained LoRA
   on the stored samples at fixed noise levels.
8. Writes ``report/``: training curves, before/after frames, hand masks, ``metrics.json`` and the frames as
   safetensors.

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
import warnings
from pathlib import Path
from typing import Any

import torch

MARKER = ".ipa-demo"  # marks a folder as this demo's output, so a re-run may clear it
OWNED = ("model", "dataset", "training", "report")
DATASET_NAME = "demo_hands"
LORA_NAME = "ipa_demo"
MODEL_FILE = "tiny_wan2.1_vace.safetensors"
PROMPT = "a person waving, tiny random-weight demo"
EVAL_T = (0.1, 0.3, 0.5, 0.7, 0.9)


class DemoError(ValueError):
    """Bad demo options or a failed stage, with what to do."""


def log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ipa_train demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/demo", help="output folder (default outputs/demo); a previous demo output there is replaced")
    parser.add_argument("--steps", type=int, default=40, help="training steps (default 40)")
    parser.add_argument("--candidates", type=int, default=6, help="videos to sample (default 6)")
    parser.add_argument("--preferred", type=int, default=None, help="how many become preferred (default: half the candidates)")
    parser.add_argument("--seed", type=int, default=0, help="model, pose and first candidate seed (default 0)")
    parser.add_argument("--nproc", type=int, default=2, help="training processes under torchrun (default 2; 1 = plain python)")
    parser.add_argument("--frames", type=int, default=9, help="video frames, 4k+1 (default 9)")
    parser.add_argument("--width", type=int, default=64, help="video width, a multiple of 16 (default 64)")
    parser.add_argument("--height", type=int, default=64, help="video height, a multiple of 16 (default 64)")
    parser.add_argument("--sampling-steps", type=int, default=6, help="denoising steps per video (default 6)")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="LoRA learning rate (default 2e-3)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args) -> None:
    problems = []
    if args.candidates < 2:
        problems.append(f"--candidates {args.candidates}: need at least 2 (some preferred, some rejected)")
    if args.preferred is None:
        args.preferred = max(1, args.candidates // 2)
    if not 1 <= args.preferred <= args.candidates:
        problems.append(f"--preferred {args.preferred}: must be 1..{args.candidates} (the candidate count)")
    if args.steps < 1:
        problems.append(f"--steps {args.steps}: must be >= 1")
    if args.nproc < 1:
        problems.append(f"--nproc {args.nproc}: must be >= 1")
    if args.frames < 5 or (args.frames - 1) % 4:
        problems.append(f"--frames {args.frames}: Wan's video VAE needs 4k+1 frames, at least 5 (e.g. 9, 13, 17)")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value < 32 or value % 16:
            problems.append(f"--{name} {value}: must be a multiple of 16, at least 32 (VAE x8 times the 2x2 patch)")
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


def hand_error(frames: torch.Tensor, control: torch.Tensor, pixel_masks: torch.Tensor) -> float:
    """The preference rule's score: mean squared difference to the control frames inside the hand masks."""
    weight = pixel_masks.float().unsqueeze(-1)
    total = float(weight.sum()) * frames.shape[-1]
    if total == 0:
        return 0.0
    return float(((frames.float() - control.float()).square() * weight).sum()) / total


def choose_preferred(errors: list[float], count: int) -> list[bool]:
    order = sorted(range(len(errors)), key=lambda i: (errors[i], i))
    chosen = set(order[:count])
    return [i in chosen for i in range(len(errors))]


def store_sample(dataset_dir: Path, sampled, pixel_masks, boxes, poses, status: str, hand_err: float, settings: dict):
    """One sampled video -> one dataset sample, with the latent and VACE context the transformer saw (bit for bit)."""
    from ..data.collect import Candidate, candidate_to_sample
    from ..data.dataset import add_sample
    from ..wan.latents import LATENT_CHANNELS, denormalize_latent

    context = sampled.vace_context
    raw_frames = torch.cat(
        [denormalize_latent(context[:, :LATENT_CHANNELS]), denormalize_latent(context[:, LATENT_CHANNELS : 2 * LATENT_CHANNELS])], dim=1
    )
    candidate = Candidate(
        latent=denormalize_latent(sampled.latent),  # the collector's input is ComfyUI's raw latent
        trim_latent=sampled.ref_frames,
        vace_frames=raw_frames,
        vace_mask=context[:, 2 * LATENT_CHANNELS :],
        vace_strength=1.0,
        text_embedding=sampled.text_embedding,
        frames=sampled.frames,
        seed=sampled.seed,
        sigmas=sampled.sigmas,
        settings=settings,
        source="ipa_demo",
    )
    tensors, meta, previews, summary = candidate_to_sample(candidate, pixel_masks, boxes, prompt=PROMPT)
    # The collector re-normalises ComfyUI's raw tensors; here the model-space tensors are at hand, so store them as
    # they are (the round trip through raw space would move them by float rounding).
    tensors.latent = sampled.latent[0].contiguous()
    tensors.vace_context = context[0].contiguous()
    meta.update({"driving_pose": poses, "hand_error": hand_err, "preference_rule": "lowest hand error (see ipa_train/demo/run.py)"})
    summary["hand_error"] = round(hand_err, 6)
    return add_sample(dataset_dir, tensors, meta=meta, previews=previews, status=status, summary=summary)


def train_with_torchrun(run_json: Path, output_dir: Path, nproc: int) -> tuple[list[dict], dict, float]:
    """Runs ``python -m ipa_train.train --config run_json`` (under torchrun when ``nproc`` > 1) and relays its
    step events. Returns (step events, finished event, wall seconds)."""
    from ..training import launcher

    command = launcher.build_command(run_json, processes=nproc)
    env = launcher.build_env(gpus=(), processes=nproc)  # CPU: the demo's model is tiny; gloo between the ranks
    env["OMP_NUM_THREADS"] = "1" if nproc > 1 else env.get("OMP_NUM_THREADS", str(max(1, os.cpu_count() or 1)))
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    job = launcher.TrainingJob(command, env, cwd=launcher.PACKAGE_PARENT, log_path=output_dir / "train.log")
    try:
        while job.running():
            for event in job.poll(0.5):
                if event["event"] == "started":
                    log(f"  trainer started: {event.get('world_size')} rank(s), {event.get('distributed')}, {event.get('samples')} preferred samples, "
                        f"{event.get('trainable_parameters')} LoRA parameters")
                elif event["event"] == "step":
                    step, total = event["step"], event["total"]
                    if step == 1 or step == total or step % max(1, total // 8) == 0:
                        log(f"  step {step}/{total}: loss {event['loss']:.5f}, ipa_gap {event['ipa_gap']:+.3e}, {event['sec_per_step']:.2f} s/step")
    except KeyboardInterrupt:
        log("interrupted: stopping the trainer (its ranks finish the current step and write a checkpoint)")
        job.stop(grace_s=60)
        final = job.finish().final or {}
        if final.get("event") == "stopped":
            log(f"trainer stopped at step {final.get('step')}; checkpoint {final.get('checkpoint')} (continue with: {final.get('resume')})")
        raise
    outcome = job.finish()
    seconds = time.perf_counter() - started
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
    from ..data.dataset import create_dataset, load_sample, read_manifest
    from .pipeline import build_tiny_pipeline, load_lora, random_text_embedding, sample, to_pil_frames
    from .report import curves_image, frames_sheet, hand_masks_sheet, overlay
    from ..fileio import atomic_save_safetensors, atomic_write_json, read_safetensors_metadata
    from ..pose.hands import hand_boxes, latent_hand_mask, pose_to_hand_masks
    from ..wan.fingerprint import diffusers_model_fingerprint
    from ..wan.model import build_tiny_transformer, save_original_wan_single_file
    from ..pose.render import render_pose_video
    from ..pose.synthetic import synthetic_pose_sequence

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    out = prepare_output(Path(args.output))
    W, H, T = args.width, args.height, args.frames
    stages = 7

    # 1. the tiny pipeline, and its transformer as a ComfyUI-style single file for the trainer
    log(f"[1/{stages}] tiny random-weight Wan2.1-VACE pipeline (diffusers WanVACEPipeline, seed {args.seed})")
    transformer = build_tiny_transformer(args.seed)
    pipe = build_tiny_pipeline(args.seed, transformer=transformer)
    model_path = out / "model" / MODEL_FILE
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ComfyUI will not rebuild")  # the tiny test shape is diffusers-only
        save_original_wan_single_file(transformer, model_path)
    text = random_text_embedding(transformer.config.text_dim, seed=args.seed)
    timings["build"] = time.perf_counter() - clock

    # 2. poses -> control video, reference image, hand masks
    log(f"[2/{stages}] synthetic pose sequence: {T} frames at {W}x{H}, a stick figure waving; control video and hand masks")
    poses = synthetic_pose_sequence(T, W, H, people=1, seed=args.seed)
    control_u8 = render_pose_video(poses)  # [T, H, W, 3] uint8, the OpenPose picture VACE is driven by
    control = torch.from_numpy(control_u8).float() / 255.0
    pixel_masks = pose_to_hand_masks(poses, W, H)
    boxes = hand_boxes(poses, W, H)
    latent_mask = latent_hand_mask(pixel_masks)
    reference = to_pil_frames(0.5 + 0.5 * control[:1])[0]  # the first pose on grey: the VACE reference image
    control_pil = to_pil_frames(control_u8)
    log(f"  hand pixels {100 * float(pixel_masks.mean()):.1f}% of the video; latent hand mask {tuple(latent_mask.shape)}, "
        f"{100 * float(latent_mask.mean()):.1f}% of latent cells")

    # 3. candidates
    seeds = [args.seed + i for i in range(args.candidates)]
    log(f"[3/{stages}] sampling {len(seeds)} candidates (seeds {seeds[0]}..{seeds[-1]}, {args.sampling_steps} steps each)")
    clock = time.perf_counter()
    sample_args = dict(width=W, height=H, frames=T, steps=args.sampling_steps)
    before = [sample(pipe, control_pil, reference, text, seed, **sample_args) for seed in seeds]
    timings["sample_before"] = time.perf_counter() - clock
    errors_before = [hand_error(s.frames, control, pixel_masks) for s in before]

    # 4. the preference rule, and 5. the dataset
    preferred = choose_preferred(errors_before, args.preferred)
    log(f"[4/{stages}] preference rule: the {args.preferred} lowest hand errors are preferred: "
        + ", ".join(f"seed {s.seed} {e:.4f}{' *' if p else ''}" for s, e, p in zip(before, errors_before, preferred)))
    dataset_dir = create_dataset(out / "dataset", DATASET_NAME)
    settings = {"width": W, "height": H, "length": T, "steps": args.sampling_steps, "cfg": 1.0, "shift": 3.0, "vace_strength": 1.0,
                "sampler": "flow-match euler (diffusers)", "model": MODEL_FILE, "base_fingerprint": diffusers_model_fingerprint(transformer)}
    sample_ids = []
    for sampled, good, err in zip(before, preferred, errors_before):
        result = store_sample(dataset_dir, sampled, pixel_masks, boxes, poses, "preferred" if good else "rejected", err, settings)
        sample_ids.append(result.sample_id)
    counts = {status: sum(1 for e in read_manifest(dataset_dir) if e["status"] == status) for status in ("preferred", "rejected")}
    log(f"[5/{stages}] dataset {dataset_dir}: {counts['preferred']} preferred, {counts['rejected']} rejected")

    # 6. training through the real entry point
    run_config = {
        "dataset": str(dataset_dir), "base_model": str(model_path), "output_dir": str(out / "training"), "lora_name": LORA_NAME,
        "objective": "ipa", "beta": 600.0, "hand_weight": 10.0, "rank": args.rank, "learning_rate": args.learning_rate,
        "steps": args.steps, "batch_size": 1, "checkpoint_every": 0, "seed": args.seed, "precision": "fp32",
    }
    run_json = atomic_write_json(out / "training" / "run.json", run_config)  # the trainer rewrites it with every default filled in
    how = f"torchrun, {args.nproc} ranks (gloo, CPU)" if args.nproc > 1 else "one process (CPU)"
    log(f"[6/{stages}] Flow-IPA training, {args.steps} steps, {how}: python -m ipa_train.train --config {run_json}")
    history, finished, timings["train"] = train_with_torchrun(run_json, out / "training", args.nproc)
    lora_path = Path(finished["lora_path"])

    # 7. sample again with the LoRA (same seeds), and the gap on the stored samples
    log(f"[7/{stages}] sampling the same seeds with the LoRA {lora_path.name}; IPA gap on the stored samples at t = {list(EVAL_T)}")
    clock = time.perf_counter()
    stored = []
    for sample_id in sample_ids:
        tensors, _ = load_sample(dataset_dir, sample_id)
        status = next(e["status"] for e in read_manifest(dataset_dir) if e["id"] == sample_id)
        stored.append((sample_id, tensors, status))
    lora_metadata: dict[str, str] = {}

    def load_adapter():
        lora_metadata.update(load_lora(transformer, lora_path))

    evaluation = evaluation_gaps(transformer, stored, run_config["hand_weight"], load_adapter)
    after = [sample(pipe, control_pil, reference, text, seed, **sample_args) for seed in seeds]
    timings["sample_after"] = time.perf_counter() - clock
    errors_after = [hand_error(s.frames, control, pixel_masks) for s in after]

    # report
    report = out / "report"
    picks = sorted({0, T // 2, T - 1})
    curves_path = report / "training_curves.png"
    frames_path = report / "before_after.png"
    masks_path = report / "hand_masks.png"
    tensors_path = report / "frames.safetensors"
    metrics_path = report / "metrics.json"
    report.mkdir(parents=True, exist_ok=True)
    _save_png(curves_path, curves_image(history, f"Flow-IPA, {args.nproc} rank(s)", math.log(2)))
    labels = [f"seed {s.seed}" for s in before]
    _save_png(frames_path, frames_sheet(overlay(control, pixel_masks, boxes), [s.frames for s in before], [s.frames for s in after], labels, preferred, picks, boxes))
    _save_png(masks_path, hand_masks_sheet(control, pixel_masks, latent_mask, boxes, list(range(T))))
    atomic_save_safetensors(tensors_path, {
        "before": torch.stack([s.frames for s in before]).contiguous(),
        "after": torch.stack([s.frames for s in after]).contiguous(),
        "control": control.contiguous(),
        "hand_masks": pixel_masks.float().contiguous(),
    }, {"seeds": json.dumps(seeds), "layout": "[candidate, frame, height, width, rgb] 0..1"})

    first, last = history[0], history[-1]
    metrics = {
        "settings": {key: getattr(args, key) for key in ("steps", "candidates", "preferred", "seed", "nproc", "frames", "width", "height",
                                                        "sampling_steps", "learning_rate", "rank")},
        "preference_rule": "preferred = the N candidates with the lowest hand error: mean squared difference between the decoded "
                           "frames and the control (pose) frames inside the pixel hand masks; ties by seed",
        "candidates": [
            {"seed": s.seed, "sample_id": sid, "status": "preferred" if good else "rejected", "hand_error_before": eb,
             "hand_error_after": ea, "frames_mean_abs_change": float((a.frames - s.frames).abs().mean())}
            for s, a, sid, good, eb, ea in zip(before, after, sample_ids, preferred, errors_before, errors_after)
        ],
        "dataset": {"path": str(dataset_dir), "preferred": counts["preferred"], "rejected": counts["rejected"]},
        "training": {
            "world_size": args.nproc, "steps": len(history), "log2": math.log(2), "first_loss": first["loss"], "first_ipa_gap": first["ipa_gap"],
            "final_loss": last["loss"], "final_ipa_gap": last["ipa_gap"], "sec_per_step": last["sec_per_step"], "wall_s": timings["train"],
            "history": [{k: e.get(k) for k in ("step", "loss", "ipa_gap", "model_error", "reference_error", "lr", "grad_norm")} for e in history],
        },
        "lora": {"path": str(lora_path), "metadata": lora_metadata or read_safetensors_metadata(lora_path)},
        "evaluation": evaluation,
        "timings_s": {key: round(value, 3) for key, value in timings.items()},
        "files": {"model": str(model_path), "dataset": str(dataset_dir), "training": str(out / "training"), "lora": str(lora_path),
                  "curves": str(curves_path), "before_after": str(frames_path), "hand_masks": str(masks_path), "frames": str(tensors_path),
                  "metrics": str(metrics_path), "train_log": str(out / "training" / "train.log")},
    }
    atomic_write_json(metrics_path, metrics)
    return metrics


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
        f"  base model (tiny, original Wan layout): {files['model']}",
        f"  dataset ({metrics['dataset']['preferred']} preferred, {metrics['dataset']['rejected']} rejected): {files['dataset']}",
        f"  LoRA (ComfyUI native layout): {files['lora']}",
        f"  training run (run.json, checkpoints, train.log): {files['training']}",
        f"  training curves: {files['curves']}",
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
