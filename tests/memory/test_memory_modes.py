"""Memory modes on CPU with the tiny random model in the real classes: an fp8-stored base against the full-precision
one (within the quantisation error), block swap and activation offload changing no number (every objective, resume),
their schedules observed, modes that cannot be honoured refused before any weight loads."""

from __future__ import annotations

import pytest
import torch

from ipa_train.fileio import load_safetensors
from ipa_train.jobs.config import ConfigError
from ipa_train.training import lora
from ipa_train.training.distributed import Dist, Events
from ipa_train.training.loop import Trainer
from ipa_train.wan.frozen_linear import FrozenLinear, dequantize, quantize_block_linears, quantize_fp8
from ipa_train.wan.model import build_tiny_transformer
from support.trainer_helpers import make_dataset, one_thread, tiny_config  # noqa: F401 (one_thread: a fixture)

# Measured on the tiny model (seed 0, rank 4, lora_B ~ N(0, 0.1)): forward 1.9e-2, LoRA gradients up to 8.4e-2
# relative (Frobenius), against a relative weight error of 2.4e-2. The bounds leave room for other seeds.
FORWARD_BOUND = 0.05
GRADIENT_BOUND = 0.15


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 16, 3, 4, 6, generator=g), timestep=torch.tensor([400.0]),
                encoder_hidden_states=torch.randn(1, 8, 32, generator=g), control_hidden_states=torch.randn(1, 96, 3, 4, 6, generator=g),
                return_dict=False)


def _lora_model(fp8: bool):
    model = build_tiny_transformer(0)
    if fp8:
        quantize_block_linears(model, torch.float32)
    lora.add_trained_lora(model, rank=4)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in lora.trained_parameters(model):
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    return model


def _forward_and_grads(model):
    out = model(**_inputs())[0]
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in lora.trained_parameters(model)}


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def test_fp8_base_agrees_with_the_full_precision_base_within_the_quantisation_error():
    full, fp8 = _lora_model(False), _lora_model(True)
    assert sum(isinstance(m, FrozenLinear) and m.is_fp8 for m in fp8.modules()) == 53  # every block linear
    out_full, grads_full = _forward_and_grads(full)
    out_fp8, grads_fp8 = _forward_and_grads(fp8)
    weight_error = max(_relative(m.base_layer.dequantized_weight(), full.get_submodule(n).base_layer.weight)
                       for n, m in fp8.named_modules() if hasattr(m, "base_layer") and isinstance(m.base_layer, FrozenLinear))
    forward_error = _relative(out_fp8, out_full)
    gradient_error = max(_relative(grads_fp8[k], grads_full[k]) for k in grads_full)
    print(f"fp8 base: weights {weight_error:.2e}, forward {forward_error:.2e}, LoRA gradients {gradient_error:.2e} (relative)")
    assert 0 < weight_error < 0.04 and 0 < forward_error < FORWARD_BOUND and 0 < gradient_error < GRADIENT_BOUND
    # The error is the quantisation alone: full precision holding the dequantised weights computes the same.
    dequantised = _lora_model(False)
    with torch.no_grad():
        for name, module in fp8.named_modules():
            if isinstance(module, FrozenLinear):
                dequantised.get_submodule(name).weight.copy_(module.dequantized_weight())
    out_deq, grads_deq = _forward_and_grads(dequantised)
    assert _relative(out_fp8, out_deq) < 1e-6 and max(_relative(grads_fp8[k], grads_deq[k]) for k in grads_deq) < 1e-5


def test_per_channel_scales_keep_the_error_lower_than_one_scale_per_tensor():
    """e4m3's exponent range makes one scale per tensor nearly as good on average (both ~2.6 % relative); output
    channels far below the tensor's largest lose more with it: the worst channel's error (measured 2.9 % per
    channel against 5.0 % per tensor here) decides, at 4 bytes per output channel."""
    g = torch.Generator().manual_seed(0)
    weight = 0.02 * torch.randn(1024, 1024, generator=g) * torch.logspace(-4, 0, 1024).unsqueeze(1)
    worst = {}
    for granularity in ("channel", "tensor"):
        q, scale = quantize_fp8(weight, granularity)
        assert q.dtype == torch.float8_e4m3fn and scale.shape == ((1024, 1) if granularity == "channel" else ())
        error = dequantize(q, scale, torch.float32) - weight
        worst[granularity] = float((error.norm(dim=1) / weight.norm(dim=1)).max())
        assert _relative(dequantize(q, scale, torch.float32), weight) < 0.03
    assert worst["channel"] < 0.035 < 0.045 < worst["tensor"]


