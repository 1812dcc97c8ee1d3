"""ipa_train.jobs.launcher without ComfyUI: settings, environment, event parsing, a real subprocess following the
trainer contract (fake trainer), graceful cancel that leaves no process group behind, failure reporting."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from ipa_train.jobs import curves, launcher
from ipa_train.jobs.checkpoint_files import pick_checkpoint
from ipa_train.jobs.launcher import LaunchError, TrainingJob, build_command, build_env, parse_event, parse_gpus, resolve_gpus
from ipa_train.jobs.process_tree import current_platform
from support.trainer_helpers import process_gone

FAKE = str(Path(__file__).parents[1] / "support" / "fake_trainer_pkg")
WINDOWS, POSIX = current_platform("nt"), current_platform("posix")


def test_parse_gpus():
    # a number is a device id ("0" is GPU 0, never the CPU); a count is written "xN"
    assert parse_gpus("cpu") == [] and parse_gpus("CPU", available=2) == []
    assert parse_gpus("0", available=1) == [0] and parse_gpus("2", available=4) == [2] and parse_gpus(1, available=2) == [1]
    assert parse_gpus("x2", available=4) == [0, 1] and parse_gpus("X3", available=3) == [0, 1, 2]
    assert parse_gpus("0,2", available=4) == [0, 2]
    assert parse_gpus("[1]", available=2) == [1]
    assert parse_gpus("all", available=3) == [0, 1, 2]
    # the node's default: every GPU there is, the CPU on a machine without one (no error either way)
    assert parse_gpus("auto", available=2, platform=POSIX) == [0, 1] and parse_gpus("auto", available=0) == [] and parse_gpus("AUTO") == []
    for bad in ("two", "0,0", "-1", "x0", "x", "", "none"):
        with pytest.raises(LaunchError, match="'x2'"):  # every refusal shows the forms, the count among them
            parse_gpus(bad, available=4)
    with pytest.raises(LaunchError, match="only 2 GPU"):
        parse_gpus("0,3", available=2)
    # an old count ("2" meant two GPUs) on a machine with two: refused, with the new way to write it
    with pytest.raises(LaunchError, match=r"only 2 GPUs visible \(device ids 0\.\.1\)\. A number is a device id now: for a count write 'x2'"):
        parse_gpus("2", available=2)
    with pytest.raises(LaunchError, match="asks for 3 GPU"):
        parse_gpus("x3", available=2)


def test_auto_on_a_windows_pc_with_several_gpus_uses_one_and_says_so():
    ids, note = resolve_gpus("auto", available=2, platform=WINDOWS)
    assert ids == [0] and "GPU 0 only" in note and "NCCL" in note
    assert resolve_gpus("auto", available=1, platform=WINDOWS) == ([0], "")
    assert resolve_gpus("auto", available=2, platform=POSIX) == ([0, 1], "")
    with pytest.raises(LaunchError, match="needs NCCL"):  # asked for by name: refused, as before
        launcher.check_launch(2, parse_gpus("x2", available=2, platform=WINDOWS), WINDOWS)


def test_parse_gpus_refusals_say_what_is_there():
    """On a CPU-only machine the refusal read "only 0 GPU(s) are visible (ids 0..-1)"."""
    with pytest.raises(LaunchError) as refused:
        parse_gpus("2", available=0)
    assert str(refused.value) == "gpus='2': no GPU is visible on this machine; use 'cpu' (or 'auto', which trains on the CPU here)"
    with pytest.raises(LaunchError) as refused:
        parse_gpus("3", available=2)
    assert "asks for device 3 but there are only 2 GPUs visible (device ids 0..1)" in str(refused.value)
    with pytest.raises(LaunchError) as refused:
        parse_gpus("x3", available=2)
    assert "asks for 3 GPUs but there are only 2 GPUs visible (device ids 0..1)" in str(refused.value)
    with pytest.raises(LaunchError) as refused:
        parse_gpus("[1]", available=1)
    assert "asks for device 1 but there is only 1 GPU visible (device id 0)" in str(refused.value)


def test_build_command():
    start = launcher.START_SCRIPT  # by absolute path: no PYTHONPATH needed (the Windows portable build ignores it)
    assert Path(start).is_absolute() and Path(start).parent == Path(launcher.PACKAGE_PARENT)
    assert build_command("run.json", 1, python="py") == ["py", start, "ipa_train.train", "--config", "run.json"]
    assert build_command("run.json", 2, python="py", extra_args=["--resume", "c"]) == [
        "py", start, "ipa_train.training.elastic_run", "--standalone", "--nproc_per_node=2",
        start, "ipa_train.train", "--config", "run.json", "--resume", "c",
    ]


def test_build_env_is_explicit():
    host = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "3", "HIP_VISIBLE_DEVICES": "3", "PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync",
            "PYTHONPATH": "/comfy-stubs:/ComfyUI", "HOME": "/h"}
    env = build_env(host, gpus=[0, 2])
    assert env["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert "HIP_VISIBLE_DEVICES" not in env  # ComfyUI's --cuda-device sets it; ROCm would apply it before ours
    # on GPUs the trainer gets expandable segments, never ComfyUI's cudaMallocAsync, unless the user sets its own
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert build_env(host, gpus=[0], platform=POSIX)["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert "PYTORCH_CUDA_ALLOC_CONF" not in build_env(host, gpus=[0], platform=WINDOWS)  # torch has no expandable segments there
    own = {**host, launcher.ALLOC_CONF_ENV: "max_split_size_mb:512"}
    assert build_env(own, gpus=[0], platform=WINDOWS)["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"
    assert "PYTORCH_CUDA_ALLOC_CONF" not in build_env({**host, launcher.ALLOC_CONF_ENV: ""}, gpus=[0])  # "": torch's defaults
    assert "PYTORCH_CUDA_ALLOC_CONF" not in build_env(host, gpus=[])  # the CPU: nothing to configure
    assert env["PYTHONPATH"] == launcher.PACKAGE_PARENT
    assert env[launcher.PATH_ENV] == launcher.PACKAGE_PARENT  # what the start script puts on sys.path itself
    assert build_env(host, gpus=[], pythonpath=["/x", "/y"])[launcher.PATH_ENV] == os.pathsep.join([launcher.PACKAGE_PARENT, "/x", "/y"])
    assert (Path(launcher.PACKAGE_PARENT) / "ipa_train" / "jobs" / "launcher.py").is_file()
    assert env["PATH"] == "/bin" and env["HOME"] == "/h"
    assert build_env(host, gpus=[])["CUDA_VISIBLE_DEVICES"] == ""  # CPU: hide every GPU, never inherit


def test_parse_event():
    assert parse_event('{"event": "step", "step": 3, "loss": 0.5}') == {"event": "step", "step": 3, "loss": 0.5}
    assert parse_event("Loading model...") is None
    assert parse_event('{"not": "an event"}') is None
    assert parse_event('{"event": "step"') is None


def _job(tmp_path, mode, steps=5, stop_file=True):
    config = {"dataset": "x", "base_model": "tiny", "output_dir": str(tmp_path / "run"), "steps": steps, "fake_mode": mode, "lora_name": "l"}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    host = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="backend:cudaMallocAsync", CUDA_VISIBLE_DEVICES="7")
    env = build_env(host, gpus=[], pythonpath=[FAKE])
    return TrainingJob(build_command(path, 1, module="fake_trainer"), env, cwd=tmp_path, log_path=tmp_path / "train.log",
                       stop_file=tmp_path / "run" / "STOP" if stop_file else None)


def _drain(job, until=None, timeout=60):
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in job.poll(0.2):
            events.append(event)
            if until and until(event):
                return events
        if not job.running() and job.events.empty():
            break
    return events


def test_successful_run_reports_progress(tmp_path):
    job = _job(tmp_path, "ok")
    events = _drain(job)
    outcome = job.finish()
    assert outcome.status == "finished" and outcome.returncode == 0
    started = events[0]
    assert started["event"] == "started"
    assert started["env_cuda"] == "" and started["alloc"] is None  # not inherited
    assert [event["step"] for event in events if event["event"] == "step"] == [1, 2, 3, 4, 5]
    assert Path(outcome.final["lora_path"]).is_file()
    assert "loss: 0.14" in launcher.format_metrics(outcome)
    assert "human log line" in (tmp_path / "train.log").read_text()
    image = curves.training_curves(outcome.events)
    assert image.size == (480, 300)
    import numpy as np

    blue = int((np.asarray(image) == np.array(curves.LOSS_COLOUR, dtype=np.uint8)).all(axis=-1).sum())
    assert blue > 50  # the loss curve was drawn


def test_failure_shows_the_failing_rank(tmp_path):
    job = _job(tmp_path, "fail")
    _drain(job)
    outcome = job.finish()
    assert outcome.status == "failed" and outcome.returncode == 1
    text = outcome.error_text()
    # the rank that failed first heads the report; the surviving rank's lost-peer error comes after it
    assert text.startswith("rank 1: ValueError: the dataset has no preferred samples")
    assert outcome.final["rank"] == 1
    assert "then rank 0: RuntimeError: Connection closed by peer" in text
    assert "Traceback" in text


@pytest.mark.parametrize("stop_file", [True, False], ids=["stop-file", "sigint"])
def test_cancel_stops_gracefully_and_leaves_no_process_group(tmp_path, stop_file):
    if stop_file:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "STOP").write_text("{}")  # stale, from an earlier run: must not stop this one
    job = _job(tmp_path, "slow", steps=100, stop_file=stop_file)
    events = _drain(job, until=lambda event: event["event"] == "step")
    assert events[-1]["event"] == "step"
    worker_pid = int((tmp_path / "run" / "worker.pid").read_text())
    job.stop(grace_s=30)
    outcome = job.finish()
    assert outcome.status == "stopped" and outcome.returncode == 3
    assert outcome.final["reason"] == ("stop file" if stop_file else "signal")
    assert job.signalled == ([] if stop_file else ["SIGINT"])
    assert [event["step"] for event in outcome.events if event["event"] == "step"][-1] == outcome.final["step"] >= 1
    assert not (tmp_path / "run" / "STOP").exists()
    assert Path(outcome.final["checkpoint"]).is_dir()
    assert pick_checkpoint(tmp_path / "run") == Path(outcome.final["checkpoint"])
    assert not job.group_alive() and process_gone(job.pgid) and process_gone(worker_pid)


def test_signals_only_after_the_stop_file_grace(tmp_path):
    job = _job(tmp_path, "deaf", steps=1000)
    _drain(job, until=lambda event: event["event"] == "step")
    started = time.monotonic()
    job.stop(grace_s=1.5, signal_grace_s=30)
    outcome = job.finish()
    assert time.monotonic() - started >= 1.5  # the file had its grace period before any signal
    assert job.signalled == ["SIGINT"] and outcome.status == "stopped" and outcome.final["reason"] == "signal"
    assert "did not stop within 2 s of the stop file" in (tmp_path / "train.log").read_text()
    assert not (tmp_path / "run" / "STOP").exists()  # the unanswered request is cleaned up


def test_kill_after_grace_when_the_trainer_ignores_sigint(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('{\"event\": \"started\"}', flush=True)\ntime.sleep(600)\n")
    job = TrainingJob([sys.executable, str(script)], build_env(gpus=[]), cwd=tmp_path)
    _drain(job, until=lambda event: event["event"] == "started")
    started = time.monotonic()
    job.stop(grace_s=1)
    outcome = job.finish()
    assert time.monotonic() - started < 20
    assert outcome.status == "failed" and outcome.returncode == -signal.SIGKILL
    assert not job.group_alive() and process_gone(job.pgid)


def test_real_trainer_tiny_run(tmp_path):
    """The real trainer under the launcher on a tiny dataset (enabled once trainer-loop is merged)."""
    import torch

    from ipa_train.data.marks import set_status
    from ipa_train.data.samples import add_sample, create_dataset
    from ipa_train.data.tensors import SampleTensors

    folder = create_dataset(tmp_path, "tiny")
    generator = torch.Generator().manual_seed(0)
    ids = []
    for index in range(2):
        tensors = SampleTensors(
            latent=torch.randn(16, 3, 4, 4, generator=generator), vace_context=torch.randn(96, 3, 4, 4, generator=generator),
            text_embedding=torch.randn(8, 32, generator=generator), hand_mask=torch.zeros(1, 2, 4, 4), ref_frames=1,
        )
        ids.append(add_sample(folder, tensors).sample_id)
    set_status(folder, ids, "preferred")
    config = {"dataset": str(folder), "base_model": "tiny", "output_dir": str(tmp_path / "run"), "lora_name": "t", "steps": 2,
              "rank": 4, "alpha": 4, "precision": "fp32", "checkpoint_every": 1}
    (tmp_path / "run.json").write_text(json.dumps(config))
    job = TrainingJob(build_command(tmp_path / "run.json", 1), build_env(gpus=[]), cwd=launcher.PACKAGE_PARENT)
    _drain(job, timeout=300)
    outcome = job.finish()
    assert outcome.status == "finished", outcome.error_text()
    assert [event["step"] for event in outcome.events if event["event"] == "step"][-1] == 2
    assert Path(outcome.final["lora_path"]).is_file()
