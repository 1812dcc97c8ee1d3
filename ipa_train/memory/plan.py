"""The memory planner: peak GPU memory of a training run, predicted before anything is loaded, and the cheapest
memory settings that fit a budget.

Terms (bytes), for one optimizer step at the run's largest sample:
- ``weights``: every frozen base parameter on the GPU at its storage precision (bf16 on a GPU with autocast,
  float32 otherwise; fp8 block linears 1 byte + their scale), minus the linear weights of swapped blocks, plus
  ``swap_buffers``: two swapped blocks' linear weights (the running one and the prefetched one).
- ``lora``: trained LoRA parameters with gradients and AdamW's two moments (16 bytes each, all float32), plus a
  frozen ``init_lora`` at the base precision.
- ``checkpoints``: with gradient checkpointing, the input each checkpointed block keeps for its recompute
  (``B x S x width`` per transformer block, S the patch-token count, and per VACE block when those train); with
  ``activation_offload`` only the one being fetched back is on the GPU.
- ``vace_hints``: the VACE blocks' outputs waiting for their transformer block during the forward pass (and,
  when the VACE blocks train, their gradients waiting for the VACE backward pass).
- ``block_working_set``: the largest block's activations while it runs forward and backward (measured by tracing
  the real diffusers block with its LoRA on the meta device: ``memory_trace.py``); without checkpointing every
  block's saved activations instead.
- ``inputs``: latents, noise, targets, VACE context, text, rotary tables.
- Wan2.2-Animate (``animate_terms.py``): no VACE blocks; its motion encoder, face encoder, face adapter and pose patch
  embedding are in ``weights``; the face-adapter blocks' activations (kept unless checkpointed, which the trainer does
  with gradient checkpointing) and the motion encoder's pass over the face video in the activations; the face video,
  pose latents, CLIP-vision tokens and ``c_concat`` in ``inputs``; the cross-attention reads 257 image tokens more.
- ``fp8_dequant``: the largest fp8 layer dequantised for one matmul (on CUDA two compute-precision temporaries: the
  dequantised weight and the scaled product). ``cuda_context``: CUDA's own memory.
- On CUDA also (what the caching allocator and the streams add, README, Memory): ``swap_release_wait``, a third swap
  buffer (a released block's copy is freed only when the GPU has used it, ``record_stream``); ``ddp_buckets``, DDP's
  gradient buckets (one float32 copy of the trained LoRA gradients) with several ranks; ``attention_matrix`` when
  the device's attention backend is the math kernel (full S x S scores: bf16 before compute capability 8.0).
  ``choose`` keeps ``vram_margin(budget)`` free (max(1.5 GiB, 6 %)): fragmentation across the compute, swap and
  offload streams, and what the allocator reserves beyond what it hands out.

Host memory (``host``): what the modes pin, per local rank, times the local ranks (each DDP rank pins its own copy).
On CUDA every pinned tensor is rounded up to a power of two, as torch's CachingHostAllocator does
(``pinned_bytes``): a 70.8 MB 14B feed-forward weight takes 128 MiB. ``HostMemory`` is what the job may pin:
the RAM available at launch (ComfyUI's unloaded models stay in its RAM), and on Windows at most half the RAM minus
what ComfyUI has pinned itself.

The peak is the largest of the phases (reference forward, policy forward, backward through the transformer
blocks, backward through the VACE blocks). GPU figures are predictions until calibrated against
``torch.cuda.max_memory_allocated`` on a GPU (README, Memory).

Settings, cheapest first: nothing; gradient checkpointing; activation offload; blocks to swap (fewest first);
then the same with an fp8 base. Settings that change no number come before fp8 (which changes the reference
unless the file is already fp8); among those, the least host<->GPU traffic per step wins.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch

from ..choices import BasePrecision, Distributed, Objective, Precision
from ..wan.lora_meta import expert_from_name

GIB = 2**30
CUDA_CONTEXT_BYTES = int(0.75 * GIB)  # CUDA context, cuBLAS/cuDNN workspaces: not in torch's allocator statistics
ALLOCATOR_MARGIN = 0.05  # share of the activation terms added for the caching allocator's rounding and fragmentation
VRAM_MARGIN_MIN = int(1.5 * GIB)  # kept free of any budget on CUDA: max(1.5 GiB, 6 % of the budget)
VRAM_MARGIN_SHARE = 0.06
WINDOWS_PINNED_SHARE = 0.5  # Windows lets a system pin about half its RAM (ComfyUI limits itself to 45 %)
PRESETS = {"wan2.1-vace-1.3b": "wan2.1-vace-1.3b", "wan2.1-vace-14b": "wan2.1-vace-14b",
           "wan2.2-vace-fun-a14b": "wan2.1-vace-14b",  # A14B: two experts, each the VACE-14B network (one planned at a time)
           "wan2.2-animate-14b": "wan2.2-animate-14b"}
TWO_EXPERT_PRESETS = {"wan2.2-vace-fun-a14b"}


class PlanError(ValueError):
    """No memory setting fits, or a setting cannot be honoured; the message names one that would fit."""


def pinned_bytes(nbytes: int) -> int:
    """What torch's CachingHostAllocator takes for one pinned tensor of ``nbytes``: the next power of two
    (``c10::llvm::PowerOf2Ceil`` in torch 2.13's ``CachingHostAllocator.h``, under the default
    ``pinned_max_round_threshold``). Why it matters: a 351 MB block input takes 512 MiB."""
    return 0 if nbytes <= 0 else 1 << (int(nbytes) - 1).bit_length()


def vram_margin(budget_bytes: int) -> int:
    """GPU memory a budget keeps free on CUDA: fragmentation across three streams, the allocator's reserve."""
    return max(VRAM_MARGIN_MIN, int(VRAM_MARGIN_SHARE * budget_bytes))


def budget_needed(peak_bytes: int) -> int:
    """The smallest budget whose usable part (budget minus ``vram_margin``) holds ``peak_bytes``."""
    return max(peak_bytes + VRAM_MARGIN_MIN, int(peak_bytes / (1 - VRAM_MARGIN_SHARE)) + 1)


