"""``python -m ipa_train.train``: the trainer's public entry point, kept where it always was.

The trainer lives in ``ipa_train.training`` (``cli`` for this command line, ``loop`` for ``Trainer`` and
``train``); this module re-exports the names scripts and tests have used, so ``from ipa_train import train``
and ``python -m ipa_train.train --config run.json`` keep working."""

import sys

try:
    from .training.batching import Batch, Sampler, TrainingData, collate, load_training_data, sample_t
    from .training.checkpoints import CHECKPOINTS_DIR, STATE_FILE, TrainingError, find_checkpoint
    from .training.cli import EXIT_ERROR, EXIT_OK, EXIT_STOPPED, main, parse_args, resolve_config
    from .training.distributed import Dist, Events, setup_distributed
    from .training.loop import TrainResult, Trainer, train
    from .training.reference_check import ReferenceMismatch, sampling_patch_warning
except Exception as _import_failure:  # e.g. a broken torch or torchvision: still an error event, with its root cause
    if __name__ != "__main__":
        raise
    from .jobs.failures import report_startup_failure

    sys.exit(report_startup_failure(_import_failure))

__all__ = [
    "Batch", "CHECKPOINTS_DIR", "ReferenceMismatch", "Dist", "EXIT_ERROR", "EXIT_OK", "EXIT_STOPPED", "Events", "STATE_FILE", "Sampler",
    "TrainResult", "Trainer", "TrainingData", "TrainingError", "collate", "find_checkpoint", "load_training_data",
    "main", "parse_args", "resolve_config", "sample_t", "sampling_patch_warning", "setup_distributed", "train",
]

if __name__ == "__main__":
    sys.exit(main())
