"""The frozen base model's linear layers, stored how memory asks for: one mechanism for fp8 files as stored
(kijai's plain float8_e4m3fn, ComfyUI's ``fp8_scaled`` and its mixed-precision ``comfy_quant`` layout), for the
``base_precision: "fp8"`` memory mode, and for block swap (weights kept in host memory, fetched per call).

``FrozenLinear`` is an ``nn.Linear`` (peft wraps it as any linear layer) whose ``weight`` is frozen and either
full precision or fp8 with an optional scale: the dequantised weight is ``weight.to(dtype) * scale.to(dtype)``
in the compute dtype, exactly what ComfyUI's ops compute for the sampling model
(``comfy_kitchen``'s ``dequantize_per_tensor_fp8``: ``x.to(dtype) * scale.to(dtype)``; plain fp8:
``weight.to(dtype)``). The scale is a scalar (ComfyUI's files) or one value per output channel (what
``quantize_fp8`` makes: measured to keep the error lower, see ``benchmarks/bench_memory.py``).

Why not diffusers' ``enable_layerwise_casting``: it stores without a scale (a bf16 Wan weight of magnitude 1e-2
cast straight to e4m3 loses precision, and ComfyUI's scaled files need their scale). Why not torchao's float8
weight-only tensors: peft's torchao LoRA layer supports int8 weights only. The fp8 matmul runs in a small
autograd function that keeps only the fp8 weight (1 byte per element) for the backward pass and dequantises it
again there, instead of letting ``F.linear`` save a bf16 copy (2 bytes per element) per layer. On GPUs with fp8
tensor cores (sm89, sm90 and later) its forward can multiply in fp8 (``torch._scaled_mm``; ``fp8_matmul_kind``
decides) when ``IPA_TRAIN_FP8_MATMUL=scaled_mm`` asks for it. Not by default: it rounds the activations to e4m3
(2-5 % off a layer's output on CPU), so the model would no longer compute what ComfyUI sampled with, which the
reference checks and the loss assume; the CPU and older GPUs always dequantise.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))
E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
GRANULARITIES = ("channel", "tensor")


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def dequantize(weight: torch.Tensor, scale: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``weight.to(dtype) * scale.to(dtype)``: ComfyUI's formula, rounding in the compute dtype as it does."""
    out = weight.to(dtype)
    return out if scale is None else out * scale.to(dtype)


def quantize_fp8(weight: torch.Tensor, granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor]:
    """float8_e4m3fn values and fp32 scale with ``dequantize(q, scale) ~= weight``; ``scale`` is ``[out, 1]``
    (``channel``) or a scalar (``tensor``), chosen so the largest magnitude maps to 448 (e4m3's maximum)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} is not one of {GRANULARITIES}")
    w = weight.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True) if granularity == "channel" and w.dim() == 2 else w.abs().amax()
    scale = (amax / E4M3_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale.to(torch.float32)


def fp8_cast_problem(device: torch.device | str) -> Optional[str]:
    """None when ``device`` can turn fp8 storage into bf16/fp32 (all a frozen fp8 layer needs), else why not."""
    device = torch.device(device)
    try:
        probe = torch.tensor([0.5, -2.0], device=device).to(E4M3)
        back = probe.to(torch.bfloat16 if device.type != "cpu" else torch.float32)
        if back.cpu().float().tolist() != [0.5, -2.0]:
            return f"float8_e4m3fn round trip on {device} gave {back.cpu().tolist()}"
    except (RuntimeError, TypeError) as exc:
        return f"{device} cannot cast float8_e4m3fn tensors ({exc})"
    return None


# "dequant" forces the dequantising matmul everywhere (ComfyUI's default path, for an exact comparison with it);
# unset or "auto": torch._scaled_mm where fp8_matmul_kind allows it.
FP8_MATMUL_ENV = "IPA_TRAIN_FP8_MATMUL"
_KIND_CACHE: dict = {}


def fp8_matmul_kind(device: torch.device | str, weight_dtype: torch.dtype, rowwise: bool, in_features: int, out_features: int,
                    compute_dtype: torch.dtype, capability: Optional[tuple[int, int]] = None) -> str:
    """How a frozen fp8 layer multiplies in the forward pass: ``"scaled_mm"`` (``torch._scaled_mm``, the fp8 tensor
    cores of sm89/sm90 and later: activations quantised to e4m3 on the fly, per row when the weight has a scale
    per output channel, else per tensor) or ``"dequant"`` (the weight dequantised to the compute dtype, then an
    ordinary matmul: ComfyUI's default, and the CPU's path). ``_scaled_mm`` wants an e4m3 weight, a bf16 output,
    both dimensions a multiple of 16, sm89 for per-tensor and sm90 for row-wise scales. ``capability``: the device's
    compute capability (read from the device when not given)."""
    device = torch.device(device)
    if os.environ.get(FP8_MATMUL_ENV, "dequant").lower() != "scaled_mm" or device.type != "cuda" or not hasattr(torch, "_scaled_mm"):
        return "dequant"
    if weight_dtype != E4M3 or compute_dtype != torch.bfloat16 or in_features % 16 or out_features % 16:
        return "dequant"
    capability = tuple(capability or torch.cuda.get_device_capability(device))
    return "scaled_mm" if capability >= ((9, 0) if rowwise else (8, 9)) else "dequant"


def scaled_mm_linear(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                     dtype: torch.dtype) -> torch.Tensor:
    """``F.linear(x, dequantize(weight, scale))`` on the fp8 tensor cores: ``x`` quantised to e4m3 with a scale per
    row (a per-channel weight scale) or one per tensor, ``torch._scaled_mm`` applying both scales in its epilogue."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    tiny = torch.finfo(torch.float32).tiny
    if scale is not None and scale.numel() > 1:
        scale_a = (x2.abs().amax(dim=1, keepdim=True).float() / E4M3_MAX).clamp(min=tiny)
        scale_b = scale.float().reshape(1, -1)
    else:
        scale_a = (x2.abs().amax().float() / E4M3_MAX).clamp(min=tiny).reshape(())
        scale_b = (torch.ones((), device=x.device) if scale is None else scale.float()).reshape(())
    xq = (x2.float() / scale_a).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    out = torch._scaled_mm(xq, weight.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=dtype)
    if bias is not None:
        out = out + bias.to(dtype)
    return out.reshape(*shape[:-1], weight.shape[0])