def test_fp8_matmul_is_chosen_by_the_device_by_contract(monkeypatch):
    """By default the dequantising path everywhere (ComfyUI's own, so the trainer computes what sampling did). Asked
    for (IPA_TRAIN_FP8_MATMUL=scaled_mm): torch._scaled_mm (fp8 tensor cores) where the device has it and the layer
    suits it; still the dequantising path on the CPU, before sm89, for row-wise scales before sm90, for other dtypes
    or shapes."""
    from ipa_train.wan.frozen_linear import E4M3, FP8_MATMUL_ENV, fp8_matmul_kind

    bf16 = torch.bfloat16
    monkeypatch.delenv(FP8_MATMUL_ENV, raising=False)
    assert fp8_matmul_kind("cuda", E4M3, True, 1536, 8960, bf16, capability=(9, 0)) == "dequant"  # the default
    monkeypatch.setenv(FP8_MATMUL_ENV, "scaled_mm")
    assert fp8_matmul_kind("cpu", E4M3, False, 1536, 1536, bf16) == "dequant"
    assert fp8_matmul_kind("cuda", E4M3, False, 1536, 1536, bf16, capability=(8, 6)) == "dequant"  # Ampere: no fp8 cores
    assert fp8_matmul_kind("cuda", E4M3, False, 1536, 1536, bf16, capability=(8, 9)) == "scaled_mm"  # Ada, per tensor
    assert fp8_matmul_kind("cuda", E4M3, True, 1536, 1536, bf16, capability=(8, 9)) == "dequant"  # row-wise needs sm90
    assert fp8_matmul_kind("cuda", E4M3, True, 1536, 8960, bf16, capability=(9, 0)) == "scaled_mm"  # Hopper
    assert fp8_matmul_kind("cuda", E4M3, True, 1536, 8960, torch.float32, capability=(9, 0)) == "dequant"
    assert fp8_matmul_kind("cuda", torch.float8_e5m2, True, 1536, 8960, bf16, capability=(9, 0)) == "dequant"
    assert fp8_matmul_kind("cuda", E4M3, True, 24, 1536, bf16, capability=(9, 0)) == "dequant"  # not a multiple of 16
    monkeypatch.setenv(FP8_MATMUL_ENV, "dequant")
    assert fp8_matmul_kind("cuda", E4M3, True, 1536, 8960, bf16, capability=(9, 0)) == "dequant"


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_fp8_matmul_runs_on_scaled_mm_when_chosen(monkeypatch, granularity):
    """Where the device has fp8 tensor cores each fp8 layer's forward is one torch._scaled_mm call (run here on the
    CPU's implementation), within the activations' e4m3 rounding of the dequantising path; its backward still
    multiplies by the dequantised weight. On the CPU the decision keeps the dequantising path: no call."""
    from ipa_train.wan import frozen_linear

    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(0.05 * torch.randn(48, 64, generator=g))
    q, scale = quantize_fp8(linear.weight, granularity)
    layer = FrozenLinear.from_linear(linear, q, scale, torch.bfloat16)
    x = torch.randn(2, 5, 64, generator=g, dtype=torch.bfloat16, requires_grad=True)
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    frozen_linear._KIND_CACHE.clear()
    reference = layer(x)
    reference.float().square().sum().backward()
    reference_grad, x.grad = x.grad.clone(), None
    assert calls == []  # the CPU dequantises
    monkeypatch.setattr(frozen_linear, "fp8_matmul_kind", lambda *args, **kwargs: "scaled_mm")
    frozen_linear._KIND_CACHE.clear()
    try:
        out = layer(x)
        out.float().square().sum().backward()
    finally:
        frozen_linear._KIND_CACHE.clear()
    assert len(calls) == 1 and out.dtype == torch.bfloat16 and out.shape == reference.shape
    assert 0 < _relative(out.detach().float(), reference.detach().float()) < 0.05  # e4m3 activations: about 2^-4 per element, averaged
    assert _relative(x.grad.float(), reference_grad.float()) < 0.05  # the backward's own matmul is the same


