"""The planner on Wan2.2-VACE-Fun A14B: two experts, each the VACE-14B network, planned one at a time (the trainer
trains one expert, frees it, then loads the other), so the run needs no more GPU memory than one 14B expert."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ipa_train.memory.plan import GIB, PlanError, RunShape, Settings, choose, describe_model, expert_specs, plan_experts
from support.trainer_helpers import REPO_ROOT, subprocess_env

RUN = RunShape.from_pixels(81, 480, 832)


def test_the_a14b_preset_is_two_14b_experts_and_plans_as_one():
    fourteen = describe_model("wan2.1-vace-14b")
    specs = expert_specs("wan2.2-vace-fun-a14b")
    assert set(specs) == {"high", "low"} and specs["high"].experts == ("high", "low")
    assert all(spec.config == fourteen.config and spec.total_params == fourteen.total_params for spec in specs.values())
    for budget in (None, 24 * GIB, 80 * GIB):
        one = choose(fourteen, RUN, Settings(), budget)
        both = plan_experts(specs, RUN, Settings(), budget)
        assert both.peak == one.peak and both.host == one.host  # not the sum of two experts
        assert all(plan.settings == one.settings for plan in both.plans.values())
    text = both.describe()
    assert "two experts, trained one at a time" in text and "each expert's, not the sum" in text and "one expert's at a time" in text


def test_experts_of_different_files_are_planned_each_on_its_own():
    """An fp8 high-noise file and a bf16 low-noise one: each expert gets its own settings; the run's peak is the larger."""
    high, low = describe_model("wan2.1-vace-14b"), describe_model("wan2.1-vace-14b")
    high.fp8_stored = {name: "tensor" for name in high.linears if name.startswith(("blocks.", "vace_blocks."))}
    plans = plan_experts({"high": high, "low": low}, RUN, Settings(), 40 * GIB)
    assert plans.plans["high"].peak != plans.plans["low"].peak
    assert plans.peak == max(plans.plans["high"].peak, plans.plans["low"].peak)
    assert plans.plans["high"].settings.base_precision == "bf16"  # the fp8 file stays as stored


def test_a_refusal_names_the_expert():
    with pytest.raises(PlanError, match=r"^the high-noise expert \(wan2.2-vace-fun-a14b\): No memory setting fits the budget of 4.0 GiB"):
        plan_experts(expert_specs("wan2.2-vace-fun-a14b"), RUN, Settings(), 4 * GIB)


def test_a_pair_of_files_named_the_other_way_round_is_refused(tmp_path):
    from ipa_train.wan.model import save_original_wan_single_file
    from support.comfy_tiny import build_tiny_comfy_transformer

    model = build_tiny_comfy_transformer(seed=1)
    high = save_original_wan_single_file(model, tmp_path / "wan2.2_fun_vace_high_noise_14B_fp16.safetensors", record_config=False)
    low = save_original_wan_single_file(model, tmp_path / "wan2.2_fun_vace_low_noise_14B_fp16.safetensors", record_config=False)
    assert set(expert_specs(str(high), str(low))) == {"high", "low"}
    with pytest.raises(PlanError, match="their names say the other way round; swap them"):
        expert_specs(str(low), str(high))


def test_the_command_line_plans_the_a14b_one_expert_at_a_time():
    done = subprocess.run([sys.executable, "-m", "ipa_train.plan", "--model", "wan2.2-vace-fun-a14b", "--vram-budget-gb", "24", "--json"],
                          cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["one_expert_at_a_time"] and set(out["experts"]) == {"high", "low"}
    assert out["peak_gb"] == out["experts"]["low"]["peak_gb"] <= 24
