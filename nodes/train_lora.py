"""IPA Train LoRA: runs ``ipa_train.train`` in its own process (group) and shows its progress in the graph.

ComfyUI's models are unloaded first, so the trainer gets the GPUs. Launch, environment, event parsing, graceful
stop and the loss plot live in ``ipa_train.jobs.launcher`` and ``ipa_train.jobs.curves``; this node maps them onto ComfyUI's progress bar (whose
preview image is the live loss plot), its cancel button and its error display.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import numpy as np
import torch
from comfy_api.v0_0_2 import io, ui

from ..ipa_train.choices import BasePrecision, Distributed, Expert, Objective
from ..ipa_train.data.layout import DatasetError, dataset_path, list_datasets
from ..ipa_train.data.manifest import read_manifest
from ..ipa_train.data.marks import count_statuses
from ..ipa_train.data.two_experts import read_switch
from ..ipa_train.fileio import InvalidNameError, atomic_write_json, install_keeping_previous, validate_name
from ..ipa_train.jobs import launcher
from ..ipa_train.jobs.checkpoint_files import check_checkpoint_paths, checkpoint_problem, experts_in, pick_checkpoint, step_of
from ..ipa_train.jobs.config import ConfigError, RunConfig
from ..ipa_train.jobs.contract import CHECKPOINT, STARTED, STEP
from ..ipa_train.jobs.curves import training_curves
from . import train_inputs
from .host import prompt_server
from .lora_cache import release_cached_lora
from .paths import dataset_root, model_file
from .train_inputs import NONE

log = logging.getLogger(__name__)

LORA_SUBFOLDER = "ipa"


def reference_settings(settings: dict) -> dict:
    """run.json keys for the reference (init_lora with its strength, vace_module, allow_other_base, the low-noise expert's
    file) and the LoRA targets, only those set; model names resolved to paths in ComfyUI's model folders."""
    out: dict = {}
    if settings.get("init_lora", NONE) not in (None, "", NONE):
        out["init_lora"] = [{"path": model_file("loras", settings["init_lora"], "init_lora"),
                             "strength": float(settings.get("init_lora_strength", 1.0))}]
    if settings.get("vace_module", NONE) not in (None, "", NONE):
        out["vace_module"] = model_file("diffusion_models", settings["vace_module"], "vace_module")
    targets = [name.strip() for name in str(settings.get("targets") or "").replace(";", ",").split(",") if name.strip()]
    if targets and targets != ["self_attn_qkv"]:
        out["targets"] = targets
    if settings.get("allow_other_base"):
        out["allow_other_base"] = True
    if settings.get("low_noise_model", NONE) not in (None, "", NONE):
        out["low_noise_model"] = model_file("diffusion_models", settings["low_noise_model"], "low_noise_model")
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


def _in_runs_folder(path: Path, root: Path) -> bool:
    """Whether the resolved ``path`` is ``<root>/<run>/checkpoints/step-N`` (``root`` resolved too)."""
    return (path.parent.name == "checkpoints" and len(path.parents) >= 3 and path.parents[2] == root
            and path.name.startswith("step-"))