# ---------------------------------------------------------------------------------------------- change no number


def _train(data, out, steps=3, resume=None, **overrides):
    events = []
    trainer = Trainer(tiny_config(data, out, steps=steps, gradient_checkpointing=True, checkpoint_every=2, **overrides), Dist(),
                      Events(Dist(), events.append, stdout=False), resume=resume)
    trainer.run()
    adapter, _ = load_safetensors(out / "checkpoints" / f"step-{steps}" / "adapter.safetensors")
    return adapter, trainer, events


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_block_swap_and_activation_offload_change_no_number(tmp_path, monkeypatch):
    from ipa_train.memory import activation_offload

    monkeypatch.setattr(activation_offload, "MIN_OFFLOAD_BYTES", 0)  # the tiny model's tensors are all small
    data = make_dataset(tmp_path / "ds", preferred=2, rejected=2)
    for objective in ("ipa", "dpo", "sft"):
        targets = ["self_attn_qkv", "vace_blocks"] if objective == "ipa" else ["self_attn_qkv"]
        plain, _, _ = _train(data, tmp_path / f"{objective}-plain", objective=objective, targets=targets)
        assert any(float(v.abs().max()) > 0 for k, v in plain.items() if "lora_B" in k)
        modes = [dict(blocks_to_swap=5, activation_offload=True)]
        if objective == "ipa":
            modes = [dict(blocks_to_swap=5), dict(blocks_to_swap=2), dict(activation_offload=True)] + modes
        for mode in modes:
            adapter, trainer, events = _train(data, tmp_path / f"{objective}-{'-'.join(map(str, mode.values()))}",
                                              objective=objective, targets=targets, **mode)
            assert _same(adapter, plain), (objective, mode)
            assert events[0]["memory"]["settings"]["blocks_to_swap"] == mode.get("blocks_to_swap", 0)
            swapper, offload = trainer.memory.swapper, trainer.memory.offload
            if mode.get("blocks_to_swap"):
                assert swapper.stats.fetched > 0 and events[0]["memory"]["base_storage"]["host_stored_layers"] > 0
                # the weights never leave host memory; the layers only ever hold a fetched copy
                assert all(m.weight.device.type == "cpu" and m.host_stored for name in swapper.names for m in swapper.layers[name])
            if mode.get("activation_offload"):
                assert offload.stats.packed > 0 and offload.stats.unpacked > 0


def test_swap_schedule_prefetches_in_pass_order_and_keeps_two_blocks(tmp_path):
    """One IPA step with all 5 tiny blocks swapped and the VACE blocks trained: reference forward and policy forward
    run VACE 0, 1 then blocks 0, 1, 2; the backward recomputes blocks 2, 1, 0 then VACE 1, 0. Each block is fetched
    by the one before it (prefetch), a pass's first block when it starts, and released when the block after the
    next one starts."""
    from ipa_train.memory.block_swap import BlockSwapper

    data = make_dataset(tmp_path / "ds", preferred=1)
    moves = []
    original_init = BlockSwapper.__init__

    def observed_init(self, model, names, device, move=None):
        def move(tensor, device):
            moves.append(tuple(tensor.shape))
            return tensor.clone()
        original_init(self, model, names, device, move=move)

    BlockSwapper.__init__ = observed_init
    try:
        _, trainer, _ = _train(data, tmp_path / "out", steps=1, blocks_to_swap=5, targets=["self_attn_qkv", "vace_blocks"])
    finally:
        BlockSwapper.__init__ = original_init
    stats = trainer.memory.swapper.stats
    entered = [name for what, name in stats.log if what in ("hit", "miss")]
    forward = ["vace_blocks.0", "vace_blocks.1", "blocks.0", "blocks.1", "blocks.2"]
    assert entered == forward + forward + forward[::-1]
    fetched = [name for what, name in stats.log if what == "fetch"]
    assert fetched == forward + forward + forward[::-1][1:]  # the backward starts on the block the forward ended with
    assert [name for what, name in stats.log if what == "miss"] == ["vace_blocks.0", "vace_blocks.0"]
    resident, peak = set(), 0
    for what, name in stats.log:
        resident = resident | {name} if what == "fetch" else resident - {name} if what == "release" else resident
        peak = max(peak, len(resident))
    assert peak == 2
    assert len(moves) == sum(len(trainer.memory.swapper.layers[name]) for name in fetched)  # every copy went through move


