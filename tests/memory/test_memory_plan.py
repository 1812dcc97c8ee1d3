"""The memory planner's arithmetic against the real Wan2.1-VACE configs built on the meta device (no weights), and
its command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from ipa_train.training import lora
from ipa_train.memory.plan import GIB, RunShape, Settings, describe_model, lora_params, predict, weight_bytes
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
    assert main(["--model", "wan2.1-vace-1.3b", "--vram-budget-gb", "2", "--json"]) == 1
    assert "What would fit" in json.loads(capsys.readouterr().out)["error"]
    assert main(["--model", str(tmp_path / "none.safetensors")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["--model", "wan2.1-vace-1.3b", "--frames", "80"]) == 1
    assert "4k+1 frames" in capsys.readouterr().err
