"""Memory modes: exact bytes, the planner's predictions, and measured memory against them.

1. Exact bytes per setting of the real Wan2.1-VACE 1.3B and 14B configs, built on the meta device (no weights):
   frozen weights at bf16 / fp8 (+ per-channel scales), what N swapped blocks leave on the GPU and put in host
   memory, the rank-128 LoRA with its AdamW state.
2. The planner's prediction for 480x832, 81 frames, batch 1, rank 128, checkpointing on, per setting, and the
   cheapest settings for common GPU budgets. Goals: 14B <= 24 GiB with the best settings, 1.3B <= 8 GiB.
3. fp8 scale granularity: quantisation error per tensor against per output channel.
4. CPU, a mid-size random model in the real classes, each case in a fresh process:
   - loading a bf16 file: peak RSS of ``load_transformer`` with bf16 and with streaming fp8 quantisation, against
     the file size and the fp8 model's bytes;
   - one training step per setting: peak RSS (above the process's RSS before the model was built) against the
     planner's CPU prediction (float32, no CUDA context): the ratio.
5. GPU: measured ``torch.cuda.max_memory_allocated`` and s/step per setting, when a GPU is present.

    python benchmarks/bench_memory.py            # everything (CPU part: a few minutes on 2 cores)
    python benchmarks/bench_memory.py --no-cpu   # only the arithmetic and predictions (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

GIB = 2**30
# A mid-size VACE model: 8 layers 512 wide, VACE every 2nd layer, at 2,048 tokens (latent 4 x 32 x 64).
MID = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=256,
           freq_dim=256, ffn_dim=1536, num_layers=8, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
           vace_layers=[0, 2, 4, 6], vace_in_channels=96)
MID_LATENT = (16, 4, 32, 64)
MID_RANK = 16
CPU_CASES = {
    "bf16 (fp32 on CPU)": dict(),
    "activation offload": dict(activation_offload=True),
    "fp8 + offload": dict(base_precision="fp8", activation_offload=True),
    "fp8 + offload + swap 12": dict(base_precision="fp8", activation_offload=True, blocks_to_swap=12),
}


# Every allocation above 64 KiB gets its own mapping, returned to the system when freed: without it glibc's
# heap keeps freed activations resident and the peak RSS measures fragmentation, not what was alive.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _warm_imports() -> None:
    """Imports the loaders and the planner's tracer use, so their memory is in the baseline, not the measurement."""
    import diffusers.loaders.single_file_utils  # noqa: F401
    import peft  # noqa: F401
    from diffusers import WanVACETransformer3DModel  # noqa: F401

    from ipa_train.memory.plan import RunShape, Settings, describe_model, predict

    predict(describe_model("tiny"), RunShape(3, 4, 6, rank=4, device="cpu"), Settings())


# ------------------------------------------------------------------------------------------------ 1-3: no weights


