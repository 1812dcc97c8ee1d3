"""Two-expert samples (Wan2.2-VACE-Fun A14B, issue 21) in the trainer, CPU only: each expert's t range, its own
reference, the refusals, `both` writing one LoRA per expert with its metadata, and resume of `both`. The experts are
two tiny random VACE transformers saved as diffusers folders (the diffusers layout); the ComfyUI layout and the
velocity parity with ComfyUI are in tests/host/test_two_experts_train_comfy.py."""

from __future__ import annotations

import json

import pytest
import torch

from ipa_train.data.layout import DatasetError
from ipa_train.data.manifest import read_manifest
from ipa_train.data.samples import add_sample, create_dataset
from ipa_train.data.two_experts import Switch
from ipa_train.fileio import load_safetensors, read_safetensors_metadata
from ipa_train.jobs.config import ConfigError, RunConfig
from ipa_train.training.experts import map_t
from ipa_train.training.loop import train
from ipa_train.training.objective import Objective
from ipa_train.training.reference_check import ReferenceMismatch
from ipa_train.wan.fingerprint import diffusers_model_fingerprint
from ipa_train.wan.model import build_tiny_transformer
from support.trainer_helpers import make_sample, one_thread  # noqa: F401 (one_thread: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SWITCH_STEP, SWITCH_SIGMA = 2, 0.6


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Two tiny experts as diffusers folders ({"high": (folder, fingerprint), "low": ...}): other seeds, other weights."""
    root = tmp_path_factory.mktemp("experts")
    out = {}
    for expert, seed in (("high", 11), ("low", 12)):
        model = build_tiny_transformer(seed=seed)
        model.save_pretrained(root / expert, safe_serialization=True)
        out[expert] = (root / expert, diffusers_model_fingerprint(model))
    return out


def two_expert_settings(experts, switch_step=SWITCH_STEP, switch_sigma=SWITCH_SIGMA, low_patches=None) -> dict:
    """A candidate's settings as the IPA VACE Sampler records two experts (top level: the high-noise model)."""
    sigmas = [1.0, 0.9, switch_sigma, 0.3, 0.0]
    record = {expert: {"base_fingerprint": fp, "patches": {}, "model_class": "WAN21_Vace"} for expert, (_, fp) in experts.items()}
    record["high"]["sigmas"], record["low"]["sigmas"] = sigmas[: switch_step + 1], sigmas[switch_step:]
    if low_patches:
        record["low"]["patches"] = low_patches
    return {"base_fingerprint": record["high"]["base_fingerprint"], "patches": {}, "experts": record,
            "switch_step": switch_step, "switch_sigma": switch_sigma, "sampler": "euler", "steps": 4}


def dataset(tmp_path, settings_list, name="ds"):
    folder = create_dataset(tmp_path, name)
    for i, settings in enumerate(settings_list):
        meta = {"settings": settings, "source": "ipa_vace_sampler"} if settings is not None else {"seed": i}
        add_sample(folder, make_sample(i), meta=meta, status="preferred")
    return folder


def config(tmp_path, data, experts, **overrides) -> RunConfig:
    values = dict(dataset=str(data), base_model=str(experts["high"][0]), low_noise_model=str(experts["low"][0]),
                  output_dir=str(tmp_path / "out"), lora_name="hands", rank=4, steps=2, learning_rate=1e-3,
                  checkpoint_every=0, seed=0)
    values.update(overrides)
    return RunConfig.from_dict(values)


def run(cfg, **kwargs):
    events = []
    return train(cfg, callback=events.append, **kwargs), events


@pytest.fixture()
def recorded_t(monkeypatch):
    """Every flow time the trainer's predictions see, with the base it ran on."""
    seen = []
    original = Objective.predict

    def predict(self, module, batch, x_t, t):
        seen.append((self.bare.config.get("_name_or_path", ""), t.detach().clone()))
        return original(self, module, batch, x_t, t)

    monkeypatch.setattr(Objective, "predict", predict)
    return seen


