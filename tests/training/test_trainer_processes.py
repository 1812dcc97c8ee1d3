"""The trainer as a separate process: the command line, SIGTERM, and two ranks under torchrun (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ipa_train.fileio import load_safetensors
from ipa_train.jobs.contract import EXIT_ERROR, EXIT_STOPPED
from ipa_train.training.loop import train
from support.trainer_helpers import REPO_ROOT, make_dataset, subprocess_env, tiny_config
from support.trainer_support.faulty_trainer import MODULE as FAULTY
from support.trainer_support.faulty_trainer import faulty_env

torch.set_num_threads(1)


def events_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def torchrun(args, env=None, timeout=240, module="ipa_train.train"):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", module, *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)


def test_sigterm_finishes_the_step_checkpoints_and_resumes(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=2)
    config = tiny_config(data, tmp_path / "out", steps=10_000)
    config.save(tmp_path / "run.json")
    process = subprocess.Popen(
        [sys.executable, "-m", "ipa_train.train", "--config", str(tmp_path / "run.json")],
        cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen = []
    try:
        for line in process.stdout:
            seen.append(json.loads(line))
            if seen[-1]["event"] == "step" and seen[-1]["step"] >= 2:
                process.send_signal(signal.SIGTERM)
                break
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    events = seen + events_of(out)
    assert process.returncode == EXIT_STOPPED, err[-2000:]
    stopped = events[-1]
    assert stopped["event"] == "stopped" and stopped["step"] >= 2
    checkpoint = tmp_path / "out" / "checkpoints" / f"step-{stopped['step']}"
    assert stopped["checkpoint"] == str(checkpoint) and (checkpoint / "state.json").is_file()
    assert "SIGTERM received" in err
    # the checkpoint resumes (in this process) and the run finishes
    collected = []
    result = train(
        tiny_config(data, tmp_path / "out", steps=stopped["step"] + 2), resume=str(tmp_path / "out"), callback=collected.append
    )
    assert result.status == "finished" and collected[0]["start_step"] == stopped["step"]
    assert [e["step"] for e in collected if e["event"] == "step"] == [stopped["step"] + 1, stopped["step"] + 2]


def test_command_line_errors_exit_1_with_an_error_event(tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text(json.dumps({"dataset": str(tmp_path / "none"), "base_model": "tiny", "output_dir": str(tmp_path / "o"), "targets": ["q"]}))
    done = subprocess.run([sys.executable, "-m", "ipa_train.train", "--config", str(bad)], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_ERROR
    (event,) = events_of(done.stdout)
    assert event["event"] == "error" and event["rank"] == 0 and "unknown LoRA target(s) ['q']" in event["message"]


def test_two_ranks_ddp_hold_equal_weights_and_a_crash_ends_the_job(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=3)
    # with every memory mode on: DDP synchronises the LoRA only (fp8 and host-stored base weights stay out of it)
    config = tiny_config(data, tmp_path / "out", steps=3, dropout=0.1, gradient_checkpointing=True, base_precision="fp8",
                         blocks_to_swap=5, activation_offload=True)
    config.save(tmp_path / "run.json")
    env = faulty_env(subprocess_env(), fault="rank=1,step=3")  # the real trainer; rank 1 fails at the start of step 3
    done = torchrun(["--config", str(tmp_path / "run.json"), "--dump-replicas", str(tmp_path / "replicas")], env=env, module=FAULTY)
    events = events_of(done.stdout)
    assert done.returncode != 0
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]
    assert events[0]["event"] == "started" and events[0]["world_size"] == 2 and events[0]["distributed"] == "ddp"
    assert events[0]["memory"]["base_storage"] == {"fp8_layers": 53, "fp8_scale": {"channel": 53}, "host_stored_layers": 53}
    errors = [e for e in events if e["event"] == "error"]
    assert any(e["rank"] == 1 and "injected fault on rank 1 at step 3" in e["message"] for e in errors), done.stdout + done.stderr[-3000:]
    for step in (1, 2):
        rank0, _ = load_safetensors(tmp_path / "replicas" / f"rank0-step{step}.safetensors")
        rank1, _ = load_safetensors(tmp_path / "replicas" / f"rank1-step{step}.safetensors")
        assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
        assert any(float(v.abs().max()) > 0 for k, v in rank0.items() if "lora_B" in k)


def test_two_ranks_fsdp2_finish_and_write_a_native_lora(tmp_path):
    data = make_dataset(tmp_path / "ds", preferred=3)
    config = tiny_config(data, tmp_path / "fsdp", steps=2, distributed="fsdp2", checkpoint_every=1)
    config.save(tmp_path / "run.json")
    done = torchrun(["--config", str(tmp_path / "run.json")])
    events = events_of(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert events[0]["distributed"] == "fsdp2" and events[-1]["event"] == "finished"
    assert [e["event"] for e in events].count("step") == 2 and events[1]["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)
    lora, _ = load_safetensors(events[-1]["lora_path"])
    assert "diffusion_model.blocks.0.self_attn.q.lora_B.weight" in lora
    assert (tmp_path / "fsdp" / "checkpoints" / "step-1" / "rng-rank1.safetensors").is_file()


def test_fsdp2_shards_at_load_and_trains_as_ddp(tmp_path):
    """FSDP2 on two gloo ranks, watched by ``fsdp2_probe``: the model is never moved whole (no ``Module.to`` on it),
    FSDP2 receives it group by group (a block or an embedder, never more than a fifth of the weights even in the
    tiny model), each rank keeps about half the base weights, and two steps give exactly DDP's adapter (identical
    gradients: the updates are bit-identical)."""
    from support.trainer_support.faulty_trainer import HERE

    data = make_dataset(tmp_path / "ds", preferred=3)
    for name in ("fsdp2", "ddp"):
        # no clipping: its norm sums squares in another order over shards (last-bit differences, 1e-7 relative)
        tiny_config(data, tmp_path / name, steps=2, distributed=name, max_grad_norm=0).save(tmp_path / f"{name}.json")
    env = dict(subprocess_env(), PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{HERE}")
    done = torchrun([str(tmp_path / "fsdp2.json"), str(tmp_path)], env=env, module="fsdp2_probe")
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        full, local, groups = record["full_bytes"], record["local_bytes"], record["moved_groups"]
        assert record["sharded"] == record["frozen"] > 0
        assert not [call for call in record["to_calls"] if call["module"] == "WanVACETransformer3DModel"], record["to_calls"]
        assert all(call["unsharded_bytes"] <= max(groups) for call in record["to_calls"])  # a traced block at most
        assert sum(groups) == full and len(groups) == 5 + 5  # 2 VACE + 3 blocks, 4 embedders/projections, the root
        assert 0.45 < local / full < 0.55 and max(groups) < 0.2 * full
        assert local + max(groups) < 0.71 * full  # the most a GPU would hold: its shards and one group gathered
    done = torchrun(["--config", str(tmp_path / "ddp.json")])
    assert done.returncode == 0, done.stderr[-3000:]
    fsdp2, _ = load_safetensors(tmp_path / "fsdp2" / "checkpoints" / "step-2" / "adapter.safetensors")
    ddp, _ = load_safetensors(tmp_path / "ddp" / "checkpoints" / "step-2" / "adapter.safetensors")
    assert fsdp2.keys() == ddp.keys() and all(torch.equal(fsdp2[k], ddp[k]) for k in ddp)
    assert any(float(v.abs().max()) > 0 for k, v in ddp.items() if "lora_B" in k)


def test_fsdp2_groups_keep_a_rank_near_half_of_the_released_models():
    """The released sizes (built on the meta device, no memory): on two ranks a GPU holds its half of the base
    and at most one group gathered, about 52 % of the weights."""
    from diffusers import WanVACETransformer3DModel

    from ipa_train.training.model_setup import shard_groups
    from ipa_train.wan.model import shipped_config

    for name in ("wan2.1-vace-1.3b", "wan2.1-vace-14b"):
        with torch.device("meta"):
            model = WanVACETransformer3DModel(**{k: v for k, v in shipped_config(name).items() if not k.startswith("_")})
        total = sum(p.numel() for p in model.parameters())
        groups = [sum(p.numel() for p in group.parameters()) for group in shard_groups(model)]
        assert sum(groups) >= 0.999 * total and len(groups) == len(model.blocks) + len(model.vace_blocks) + 4
        assert 0.5 < (total / 2 + max(groups)) / total < 0.53, (name, max(groups) / total)


def test_stop_file_under_torchrun_checkpoints_exits_3_and_resumes(tmp_path):
    """The launcher's stop request (the stop file, no signal) on two gloo ranks: both stop after the same step,
    rank 0 writes the checkpoint, the job exits 3, and the run resumes."""
    from ipa_train.jobs import launcher

    data = make_dataset(tmp_path / "ds", preferred=3)
    config = tiny_config(data, tmp_path / "out", steps=10_000)
    config.save(tmp_path / "run.json")
    job = launcher.TrainingJob(launcher.build_command(tmp_path / "run.json", 2), subprocess_env(), cwd=REPO_ROOT,
                               log_path=tmp_path / "train.log", stop_file=config.stop_path)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and job.running():
            if any(event["event"] == "step" and event["step"] >= 2 for event in job.poll(0.2)):
                break
        job.stop(grace_s=120)
    finally:
        job.kill()
    outcome = job.finish()
    log = (tmp_path / "train.log").read_text()
    assert outcome.status == "stopped", outcome.error_text()
    assert job.signalled == [] and outcome.final["reason"] == "stop file"
    assert "SIGINT received" not in log and "SIGTERM received" not in log
    # The ranks exit 3, or -15 when torchrun ended a slower one after the first exited; torchrun counts both as a
    # failure, and elastic_run turns that back into 3 (stopped), with every rank's code recorded.
    assert outcome.returncode == 3 and "exitcode  : 3" in log
    assert {f.rank for f in outcome.failures} == {0, 1} and all(f.exitcode in (3, -signal.SIGTERM) for f in outcome.failures)
    step = outcome.final["step"]
    assert step >= 2 and [e["step"] for e in outcome.events if e["event"] == "step"][-1] == step
    checkpoint = tmp_path / "out" / "checkpoints" / f"step-{step}"
    assert outcome.final["checkpoint"] == str(checkpoint)
    assert (checkpoint / "state.json").is_file() and (checkpoint / "rng-rank1.safetensors").is_file()
    assert not config.stop_path.exists()  # consumed: the resumed run is not stopped by it
    # it resumes (here in one process, which a checkpoint of two ranks allows) and the run finishes
    events = []
    result = train(tiny_config(data, tmp_path / "out", steps=step + 2), resume=str(tmp_path / "out"), callback=events.append)
    assert result.status == "finished" and events[0]["start_step"] == step and events[-1]["event"] == "finished"
    assert [e["step"] for e in events if e["event"] == "step"] == [step + 1, step + 2]
