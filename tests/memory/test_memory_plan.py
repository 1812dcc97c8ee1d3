"""The memory planner's arithmetic against the real Wan2.1-VACE configs built on the meta device (no weights), and
its command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch import nn

from ipa_train.memory.plan import GIB, RunShape, Settings, describe_model, lora_params, predict, weight_bytes
from ipa_train.training import lora
from ipa_train.wan.model import empty_transformer, shipped_config
from support.trainer_helpers import REPO_ROOT, subprocess_env

# Parameter counts of the released models (README, NOTES): 2.15 B / 17.3 B; rank-128 self-attention q/k/v LoRA 35 M / 157 M.
RELEASED = {"wan2.1-vace-1.3b": (2.15e9, 35.4e6), "wan2.1-vace-14b": (17.34e9, 157.3e6)}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_weight_and_lora_bytes_follow_the_parameter_counts(name):
    params, lora_count = RELEASED[name]
    spec = describe_model(name)
    model = empty_transformer(shipped_config(name))
    total = sum(p.numel() for p in model.parameters())
    assert spec.total_params == total and abs(total - params) / params < 0.005
    run = RunShape.from_pixels(81, 480, 832)
    assert run.frames == 22 and (run.height, run.width) == (60, 104)

    block_linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(("blocks.", "vace_blocks."))]
    linear_weights = sum(m.weight.numel() for m in block_linears)
    assert weight_bytes(spec, run, Settings())[0] == 2 * total  # bf16
    fp8 = linear_weights + 4 * sum(m.out_features for m in block_linears) + 2 * (total - linear_weights)
    assert weight_bytes(spec, run, Settings("fp8"))[0] == fp8
    # swapping N blocks takes their linear weights off the GPU and adds two of them back as swap buffers
    blocks = spec.block_names
    for count in (1, 10, len(blocks)):
        swapped = [sum(m.weight.numel() for n, m in model.get_submodule(b).named_modules() if isinstance(m, nn.Linear)) for b in blocks[:count]]
        on_gpu, buffers, host = weight_bytes(spec, run, Settings("fp8", count, True))
        assert host == sum(swapped) + 4 * sum(m.out_features for b in blocks[:count] for m in model.get_submodule(b).modules() if isinstance(m, nn.Linear))
        assert on_gpu == fp8 - host and buffers == 2 * max(swapped) + 2 * 4 * max(
            sum(m.out_features for m in model.get_submodule(b).modules() if isinstance(m, nn.Linear)) for b in blocks[:count])

    # LoRA: what peft itself injects into the real module tree, 16 bytes per element with AdamW
    lora.add_trained_lora(model, rank=128)
    injected = sum(p.numel() for _, p in lora.trained_parameters(model))
    assert lora_params(spec, run) == injected and abs(injected - lora_count) / lora_count < 0.005
    plan = predict(spec, run, Settings())
    assert plan.breakdown["lora"] == 16 * injected
    assert plan.tokens == 22 * 30 * 52
    # checkpoints: one bf16 hidden state (tokens x width) per transformer block
    width = spec.config["num_attention_heads"] * spec.config["attention_head_dim"]
    assert plan.breakdown["of which checkpoints"] == spec.config["num_layers"] * plan.tokens * width * 2
    assert plan.peak == sum(v for k, v in plan.breakdown.items() if not k.startswith("of which"))


def test_each_mode_lowers_the_prediction_and_dpo_doubles_the_batch():
    spec = describe_model("wan2.1-vace-1.3b")
    run = RunShape.from_pixels(81, 480, 832)
    ladder = [Settings(), Settings(activation_offload=True), Settings("fp8", 0, True), Settings("fp8", 20, True), Settings("fp8", 45, True)]
    peaks = [predict(spec, run, s).peak for s in ladder]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == len(peaks)
    without = predict(spec, run, Settings(gradient_checkpointing=False))
    assert without.peak > 3 * peaks[0]  # every block's saved activations
    dpo = predict(spec, RunShape.from_pixels(81, 480, 832, objective="dpo"), Settings())
    assert dpo.breakdown["of which checkpoints"] == 2 * predict(spec, run, Settings()).breakdown["of which checkpoints"]


def test_plan_command_prints_json_and_refuses_clearly(tmp_path, capsys):
    from ipa_train.memory.plan import main

    done = subprocess.run([sys.executable, "-m", "ipa_train.plan", "--model", "wan2.1-vace-14b", "--base-precision", "fp8",
                           "--blocks-to-swap", "40", "--activation-offload", "--json"],
                          cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["model"] == "wan2.1-vace-14b" and result["settings"]["blocks_to_swap"] == 40
    assert 0 < result["peak_gb"] <= 24 and {"weights", "lora", "activations", "cuda_context"} <= set(result["breakdown_gb"])
    assert main(["--model", "wan2.1-vace-1.3b", "--capability", "7.5", "--local-ranks", "2", "--activation-offload", "--json"]) == 0
    turing = json.loads(capsys.readouterr().out)
    assert turing["breakdown_gb"]["attention_matrix"] > 20 and turing["host_gb"] == 2 * turing["host_per_rank_gb"] > 0
    assert main(["--model", "wan2.1-vace-1.3b", "--vram-budget-gb", "2", "--json"]) == 1
    assert "What would fit" in json.loads(capsys.readouterr().out)["error"]
    assert main(["--model", str(tmp_path / "none.safetensors")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["--model", "wan2.1-vace-1.3b", "--frames", "80"]) == 1
    assert "4k+1 frames" in capsys.readouterr().err


def _power_of_two(nbytes: int) -> int:
    """torch 2.13's CachingHostAllocator (``CachingHostAllocator.h``: ``c10::llvm::PowerOf2Ceil``), written apart from
    the planner's ``pinned_bytes``."""
    return 2 ** math.ceil(math.log2(nbytes))


