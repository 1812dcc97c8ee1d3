"""``python -m ipa_train.train``: the trainer's command line (arguments, config resolution, signals, exit status).

One process: ``python -m ipa_train.train --config run.json``. Several (GPUs, nodes):
``torchrun --nproc_per_node=N --standalone -m ipa_train.train --config run.json`` (DDP, or FSDP2 with
``"distributed": "fsdp2"``; NCCL on GPU, gloo on CPU).

The run contract (events on stdout, exit status, the stop file, the environment) is ``jobs.contract``; human logs
go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
from typing import Optional

import torch.distributed as dist

from ..data.layout import DatasetError
from ..fileio import read_json
from ..jobs import rank_guard
from ..jobs.config import KEYS, ConfigError, KeySpec, RunConfig
from ..jobs.contract import ERROR, EXIT_ERROR, EXIT_OK, EXIT_STOPPED
from ..jobs.failures import hint_for, is_lost_peer, root_cause
from .checkpoints import STATE_FILE, TrainingError, resume_checkpoint
from .distributed import Dist, Events, setup_distributed
from .loop import train_experts

log = logging.getLogger("ipa_train.train")


# The flags that override run.json keys, from the key schema (``KeySpec.cli``): --key VALUE, --key (sets true), --key A B.
OVERRIDE_FLAGS = {name: spec.cli_type for name, spec in KEYS.items() if spec.cli == "value"}
SWITCH_FLAGS = tuple(name for name, spec in KEYS.items() if spec.cli == "switch")
LIST_FLAGS = tuple(name for name, spec in KEYS.items() if spec.cli == "list")


def _override_help(spec: KeySpec) -> str:
    allowed = spec.allowed_text().replace("`", "")
    return f"override '{spec.name}': " + spec.help.replace("`", "").replace("%", "%%") + (f" ({allowed})" if allowed else "")


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
        parser.add_argument(KEYS[key].cli_flag, dest=key, type=kind, default=None, help=_override_help(KEYS[key]))
    for key in SWITCH_FLAGS:
        parser.add_argument(KEYS[key].cli_flag, dest=key, action="store_true", default=None, help=_override_help(KEYS[key]))
    for key in LIST_FLAGS:
        parser.add_argument(KEYS[key].cli_flag, dest=key, nargs="+", default=None, help=_override_help(KEYS[key]))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=JSON", help="override any config key, value as JSON")
    parser.add_argument("--dump-replicas", metavar="DIR", help="debugging: every rank writes its LoRA weights after every step to DIR")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    if args.config:
        config = RunConfig.load(args.config)
    elif args.resume:
        checkpoint = resume_checkpoint(args.resume)
        config = RunConfig.from_dict(read_json(checkpoint / STATE_FILE)["config"], source=f"{checkpoint}/{STATE_FILE}")
    else:
        raise ConfigError("give --config run.json (or --resume DIR to continue a run with its own config)")
    overrides = {key: getattr(args, key) for key in (*OVERRIDE_FLAGS, *SWITCH_FLAGS, *LIST_FLAGS)}
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
        self.reason = "signal"  # the stopped event's reason
        self.first_signal = 0.0

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        # SIGBREAK: what a Windows launcher can send to a process group it created (CTRL_BREAK_EVENT).
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)):
            if sig is not None:
                signal.signal(sig, self._handle)

    def request(self, reason: str) -> None:
        """A stop asked for by this process itself (its launcher is gone): like a first signal."""
        if not self.requested:
            self.requested = True
            self.first_signal = time.monotonic()
            self.reason = reason

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


def error_fields(exc: BaseException, dist_info: Dist, user_error: bool) -> dict:
    """The ``error`` event's fields for ``exc``. A survivor's error (its connection to a peer broke because that
    peer died: ``failures.is_lost_peer``) says so, with ``lost_peer: true``, instead of reading as this rank's own
    failure: under a bare torchrun nobody else sorts the ranks' reports, and the dead peer often wrote nothing."""
    tail = traceback.format_exc().strip().splitlines()[-12:]
    message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyboardInterrupt) else "interrupted twice: stopped without a checkpoint"
    fields: dict = {"rank": dist_info.rank}
    if not user_error and dist_info.active and is_lost_peer(message):
        fields["lost_peer"] = True
        message = (f"rank {dist_info.rank} lost its connection to another rank, which failed or was killed first (this "
                   f"rank did not fail by itself; torchrun's summary and that rank's own error name the cause): {message}")
    fields.update(message=message, traceback="\n".join(tail))
    # A library error that surfaced from an earlier one (an import failure deep in diffusers): name the first.
    cause = None if user_error else root_cause(exc)
    if cause is None and not user_error and hint_for(exc, message):
        cause = {"hint": hint_for(exc, message)}
    fields.update(cause or {})
    return fields


def main(argv: Optional[list[str]] = None) -> int:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [ipa-train rank {rank}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    stop = StopFlag()
    stop.install()
    rank_guard.install(stop.request)  # a rank whose launcher (ComfyUI, torchrun) is gone stops by itself
    code = EXIT_ERROR
    dist_info = Dist(rank=rank)
    events = Events(dist_info)
    try:
        args = parse_args(argv)
        config = resolve_config(args)
        dist_info = setup_distributed()
        events = Events(dist_info)
        log.info("run config: %s", json.dumps(config.to_dict()))
        result = train_experts(config, dist_info, events, resume=args.resume, stop_requested=stop, dump_replicas=args.dump_replicas)
        code = EXIT_STOPPED if result.status == "stopped" else EXIT_OK
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an error event and status 1
        user_error = isinstance(exc, (ConfigError, DatasetError, TrainingError))
        events.emit(ERROR, **error_fields(exc, dist_info, user_error))
        if user_error:
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
