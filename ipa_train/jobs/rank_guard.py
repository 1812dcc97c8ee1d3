"""A training process ends itself when whoever launched it is gone, so a killed ComfyUI or torchrun never leaves a
rank holding the GPU. A watchdog thread (portable: Linux, macOS, Windows) watches

- the launcher (``$IPA_TRAIN_LAUNCHER_PID``, set by ``launcher.TrainingJob``: the ComfyUI process, the demo), and
- under torchrun (``$TORCHELASTIC_RUN_ID`` set), the direct parent: torchrun's agent.

When one of them disappears it asks for a graceful stop (the run finishes its step and writes a checkpoint) and,
if the process is still alive ``grace_s`` seconds later, ends it. A process started from a shell without either
(``nohup python -m ipa_train.train ...``) is left alone: closing the terminal must not stop it.

Why not ``PR_SET_PDEATHSIG``: it exists on Linux only, fires when the parent *thread* ends, and cannot watch the
launcher above torchrun; the thread covers all three cases.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Optional

from .contract import EXIT_ORPHANED, GRACE_ENV, LAUNCHER_PID_ENV

DEFAULT_GRACE_S = 300.0  # one 14B step (about 45 s) and a checkpoint fit well inside

log = logging.getLogger("ipa_train.train")


class _Watched:
    """A process identified by pid and creation time, so a reused pid is not mistaken for it."""

    def __init__(self, pid: int, what: str):
        self.pid, self.what = pid, what
        self.created = _create_time(pid)

    def alive(self) -> bool:
        if self.created is not None:
            return _create_time(self.pid) == self.created
        if os.name == "nt":  # no psutil: Windows has no harmless probe (os.kill(pid, 0) would terminate it)
            return True
        try:  # no psutil: POSIX existence check
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except (PermissionError, OSError):
            return True


def _create_time(pid: int) -> Optional[float]:
    try:
        import psutil
    except ImportError:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its own parent
            return -1.0
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return -1.0  # already gone: never equal to a live process's time
    except psutil.AccessDenied:
        return None


def watched_processes(environ: Optional[dict] = None) -> list[_Watched]:
    environ = os.environ if environ is None else environ
    watched = []
    launcher = (environ.get(LAUNCHER_PID_ENV) or "").strip()
    if launcher.isdigit() and int(launcher) != os.getpid():
        watched.append(_Watched(int(launcher), "the launcher"))
    if environ.get("TORCHELASTIC_RUN_ID"):
        parent = os.getppid()
        if parent > 1 and not any(w.pid == parent for w in watched):
            watched.append(_Watched(parent, "torchrun (this rank's parent)"))
    return watched


def install(on_orphaned: Callable[[str], None], grace_s: Optional[float] = None, poll_s: float = 0.5,
            environ: Optional[dict] = None) -> Optional[threading.Thread]:
    """Starts the watchdog (a daemon thread); ``on_orphaned(reason)`` asks the run to stop gracefully. Returns the
    thread, or ``None`` when there is nothing to watch."""
    watched = watched_processes(environ)
    if not watched:
        return None
    if grace_s is None:
        try:
            grace_s = float((environ or os.environ).get(GRACE_ENV, DEFAULT_GRACE_S))
        except ValueError:
            grace_s = DEFAULT_GRACE_S
    parent_at_start = os.getppid()
    parent_watched = any(w.pid == parent_at_start for w in watched)

    def orphaned() -> Optional[str]:
        for w in watched:
            if not w.alive():
                return w.what
        # POSIX re-parents an orphan at once: this also catches a dead parent that is not yet reaped (a zombie).
        if os.name != "nt" and parent_watched and os.getppid() != parent_at_start:
            return "torchrun (this rank's parent)"
        return None

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            what = orphaned()
            if what is None:
                continue
            log.warning("%s is gone: stopping after this step (checkpoint), or in %.0f s at the latest", what, grace_s)
            try:
                on_orphaned(f"{what} is gone")
            finally:
                time.sleep(grace_s)
                log.error("still running %.0f s after %s went away: exiting without a checkpoint", grace_s, what)
                os._exit(EXIT_ORPHANED)

    thread = threading.Thread(target=watch, name="ipa-rank-guard", daemon=True)
    thread.start()
    return thread