def _allocator_pinned_bytes(name: str, settings: Settings, run: RunShape) -> tuple[int, int]:
    """(bytes the host allocator takes, bytes the tensors hold) for one rank: every linear weight of the blocks block
    swap really picks (``swapped_blocks`` on the real module tree, at their storage bytes), and one offloaded input per
    transformer block (the checkpoint inputs ``activation_offload`` packs: ``tokens x width`` in bf16)."""
    from ipa_train.memory.block_swap import swapped_blocks

    model = empty_transformer(shipped_config(name))
    sizes = []
    for block in swapped_blocks(model, settings.blocks_to_swap):
        for layer in (m for m in model.get_submodule(block).modules() if isinstance(m, nn.Linear)):
            sizes.append(layer.weight.numel() * (1 if settings.base_precision == "fp8" else 2))
    if settings.activation_offload:
        width = model.config.num_attention_heads * model.config.attention_head_dim
        sizes += [predict(describe_model(name), run, settings).tokens * width * 2] * model.config.num_layers
    return sum(_power_of_two(n) for n in sizes), sum(sizes)


@pytest.mark.parametrize("name,settings", [
    ("wan2.1-vace-1.3b", Settings("bf16", 23, True)),
    ("wan2.1-vace-1.3b", Settings("fp8", 45, True)),
    ("wan2.1-vace-14b", Settings("bf16", 41, True)),  # what `auto` picked on a 24 GB card before the margin
    ("wan2.1-vace-14b", Settings("fp8", 48, True)),
    ("wan2.1-vace-14b", Settings("bf16", 0, True)),
])
def test_pinned_host_memory_is_what_the_allocator_takes(name, settings):
    """The planner's host figure on CUDA against the real per-layer sizes under the host allocator's rounding:
    within 5 %. The tensors' own bytes (what the planner counted before) are far off for 14B."""
    run = RunShape.from_pixels(81, 480, 832)
    plan = predict(describe_model(name), run, settings)
    taken, held = _allocator_pinned_bytes(name, settings, run)
    assert abs(plan.host - taken) / taken < 0.05, (plan.host / GIB, taken / GIB)
    if name == "wan2.1-vace-14b":
        assert held / taken < 0.75  # 351 MB inputs take 512 MiB, 70.8 MB feed-forward weights 128 MiB
    # each local rank pins its own copy; on CPU nothing is pinned or rounded (the RSS the CPU benchmark measures)
    two = predict(describe_model(name), RunShape.from_pixels(81, 480, 832, world_size=2, local_ranks=2), settings)
    assert two.host == 2 * plan.host and two.host_per_rank == plan.host
    cpu = predict(describe_model(name), RunShape.from_pixels(81, 480, 832, device="cpu", precision="bf16"), settings)
    assert abs(cpu.host - held) / held < 0.01  # the tensors' bytes (+ fp8 scales)


def test_pinned_bytes_round_like_the_host_allocator():
    from ipa_train.memory.plan import pinned_bytes

    assert [pinned_bytes(n) for n in (0, 1, 2, 3, 4096, 4097)] == [0, 1, 2, 4, 4096, 8192]
    assert pinned_bytes(5120 * 13824 * 1) == 128 * 2**20  # a 14B fp8 feed-forward weight, 70.8 MB
    assert pinned_bytes(34320 * 5120 * 2) == 512 * 2**20  # one offloaded 14B block input, 351 MB