def exact_bytes() -> None:
    from torch import nn

    from ipa_train.memory.plan import RunShape, Settings, describe_model, lora_params, weight_bytes

    run = RunShape.from_pixels(81, 480, 832)
    print("## 1. Exact bytes (real configs on the meta device)")
    print(f"{'model':18} {'params':>9} {'bf16':>9} {'fp8':>9} {'LoRA r128':>10} {'+AdamW':>9}   swapped N: on GPU / host (fp8)")
    for name in ("wan2.1-vace-1.3b", "wan2.1-vace-14b"):
        spec = describe_model(name)
        blocks = len(spec.block_names)
        bf16 = weight_bytes(spec, run, Settings())[0]
        fp8 = weight_bytes(spec, run, Settings("fp8"))[0]
        lora = lora_params(spec, run)
        swaps = []
        for n in (blocks // 2, blocks - 1, blocks):
            gpu, buffers, host = weight_bytes(spec, run, Settings("fp8", n, True))
            swaps.append(f"{n}: {(gpu + buffers) / GIB:.2f} / {host / GIB:.2f}")
        print(f"{name:18} {spec.total_params / 1e9:8.3f}B {bf16 / GIB:8.2f}G {fp8 / GIB:8.2f}G {lora / 1e6:9.1f}M "
              f"{16 * lora / GIB:8.2f}G   " + ", ".join(swaps) + "  GiB")
    del nn


CUDA_EXTRAS = ("swap_release_wait", "ddp_buckets", "attention_matrix")


def _held(spec, settings) -> int:
    """The host bytes the tensors themselves hold (what the planner counted before the allocator's rounding)."""
    from ipa_train.memory.plan import RunShape, predict

    return predict(spec, RunShape.from_pixels(81, 480, 832, device="cpu", precision="bf16"), settings).host


def predictions() -> None:
    from ipa_train.memory.plan import GIB as G
    from ipa_train.memory.plan import PlanError, RunShape, Settings, choose, describe_model, predict, vram_margin

    run = RunShape.from_pixels(81, 480, 832)
    print("\n## 2. Planner: 480x832, 81 frames (+1 reference frame: 34,320 tokens), batch 1, rank 128, IPA, bf16 autocast")
    for name in ("wan2.1-vace-1.3b", "wan2.1-vace-14b"):
        spec = describe_model(name)
        blocks = len(spec.block_names)
        ladder = [("bf16", Settings()), ("bf16 + offload", Settings(activation_offload=True)),
                  (f"bf16 + offload + swap {23 if blocks < 48 else 41}", Settings("bf16", 23 if blocks < 48 else 41, True)),
                  ("fp8 + offload", Settings("fp8", 0, True)), (f"fp8 + offload + swap {blocks // 2}", Settings("fp8", blocks // 2, True)),
                  (f"fp8 + offload + swap {blocks}", Settings("fp8", blocks, True))]
        print(f"{name}:")
        for label, settings in ladder:
            plan = predict(spec, run, settings)
            b = plan.breakdown
            print(f"  {label:28} {plan.peak_gb:6.2f} GiB  (weights {b['weights'] / G:.2f} + swap {b['swap_buffers'] / G:.2f} + LoRA "
                  f"{b['lora'] / G:.2f} + activations {b['activations'] / G:.2f} [block {b['of which block_working_set'] / G:.2f}, "
                  f"checkpoints {b['of which checkpoints'] / G:.2f}] + other {(b['inputs'] + b['fp8_dequant'] + b['allocator_margin'] + b['cuda_context']) / G:.2f}"
                  f" + CUDA extras {sum(b.get(k, 0) for k in CUDA_EXTRAS) / G:.2f}); host {plan.host / G:.1f} GiB pinned "
                  f"({plan.host_per_rank and _held(spec, settings) / G:.1f} GiB of tensors)")
        best = predict(spec, run, Settings("fp8", blocks, True)).peak_gb
        goal = 24 if "14b" in name else 8
        print(f"  goal <= {goal} GiB with the best settings: {best:.2f} GiB -> {'met' if best <= goal else 'NOT met'}")
        for budget in (80, 48, 24, 16, 12, 8):
            try:
                plan = choose(spec, run, Settings(), int(budget * G))
                print(f"  budget {budget:>2} GiB (margin {vram_margin(int(budget * G)) / G:.1f}): {plan.settings.describe()} -> "
                      f"{plan.peak_gb:.2f} GiB (host {plan.host / G:.1f} GiB pinned)")
            except PlanError as exc:
                print(f"  budget {budget:>2} GiB: refused: {str(exc)[:150]}...")


def granularity() -> None:
    import torch

    from ipa_train.wan.frozen_linear import dequantize, quantize_fp8

    print("\n## 3. fp8 scale: per tensor vs per output channel (relative error; mean / worst output channel)")
    g = torch.Generator().manual_seed(0)
    cases = {
        "gaussian": 0.02 * torch.randn(2048, 2048, generator=g),
        "rows 1e-2..1": 0.02 * torch.randn(2048, 2048, generator=g) * torch.logspace(-2, 0, 2048).unsqueeze(1),
        "rows 1e-4..1": 0.02 * torch.randn(2048, 2048, generator=g) * torch.logspace(-4, 0, 2048).unsqueeze(1),
        "student-t df=3": 0.02 * torch.distributions.StudentT(3.0).sample((2048, 2048)),
    }
    for label, weight in cases.items():
        row = []
        for granularity_name in ("tensor", "channel"):
            q, scale = quantize_fp8(weight, granularity_name)
            error = dequantize(q, scale, torch.float32) - weight
            per_row = error.norm(dim=1) / weight.norm(dim=1)
            row.append(f"{granularity_name}: {float(error.norm() / weight.norm()):.4f} / {float(per_row.mean()):.4f} / {float(per_row.max()):.4f}")
        print(f"  {label:16} " + "   ".join(row))


# ------------------------------------------------------------------------------------------------ 4-5: measured


def _mid_dataset(root: Path) -> Path:
    import torch

    from ipa_train.data.samples import add_sample, create_dataset
    from ipa_train.data.tensors import SampleTensors

    path = create_dataset(root, "mid")
    g = torch.Generator().manual_seed(0)
    c, f, h, w = MID_LATENT
    for i in range(2):
        add_sample(path, SampleTensors(
            latent=torch.randn(c, f, h, w, generator=g), vace_context=torch.randn(96, f, h, w, generator=g),
            text_embedding=torch.randn(64, MID["text_dim"], generator=g), hand_mask=(torch.rand(1, f - 1, h, w, generator=g) > 0.7).float(),
            ref_frames=1, vace_strength=1.0, text_length=64), status="preferred", meta={"seed": i})
    return path


def child_load(model_file: str, precision: str) -> dict:
    from ipa_train.wan.model import load_transformer

    _warm_imports()
    before = rss_bytes()
    reset_peak_rss()
    t0 = time.perf_counter()
    model = load_transformer(model_file, base_precision=precision)
    held = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return {"seconds": time.perf_counter() - t0, "peak_above_start": peak_rss_bytes() - before, "model_bytes": held}


def child_train(dataset: str, model_file: str, out: str, settings: dict, device: str) -> dict:
    import torch

    from ipa_train.jobs.config import RunConfig
    from ipa_train.training.distributed import Dist, Events
    from ipa_train.training.loop import Trainer

    torch.set_num_threads(2)
    _warm_imports()
    config = RunConfig.from_dict(dict(dataset=dataset, base_model=model_file, output_dir=out, rank=MID_RANK, steps=1, checkpoint_every=0,
                                      gradient_checkpointing=True, learning_rate=1e-4, **settings))
    dist_info = Dist(device=torch.device(device))
    before = rss_bytes()
    trainer = Trainer(config, dist_info, Events(dist_info, stdout=False))
    reset_peak_rss()  # loading's own transient is not the training step's peak (it is measured apart)
    times = []
    for step in range(config.steps):
        t0 = time.perf_counter()
        trainer.train_step(step)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    measured = torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes() - before
    plan = trainer.memory_plan
    # on CPU "host memory" (swapped weights, offloaded checkpoints) is the same RAM the step runs in
    predicted = plan.peak + (plan.host if device == "cpu" else 0)
    return {"measured": measured, "predicted": predicted, "sec_per_step": times[-1], "breakdown": plan.to_json()["breakdown_gb"]}


def _child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **CHILD_ENV}, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measured(device: str) -> None:
    import torch

    from ipa_train.wan.model import build_tiny_transformer, save_original_wan_single_file

    with tempfile.TemporaryDirectory(prefix="ipa-bench-memory-") as tmp:
        tmp = Path(tmp)
        model = build_tiny_transformer(seed=0, **MID)
        model_file = save_original_wan_single_file(model, tmp / "mid_bf16.safetensors", dtype=torch.bfloat16)
        params = sum(p.numel() for p in model.parameters())
        del model
        dataset = _mid_dataset(tmp)
        if device == "cpu":
            print(f"\n## 4. CPU, mid-size model ({params / 1e6:.1f} M parameters, 8+4 blocks 512 wide, 2,048 tokens, rank {MID_RANK}; "
                  "one IPA step; RSS above the process's before the model, peak reset after loading)")
            size = model_file.stat().st_size
            for precision in ("bf16", "fp8"):
                r = _child(["load", str(model_file), precision])
                print(f"  load bf16 file ({size / 2**20:.0f} MiB) as {precision:4}: peak RSS +{r['peak_above_start'] / 2**20:.0f} MiB, "
                      f"model {r['model_bytes'] / 2**20:.0f} MiB ({r['seconds']:.1f} s)")
        else:
            print(f"\n## 5. GPU ({torch.cuda.get_device_name()}), mid-size model")
        base_time = None
        for label, settings in CPU_CASES.items():
            r = _child(["train", str(dataset), str(model_file), str(tmp / label.replace(" ", "_")), json.dumps(settings), device])
            base_time = base_time or r["sec_per_step"]
            what = "peak RSS" if device == "cpu" else "max_memory_allocated"
            print(f"  {label:26} {what} {r['measured'] / 2**20:7.0f} MiB, predicted {r['predicted'] / 2**20:7.0f} MiB"
                  f"{' (GPU + host terms)' if device == 'cpu' else ''}, "
                  f"measured/predicted {r['measured'] / r['predicted']:.2f}; {r['sec_per_step']:.2f} s/step ({r['sec_per_step'] / base_time:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-cpu", action="store_true", help="skip the measured CPU part")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        result = child_load(*rest) if kind == "load" else child_train(rest[0], rest[1], rest[2], json.loads(rest[3]), rest[4])
        print(json.dumps(result))
        return
    exact_bytes()
    predictions()
    granularity()
    if not args.no_cpu:
        measured("cpu")
    import torch

    if torch.cuda.is_available():
        measured("cuda")
    else:
        print("\n## 5. GPU: no GPU available on this machine; measured peaks and s/step per setting not run "
              "(predictions above are uncalibrated)")


if __name__ == "__main__":
    main()
