"""IPA Train LoRA: runs ``ipa_train.train`` in its own process (group) and shows its progress in the graph.

ComfyUI's models are unloaded first, so the trainer gets the GPUs. Launch, environment, event parsing, graceful
stop and the loss plot live in ``ipa_train.launcher``; this node maps them onto ComfyUI's progress bar (whose
preview image is the live loss plot), its cancel button and its error display.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from pathlib import Path

import comfy.model_management
import numpy as np
import torch
from comfy_api.v0_0_2 import io, ui

from ..ipa_train.jobs import launcher
from ..ipa_train.jobs.config import BASE_PRECISIONS as RUN_BASE_PRECISIONS, DISTRIBUTED as RUN_DISTRIBUTED, OBJECTIVES as RUN_OBJECTIVES, PRECISIONS as RUN_PRECISIONS, ConfigError, RunConfig
from ..ipa_train.data.dataset import DatasetError, count_statuses, dataset_path, list_datasets, read_manifest
from ..ipa_train.fileio import InvalidNameError, atomic_write_json, install_keeping_previous, validate_name
from ..ipa_train.jobs.checkpoint_files import checkpoint_problem
from ..ipa_train.jobs.curves import training_curves
from .host import prompt_server
from .paths import dataset_root

log = logging.getLogger(__name__)

OBJECTIVES = list(RUN_OBJECTIVES)  # the trainer's own lists, so the node never offers a value it refuses
PRECISIONS = list(RUN_PRECISIONS)
DISTRIBUTED = list(RUN_DISTRIBUTED)
BASE_PRECISIONS = list(RUN_BASE_PRECISIONS)
LORA_SUBFOLDER = "ipa"


NONE = "none"


def reference_settings(settings: dict) -> dict:
    """run.json keys for the reference (init_lora with its strength, vace_module, allow_other_base) and the LoRA targets,
    only those set; model names resolved to paths in ComfyUI's model folders."""
    import folder_paths

    out: dict = {}
    if settings.get("init_lora", NONE) not in (None, "", NONE):
        out["init_lora"] = [{"path": folder_paths.get_full_path_or_raise("loras", settings["init_lora"]),
                             "strength": float(settings.get("init_lora_strength", 1.0))}]
    if settings.get("vace_module", NONE) not in (None, "", NONE):
        out["vace_module"] = folder_paths.get_full_path_or_raise("diffusion_models", settings["vace_module"])
    targets = [name.strip() for name in str(settings.get("targets") or "").replace(";", ",").split(",") if name.strip()]
    if targets and targets != ["self_attn_qkv"]:
        out["targets"] = targets
    if settings.get("allow_other_base"):
        out["allow_other_base"] = True
    return out


class TrainingStopped(comfy.model_management.InterruptProcessingException):
    """Raised after the user cancelled a run: the message says where the checkpoint is and how to resume.

    An InterruptProcessingException, as ComfyUI's own nodes raise on cancel: ComfyUI then reports the prompt as
    interrupted ("Cancelled" in the queue), not as a failure with an error dialog. The message goes to the node
    (progress text), the log and a toast, since an interruption carries no message to the frontend."""


def runs_root() -> Path:
    import folder_paths

    return Path(folder_paths.get_output_directory()) / "ipa_runs"


def lora_folder() -> Path:
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0]) / LORA_SUBFOLDER