@dataclass(frozen=True)
class HostMemory:
    """What a job may keep in host memory, measured when it starts (bytes). ``available``: RAM free for it now
    (what ComfyUI holds, its unloaded models included, is already taken); ``total``: the machine's RAM;
    ``comfyui_ram`` / ``comfyui_pinned``: what the ComfyUI process held and had pinned when it launched the job
    (0: unknown, e.g. a run started by hand). Windows lets a system pin about half its RAM: ``pinned_cap``."""

    available: int
    total: int = 0
    windows: bool = False
    comfyui_ram: int = 0
    comfyui_pinned: int = 0

    @property
    def pinned_cap(self) -> Optional[int]:
        if not (self.windows and self.total):
            return None
        return max(0, int(WINDOWS_PINNED_SHARE * self.total) - self.comfyui_pinned)

    def budget(self, pinned: bool) -> int:
        cap = self.pinned_cap if pinned else None
        return self.available if cap is None else min(self.available, cap)

    def describe(self, pinned: bool) -> str:
        parts = [f"{self.available / GIB:.1f} GiB of RAM available"]
        if self.comfyui_ram:
            parts.append(f"ComfyUI holds {self.comfyui_ram / GIB:.1f} GiB (its unloaded models stay in RAM)")
        if pinned and self.pinned_cap is not None:
            parts.append(f"Windows lets this job pin {self.pinned_cap / GIB:.1f} GiB (half the RAM, less "
                         f"{self.comfyui_pinned / GIB:.1f} GiB ComfyUI pinned)")
        return "; ".join(parts)


def attention_backend(capability: Optional[tuple], dtype: torch.dtype, head_dim: int) -> str:
    """The scaled-dot-product kernel torch picks on a CUDA device of compute ``capability`` for ``dtype``: ``flash``
    (sm80+, fp16/bf16, head dim <= 256), ``efficient`` (memory-efficient: sm50+, fp16/fp32, and bf16 from sm80), or
    ``math`` (the full S x S scores: e.g. bf16 on a T4 or a 2080 Ti). None (CPU): ``flash`` (torch's CPU kernel)."""
    if capability is None:
        return "flash"
    sm = tuple(capability)
    if sm >= (8, 0) and dtype in (torch.float16, torch.bfloat16) and head_dim <= 256:
        return "flash"
    if sm >= (5, 0) and (dtype in (torch.float16, torch.float32) or (dtype == torch.bfloat16 and sm >= (8, 0))):
        return "efficient"
    return "math"


@dataclass(frozen=True)
class Settings:
    base_precision: str = BasePrecision.BF16.value
    blocks_to_swap: int = 0
    activation_offload: bool = False
    gradient_checkpointing: bool = True

    def describe(self) -> str:
        parts = [f"base_precision {self.base_precision}", f"blocks_to_swap {self.blocks_to_swap}",
                 f"activation_offload {'on' if self.activation_offload else 'off'}",
                 f"gradient_checkpointing {'on' if self.gradient_checkpointing else 'off'}"]
        return ", ".join(parts)


@dataclass
class RunShape:
    """What the run trains on: latent size (frames include the VACE reference frames), batch, LoRA."""

    frames: int
    height: int  # latent height (pixels / 8)
    width: int
    batch_size: int = 1
    text_tokens: int = 512
    rank: int = 128
    targets: tuple = ("self_attn_qkv",)
    objective: str = Objective.IPA.value
    init_lora_params: int = 0
    device: str = "cuda"  # "cuda": bf16 autocast, base in bf16; "cpu": float32 everywhere
    precision: str = Precision.AUTO.value
    distributed: str = Distributed.DDP.value
    world_size: int = 1
    capability: Optional[tuple] = None  # the CUDA device's compute capability (None: unknown or CPU)
    local_ranks: int = 1  # ranks on this machine: each pins its own swapped weights and offloaded inputs

    @classmethod
    def from_pixels(cls, frames: int, height: int, width: int, ref_frames: int = 1, **kwargs) -> "RunShape":
        """``frames`` video frames (4k+1) at ``height x width`` pixels, plus the VACE reference frame(s)."""
        if (frames - 1) % 4:
            raise PlanError(f"frames={frames}: Wan's video VAE takes 4k+1 frames (e.g. 81)")
        if height % 16 or width % 16:
            raise PlanError(f"{width}x{height}: width and height must be multiples of 16")
        return cls(frames=(frames - 1) // 4 + 1 + ref_frames, height=height // 8, width=width // 8, **kwargs)

    @property
    def compute_bytes(self) -> int:
        return 2 if self.bf16 else 4

    @property
    def bf16(self) -> bool:
        return self.precision == Precision.BF16 or (self.precision == Precision.AUTO and self.device == "cuda")

    @property
    def pinned(self) -> bool:
        """Host copies are pinned (and rounded by the caching host allocator) only on CUDA."""
        return self.device == "cuda"


@dataclass
class ModelSpec:
    """The parameter layout of a Wan2.1-VACE model, from its config on the meta device (no weights)."""

    name: str
    config: dict
    params: dict  # parameter name -> element count
    linears: dict  # linear layer name -> (in, out)
    fp8_stored: dict = field(default_factory=dict)  # linear name -> "tensor" | "none": stored fp8 in the file
    stored_bytes: dict = field(default_factory=dict)  # parameter name -> bytes, for GGUF-quantised weights (kept as stored)
    experts: tuple = ()  # a two-expert preset: ("high", "low"), each expert this network (see ``plan_experts``)

    @property
    def block_names(self) -> list[str]:
        return [f"vace_blocks.{i}" for i in range(self.vace_blocks)] + [f"blocks.{i}" for i in range(self.config["num_layers"])]

    @property
    def vace_blocks(self) -> int:
        return len(self.config.get("vace_layers") or [])

    @property
    def animate(self) -> bool:
        """Wan2.2-Animate: no VACE blocks; a motion encoder, face encoder and face adapter (``animate_terms``)."""
        from .animate_terms import is_animate

        return is_animate(self.config)

    @property
    def gguf(self) -> bool:
        """A GGUF file: its quantised weights stay packed; no block swap and no fp8 with it (``check_settings``)."""
        return self.name.lower().endswith(".gguf")

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    def block_linears(self, block: str) -> list[str]:
        return [name for name in self.linears if name.startswith(block + ".")]


def describe_model(model: str, vace_module: Optional[str] = None) -> ModelSpec:
    """``wan2.1-vace-1.3b``, ``wan2.1-vace-14b``, ``wan2.2-vace-fun-a14b`` (each expert), ``tiny``, a single file (header only; with its ``vace_module``), a
    GGUF file or a diffusers folder."""
    from ..wan.model import TINY_VACE_CONFIG, shipped_config

    fp8_stored: dict = {}
    stored_bytes: dict = {}
    key = str(model).lower()
    if key in PRESETS:
        config, name = shipped_config(PRESETS[key]), key
    elif key == "tiny":
        config, name = {"_class_name": "WanVACETransformer3DModel", **TINY_VACE_CONFIG}, "tiny"
    else:
        config, fp8_stored, stored_bytes, name = _describe_file(Path(model), vace_module)
    spec = describe_config(config, name, fp8_stored)
    spec.stored_bytes = stored_bytes
    if key in TWO_EXPERT_PRESETS:
        spec.experts = ("high", "low")
    return spec


def describe_config(config: dict, name: str = "model", fp8_stored: Optional[dict] = None) -> ModelSpec:
    """The ``ModelSpec`` of a diffusers ``WanVACETransformer3DModel`` config (built on the meta device)."""
    from torch import nn

    from ..wan.animate import empty_animate_transformer
    from ..wan.model import empty_transformer
    from .animate_terms import is_animate

    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()}
    meta = empty_animate_transformer(config) if is_animate(config) else empty_transformer(config)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(meta.config).items()}  # with the defaults
    params = {n: p.numel() for n, p in meta.named_parameters()}
    linears = {n: (m.in_features, m.out_features) for n, m in meta.named_modules() if isinstance(m, nn.Linear)}
    return ModelSpec(name, config, params, linears, dict(fp8_stored or {}))