# ------------------------------------------------------------------------------------------------- t ranges


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal", "shifted"])
def test_each_expert_draws_t_inside_its_own_range(sampling):
    cfg = RunConfig.from_dict(dict(dataset="d", base_model="tiny", output_dir="o", timestep_sampling=sampling))
    from ipa_train.training.batching import sample_t

    switch = Switch(SWITCH_STEP, SWITCH_SIGMA)
    u = sample_t(cfg, 4000, torch.Generator().manual_seed(0))
    low, high = map_t(u, switch.t_range("low")), map_t(u, switch.t_range("high"))
    assert float(low.min()) >= 0.0 and float(low.max()) <= SWITCH_SIGMA
    assert float(high.min()) > SWITCH_SIGMA and float(high.max()) <= 1.0
    # mapped, not clipped: the configured schedule's shape inside the range (its median goes along)
    assert abs(float(low.median()) - SWITCH_SIGMA * float(u.median())) < 1e-6
    edges = torch.tensor([0.0, 1.0])
    assert map_t(edges, switch.t_range("low")).tolist() == [0.0, pytest.approx(SWITCH_SIGMA)]
    assert float(map_t(edges, switch.t_range("high"))[0]) > SWITCH_SIGMA  # the switch sigma is the low expert's
    assert torch.equal(map_t(u, (0.0, 1.0)), u)  # one model: unchanged


