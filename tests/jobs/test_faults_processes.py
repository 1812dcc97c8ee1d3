"""Processes under faults: no rank outlives its job (torchrun killed first, the launcher gone), the rank that died
is named with its signal and likely cause, and a trainer that cannot import its libraries reports the root cause."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from ipa_train.jobs import contract, failures, rank_guard
from ipa_train.jobs.launcher import TrainingJob, build_command, build_env
from support.trainer_helpers import REPO_ROOT, make_dataset, process_gone, subprocess_env, tiny_config

FAKE = str(Path(__file__).parents[1] / "support" / "fake_trainer_pkg")


def _drain(job, until, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.running():
        for event in job.poll(0.2):
            if until(event):
                return event
    raise AssertionError(f"no such event within {timeout} s; stderr: {list(job.stderr_tail)[-20:]}")


def _ranks(job, count, timeout=60):
    """{rank: psutil.Process} of the job's rank processes (found by the job marker, as the launcher finds them):
    torchrun's direct children (whatever a rank starts inherits RANK too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ranks = {}
        for process in job.processes():
            try:
                env, parent = process.environ(), process.ppid()
            except psutil.Error:
                continue
            if "RANK" in env and "LOCAL_RANK" in env and parent == job.process.pid:
                ranks[int(env["RANK"])] = process
        if len(ranks) == count:
            return ranks
        time.sleep(0.1)
    raise AssertionError(f"the job's {count} ranks did not start")


