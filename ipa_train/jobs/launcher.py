"""Launching the trainer in its own process (group), reading its JSON events, and stopping it gracefully (the loss
curve is ``curves``). Host-independent: the ComfyUI train node is a thin layer over this.

The trainer contract (``python -m ipa_train.train --config run.json``: its events, exit status, stop file and
environment) is ``contract``.

Stopping uses the stop file first, because signals are a poor fit for long steps under torchrun: torchrun forwards
a signal to the ranks and SIGKILLs them 30 s later, while one 14B step takes about 45 s. Signals (then SIGKILL)
remain the fallback when the file is not acted on within the grace period (a hung rank, a job still loading).
"""

from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from .contract import ERROR, EVENTS, EXIT_OK, FAILURES_ENV, FINAL_EVENTS, FINISHED, JOB_ENV, LAUNCHER_PID_ENV, STEP, STOPPED
from .failures import RankFailure, failure_report, read_failures
from .process_tree import LaunchRefused, Platform, ProcessTree, current_platform

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding ``ipa_train``
# The trainer's start script (see its docstring): it puts PACKAGE_PARENT and the folders in $IPA_TRAIN_PATH on
# sys.path itself, because the Windows portable build's embedded Python ignores PYTHONPATH.
START_SCRIPT = str(Path(PACKAGE_PARENT) / "ipa_train_start.py")
PATH_ENV = "IPA_TRAIN_PATH"  # read by START_SCRIPT

# The trainer's CUDA allocator configuration: set this variable (in ComfyUI's environment) to choose it yourself, e.g.
# IPA_TRAIN_CUDA_ALLOC_CONF=expandable_segments:True,max_split_size_mb:512, or to "" for torch's defaults. Unset:
# expandable segments (less fragmentation across the compute, swap and offload streams; what torch's own OOM message
# recommends), except on Windows, where torch does not support them.
ALLOC_CONF_ENV = "IPA_TRAIN_CUDA_ALLOC_CONF"
DEFAULT_CUDA_ALLOC_CONF = "expandable_segments:True"
# Inherited settings that would surprise the trainer: the host's allocator choice (ComfyUI sets cudaMallocAsync),
# its device selection (ComfyUI's --cuda-device sets HIP_VISIBLE_DEVICES too, which ROCm applies before
# CUDA_VISIBLE_DEVICES), and its import path (ComfyUI folders, import-only torchvision stand-ins).
DROPPED_ENV = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "PYTHONPATH",
               "PYTHONHOME", "PYTHONSTARTUP")


class LaunchError(ValueError):
    """Bad launch settings, with a message that says how to fix them."""


# ----------------------------------------------------------------------------------------------- settings


GPUS_FORMS = ("'auto' (every visible GPU, the CPU on a machine without one), a device id ('0' is the first GPU), device ids "
              "('0,2' or '[1]'), a count ('x2': the first two GPUs), 'all' or 'cpu'")


def parse_gpus(spec: str | int | None, available: Optional[int] = None, platform: Optional[Platform] = None) -> list[int]:
    """The device ids ``spec`` names (see :func:`resolve_gpus`, which also says what ``auto`` decided)."""
    return resolve_gpus(spec, available, platform)[0]