def test_the_budget_keeps_a_margin_and_says_why():
    from ipa_train.memory.plan import PlanError, budget_needed, choose, vram_margin

    spec = describe_model("wan2.1-vace-1.3b")
    run = RunShape.from_pixels(81, 480, 832)
    plain = predict(spec, run, Settings())
    assert vram_margin(8 * GIB) == int(1.5 * GIB) and vram_margin(48 * GIB) == int(0.06 * 48 * GIB)
    assert choose(spec, run, Settings(), plain.peak + GIB).settings != Settings()  # a peak equal to the budget no longer fits
    exact = choose(spec, run, Settings(), budget_needed(plain.peak))
    assert exact.settings == Settings() and exact.peak + vram_margin(exact.budget) <= exact.budget
    assert "GiB usable" in exact.reason and "margin" in exact.reason and exact.to_json()["vram_margin_gb"] == 1.5
    with pytest.raises(PlanError, match=r"\(.* GiB usable after the margin\).*What would fit: .*a GPU with .* GiB free"):
        choose(describe_model("wan2.1-vace-14b"), run, Settings(), 12 * GIB)
    # CUDA-only terms, each counted where it applies
    swap = predict(spec, run, Settings("fp8", 10, True))
    assert swap.breakdown["swap_release_wait"] == swap.breakdown["swap_buffers"] // 2 > 0
    cpu = predict(spec, RunShape.from_pixels(81, 480, 832, device="cpu"), Settings("fp8", 10, True))
    assert "swap_release_wait" not in cpu.breakdown and cpu.breakdown["fp8_dequant"] * 2 == swap.breakdown["fp8_dequant"] * 2
    ddp = predict(spec, RunShape.from_pixels(81, 480, 832, world_size=2), Settings())
    assert ddp.breakdown["ddp_buckets"] == 4 * lora_params(spec, run) and plain.breakdown["ddp_buckets"] == 0


def test_host_memory_counts_windows_cap_and_comfyuis_ram():
    from ipa_train.memory.plan import HostMemory, PlanError, choose

    spec = describe_model("wan2.1-vace-14b")
    run = RunShape.from_pixels(81, 480, 832)
    linux = choose(spec, run, Settings(), 24 * GIB, HostMemory(available=100 * GIB, total=128 * GIB))
    windows = HostMemory(available=100 * GIB, total=96 * GIB, windows=True, comfyui_ram=20 * GIB, comfyui_pinned=8 * GIB)
    assert windows.pinned_cap == 40 * GIB and windows.budget(pinned=True) == 40 * GIB and windows.budget(pinned=False) == 100 * GIB
    capped = choose(spec, run, Settings(), 24 * GIB, windows)
    assert capped.host <= 40 * GIB < linux.host and "Windows lets this job pin 40.0 GiB" in capped.reason
    with pytest.raises(PlanError, match=r"fits the GPU but needs .* GiB of host memory, pinned and rounded up to powers of two.*"
                                        r"Windows lets this job pin 24\.0 GiB.*What would fit: more RAM \(Windows lets a PC pin about half"):
        choose(spec, run, Settings(), 24 * GIB, replace(windows, total=64 * GIB))
    with pytest.raises(PlanError, match=r"ComfyUI holds 20\.0 GiB \(its unloaded models stay in RAM\).*What would fit: more free RAM"):
        choose(spec, run, Settings(), 24 * GIB, HostMemory(available=6 * GIB, total=64 * GIB, comfyui_ram=20 * GIB))
    # several local ranks: each pins its own copy, so the check is against all of them
    ddp = choose(spec, RunShape.from_pixels(81, 480, 832, world_size=2, local_ranks=2), Settings(), 24 * GIB, HostMemory(available=100 * GIB))
    assert ddp.host == 2 * ddp.host_per_rank <= 100 * GIB


def test_attention_backend_and_precision_follow_the_device():
    from ipa_train.jobs.config import ConfigError
    from ipa_train.memory.plan import PlanError, attention_backend, choose
    from ipa_train.training.memory_setup import check_precision

    assert attention_backend((8, 0), torch.bfloat16, 128) == "flash" and attention_backend((9, 0), torch.float16, 128) == "flash"
    assert attention_backend((7, 5), torch.float32, 128) == "efficient" and attention_backend((8, 6), torch.float32, 128) == "efficient"
    assert attention_backend((7, 5), torch.bfloat16, 128) == "math" and attention_backend(None, torch.bfloat16, 128) == "flash"
    spec = describe_model("wan2.1-vace-1.3b")
    turing = predict(spec, RunShape.from_pixels(81, 480, 832, precision="bf16", capability=(7, 5)), Settings())
    ampere = predict(spec, RunShape.from_pixels(81, 480, 832, precision="bf16", capability=(8, 6)), Settings())
    assert ampere.breakdown["attention_matrix"] == 0 and turing.breakdown["attention_matrix"] > 20 * GIB  # S x S scores
    assert predict(spec, RunShape.from_pixels(81, 480, 832, precision="fp32", capability=(7, 5)), Settings()).breakdown["attention_matrix"] == 0
    with pytest.raises(PlanError, match=r"What would fit: precision 'fp32' \(this GPU, compute capability 7\.5, has no fused bf16 attention"):
        choose(spec, RunShape.from_pixels(81, 480, 832, precision="bf16", capability=(7, 5)), Settings(), 16 * GIB)
    check_precision("auto", "cuda", (8, 0))
    check_precision("auto", "cpu", None)
    check_precision("fp32", "cuda", (7, 5))
    with pytest.raises(ConfigError, match=r"precision 'auto' picks bf16, which Tesla T4 \(compute capability 7\.5\).*Set precision 'fp32'"):
        check_precision("auto", "cuda", (7, 5), "Tesla T4")