def test_frozen_vace_blocks_are_not_prefetched_in_backward_nor_offloaded(tmp_path, monkeypatch):
    """The VACE blocks frozen (the LoRA on the transformer blocks only): the backward pass never recomputes them, so
    the swapper prefetches none of them there, and activation offload copies none of their inputs to host memory;
    every tensor it copies is read back by the backward pass."""
    from ipa_train.memory import activation_offload

    monkeypatch.setattr(activation_offload, "MIN_OFFLOAD_BYTES", 0)
    data = make_dataset(tmp_path / "ds", preferred=1)
    read_back, packed = set(), set()
    pack, unpack = activation_offload.ActivationOffload.pack, activation_offload.ActivationOffload.unpack

    def observed_pack(self, tensor):
        out = pack(self, tensor)
        packed.add(id(out)) if isinstance(out, activation_offload._Packed) else None
        return out

    def observed_unpack(self, value):
        read_back.add(id(value))
        return unpack(self, value)

    monkeypatch.setattr(activation_offload.ActivationOffload, "pack", observed_pack)
    monkeypatch.setattr(activation_offload.ActivationOffload, "unpack", observed_unpack)
    _, trainer, _ = _train(data, tmp_path / "out", steps=1, blocks_to_swap=5, activation_offload=True, targets=["self_attn_qkv"])
    swapper, offload = trainer.memory.swapper, trainer.memory.offload
    assert swapper.backward_names == ["blocks.0", "blocks.1", "blocks.2"]
    log = swapper.stats.log
    entered = [name for what, name in log if what in ("hit", "miss")]
    forward = ["vace_blocks.0", "vace_blocks.1", "blocks.0", "blocks.1", "blocks.2"]
    assert entered == forward + forward + ["blocks.2", "blocks.1", "blocks.0"]
    backward_start = [i for i, (what, _) in enumerate(log) if what in ("hit", "miss")][2 * len(forward)]
    assert [name for what, name in log[backward_start:] if what == "fetch"] == ["blocks.1", "blocks.0"]
    # offload: the three transformer blocks' hidden states (not the VACE blocks' inputs), each read back
    width = 24
    assert [shape for what, shape in offload.stats.log if what == "pack" and shape == (1, 18, width)] == [(1, 18, width)] * 3
    assert packed and packed <= read_back


def test_offload_keeps_what_the_planner_counts(tmp_path, monkeypatch):
    """The planner's checkpoint term equals the bytes activation offload moves to host memory in one step (the tiny
    model, VACE blocks trained: every block input, plus the text embedding and timestep projection it counts apart)."""
    from ipa_train.memory import activation_offload
    from ipa_train.memory.plan import RunShape, Settings, describe_model, predict

    monkeypatch.setattr(activation_offload, "MIN_OFFLOAD_BYTES", 0)
    data = make_dataset(tmp_path / "ds", preferred=1)
    _, trainer, _ = _train(data, tmp_path / "out", steps=1, activation_offload=True, targets=["self_attn_qkv", "vace_blocks"], objective="sft")
    stats = trainer.memory.offload.stats
    shapes = [shape for what, shape in stats.log if what == "pack"]
    width = 24
    hidden = [s for s in shapes if s == (1, 3 * 2 * 3, width)]
    assert len(hidden) == 3 + 2  # transformer blocks (the first is the VACE blocks' shared input) + VACE control states
    assert stats.unpacked == sum(1 for what, _ in stats.log if what == "unpack") > 0
    run = RunShape(frames=3, height=4, width=6, rank=4, targets=("self_attn_qkv", "vace_blocks"), objective="sft", device="cpu")
    plan = predict(describe_model("tiny"), run, Settings(gradient_checkpointing=True))
    assert plan.breakdown["of which checkpoints"] == sum(4 * torch.Size(s).numel() for s in hidden)


