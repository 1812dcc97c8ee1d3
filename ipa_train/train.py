"""Headless Flow-IPA LoRA trainer for Wan2.1-VACE (``python -m ipa_train.train --config run.json``).

One process: ``python -m ipa_train.train --config run.json``. Several (GPUs, nodes):
``torchrun --nproc_per_node=N --standalone -m ipa_train.train --config run.json`` (DDP, or FSDP2 with
``"distributed": "fsdp2"``; NCCL on GPU, gloo on CPU).

Run contract (see README, Training): rank 0 writes one JSON object per line on stdout (events ``started``,
``step``, ``checkpoint``, ``finished``, ``stopped``, ``error``; a failing rank writes its own ``error``), human
logs go to stderr. Exit status 0 finished, 1 error, 3 stopped after writing a checkpoint. A stop is asked for
by creating the stop file (``<output_dir>/STOP`` or ``stop_file``; what the ComfyUI node does: no signal has to
reach the ranks, so torchrun's 30 s kill deadline cannot cut a long step short) or by SIGINT/SIGTERM.

Per step and micro-batch: ``t`` from the configured schedule, ``x_t = (1 - t) x0 + t noise``, model timestep
``1000 t`` (float), target ``v = noise - x0``; the reference prediction comes from the same module with the
trained adapter switched off (``lora.reference_mode``), under ``no_grad``. Data order, noise and ``t`` derive
from (seed, step, micro-batch, rank) alone, so a resumed run draws exactly what the uninterrupted run would.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from . import __version__
from . import lora as lora_setup
from .config import ConfigError, RunConfig
from .dataset import DatasetError, SampleTensors, dataset_fingerprint, load_preferred, load_sample, read_manifest, validate_sample_tensors
from .fileio import atomic_save_safetensors, atomic_write_json, load_safetensors, read_json
from .fingerprint import model_fingerprint
from .loss import flow_dpo_loss, flow_ipa_loss, flow_sft_loss

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_STOPPED = 3

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
ADAPTER_FILE = "adapter.safetensors"  # the trained adapter with peft/diffusers names (what resume loads)
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "scheduler.json"

log = logging.getLogger("ipa_train.train")


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says what to change."""


# ============================================================================================ distributed set-up


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def setup_distributed() -> Dist:
    """Reads torchrun's environment; one process without it. NCCL on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")  # threads: torch's default, or OMP_NUM_THREADS (torchrun sets 1 per rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


# ============================================================================================ events


class Events:
    """JSON lines on stdout (rank 0 only, except ``error`` which any rank writes) and an optional callback."""

    def __init__(self, dist_info: Dist, callback: Optional[Callable[[dict], None]] = None, stdout: bool = True):
        self.dist = dist_info
        self.callback = callback
        self.stdout = stdout

    def emit(self, event: str, **fields: Any) -> dict:
        record = {"event": event, **fields}
        if self.dist.main or event == "error":
            if self.stdout:
                sys.stdout.write(json.dumps(record) + "\n")
                sys.stdout.flush()
            if self.callback is not None:
                self.callback(record)
        return record


def peak_memory_gb(device: torch.device) -> float:
    """GPU: peak memory allocated by torch. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ============================================================================================ data


@dataclass
class TrainingData:
    preferred: list[tuple[str, SampleTensors, dict]]
    rejected: list[tuple[str, SampleTensors, dict]]
    loser_candidates: list[list[int]]  # per preferred sample: indices into ``rejected`` usable as its loser
    fingerprint: str


def _shape_key(tensors: SampleTensors) -> tuple:
    return (tuple(tensors.latent.shape), int(tensors.ref_frames))


