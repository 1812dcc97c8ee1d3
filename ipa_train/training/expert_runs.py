"""A run over its experts: one Trainer for single-model samples, one per expert, one after the other, for two-expert
samples (``experts``). Only one expert's model is in memory at a time; resume picks up at the expert the checkpoint
belongs to (the experts before it finished and left their LoRAs in the output folder)."""

from __future__ import annotations

import gc
import logging
from typing import Callable, Optional

import torch

from ..choices import Expert
from ..fileio import read_json
from ..jobs.checkpoint_files import STATE_FILE
from ..jobs.config import RunConfig
from .batching import load_training_data
from .checkpoints import resume_checkpoint
from .distributed import Dist, Events
from .experts import checkpoint_phase, finished_lora, phases
from .loop import Trainer, TrainResult

log = logging.getLogger("ipa_train.train")


def train_experts(config: RunConfig, dist_info: Dist, events: Events, resume: Optional[str] = None,
                  stop_requested: Callable[[], bool] = lambda: False, dump_replicas: Optional[str] = None) -> TrainResult:
    """Trains what ``config`` asks for; returns the last expert's result (``lora_paths``: every expert's LoRA)."""
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