def test_resume_is_bit_identical_with_each_mode(tmp_path, monkeypatch):
    from ipa_train.memory import activation_offload

    monkeypatch.setattr(activation_offload, "MIN_OFFLOAD_BYTES", 0)
    data = make_dataset(tmp_path / "ds", preferred=3)
    for name, mode in (("swap", dict(blocks_to_swap=3)), ("offload", dict(activation_offload=True)), ("fp8", dict(base_precision="fp8"))):
        straight, _, _ = _train(data, tmp_path / f"{name}-a", steps=4, dropout=0.1, **mode)
        _, _, events = _train(data, tmp_path / f"{name}-b", steps=4, dropout=0.1,
                              resume=str(tmp_path / f"{name}-a" / "checkpoints" / "step-2"), **mode)
        resumed, _ = load_safetensors(tmp_path / f"{name}-b" / "checkpoints" / "step-4" / "adapter.safetensors")
        assert events[0]["start_step"] == 2 and _same(resumed, straight), name


# ---------------------------------------------------------------------------------------------- bad input


def test_modes_that_cannot_be_honoured_are_refused_before_any_weight_loads(tmp_path, monkeypatch):
    from ipa_train.training import model_setup
    from ipa_train.wan import frozen_linear

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the settings were checked")

    monkeypatch.setattr(model_setup, "build_model", no_loading)
    data = make_dataset(tmp_path / "ds", preferred=1)

    def refused(message, **overrides):
        events = []
        with pytest.raises(ConfigError, match=message):
            Trainer(tiny_config(data, tmp_path / "out", **overrides), Dist(), Events(Dist(), events.append, stdout=False))
        assert not events

    refused(r"blocks_to_swap=6 but tiny has 5 blocks \(3 transformer \+ 2 VACE\); use at most 5", blocks_to_swap=6, gradient_checkpointing=True)
    refused("blocks_to_swap=2 cannot be combined with distributed 'fsdp2'", blocks_to_swap=2, distributed="fsdp2", gradient_checkpointing=True)
    refused("activation_offload=True needs gradient_checkpointing: true", activation_offload=True)
    refused("base_precision='fp8' cannot be combined with distributed 'fsdp2'", base_precision="fp8", distributed="fsdp2")
    refused("blocks_to_swap=1.5 must be a whole number of blocks", blocks_to_swap=1.5, gradient_checkpointing=True)
    refused("vram_budget_gb=-2 must be a number of GiB above 0", vram_budget_gb=-2)
    refused(r"No memory setting fits the budget of 0\.0 GiB.*What would fit: .*GiB free", vram_budget_gb=1e-6)
    monkeypatch.setattr(frozen_linear, "fp8_cast_problem", lambda device: "cpu cannot cast float8_e4m3fn tensors (test)")
    refused("base_precision 'fp8' needs fp8 casting on the training device, but cpu cannot cast", base_precision="fp8")


def test_budget_picks_the_cheapest_settings_that_fit(tmp_path):
    from ipa_train.memory.plan import GIB, RunShape, Settings, budget_needed, describe_model, predict
    from ipa_train.memory.plan import choose as choose_with_margin

    def choose(spec, run, requested, usable):  # budgets below are what the plan may use: the margin comes on top
        return choose_with_margin(spec, run, requested, budget_needed(usable))

    spec = describe_model("wan2.1-vace-1.3b")
    run = RunShape.from_pixels(81, 480, 832)
    plain = predict(spec, run, Settings())
    assert choose(spec, run, Settings(), plain.peak + 1).settings == Settings()  # fits as asked: unchanged
    offload = predict(spec, run, Settings(activation_offload=True))
    chosen = choose(spec, run, Settings(), offload.peak + 1)
    assert chosen.settings == Settings(activation_offload=True)  # changes no number, moves the least
    blocks = len(spec.block_names)
    bf16_floor = predict(spec, run, Settings("bf16", blocks, True)).peak
    fp8_floor = predict(spec, run, Settings("fp8", blocks, True)).peak
    assert fp8_floor < bf16_floor < 8 * GIB
    between = choose(spec, run, Settings(), (bf16_floor + fp8_floor) // 2)
    assert between.settings.base_precision == "fp8"  # fp8 only when no full-precision setting fits
    swapped = choose(spec, run, Settings(), bf16_floor + 1)
    assert swapped.settings.base_precision == "bf16" and swapped.settings.blocks_to_swap > 0
    asked = choose(spec, run, Settings("fp8"), 100 * GIB)
    assert asked.settings.base_precision == "fp8"  # never fewer savings than asked for