def load_training_data(config: RunConfig) -> TrainingData:
    """Loads and validates the preferred (and for DPO the rejected) samples before any model is built."""
    dataset_dir = Path(config.dataset)
    if not dataset_dir.is_dir():
        raise DatasetError(f"dataset folder {dataset_dir} does not exist; set 'dataset' to a folder made by the IPA collector")
    preferred = load_preferred(dataset_dir)
    entries = read_manifest(dataset_dir)
    rejected: list[tuple[str, SampleTensors, dict]] = []
    if config.objective == "dpo":
        for entry in entries:
            if entry.get("status") == "rejected":
                tensors, meta = load_sample(dataset_dir, entry["id"])
                validate_sample_tensors(tensors, entry["id"])
                rejected.append((entry["id"], tensors, meta))
        if not rejected:
            raise DatasetError(
                f"objective 'dpo' needs rejected samples to pair with the preferred ones, but dataset {dataset_dir.name} has none; "
                "mark some samples as rejected, or use objective 'ipa' (good samples only)"
            )
    if config.batch_size > 1:
        shapes = {_shape_key(tensors) for _, tensors, _ in preferred + rejected}
        if len(shapes) > 1:
            raise DatasetError(
                f"batch_size={config.batch_size} needs samples of one size, but the dataset mixes latent shapes / reference "
                f"frame counts {sorted(shapes)}; use batch_size 1 (with grad_accum for a larger effective batch)"
            )
    candidates: list[list[int]] = []
    if config.objective == "dpo":
        for sample_id, tensors, meta in preferred:
            same_shape = [j for j, (_, other, _) in enumerate(rejected) if _shape_key(other) == _shape_key(tensors)]
            same_prompt = [j for j in same_shape if meta.get("prompt") is not None and rejected[j][2].get("prompt") == meta.get("prompt")]
            if not same_shape:
                raise DatasetError(
                    f"objective 'dpo': preferred sample {sample_id} (latent {tuple(tensors.latent.shape)}) has no rejected sample "
                    "of the same size to pair with; reject a sample of that size or drop this one"
                )
            candidates.append(same_prompt or same_shape)
    hashes = [(sid, meta.get("content_hash", "")) for sid, _, meta in preferred + rejected]
    return TrainingData(preferred, rejected, candidates, dataset_fingerprint(hashes))


def sampling_patch_warning(data: TrainingData, config: RunConfig) -> Optional[str]:
    """A warning when samples were made by a patched model (a LoRA, other model patches: the IPA VACE Sampler records
    them in ``meta["settings"]["patches"]``) that this run's reference (base model + ``init_lora``) does not match."""
    patched = [(sid, meta["settings"]["patches"]) for sid, _, meta in data.preferred + data.rejected
               if isinstance(meta.get("settings"), dict) and meta["settings"].get("patches")]
    if not patched:
        return None
    loras = sorted({str(lora.get("name")) for _, patches in patched for lora in patches.get("ipa_loras", []) if isinstance(lora, dict)})
    init = Path(config.init_lora).name if config.init_lora else None
    if init and loras and all(Path(name).name == init for name in loras) and all(
        set(patches) <= {"ipa_loras", "weight_patches"} for _, patches in patched
    ):
        return None  # sampled with exactly the LoRA the reference starts from
    what = f"LoRA(s) {loras}" if loras else "patches"
    return (
        f"{len(patched)} of {len(data.preferred) + len(data.rejected)} samples were sampled with a patched model ({what}; e.g. "
        f"sample {patched[0][0]}: {patched[0][1]}), but this run's reference is the base model"
        + (f" + init_lora {init}" if init else "")
        + ". The alignment then targets another model than the one that made the samples: set init_lora to the LoRA they "
        "were sampled with, or sample without it."
    )


def check_data_fits_model(data: TrainingData, model) -> None:
    cfg = model.config
    p_t, p_h, p_w = cfg.patch_size
    for sample_id, tensors, _ in data.preferred + data.rejected:
        channels, frames, height, width = tensors.latent.shape
        problems = []
        if channels != cfg.in_channels:
            problems.append(f"latent has {channels} channels, the model takes {cfg.in_channels}")
        if tensors.vace_context.shape[0] != cfg.vace_in_channels:
            problems.append(f"vace_context has {tensors.vace_context.shape[0]} channels, the model takes {cfg.vace_in_channels}")
        if tensors.text_embedding.shape[1] != cfg.text_dim:
            problems.append(f"text_embedding width {tensors.text_embedding.shape[1]} differs from the model's text_dim {cfg.text_dim}")
        if frames % p_t or height % p_h or width % p_w:
            problems.append(f"latent size {(frames, height, width)} is not divisible by the patch size {tuple(cfg.patch_size)}")
        if problems:
            raise DatasetError(f"sample {sample_id} does not fit the base model: " + "; ".join(problems) + ". Was it collected with another model?")


