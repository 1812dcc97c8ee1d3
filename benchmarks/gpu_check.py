"""The first run on a lent GPU: what no CPU run can show, measured in under 10 minutes on one GPU.

1. bf16 velocity parity with ComfyUI's native Wan model on the GPU (needs ``COMFYUI_PATH``): the tiny model and
   the 1.3B configuration with random weights, saved in ComfyUI's single-file layout and loaded by both sides.
   ComfyUI runs its model in bf16; the trainer runs its bf16 base under bf16 autocast, as it trains. Both are
   compared with ComfyUI in fp32 on the same GPU.
2. ``torch.cuda.max_memory_reserved`` against the planner's predicted peak, for each memory mode at 1.3B
   (the real trainer, a fresh process per mode so peaks do not mix), and the pinned host memory torch holds
   (``torch.cuda.host_memory_stats()``) against the planner's host figure.
3. Seconds per step of IPA and of SFT (the plain mode; the first step, with its warm-up, is left out).

Writes ``benchmarks/results/gpu-<date>.json`` with the device name (``--out`` to put it elsewhere).

    python benchmarks/gpu_check.py                 # on a GPU; COMFYUI_PATH=/path/to/ComfyUI for the parity part
    python benchmarks/gpu_check.py --dry-run       # anywhere (CI): imports, plans, writes nothing
    python benchmarks/gpu_check.py --frames 33     # shorter clips when time is short
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CONFIG_1_3B = "wan2.1-vace-1.3b"
# The memory modes measured at 1.3B (every one with gradient checkpointing, which the others need).
MODES = {
    "checkpointing": {},
    "fp8": {"base_precision": "fp8"},
    "offload": {"activation_offload": True},
    "swap 15": {"blocks_to_swap": 15},
    "fp8 + offload + swap 30": {"base_precision": "fp8", "activation_offload": True, "blocks_to_swap": 30},
}
RANK = 128


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="import, plan and print; no GPU needed, nothing written")
    parser.add_argument("--frames", type=int, default=81, help="video frames of the 1.3B runs (4k+1)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--steps", type=int, default=4, help="steps per memory mode (the first is warm-up)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), metavar="MODE")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ the plans


def run_shape(args, objective: str = "ipa"):
    from ipa_train.memory.plan import RunShape

    return RunShape.from_pixels(args.frames, args.height, args.width, rank=RANK, objective=objective, device="cuda")


def plans(args) -> dict[str, dict]:
    """The planner's prediction for each mode at 1.3B (what the measured figures are held against)."""
    from ipa_train.memory.plan import Settings, describe_config, predict
    from ipa_train.wan.model import shipped_config

    spec = describe_config(shipped_config(CONFIG_1_3B), CONFIG_1_3B)
    out = {}
    for name, mode in MODES.items():
        settings = Settings(mode.get("base_precision", "bf16"), mode.get("blocks_to_swap", 0), mode.get("activation_offload", False), True)
        out[name] = predict(spec, run_shape(args), settings).to_json()
    return out


def dry_run(args) -> int:
    """CI: every import the GPU run needs, the plans it compares against; no GPU, no file written."""
    import diffusers  # noqa: F401
    import peft  # noqa: F401

    from ipa_train.training.loop import Trainer  # noqa: F401
    from ipa_train.wan.model import load_transformer, save_original_wan_single_file  # noqa: F401

    print(f"gpu_check dry run: {args.frames} frames at {args.width}x{args.height}, rank {RANK}, 1.3B")
    for name, plan in plans(args).items():
        print(f"  {name:<26} predicted peak {plan['peak_gb']:7.2f} GiB, host {plan['host_gb']:6.2f} GiB ({plan['phase']})")
    comfy = os.environ.get("COMFYUI_PATH")
    print(f"  parity with ComfyUI: {'COMFYUI_PATH=' + comfy if comfy else 'COMFYUI_PATH unset: the GPU run would skip it'}")
    print(f"  a GPU run writes {results_path(args.out)}")
    return 0


def results_path(folder: Path) -> Path:
    return folder / f"gpu-{datetime.date.today().isoformat()}.json"


# ------------------------------------------------------------------------------------------------ random models