def _gone_within(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(process_gone(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def test_no_rank_survives_when_torchrun_is_killed_first(tmp_path):
    """torch 2.13's torchrun starts every rank in its own session: killing torchrun left both ranks training
    while group_alive() said False. Ranks here are stand-ins that ignore their parent's death, so it is the
    launcher that must find them (job marker) and end them."""
    config = {"dataset": "x", "base_model": "tiny", "output_dir": str(tmp_path / "run"), "steps": 100000, "fake_mode": "slow"}
    (tmp_path / "run.json").write_text(json.dumps(config))
    job = TrainingJob(build_command(tmp_path / "run.json", 2, module="fake_trainer"), build_env(gpus=[], pythonpath=[FAKE]),
                      cwd=tmp_path, log_path=tmp_path / "train.log")
    try:
        ranks = _ranks(job, 2)
        workers = [child.pid for process in ranks.values() for child in process.children()]
        assert all(process.ppid() == job.process.pid for process in ranks.values())
        os.kill(job.process.pid, signal.SIGKILL)  # torchrun dies first: its ranks are orphaned
        job.process.wait(30)
        assert all(process.is_running() for process in ranks.values())  # the bug's situation: still running
        assert job.group_alive()  # ... and the launcher sees them, wherever they were re-parented
        job.finish()
        assert _gone_within([p.pid for p in ranks.values()] + workers, 5)
        assert not job.group_alive()
    finally:
        job.kill()


def test_a_rank_killed_with_sigkill_is_named(tmp_path):
    """Two real ranks; rank 1 is SIGKILLed mid-run (what the out-of-memory killer does) and writes nothing. The
    report names rank 1, the signal and the likely cause, not rank 0's broken connection."""
    data = make_dataset(tmp_path / "ds", preferred=2)
    config = tiny_config(data, tmp_path / "out", steps=100000)
    config.save(tmp_path / "run.json")
    job = TrainingJob(build_command(tmp_path / "run.json", 2), subprocess_env(), cwd=REPO_ROOT, log_path=tmp_path / "train.log")
    try:
        _drain(job, lambda event: event["event"] == "step")
        ranks = _ranks(job, 2)
        ranks[1].send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 120
        while job.running() and time.monotonic() < deadline:
            list(job.poll(0.2))
        outcome = job.finish()
    finally:
        job.kill()
    assert outcome.status == "failed"
    assert any(f.rank == 1 and f.exitcode == -signal.SIGKILL for f in outcome.failures), outcome.failures
    headline = outcome.headline()
    assert headline.startswith("rank 1 was killed by SIGKILL (exit code -9): usually the out-of-memory killer"), headline
    assert "Connection" not in headline and "rank 0" not in headline
    text = outcome.error_text()
    for event in outcome.events:  # whatever rank 0 reported comes after, marked as a consequence
        if event["event"] == "error" and failures.is_lost_peer(event["message"]):
            assert "a consequence: it lost its connection" in text
    assert _gone_within([p.pid for p in ranks.values()], 5)


def test_failure_report_blames_the_cause_not_the_survivor():
    lost = {"event": "error", "rank": 0, "message": "RuntimeError: [../third_party/gloo/transport/tcp/pair.cc:534] Connection closed by peer"}
    real = {"event": "error", "rank": 2, "message": "ValueError: bad sample"}
    killed = failures.RankFailure(1, -9)
    assert failures.failure_report([lost], [killed], 1)[0].startswith("rank 1 was killed by SIGKILL")
    assert failures.failure_report([lost, real], [killed], 1)[0] == "rank 2: ValueError: bad sample"
    assert failures.failure_report([lost], [], 1)[0].startswith("rank 0: RuntimeError")  # nothing better known
    assert failures.failure_report([], [failures.RankFailure(0, 3), failures.RankFailure(1, -11)], 1)[0].startswith(
        "rank 1 was killed by SIGSEGV")
    assert failures.failure_report([], [], -9) == [
        "the trainer was killed by SIGKILL (exit code -9): " + failures.SIGNAL_CAUSES["SIGKILL"] + "; it wrote no error message"]
    assert failures.describe_exit(137).startswith("was killed by SIGKILL")  # 128 + 9, as a shell reports it
    assert failures.stopped_exit_status([failures.RankFailure(0, -15), failures.RankFailure(1, 3)])
    assert not failures.stopped_exit_status([failures.RankFailure(0, 3), failures.RankFailure(1, -9)])


def test_a_survivors_error_says_it_lost_a_peer():
    """training/cli.py's error event: a lost connection on a rank of a job is marked (``lost_peer``) and says a peer
    was lost; the same text in a one-process run, and any other error, stays this rank's own."""
    from ipa_train.jobs.config import ConfigError
    from ipa_train.training.cli import error_fields
    from ipa_train.training.distributed import Dist

    gloo = RuntimeError("[../third_party/gloo/transport/tcp/pair.cc:546] Read error [127.0.0.1]:41234: Connection reset by peer")
    assert failures.is_lost_peer(str(gloo)) and failures.is_lost_peer("[gloo/transport/tcp/pair.cc:1] Read error [::1]:5")
    assert not failures.is_lost_peer("OSError: read error on /data/sample.safetensors")
    fields = error_fields(gloo, Dist(rank=0, world=2), user_error=False)
    assert fields["lost_peer"] is True and fields["rank"] == 0
    assert fields["message"].startswith("rank 0 lost its connection to another rank, which failed or was killed first")
    assert fields["message"].endswith("RuntimeError: " + str(gloo))
    assert "lost_peer" not in error_fields(gloo, Dist(rank=0, world=1), user_error=False)
    own = error_fields(ValueError("bad sample"), Dist(rank=1, world=2), user_error=False)
    assert own["message"] == "ValueError: bad sample" and "lost_peer" not in own
    assert "lost_peer" not in error_fields(ConfigError("connection refused by the config"), Dist(rank=0, world=2), user_error=True)
    # the launcher's report puts the marked event after the cause, as a consequence
    lines = failures.failure_report([dict(fields, event="error")], [failures.RankFailure(1, -9)], 1)
    assert lines[0].startswith("rank 1 was killed by SIGKILL") and "(a consequence: it lost its connection" in lines[1]


def test_bare_torchrun_marks_the_survivors_error_as_a_lost_peer(tmp_path):
    """The README's cluster command (torchrun -m ipa_train.train, no launcher): rank 1 is SIGKILLed after a step.
    What rank 0 reports says it lost a peer, never that rank 0 failed."""
    data = make_dataset(tmp_path / "ds", preferred=2)
    tiny_config(data, tmp_path / "out", steps=100000).save(tmp_path / "run.json")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "ipa_train.train",
               "--config", str(tmp_path / "run.json")]
    torchrun = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        events = []
        for line in torchrun.stdout:
            events.append(json.loads(line)) if line.startswith("{") else None
            if events and events[-1]["event"] == "step":
                break
        ranks = {int(p.environ()["RANK"]): p for p in psutil.Process(torchrun.pid).children() if "RANK" in p.environ()}
        ranks[1].send_signal(signal.SIGKILL)
        out, _ = torchrun.communicate(timeout=180)
    finally:
        torchrun.kill()
    events += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    errors = [event for event in events if event["event"] == "error"]
    assert torchrun.returncode != 0 and errors, events[-3:]
    for error in errors:
        assert error["rank"] == 0 and error["lost_peer"] is True, error
        assert error["message"].startswith("rank 0 lost its connection to another rank"), error["message"]


# ------------------------------------------------------------------------------------------------ the rank guard

GUARDED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ipa_train.jobs import rank_guard
    marker = Path(sys.argv[1])
    rank_guard.install(lambda reason: marker.write_text(reason), grace_s=0.3, poll_s=0.05)
    print("ready", flush=True)
    time.sleep(120)
""")


def _guarded(tmp_path, env_extra, parent_argv=None):
    env = dict(subprocess_env(), **env_extra)
    marker = tmp_path / "orphaned.txt"
    return [sys.executable, "-c", GUARDED, str(marker)], env, marker


def test_a_rank_ends_itself_when_torchrun_dies(tmp_path):
    command, env, marker = _guarded(tmp_path, {"TORCHELASTIC_RUN_ID": "test"})
    middle = subprocess.Popen(  # stands for torchrun: the guarded process is its child
        [sys.executable, "-c", "import subprocess, sys, time; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); time.sleep(120)", *command],
        env=env, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        child = int(middle.stdout.readline())
        psutil.Process(child)  # running
        time.sleep(0.5)
        middle.kill()
        middle.wait(10)
        assert _gone_within([child], 5)
        assert marker.read_text() == "torchrun (this rank's parent) is gone"  # a graceful stop was asked for first
    finally:
        middle.kill()


def test_a_process_ends_itself_when_its_launcher_dies(tmp_path):
    launcher_stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    command, env, marker = _guarded(tmp_path, {contract.LAUNCHER_PID_ENV: str(launcher_stand_in.pid)})
    guarded = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert guarded.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        assert guarded.poll() is None  # the launcher lives: nothing happens
        launcher_stand_in.kill()
        launcher_stand_in.wait(10)
        assert guarded.wait(5) == contract.EXIT_ORPHANED
        assert marker.read_text() == "the launcher is gone"
    finally:
        guarded.kill()
        launcher_stand_in.kill()


def test_a_process_started_from_a_shell_is_not_watched(monkeypatch):
    assert rank_guard.watched_processes({}) == []  # nohup python -m ipa_train.train ...: closing the terminal is fine
    # Under torchrun the parent is watched (a parent pid of 1, an orphan already, is not: fix it for this check,
    # since the test process itself may have been reparented, e.g. when started with nohup).
    monkeypatch.setattr(rank_guard.os, "getppid", lambda: 4242)
    assert [w.what for w in rank_guard.watched_processes({"TORCHELASTIC_RUN_ID": "x"})] == ["torchrun (this rank's parent)"]


def test_the_real_trainer_stops_with_a_checkpoint_when_its_launcher_is_gone(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=2)
    config = tiny_config(data, tmp_path / "out", steps=100000)
    config.save(tmp_path / "run.json")
    launcher_stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    env = dict(subprocess_env(), **{contract.LAUNCHER_PID_ENV: str(launcher_stand_in.pid)})
    process = subprocess.Popen([sys.executable, "-m", "ipa_train.train", "--config", str(tmp_path / "run.json")], cwd=REPO_ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        events = []
        for line in process.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "step":
                launcher_stand_in.kill()
                break
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        launcher_stand_in.kill()
    events += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert process.returncode == 3 and events[-1]["event"] == "stopped", events[-3:]
    assert events[-1]["reason"] == "the launcher is gone"
    assert (Path(events[-1]["checkpoint"]) / "state.json").is_file()


# ------------------------------------------------------------------------------------------------ import failures


def test_an_import_failure_reports_its_root_cause(tmp_path):
    """A torchvision built for another torch breaks diffusers' imports; the report names that, not the
    secondary "Could not import module 'BloomPreTrainedModel'"."""
    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    data = make_dataset(tmp_path / "ds", preferred=1)
    tiny_config(data, tmp_path / "out", steps=1).save(tmp_path / "run.json")
    job = TrainingJob(build_command(tmp_path / "run.json", 1), build_env(gpus=[], pythonpath=[str(tmp_path / "site")]),
                      cwd=REPO_ROOT, log_path=tmp_path / "train.log")
    while job.running():
        list(job.poll(0.2))
    outcome = job.finish()
    assert outcome.status == "failed"
    headline = outcome.headline()
    assert headline.startswith("rank 0: RuntimeError: operator torchvision::nms does not exist"), headline
    assert str(broken / "__init__.py") in headline
    text = outcome.error_text()
    assert "(it surfaced as RuntimeError: Failed to import" in text
    assert "what to do: torchvision in the trainer's Python" in text and "uninstall torchvision" in text


def test_a_stop_signal_reaches_each_process_once(tmp_path):
    """signal_all signals the root's group and the ranks in their own sessions; a process of the group must not get it
    twice (a late second SIGINT, after Python restored the default handler while exiting, killed it with -2)."""
    import signal as signals
    import subprocess
    import sys
    import time
    import uuid

    from ipa_train.jobs.process_tree import ProcessTree

    counts = tmp_path / "counts"
    code = (
        "import os, signal, sys, time\n"
        f"path = {str(counts)!r} + '-' + str(os.getpid())\n"
        "signal.signal(signal.SIGINT, lambda *_: open(path, 'a').write('x'))\n"
        "child = None\n"
        "if len(sys.argv) > 1:\n"
        "    import subprocess\n"
        "    child = subprocess.Popen([sys.executable, '-c', open(sys.argv[1]).read()])\n"
        "open(path + '.ready', 'w').close()\n"
        "time.sleep(3)\n"
        "if child: child.wait()\n"
    )
    script = tmp_path / "child.py"
    script.write_text(code)
    root = subprocess.Popen([sys.executable, "-c", code, str(script)], start_new_session=True)
    tree = ProcessTree(root.pid, uuid.uuid4().hex)
    try:
        deadline = time.monotonic() + 20
        while len(list(tmp_path.glob("counts-*.ready"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree.refresh()
        tree.signal_all(signals.SIGINT)
        assert root.wait(timeout=20) == 0
        received = {path.name: path.read_text() for path in tmp_path.glob("counts-*") if not path.name.endswith(".ready")}
        assert len(received) == 2 and set(received.values()) == {"x"}, received  # both processes, once each
    finally:
        tree.close()
        if root.poll() is None:
            root.kill()