def test_both_trains_each_expert_on_its_range_and_writes_two_loras(tmp_path, experts, recorded_t):
    data = dataset(tmp_path, [two_expert_settings(experts)] * 2)
    result, events = run(config(tmp_path, data, experts, expert="both"))
    out = tmp_path / "out"
    assert result.status == "finished" and result.step == 4
    assert set(result.lora_paths) == {"low", "high"}
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["hands_high.safetensors", "hands_low.safetensors"]
    for expert, t_range in (("low", [0.0, SWITCH_SIGMA]), ("high", [SWITCH_SIGMA, 1.0])):
        meta = read_safetensors_metadata(out / f"hands_{expert}.safetensors")
        assert meta["ipa.expert"] == expert
        assert json.loads(meta["ipa.expert_t_range"]) == t_range
        assert float(meta["ipa.switch_sigma"]) == SWITCH_SIGMA and meta["ipa.switch_step"] == str(SWITCH_STEP)
        assert meta["ipa.base_model"] == expert  # the expert's own folder
        assert meta["ipa.steps"] == "2"
    # low first, then high: the predictions (policy and reference) of each on its own t range
    low_t = torch.cat([t for name, t in recorded_t[: len(recorded_t) // 2]])
    high_t = torch.cat([t for name, t in recorded_t[len(recorded_t) // 2:]])
    assert float(low_t.max()) <= SWITCH_SIGMA and float(high_t.min()) > SWITCH_SIGMA
    # one run for the node: steps 1..4, one finished event naming both LoRAs, one started event per expert
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert {e["total"] for e in events if e["event"] == "step"} == {4}
    started = [e for e in events if e["event"] == "started"]
    assert [(e["expert"], e["start_step"]) for e in started] == [("low", 0), ("high", 2)]
    finished = [e for e in events if e["event"] == "finished"]
    assert len(finished) == 1 and set(finished[0]["lora_paths"]) == {"low", "high"}
    assert json.loads((out / "run.json").read_text())["expert"] == "both"  # the user's config, not one expert's
    # the two LoRAs differ (other bases, other t): each trained on its own expert
    low_w, high_w = load_safetensors(out / "hands_low.safetensors")[0], load_safetensors(out / "hands_high.safetensors")[0]
    assert set(low_w) == set(high_w) and any(not torch.equal(low_w[k], high_w[k]) for k in low_w)


def test_one_expert_writes_its_lora_only(tmp_path, experts, recorded_t):
    data = dataset(tmp_path, [two_expert_settings(experts)])
    result, _ = run(config(tmp_path, data, experts, expert="high", low_noise_model=None))
    assert [p.name for p in (tmp_path / "out").glob("*.safetensors")] == ["hands_high.safetensors"]
    assert float(torch.cat([t for _, t in recorded_t]).min()) > SWITCH_SIGMA


# ------------------------------------------------------------------------------------------------- refusals


def test_missing_expert_file_is_refused_with_what_to_set(tmp_path, experts):
    data = dataset(tmp_path, [two_expert_settings(experts)])
    for expert in ("low", "both"):
        with pytest.raises(ConfigError, match="low_noise_model to the low-noise model file"):
            run(config(tmp_path, data, experts, expert=expert, low_noise_model=None))
    with pytest.raises(ConfigError, match="low_noise_model='  ' must be"):
        config(tmp_path, data, experts, low_noise_model="  ")
    with pytest.raises(ConfigError, match="expert='middle' is not one of"):
        config(tmp_path, data, experts, expert="middle")


def test_samples_that_disagree_on_the_switch_are_refused_by_name(tmp_path, experts):
    data = dataset(tmp_path, [two_expert_settings(experts), two_expert_settings(experts, switch_step=3, switch_sigma=0.3)])
    first, second = [entry["id"] for entry in read_manifest(data)]
    with pytest.raises(DatasetError, match=rf"same two-expert switch.*switch_step 2 \(sigma 0.6\): {first}; switch_step 3 \(sigma 0.3\): {second}"):
        run(config(tmp_path, data, experts))
    mixed = dataset(tmp_path, [two_expert_settings(experts), None], name="mixed")
    with pytest.raises(DatasetError, match=f"one model: {read_manifest(mixed)[1]['id']}"):
        run(config(tmp_path, mixed, experts))


def test_each_expert_is_checked_against_its_own_record(tmp_path, experts):
    data = dataset(tmp_path, [two_expert_settings(experts)])
    # the high-noise folder given as the low-noise expert: the low expert's recorded fingerprint is not it
    with pytest.raises(ReferenceMismatch, match="another base model than high"):
        run(config(tmp_path, data, experts, expert="low", low_noise_model=str(experts["high"][0])))
    # a patch recorded on the low expert only is refused for the low expert, not for the high one
    patched = dataset(tmp_path, [two_expert_settings(experts, low_patches={"rope_options": {"scale_t": 2.0}})], name="patched")
    with pytest.raises(ReferenceMismatch, match="rope scaling"):
        run(config(tmp_path, patched, experts, expert="low"))
    result, _ = run(config(tmp_path / "h", patched, experts, expert="high"))
    assert result.status == "finished"


def test_expert_is_ignored_for_single_model_samples(tmp_path, experts):
    data = dataset(tmp_path, [{"base_fingerprint": experts["high"][1], "patches": {}}])
    result, _ = run(config(tmp_path, data, experts, expert="both"))
    assert result.status == "finished" and result.step == 2 and result.lora_paths == {}
    assert [p.name for p in (tmp_path / "out").glob("*.safetensors")] == ["hands.safetensors"]
    assert "ipa.expert" not in read_safetensors_metadata(tmp_path / "out" / "hands.safetensors")


# ------------------------------------------------------------------------------------------------- resume


class StopAt:
    """A stop request after global step ``at`` (the trainer asks once per step)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.at


@pytest.mark.parametrize("stop_at", [1, 2, 3], ids=["inside-low", "end-of-low", "inside-high"])
def test_resumed_both_gives_the_uninterrupted_loras(tmp_path, experts, stop_at):
    data = dataset(tmp_path, [two_expert_settings(experts)] * 2)
    whole, _ = run(config(tmp_path / "a", data, experts, expert="both", checkpoint_every=1))
    cfg = config(tmp_path / "b", data, experts, expert="both", checkpoint_every=1)
    stopped, _ = run(cfg, stop_requested=StopAt(stop_at))
    assert stopped.status == "stopped" and stopped.step == stop_at
    state = json.loads((tmp_path / "b" / "out" / "checkpoints" / f"step-{stop_at}" / "state.json").read_text())
    assert state["expert"] == ("low" if stop_at <= 2 else "high") and state["experts"] == 2
    resumed, events = run(cfg, resume=str(tmp_path / "b" / "out"))
    assert resumed.status == "finished" and resumed.step == 4
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(stop_at + 1, 5))
    for expert in ("low", "high"):
        a = load_safetensors(tmp_path / "a" / "out" / f"hands_{expert}.safetensors")[0]
        b = load_safetensors(tmp_path / "b" / "out" / f"hands_{expert}.safetensors")[0]
        assert all(torch.equal(a[k], b[k]) for k in a), expert


def test_resume_refuses_a_missing_earlier_lora_and_another_experts_checkpoint(tmp_path, experts):
    data = dataset(tmp_path, [two_expert_settings(experts)])
    cfg = config(tmp_path, data, experts, expert="both", checkpoint_every=1)
    run(cfg, stop_requested=StopAt(3))
    (tmp_path / "out" / "hands_low.safetensors").unlink()
    with pytest.raises(ConfigError, match="hands_low.safetensors is gone"):
        run(cfg, resume=str(tmp_path / "out"))
    # steps changed: the global numbering (the high expert's steps after the low expert's) would move
    with pytest.raises(ConfigError, match="with steps 2 each.*resume it with steps 2"):
        run(cfg.with_overrides({"steps": 4}), resume=str(tmp_path / "out" / "checkpoints" / "step-3"))
    # a checkpoint of a run of the high expert alone does not continue as the low expert of 'both'
    high_only = config(tmp_path / "h", data, experts, expert="high", steps=3, checkpoint_every=1)
    run(high_only, stop_requested=StopAt(1))
    with pytest.raises(ConfigError, match="high-noise expert's checkpoint.*step 1 belongs to the low-noise expert"):
        run(high_only.with_overrides({"expert": "both"}), resume=str(tmp_path / "h" / "out"))