def _latest_checkpoint(root: Path, lora_name: str) -> Path:
    """The newest complete checkpoint of a run named ``lora_name``; run folders and checkpoint folders that are links
    leading out of the runs folder are passed over."""
    # Run folders are "<lora_name>-YYYYmmdd-HHMMSS[-N]": match the whole pattern, so "hands" never picks "hands-v2-...".
    own = re.compile(re.escape(lora_name) + r"-\d{8}-\d{6}(?:-\d+)?")
    runs = sorted((p for p in root.glob(f"{glob.escape(lora_name)}-*") if p.is_dir() and not p.is_symlink() and own.fullmatch(p.name)),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for run in runs:
        checkpoint = pick_checkpoint(run)
        if checkpoint is not None and _in_runs_folder(checkpoint.resolve(), root):
            return checkpoint.resolve()
    raise ValueError(f"resume='latest': no checkpoint of a run named {lora_name!r} under {root}; clear resume to start fresh")


def _resolve_resume(resume: str, lora_name: str) -> Path | None:
    resume = (resume or "").strip()
    if not resume:
        return None
    root = runs_root().resolve()
    if resume == "latest":
        return _latest_checkpoint(root, lora_name)
    path = Path(resume)
    path = (path if path.is_absolute() else root / path).resolve()
    if path.parent == root and path.is_dir():  # a run folder: its newest complete checkpoint
        path = (pick_checkpoint(path) or path).resolve()
    if not path.is_relative_to(root):  # '..', another folder, or a link leading out of the runs folder
        raise ValueError(f"resume={resume!r} resolves to {path}, outside the runs folder {root} ('..', another folder or a "
                         "link leading out of it); use 'latest' or a checkpoint path the node reported")
    # Only <runs>/<run>/checkpoints/step-N: the run folder (where run.json and the new checkpoints go) is taken
    # from it, so anything shallower or elsewhere would put the run outside the runs folder.
    if not _in_runs_folder(path, root) or not (path / "state.json").is_file():
        raise ValueError(f"resume={resume!r} is not a checkpoint folder (<run>/checkpoints/step-N) under {root}; "
                         "use 'latest' or a path the node reported")
    problem = checkpoint_problem(path)
    if problem:
        raise ValueError(f"resume={resume!r}: the checkpoint is incomplete ({problem}); use 'latest' (the newest complete one)")
    return path


def check_resume(resume: str, lora_name: str, steps: int) -> Path | None:
    """The checkpoint to resume, or None; a ValueError when the run it belongs to is already complete (its checkpoint
    is at ``steps``): that is ``resume='latest'`` left in the widget after a resumed run finished, and the trainer
    would start only to say "already at step N of N". Refused at queue time; training a new LoRA needs resume cleared."""
    checkpoint = _resolve_resume(resume, lora_name)
    done = step_of(checkpoint) if checkpoint is not None else None
    experts = experts_in(checkpoint) if checkpoint is not None else 1  # expert 'both': steps per expert, one after the other
    if done is not None and done >= int(steps) * experts:
        of = f"steps={steps}" if experts == 1 else f"{int(steps) * experts} (steps={steps} for each of {experts} experts)"
        raise ValueError(f"resume={resume!r}: this run is complete ({checkpoint.parents[1].name} is at step {done} of {of}); "
                         "clear resume to train a new LoRA, or raise steps to train this one further")
    return checkpoint


def check_run_paths(run_dir: Path | None, lora_name: str, steps: int, processes: int = 1) -> None:
    """On Windows without long paths: refuses a run whose checkpoint files would pass MAX_PATH (a ValueError naming
    the limit and what to do). ``run_dir`` None: a new run's folder, with the longest name ``_new_run_dir`` gives."""
    if run_dir is None:
        run_dir = runs_root() / f"{lora_name}-{'0' * 8}-{'0' * 6}-99"
    check_checkpoint_paths(run_dir, lora_name, steps, ranks=processes)


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


def models_kept_on_gpu() -> str:
    """Why the GPU may not be free after unloading: ComfyUI started with ``--highvram`` or ``--gpu-only`` (its
    ``vram_state`` is HIGH_VRAM) keeps its models on the GPU when asked to unload them, and the planner would then
    say "no memory setting fits" for a GPU the trainer could otherwise use. "" when ComfyUI unloads normally."""
    state = getattr(comfy.model_management, "vram_state", None)
    if state is None or getattr(state, "name", "") != "HIGH_VRAM":
        return ""
    try:
        from comfy.cli_args import args

        flags = [flag for flag, on in (("--highvram", args.highvram), ("--gpu-only", args.gpu_only)) if on]
    except (ImportError, AttributeError):
        flags = []
    kept = 0.0
    for loaded in list(getattr(comfy.model_management, "current_loaded_models", [])):
        try:
            kept += loaded.model_loaded_memory() / 2**30
        except Exception:  # a model type without a size: the flag is what matters
            pass
    named = " / ".join(flags) or "high-VRAM mode"
    return (f"ComfyUI runs with {named}: it keeps its models on the GPU when asked to unload them ({kept:.1f} GiB still loaded), "
            f"so the trainer gets only what is left beside them. To train, restart ComfyUI without {named} (the "
            "trainer's plan then has the whole GPU), or set vram_budget_gb to what the GPU has free beside ComfyUI's models")


def comfyui_host_memory() -> dict:
    """What the ComfyUI process holds in RAM (its unloaded models stay there) and has pinned, in GiB, measured at
    launch for the trainer's host-memory check (run.json ``comfyui_ram_gb`` / ``comfyui_pinned_gb``)."""
    try:
        import psutil

        ram = psutil.Process().memory_info().rss / 2**30
    except (ImportError, OSError):
        ram = None
    pinned = getattr(comfy.model_management, "TOTAL_PINNED_MEMORY", 0) or 0
    return {"comfyui_ram_gb": None if ram is None else round(ram, 3), "comfyui_pinned_gb": round(max(0, pinned) / 2**30, 3)}


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


def check_experts(dataset_dir: Path, expert: str, low_noise_model: str) -> None:
    """Two-expert samples (Wan2.2-VACE-Fun A14B) need the low-noise model for expert low and both: refused before
    ComfyUI's models are unloaded, as are samples that disagree on the switch."""
    try:
        switch = read_switch(dataset_dir)
    except DatasetError as exc:
        raise ValueError(str(exc)) from None
    if switch is not None and expert != Expert.HIGH and low_noise_model in (None, "", NONE):
        raise ValueError(f"dataset {dataset_dir.name} was sampled by two models (Wan2.2-VACE-Fun A14B, the low-noise one from step "
                         f"{switch.step}): expert '{expert}' needs low_noise_model, the low-noise model file the IPA VACE Sampler "
                         "used (base_model is the high-noise one); or set expert to high")


def check_lora_name(lora_name: str) -> None:
    """The same rule as dataset names (``fileio.validate_name``), checked before anything is written."""
    try:
        validate_name(lora_name, "lora_name")
    except InvalidNameError as exc:
        raise ValueError(str(exc)) from None


def _to_image(pil_image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pil_image.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)


@dataclass
class _Launch:
    """A checked run, ready to start: its folder, the checkpoint it resumes, its devices and its run.json."""

    run_dir: Path
    checkpoint: Path | None
    gpu_ids: list[int]
    devices: list
    processes: int
    config: dict
    stop_file: Path
    notes: list  # what the user should know about this launch (gpus='auto' on Windows, models kept on the GPU)


# What build_config writes for an optional widget left out of the call (vram_budget_gb: resolved after unloading).
BUILD_DEFAULTS = {"distributed": Distributed.DDP.value, "base_precision": BasePrecision.BF16.value, "blocks_to_swap": 0,
                  "activation_offload": False, "vram_budget_gb": None, "expert": Expert.LOW.value}


class IPATrainLoRA(io.ComfyNode):
    # The trainer module and extra import paths: tests point these at a stand-in that follows the same contract.
    trainer_module = "ipa_train.train"
    extra_pythonpath: list[str] = []
    stop_grace_s = 900.0
    poll_s = 0.5

    @classmethod
    def define_schema(cls):
        import folder_paths

        diffusion_models = folder_paths.get_filename_list("diffusion_models")
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
                *train_inputs.dataset_inputs(dataset_choices(), diffusion_models),
                *train_inputs.objective_inputs(),
                *train_inputs.run_inputs(),
                *train_inputs.reference_inputs(folder_paths.get_filename_list("loras"), diffusion_models),
                *train_inputs.memory_inputs(),
                *train_inputs.expert_inputs(diffusion_models),
            ],
            outputs=train_inputs.outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, dataset, lora_name, gpus, steps=1000, resume=""):
        """At queue time, before anything runs: the dataset exists and has preferred samples, the name and GPUs are
        usable, a resumed run is not already complete. (Taking ``dataset`` here also lets a dataset made after the page
        loaded pass the combo check.) ComfyUI files the one message under each of these inputs; the frontend extension
        (web/ipa_nodes.js) shows it once."""
        try:
            check_dataset(dataset)
            check_lora_name(lora_name)
            processes = max(1, len(launcher.parse_gpus(gpus, available=_visible_gpus()[0]) or []))
            checkpoint = check_resume(resume, lora_name, steps)
            check_run_paths(checkpoint.parents[1] if checkpoint is not None else None, lora_name, steps, processes)
        except (ValueError, launcher.LaunchError) as exc:
            return str(exc)
        return True

    @classmethod
    def build_config(cls, dataset_dir: Path, base_model_path: str, run_dir: Path, **settings) -> dict:
        """The run.json the node writes: the widgets' run.json keys as they are, the reference keys only when set."""
        def value(key):
            return settings.get(key, BUILD_DEFAULTS[key]) if key in BUILD_DEFAULTS else settings[key]

        return {
            "dataset": str(dataset_dir),
            "base_model": base_model_path,
            "output_dir": str(run_dir),
            **{key: value(key) for key in train_inputs.TRAINING_KEYS},
            **reference_settings(settings),
            **{key: value(key) for key in train_inputs.MEMORY_KEYS},
            **{key: value(key) for key in train_inputs.EXPERT_KEYS},
        }

    @classmethod
    def execute(cls, dataset, base_model, lora_name, gpus, resume="", vram_budget_gb="auto", **settings) -> io.NodeOutput:
        """Checks everything, starts the trainer, follows it on the progress bar, then installs the LoRA (or says
        where the checkpoint is after a cancel). ``settings``: the other inputs (optional ones may be left out)."""
        settings = {**{k: v for k, v in train_inputs.OPTIONAL_DEFAULTS.items() if k not in ("resume", "vram_budget_gb")},
                    **settings, "lora_name": lora_name}
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        launch = cls._prepare(dataset, base_model, gpus, resume, vram_budget_gb, settings)
        job = cls._start(launch, vram_budget_gb)
        for note in launch.notes:
            log.warning("IPA Train LoRA: %s", note)
            _show_on_node(note, node_id)
        title = f"{settings['objective'].upper()} {lora_name}"
        cancelled = cls._follow(job, settings["steps"], title, launch.stop_file)
        outcome = job.finish()
        if cancelled:
            comfy.model_management.interrupt_current_processing(False)
        loss_image = training_curves(outcome.events, title=title)
        cls._raise_unless_finished(outcome, cancelled, launch.run_dir, node_id, launch.notes)
        return cls._install(outcome, launch.run_dir, loss_image, node_id)

    @staticmethod
    def _devices(gpus: str) -> tuple[list[int], list, int, str]:
        """(device ids as ComfyUI sees them, the ids the trainer gets, process count, a note on what 'auto' chose)."""
        # Device ids are the ones ComfyUI sees. When ComfyUI runs restricted (--cuda-device N sets CUDA_VISIBLE_DEVICES),
        # id i is the host's i-th visible device: the trainer must get that device, not physical GPU i.
        visible, host_devices = _visible_gpus()
        try:
            gpu_ids, note = launcher.resolve_gpus(gpus, available=visible)
            processes = max(1, len(gpu_ids))  # one GPU or the CPU: a plain process, never torchrun
            launcher.check_launch(processes, gpu_ids)  # several GPUs on Windows: refused before anything loads
        except launcher.LaunchError as exc:
            raise ValueError(str(exc)) from None
        devices = [host_devices[i] for i in gpu_ids] if host_devices is not None else gpu_ids
        return gpu_ids, devices, processes, note

    @classmethod
    def _prepare(cls, dataset, base_model, gpus, resume, vram_budget_gb, settings: dict) -> _Launch:
        """Every check that can fail before ComfyUI's models are unloaded or a run folder exists."""
        dataset_dir, counts = check_dataset(dataset)
        if settings["objective"] == Objective.DPO and counts["rejected"] == 0:
            raise ValueError(f"objective 'dpo' needs rejected samples too; dataset {dataset} has none. Use 'ipa' (preferred only)")
        check_experts(dataset_dir, settings["expert"], settings["low_noise_model"])
        check_lora_name(settings["lora_name"])
        base_model_path = model_file("diffusion_models", base_model, "base_model")
        gpu_ids, devices, processes, note = cls._devices(gpus)
        checkpoint = check_resume(resume, settings["lora_name"], settings["steps"])
        resolve_vram_budget(vram_budget_gb, [])  # a bad value fails here; 'auto' is measured once ComfyUI's models are unloaded
        run_dir = checkpoint.parents[1] if checkpoint is not None else _new_run_dir(settings["lora_name"])
        check_run_paths(run_dir, settings["lora_name"], settings["steps"], processes)
        config = cls.build_config(dataset_dir, base_model_path, run_dir, **{**settings, "vram_budget_gb": None})
        try:
            stop_file = RunConfig.from_dict(config, source="IPA Train LoRA settings").stop_path  # bad values fail here, not in the job
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return _Launch(run_dir, checkpoint, gpu_ids, devices, processes, config, stop_file, [note] if note else [])

    @classmethod
    def _start(cls, launch: _Launch, vram_budget_gb) -> launcher.TrainingJob:
        """Unloads ComfyUI's models, writes run.json (with the budget measured now) and starts the trainer."""
        _free_host_memory()
        launch.config["vram_budget_gb"] = resolve_vram_budget(vram_budget_gb, launch.gpu_ids)  # the GPU's free memory now
        launch.config.update(comfyui_host_memory())  # what ComfyUI still holds: the trainer's host check counts it
        kept = models_kept_on_gpu() if launch.gpu_ids else ""
        if kept:
            launch.notes.append(kept)
        launch.run_dir.mkdir(parents=True, exist_ok=True)
        config_path = atomic_write_json(launch.run_dir / "run.json", launch.config)
        extra = ["--resume", str(launch.checkpoint)] if launch.checkpoint is not None else []
        command = launcher.build_command(config_path, launch.processes, module=cls.trainer_module, extra_args=extra)
        env = launcher.build_env(gpus=launch.devices, pythonpath=cls.extra_pythonpath, processes=launch.processes)
        log.info("IPA Train LoRA: %s (run folder %s, GPUs %s)", " ".join(command), launch.run_dir, launch.gpu_ids or "cpu")
        return launcher.TrainingJob(command, env, cwd=launcher.PACKAGE_PARENT, log_path=launch.run_dir / "train.log",
                                    stop_file=launch.stop_file)

    @classmethod
    def _follow(cls, job: launcher.TrainingJob, steps: int, title: str, stop_file: Path) -> bool:
        """The job's events on the progress bar (its preview: the live loss plot) until it ends; True if cancelled."""
        import comfy.utils

        pbar = comfy.utils.ProgressBar(steps)
        cancelled = False
        try:
            while job.running() or not job.events.empty():
                for event in job.poll(cls.poll_s):
                    cancelled = _show_event(event, job, pbar, steps, title) or cancelled
                if cancelled or comfy.model_management.processing_interrupted():
                    cancelled = True
                    log.info("IPA Train LoRA: cancel requested; stop file %s written, stopping after the current step "
                             "(signals only after %.0f s)", stop_file, cls.stop_grace_s)
                    job.stop(cls.stop_grace_s)
                    break
        except BaseException:
            job.stop(cls.stop_grace_s)  # never leave the trainer running when the node dies
            raise
        return cancelled

    @classmethod
    def _raise_unless_finished(cls, outcome, cancelled: bool, run_dir: Path, node_id, notes=()) -> None:
        """A stop (with its checkpoint and how to resume), a cancel without checkpoint or a failure, as an error (with
        the launch's notes: a planner refusal under --highvram is explained by them)."""
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
            # The cause once (the root of an import failure, the rank that died and how), then where the rest is: the
            # traceback and the run config go to the log, not into the dialog (it repeated the cause three times).
            log.error("IPA Train LoRA: training failed (exit status %s; full log %s):\n%s", outcome.returncode,
                      run_dir / "train.log", outcome.error_text())
            noted = "".join(f"\nNote: {note}" for note in notes)
            raise RuntimeError(f"IPA training failed: {outcome.headline()}{noted}\nFull log: {run_dir / 'train.log'} "
                               f"(exit status {outcome.returncode}): the trainer's traceback and the run config are there."
                               + "".join(f"\n{line}" for line in outcome.advice()))

    @classmethod
    def _install(cls, outcome, run_dir: Path, loss_image, node_id) -> io.NodeOutput:
        """Installs the trained LoRA(s) under loras/ipa and reports them: the metrics output, and a summary under the node.
        Two experts (``both``): both files, ``<name>_low`` and ``<name>_high``; the output names the low-noise one."""
        reported = outcome.final.get("lora_paths") or {"": outcome.final["lora_path"]}
        warnings = [w for event in outcome.events if event.get("event") == STARTED for w in event.get("warnings") or []]
        saved = []  # (name under loras, the LoRA it replaced, target)
        for trained in sorted((Path(p) for p in reported.values()), key=lambda p: not p.stem.endswith("_low")):
            if not trained.is_file():
                raise RuntimeError(f"the trainer reported {trained} but the file does not exist")
            # The newest training of a name is always loras/ipa/<name>.safetensors, so a workflow that loads it by name
            # (the animate template) gets what was just trained; the file it replaces is kept as <name>_NNNNN.
            target = lora_folder() / f"{trained.stem}.safetensors"
            release_cached_lora(target)  # ComfyUI's LoRA loaders keep it memory-mapped: Windows cannot replace it then
            installed = install_keeping_previous(trained, target)
            if installed.locked:
                warnings.append(locked_warning(target, installed.path))
            saved.append((f"{LORA_SUBFOLDER}/{installed.path.name}", installed.kept, target))
        name, kept, target = saved[0]
        others = [f"also saved as: loras/{other}" + (f" (previous kept as {k.name})" if k is not None else "") for other, k, _ in saved[1:]]
        metrics = "\n".join([_metrics_text(outcome, name, target, kept, run_dir, warnings), *others])
        summary = _summary_lines(outcome, name, kept, warnings)
        _show_on_node("\n".join(summary[:1] + others + summary[1:]), node_id)
        return io.NodeOutput(name, _to_image(loss_image), metrics, ui=ui.PreviewText(metrics))

    @staticmethod
    def _report_stop(message: str, short: str, node_id, step, checkpoint) -> None:
        """The full message to the log, a short one under the node and in the frontend's toast."""
        log.info("IPA Train LoRA: %s", message)
        _show_on_node(short, node_id)
        _send("ipa.train.stopped", {"step": step, "checkpoint": checkpoint, "message": short})


