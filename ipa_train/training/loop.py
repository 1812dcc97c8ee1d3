"""The run loop: builds a run from its config (data, model, adapters, distributed wrapping, optimizer), then
trains step by step, emitting events, writing checkpoints, honouring a stop request, and saving the LoRA. Two-expert
samples (``experts``) train one Trainer per expert, one after the other (``train_experts``).

The parts live beside it: ``distributed`` (torchrun set-up, events), ``batching`` (data, micro-batches, the
deterministic draw), ``objective`` (predictions and loss), ``checkpoints`` (files), ``model_setup`` (base and
adapters) and ``cli`` (``python -m ipa_train.train``)."""

from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..choices import Expert
from ..fileio import atomic_save_safetensors, read_json
from ..jobs.checkpoint_files import CHECKPOINTS_DIR, STATE_FILE, check_checkpoint_paths, recover_checkpoints
from ..jobs.config import ConfigError, RunConfig
from ..jobs.contract import CHECKPOINT, FINISHED, STARTED, STEP, STOPPED
from ..jobs.process_tree import LaunchRefused
from ..wan.model import storage_summary
from . import lora as lora_setup
from .batching import Sampler, TrainingData, load_training_data, seed_for
from .checkpoints import TrainingError, load_training_state, lora_metadata, optimizer_state_api, resume_checkpoint, write_checkpoint
from .distributed import Dist, Events, full_tensor, peak_memory_gb, reduce_metrics, setup_distributed
from .experts import Phase, checkpoint_phase, finished_lora, phase_config, phases, single_phase, user_config
from .memory_setup import MemoryModes, compute_dtype, plan_memory
from .model_setup import gathered_adapter, prepare_model, save_comfy_lora
from .objective import Objective
from .reference_check import check_recorded_patches

log = logging.getLogger("ipa_train.train")


def lr_factor(config: RunConfig, step: int) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_scheduler == "cosine":
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


