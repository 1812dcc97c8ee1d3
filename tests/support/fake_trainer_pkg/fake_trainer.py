"""A stand-in for ``python -m ipa_train.train`` that follows the run contract (``ipa_train.jobs.contract``, whose
names it uses) without a model: JSON events on stdout, the stop file (``<output_dir>/STOP`` or ``stop_file``) or
SIGINT -> finish the step, checkpoint, ``stopped``, exit 3; errors -> ``error`` event, exit 1.
run.json key ``fake_mode`` (or env IPA_FAKE_TRAINER_MODE): "ok" (default), "fail" (fails at step 2), "slow" (steps take 0.3 s and a worker child
process is started in the same process group, like torchrun's ranks), "deaf" (slow, and never looks at the stop file), "broken_import" (an import failure with a root cause, reported
by the real ``failures.report_startup_failure``)."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ipa_train.jobs.contract import CHECKPOINT, ERROR, EXIT_ERROR, EXIT_STOPPED, FINISHED, STARTED, STEP, STOP_FILE_NAME, STOPPED


def emit(**event):
    print(json.dumps(event), flush=True)


def write_checkpoint(out, step):
    """A checkpoint the real picker accepts: the files resume needs, listed with their sizes in state.json."""
    checkpoint = out / "checkpoints" / f"step-{step}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("adapter.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json"):
        (checkpoint / name).write_text("{}")
        files[name] = 2
    (checkpoint / "state.json").write_text(json.dumps({"step": step, "files": files}))
    return checkpoint


def report_broken_import():
    """What the real trainer reports when torchvision breaks diffusers' imports."""
    from ipa_train.jobs.failures import report_startup_failure

    try:
        try:
            raise RuntimeError("operator torchvision::nms does not exist")
        except RuntimeError as cause:
            raise ModuleNotFoundError("Could not import module 'BloomPreTrainedModel'") from cause
    except ModuleNotFoundError as exc:
        sys.exit(report_startup_failure(exc))


def write_lora(path: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": np.zeros((2, 4), np.float32),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": np.zeros((4, 2), np.float32)}, str(path), metadata={"objective": "ipa"})
    return path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    mode = config.get("fake_mode") or os.environ.get("IPA_FAKE_TRAINER_MODE", "ok")
    if mode == "broken_import":
        report_broken_import()
    out = Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    stop = {"requested": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(requested=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    worker = None
    stop_file = Path(config.get("stop_file") or out / STOP_FILE_NAME)
    if mode == "deaf":
        mode, stop_file = "slow", None
    if mode == "slow":
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a 'rank' in our group
        Path(out / "worker.pid").write_text(str(worker.pid))
    start = int(Path(args.resume).name.split("-")[1]) if args.resume else 0
    two_experts = config.get("expert") == "both" and bool(config.get("low_noise_model"))
    total = int(config.get("steps", 5)) * (2 if two_experts else 1)  # 'both': steps per expert, numbered on
    emit(event=STARTED, total=total, resume_step=start, env_cuda=os.environ.get("CUDA_VISIBLE_DEVICES"),
         alloc=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), pythonpath=os.environ.get("PYTHONPATH"))
    print("human log line on stderr", file=sys.stderr, flush=True)
    print("some library print on stdout", flush=True)
    for step in range(start + 1, total + 1):
        time.sleep(0.3 if mode == "slow" else 0.01)
        if mode == "fail" and step == 2:
            print("Traceback (most recent call last):\n  ValueError: the dataset has no preferred samples", file=sys.stderr, flush=True)
            emit(event=ERROR, rank=1, message="ValueError: the dataset has no preferred samples",
                 traceback="Traceback (most recent call last):\n  File \"train.py\", line 1\nValueError: the dataset has no preferred samples")
            # what the surviving rank reports afterwards, as gloo/NCCL do when a peer dies
            emit(event=ERROR, rank=0, message="RuntimeError: Connection closed by peer")
            sys.exit(EXIT_ERROR)
        loss = 0.7 / step
        emit(event=STEP, step=step, total=total, loss=loss, ipa_gap=0.01 * step, model_error=0.5, reference_error=0.5 + 0.01 * step,
             lr=1e-4, sec_per_step=0.01, eta_s=(total - step) * 0.01, peak_mem_gb=0.0)
        if stop_file is not None and stop_file.exists():
            stop_file.unlink()
            stop.update(requested=True, reason="stop file")
        if stop["requested"]:
            checkpoint = write_checkpoint(out, step)
            emit(event=CHECKPOINT, step=step, path=str(checkpoint))
            emit(event=STOPPED, step=step, checkpoint=str(checkpoint), resume=f"--resume {checkpoint}", reason=stop.get("reason", "signal"))
            if worker is not None:
                worker.terminate()
            sys.exit(EXIT_STOPPED)
    name = config.get("lora_name", "lora")
    if two_experts:  # the trainer's contract for expert 'both': one LoRA per expert, all named in the finished event
        paths = {expert: str(write_lora(out / f"{name}_{expert}.safetensors")) for expert in ("low", "high")}
        emit(event=FINISHED, lora_path=paths["high"], lora_paths=paths, metrics={"loss": 0.7 / total, "ipa_gap": 0.01 * total, "steps": total})
    else:
        lora = write_lora(out / f"{name}.safetensors")
        emit(event=FINISHED, lora_path=str(lora), metrics={"loss": 0.7 / total, "ipa_gap": 0.01 * total, "steps": total})
    if worker is not None:
        worker.terminate()


if __name__ == "__main__":
    main()