def _describe_file(path: Path, vace_module: Optional[str] = None) -> tuple[dict, dict, dict, str]:
    """(config, fp8-stored linears, bytes of GGUF-quantised parameters, name) of a model file, from headers only."""
    from ..wan.model import ModelFile, ModelLoadError

    if path.is_dir():
        config_file = path / "config.json" if (path / "config.json").exists() else path / "transformer" / "config.json"
        if not config_file.exists():
            raise PlanError(f"{path} is a folder without config.json")
        return json.loads(config_file.read_text()), {}, {}, path.name
    if not path.is_file():
        raise PlanError(f"--model {path}: no such file; give wan2.1-vace-1.3b, wan2.1-vace-14b, wan2.2-vace-fun-a14b, wan2.2-animate-14b or a .safetensors file")
    if path.suffix.lower() == ".gguf":
        return _describe_gguf(path)
    animate = _describe_animate(path)
    if animate is not None:
        return animate
    try:
        described = ModelFile.describe(path, vace_module)
    except ModelLoadError as exc:
        raise PlanError(str(exc)) from exc
    return described.config, described.fp8_linears(), {}, described.name


def _describe_animate(path: Path) -> Optional[tuple[dict, dict, dict, str]]:
    """A Wan2.2-Animate file's config (from its header), or None for any other model."""
    from ..wan.animate import detect_animate_config, is_animate_weights
    from ..wan.model import ModelLoadError, read_checkpoint_header

    try:
        shapes = read_checkpoint_header(path)[0]
        return (detect_animate_config(shapes), {}, {}, path.name) if is_animate_weights(shapes) else None
    except ModelLoadError as exc:
        raise PlanError(str(exc)) from exc


def _describe_gguf(path: Path) -> tuple[dict, dict, dict, str]:
    """A GGUF file's config and the stored bytes of its quantised tensors (they stay quantised on the GPU), read from
    its header with the ``gguf`` package's reader (memory-mapped, no tensor is loaded)."""
    from ..wan.model import ModelLoadError, detect_config, diffusers_key_to_original
    from ..wan.vace_module import strip_prefix

    try:
        import gguf
    except ImportError:
        raise PlanError(f"{path.name} is a GGUF file: planning for it needs the 'gguf' package (pip install gguf)") from None
    reader = gguf.GGUFReader(str(path))
    plain = {"F32", "F16", "BF16"}
    shapes, stored = {}, {}
    for tensor in reader.tensors:
        shapes[tensor.name] = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        if tensor.tensor_type.name not in plain:
            stored[tensor.name] = int(tensor.n_bytes)
    del reader
    shapes, stored = strip_prefix(shapes), strip_prefix(stored)
    try:
        config = detect_config(shapes)
    except ModelLoadError as exc:
        raise PlanError(str(exc)) from exc
    names = {diffusers_key_to_original(k): k for k in _diffusers_keys(config)}
    return config, {}, {names[k]: v for k, v in stored.items() if k in names}, path.name


def _diffusers_keys(config: dict) -> list[str]:
    from ..wan.model import empty_transformer

    return list(empty_transformer(config).state_dict())


# ------------------------------------------------------------------------------------------------ the prediction


@dataclass
class MemoryPlan:
    settings: Settings
    breakdown: dict  # term -> bytes
    peak: int
    phase: str  # which phase sets the peak
    host: int  # host memory the modes need (swapped weights, offloaded checkpoints), all local ranks, pinned as rounded
    tokens: int
    host_per_rank: int = 0
    budget: Optional[int] = None  # the GPU budget it was chosen for (bytes), with ``reason``: why these settings
    reason: str = ""

    @property
    def peak_gb(self) -> float:
        return self.peak / GIB

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_gb": round(self.peak_gb, 3),
            "settings": asdict(self.settings),
            "breakdown_gb": {k: round(v / GIB, 3) for k, v in self.breakdown.items()},
            "phase": self.phase,
            "host_gb": round(self.host / GIB, 3),
            "host_per_rank_gb": round(self.host_per_rank / GIB, 3),
            "tokens": self.tokens,
            **({"budget_gb": round(self.budget / GIB, 3), "vram_margin_gb": round(vram_margin(self.budget) / GIB, 3),
                "reason": self.reason} if self.budget is not None else {}),
        }

    def table(self) -> str:
        lines = [f"predicted peak {self.peak_gb:.2f} GiB ({self.phase}) with {self.settings.describe()}"]
        width = max(len(k) for k in self.breakdown)
        for key, value in self.breakdown.items():
            lines.append(f"  {key:<{width}}  {value / GIB:8.3f} GiB")
        lines.append(f"  {'host memory':<{width}}  {self.host / GIB:8.3f} GiB (swapped weights, offloaded checkpoints; "
                     "pinned on CUDA, each tensor rounded up to a power of two; every local rank)")
        if self.reason:
            lines.append(self.reason)
        return "\n".join(lines)