@dataclass
class TrainResult:
    status: str  # "finished" | "stopped"
    step: int
    lora_path: Optional[str] = None
    checkpoint_path: Optional[str] = None
    history: list = field(default_factory=list)
    model: Any = None  # the bare transformer with its adapters (tests inspect it)
    lora_paths: dict = field(default_factory=dict)  # two experts: each trained expert's LoRA ({"low": ..., "high": ...})


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        dist_info: Dist,
        events: Events,
        resume: Optional[str] = None,
        stop_requested: Callable[[], bool] = lambda: False,
        dump_replicas: Optional[str] = None,
        model=None,
        phase: Optional[Phase] = None,
        data: Optional[TrainingData] = None,
    ):
        """``model``: an already built base transformer to train instead of loading ``config.base_model``
        (benchmarks, the demo); ``config.base_model`` then only names it in the metadata. ``phase``: the expert this
        trainer trains of two-expert samples (``experts``; ``train`` runs one Trainer per expert); ``data``: the
        samples when already loaded.

        Built in the order that fails cheapest first: the data (all validation before any model is built), the output
        folder and the resume checkpoint, the memory plan, the model and its adapters, the distributed wrapping, the
        optimizer."""
        if data is None:
            refuse_long_paths(config.output_dir, config.lora_name, config.steps, dist_info.world)
            data = load_training_data(config)
        self.run_config = config  # as the user gave it: run.json and the checkpoints keep it
        self.phase = phase if phase is not None else single_phase(config, data.switch)
        config = phase_config(config, self.phase)
        self.offset = self.phase.offset if self.phase else 0  # the steps of an expert trained before this one
        self.total = self.phase.total if self.phase else config.steps
        refuse_long_paths(config.output_dir, config.lora_name, self.total, dist_info.world)  # one expert's name: longer
        self.config = config
        self.finished_loras: dict[str, str] = {}  # two experts: the LoRAs of the experts trained before this one
        self.dist = dist_info
        self.events = events
        self.stop_requested = stop_requested
        self.stop_path = config.stop_path
        self.stop_reason: Optional[str] = None
        self.dump_replicas = Path(dump_replicas) if dump_replicas else None
        self.output_dir = Path(config.output_dir)
        self.last_checkpoint: Optional[Path] = None
        self._prepare_run(resume)
        self.data = data.for_expert(self.phase.expert) if self.phase else data
        self.sampler = Sampler(config, self.data, dist_info)
        # the samples' sampler against this run's reference: LoRAs and other patches now, the base weights once loaded
        self.reference_warnings = check_recorded_patches(self.data, config)
        self._plan_memory(model)
        model = self._build_model(model)
        self._wrap_distributed(model)
        self._build_optimizer(model)

    def _prepare_run(self, resume: Optional[str]) -> None:
        """The output folder put in order, the checkpoint to resume from, the autocast precision, and the settings
        refused before anything loads."""
        config, dist_info = self.config, self.dist
        if dist_info.main:  # before anything picks a checkpoint: finish or undo what a killed run left half done
            clean_output_dir(self.output_dir)
        dist_info.barrier()
        self.resume_dir = resume_checkpoint(resume) if resume else None
        if config.precision == "bf16" or (config.precision == "auto" and dist_info.device.type == "cuda"):
            self.autocast_dtype: Optional[torch.dtype] = torch.bfloat16
        else:
            self.autocast_dtype = None
        if self.dump_replicas and config.distributed != "ddp":
            raise ConfigError("--dump-replicas compares full replicas and needs distributed 'ddp'")
        if dist_info.main and self.stop_path.exists():
            log.warning("stop file %s already exists: the run will stop after its first step; delete it to train", self.stop_path)

    def _plan_memory(self, model) -> None:
        """The planner's prediction, with vram_budget_gb the settings that fit (they replace ``self.config``); modes
        that cannot be honoured are refused here, before any weight loads."""
        spec = None
        if model is not None:
            from ..memory.plan import describe_config

            spec = describe_config(dict(model.config), "model")
        self.config, self.memory_plan = plan_memory(self.config, self.data, self.dist, spec)
        self.stop_path = self.config.stop_path
        self.memory = MemoryModes(self.config, self.dist.device, compute_dtype(self.config, self.dist.device))

    def _build_model(self, model):
        """The base with its adapters: the reference identity checked against the samples, memory modes attached,
        the resumed adapter loaded. Returns the bare model (``self.bare``)."""
        prepared = prepare_model(self.config, self.data, self.dist, self.memory, self.autocast_dtype, model, self.resume_dir, self.offset)
        self.reference_warnings += prepared.warnings
        if self.dist.main:
            for warning in self.reference_warnings:
                log.warning("%s", warning)
        self.base_fingerprint = prepared.base_fingerprint
        self.start_step = prepared.start_step
        self.bare = prepared.model
        self.trained_names = [name for name, _ in lora_setup.trained_parameters(self.bare)]
        return self.bare

    def _wrap_distributed(self, model) -> None:
        """DDP (the trained LoRA synchronised, the frozen base left out); FSDP2 already sharded the model as it was
        prepared (``model_setup.shard_fsdp2``); the objective on top."""
        config, dist_info = self.config, self.dist
        self.ddp = None
        if dist_info.active and config.distributed == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # The frozen base is loaded identically on every rank: DDP neither broadcasts nor checks it (fp8 storage,
            # host-stored swapped weights); it synchronises the trained LoRA only.
            frozen = [n for n, p in model.named_parameters() if not p.requires_grad] + [n for n, _ in model.named_buffers()]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
            device = dist_info.device
            self.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward_module = self.ddp if self.ddp is not None else model
        self.objective = Objective(config, self.data, self.sampler, dist_info, model, self.forward_module, self.autocast_dtype, self.ddp)

    def _build_optimizer(self, model) -> None:
        """AdamW over the trained LoRA and its learning-rate schedule, with their state when resuming."""
        config, dist_info = self.config, self.dist
        self.params = [parameter for _, parameter in lora_setup.trained_parameters(model)]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           **adamw_options(dist_info.device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(config, step))
        if self.resume_dir is not None:
            load_training_state(self.resume_dir, self.bare, self.optimizer, self.scheduler, dist_info,
                                reseed=lambda: torch.manual_seed(seed_for(config.seed, "resume", self.start_step, dist_info.rank)))

    # ------------------------------------------------------------------------------------------- one step

    def train_step(self, step: int) -> dict[str, float]:
        c = self.config
        metrics = self.objective.accumulate(step)
        if c.max_grad_norm > 0:
            grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)))
        else:
            grad_norm = float(full_tensor(torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])))
        # before the update: a NaN never reaches the weights
        check_finite(step + 1, metrics["loss"], grad_norm, c, self.dist.rank, self.last_checkpoint)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics["lr"] = lr
        if c.max_grad_norm > 0:
            metrics["grad_norm"] = grad_norm
        return metrics

    def _stop_asked(self) -> bool:
        """This rank's view: a signal (``stop_requested``) or the stop file. ``_reduce`` makes every rank agree."""
        if self.stop_reason is None:
            if self.stop_requested():
                self.stop_reason = getattr(self.stop_requested, "reason", None) or "signal"
            elif self.stop_path.exists():
                self.stop_reason = "stop file"
                log.warning("stop file %s found: writing a checkpoint after this step", self.stop_path)
        return self.stop_reason is not None

    def _consume_stop_file(self) -> None:
        if self.dist.main:
            try:
                self.stop_path.unlink()
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------------------------------- saving

    def gathered_adapter(self) -> dict[str, torch.Tensor]:
        """The trained adapter (peft names, full tensors on CPU). A collective under FSDP2: all ranks call it."""
        return gathered_adapter(self.bare)

    def lora_metadata(self, step: int) -> dict[str, str]:
        return lora_metadata(self.config, step, self.base_fingerprint, len(self.data.preferred), len(self.data.rejected), self.data.fingerprint,
                             self.phase.metadata() if self.phase else None)

    def saved_config(self) -> RunConfig:
        """The config run.json and the checkpoints keep: the user's (both experts), with the planner's choices."""
        return user_config(self.run_config, self.config, self.phase)

    def _write_lora(self, path: Path, adapter: dict, step: int) -> None:
        save_comfy_lora(path, adapter, self.config.effective_alpha, self.lora_metadata(step))

    def save_checkpoint(self, step: int) -> Path:
        """Writes ``checkpoints/step-<step>/`` atomically: a temporary folder, renamed when complete."""
        StateDictOptions, get_optimizer_state_dict, _ = optimizer_state_api()
        adapter = self.gathered_adapter()
        optimizer_state = get_optimizer_state_dict(self.bare, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        listing = {"expert": self.phase.expert, "experts": self.phase.count} if self.phase else None
        return write_checkpoint(self.output_dir, self.offset + step, self.dist, self.saved_config(), adapter, optimizer_state,
                                self.scheduler.state_dict(), write_lora=lambda path: self._write_lora(path, adapter, step),
                                lora_name=self.config.lora_name, listing=listing)

    def save_lora(self, step: int) -> Path:
        adapter = self.gathered_adapter()
        path = self.output_dir / f"{self.config.lora_name}.safetensors"
        if self.dist.main:
            self._write_lora(path, adapter, step)
        self.dist.barrier()
        return path

    def _dump_replica(self, step: int) -> None:
        state = {name: parameter.detach().cpu().clone() for name, parameter in lora_setup.trained_parameters(self.bare)}
        atomic_save_safetensors(self.dump_replicas / f"rank{self.dist.rank}-step{step}.safetensors", state)

    # ------------------------------------------------------------------------------------------- loop

    def _checkpoint(self, step: int) -> Path:
        path = self.save_checkpoint(step)
        self.last_checkpoint = path
        self.events.emit(CHECKPOINT, step=self.offset + step, path=str(path))
        return path

    def _stopped(self, step: int, checkpoint: Path, history: list) -> TrainResult:
        """A stop asked for (signal, stop file): the checkpoint written at global ``step`` and how to resume."""
        hint = f"python -m ipa_train.train --resume {checkpoint}"
        self._consume_stop_file()
        self.events.emit(STOPPED, step=step, total=self.total, checkpoint=str(checkpoint), resume=hint,
                         reason=self.stop_reason or "another rank")
        return TrainResult("stopped", step, None, str(checkpoint), history, self.bare)

    def run(self) -> TrainResult:
        c = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            self.saved_config().save(self.output_dir / "run.json")
        emit_started(self)
        history = []
        step = self.start_step
        started = time.perf_counter()
        stop = False
        while step < c.steps:
            t0 = time.perf_counter()
            metrics = self.train_step(step)
            step += 1
            metrics, stop = reduce_metrics(self.dist, metrics, self._stop_asked())
            elapsed = time.perf_counter() - started
            record = step_record(self.offset + step, self.total, metrics, elapsed / (step - self.start_step), time.perf_counter() - t0,
                                 peak_memory_gb(self.dist.device))
            history.append(record)
            self.events.emit(STEP, **record)
            if self.dump_replicas is not None:
                self._dump_replica(step)
            if stop:
                break
            if c.checkpoint_every and step % c.checkpoint_every == 0 and step < c.steps:
                self._checkpoint(step)
        if stop and step < c.steps:
            return self._stopped(self.offset + step, self._checkpoint(step), history)
        return finish_run(self, step, stop, history)


def emit_started(trainer: Trainer) -> None:
    """The ``started`` event: the run's size, devices, data, warnings, memory plan (and its expert, of two)."""
    t, c = trainer, trainer.config
    t.events.emit(
        STARTED,
        total=t.total,
        start_step=t.offset + t.start_step,
        world_size=t.dist.world,
        device=str(t.dist.device),
        distributed=c.distributed if t.dist.active else "none",
        objective=c.objective,
        samples=len(t.data.preferred),
        rejected=len(t.data.rejected),
        trainable_parameters=sum(p.numel() for p in t.params),
        resumed_from=str(t.resume_dir) if t.resume_dir else None,
        output_dir=str(t.output_dir),
        warnings=list(t.reference_warnings),
        memory={**t.memory_plan.to_json(), "budget_gb": c.vram_budget_gb, "base_storage": storage_summary(t.bare)},
        **({"expert": t.phase.expert, "t_range": list(t.phase.t_range), "base_model": c.base_model} if t.phase else {}),
    )


def finish_run(trainer: Trainer, step: int, stop: bool, history: list) -> TrainResult:
    """The last checkpoint and the LoRA; the ``finished`` event, unless another expert trains next (then a stop asked
    for during this expert's last step stops here: its checkpoint starts the next expert on resume)."""
    t, phase = trainer, trainer.phase
    last_checkpoint = t._checkpoint(step)
    lora_path = t.save_lora(step)
    loras = {**t.finished_loras, phase.expert: str(lora_path)} if phase else {}
    if phase is not None and phase.index + 1 < phase.count:
        if stop:
            return t._stopped(t.offset + step, last_checkpoint, history)
        log.info("the %s-noise expert's LoRA is %s; the next expert trains now", phase.expert, lora_path)
        return TrainResult("finished", t.offset + step, str(lora_path), str(last_checkpoint), history, t.bare, loras)
    t._consume_stop_file()  # a stop asked for during the last step: the run is over anyway
    final = {k: history[-1][k] for k in ("loss", "ipa_gap", "model_error", "reference_error")} if history else {}
    t.events.emit(FINISHED, step=t.offset + step, lora_path=str(lora_path), checkpoint=str(last_checkpoint), metrics=final,
                  **({"lora_paths": loras} if loras else {}))
    return TrainResult("finished", t.offset + step, str(lora_path), str(last_checkpoint), history, t.bare, loras)


def refuse_long_paths(output_dir: str, lora_name: str, steps: int, world: int) -> None:
    """Windows without long paths: a run whose checkpoint files would pass MAX_PATH is refused now, not when the
    first checkpoint is written hours later."""
    try:
        check_checkpoint_paths(output_dir, lora_name, steps, ranks=world)
    except LaunchRefused as exc:
        raise ConfigError(str(exc)) from None


def adamw_options(device: torch.device) -> dict[str, Any]:
    """AdamW's implementation for the device: the fused kernel on CUDA (one launch for all the LoRA's tensors instead
    of a loop over them; the same update), torch's default elsewhere (the CPU keeps its tested path)."""
    return {"fused": True} if torch.device(device).type == "cuda" else {}


def check_finite(step: int, loss: float, grad_norm: float, config: RunConfig, rank: int, last_checkpoint: Optional[Path]) -> None:
    """Stops the run at the first non-finite loss or gradient. The gradient norm is the same on every rank
    (gradients are synchronised), so all ranks stop together; a loss that is non-finite on one rank only stops
    that rank, and the others are ended by torchrun."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    c = config
    saved = f"the last checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
    raise TrainingError(
        f"step {step}: the loss is {loss} and the gradient norm {grad_norm} (rank {rank}): training diverged "
        f"or a setting is extreme (learning_rate {c.learning_rate}, beta {c.beta}, hand_weight {c.hand_weight}). "
        f"Stopped before this update, so no NaN weights were saved; {saved}. Lower learning_rate (or beta) and "
        "train again, or resume from the last checkpoint."
    )


def step_record(step: int, total: int, metrics: dict[str, float], sec_per_step: float, step_time_s: float, peak_mem_gb: float) -> dict:
    """The ``step`` event: the step's metrics (averaged over ranks), its timing and the peak memory."""
    record = {
        "step": step,
        "total": total,
        "loss": metrics["loss"],
        "ipa_gap": metrics.get("ipa_gap"),
        "model_error": metrics.get("model_error"),
        "reference_error": metrics.get("reference_error"),
        "lr": metrics["lr"],
        "sec_per_step": sec_per_step,
        "step_time_s": step_time_s,
        "eta_s": sec_per_step * (total - step),
        "peak_mem_gb": peak_mem_gb,
    }
    for key in ("grad_norm", "dpo_margin", "implicit_accuracy"):
        if key in metrics:
            record[key] = metrics[key]
    return record


def clean_output_dir(output_dir: Path) -> dict[str, list[str]]:
    """At run start: completes or undoes a checkpoint replacement a killed run left half done, and deletes staging
    folders and temporary files of atomic writes in the output and checkpoints folders (``recover_checkpoints``)."""
    from ..fileio import remove_stale_temp_files

    done = recover_checkpoints(output_dir / CHECKPOINTS_DIR)
    done["removed"] += [path.name for path in remove_stale_temp_files(output_dir)]
    if any(done.values()):
        log.info("cleaned up after an interrupted run in %s: %s", output_dir, {k: v for k, v in done.items() if v})
    return done


def train_experts(config: RunConfig, dist_info: Dist, events: Events, resume: Optional[str] = None,
                  stop_requested: Callable[[], bool] = lambda: False, dump_replicas: Optional[str] = None) -> TrainResult:
    """Trains what ``config`` asks for; returns the last expert's result (``lora_paths``: every expert's LoRA)."""
    refuse_long_paths(config.output_dir, config.lora_name, config.steps, dist_info.world)  # before anything loads
    data = load_training_data(config)
    plan = phases(config, data.switch)
    options = dict(stop_requested=stop_requested, dump_replicas=dump_replicas, data=data)
    if plan == [None]:
        if config.expert != Expert.LOW and dist_info.main:
            log.info("expert '%s' is ignored: the samples were made by one model", config.expert)
        return Trainer(config, dist_info, events, resume=resume, **options).run()
    start, inside = 0, False
    if resume:
        checkpoint = resume_checkpoint(resume)
        start, inside = checkpoint_phase(read_json(checkpoint / STATE_FILE), plan, checkpoint)
    loras = {phase.expert: str(finished_lora(config.output_dir, config, phase)) for phase in plan[:start]}
    result: Optional[TrainResult] = None
    for phase in plan[start:]:
        if result is not None:  # the previous expert's model leaves memory before the next one loads
            result.model = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        trainer = Trainer(config, dist_info, events, resume=resume if phase.index == start and inside else None, phase=phase, **options)
        trainer.finished_loras = dict(loras)
        result = trainer.run()
        del trainer
        if result.status != "finished":
            return result
        loras[phase.expert] = result.lora_path
    result.lora_paths = loras
    return result


def train(
    config: RunConfig,
    resume: Optional[str] = None,
    callback: Optional[Callable[[dict], None]] = None,
    stop_requested: Callable[[], bool] = lambda: False,
    stdout: bool = False,
    dump_replicas: Optional[str] = None,
) -> TrainResult:
    """In-process entry point (one process unless torchrun's environment is set)."""
    dist_info = setup_distributed()
    events = Events(dist_info, callback, stdout=stdout)
    return train_experts(config, dist_info, events, resume=resume, stop_requested=stop_requested, dump_replicas=dump_replicas)
