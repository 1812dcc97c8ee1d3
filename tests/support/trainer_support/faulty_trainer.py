"""The real trainer with faults put in from outside, for the fault tests: ``python -m faulty_trainer`` (this folder on
``PYTHONPATH``, the launcher's ``trainer_module`` / ``extra_pythonpath`` seam) takes the same arguments as
``python -m ipa_train.train``, wraps parts of the trainer as its environment asks, then runs
``ipa_train.training.cli.main``. Production code carries no test hook: everything here wraps the real functions.

- ``$IPA_TEST_FAULT="rank=1,step=3"``: that rank raises at the start of that step (before the step's forward pass,
  so the other ranks block in the step's collective and torchrun ends them).
- ``$IPA_TEST_SLOW_CHECKPOINT=SECONDS``: each phase of a checkpoint replacement ("aside", "in", "deleted") is
  printed on stderr (``checkpoint replacement: <phase>``), then the writer sleeps, so a test can kill it there.

:func:`report_phases` is the same wrapping in-process (a test's child process calls it with its own hook).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Optional

FAULT_ENV = "IPA_TEST_FAULT"
SLOW_CHECKPOINT_ENV = "IPA_TEST_SLOW_CHECKPOINT"
HERE = str(Path(__file__).resolve().parent)
MODULE = "faulty_trainer"
PHASES = {"move_aside": "aside", "move_in": "in", "delete_aside": "deleted"}


def faulty_env(env: Mapping[str, str], fault: Optional[str] = None, slow_checkpoint: Optional[float] = None) -> dict:
    """``env`` with this folder on ``PYTHONPATH`` and the faults asked for (``fault``: ``"rank=R,step=S"``)."""
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(part for part in (env.get("PYTHONPATH"), HERE) if part)
    if fault is not None:
        env[FAULT_ENV] = fault
    if slow_checkpoint is not None:
        env[SLOW_CHECKPOINT_ENV] = str(slow_checkpoint)
    return env


def launch_through_it(monkeypatch, fault: Optional[str] = None, slow_checkpoint: Optional[float] = None) -> None:
    """Every job ``ipa_train.jobs.launcher`` starts in this test (``run_cpu_job``: the demo) runs this module with
    the faults asked for, instead of ``ipa_train.train``."""
    from ipa_train.jobs import launcher

    build_command, build_env = launcher.build_command, launcher.build_env
    monkeypatch.setattr(launcher, "build_command", lambda *args, **kwargs: build_command(*args, **{**kwargs, "module": MODULE}))
    monkeypatch.setattr(launcher, "build_env", lambda *args, **kwargs: faulty_env(build_env(*args, **kwargs), fault, slow_checkpoint))


def parse_fault(spec: str) -> tuple[int, int]:
    """``"rank=1,step=3"`` -> ``(1, 3)`` (rank 0 and step 1 when left out)."""
    fields = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    return int(fields.get("rank", 0)), int(fields.get("step", 1))


def inject_fault(rank: int, step: int) -> None:
    """Rank ``rank`` raises at the start of step ``step`` (1-based) instead of training it."""
    from ipa_train.training.loop import Trainer

    train_step = Trainer.train_step

    def failing_step(self, index: int):
        if self.dist.rank == rank and index + 1 == step:
            raise RuntimeError(f"injected fault on rank {rank} at step {step} ({FAULT_ENV})")
        return train_step(self, index)

    Trainer.train_step = failing_step


def report_phases(on_phase: Callable[[str], None]) -> None:
    """Calls ``on_phase(name)`` right after each move of a checkpoint replacement ("aside", "in", "deleted"):
    ``checkpoint_files.replace_checkpoint`` looks its three moves up when it calls them."""
    from ipa_train.jobs import checkpoint_files

    for function, phase in PHASES.items():
        real = getattr(checkpoint_files, function)

        def wrapped(*args, _real=real, _phase=phase):
            _real(*args)
            on_phase(_phase)

        setattr(checkpoint_files, function, wrapped)


def slow_phases(seconds: float) -> Callable[[str], None]:
    def pause(phase: str) -> None:
        print(f"checkpoint replacement: {phase}", file=sys.stderr, flush=True)
        time.sleep(seconds)

    return pause


def main(argv: Optional[list[str]] = None) -> int:
    if os.environ.get(FAULT_ENV):
        inject_fault(*parse_fault(os.environ[FAULT_ENV]))
    if os.environ.get(SLOW_CHECKPOINT_ENV):
        report_phases(slow_phases(float(os.environ[SLOW_CHECKPOINT_ENV])))
    from ipa_train.training.cli import main as trainer_main

    return trainer_main(argv)


if __name__ == "__main__":
    sys.exit(main())
