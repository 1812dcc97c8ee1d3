"""The trainer's processes as one unit on every platform: how to start them in their own group, how to interrupt
them, and how to end every one of them, torchrun's ranks included.

torchrun (torch 2.13) starts each rank in its own session, so signalling torchrun's process group misses the ranks,
and when torchrun dies first they are re-parented and no longer its children. So every process of a job carries a
marker in its environment (``$IPA_TRAIN_JOB``, inherited by torchrun's ranks), the tree is recorded while it runs,
and ending the job ends whatever carries the marker. Done with psutil (a ComfyUI requirement too), which reads
process trees and environments on Linux, macOS and Windows alike.

The platform decisions are pure functions of ``os.name`` (tests check both sides without running anything).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from .contract import JOB_ENV

CREATE_NEW_PROCESS_GROUP = 0x00000200  # subprocess.CREATE_NEW_PROCESS_GROUP, defined on Windows only
CTRL_BREAK_EVENT = 1  # signal.CTRL_BREAK_EVENT, defined on Windows only


MAX_PATH = 260  # Windows' path limit in characters, the terminating NUL included, unless long paths are enabled


class LaunchRefused(ValueError):
    """A launch this platform cannot do; the message says what would work."""


@dataclass(frozen=True)
class Platform:
    """What differs between POSIX and Windows for launching and stopping the trainer."""

    windows: bool
    long_paths: bool = False  # Windows with LongPathsEnabled: no MAX_PATH limit for Python

    def popen_options(self) -> dict:
        """Windows: a new process group (so CTRL_BREAK reaches only the job); POSIX: a new session and group."""
        return {"creationflags": CREATE_NEW_PROCESS_GROUP} if self.windows else {"start_new_session": True}

    def tree_kill_command(self, pid: int) -> Optional[list[str]]:
        """The last resort on Windows (the whole tree, forced); POSIX signals the group instead."""
        return ["taskkill", "/T", "/F", "/PID", str(int(pid))] if self.windows else None

    def interrupt_signal(self) -> int:
        """What the launcher sends when the stop file was not acted on: SIGINT to the group, CTRL_BREAK on Windows
        (the only console event a new process group receives; the trainer handles SIGBREAK like SIGINT)."""
        return CTRL_BREAK_EVENT if self.windows else int(signal.SIGINT)

    def check_processes(self, processes: int, gpus: Sequence[int]) -> None:
        """Several GPUs need NCCL, which PyTorch does not build for Windows: refused before anything loads."""
        if self.windows and processes > 1 and len(gpus) > 1:
            raise LaunchRefused(
                f"training on {len(gpus)} GPUs needs NCCL, which PyTorch does not provide on Windows (gloo between GPUs "
                "is not supported there either). Use one GPU (its device id, e.g. gpus='0'), or train under WSL2 or Linux for several GPUs."
            )

    def check_path_length(self, path: str, what: str) -> None:
        """Windows without long-path support cannot create a file whose path has MAX_PATH (260) characters or more:
        refused before the run starts, not when its first checkpoint is written hours later."""
        if not self.windows or self.long_paths or len(path) < MAX_PATH:
            return
        raise LaunchRefused(
            f"{what} would be {len(path)} characters long ({path}), and Windows allows at most {MAX_PATH - 1} "
            f"(MAX_PATH {MAX_PATH}) unless long paths are enabled. Use a shorter lora_name or a shorter output folder "
            "(ComfyUI's --output-directory), or enable long paths: set LongPathsEnabled to 1 under "
            "HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Control\\FileSystem (administrator), then restart ComfyUI."
        )

    def distributed_env(self, processes: int) -> dict[str, str]:
        """Environment for several processes: PyTorch's Windows wheels lack libuv, which torchrun's store asks for
        by default ("use_libuv was requested but PyTorch was build without libuv support")."""
        return {"USE_LIBUV": "0"} if self.windows and processes > 1 else {}


def _windows_long_paths() -> bool:
    """Whether Windows lets this Python use paths past MAX_PATH (the LongPathsEnabled registry value; Python's own
    manifest declares itself long-path aware)."""
    try:
        import winreg

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return int(winreg.QueryValueEx(key, "LongPathsEnabled")[0]) == 1
    except (ImportError, OSError, ValueError):
        return False


def current_platform(os_name: Optional[str] = None) -> Platform:
    windows = (os.name if os_name is None else os_name) == "nt"
    return Platform(windows=windows, long_paths=windows and os.name == "nt" and _windows_long_paths())


# ----------------------------------------------------------------------------------------------- the tree


def _psutil():
    import psutil

    return psutil


class ProcessTree:
    """Every process of one job: the launched root, its descendants as seen while it runs, and anything that
    carries the job's marker (ranks re-parented after torchrun died)."""

    def __init__(self, root_pid: int, job_id: str, platform: Optional[Platform] = None, watch_s: float = 1.0):
        self.root_pid = root_pid
        self.job_id = job_id
        self.platform = platform or current_platform()
        self._known: dict[int, object] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        psutil = _psutil()
        try:
            self._root = psutil.Process(root_pid)
            self._known[root_pid] = self._root
        except psutil.NoSuchProcess:
            self._root = None
        self._watcher = threading.Thread(target=self._watch, args=(watch_s,), name="ipa-process-tree", daemon=True)
        self._watcher.start()

    def _watch(self, period: float) -> None:
        """Records the tree while the root lives (one scan a second); afterwards the job marker finds the rest."""
        while not self._stop.wait(period):
            if not self.refresh():
                return

    def close(self) -> None:
        self._stop.set()

    def refresh(self) -> bool:
        """Records the root's current descendants (while torchrun lives, its ranks are its children); returns
        whether the root still runs."""
        psutil = _psutil()
        if self._root is None:
            return False
        try:
            children = self._root.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
        with self._lock:
            for child in children:
                self._known.setdefault(child.pid, child)
        return True

    def _marked(self) -> list:
        """Processes whose environment carries this job's marker (the ranks, wherever they were re-parented)."""
        psutil = _psutil()
        own = os.getpid()
        marked = []
        for process in psutil.process_iter():
            if process.pid == own:
                continue
            try:
                if process.environ().get(JOB_ENV) == self.job_id:
                    marked.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
        return marked

    def alive(self, scan: bool = True) -> list:
        """The job's processes still running (zombies excluded)."""
        psutil = _psutil()
        with self._lock:
            candidates = dict(self._known)
        if scan:
            for process in self._marked():
                candidates.setdefault(process.pid, process)
        running = []
        for process in candidates.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return running

    def signal_all(self, sig: int) -> None:
        """``sig`` to the root's group and to every process of the job (each rank leads its own session)."""
        group_signalled = False
        if not self.platform.windows:
            try:
                os.killpg(self.root_pid, sig)
                group_signalled = True
            except (ProcessLookupError, PermissionError):
                pass
        for process in self.alive():
            try:
                # Once each: a second SIGINT can land while a process is already exiting, after Python restored the
                # default handler, and kill it (exit -2) instead of letting it finish its graceful stop.
                if group_signalled and os.getpgid(process.pid) == self.root_pid:
                    continue
                process.send_signal(sig)
            except Exception:  # noqa: BLE001 - gone meanwhile, or not ours
                continue

    def kill(self, timeout: float = 10.0) -> list:
        """Ends every process of the job, forcibly; returns those still alive after ``timeout`` (normally none)."""
        psutil = _psutil()
        self.refresh()
        command = self.platform.tree_kill_command(self.root_pid)
        if command is not None:
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        elif hasattr(os, "killpg"):
            try:
                os.killpg(self.root_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        remaining = self.alive()
        while remaining and time.monotonic() < deadline:
            for process in remaining:
                try:
                    process.kill()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            # Never wait on the root here: psutil would reap it and its Popen would lose the exit status.
            others = [process for process in remaining if process.pid != self.root_pid]
            if others:
                psutil.wait_procs(others, timeout=0.5)
            else:
                time.sleep(0.05)
            remaining = self.alive()
        return remaining
