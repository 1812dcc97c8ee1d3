"""Naming what made a run fail: the root cause of an exception (not the library error it surfaced as), and which
rank of a job died first and how (a signal, an exit code), without blaming a survivor that only lost its peer.

Standard library only: the trainer uses it even when its own imports fail, the launcher without torch."""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from .contract import ERROR, EXIT_ERROR, EXIT_STOPPED

# What a rank says when another rank died: consequences, never the cause.
LOST_PEER_MARKERS = (
    "connection reset by peer", "connection closed by peer", "broken pipe", "connection refused", "socket timeout",
    "nccl communicator was aborted", "remote process exited or there was a network error", "watchdog caught collective",
    "distnetworkerror", "unhandled system error", "ncclremoteerror", "connection timed out",
)

# Likely causes of a death by signal (the rank could not write anything itself).
SIGNAL_CAUSES = {
    "SIGKILL": "usually the out-of-memory killer (the machine ran out of RAM; `dmesg` shows 'Out of memory: Killed process'), "
               "or someone ran kill -9. Lower batch_size, frames or resolution, or free memory",
    "SIGSEGV": "a crash in native code (a GPU driver, CUDA or library bug); update the driver and PyTorch",
    "SIGABRT": "aborted by a native library (often a CUDA or NCCL error printed just before, in the log)",
    "SIGBUS": "a bus error, often a too small shared memory (/dev/shm; in Docker use --shm-size)",
    "SIGTERM": "asked to stop from outside (a scheduler, torchrun ending the other ranks)",
    "SIGINT": "interrupted (Ctrl-C)",
}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except (ValueError, AttributeError):
        return f"signal {number}"


def describe_exit(code: Optional[int]) -> str:
    """``"killed by SIGKILL (exit code -9): usually ..."``, ``"exited with status 1"``, ..."""
    if code is None:
        return "did not exit"
    number = -code if code < 0 else (code - 128 if 128 < code < 160 else None)  # 137 = 128 + 9 from a shell
    if number is not None:
        name = signal_name(number)
        cause = SIGNAL_CAUSES.get(name)
        return f"was killed by {name} (exit code {code})" + (f": {cause}" if cause else "")
    return f"exited with status {code}"


def is_lost_peer(message: str) -> bool:
    """Whether a rank's error is only the consequence of a peer's death: a broken connection, or gloo's transport
    "Read error" / "Write error" (what a survivor of a SIGKILLed rank reports on CPU)."""
    text = message.lower()
    if "gloo" in text and ("read error" in text or "write error" in text):
        return True
    return any(marker in text for marker in LOST_PEER_MARKERS)


# ----------------------------------------------------------------------------------------------- root cause


def innermost(exc: BaseException) -> BaseException:
    """The first exception of a chain (``raise ... from``, or raised while handling another)."""
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def hint_for(exc: BaseException, text: str) -> Optional[str]:
    """What to do about a known environment problem."""
    lowered = text.lower()
    if "torchvision" in lowered:
        return (f"torchvision in the trainer's Python ({sys.executable}) does not match its torch (a build for another "
                "torch or CUDA version): install the torchvision made for this torch, or uninstall torchvision (the "
                "trainer does not need it)")
    if isinstance(exc, ImportError) or "could not import module" in lowered or "failed to import" in lowered:
        return f"a library does not import in the trainer's Python ({sys.executable}): reinstall requirements.txt there"
    return None


def root_cause(exc: BaseException) -> Optional[dict[str, str]]:
    """``{"root_cause", "where", "hint"}`` when ``exc`` surfaced from an earlier exception (the usual shape of an
    import failure inside diffusers or transformers), else ``None``."""
    root = innermost(exc)
    if root is exc:
        return None
    frames = traceback.extract_tb(root.__traceback__)
    where = f"{frames[-1].filename}, line {frames[-1].lineno}" if frames else ""
    text = f"{type(root).__name__}: {root}"
    info = {"root_cause": text, "where": where}
    hint = hint_for(root, text + " " + where)
    if hint:
        info["hint"] = hint
    return info