def _matmul_kind(x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], dtype: torch.dtype) -> str:
    rowwise = scale is not None and scale.numel() > 1
    key = (x.device, weight.dtype, rowwise, weight.shape[1] % 16 == 0 and weight.shape[0] % 16 == 0, dtype,
           os.environ.get(FP8_MATMUL_ENV, "dequant"))
    if key not in _KIND_CACHE:
        _KIND_CACHE[key] = fp8_matmul_kind(x.device, weight.dtype, rowwise, weight.shape[1], weight.shape[0], dtype)
    return _KIND_CACHE[key]


class _Fp8Matmul(torch.autograd.Function):
    """``F.linear`` with a frozen fp8 weight: saves the fp8 weight (not a dequantised copy) for the backward pass.
    The forward runs on the fp8 tensor cores where ``fp8_matmul_kind`` says so; the backward (the input's gradient)
    always multiplies by the dequantised weight: gradients are not quantised."""

    @staticmethod
    def forward(ctx, x, weight, scale, bias, dtype):
        ctx.save_for_backward(weight, scale)
        ctx.dtype, ctx.x_dtype = dtype, x.dtype
        if _matmul_kind(x, weight, scale, dtype) == "scaled_mm":
            try:
                return scaled_mm_linear(x.to(dtype), weight, scale, bias, dtype)
            except RuntimeError as exc:  # a device or torch build without this kernel: dequantise from now on
                _KIND_CACHE.update({key: "dequant" for key, kind in _KIND_CACHE.items() if key[0] == x.device})
                warnings.warn(f"torch._scaled_mm failed on {x.device} ({exc}); fp8 layers dequantise their weights instead")
        return F.linear(x.to(dtype), dequantize(weight, scale, dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        weight, scale = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.to(ctx.dtype).matmul(dequantize(weight, scale, ctx.dtype)).to(ctx.x_dtype)
        return grad_x, None, None, None, None


class FrozenLinear(nn.Linear):
    """A frozen linear layer: ``weight`` full precision or fp8 (+ ``weight_scale``), on the compute device or, with
    ``host_stored``, kept in host memory and fetched for each call (block swap sets ``device_weight`` ahead of time).

    ``compute_dtype`` tells peft which dtype to give the adapters (it would otherwise take the fp8 storage dtype).
    """

    def __init__(self, in_features: int, out_features: int, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 scale: Optional[torch.Tensor] = None, compute_dtype: Optional[torch.dtype] = None):
        nn.Module.__init__(self)  # no nn.Linear.__init__: it would allocate and initialise a full-precision weight
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.register_buffer("weight_scale", scale, persistent=True)
        self.compute_dtype = compute_dtype or (torch.float32 if is_fp8(weight.dtype) else weight.dtype)
        self.host_stored = False
        self.device_weight: Optional[torch.Tensor] = None  # set by the block swapper before a call
        self.fetch: Optional[Callable[["FrozenLinear", torch.device], torch.Tensor]] = None  # fallback fetch (swapper's)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                    compute_dtype: Optional[torch.dtype] = None) -> "FrozenLinear":
        stored = linear.weight.detach() if weight is None else weight
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(linear.in_features, linear.out_features, stored, bias, scale, compute_dtype)

    @property
    def is_fp8(self) -> bool:
        return is_fp8(self.weight.dtype)

    def extra_repr(self) -> str:
        scale = "none" if self.weight_scale is None else ("tensor" if self.weight_scale.numel() == 1 else "channel")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"storage={str(self.weight.dtype).replace('torch.', '')}, scale={scale}, host_stored={self.host_stored}")

    def dequantized_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale, dtype or self.compute_dtype)

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        if self.device_weight is not None:
            return self.device_weight
        if self.host_stored:  # not fetched ahead (a prefetch miss): fetch now, synchronously
            if self.fetch is None:
                raise RuntimeError("a host-stored FrozenLinear was called without a block swapper to fetch its weight")
            return self.fetch(self, x.device)
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._weight_for(x)
        if not is_fp8(weight.dtype):
            return F.linear(x, weight, self.bias)
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        else:
            dtype = x.dtype
        scale = self.weight_scale
        return _Fp8Matmul.apply(x, weight, scale, self.bias, dtype)

    def _apply(self, fn, recurse=True):
        # ``model.to(device)`` moves the bias; the weight keeps its fp8 storage dtype (a dtype cast would undo the point
        # of this layer) and, when host-stored, its place in host memory (the swapper fetches it); the scale stays fp32.
        weight, scale = self._parameters["weight"], self._buffers.get("weight_scale")
        self._parameters["weight"], self._buffers["weight_scale"] = None, None
        try:
            super()._apply(fn, recurse)
        finally:
            self._parameters["weight"], self._buffers["weight_scale"] = weight, scale
        probe = fn(torch.empty(0, dtype=weight.dtype, device=weight.device))
        device = weight.device if self.host_stored else probe.device
        dtype = weight.dtype if is_fp8(weight.dtype) else probe.dtype
        if device != weight.device or dtype != weight.dtype:
            self._parameters["weight"] = nn.Parameter(weight.detach().to(device=device, dtype=dtype), requires_grad=False)
        if scale is not None:  # float32 like ComfyUI's scales; rounded to the compute dtype only when dequantising
            self._buffers["weight_scale"] = scale.to(probe.device)
        return self


