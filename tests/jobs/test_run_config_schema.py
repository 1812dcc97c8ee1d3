"""The run.json key schema (``RunConfig``'s fields with their ``KeySpec``) and what is derived from it: the
validation, the trainer's flags and README's key table. Old run.json files load unchanged."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re

import pytest

from conftest import REPO_ROOT, requires_comfyui
from ipa_train.choices import BasePrecision, Distributed, Objective, Precision
from ipa_train.jobs.config import KEYS, NUMBER_RANGES, ConfigError, RunConfig
from ipa_train.training import cli

# A run.json as the node, the demo and users wrote it before the schema (a literal dict, some keys left out).
OLD_RUN_JSON = {
    "dataset": "/data/ipa_datasets/hands", "base_model": "/models/wan.safetensors", "output_dir": "/out/ipa_runs/hands-1",
    "lora_name": "ipa_hands", "objective": "dpo", "beta": 300, "hand_weight": 10.0, "rank": 64, "alpha": 32.0,
    "learning_rate": 0.0001, "steps": 500, "batch_size": 1, "grad_accum": 2, "precision": "bf16",
    "gradient_checkpointing": True, "seed": 7, "checkpoint_every": 100, "distributed": "ddp",
    "init_lora": [{"path": "/models/loras/style.safetensors", "strength": 0.5}], "base_precision": "fp8",
    "blocks_to_swap": 4, "activation_offload": False, "vram_budget_gb": 23.5,
}


def _readme_script():
    spec = importlib.util.spec_from_file_location("readme_run_json", REPO_ROOT / "scripts" / "readme_run_json.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_key_table_is_the_generated_one():
    script = _readme_script()
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert script.replace_table(readme, script.key_table()) == readme, "run python scripts/readme_run_json.py"
    for name in KEYS:
        assert f"| `{name}` |" in readme


def test_readme_script_refuses_a_readme_without_markers():
    with pytest.raises(ValueError, match="marker"):
        _readme_script().replace_table("no table here", "| key |")


def test_an_old_run_json_loads_to_the_same_config(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(OLD_RUN_JSON))
    loaded = RunConfig.load(path)
    built = RunConfig(**{**OLD_RUN_JSON, "beta": 300.0})
    built.validate()
    assert loaded == built
    assert loaded.objective == Objective.DPO and loaded.base_precision == BasePrecision.FP8
    written = loaded.to_dict()
    assert list(written) == [f.name for f in dataclasses.fields(RunConfig)]  # flat, every key, schema order
    assert {key: written[key] for key in OLD_RUN_JSON} == {**OLD_RUN_JSON, "beta": 300.0}
    assert json.loads(json.dumps(written)) == written
    saved = loaded.save(tmp_path / "again.json")
    assert RunConfig.load(saved) == loaded


def test_enum_members_are_their_strings_in_run_json(tmp_path):
    config = RunConfig(dataset="d", base_model="tiny", output_dir="o", objective=Objective.SFT, precision=Precision.FP32,
                       distributed=Distributed.FSDP2)
    config.validate()
    written = config.to_dict()
    assert (written["objective"], written["precision"], written["distributed"]) == ("sft", "fp32", "fsdp2")
    assert all(type(written[key]) is str for key in ("objective", "precision", "distributed"))
    assert f"{Objective.SFT}" == str(Objective.SFT) == "sft"


def test_choices_and_ranges_come_from_the_schema():
    for name, spec in KEYS.items():
        if spec.choices is not None:
            bad = {"dataset": "d", "base_model": "tiny", "output_dir": "o", name: "nonsense"}
            with pytest.raises(ConfigError, match=re.escape(f"{name}='nonsense' is not one of {list(spec.choices.values())}")):
                RunConfig.from_dict(bad)
    assert set(NUMBER_RANGES) == {name for name, spec in KEYS.items() if spec.range is not None and spec.generic}
    assert "blocks_to_swap" not in NUMBER_RANGES and KEYS["blocks_to_swap"].range == (0, 4096, False)


def test_trainer_flags_are_derived_from_the_schema(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"dataset": "d", "base_model": "tiny", "output_dir": "o"}))
    args = cli.parse_args(["--config", str(path), "--lr-scheduler", "cosine", "--output", "elsewhere", "--alpha", "8",
                           "--gradient-checkpointing", "--targets", "self_attn_qkv", "ffn", "--set", "dropout=0.1"])
    config = cli.resolve_config(args)
    assert (config.lr_scheduler, config.output_dir, config.alpha, config.gradient_checkpointing) == ("cosine", "elsewhere", 8.0, True)
    assert config.targets == ["self_attn_qkv", "ffn"] and config.dropout == 0.1
    flagged = set(cli.OVERRIDE_FLAGS) | set(cli.SWITCH_FLAGS) | set(cli.LIST_FLAGS)
    assert flagged == {name for name, spec in KEYS.items() if spec.cli is not None}
    assert cli.OVERRIDE_FLAGS["rank"] is int and cli.OVERRIDE_FLAGS["beta"] is float and cli.OVERRIDE_FLAGS["objective"] is str
    with pytest.raises(ConfigError, match="lr_scheduler='linear' is not one of"):
        cli.resolve_config(cli.parse_args(["--config", str(path), "--lr-scheduler", "linear"]))


@requires_comfyui
def test_node_widgets_that_mirror_keys_take_choices_and_tooltips_from_the_schema():
    from support.comfy_tiny import load_pack_cpu

    load_pack_cpu()
    from comfyui_ipa_pack.nodes.train_lora import IPATrainLoRA

    inputs = {spec.id: spec for spec in IPATrainLoRA.define_schema().inputs}
    mirrored = [name for name, spec in KEYS.items() if spec.tooltip]
    assert {"objective", "beta", "precision", "distributed", "base_precision", "blocks_to_swap"} <= set(mirrored)
    for name in mirrored:
        assert inputs[name].tooltip == KEYS[name].tooltip, name
    for name in ("objective", "precision", "distributed", "base_precision"):
        assert inputs[name].options == list(KEYS[name].choices.values()), name