def resolve_gpus(spec: str | int | None, available: Optional[int] = None, platform: Optional[Platform] = None) -> tuple[list[int], str]:
    """(device ids, a note for the user or ""). A number is a device id, as in ComfyUI's ``--cuda-device`` and
    ``CUDA_VISIBLE_DEVICES`` (``"0"`` is GPU 0, never the CPU); ``"0,2"`` / ``"[1]"``: those ids; ``"x2"``: a count,
    the first two GPUs (``x`` as in "two times": it cannot be read as an id); ``"all"``: every GPU; ``"cpu"``: the
    CPU; ``"auto"``: every GPU, the CPU on a machine without one, and one GPU on Windows (several need NCCL, which
    Windows lacks). Empty and ``"none"`` (once the CPU) are refused with the forms. Raises :class:`LaunchError`."""
    text = str(spec if spec is not None else "").strip().lower()
    if text == "cpu":
        return [], ""
    if text == "auto":
        ids = list(range(available or 0))
        if len(ids) > 1 and (platform or current_platform()).windows:
            return [0], (f"gpus='auto': training on GPU 0 only ({len(ids)} are visible, but several GPUs need NCCL, which "
                         "PyTorch does not provide on Windows); name another with its id, e.g. gpus='1'")
        return ids, ""
    if text == "all":
        if not available:
            raise LaunchError("gpus='all' but no GPU is available; use 'cpu'")
        return list(range(available)), ""
    if text.startswith("x") and text[1:].strip().isdigit():
        count = int(text[1:])
        if count < 1 or (available is not None and count > available):
            raise LaunchError(f"gpus={spec!r} asks for {count} GPUs but there {_visible(available or 0)}; write "
                              f"{'x' + str(available) if available else 'cpu'} or {GPUS_FORMS}")
        return list(range(count)), ""
    try:
        ids = [int(part) for part in text.strip("[]").split(",") if part.strip()]
    except ValueError:
        raise LaunchError(f"gpus={spec!r}: write {GPUS_FORMS}") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise LaunchError(f"gpus={spec!r}: write {GPUS_FORMS} (device ids distinct and >= 0)")
    if available is not None and max(ids) >= available:
        raise LaunchError(_missing_device(spec, text, ids, available))
    return ids, ""


def _missing_device(spec, text: str, ids: list[int], available: int) -> str:
    """The refusal in words: none visible (never "ids 0..-1"), or a device id that does not exist; a lone number was
    a count before, so say how a count is written now."""
    if available == 0:
        return f"gpus={spec!r}: no GPU is visible on this machine; use 'cpu' (or 'auto', which trains on the CPU here)"
    count = f" A number is a device id now: for a count write 'x{text}'." if len(ids) == 1 and "," not in text and "[" not in text else ""
    return f"gpus={spec!r} asks for device {max(ids)} but there {_visible(available)}.{count} Write {GPUS_FORMS}"


def _visible(available: int) -> str:
    if available == 0:
        return "is no GPU visible"
    return f"are only {available} GPUs visible (device ids 0..{available - 1})" if available > 1 else "is only 1 GPU visible (device id 0)"


