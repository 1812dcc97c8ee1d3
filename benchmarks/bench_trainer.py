"""Seconds per step and peak memory of one Flow-IPA training step, for the same model, batch and LoRA:

    (a) this trainer: ``ipa_train.training.loop.Trainer.train_step`` (reference = same module, adapter switched off)
    (b) the official recipe: a deep-copied frozen reference model next to the policy
    (c) a plain LoRA flow-matching SFT step (no reference forward): the floor

Goals: (a) holds one copy of the base weights less than (b); time (a)/(c) <= 1.6 (the compute floor is 1.5:
one extra forward on top of a forward and a backward through frozen weights).

Each variant runs in a fresh subprocess, so peak figures do not mix. Memory measured:
  GPU: ``torch.cuda.max_memory_allocated`` during the timed steps.
  CPU: bytes of parameters and buffers held by the model objects, and the process's peak resident set size
       (``ru_maxrss``) minus its resident size before the model was built (so imports do not count).

    python benchmarks/bench_trainer.py                # default: a mid-size random VACE model on CPU
    python benchmarks/bench_trainer.py --size small   # quicker
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SIZES = {
    # diffusers' VACE layout at a width where matmuls, not Python overhead, dominate on CPU
    "small": dict(model=dict(num_attention_heads=2, attention_head_dim=32, ffn_dim=256, num_layers=4, vace_layers=[0, 2], text_dim=64),
                  latent=(16, 5, 16, 16), tokens=32, rank=16),
    "medium": dict(model=dict(num_attention_heads=4, attention_head_dim=48, ffn_dim=768, num_layers=6, vace_layers=[0, 2, 4], text_dim=128),
                   latent=(16, 5, 24, 24), tokens=64, rank=32),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def held_bytes(*modules) -> int:
    seen, total = set(), 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


def run_variant(variant: str, size: str, steps: int, warmup: int) -> dict:
    import torch

    from ipa_train.jobs.config import RunConfig
    from ipa_train.training.distributed import Dist, Events, setup_distributed
    from ipa_train.training.loop import Trainer
    from ipa_train.wan.model import build_tiny_transformer

    spec = SIZES[size]
    device = setup_distributed().device
    tmp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    data = bench_dataset(spec, tmp)
    config = RunConfig.from_dict(dict(dataset=str(data), base_model=f"random-{size}", output_dir=str(tmp / "out"), rank=spec["rank"],
                                      steps=steps + warmup, learning_rate=1e-4, checkpoint_every=0,
                                      objective="sft" if variant == "c" else "ipa"))
    torch.manual_seed(0)
    rss_before = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = build_tiny_transformer(0, **spec["model"])

    if variant in ("a", "c"):
        trainer = Trainer(config, Dist(device=device), Events(Dist(), stdout=False), model=base)
        step = trainer.train_step
        held = held_bytes(trainer.bare)
    else:
        step, held = official_recipe(base, config, spec["rank"], device)

    times = time_steps(step, steps, warmup, device)
    result = {
        "variant": variant,
        "device": str(device),
        "sec_per_step": statistics.median(times),
        "model_bytes": held,
        "base_weight_bytes": sum(p.numel() * p.element_size() for n, p in base.named_parameters() if "lora_" not in n),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_kind"] = "torch.cuda.max_memory_allocated"
    else:
        result["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
        result["peak_kind"] = "peak RSS minus RSS before building the model"
    return result


def bench_dataset(spec: dict, tmp: Path) -> Path:
    """Two random preferred samples of the size's latent shape."""
    import torch

    from ipa_train.data.samples import add_sample, create_dataset
    from ipa_train.data.tensors import SampleTensors
    channels, frames, height, width = spec["latent"]
    data = create_dataset(tmp, "bench")
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        sample = SampleTensors(
            latent=torch.randn(channels, frames, height, width, generator=g),
            vace_context=torch.randn(96, frames, height, width, generator=g),
            text_embedding=torch.randn(spec["tokens"], spec["model"]["text_dim"], generator=g),
            hand_mask=(torch.rand(1, frames - 1, height, width, generator=g) > 0.7).float(),
        )
        add_sample(data, sample, status="preferred")
    return data