def _show_event(event: dict, job, pbar, steps: int, title: str) -> bool:
    """One trainer event: a step moves the progress bar (True when the bar says the user cancelled), started and
    checkpoint events go to the log."""
    if event["event"] == STEP:
        plot = training_curves(job.history, title=title)
        cancelled = False
        try:
            pbar.update_absolute(int(event.get("step", 0)), int(event.get("total", steps)), ("PNG", plot, plot.width))
        except comfy.model_management.InterruptProcessingException:
            cancelled = True
        _send("ipa.train.step", {k: v for k, v in event.items() if isinstance(v, (int, float, str))})
        return cancelled
    elif event["event"] == STARTED:
        for warning in event.get("warnings") or []:
            log.warning("IPA Train LoRA: %s", warning)
        if memory_report(event):
            log.info("IPA Train LoRA: %s", memory_report(event))
    elif event["event"] == CHECKPOINT:
        log.info("IPA Train LoRA: checkpoint at step %s: %s", event.get("step"), event.get("path"))
    return False


def locked_warning(target: Path, saved: Path) -> str:
    """What the node says when the previous LoRA could not be replaced (still open in another program or node)."""
    return (f"{target.name} is in use (a loaded LoRA stays memory-mapped on Windows, or another program holds it open), so "
            f"it could not be replaced: the new LoRA is saved as loras/{LORA_SUBFOLDER}/{saved.name}, and {target.name} is "
            f"still the previous one. Load {LORA_SUBFOLDER}/{saved.name}, or restart ComfyUI and rename it to {target.name}")