def write_random_model(path: Path, config: dict, seed: int = 0) -> Path:
    """A random-weight Wan2.1-VACE of ``config`` in ComfyUI's single-file layout (bf16), initialised on the GPU
    (seconds for 1.3B) and written from the CPU."""
    import torch
    from diffusers import WanVACETransformer3DModel

    from ipa_train.wan.model import save_original_wan_single_file

    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = WanVACETransformer3DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    model = model.to(torch.bfloat16).to("cpu")
    save_original_wan_single_file(model, path, record_config=False)
    del model
    torch.cuda.empty_cache()
    return path


def tiny_config() -> dict:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from support.comfy_tiny import TINY_COMFY_VACE_CONFIG

    return dict(TINY_COMFY_VACE_CONFIG)


# ------------------------------------------------------------------------------------------------ parity


def _comfy():
    path = os.environ["COMFYUI_PATH"]
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.model_management  # noqa: F401
    import comfy.sd

    return comfy


def _parity_inputs(text_dim: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 16, 16, generator=g)
    context = torch.cat([torch.randn(1, 20, text_dim, generator=g), torch.zeros(1, 492, text_dim)], dim=1)
    control = torch.randn(1, 96, 3, 16, 16, generator=g)
    return x.to(device), 630.0, context.to(device), control.to(device), 0.7


def parity(path: Path) -> dict:
    """Velocities of ComfyUI's model (bf16, and fp32 as the reference) and the trainer's (bf16 base, bf16 autocast)."""
    import torch

    from ipa_train.wan.model import load_transformer

    comfy = _comfy()
    ours = load_transformer(path, torch_dtype=torch.bfloat16).to("cuda")
    x, timestep, context, control, strength = _parity_inputs(ours.config.text_dim, "cuda")
    t = torch.tensor([timestep], device="cuda")
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        v_ours = ours(hidden_states=x, timestep=t, encoder_hidden_states=context, control_hidden_states=control,
                      control_hidden_states_scale=torch.full((len(ours.config.vace_layers),), strength, device="cuda"),
                      return_dict=False)[0].float()
    del ours
    velocities = {}
    for dtype in (torch.bfloat16, torch.float32):
        patcher = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": dtype})
        dm = patcher.model.diffusion_model.to("cuda")
        with torch.no_grad():
            velocities[dtype] = dm(x.to(dtype), t, context.to(dtype), vace_context=control.to(dtype)[:, None],
                                   vace_strength=[strength]).float()
        del patcher, dm
        torch.cuda.empty_cache()
    reference, comfy_bf16 = velocities[torch.float32], velocities[torch.bfloat16]
    scale = float(reference.abs().mean())

    def relative(a, b):
        return float((a - b).abs().max()) / scale

    return {"velocity_mean_abs": scale, "trainer_bf16_vs_comfy_bf16": relative(v_ours, comfy_bf16),
            "trainer_bf16_vs_comfy_fp32": relative(v_ours, reference), "comfy_bf16_vs_comfy_fp32": relative(comfy_bf16, reference)}


# ------------------------------------------------------------------------------------------------ memory and speed


def write_dataset(root: Path, args, samples: int = 2) -> Path:
    """Random samples of the 1.3B run's size (the trainer reads them as it reads collected ones)."""
    import torch

    from ipa_train.data.samples import add_sample, create_dataset
    from ipa_train.data.tensors import SampleTensors

    shape = run_shape(args)
    path = create_dataset(root, "gpu-check")
    for seed in range(samples):
        g = torch.Generator().manual_seed(seed)
        size = (shape.frames, shape.height, shape.width)
        tensors = SampleTensors(latent=torch.randn(16, *size, generator=g), vace_context=torch.randn(96, *size, generator=g),
                                text_embedding=torch.randn(shape.text_tokens, 4096, generator=g),
                                hand_mask=(torch.rand(1, size[0] - 1, *size[1:], generator=g) > 0.9).float(), text_length=shape.text_tokens)
        add_sample(path, tensors, meta={"seed": seed, "prompt": "gpu check"}, status="preferred")
    return path