def _resolve_resume(resume: str, lora_name: str) -> Path | None:
    resume = (resume or "").strip()
    if not resume:
        return None
    root = runs_root().resolve()
    if resume == "latest":
        # Run folders are "<lora_name>-YYYYmmdd-HHMMSS[-N]": match the whole pattern, so "hands" never picks "hands-v2-...".
        own = re.compile(re.escape(lora_name) + r"-\d{8}-\d{6}(?:-\d+)?")
        runs = sorted((p for p in root.glob(f"{glob.escape(lora_name)}-*") if p.is_dir() and own.fullmatch(p.name)),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        for run in runs:
            checkpoint = launcher.latest_checkpoint(run)
            if checkpoint is not None:
                return checkpoint
        raise ValueError(f"resume='latest': no checkpoint of a run named {lora_name!r} under {root}; clear resume to start fresh")
    path = Path(resume)
    path = (path if path.is_absolute() else root / path).resolve()
    if path.parent == root and path.is_dir():  # a run folder: its newest complete checkpoint
        path = launcher.latest_checkpoint(path) or path
    # Only <runs>/<run>/checkpoints/step-N: the run folder (where run.json and the new checkpoints go) is taken
    # from it, so anything shallower or elsewhere would put the run outside the runs folder.
    if (path.parent.name != "checkpoints" or len(path.parents) < 3 or path.parents[2] != root or not path.name.startswith("step-")
            or not (path / "state.json").is_file()):
        raise ValueError(f"resume={resume!r} is not a checkpoint folder (<run>/checkpoints/step-N) under {root}; "
                         "use 'latest' or a path the node reported")
    problem = checkpoint_problem(path)
    if problem:
        raise ValueError(f"resume={resume!r}: the checkpoint is incomplete ({problem}); use 'latest' (the newest complete one)")
    return path


def _new_run_dir(lora_name: str) -> Path:
    """``<runs>/<lora_name>-YYYYmmdd-HHMMSS``, with ``-2``, ``-3``, ... when two runs start in the same second."""
    stem = runs_root() / f"{lora_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, counter = stem, 2
    while candidate.exists():
        candidate = stem.with_name(f"{stem.name}-{counter}")
        counter += 1
    return candidate


def _free_host_memory() -> None:
    import comfy.model_management

    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


def resolve_vram_budget(spec: str, gpu_ids: list[int]) -> float | None:
    """``auto``: the smallest free memory among the chosen GPUs (measured after ComfyUI unloaded its models), None on
    CPU; ``none``/empty: no budget (the settings as given); else a number of GiB."""
    text = str(spec or "").strip().lower()
    if text in ("", "none", "off"):
        return None
    if text == "auto":
        if not gpu_ids or not torch.cuda.is_available():
            return None
        return min(torch.cuda.mem_get_info(i)[0] for i in gpu_ids) / 2**30
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"vram_budget_gb={spec!r}: write 'auto', 'none' or a number of GiB such as 23.5") from None
    if not value > 0:
        raise ValueError(f"vram_budget_gb={spec!r} must be above 0 GiB ('none' for no budget)")
    return value


def memory_report(started: dict | None) -> str:
    """The planner's prediction from the trainer's ``started`` event, as one line of the node's report."""
    memory = (started or {}).get("memory") or {}
    if "peak_gb" not in memory:
        return ""
    s = memory.get("settings", {})
    budget = f" of {memory['budget_gb']:.1f} GiB" if memory.get("budget_gb") else ""
    return (f"memory: predicted peak {memory['peak_gb']:.2f} GiB{budget} (base {s.get('base_precision')}, blocks_to_swap "
            f"{s.get('blocks_to_swap')}, activation_offload {'on' if s.get('activation_offload') else 'off'}, "
            f"gradient_checkpointing {'on' if s.get('gradient_checkpointing') else 'off'})")


def _send(event: str, data: dict) -> None:
    instance = prompt_server()
    if instance is not None:  # no server (tests, scripts): the progress bar is enough
        instance.send_sync(event, data, instance.client_id)


def _show_on_node(text: str, node_id) -> None:
    """Text under the node, the way ComfyUI's own nodes report (``PromptServer.send_progress_text``)."""
    instance = prompt_server()
    if instance is not None and node_id is not None:
        instance.send_progress_text(text, node_id, instance.client_id)


def dataset_choices() -> list[str]:
    """The datasets under output/ipa_datasets when the node list is built (refresh: R in ComfyUI)."""
    try:
        return list_datasets(dataset_root())
    except OSError:
        return []