def _metrics_text(outcome, name: str, target: Path, kept: Path | None, run_dir: Path, warnings: list[str]) -> str:
    """The node's metrics output: the final metrics, where the LoRA and the run folder are, the memory, warnings."""
    metrics = launcher.format_metrics(outcome) + f"\nsaved as: loras/{name}"
    if kept is not None:
        metrics += f" (the previous {target.name} is kept as loras/{LORA_SUBFOLDER}/{kept.name})"
    metrics += f"\nrun folder: {run_dir}"
    started = next((event for event in outcome.events if event.get("event") == STARTED), None)
    if memory_report(started):
        metrics += "\n" + memory_report(started)
    if warnings:
        metrics += "\n" + "\n".join(f"WARNING: {warning}" for warning in warnings)
    return metrics


def _summary_lines(outcome, name: str, kept: Path | None, warnings: list[str]) -> list[str]:
    """The short report under the node: where the LoRA is, the final loss and gap, the warnings."""
    final_metrics = (outcome.final or {}).get("metrics") or {}
    summary = [f"saved as: loras/{name}" + (f" (previous kept as {kept.name})" if kept is not None else "")]
    if isinstance(final_metrics.get("loss"), (int, float)):
        summary.append(f"loss {final_metrics['loss']:.4g}, ipa_gap {final_metrics.get('ipa_gap', float('nan')):.3g} "
                       f"after {outcome.final.get('step')} steps")
    return summary + [f"WARNING: {warning}" for warning in warnings]


NODES = [IPATrainLoRA]