def measure_mode(job: dict) -> dict:
    """One training run of the real trainer (a fresh process): peak reserved memory, pinned host memory, seconds per step."""
    import torch

    from ipa_train.jobs.config import RunConfig
    from ipa_train.training.distributed import Events, setup_distributed
    from ipa_train.training.loop import Trainer

    config = RunConfig.from_dict({"dataset": job["dataset"], "base_model": job["model"], "output_dir": job["output"], "rank": RANK,
                                  "alpha": RANK, "steps": job["steps"], "objective": job["objective"], "checkpoint_every": 0,
                                  "seed": 0, "precision": "bf16", "gradient_checkpointing": True, **MODES[job["mode"]]})
    dist_info = setup_distributed()
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(config, dist_info, Events(dist_info, stdout=False))
    seconds = []
    for step in range(job["steps"]):
        started = time.perf_counter()
        trainer.train_step(step)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    host = {k: int(v) for k, v in torch.cuda.host_memory_stats().items() if "bytes" in k}
    plan = trainer.memory_plan
    return {"mode": job["mode"], "objective": job["objective"], "settings": MODES[job["mode"]],
            "max_memory_reserved_gb": torch.cuda.max_memory_reserved() / 2**30,
            "max_memory_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
            "predicted_peak_gb": plan.peak / 2**30, "reserved_over_predicted": torch.cuda.max_memory_reserved() / plan.peak,
            "pinned_host_stats": host, "predicted_host_gb": plan.host / 2**30,
            "sec_per_step": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0], "step_seconds": seconds}


def in_fresh_process(kind: str, payload: dict, timeout: float) -> dict:
    """Runs ``--worker`` in a new Python (its own CUDA context and peaks); its last stdout line is the JSON answer."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({"kind": kind, **payload})]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode}", "stderr_tail": done.stderr[-2000:]}
    return {**json.loads(lines[-1]), "wall_s": round(time.perf_counter() - started, 1)}


def worker(raw: str) -> int:
    job = json.loads(raw)
    if job["kind"] == "parity":
        answer = parity(Path(job["model"]))
    else:
        answer = measure_mode(job)
    print(json.dumps(answer), flush=True)
    return 0


def device_info() -> dict:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "capability": list(torch.cuda.get_device_capability(0)), "memory_gb": props.total_memory / 2**30,
            "torch": torch.__version__, "cuda": torch.version.cuda}


def measure(args, work: Path) -> dict:
    from ipa_train.wan.model import shipped_config

    results: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": device_info(),
                     "run": {"frames": args.frames, "height": args.height, "width": args.width, "rank": RANK, "steps": args.steps},
                     "plans": plans(args), "parity": {}, "modes": [], "speed": {}}
    tiny = write_random_model(work / "tiny.safetensors", tiny_config())
    big = write_random_model(work / "wan2.1_vace_1.3B_random.safetensors", shipped_config(CONFIG_1_3B))
    if os.environ.get("COMFYUI_PATH"):
        for name, path in (("tiny", tiny), ("1.3B", big)):
            results["parity"][name] = in_fresh_process("parity", {"model": str(path)}, timeout=180)
    else:
        results["parity"] = {"skipped": "COMFYUI_PATH is not set"}
    dataset = write_dataset(work / "data", args)
    jobs = [(mode, "ipa") for mode in args.modes] + [("checkpointing", "sft")]
    for mode, objective in jobs:
        job = {"mode": mode, "objective": objective, "model": str(big), "dataset": str(dataset), "steps": args.steps,
               "output": str(work / f"run-{len(results['modes'])}")}
        answer = in_fresh_process("train", job, timeout=240)
        results["modes"].append({"mode": mode, "objective": objective, **answer})
        print(json.dumps(results["modes"][-1])[:400], flush=True)
        if mode == "checkpointing" and "sec_per_step" in answer:
            results["speed"][objective] = answer["sec_per_step"]
    if {"ipa", "sft"} <= set(results["speed"]):
        results["speed"]["ipa_over_sft"] = results["speed"]["ipa"] / results["speed"]["sft"]
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.dry_run:
        return dry_run(args)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU (use --dry-run to check the set-up without one)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        results = measure(args, Path(work))
    results["wall_s"] = round(time.perf_counter() - started, 1)
    path = results_path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path} ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