def _seed_for(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") & (2**63 - 1)


@dataclass
class Batch:
    x0: torch.Tensor
    context: torch.Tensor
    text: torch.Tensor
    hand_mask: torch.Tensor
    scale: torch.Tensor
    ref_frames: int


def collate(samples: list[SampleTensors], n_vace_layers: int, device: torch.device, dtype: torch.dtype) -> Batch:
    tokens = max(s.text_embedding.shape[0] for s in samples)
    text = torch.zeros(len(samples), tokens, samples[0].text_embedding.shape[1])
    for i, s in enumerate(samples):
        text[i, : s.text_embedding.shape[0]] = s.text_embedding.float()  # zero rows after the end, as Wan pads
    strengths = torch.tensor([float(s.vace_strength) for s in samples])
    if bool((strengths == strengths[0]).all()):
        scale = strengths[0] * torch.ones(n_vace_layers)
    else:  # one strength per sample: [layers, B, 1, 1] broadcasts against the [B, tokens, dim] control hints
        scale = strengths.view(1, -1, 1, 1).expand(n_vace_layers, -1, 1, 1).contiguous()
    return Batch(
        x0=torch.stack([s.latent.float() for s in samples]).to(device),
        context=torch.stack([s.vace_context.float() for s in samples]).to(device, dtype),
        text=text.to(device, dtype),
        hand_mask=torch.stack([s.hand_mask.float() for s in samples]).to(device),
        scale=scale.to(device, dtype),
        ref_frames=int(samples[0].ref_frames),
    )


def sample_t(config: RunConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """Flow time in [0, 1] (1 = noise): uniform (Wan's default), logit-normal, or uniform pushed by ``shift``."""
    if config.timestep_sampling == "logit_normal":
        t = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(n, generator=generator))
    else:
        t = torch.rand(n, generator=generator)
        if config.timestep_sampling == "shifted":
            t = config.shift * t / (1 + (config.shift - 1) * t)
    return t.clamp(0.0, 1.0)


class Sampler:
    """Which samples, noise and ``t`` a (step, micro-batch, rank) gets; a pure function of those and the seed."""

    def __init__(self, config: RunConfig, data: TrainingData, dist_info: Dist):
        self.config = config
        self.data = data
        self.dist = dist_info
        self._perms: dict[int, list[int]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(_seed_for(self.config.seed, "epoch", epoch))
            self._perms = {epoch: torch.randperm(len(self.data.preferred), generator=generator).tolist()}
        return self._perms[epoch]

    def indices(self, step: int, micro: int) -> list[int]:
        n = len(self.data.preferred)
        c = self.config
        first = ((step * c.grad_accum + micro) * self.dist.world + self.dist.rank) * c.batch_size
        return [self._permutation(k // n)[k % n] for k in range(first, first + c.batch_size)]

    def generator(self, step: int, micro: int) -> torch.Generator:
        return torch.Generator().manual_seed(_seed_for(self.config.seed, step, micro, self.dist.rank))


# ============================================================================================ model


def build_model(config: RunConfig, dtype: torch.dtype):
    if config.base_model == "tiny":
        from .model import build_tiny_transformer

        model = build_tiny_transformer(seed=0)
        return model if dtype == torch.float32 else model.to(dtype)
    path = Path(config.base_model)
    if not path.exists():
        raise ConfigError(f"base_model {path} does not exist; give a Wan2.1-VACE .safetensors file, a diffusers folder, or \"tiny\"")
    from .model import load_transformer  # trainer-core (issue 3): single-file and diffusers-folder loading

    return load_transformer(str(path), torch_dtype=dtype)


def _load_init_lora(path: str):
    """(diffusers-named state dict, alphas per module) of an existing LoRA in any supported layout."""
    if not Path(path).is_file():
        raise ConfigError(f"init_lora {path} does not exist; give a LoRA .safetensors file")
    from .lora_io import load_lora_for_peft

    state_dict, alphas, _ = load_lora_for_peft(path)
    return state_dict, alphas


def _save_comfy_lora(path: Path, peft_state_dict: dict, alpha: float, metadata: dict) -> None:
    from .lora_io import save_comfy_lora

    save_comfy_lora(path, peft_state_dict, alpha=alpha, metadata=metadata)


def lr_factor(config: RunConfig, step: int) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_scheduler == "cosine":
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def _is_dtensor(value) -> bool:
    return type(value).__name__ == "DTensor"


def _full(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if _is_dtensor(value) else value


# ============================================================================================ checkpoint files


def optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state dict (parameter-name keyed, as torch.distributed.checkpoint gives it) -> safetensors + JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for param_name, values in state.get("state", {}).items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param_name}::{key}"] = _full(value).detach().to("cpu").contiguous()
            else:
                scalars.setdefault(param_name, {})[key] = value
    return tensors, {"param_groups": state.get("param_groups", []), "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict[str, dict] = {}
    for flat, value in tensors.items():
        param_name, key = flat.rsplit("::", 1)
        state.setdefault(param_name, {})[key] = value
    for param_name, values in info.get("scalars", {}).items():
        state.setdefault(param_name, {}).update(values)
    groups = []
    for group in info["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def find_checkpoint(path: os.PathLike | str) -> Path:
    """A checkpoint folder (with state.json), or the newest one under an output or checkpoints folder."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    for folder in (path, path / CHECKPOINTS_DIR):
        if folder.is_dir():
            steps = []
            for entry in folder.iterdir():
                if entry.is_dir() and entry.name.startswith("step-") and entry.name[5:].isdigit() and (entry / STATE_FILE).is_file():
                    steps.append((int(entry.name[5:]), entry))
            if steps:
                return max(steps)[1]
    raise TrainingError(f"--resume {path}: no checkpoint there (expected a folder with {STATE_FILE}, or an output folder with {CHECKPOINTS_DIR}/step-N)")


# ============================================================================================ trainer


@dataclass
class TrainResult:
    status: str  # "finished" | "stopped"
    step: int
    lora_path: Optional[str] = None
    checkpoint_path: Optional[str] = None
    history: list = field(default_factory=list)
    model: Any = None  # the bare transformer with its adapters (tests inspect it)


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
    ):
        """``model``: an already built base transformer to train instead of loading ``config.base_model``
        (benchmarks, the demo); ``config.base_model`` then only names it in the metadata."""
        self.config = config
        self.dist = dist_info
        self.events = events
        self.stop_requested = stop_requested
        self.stop_path = config.stop_path
        self.stop_reason: Optional[str] = None
        self.dump_replicas = Path(dump_replicas) if dump_replicas else None
        self.output_dir = Path(config.output_dir)
        self.resume_dir = find_checkpoint(resume) if resume else None
        device = dist_info.device
        if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
            self.autocast_dtype: Optional[torch.dtype] = torch.bfloat16
        else:
            self.autocast_dtype = None
        if self.dump_replicas and config.distributed != "ddp":
            raise ConfigError("--dump-replicas compares full replicas and needs distributed 'ddp'")

        if dist_info.main and self.stop_path.exists():
            log.warning("stop file %s already exists: the run will stop after its first step; delete it to train", self.stop_path)

        # 1. data (all validation before any model is built)
        self.data = load_training_data(config)
        self.sampler = Sampler(config, self.data, dist_info)
        self.patch_warning = sampling_patch_warning(self.data, config)
        if self.patch_warning and dist_info.main:
            log.warning("%s", self.patch_warning)

        # 2. model + adapters. Base weights bf16 on GPU with DDP (the adapters stay fp32); FSDP2 shards fp32
        # weights and gathers them in bf16 (its mixed-precision policy).
        base_dtype = torch.bfloat16 if (self.autocast_dtype is not None and device.type == "cuda" and config.distributed == "ddp") else torch.float32
        model = build_model(config, base_dtype) if model is None else model
        check_data_fits_model(self.data, model)
        self.base_fingerprint = model_fingerprint(config.base_model, model)
        torch.manual_seed(config.seed)  # identical LoRA initialisation on every rank
        if config.init_lora:
            state_dict, alphas = _load_init_lora(config.init_lora)
            try:
                lora_setup.add_reference_lora(model, state_dict, alphas)
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(f"init_lora {config.init_lora} does not fit the base model {config.base_model}: {exc}") from exc
        lora_setup.add_trained_lora(model, config.rank, config.alpha, config.dropout, config.targets)
        for _, parameter in lora_setup.trained_parameters(model):
            parameter.data = parameter.data.float()
        if config.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        self.start_step = 0
        if self.resume_dir is not None:
            self.start_step = self._load_adapter(model)
        model.to(device)
        model.train()
        self.bare = model
        self.n_vace_layers = len(model.config.vace_layers)
        self.trained_names = [name for name, _ in lora_setup.trained_parameters(model)]
        if not self.trained_names:
            raise ConfigError(f"LoRA targets {config.targets} give no trainable parameters")

        # 3. distributed wrapping
        self.ddp = None
        if dist_info.active and config.distributed == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        elif config.distributed == "fsdp2" and dist_info.active:
            self._shard(model)
        self.forward_module = self.ddp if self.ddp is not None else model

        # 4. optimizer and schedule
        params = [parameter for _, parameter in lora_setup.trained_parameters(model)]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(config, step))
        if self.resume_dir is not None:
            self._load_training_state()

    # ------------------------------------------------------------------------------------------- set-up helpers

    def _shard(self, model) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        import warnings

        # The loss never modifies the model output in place, so FSDP2's warning about returning a view is moot.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        mesh = init_device_mesh(self.dist.device.type, (self.dist.world,))
        policy = MixedPrecisionPolicy(param_dtype=self.autocast_dtype, reduce_dtype=torch.float32) if self.autocast_dtype and self.dist.device.type == "cuda" else MixedPrecisionPolicy()
        for block in list(model.vace_blocks) + list(model.blocks):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)

    def _load_adapter(self, model) -> int:
        from peft import set_peft_model_state_dict

        state = read_json(self.resume_dir / STATE_FILE)
        tensors, _ = load_safetensors(self.resume_dir / ADAPTER_FILE)
        expected = set(lora_setup.trained_state_dict(model))
        if set(tensors) != expected:
            raise TrainingError(
                f"checkpoint {self.resume_dir} holds a LoRA with other layers or rank than this config "
                f"(rank {self.config.rank}, targets {self.config.targets}); resume with the run's own config"
            )
        for key, value in lora_setup.trained_state_dict(model).items():
            if tensors[key].shape != value.shape:
                raise TrainingError(f"checkpoint {self.resume_dir}: {key} has shape {tuple(tensors[key].shape)}, this config gives {tuple(value.shape)} (rank changed?)")
        set_peft_model_state_dict(model, tensors, adapter_name=lora_setup.TRAINED_ADAPTER)
        lora_setup.freeze_all_but_trained(model)
        step = int(state["step"])
        if step >= self.config.steps:
            raise TrainingError(f"checkpoint {self.resume_dir} is already at step {step} of {self.config.steps}; raise --steps to train further")
        return step

    def _optimizer_state_api(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

        return StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

    def _load_training_state(self) -> None:
        StateDictOptions, _, set_optimizer_state_dict = self._optimizer_state_api()
        tensors, _ = load_safetensors(self.resume_dir / OPTIMIZER_TENSORS)
        state = optimizer_from_files(tensors, read_json(self.resume_dir / OPTIMIZER_JSON))
        set_optimizer_state_dict(self.bare, self.optimizer, state, options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(read_json(self.resume_dir / SCHEDULER_JSON))
        rng_file = self.resume_dir / f"rng-rank{self.dist.rank}.safetensors"
        saved = read_json(self.resume_dir / STATE_FILE)
        if rng_file.is_file() and int(saved.get("world_size", 1)) == self.dist.world:
            rng, _ = load_safetensors(rng_file)
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and self.dist.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.dist.device)
            python_state = read_json(self.resume_dir / f"rng-rank{self.dist.rank}.json")["python"]
            random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
        else:
            log.warning("checkpoint was written by %s ranks, this run has %s: dropout RNG restarts from the seed", saved.get("world_size"), self.dist.world)
            torch.manual_seed(_seed_for(self.config.seed, "resume", self.start_step, self.dist.rank))

    # ------------------------------------------------------------------------------------------- one step

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.autocast_dtype)

    def _predict(self, module, batch: Batch, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return module(
                hidden_states=x_t,
                timestep=1000.0 * t,
                encoder_hidden_states=batch.text,
                control_hidden_states=batch.context,
                control_hidden_states_scale=batch.scale,
                return_dict=False,
            )[0]

    def _reference(self, batch: Batch, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), lora_setup.reference_mode(self.bare):
            return self._predict(self.bare, batch, x_t, t)

    def _micro_step(self, step: int, micro: int) -> dict[str, float]:
        c = self.config
        device = self.dist.device
        generator = self.sampler.generator(step, micro)
        indices = self.sampler.indices(step, micro)
        winners = [self.data.preferred[i][1] for i in indices]
        t = sample_t(c, len(winners), generator)
        dtype = self.autocast_dtype if device.type == "cuda" and self.autocast_dtype else torch.float32
        if c.objective == "dpo":
            losers = []
            for i in indices:
                options = self.data.loser_candidates[i]
                losers.append(self.data.rejected[options[int(torch.randint(len(options), (1,), generator=generator))]][1])
            batch = collate(winners + losers, self.n_vace_layers, device, dtype)
            noise_half = torch.randn(batch.x0[: len(winners)].shape, generator=generator)
            noise = torch.cat([noise_half, noise_half]).to(device)  # winner and loser share noise and t
            t_full = torch.cat([t, t]).to(device)
        else:
            batch = collate(winners, self.n_vace_layers, device, dtype)
            noise = torch.randn(batch.x0.shape, generator=generator).to(device)
            t_full = t.to(device)
        tb = t_full.view(-1, 1, 1, 1, 1)
        x_t = (1.0 - tb) * batch.x0 + tb * noise
        target = noise - batch.x0
        common = dict(hand_weight=c.hand_weight, ref_frames=batch.ref_frames)
        if c.objective == "sft":
            pred = self._predict(self.forward_module, batch, x_t, t_full)
            loss, metrics = flow_sft_loss(pred, target, t_full, batch.hand_mask, **common)
        else:
            ref = self._reference(batch, x_t, t_full)
            pred = self._predict(self.forward_module, batch, x_t, t_full)
            if c.objective == "ipa":
                loss, metrics = flow_ipa_loss(pred, ref, target, t_full, batch.hand_mask, beta=c.beta, **common)
            else:
                n = len(winners)
                loss, metrics = flow_dpo_loss(
                    pred[:n], ref[:n], target[:n], pred[n:], ref[n:], target[n:], t_full[:n],
                    batch.hand_mask[:n], batch.hand_mask[n:], beta=c.beta, time_weighting=c.dpo_time_weighting, **common,
                )
        (loss / c.grad_accum).backward()
        out = {"loss": float(loss.detach())}
        out.update({key: float(value) for key, value in metrics.items()})
        return out

    def train_step(self, step: int) -> dict[str, float]:
        c = self.config
        totals: dict[str, float] = {}
        for micro in range(c.grad_accum):
            last = micro == c.grad_accum - 1
            if self.ddp is not None and not last:
                sync = self.ddp.no_sync()
            else:
                sync = nullcontext()
                if c.distributed == "fsdp2" and self.dist.active:
                    self.bare.set_requires_gradient_sync(last)
            with sync:
                for key, value in self._micro_step(step, micro).items():
                    totals[key] = totals.get(key, 0.0) + value / c.grad_accum
        grad_norm = None
        if c.max_grad_norm > 0:
            grad_norm = float(_full(torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = dict(totals)
        metrics["lr"] = lr
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        return metrics

    def _stop_asked(self) -> bool:
        """This rank's view: a signal (``stop_requested``) or the stop file. ``_reduce`` makes every rank agree."""
        if self.stop_reason is None:
            if self.stop_requested():
                self.stop_reason = "signal"
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

    def _reduce(self, metrics: dict[str, float], stop: bool) -> tuple[dict[str, float], bool]:
        """Averages metrics over ranks and agrees on stopping (any rank signalled -> all stop after this step)."""
        if not self.dist.active:
            return metrics, stop
        keys = sorted(k for k in metrics if k not in ("lr", "grad_norm"))
        values = torch.tensor([metrics[k] for k in keys] + [1.0 if stop else 0.0], dtype=torch.float64)
        if self.dist.device.type == "cuda":
            values = values.to(self.dist.device)
        dist.all_reduce(values)
        values = values.cpu()
        reduced = dict(metrics)
        for i, key in enumerate(keys):
            reduced[key] = float(values[i]) / self.dist.world
        return reduced, bool(values[-1] > 0)

    # ------------------------------------------------------------------------------------------- saving

    def gathered_adapter(self) -> dict[str, torch.Tensor]:
        """The trained adapter (peft names, full tensors on CPU). A collective under FSDP2: all ranks call it."""
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.bare, adapter_name=lora_setup.TRAINED_ADAPTER)
        return {key: _full(value).detach().to("cpu").float().clone() for key, value in state.items()}

    def lora_metadata(self, step: int) -> dict[str, str]:
        c = self.config
        return {
            "ipa.objective": c.objective,
            "ipa.beta": str(c.beta),
            "ipa.hand_weight": str(c.hand_weight),
            "ipa.rank": str(c.rank),
            "ipa.alpha": str(c.effective_alpha),
            "ipa.targets": json.dumps(c.targets),
            "ipa.target_regex": lora_setup.target_regex(c.targets),
            "ipa.steps": str(step),
            "ipa.learning_rate": str(c.learning_rate),
            "ipa.base_model": Path(c.base_model).name,
            "ipa.base_model_hash": self.base_fingerprint,
            "ipa.dataset": Path(c.dataset).name,
            "ipa.dataset_size": str(len(self.data.preferred)),
            "ipa.dataset_rejected": str(len(self.data.rejected)),
            "ipa.dataset_hash": self.data.fingerprint,
            "ipa.init_lora": Path(c.init_lora).name if c.init_lora else "",
            "ipa.pack_version": __version__,
            "ipa.seed": str(c.seed),
        }

    def save_checkpoint(self, step: int) -> Path:
        """Writes ``checkpoints/step-<step>/`` atomically: a temporary folder, renamed when complete."""
        StateDictOptions, get_optimizer_state_dict, _ = self._optimizer_state_api()
        adapter = self.gathered_adapter()
        optimizer_state = get_optimizer_state_dict(self.bare, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        root = self.output_dir / CHECKPOINTS_DIR
        final = root / f"step-{step}"
        staging = root / f".tmp-step-{step}"
        if self.dist.main:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        self.dist.barrier()
        rng = {"torch": torch.get_rng_state()}
        if self.dist.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.dist.device)
        atomic_save_safetensors(staging / f"rng-rank{self.dist.rank}.safetensors", rng)
        atomic_write_json(staging / f"rng-rank{self.dist.rank}.json", {"python": random.getstate()})
        self.dist.barrier()
        if self.dist.main:
            atomic_save_safetensors(staging / ADAPTER_FILE, adapter, {"adapter": lora_setup.TRAINED_ADAPTER})
            tensors, info = optimizer_to_files(optimizer_state)
            atomic_save_safetensors(staging / OPTIMIZER_TENSORS, tensors)
            atomic_write_json(staging / OPTIMIZER_JSON, info)
            atomic_write_json(staging / SCHEDULER_JSON, self.scheduler.state_dict())
            _save_comfy_lora(staging / f"{self.config.lora_name}.safetensors", adapter, self.config.effective_alpha, self.lora_metadata(step))
            atomic_write_json(
                staging / STATE_FILE,
                {"step": step, "world_size": self.dist.world, "config": self.config.to_dict(), "pack_version": __version__, "time": time.time()},
            )
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging, final)
            self._prune_checkpoints(root)
        self.dist.barrier()
        return final

    def _prune_checkpoints(self, root: Path) -> None:
        keep = self.config.keep_checkpoints
        if not keep:
            return
        steps = sorted((int(p.name[5:]), p) for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit())
        for _, path in steps[:-keep]:
            shutil.rmtree(path, ignore_errors=True)

    def save_lora(self, step: int) -> Path:
        adapter = self.gathered_adapter()
        path = self.output_dir / f"{self.config.lora_name}.safetensors"
        if self.dist.main:
            _save_comfy_lora(path, adapter, self.config.effective_alpha, self.lora_metadata(step))
        self.dist.barrier()
        return path

    def _dump_replica(self, step: int) -> None:
        state = {name: parameter.detach().cpu().clone() for name, parameter in lora_setup.trained_parameters(self.bare)}
        atomic_save_safetensors(self.dump_replicas / f"rank{self.dist.rank}-step{step}.safetensors", state)

    # ------------------------------------------------------------------------------------------- loop

    def run(self) -> TrainResult:
        c = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            c.save(self.output_dir / "run.json")
        self.events.emit(
            "started",
            total=c.steps,
            start_step=self.start_step,
            world_size=self.dist.world,
            device=str(self.dist.device),
            distributed=c.distributed if self.dist.active else "none",
            objective=c.objective,
            samples=len(self.data.preferred),
            rejected=len(self.data.rejected),
            trainable_parameters=sum(p.numel() for p in self.params),
            resumed_from=str(self.resume_dir) if self.resume_dir else None,
            output_dir=str(self.output_dir),
            warnings=[self.patch_warning] if self.patch_warning else [],
        )
        history = []
        step = self.start_step
        started = time.perf_counter()
        last_checkpoint: Optional[Path] = None
        stop = False
        fault = _injected_fault(self.dist.rank)
        while step < c.steps:
            t0 = time.perf_counter()
            if fault is not None and step + 1 == fault:
                raise RuntimeError(f"injected fault on rank {self.dist.rank} at step {step + 1} (IPA_TRAIN_FAULT)")
            metrics = self.train_step(step)
            step += 1
            metrics, stop = self._reduce(metrics, self._stop_asked())
            elapsed = time.perf_counter() - started
            sec_per_step = elapsed / (step - self.start_step)
            record = {
                "step": step,
                "total": c.steps,
                "loss": metrics["loss"],
                "ipa_gap": metrics.get("ipa_gap"),
                "model_error": metrics.get("model_error"),
                "reference_error": metrics.get("reference_error"),
                "lr": metrics["lr"],
                "sec_per_step": sec_per_step,
                "step_time_s": time.perf_counter() - t0,
                "eta_s": sec_per_step * (c.steps - step),
                "peak_mem_gb": peak_memory_gb(self.dist.device),
            }
            for key in ("grad_norm", "dpo_margin", "implicit_accuracy"):
                if key in metrics:
                    record[key] = metrics[key]
            history.append(record)
            self.events.emit("step", **record)
            if self.dump_replicas is not None:
                self._dump_replica(step)
            if stop:
                break
            if c.checkpoint_every and step % c.checkpoint_every == 0 and step < c.steps:
                last_checkpoint = self.save_checkpoint(step)
                self.events.emit("checkpoint", step=step, path=str(last_checkpoint))
        if stop and step < c.steps:
            last_checkpoint = self.save_checkpoint(step)
            self.events.emit("checkpoint", step=step, path=str(last_checkpoint))
            hint = f"python -m ipa_train.train --resume {last_checkpoint}"
            self._consume_stop_file()
            self.events.emit("stopped", step=step, total=c.steps, checkpoint=str(last_checkpoint), resume=hint,
                             reason=self.stop_reason or "another rank")
            return TrainResult("stopped", step, None, str(last_checkpoint), history, self.bare)
        last_checkpoint = self.save_checkpoint(step)
        self.events.emit("checkpoint", step=step, path=str(last_checkpoint))
        lora_path = self.save_lora(step)
        self._consume_stop_file()  # a stop asked for during the last step: the run is over anyway
        final = {k: history[-1][k] for k in ("loss", "ipa_gap", "model_error", "reference_error")} if history else {}
        self.events.emit("finished", step=step, lora_path=str(lora_path), checkpoint=str(last_checkpoint), metrics=final)
        return TrainResult("finished", step, str(lora_path), str(last_checkpoint), history, self.bare)


def _injected_fault(rank: int) -> Optional[int]:
    """Test hook: ``IPA_TRAIN_FAULT="rank=1,step=3"`` makes that rank fail at the start of that step."""
    value = os.environ.get("IPA_TRAIN_FAULT")
    if not value:
        return None
    fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    return int(fields.get("step", 1)) if int(fields.get("rank", 0)) == rank else None


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
    trainer = Trainer(config, dist_info, events, resume=resume, stop_requested=stop_requested, dump_replicas=dump_replicas)
    return trainer.run()


# ============================================================================================ command line

OVERRIDE_FLAGS = {
    "dataset": str, "base_model": str, "output_dir": str, "lora_name": str, "objective": str, "beta": float,
    "hand_weight": float, "rank": int, "alpha": float, "learning_rate": float, "lr_scheduler": str, "warmup_steps": int,
    "steps": int, "batch_size": int, "grad_accum": int, "max_grad_norm": float, "precision": str, "seed": int,
    "checkpoint_every": int, "timestep_sampling": str, "init_lora": str, "distributed": str, "stop_file": str,
}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ipa_train.train",
        description=(
            "Flow-IPA LoRA trainer for Wan2.1-VACE. Exit status: 0 finished, 1 error, 3 stopped (checkpoint written). "
            "Stop gracefully by creating <output_dir>/STOP (or the config's stop_file), or with SIGINT/SIGTERM."
        ),
    )
    parser.add_argument("--config", help="run.json (see README, Training); optional with --resume (the checkpoint's config is used)")
    parser.add_argument("--resume", metavar="DIR", help="checkpoint folder (checkpoints/step-N), or an output folder: continue from its newest checkpoint")
    for key, kind in OVERRIDE_FLAGS.items():
        flag = "--output" if key == "output_dir" else "--" + key.replace("_", "-")
        parser.add_argument(flag, dest=key, type=kind, default=None, help=f"override '{key}'")
    parser.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None)
    parser.add_argument("--targets", nargs="+", default=None, help="LoRA targets: " + " ".join(lora_setup.TARGET_NAMES))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=JSON", help="override any config key, value as JSON")
    parser.add_argument("--dump-replicas", metavar="DIR", help="debugging: every rank writes its LoRA weights after every step to DIR")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    if args.config:
        config = RunConfig.load(args.config)
    elif args.resume:
        checkpoint = find_checkpoint(args.resume)
        config = RunConfig.from_dict(read_json(checkpoint / STATE_FILE)["config"], source=f"{checkpoint}/{STATE_FILE}")
    else:
        raise ConfigError("give --config run.json (or --resume DIR to continue a run with its own config)")
    overrides = {key: getattr(args, key) for key in list(OVERRIDE_FLAGS) + ["gradient_checkpointing", "targets"]}
    for item in args.sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set beta=300")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return config.with_overrides(overrides)


class StopFlag:
    """SIGINT/SIGTERM set the flag; the loop finishes the current step, checkpoints and exits with status 3."""

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self.first_signal = 0.0

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        # torchrun forwards a terminal's Ctrl-C as SIGTERM, so one stop request often arrives twice: only a
        # signal more than 5 s after the first means "stop now, without a checkpoint".
        if self.requested and time.monotonic() - self.first_signal > 5.0:
            raise KeyboardInterrupt
        if self.requested:
            return
        self.requested = True
        self.first_signal = time.monotonic()
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: finishing the current step, then writing a checkpoint", self.signal_name)


def main(argv: Optional[list[str]] = None) -> int:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [ipa-train rank {rank}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    stop = StopFlag()
    stop.install()
    code = EXIT_ERROR
    dist_info = Dist(rank=rank)
    events = Events(dist_info)
    try:
        args = parse_args(argv)
        config = resolve_config(args)
        dist_info = setup_distributed()
        events = Events(dist_info)
        log.info("run config: %s", json.dumps(config.to_dict()))
        trainer = Trainer(config, dist_info, events, resume=args.resume, stop_requested=stop, dump_replicas=args.dump_replicas)
        result = trainer.run()
        code = EXIT_STOPPED if result.status == "stopped" else EXIT_OK
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an error event and status 1
        tail = traceback.format_exc().strip().splitlines()[-12:]
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyboardInterrupt) else "interrupted twice: stopped without a checkpoint"
        events.emit("error", rank=dist_info.rank, message=message, traceback="\n".join(tail))
        if isinstance(exc, (ConfigError, DatasetError, TrainingError)):
            log.error("%s", exc)  # bad input: the message says what to change; no traceback needed
        else:
            log.error("%s", traceback.format_exc())
        code = EXIT_ERROR
    finally:
        if dist.is_available() and dist.is_initialized():
            try:
                if code == EXIT_ERROR:
                    pass  # peers may be stuck in a collective; torchrun ends them when this rank exits non-zero
                else:
                    dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass
    return code


if __name__ == "__main__":
    sys.exit(main())