def report_startup_failure(exc: BaseException) -> int:
    """The trainer could not even import its own modules: the ``error`` event (with the root cause) on stdout,
    the traceback on stderr; returns the exit status 1."""
    rank = int(os.environ.get("RANK", "0") or 0)
    event: dict[str, Any] = {"event": ERROR, "rank": rank, "message": f"{type(exc).__name__}: {exc}",
                             "traceback": "\n".join(traceback.format_exc().strip().splitlines()[-12:])}
    event.update(root_cause(exc) or {})
    if "hint" not in event:
        hint = hint_for(exc, event["message"])
        if hint:
            event["hint"] = hint
    print(traceback.format_exc(), file=sys.stderr, flush=True)
    print(json.dumps(event), flush=True)
    return EXIT_ERROR


# ----------------------------------------------------------------------------------------------- failed ranks


@dataclass
class RankFailure:
    rank: int
    exitcode: int
    pid: Optional[int] = None


def read_failures(path: Optional[os.PathLike | str]) -> list[RankFailure]:
    """The failed ranks ``elastic_run`` recorded (empty when none, or no such file)."""
    if not path:
        return []
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return []
    out = []
    for item in data.get("failures", []) if isinstance(data, dict) else []:
        try:
            out.append(RankFailure(int(item["rank"]), int(item["exitcode"]), item.get("pid")))
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(out, key=lambda failure: failure.rank)


def stopped_exit_status(failures: Iterable[RankFailure]) -> bool:
    """Whether torchrun's failures are only a stop: ranks that exited 3, and slower ranks that torchrun then
    ended with SIGTERM (the first rank to exit non-zero makes it stop the others)."""
    codes = [failure.exitcode for failure in failures]
    allowed = {EXIT_STOPPED, -int(signal.SIGTERM), -int(signal.SIGINT)}
    return bool(codes) and EXIT_STOPPED in codes and all(code in allowed for code in codes)


def _event_text(event: Mapping[str, Any]) -> str:
    rank = event.get("rank", "?")
    message = str(event.get("message", "error"))
    if event.get("root_cause"):
        where = f" ({event['where']})" if event.get("where") else ""
        return f"rank {rank}: {event['root_cause']}{where}\n  (it surfaced as {message.splitlines()[0]})"
    return f"rank {rank}: {message}"


def _lost_peer(event: Mapping[str, Any]) -> bool:
    return bool(event.get("lost_peer")) or is_lost_peer(str(event.get("message", "")))


def failure_report(errors: Sequence[Mapping[str, Any]], failures: Sequence[RankFailure], returncode: Optional[int]) -> list[str]:
    """Lines that explain a failed job, the cause first.

    Order of blame: an error a rank reported that is not a lost connection; then a rank that died by a signal or
    exited non-zero without reporting anything (a SIGKILL leaves no message); then the first error reported; then
    the launched process's own exit status. Everything else follows as "then ..."."""
    reported = {int(event["rank"]) for event in errors if isinstance(event.get("rank"), int)}
    real = [event for event in errors if not _lost_peer(event)]
    silent = [f for f in failures if f.rank not in reported and f.exitcode not in (EXIT_STOPPED, -int(signal.SIGTERM))]
    silent.sort(key=lambda f: (f.exitcode >= 0, f.rank))  # signals first: a crash explains an exit status 1 of a peer
    lines: list[str] = []
    cause_event = None
    if real:
        cause_event = real[0]
        lines.append(_event_text(cause_event))
    elif silent:
        first = silent[0]
        lines.append(f"rank {first.rank} {describe_exit(first.exitcode)}; it wrote no error message")
    elif errors:
        cause_event = errors[0]
        lines.append(_event_text(cause_event))
    elif returncode not in (None, 0):
        lines.append(f"the trainer {describe_exit(returncode)}; it wrote no error message")
    if cause_event is not None and cause_event.get("hint"):
        lines.append(f"what to do: {cause_event['hint']}")
    for event in errors:
        if event is not cause_event:
            lost = " (a consequence: it lost its connection to the failed rank)" if _lost_peer(event) else ""
            lines.append(f"then rank {event.get('rank', '?')}: {str(event.get('message', 'error')).splitlines()[0]}{lost}")
    for failure in failures:
        if not lines or not lines[0].startswith(f"rank {failure.rank} "):
            if failure.rank not in reported:
                lines.append(f"rank {failure.rank} {describe_exit(failure.exitcode).split(':')[0]}")
    return lines