def build_command(
    config_path: os.PathLike | str,
    processes: int = 1,
    module: str = "ipa_train.train",
    python: str = sys.executable,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``python START_SCRIPT MODULE --config run.json`` (what ``python -m MODULE`` does, with the package found from
    :data:`START_SCRIPT`'s place, so no ``PYTHONPATH`` is needed) for one process (one GPU or the CPU, on every
    platform: never torchrun); for several, torchrun with the same interpreter through
    ``ipa_train.training.elastic_run``, which also records the exit code of every failed rank:
    ``python START_SCRIPT ipa_train.training.elastic_run --standalone --nproc_per_node=N START_SCRIPT MODULE ...``
    (torchrun starts each rank as ``python -u START_SCRIPT MODULE ...``)."""
    if processes < 1:
        raise LaunchError(f"processes must be >= 1, got {processes}")
    tail = [START_SCRIPT, module, "--config", str(config_path), *extra_args]
    if processes == 1:
        return [python, *tail]
    return [python, START_SCRIPT, "ipa_train.training.elastic_run", "--standalone", f"--nproc_per_node={processes}", *tail]


def check_launch(processes: int, gpus: Sequence[int], platform: Optional[Platform] = None) -> None:
    """Refuses, before anything loads, a launch this platform cannot do (several GPUs on Windows: no NCCL)."""
    try:
        (platform or current_platform()).check_processes(processes, gpus)
    except LaunchRefused as exc:
        raise LaunchError(str(exc)) from None


def build_env(
    base: Optional[Mapping[str, str]] = None,
    gpus: Sequence[int] = (),
    pythonpath: Sequence[str] = (),
    processes: int = 1,
    platform: Optional[Platform] = None,
) -> dict[str, str]:
    """The trainer's environment: the host's minus :data:`DROPPED_ENV`, ``CUDA_VISIBLE_DEVICES`` set from ``gpus``
    (empty string = no GPU), on GPUs ``PYTORCH_CUDA_ALLOC_CONF`` from :data:`ALLOC_CONF_ENV` (unset: expandable
    segments, except on Windows), ``$IPA_TRAIN_PATH`` (read by :data:`START_SCRIPT`, on any Python) and ``PYTHONPATH``
    (for an ordinary Python's child processes) = the folder holding ``ipa_train`` (+ ``pythonpath``), and what
    ``processes`` processes need on this platform (Windows: ``USE_LIBUV=0`` for torchrun)."""
    base = os.environ if base is None else base
    platform = platform or current_platform()
    env = {key: value for key, value in base.items() if key not in DROPPED_ENV}
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in gpus)
    alloc_conf = base.get(ALLOC_CONF_ENV, None if platform.windows else DEFAULT_CUDA_ALLOC_CONF)
    if gpus and alloc_conf:
        env["PYTORCH_CUDA_ALLOC_CONF"] = alloc_conf
    env[PATH_ENV] = env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT, *pythonpath])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"  # the events are read as UTF-8 (Windows pipes default to the ANSI code page)
    env.update(platform.distributed_env(processes))
    return env


def parse_event(line: str) -> Optional[dict[str, Any]]:
    """A trainer event from one stdout line, or ``None`` for anything that is not one (e.g. a library's print)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("event") not in EVENTS:
        return None
    return event


# ----------------------------------------------------------------------------------------------- the job


@dataclass
class JobOutcome:
    status: str  # "finished" | "stopped" | "failed"
    returncode: Optional[int]
    events: list[dict[str, Any]] = field(default_factory=list)
    final: Optional[dict[str, Any]] = None  # the finished / stopped / error event
    stderr_tail: list[str] = field(default_factory=list)
    failures: list[RankFailure] = field(default_factory=list)  # torchrun's failed ranks and their exit codes

    def headline(self) -> str:
        """One line: what made the run fail, the rank named (``failures.failure_report``)."""
        errors = [event for event in self.events if event.get("event") == ERROR]
        lines = failure_report(errors, self.failures, self.returncode)
        return lines[0] if lines else f"the trainer exited with status {self.returncode}"

    def advice(self) -> list[str]:
        """The report's lines after the headline (what to do, what the other ranks said), without tracebacks or stderr."""
        errors = [event for event in self.events if event.get("event") == ERROR]
        return failure_report(errors, self.failures, self.returncode)[1:]

    def error_text(self, lines: int = 30) -> str:
        """The cause first (the failing rank's message and traceback, or the rank that died and how), then what the
        other ranks said, then the last stderr lines."""
        errors = [event for event in self.events if event.get("event") == ERROR]
        parts = failure_report(errors, self.failures, self.returncode)
        cause = next((event for event in errors if parts and parts[0].startswith(f"rank {event.get('rank')}:")), None)
        if cause is not None:
            tail = cause.get("traceback") or cause.get("traceback_tail") or ""
            if isinstance(tail, list):
                tail = "\n".join(tail)
            if tail:
                parts.insert(1, str(tail).rstrip())
        if self.stderr_tail:
            parts.append("last lines on stderr:\n" + "\n".join(self.stderr_tail[-lines:]))
        if not parts:
            parts.append(f"the trainer exited with status {self.returncode} without an error event")
        return "\n".join(parts)


class TrainingJob:
    """The trainer subprocess in its own process group: events from stdout, a tail of stderr, and a graceful stop
    (the stop file, then SIGINT/CTRL_BREAK to the job, then a forced kill) that never leaves a process behind:
    torchrun's ranks included, even when torchrun died first (``process_tree.ProcessTree``).

    ``stop_file``: the run's stop file (``RunConfig.stop_path``); without one, :meth:`stop` starts with a signal.
    Every process of the job gets ``$IPA_TRAIN_JOB`` (how its ranks are found), ``$IPA_TRAIN_LAUNCHER_PID`` (this
    process: a rank whose launcher is gone ends itself, ``rank_guard``) and ``$IPA_TRAIN_FAILURES_FILE`` (where
    ``elastic_run`` records the exit codes of failed ranks)."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], cwd: os.PathLike | str, stderr_lines: int = 200,
                 log_path: Optional[os.PathLike | str] = None, stop_file: Optional[os.PathLike | str] = None,
                 platform: Optional[Platform] = None):
        self.command = list(command)
        self.platform = platform or current_platform()
        self.stop_file = Path(stop_file) if stop_file else None
        self.signalled: list[str] = []  # signals :meth:`stop` had to send (empty when the stop file sufficed)
        if self.stop_file is not None:
            _remove(self.stop_file)  # a stale request from an earlier run must not stop this one
        self.job_id = uuid.uuid4().hex
        self.failures_file = Path(tempfile.gettempdir()) / f"ipa-train-failures-{self.job_id}.json"  # read and removed by finish()
        env = {**env, JOB_ENV: self.job_id, LAUNCHER_PID_ENV: str(os.getpid()), FAILURES_ENV: str(self.failures_file)}
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None
        self.process = subprocess.Popen(
            self.command, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1,
            **self.platform.popen_options(),
        )
        self.pgid = self.process.pid  # POSIX: the child leads its own session and group
        self.tree = ProcessTree(self.process.pid, self.job_id, self.platform)
        self.events: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self.history: list[dict[str, Any]] = []
        self.stop_requested = False
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _write_log(self, stream: str, line: str) -> None:
        if self._log is not None:
            try:
                self._log.write(f"[{stream}] {line}\n")
                self._log.flush()
            except ValueError:  # closed
                pass

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self._write_log("stdout", line)
            event = parse_event(line)
            if event is not None:
                self.events.put(event)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            line = line.rstrip("\n")
            self._write_log("stderr", line)
            self.stderr_tail.append(line)

    def poll(self, timeout: float = 0.5) -> Iterator[dict[str, Any]]:
        """Events that arrived within ``timeout`` seconds (at least one wait, then whatever is queued)."""
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        self.history.append(event)
        yield event
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self.history.append(event)
            yield event

    def running(self) -> bool:
        return self.process.poll() is None

    def processes(self) -> list:
        """The job's live processes (psutil): the launched one, torchrun's ranks, anything they started."""
        return self.tree.alive()

    def group_alive(self) -> bool:
        """Whether any process of the job still runs (torchrun's ranks included, wherever they were re-parented)."""
        return bool(self.processes())

    def request_stop(self) -> None:
        """Asks for a graceful stop without waiting: writes the stop file (every rank checks it after each step and
        they agree to stop after the same one), or sends SIGINT to the group when the job has no stop file."""
        self.stop_requested = True
        if self.stop_file is not None:
            from ..fileio import atomic_write_json

            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.stop_file, {"requested_at": time.time(), "by": "ipa_train.jobs.launcher"})
        else:
            self._send_stop_signal()

    def _send_stop_signal(self) -> None:
        sig = self.platform.interrupt_signal()
        self.signalled.append("CTRL_BREAK" if self.platform.windows else "SIGINT")
        if self.platform.windows:
            try:  # reaches the new process group of the launched process (torchrun forwards nothing there)
                os.kill(self.process.pid, sig)
            except OSError:
                pass
        else:
            self.tree.signal_all(sig)  # torchrun and every rank: each rank leads its own session

    def stop(self, grace_s: float = 600.0, signal_grace_s: float = 60.0) -> None:
        """Graceful stop: :meth:`request_stop`, then wait up to ``grace_s`` seconds for the current step and the
        checkpoint. Only if the job is still running then: SIGINT to every process of the job (CTRL_BREAK on Windows),
        ``signal_grace_s`` more seconds, and a forced kill of whatever is left (SIGKILL; ``taskkill /T /F``)."""
        self.request_stop()
        if not self._wait(grace_s) and self.stop_file is not None:
            log_line = f"the trainer did not stop within {grace_s:.0f} s of the stop file; sending SIGINT"
            self.stderr_tail.append(f"[launcher] {log_line}")
            self._write_log("launcher", log_line)
            self._send_stop_signal()
            self._wait(signal_grace_s)
        self.kill()

    def _wait(self, timeout: float) -> bool:
        try:
            self.process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        """Ends every process of the job at once (the ranks too, even when torchrun is already gone)."""
        left = self.tree.kill()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        if left:
            line = f"could not end processes {[p.pid for p in left]} of the training job"
            self.stderr_tail.append(f"[launcher] {line}")
            self._write_log("launcher", line)

    def finish(self) -> JobOutcome:
        """Waits for the process, drains the readers and events, and classifies the outcome."""
        self.process.wait()
        if self.group_alive():  # a rank outlived torchrun: never leave it holding the GPU (nor our pipes open)
            self.kill()
        for reader in self._readers:
            reader.join(timeout=10)
        while True:
            try:
                self.history.append(self.events.get_nowait())
            except queue.Empty:
                break
        self.tree.close()
        if self.stop_file is not None:
            _remove(self.stop_file)  # unanswered (the job ended first) or already consumed
        failures = read_failures(self.failures_file)
        _remove(self.failures_file)
        if self._log is not None:
            self._log.close()
            self._log = None
        final = next((event for event in reversed(self.history) if event["event"] in FINAL_EVENTS), None)
        code = self.process.returncode
        if code == EXIT_OK and final is not None and final["event"] == FINISHED:
            status = "finished"
        elif final is not None and final["event"] == STOPPED:
            status = "stopped"
        else:
            status = "failed"
            # The first error is the rank that failed; the others usually report only the lost peer afterwards.
            final = next((event for event in self.history if event["event"] == ERROR), None)
        return JobOutcome(status, code, list(self.history), final, list(self.stderr_tail), failures)


# ----------------------------------------------------------------------------------------------- run folders


def run_cpu_job(run_json: os.PathLike | str, output_dir: os.PathLike | str, processes: int, on_event=None,
                threads: Optional[int] = None) -> tuple[JobOutcome, float]:
    """Runs the trainer (``ipa_train.train --config run_json``, :func:`build_command`) on CPU (under torchrun when ``processes`` > 1, gloo
    between the ranks) to its end, handing each event to ``on_event``; ``train.log`` goes to ``output_dir``.
    Ctrl-C stops the job gracefully (its ranks finish the step and write a checkpoint) and is raised again.
    Returns the outcome and the wall seconds. The demo's and the method study's launcher."""
    command = build_command(Path(run_json), processes=processes)
    env = build_env(gpus=(), processes=processes)
    # Several ranks on few cores: one thread each (more only adds synchronisation).
    env["OMP_NUM_THREADS"] = str(threads or (1 if processes > 1 else max(1, os.cpu_count() or 1)))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    job = TrainingJob(command, env, cwd=PACKAGE_PARENT, log_path=Path(output_dir) / "train.log")
    try:
        while job.running():
            for event in job.poll(0.5):
                if on_event is not None:
                    on_event(event)
    except KeyboardInterrupt:
        job.stop(grace_s=60)
        final = job.finish().final
        if on_event is not None and final is not None:
            on_event(final)  # the "stopped" event: its step, checkpoint and resume command
        raise
    outcome = job.finish()
    return outcome, time.perf_counter() - started


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def format_metrics(outcome: JobOutcome) -> str:
    """The finished event's metrics (or the last step's) as ``key: value`` lines."""
    lines = []
    final = outcome.final or {}
    if final.get("lora_path"):
        lines.append(f"lora: {final['lora_path']}")
    metrics = final.get("metrics") if isinstance(final.get("metrics"), dict) else None
    if metrics is None:
        last = next((event for event in reversed(outcome.events) if event.get("event") == STEP), None)
        metrics = {key: value for key, value in (last or {}).items() if key != "event"}
    for key, value in metrics.items():
        lines.append(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")
    return "\n".join(lines)