def replace_linear(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def block_linear_names(model: nn.Module) -> list[str]:
    """The linear layers inside the transformer blocks and VACE blocks (what fp8 mode stores in fp8 and block swap
    keeps in host memory); embeddings, the time/text projections and the output head stay as they are."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (name.startswith("blocks.") or name.startswith("vace_blocks.")):
            names.append(name)
    return names


def quantize_block_linears(model: nn.Module, compute_dtype: torch.dtype, granularity: str = "channel") -> int:
    """Turns every full-precision block linear of an already built model into an fp8 ``FrozenLinear``, in place
    (the embedded tiny model and models handed to the trainer; files quantise while streaming). Returns the count."""
    count = 0
    for name in block_linear_names(model):
        module = model.get_submodule(name)
        if isinstance(module, FrozenLinear) and module.is_fp8:
            continue
        q, scale = quantize_fp8(module.weight, granularity)
        replace_linear(model, name, FrozenLinear.from_linear(module, q, scale, compute_dtype))
        count += 1
    return count


def to_frozen_linear(model: nn.Module, name: str, compute_dtype: Optional[torch.dtype] = None) -> FrozenLinear:
    """The layer ``name`` as a ``FrozenLinear`` (converted in place from an ``nn.Linear``, same numbers)."""
    module = model.get_submodule(name)
    if isinstance(module, FrozenLinear):
        return module
    frozen = FrozenLinear.from_linear(module, compute_dtype=compute_dtype)
    replace_linear(model, name, frozen)
    return frozen
