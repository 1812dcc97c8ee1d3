"""Windows, checked on any machine: the platform choice is a pure function of ``os.name``; the command lines,
creation flags, stop signal and last-resort kill the launcher would use there are checked without running them;
several GPUs are refused before anything loads; the node calls no POSIX-only function."""

from __future__ import annotations

import ast
import io
import sys

import pytest

from conftest import REPO_ROOT
from ipa_train.jobs import contract, launcher, process_tree
from ipa_train.jobs.config import ConfigError
from ipa_train.jobs.process_tree import CREATE_NEW_PROCESS_GROUP, CTRL_BREAK_EVENT, Platform, current_platform
from ipa_train.training.distributed import process_group_backend

WINDOWS, POSIX = Platform(windows=True), Platform(windows=False)


def test_the_platform_is_a_pure_function_of_os_name():
    assert current_platform("nt") == WINDOWS and current_platform("posix") == POSIX
    assert current_platform() == (WINDOWS if sys.platform == "win32" else POSIX)
    assert WINDOWS.popen_options() == {"creationflags": CREATE_NEW_PROCESS_GROUP} == {"creationflags": 0x200}
    assert POSIX.popen_options() == {"start_new_session": True}
    assert WINDOWS.tree_kill_command(4242) == ["taskkill", "/T", "/F", "/PID", "4242"] and POSIX.tree_kill_command(4242) is None
    assert WINDOWS.interrupt_signal() == CTRL_BREAK_EVENT == 1 and POSIX.interrupt_signal() == 2
    if sys.platform == "win32":  # the constants this module spells out are the interpreter's own
        import signal
        import subprocess

        assert CREATE_NEW_PROCESS_GROUP == subprocess.CREATE_NEW_PROCESS_GROUP and CTRL_BREAK_EVENT == signal.CTRL_BREAK_EVENT


def test_one_gpu_or_the_cpu_is_a_plain_process_on_both_platforms():
    for platform in (WINDOWS, POSIX):
        for gpus in ([], [0], [3]):
            platform.check_processes(1, gpus)  # never refused
        assert platform.distributed_env(1) == {}
    command = launcher.build_command(r"C:\ComfyUI\output\ipa_runs\h-1\run.json", 1, python=r"C:\ComfyUI\python_embeded\python.exe")
    assert command == [r"C:\ComfyUI\python_embeded\python.exe", launcher.START_SCRIPT, "ipa_train.train", "--config",
                       r"C:\ComfyUI\output\ipa_runs\h-1\run.json"]  # a script by path: the embedded Python ignores PYTHONPATH


def test_several_gpus_on_windows_are_refused_before_anything_loads():
    with pytest.raises(launcher.LaunchError, match="needs NCCL, which PyTorch does not provide on Windows.*gpus='0'.*WSL2"):
        launcher.check_launch(2, [0, 1], WINDOWS)
    launcher.check_launch(2, [0, 1], POSIX)
    launcher.check_launch(2, [], WINDOWS)  # CPU processes talk gloo: allowed
    assert WINDOWS.distributed_env(2) == {"USE_LIBUV": "0"} and POSIX.distributed_env(2) == {}
    env = launcher.build_env({"PATH": "x"}, gpus=[], processes=2, platform=WINDOWS)
    assert env["USE_LIBUV"] == "0" and env["PYTHONIOENCODING"] == "utf-8"
    # a hand-made torchrun on Windows GPUs: refused when the process group would be made, before any weight loads
    with pytest.raises(ConfigError, match="NCCL, which PyTorch does not provide on Windows"):
        process_group_backend("cuda", os_name="nt")
    assert process_group_backend("cuda", os_name="posix") == "nccl" and process_group_backend("cpu", os_name="nt") == "gloo"


class _RecordedPopen:
    """Stands in for subprocess.Popen: records the call, runs nothing."""

    calls: list = []

    def __init__(self, command, **options):
        _RecordedPopen.calls.append((command, options))
        self.pid = 2**22 + 12345  # no such process
        self.stdout, self.stderr = io.StringIO(""), io.StringIO("")
        self.returncode = None

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        self.returncode = 3
        return 3


def test_the_windows_launch_stop_and_kill(tmp_path, monkeypatch):
    ran, signalled = [], []
    monkeypatch.setattr(launcher.subprocess, "Popen", _RecordedPopen)
    monkeypatch.setattr(process_tree.subprocess, "run", lambda command, **options: ran.append(command))
    monkeypatch.setattr(launcher.os, "kill", lambda pid, sig: signalled.append((pid, sig)))
    monkeypatch.setattr(process_tree.os, "killpg", lambda *args: pytest.fail("killpg on Windows"), raising=False)
    command = launcher.build_command(tmp_path / "run.json", 1)
    job = launcher.TrainingJob(command, {"PATH": "x"}, cwd=tmp_path, stop_file=tmp_path / "STOP", platform=WINDOWS)
    (recorded, options), = _RecordedPopen.calls
    assert recorded == command and options["creationflags"] == CREATE_NEW_PROCESS_GROUP and "start_new_session" not in options
    assert options["env"][contract.JOB_ENV] == job.job_id and options["encoding"] == "utf-8"
    job.request_stop()  # the graceful path: the stop file, as everywhere
    assert (tmp_path / "STOP").is_file() and signalled == [] and ran == []
    job._send_stop_signal()  # the grace ran out: CTRL_BREAK to the job's new process group
    assert signalled == [(job.process.pid, CTRL_BREAK_EVENT)] and job.signalled == ["CTRL_BREAK"]
    job.kill()  # the last resort
    assert ran == [["taskkill", "/T", "/F", "/PID", str(job.process.pid)]]


POSIX_ONLY = {"killpg", "getpgid", "setsid", "setpgrp", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "preexec_fn", "fork",
              "getuid", "resource", "fcntl", "pwd", "grp", "termios"}


def test_the_nodes_use_no_posix_only_function():
    """ComfyUI's nodes run on Windows too: POSIX-only calls live behind Platform in ipa_train.training only."""
    found = []
    for path in sorted((REPO_ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found += [f"{path.name}: import {a.name}" for a in node.names if a.name.split(".")[0] in POSIX_ONLY]
            elif name in POSIX_ONLY:
                found.append(f"{path.name}:{node.lineno}: {name}")
    assert found == []
