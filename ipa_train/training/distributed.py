"""Distributed set-up and the run's event stream: what torchrun's environment says about this process, and the
JSON-lines events rank 0 writes on stdout (the run contract the launcher and the node read: ``jobs.contract``)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from ..jobs.contract import ERROR


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
        backend = process_group_backend(device.type)
        if backend == "nccl":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def process_group_backend(device_type: str, os_name: Optional[str] = None) -> str:
    """NCCL between GPUs, gloo between CPU processes. PyTorch builds no NCCL for Windows: several GPUs there are
    refused here, before any weight loads (the launcher already refuses them; this catches a hand-made torchrun)."""
    if device_type != "cuda":
        return "gloo"
    if (os.name if os_name is None else os_name) == "nt":
        from ..jobs.config import ConfigError

        raise ConfigError("several GPUs need NCCL, which PyTorch does not provide on Windows: train on one GPU "
                          "(python -m ipa_train.train, no torchrun), or under WSL2 or Linux for several")
    return "nccl"


def is_dtensor(value) -> bool:
    return type(value).__name__ == "DTensor"


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a collective: every rank calls it), or the tensor itself."""
    return value.full_tensor() if is_dtensor(value) else value


class Events:
    """JSON lines on stdout (rank 0 only, except ``error`` which any rank writes) and an optional callback."""

    def __init__(self, dist_info: Dist, callback: Optional[Callable[[dict], None]] = None, stdout: bool = True):
        self.dist = dist_info
        self.callback = callback
        self.stdout = stdout

    def emit(self, event: str, **fields: Any) -> dict:
        record = {"event": event, **fields}
        if self.dist.main or event == ERROR:
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
    try:
        import resource  # POSIX only
    except ImportError:
        import psutil  # Windows: the peak working set

        return getattr(psutil.Process().memory_info(), "peak_wset", psutil.Process().memory_info().rss) / 2**30
    scale = 2**30 if sys.platform == "darwin" else 2**20  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def reduce_metrics(dist_info: Dist, metrics: dict[str, float], stop: bool) -> tuple[dict[str, float], bool]:
    """Averages metrics over ranks and agrees on stopping (any rank asked -> all stop after this step). A collective:
    every rank calls it once per step. ``lr`` and ``grad_norm`` are the same on every rank and stay as they are."""
    if not dist_info.active:
        return metrics, stop
    keys = sorted(k for k in metrics if k not in ("lr", "grad_norm"))
    values = torch.tensor([metrics[k] for k in keys] + [1.0 if stop else 0.0], dtype=torch.float64)
    if dist_info.device.type == "cuda":
        values = values.to(dist_info.device)
    dist.all_reduce(values)
    values = values.cpu()
    reduced = dict(metrics)
    for i, key in enumerate(keys):
        reduced[key] = float(values[i]) / dist_info.world
    return reduced, bool(values[-1] > 0)