def official_recipe(base, config, rank: int, device):
    """Variant (b): the reference is a deep copy taken after adding the (zero) adapter. Returns (step, bytes held)."""
    import torch

    from ipa_train.training import lora as lora_setup
    from ipa_train.training.batching import Sampler, collate, load_training_data
    from ipa_train.training.distributed import Dist
    from ipa_train.training.loss import flow_ipa_loss

    lora_setup.add_trained_lora(base, rank)
    base.to(device).train()
    reference = copy.deepcopy(base).requires_grad_(False).eval()
    params = [p for _, p in lora_setup.trained_parameters(base)]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    # the trainer's sampler and collation, for batches identical to variant (a)'s
    training_data = load_training_data(config)
    sampler = Sampler(config, training_data, Dist(device=device))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step(index: int):
        gen = sampler.generator(index, 0)
        samples = [training_data.preferred[i][1] for i in sampler.indices(index, 0)]
        t = torch.rand(len(samples), generator=gen)
        batch = collate(samples, len(base.config.vace_layers), device, torch.float32)
        noise = torch.randn(batch.x0.shape, generator=gen).to(device)
        tb = t.to(device).view(-1, 1, 1, 1, 1)
        x_t = (1 - tb) * batch.x0 + tb * noise
        kwargs = dict(hidden_states=x_t, timestep=1000 * t.to(device), encoder_hidden_states=batch.text,
                      control_hidden_states=batch.context, control_hidden_states_scale=batch.scale, return_dict=False)
        with autocast:
            with torch.no_grad():
                ref = reference(**kwargs)[0]
            pred = base(**kwargs)[0]
        loss, _ = flow_ipa_loss(pred, ref, noise - batch.x0, t.to(device), batch.hand_mask, ref_frames=batch.ref_frames)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, held_bytes(base, reference)


def time_steps(step, steps: int, warmup: int, device) -> list[float]:
    """Seconds of each step after ``warmup`` untimed ones (synchronised on CUDA)."""
    import torch

    times = []
    for index in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(index)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variant", choices=["a", "b", "c"], help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help="run the three variants this many times, interleaved; report the best")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.size, args.steps, args.warmup)))
        return

    results: dict[str, dict] = {}
    for _ in range(args.repeats):
        for variant in ("a", "b", "c"):
            done = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--size", args.size, "--steps", str(args.steps), "--warmup", str(args.warmup)],
                capture_output=True, text=True, check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if variant not in results or result["sec_per_step"] < results[variant]["sec_per_step"]:
                results[variant] = result
    a, b, c = results["a"], results["b"], results["c"]
    mib = 2**20
    names = {"a": "this trainer (adapter-off reference)", "b": "official recipe (deep-copied reference)", "c": "plain LoRA SFT step"}
    print(f"bench_trainer: size={args.size} device={a['device']} threads={a['threads']} steps={args.steps} (median) base weights={a['base_weight_bytes'] / mib:.1f} MiB")
    print(f"{'variant':44s} {'s/step':>8s} {'model MiB':>10s} {'peak MiB':>9s}")
    for key in "abc":
        r = results[key]
        print(f"({key}) {names[key]:40s} {r['sec_per_step']:8.4f} {r['model_bytes'] / mib:10.1f} {r['peak_bytes'] / mib:9.1f}")
    print(f"peak memory measured as: {a['peak_kind']}")
    print(f"time   a/b = {a['sec_per_step'] / b['sec_per_step']:.3f}   a/c = {a['sec_per_step'] / c['sec_per_step']:.3f}  (goal a/c <= 1.6)")
    saved = b["model_bytes"] - a["model_bytes"]
    print(f"memory a/b (model bytes) = {a['model_bytes'] / b['model_bytes']:.3f}; a holds {saved / mib:.1f} MiB less "
          f"= {saved / a['base_weight_bytes']:.2f} base-weight copies (goal: 1)")
    print(f"memory a/b (peak) = {a['peak_bytes'] / b['peak_bytes']:.3f}; a/c (peak) = {a['peak_bytes'] / c['peak_bytes']:.3f}")
    print(json.dumps({"a": a, "b": b, "c": c}))


if __name__ == "__main__":
    main()