def lora_block_regex(targets, vace: bool) -> Optional[str]:
    """The LoRA target regex relative to one block (``attn1\\.to_[qkv]``), or None when that block type has none."""
    from ..wan.lora_targets import TARGET_GROUPS

    targets = list(targets)
    if vace and "vace_blocks" not in targets:
        return None
    groups = [name for name in TARGET_GROUPS if name in targets] or ["self_attn_qkv"]
    return "(?:" + "|".join(TARGET_GROUPS[name] for name in groups) + ")"


def lora_params(spec: ModelSpec, run: RunShape) -> int:
    """Trained LoRA elements: rank x (in + out) for every linear the run's target regex matches (peft full-matches)."""
    from ..wan.lora_targets import target_regex

    pattern = re.compile(target_regex(run.targets))
    return sum(run.rank * (i + o) for name, (i, o) in spec.linears.items() if pattern.fullmatch(name))


def tokens_of(spec: ModelSpec, run: RunShape) -> int:
    p_t, p_h, p_w = spec.config["patch_size"]
    return (run.frames // p_t) * (run.height // p_h) * (run.width // p_w)


_TRACE_CACHE: dict = {}


def context_tokens(spec: ModelSpec, run: RunShape) -> int:
    """What the cross-attention reads: the text, and on Wan2.2-Animate the CLIP-vision image tokens in front of it."""
    from .animate_terms import IMAGE_TOKENS

    return run.text_tokens + (IMAGE_TOKENS if spec.animate else 0)


def animate_terms(spec: ModelSpec, run: RunShape, batch: int, tokens: int):
    from .animate_terms import animate_memory

    return animate_memory(spec.config, batch, run.frames, run.height, run.width, tokens,
                          torch.bfloat16 if run.bf16 else torch.float32)


def block_memory(spec: ModelSpec, run: RunShape, batch: int, vace: bool):
    from .memory_trace import trace_block

    dtype = torch.bfloat16 if run.bf16 else torch.float32
    context = context_tokens(spec, run)
    key = (json.dumps(spec.config, sort_keys=True), vace, batch, tokens_of(spec, run), context, str(dtype),
           lora_block_regex(run.targets, vace), run.rank)
    if key not in _TRACE_CACHE:
        _TRACE_CACHE[key] = trace_block(spec.config, vace, batch, tokens_of(spec, run), context, dtype,
                                        lora_block_regex(run.targets, vace), run.rank)
    return _TRACE_CACHE[key]


def _stored(spec: ModelSpec, precision: str, base: int) -> tuple[int, dict, dict]:
    """(all frozen base bytes at their storage precision, per block: its linear weights' bytes (with fp8 scales), per
    block: the bytes of each linear weight tensor, the tensors block swap pins)."""
    key = (precision, base)
    cache = spec.__dict__.setdefault("_stored_cache", {})
    if key not in cache:
        blocks = spec.block_names
        total, per_block, tensors = 0, {b: 0 for b in blocks}, {b: [] for b in blocks}
        for name, elements in spec.params.items():
            layer = name[: -len(".weight")] if name.endswith(".weight") else None
            is_linear = layer in spec.linears
            block = name.split(".", 2)[0] + "." + name.split(".", 2)[1] if name.startswith(("blocks.", "vace_blocks.")) else None
            if name in spec.stored_bytes:
                size = spec.stored_bytes[name]
            elif is_linear and (layer in spec.fp8_stored or (precision == BasePrecision.FP8 and block is not None)):
                scale = {"none": 0, "tensor": 4}.get(spec.fp8_stored.get(layer), 4 * spec.linears[layer][1])
                size = elements + scale
            else:
                size = elements * base
            total += size
            if is_linear and block is not None:
                per_block[block] += size
                tensors[block].append(spec.stored_bytes.get(name, elements if size != elements * base else size))
        cache[key] = (total, per_block, tensors)
    return cache[key]


def pinned_weight_bytes(spec: ModelSpec, run: RunShape, settings: Settings) -> int:
    """Host bytes of one rank's swapped weights as block swap keeps them: one tensor per linear weight, pinned and
    rounded up to a power of two on CUDA (``pinned_bytes``), as they are on CPU. fp8 scales stay on the GPU."""
    base = 2 if run.bf16 and run.distributed != Distributed.FSDP2 else 4
    tensors = _stored(spec, settings.base_precision, base)[2]
    sizes = [size for block in spec.block_names[: settings.blocks_to_swap] for size in tensors[block]]
    return sum(pinned_bytes(size) if run.pinned else size for size in sizes)


def weight_bytes(spec: ModelSpec, run: RunShape, settings: Settings) -> tuple[int, int, int]:
    """(bytes on the GPU, swap buffer bytes, bytes kept in host memory) of the frozen base."""
    base = 2 if run.bf16 else 4  # FSDP2 too: it loads and shards the base in bf16 (training.model_setup)
    total, per_block, _ = _stored(spec, settings.base_precision, base)
    swapped = [per_block[b] for b in spec.block_names[: settings.blocks_to_swap]]
    on_gpu = total - sum(swapped)
    if run.distributed == Distributed.FSDP2 and run.world_size > 1:
        largest_block = max(per_block.values())
        on_gpu = on_gpu // run.world_size + 2 * largest_block  # a shard, plus two blocks gathered (as stored)
    buffers = 2 * max(swapped) if swapped else 0
    return on_gpu, buffers, sum(swapped)


def predict(spec: ModelSpec, run: RunShape, settings: Settings) -> MemoryPlan:
    """Peak GPU memory of one training step of ``run`` on ``spec`` with ``settings`` (see the module docstring)."""
    batch = run.batch_size * (2 if run.objective == Objective.DPO else 1)  # DPO runs winners and losers in one batch
    tokens = tokens_of(spec, run)
    weights, swap_buffers, swapped_host = weight_bytes(spec, run, settings)
    acts = _activations(spec, run, settings, batch, tokens)
    phase = max(acts.phases, key=acts.phases.get)
    activations = acts.phases[phase]
    on_cuda = run.device == "cuda"
    trained = lora_params(spec, run)
    breakdown = {
        "weights": weights,
        "swap_buffers": swap_buffers,
        "lora": 16 * trained + run.init_lora_params * (2 if run.bf16 else 4),
        "inputs": _input_bytes(spec, run, batch, tokens),
        "activations": activations,
        "fp8_dequant": _fp8_dequant_bytes(spec, run, settings) * (2 if on_cuda else 1),
        "allocator_margin": int(ALLOCATOR_MARGIN * activations) if on_cuda else 0,
        "cuda_context": CUDA_CONTEXT_BYTES if on_cuda else 0,
        **_cuda_extras(spec, run, swap_buffers, trained, batch, tokens),
    }
    peak = sum(breakdown.values())
    # Reported, not summed: what the activation term of the peak phase consists of.
    breakdown = {**breakdown, "of which checkpoints": acts.checkpoints, "of which block_working_set": acts.working,
                 "of which vace_hints": acts.hints}
    offloaded = settings.gradient_checkpointing and settings.activation_offload
    if run.pinned:
        h = batch * tokens * _hidden_width(spec) * run.compute_bytes  # one offloaded block input: one pinned tensor
        per_rank = pinned_weight_bytes(spec, run, settings) + ((acts.checkpoint_all // h) * pinned_bytes(h) if offloaded else 0)
    else:
        per_rank = swapped_host + (acts.checkpoint_all if offloaded else 0)
    local = max(1, run.local_ranks)
    return MemoryPlan(settings, breakdown, peak, phase, per_rank * local, tokens, host_per_rank=per_rank)


def _cuda_extras(spec: ModelSpec, run: RunShape, swap_buffers: int, trained: int, batch: int, tokens: int) -> dict:
    """What CUDA adds beyond the tensors: a third swap buffer (a released copy is freed only once the GPU has used
    it), DDP's gradient buckets (a float32 copy of the LoRA gradients, with several ranks), and the math attention
    kernel's full S x S scores and probabilities when the device has no fused kernel for the dtype."""
    if run.device != "cuda":
        return {}
    cfg = spec.config
    dtype = torch.bfloat16 if run.bf16 else torch.float32
    math = attention_backend(run.capability, dtype, cfg["attention_head_dim"]) == "math"
    return {
        "swap_release_wait": swap_buffers // 2,
        "ddp_buckets": 4 * trained if run.world_size > 1 and run.distributed == Distributed.DDP else 0,
        "attention_matrix": 2 * batch * cfg["num_attention_heads"] * tokens * tokens * run.compute_bytes if math else 0,
    }


def _hidden_width(spec: ModelSpec) -> int:
    return spec.config["num_attention_heads"] * spec.config["attention_head_dim"]


def _input_bytes(spec: ModelSpec, run: RunShape, batch: int, tokens: int) -> int:
    """The step's inputs: latents (fp32, with their noise and targets), control video, text states, rotary tables."""
    cfg, a = spec.config, run.compute_bytes
    if spec.animate:  # x_t is 16 of the 36 input channels; the other 20 (c_concat) and the pose/face/image inputs
        latent = batch * cfg["latent_channels"] * run.frames * run.height * run.width
        conditions = batch * 20 * run.frames * run.height * run.width * a + animate_terms(spec, run, batch, tokens).inputs
    else:
        latent = batch * cfg["in_channels"] * run.frames * run.height * run.width
        conditions = batch * cfg["vace_in_channels"] * run.frames * run.height * run.width * a
    return (6 * latent * 4 + conditions
            + batch * run.text_tokens * (cfg["text_dim"] + _hidden_width(spec)) * a + 2 * tokens * cfg["attention_head_dim"] * 4)


def _fp8_dequant_bytes(spec: ModelSpec, run: RunShape, settings: Settings) -> int:
    """The largest fp8 linear's weight dequantised for its matmul (one at a time)."""
    fp8_layers = [spec.linears[n] for n in spec.linears if n in spec.fp8_stored or (settings.base_precision == BasePrecision.FP8 and n.startswith(("blocks.", "vace_blocks.")))]
    return max((i * o * run.compute_bytes for i, o in fp8_layers), default=0)


@dataclass
class _Activations:
    phases: dict  # phase name -> activation bytes at its peak
    checkpoints: int  # checkpointed hidden states on the GPU
    checkpoint_all: int  # all checkpointed hidden states (on the host with activation offload)
    working: int  # one block's working set (or all saved activations without checkpointing)
    hints: int  # the VACE hints the main blocks read


@dataclass
class _FaceTerms:
    """Wan2.2-Animate's face adapter and motion encoder (``animate_terms``); all 0 for other models."""

    saved: int = 0  # face-adapter activations kept for the backward pass (none when they are checkpointed)
    peak: int = 0  # one face-adapter block's forward peak without a graph
    motion_encoder: int = 0

    @classmethod
    def of(cls, spec: ModelSpec, run: RunShape, settings: Settings, batch: int, tokens: int) -> "_FaceTerms":
        if not spec.animate:
            return cls()
        terms = animate_terms(spec, run, batch, tokens)
        # With gradient checkpointing the trainer checkpoints each face-adapter block too (wan.animate): it keeps only
        # its inputs, the hidden state the next block's checkpoint holds anyway and the small motion tokens.
        saved = 0 if settings.gradient_checkpointing else terms.face_blocks * terms.face_block_saved
        return cls(saved, terms.face_block_peak, terms.motion_encoder_peak)


def _activations(spec: ModelSpec, run: RunShape, settings: Settings, batch: int, tokens: int) -> _Activations:
    """Activation bytes per phase of the step: the VACE blocks' shared input (1) and their control state, the hints
    they leave for the main blocks."""
    layers, vace = spec.config["num_layers"], spec.vace_blocks
    h = batch * tokens * _hidden_width(spec) * run.compute_bytes  # one hidden-state tensor
    vace_trains = vace > 0 and lora_block_regex(run.targets, vace=True) is not None
    main = block_memory(spec, run, batch, vace=False)
    from .memory_trace import BlockMemory

    vblock = block_memory(spec, run, batch, vace=True) if vace else BlockMemory(0, 0, 0)
    face = _FaceTerms.of(spec, run, settings, batch, tokens)
    phases: dict[str, int] = {}
    hints_forward = vace * h
    reference = 2 * h + hints_forward + max(main.forward_peak, vblock.forward_peak, face.peak) if run.objective != Objective.SFT else 0
    if settings.gradient_checkpointing:
        # Each checkpoint keeps its inputs while the graph needs them: every transformer block's hidden state (the
        # first one is the patch embedding the VACE blocks share), and the VACE blocks' control states only when
        # they train (frozen VACE blocks build no graph, so their checkpoints are dropped at once).
        checkpoint_all = (layers + (vace if vace_trains else 0)) * h
        checkpoints = 2 * h if settings.activation_offload else checkpoint_all
        vace_checkpoints = 2 * h if settings.activation_offload else (vace + 1) * h if vace_trains else 0
        hint_grads = vace * h if vace_trains else 0
        phases["policy forward"] = max(vace_checkpoints + hints_forward, checkpoints) + max(main.forward_peak, vblock.forward_peak) + h + face.saved
        phases["backward, transformer blocks"] = checkpoints + main.backward_peak + hint_grads + face.saved
        if vace_trains:
            phases["backward, VACE blocks"] = vace_checkpoints + hint_grads + vblock.backward_peak
        working = main.backward_peak
    else:
        saved_all = layers * main.saved + (vace * vblock.saved if vace_trains else 0) + face.saved
        phases["backward, transformer blocks"] = saved_all + hints_forward + (main.backward_peak - main.saved)
        checkpoints, checkpoint_all, working = 0, 0, saved_all
    if reference:
        phases["reference forward"] = reference
    if face.motion_encoder:  # before the blocks: the patch embedding and one chunk of face frames in the motion encoder
        phases["face motion encoding"] = 2 * h + face.motion_encoder
    return _Activations(phases, checkpoints, checkpoint_all, working, hints_forward)


# ------------------------------------------------------------------------------------------------ choosing


def candidates(spec: ModelSpec, requested: Settings, fsdp2: bool = False) -> list[Settings]:
    """Every setting at least as memory-saving as ``requested`` (nothing the user asked for is taken away). FSDP2
    shards the weights itself and gathers them in bf16: no block swap and no fp8 with it. A GGUF file's weights stay
    packed: no block swap (the swapped copy would reach the matmul still packed) and no fp8 either."""
    blocks = 0 if fsdp2 or spec.gguf else len(spec.block_names)
    precisions = ([BasePrecision.FP8.value] if requested.base_precision == BasePrecision.FP8 else [BasePrecision.BF16.value]
                  if fsdp2 or spec.fp8_stored or spec.gguf or spec.animate else list(BasePrecision.values()))
    out = []
    for precision in precisions:
        for checkpointing in ([True] if requested.gradient_checkpointing else [False, True]):
            for offload in ([True] if requested.activation_offload else [False, True]):
                if offload and not checkpointing:
                    continue
                swaps = range(requested.blocks_to_swap, blocks + 1) if checkpointing else [requested.blocks_to_swap]
                for swap in swaps:
                    if swap and not checkpointing:
                        continue
                    out.append(Settings(precision, swap, offload, checkpointing))
    return out


def cost(spec: ModelSpec, run: RunShape, plan: MemoryPlan, requested: Settings) -> tuple:
    """Cheaper first: no fp8 conversion (it changes the numbers of a bf16/fp16 file), no added checkpointing (a
    recomputed forward per block), then the least host<->GPU traffic per step."""
    settings = plan.settings
    converts = settings.base_precision == BasePrecision.FP8 and requested.base_precision != BasePrecision.FP8 and not spec.fp8_stored
    adds_checkpointing = settings.gradient_checkpointing and not requested.gradient_checkpointing
    passes = 2 if run.objective == Objective.SFT else 3  # swapped weights cross per forward pass and per recompute
    swapped = weight_bytes(spec, run, settings)[2]
    traffic = swapped * passes + 2 * (plan.host - swapped)  # offloaded checkpoints go out and come back
    return (converts, adds_checkpointing, traffic, settings.blocks_to_swap)


def choose(spec: ModelSpec, run: RunShape, requested: Settings, budget_bytes: Optional[int],
           host: "HostMemory | int | None" = None, fsdp2: bool = False) -> MemoryPlan:
    """The plan for ``requested``, or with a budget the cheapest candidate that fits it: on CUDA the peak within the
    budget less ``vram_margin``, and with ``host`` (``HostMemory``, or plain bytes available) the pinned host memory
    within what the job may pin. Its ``reason`` says why. Raises ``PlanError`` naming what would fit when none does."""
    check_settings(spec, requested)
    if budget_bytes is None:
        return predict(spec, run, requested)
    host = HostMemory(available=int(host)) if isinstance(host, (int, float)) else host
    margin = vram_margin(budget_bytes) if run.device == "cuda" else 0
    usable = budget_bytes - margin
    host_limit = host.budget(run.pinned) if host is not None else None
    plans = [predict(spec, run, s) for s in candidates(spec, requested, fsdp2)]
    on_gpu = [p for p in plans if p.peak <= usable]
    fitting = [p for p in on_gpu if host_limit is None or p.host <= host_limit]
    if fitting:
        best = min(fitting, key=lambda p: cost(spec, run, p, requested))
        best.budget = budget_bytes
        best.reason = (f"memory planner: {best.settings.describe()}: predicted peak {best.peak_gb:.1f} GiB of {usable / GIB:.1f} GiB usable "
                       f"({budget_bytes / GIB:.1f} GiB budget less a {margin / GIB:.1f} GiB margin for fragmentation and the allocator)"
                       + (f", host {best.host / GIB:.1f} GiB of {host_limit / GIB:.1f} GiB ({host.describe(run.pinned)})" if host_limit is not None else "")
                       + ("" if best.settings == requested else f"; asked for {requested.describe()}, which does not fit"))
        return best
    _refuse(spec, run, requested, budget_bytes, usable, plans, on_gpu, host, fsdp2)


def _refuse(spec: ModelSpec, run: RunShape, requested: Settings, budget_bytes: int, usable: int, plans: list, on_gpu: list,
            host: Optional[HostMemory], fsdp2: bool) -> None:
    """The ``PlanError`` when nothing fits: the most memory-saving setting, what it needs, and what would fit."""
    smallest = min(plans, key=lambda p: p.peak)
    hints = [f"a GPU with {budget_needed(smallest.peak) / GIB:.1f} GiB free"]
    host_limit = host.budget(run.pinned) if host is not None else None
    for change, shape in _smaller_runs(run):
        smaller = [p for p in (predict(spec, shape, s) for s in candidates(spec, requested, fsdp2))
                   if p.peak <= usable and (host_limit is None or p.host <= host_limit)]
        if smaller:
            best = min(smaller, key=lambda p: p.peak)
            hints.insert(0, f"{change} ({best.peak_gb:.1f} GiB with {best.settings.describe()})")
            break
    if smallest.breakdown.get("attention_matrix"):
        hints.insert(0, f"precision 'fp32' (this GPU, compute capability {'.'.join(map(str, run.capability))}, has no fused bf16 "
                        f"attention kernel: the math kernel's token x token scores take {smallest.breakdown['attention_matrix'] / GIB:.1f} GiB)")
    host_note = ""
    if on_gpu and host is not None:
        least = min(on_gpu, key=lambda p: p.host)
        ranks = f" ({run.local_ranks} ranks, {least.host_per_rank / GIB:.1f} GiB each)" if run.local_ranks > 1 else ""
        host_note = (f" (it fits the GPU but needs {least.host / GIB:.1f} GiB of host memory{ranks}, "
                     f"{'pinned and rounded up to powers of two, ' if run.pinned else ''}and may use "
                     f"{host.budget(run.pinned) / GIB:.1f} GiB: {host.describe(run.pinned)})")
        smallest = least
        capped = run.pinned and host.pinned_cap is not None and host.pinned_cap < host.available
        hints.insert(0, "more RAM (Windows lets a PC pin about half of it; Linux or WSL2 pins more)" if capped else
                     "more free RAM (close other programs, or restart ComfyUI so it holds fewer models)")
    raise PlanError(
        f"No memory setting fits the budget of {budget_bytes / GIB:.1f} GiB ({usable / GIB:.1f} GiB usable after the margin): "
        f"the most memory-saving one ({smallest.settings.describe()}) needs {smallest.peak_gb:.1f} GiB{host_note} at {run.frames} "
        f"latent frames of {run.height * 8}x{run.width * 8}, batch {run.batch_size}, rank {run.rank}. What would fit: "
        + "; or ".join(hints) + "."
    )


def _smaller_runs(run: RunShape):
    if run.batch_size > 1:
        yield "batch_size 1 (with grad_accum for the same effective batch)", replace(run, batch_size=1)
    for rank in (64, 32, 16):
        if rank < run.rank:
            yield f"rank {rank}", replace(run, rank=rank)


def check_settings(spec: ModelSpec, settings: Settings) -> None:
    blocks = len(spec.block_names)
    if spec.gguf and settings.blocks_to_swap:
        raise PlanError(
            f"blocks_to_swap={settings.blocks_to_swap} with the GGUF file {spec.name}: its weights stay packed, and a swapped "
            "block would reach the matmul still packed. Use blocks_to_swap 0 (a GGUF is already small: Q8_0 14B is about "
            "half of bf16), or the bf16/fp16 .safetensors file with blocks_to_swap")
    if spec.gguf and settings.base_precision == BasePrecision.FP8:
        raise PlanError(f"base_precision 'fp8' with the GGUF file {spec.name}: its weights are quantised already; use "
                        "base_precision 'bf16' (the GGUF stays as stored)")
    if spec.animate and settings.base_precision == BasePrecision.FP8:
        raise PlanError(f"base_precision 'fp8' with Wan2.2-Animate ({spec.name}) is not supported yet: use 'bf16' with "
                        "blocks_to_swap and gradient checkpointing to save memory")
    if settings.blocks_to_swap > blocks:
        raise PlanError(
            f"blocks_to_swap={settings.blocks_to_swap} but {spec.name} has {blocks} blocks ({spec.config['num_layers']} "
            f"transformer + {spec.vace_blocks} VACE); use at most {blocks}"
        )


# ------------------------------------------------------------------------------------------------ two experts


@dataclass
class ExpertsPlan:
    """A two-expert run (Wan2.2-VACE-Fun A14B) planned one expert at a time: the trainer trains one expert, frees it,
    then loads the next (``expert: both``), so the run's GPU peak is the larger expert's peak, never the sum, and the
    memory settings are chosen per expert (an fp8_scaled high-noise file and an fp16 low-noise file differ)."""

    plans: dict  # expert -> MemoryPlan

    @property
    def peak(self) -> int:
        return max(plan.peak for plan in self.plans.values())

    @property
    def host(self) -> int:
        """Host memory the modes pin at once: one expert's (the first one's pinned copies go with its model)."""
        return max(plan.host for plan in self.plans.values())

    def describe(self) -> str:
        largest = max(self.plans, key=lambda expert: self.plans[expert].peak)
        whose = "each expert's" if len({p.peak for p in self.plans.values()}) == 1 else f"the {largest}-noise expert's"
        each = "; ".join(f"{expert}: {plan.peak_gb:.1f} GiB with {plan.settings.describe()}" for expert, plan in self.plans.items())
        return (f"two experts, trained one at a time: GPU peak {self.peak / GIB:.1f} GiB ({whose}, not the sum; "
                f"{each}). Host memory the run pins: {self.host / GIB:.1f} GiB, one expert's at a time. Not counted: the "
                "RAM ComfyUI still holds after sampling (both experts stay in its RAM, already taken from what is available "
                "at launch) and each expert's file while it streams in")

    def to_json(self) -> dict[str, Any]:
        return {"peak_gb": round(self.peak / GIB, 3), "host_gb": round(self.host / GIB, 3), "one_expert_at_a_time": True,
                "experts": {expert: plan.to_json() for expert, plan in self.plans.items()}}


def plan_experts(specs: dict, run: RunShape, requested: Settings, budget_bytes: Optional[int] = None,
                 host: "HostMemory | int | None" = None, fsdp2: bool = False) -> ExpertsPlan:
    """Each expert's plan (``choose`` on its own: the same budget, the same run shape), as the trainer runs them: one
    after the other. ``specs``: expert -> ModelSpec ({"high": ..., "low": ...}). A refusal names the expert."""
    plans = {}
    for expert, spec in specs.items():
        try:
            plans[expert] = choose(spec, run, requested, budget_bytes, host, fsdp2)
        except PlanError as exc:
            raise PlanError(f"the {expert}-noise expert ({spec.name}): {exc}") from None
    return ExpertsPlan(plans)


def expert_specs(model: str, low_noise_model: Optional[str] = None) -> Optional[dict]:
    """{"high": spec, "low": spec} for a two-expert preset or a pair of files; None for a single model."""
    spec = describe_model(model)
    if low_noise_model:
        low = describe_model(low_noise_model)
        hints = (expert_from_name(spec.name), expert_from_name(low.name))  # names are hints only: refuse only a clear swap
        if hints == ("low", "high"):
            raise PlanError(f"the high-noise expert is {spec.name} and the low-noise one {low.name}: their names say the "
                            "other way round; swap them (--model the high-noise file, --low-noise-model the low-noise one)")
        return {"high": spec, "low": low}
    if spec.experts:
        return {expert: spec for expert in spec.experts}
    return None


# ------------------------------------------------------------------------------------------------ command line


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m ipa_train.plan``: the prediction (and with ``--vram-budget-gb`` the choice) for a run."""
    import argparse
    import sys

    from ..wan.lora_targets import TARGET_NAMES

    parser = argparse.ArgumentParser(prog="python -m ipa_train.plan", description=(
        "Predicts the peak GPU memory of an IPA training run before anything is loaded, with its breakdown. "
        "With --vram-budget-gb it picks the cheapest memory settings that fit (never fewer savings than asked for)."))
    parser.add_argument("--model", default="wan2.1-vace-14b", help="wan2.1-vace-1.3b, wan2.1-vace-14b, wan2.2-vace-fun-a14b (two "
                        "experts, planned one at a time), wan2.2-animate-14b, or a model file / diffusers folder (with "
                        "--low-noise-model: the high-noise expert)")
    parser.add_argument("--low-noise-model", default=None, help="a two-expert model's low-noise expert file (--model is the high-noise one)")
    parser.add_argument("--frames", type=int, default=81, help="video frames (4k+1)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--ref-frames", type=int, default=1, help="VACE reference image frames in front of the video")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--targets", nargs="+", default=["self_attn_qkv"], choices=TARGET_NAMES)
    parser.add_argument("--objective", default=Objective.IPA.value, choices=Objective.values())
    parser.add_argument("--base-precision", default=BasePrecision.BF16.value, choices=BasePrecision.values())
    parser.add_argument("--blocks-to-swap", type=int, default=0)
    parser.add_argument("--activation-offload", action="store_true")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--vram-budget-gb", type=float, default=None, help="pick the cheapest settings that fit this many GiB")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cuda: bf16 autocast (default); cpu: float32")
    parser.add_argument("--capability", type=float, default=None, help="the GPU's compute capability (e.g. 7.5): its attention kernel")
    parser.add_argument("--local-ranks", type=int, default=1, help="DDP ranks on this machine (each pins its own host copies)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (peak_gb, settings, breakdown_gb, ...)")
    args = parser.parse_args(argv)
    try:
        specs = expert_specs(args.model, args.low_noise_model)
        spec = specs["high"] if specs else describe_model(args.model)
        run = RunShape.from_pixels(args.frames, args.height, args.width, ref_frames=args.ref_frames, batch_size=args.batch_size,
                                   rank=args.rank, targets=tuple(args.targets), objective=args.objective, device=args.device,
                                   capability=tuple(int(n) for n in f"{args.capability:.1f}".split(".")) if args.capability else None,
                                   world_size=args.local_ranks, local_ranks=args.local_ranks)
        requested = Settings(args.base_precision, args.blocks_to_swap, args.activation_offload, args.gradient_checkpointing)
        budget = int(args.vram_budget_gb * GIB) if args.vram_budget_gb else None
        plan = plan_experts(specs, run, requested, budget) if specs else choose(spec, run, requested, budget)
    except PlanError as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_plan(args, spec, run, plan)
    return 0


def _print_plan(args, spec: ModelSpec, run: RunShape, plan) -> None:
    head = {"model": spec.name, "parameters": spec.total_params, "lora_parameters": lora_params(spec, run)}
    if args.json:
        print(json.dumps({**head, **plan.to_json()}))
        return
    per_expert = " per expert" if isinstance(plan, ExpertsPlan) else ""
    print(f"{spec.name}: {spec.total_params / 1e9:.2f} B parameters{per_expert}, LoRA {lora_params(spec, run) / 1e6:.1f} M, "
          f"{args.frames} frames at {args.width}x{args.height} -> {tokens_of(spec, run)} tokens, batch {args.batch_size}")
    if isinstance(plan, ExpertsPlan):
        print(plan.describe())
        for expert, one in plan.plans.items():
            print(f"{expert}-noise expert ({_expert_model(args, expert)}):")
            print(one.table())
    else:
        print(plan.table())


def _expert_model(args, expert: str) -> str:
    return (args.low_noise_model if expert == "low" and args.low_noise_model else args.model)