def _visible_gpus() -> tuple[int, list[str] | None]:
    """(how many GPUs ComfyUI sees, their physical ids when ComfyUI runs restricted by CUDA_VISIBLE_DEVICES)."""
    host_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    host_devices = [d.strip() for d in host_visible.split(",") if d.strip()] if host_visible is not None else None
    visible = len(host_devices) if host_devices is not None else (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return visible, host_devices


def check_dataset(dataset: str) -> tuple[Path, dict[str, int]]:
    """The dataset's folder and status counts; a ValueError naming the existing datasets when it cannot train."""
    root = dataset_root()
    try:
        dataset_dir = dataset_path(root, dataset)
        existing = dataset_choices()
        if dataset not in existing:
            existing = ", ".join(existing) or "none yet"
            raise ValueError(f"dataset {dataset!r} does not exist in {root} (existing: {existing}). Run the curate workflow "
                             "first (IPA Mark Preferred creates it), or pick one from the list (R refreshes it)")
        counts = count_statuses(read_manifest(dataset_dir))
    except DatasetError as exc:
        raise ValueError(str(exc)) from None
    if counts["preferred"] == 0:
        raise ValueError(f"dataset {dataset} has no preferred samples ({counts}); mark some in the IPA gallery or with IPA Mark Preferred")
    return dataset_dir, counts


def check_lora_name(lora_name: str) -> None:
    """The same rule as dataset names (``fileio.validate_name``), checked before anything is written."""
    try:
        validate_name(lora_name, "lora_name")
    except InvalidNameError as exc:
        raise ValueError(str(exc)) from None


def _to_image(pil_image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pil_image.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)


class IPATrainLoRA(io.ComfyNode):
    # The trainer module and extra import paths: tests point these at a stand-in that follows the same contract.
    trainer_module = "ipa_train.train"
    extra_pythonpath: list[str] = []
    stop_grace_s = 900.0
    poll_s = 0.5

    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="IPATrainLoRA",
            display_name="IPA Train LoRA",
            category="IPA",
            description=(
                "Trains a Flow-IPA (or DPO/SFT) LoRA on the preferred samples of a dataset, in a separate process (torchrun for "
                "several GPUs). Frees ComfyUI's models first. Cancel stops after the current step and writes a checkpoint."
            ),
            is_output_node=True,
            inputs=[
                io.Combo.Input("dataset", options=dataset_choices(), default="hands",
                               tooltip="The IPA dataset to train on (output/ipa_datasets/<name>, written by IPA Mark Preferred); "
                                       "its preferred samples train. Press R to refresh the list after curating."),
                io.Combo.Input("base_model", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="The Wan2.1-VACE file the candidates were sampled with (models/diffusion_models)."),
                io.String.Input("lora_name", default="ipa_hands",
                                tooltip="Saved as models/loras/ipa/<name>.safetensors, always the newest training of this name "
                                        "(the one it replaces is kept as <name>_00001, _00002, ...)."),
                io.Combo.Input("objective", options=OBJECTIVES, default="ipa",
                               tooltip="ipa: Flow-IPA on preferred samples only (the paper). dpo: Flow-DPO, needs rejected samples. "
                                       "sft: plain flow matching on the preferred samples."),
                io.Float.Input("beta", default=600.0, min=0.0, max=100000.0, step=1.0,
                               tooltip="Strength of the preference penalty (paper: 600). Higher keeps the LoRA closer to the base model."),
                io.Float.Input("hand_weight", default=10.0, min=1.0, max=1000.0, step=0.5,
                               tooltip="How much more the hand region of the latent counts in the error (HALO; paper: 10). 1 = no hand emphasis."),
                io.Int.Input("rank", default=128, min=1, max=1024, tooltip="LoRA rank (paper: 128)."),
                io.Float.Input("alpha", default=128.0, min=0.01, max=4096.0, step=1.0,
                               tooltip="LoRA alpha; the LoRA is scaled by alpha / rank (alpha = rank: scale 1)."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-6, round=False,
                               tooltip="AdamW learning rate on the LoRA weights (paper: 1e-4)."),
                io.Int.Input("steps", default=1000, min=1, max=1000000, tooltip="Optimizer steps to train (paper: 1,000)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Samples per GPU per micro-batch."),
                io.Int.Input("grad_accum", default=1, min=1, max=1024,
                             tooltip="Micro-batches per optimizer step; the effective batch is batch_size x grad_accum x GPUs."),
                io.String.Input("gpus", default="auto",
                                tooltip="auto: every GPU ComfyUI sees, the CPU when there is none. Or a count ('2'), device ids "
                                        "('0,2' or '[1]'), 'all', or 'cpu'. Several GPUs train with torchrun."),
                io.Combo.Input("precision", options=PRECISIONS, default="auto",
                               tooltip="auto: bf16 on GPU, fp32 on CPU. bf16 or fp32 to force one."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute block activations in the backward pass: less memory, slower steps."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Seed of the LoRA initialisation, data order, noise and timesteps (same seed, same run)."),
                io.Int.Input("checkpoint_every", default=100, min=0, max=1000000,
                             tooltip="Write a resumable checkpoint every N steps (0: only at the end and when cancelled)."),
                io.String.Input("resume", default="", optional=True,
                                tooltip="Empty: new run. 'latest': newest checkpoint of this LoRA name. Or a checkpoint folder."),
                io.Combo.Input("distributed", options=DISTRIBUTED, default="ddp", optional=True,
                               tooltip="ddp: every GPU holds the whole model (1.3B). fsdp2: the base weights are sharded "
                                       "across GPUs, for 14B on GPUs that cannot hold it whole."),
                io.Combo.Input("init_lora", options=[NONE] + folder_paths.get_filename_list("loras"), default=NONE, optional=True,
                               tooltip="The LoRA the candidates were sampled with (IPA LoRA Loader or LoraLoaderModelOnly): it "
                                       "becomes part of the frozen reference, and the new LoRA trains on top. Several LoRAs: "
                                       "run.json's init_lora list."),
                io.Float.Input("init_lora_strength", default=1.0, min=-100.0, max=100.0, step=0.01, optional=True,
                               tooltip="The strength init_lora had when sampling. The trainer refuses a strength or LoRA that "
                                       "differs from what the samples record."),
                io.String.Input("targets", default="self_attn_qkv", optional=True,
                                tooltip="Layers the new LoRA trains, comma-separated: self_attn_qkv (paper), self_attn_out, "
                                        "cross_attn, ffn, plus vace_blocks to put them on the VACE blocks too."),
                io.Combo.Input("vace_module", options=[NONE] + folder_paths.get_filename_list("diffusion_models"), default=NONE,
                               optional=True,
                               tooltip="With a Wan2.1 text-to-video base_model: kijai's VACE module of the same size "
                                       "(as IPA Load Wan + VACE Module loads it for sampling)."),
                io.Boolean.Input("allow_other_base", default=False, optional=True,
                                 tooltip="Train even when the samples were made by another base model, LoRA or patch than "
                                         "this run's reference (a warning instead of a refusal). The alignment then targets "
                                         "another model than the one that made the samples."),
                io.Combo.Input("base_precision", options=BASE_PRECISIONS, default="bf16", optional=True,
                               tooltip="bf16: the frozen base as the model file stores it (fp8 files stay fp8). fp8: store "
                                       "the block weights of a bf16/fp16 file in fp8 (half the memory; the reference then "
                                       "differs from the sampling model by the quantisation, about 2 %)."),
                io.Int.Input("blocks_to_swap", default=0, min=0, max=48, optional=True,
                             tooltip="Keep this many blocks (VACE blocks count) in CPU memory and copy each to the GPU just "
                                     "before it runs. Needs gradient checkpointing and CPU memory for the swapped weights."),
                io.Boolean.Input("activation_offload", default=False, optional=True,
                                 tooltip="Keep the checkpointed block inputs in CPU memory between the forward and the "
                                         "backward pass. Needs gradient checkpointing."),
                io.String.Input("vram_budget_gb", default="auto", optional=True,
                                tooltip="auto: the chosen GPU's free memory after ComfyUI unloads its models; the planner "
                                        "then adds the cheapest memory savings that fit, or refuses before loading and says "
                                        "what would fit. A number of GiB, or 'none' to use the settings as given."),
            ],
            outputs=[
                io.String.Output(display_name="lora_name", tooltip="The saved LoRA as IPA LoRA Loader names it (ipa/<name>.safetensors)."),
                io.Image.Output(display_name="loss_curve", tooltip="Loss and ipa_gap over the run, each on its own axis."),
                io.String.Output(display_name="metrics", tooltip="Final metrics, where the LoRA and the run folder are, and any warnings."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, dataset, lora_name, gpus):
        """At queue time, before anything runs: the dataset exists and has preferred samples, the name and GPUs are
        usable. (Taking ``dataset`` here also lets a dataset made after the page loaded pass the combo check.)"""
        try:
            check_dataset(dataset)
            check_lora_name(lora_name)
            launcher.parse_gpus(gpus, available=_visible_gpus()[0])
        except (ValueError, launcher.LaunchError) as exc:
            return str(exc)
        return True

    @classmethod
    def build_config(cls, dataset_dir: Path, base_model_path: str, run_dir: Path, **settings) -> dict:
        return {
            "dataset": str(dataset_dir),
            "base_model": base_model_path,
            "output_dir": str(run_dir),
            "lora_name": settings["lora_name"],
            "objective": settings["objective"],
            "beta": settings["beta"],
            "hand_weight": settings["hand_weight"],
            "rank": settings["rank"],
            "alpha": settings["alpha"],
            "learning_rate": settings["learning_rate"],
            "steps": settings["steps"],
            "batch_size": settings["batch_size"],
            "grad_accum": settings["grad_accum"],
            "precision": settings["precision"],
            "gradient_checkpointing": settings["gradient_checkpointing"],
            "seed": settings["seed"],
            "checkpoint_every": settings["checkpoint_every"],
            "distributed": settings.get("distributed", "ddp"),
            **reference_settings(settings),
            "base_precision": settings.get("base_precision", "bf16"),
            "blocks_to_swap": settings.get("blocks_to_swap", 0),
            "activation_offload": settings.get("activation_offload", False),
            "vram_budget_gb": settings.get("vram_budget_gb"),
        }

    @classmethod
    def execute(cls, dataset, base_model, lora_name, objective, beta, hand_weight, rank, alpha, learning_rate, steps, batch_size,
                grad_accum, gpus, precision, gradient_checkpointing, seed, checkpoint_every, resume="",
                distributed="ddp", init_lora=NONE, init_lora_strength=1.0, targets="self_attn_qkv", vace_module=NONE,
                allow_other_base=False, base_precision="bf16", blocks_to_swap=0, activation_offload=False,
                vram_budget_gb="auto") -> io.NodeOutput:
        import comfy.utils
        import folder_paths

        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        dataset_dir, counts = check_dataset(dataset)
        if objective == "dpo" and counts["rejected"] == 0:
            raise ValueError(f"objective 'dpo' needs rejected samples too; dataset {dataset} has none. Use 'ipa' (preferred only)")
        check_lora_name(lora_name)
        base_model_path = folder_paths.get_full_path_or_raise("diffusion_models", base_model)
        # Device ids are the ones ComfyUI sees. When ComfyUI runs restricted (--cuda-device N sets CUDA_VISIBLE_DEVICES),
        # id i is the host's i-th visible device: the trainer must get that device, not physical GPU i.
        visible, host_devices = _visible_gpus()
        try:
            gpu_ids = launcher.parse_gpus(gpus, available=visible)
            processes = max(1, len(gpu_ids))  # one GPU or the CPU: a plain process, never torchrun
            launcher.check_launch(processes, gpu_ids)  # several GPUs on Windows: refused before anything loads
        except launcher.LaunchError as exc:
            raise ValueError(str(exc)) from None
        devices = [host_devices[i] for i in gpu_ids] if host_devices is not None else gpu_ids
        checkpoint = _resolve_resume(resume, lora_name)
        resolve_vram_budget(vram_budget_gb, [])  # a bad value fails here; 'auto' is measured once ComfyUI's models are unloaded
        run_dir = checkpoint.parents[1] if checkpoint is not None else _new_run_dir(lora_name)
        config = cls.build_config(dataset_dir, base_model_path, run_dir, lora_name=lora_name, objective=objective, beta=beta,
                                  hand_weight=hand_weight, rank=rank, alpha=alpha, learning_rate=learning_rate, steps=steps,
                                  batch_size=batch_size, grad_accum=grad_accum, precision=precision,
                                  gradient_checkpointing=gradient_checkpointing, seed=seed, checkpoint_every=checkpoint_every,
                                  distributed=distributed, init_lora=init_lora, init_lora_strength=init_lora_strength,
                                  targets=targets, vace_module=vace_module, allow_other_base=allow_other_base,
                                  base_precision=base_precision, blocks_to_swap=blocks_to_swap,
                                  activation_offload=activation_offload, vram_budget_gb=None)
        try:
            stop_file = RunConfig.from_dict(config, source="IPA Train LoRA settings").stop_path  # bad values fail here, not in the job
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        _free_host_memory()
        config["vram_budget_gb"] = resolve_vram_budget(vram_budget_gb, gpu_ids)  # the GPU's free memory now
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = atomic_write_json(run_dir / "run.json", config)
        extra = ["--resume", str(checkpoint)] if checkpoint is not None else []
        command = launcher.build_command(config_path, processes, module=cls.trainer_module, extra_args=extra)
        env = launcher.build_env(gpus=devices, pythonpath=cls.extra_pythonpath, processes=processes)

        log.info("IPA Train LoRA: %s (run folder %s, GPUs %s)", " ".join(command), run_dir, gpu_ids or "cpu")
        job = launcher.TrainingJob(command, env, cwd=launcher.PACKAGE_PARENT, log_path=run_dir / "train.log", stop_file=stop_file)
        pbar = comfy.utils.ProgressBar(steps)
        cancelled = False
        try:
            while job.running() or not job.events.empty():
                for event in job.poll(cls.poll_s):
                    if event["event"] == "step":
                        plot = training_curves(job.history, title=f"{objective.upper()} {lora_name}")
                        try:
                            pbar.update_absolute(int(event.get("step", 0)), int(event.get("total", steps)), ("PNG", plot, plot.width))
                        except comfy.model_management.InterruptProcessingException:
                            cancelled = True
                        _send("ipa.train.step", {k: v for k, v in event.items() if isinstance(v, (int, float, str))})
                    elif event["event"] == "started":
                        for warning in event.get("warnings") or []:
                            log.warning("IPA Train LoRA: %s", warning)
                        if memory_report(event):
                            log.info("IPA Train LoRA: %s", memory_report(event))
                    elif event["event"] == "checkpoint":
                        log.info("IPA Train LoRA: checkpoint at step %s: %s", event.get("step"), event.get("path"))
                if cancelled or comfy.model_management.processing_interrupted():
                    cancelled = True
                    log.info("IPA Train LoRA: cancel requested; stop file %s written, stopping after the current step "
                             "(signals only after %.0f s)", stop_file, cls.stop_grace_s)
                    job.stop(cls.stop_grace_s)
                    break
        except BaseException:
            job.stop(cls.stop_grace_s)  # never leave the trainer running when the node dies
            raise
        outcome = job.finish()
        if cancelled:
            comfy.model_management.interrupt_current_processing(False)
        loss_image = training_curves(outcome.events, title=f"{objective.upper()} {lora_name}")

        if outcome.status == "stopped":
            final = outcome.final
            message = (
                f"IPA training stopped at step {final.get('step')} (cancelled). Checkpoint: {final.get('checkpoint')}. "
                f"To resume, queue this node again with resume='latest' (or resume='{final.get('checkpoint')}')."
            )
            checkpoint_path = Path(str(final.get("checkpoint")))
            short = (f"IPA training stopped at step {final.get('step')} (cancelled); checkpoint written: "
                     f"{checkpoint_path.parent.parent.name}/{checkpoint_path.name}. To continue, queue again with resume='latest'.")
            cls._report_stop(message, short, node_id, step=final.get("step"), checkpoint=str(checkpoint_path))
            raise TrainingStopped(message)
        if outcome.status != "finished":
            if cancelled:
                message = f"IPA training was cancelled and did not write a checkpoint in time:\n{outcome.error_text()}"
                cls._report_stop(message, message.splitlines()[0], node_id, step=None, checkpoint=None)
                raise TrainingStopped(message)
            # The cause first (the root of an import failure, the rank that died and how), then where the full log is.
            raise RuntimeError(f"IPA training failed: {outcome.headline()}\nFull log: {run_dir / 'train.log'} "
                               f"(exit status {outcome.returncode})\n\n{outcome.error_text()}")

        trained = Path(outcome.final["lora_path"])
        if not trained.is_file():
            raise RuntimeError(f"the trainer reported {trained} but the file does not exist")
        # The newest training of a name is always loras/ipa/<name>.safetensors, so a workflow that loads it by name
        # (the animate template) gets what was just trained; the file it replaces is kept as <name>_NNNNN.
        target = lora_folder() / f"{trained.stem}.safetensors"
        kept = install_keeping_previous(trained, target)
        name = f"{LORA_SUBFOLDER}/{target.name}"
        metrics = launcher.format_metrics(outcome) + f"\nsaved as: loras/{name}"
        if kept is not None:
            metrics += f" (the previous {target.name} is kept as loras/{LORA_SUBFOLDER}/{kept.name})"
        metrics += f"\nrun folder: {run_dir}"
        started = next((event for event in outcome.events if event.get("event") == "started"), None)
        if memory_report(started):
            metrics += "\n" + memory_report(started)
        warnings = [w for event in outcome.events if event.get("event") == "started" for w in event.get("warnings") or []]
        if warnings:
            metrics += "\n" + "\n".join(f"WARNING: {warning}" for warning in warnings)
        final_metrics = (outcome.final or {}).get("metrics") or {}
        summary = [f"saved as: loras/{name}" + (f" (previous kept as {kept.name})" if kept is not None else "")]
        if isinstance(final_metrics.get("loss"), (int, float)):
            summary.append(f"loss {final_metrics['loss']:.4g}, ipa_gap {final_metrics.get('ipa_gap', float('nan')):.3g} "
                           f"after {outcome.final.get('step')} steps")
        summary += [f"WARNING: {warning}" for warning in warnings]
        _show_on_node("\n".join(summary), node_id)
        return io.NodeOutput(name, _to_image(loss_image), metrics, ui=ui.PreviewText(metrics))

    @staticmethod
    def _report_stop(message: str, short: str, node_id, step, checkpoint) -> None:
        """The full message to the log, a short one under the node and in the frontend's toast."""
        log.info("IPA Train LoRA: %s", message)
        _show_on_node(short, node_id)
        _send("ipa.train.stopped", {"step": step, "checkpoint": checkpoint, "message": short})


NODES = [IPATrainLoRA]
