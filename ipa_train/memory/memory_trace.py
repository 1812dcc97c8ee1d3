"""How much activation memory one transformer block needs, measured by running the real diffusers block (with its
peft LoRA layers) on the meta device: tensors there have shapes and dtypes but no data, so a 14B block at
480x832x81 traces in about a second and allocates nothing.

``LiveBytes`` is a ``TorchDispatchMode`` that counts the bytes of every storage an operation creates and drops
them when the last tensor on that storage dies: what a caching allocator would hold, without its rounding.
Attention is traced with a stand-in for the GPU's flash / memory-efficient kernels (and torch's CPU flash
kernel): it saves query, key, value, output and the log-sum-exp (``[B, heads, S]`` float32) for the backward
pass, never the ``S x S`` matrix that the meta device's math fallback would materialise.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the storages created inside the mode (tensors made before it are not counted)."""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _drop(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                key = tensor.untyped_storage()._cdata
                if key not in self.refs:
                    self.refs[key] = 0
                    self.sizes[key] = tensor.untyped_storage().nbytes()
                    self.live += self.sizes[key]
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(tensor, self._drop, key)
        return out


class _FlashAttention(torch.autograd.Function):
    """The memory of a flash / memory-efficient attention kernel: output like the query, saves q, k, v, the output
    and a float32 log-sum-exp per query row; the backward makes the three input gradients."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _FlashAttention.apply(query, key, value)


@contextmanager
def flash_attention_memory():
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@dataclass
class BlockMemory:
    """Bytes one block needs beyond its weights, at one batch, sequence length and dtype."""

    saved: int  # kept for the backward pass after a forward with grad (no checkpointing)
    backward_peak: int  # peak during forward + backward with grad (what a checkpoint recompute + backward needs)
    forward_peak: int  # peak during a forward without saving (no_grad, or inside a checkpoint)


def trace_block(config: dict, vace: bool, batch: int, tokens: int, text_tokens: int, dtype: torch.dtype,
                lora_regex: Optional[str], rank: int) -> BlockMemory:
    """Traces one transformer block (or VACE block) of ``config`` with LoRA ``lora_regex`` (block-relative module
    names) of ``rank``, everything in ``dtype`` (what bf16 autocast computes in on a GPU; float32 on CPU)."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock
    from diffusers.models.transformers.transformer_wan_vace import WanVACETransformerBlock

    dim = config["num_attention_heads"] * config["attention_head_dim"]
    args = (dim, config["ffn_dim"], config["num_attention_heads"], config["qk_norm"], config["cross_attn_norm"], config["eps"],
            config.get("added_kv_proj_dim"))
    with torch.device("meta"):
        block = WanVACETransformerBlock(*args, apply_input_projection=True, apply_output_projection=True) if vace else WanTransformerBlock(*args)
    if lora_regex:
        from peft import LoraConfig, inject_adapter_in_model

        block = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=lora_regex), block)
    block.to(dtype)
    for name, parameter in block.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    head_dim = config["attention_head_dim"]
    with torch.device("meta"):
        hidden = torch.empty(batch, tokens, dim, dtype=dtype)
        control = torch.empty(batch, tokens, dim, dtype=dtype)
        text = torch.empty(batch, text_tokens, dim, dtype=dtype)
        temb = torch.empty(batch, 6, dim, dtype=dtype)
        rotary = (torch.empty(1, tokens, 1, head_dim), torch.empty(1, tokens, 1, head_dim))

    def run():
        if vace:
            hint, state = block(hidden, text, control, temb, rotary)
            return hint + state.to(hint.dtype)
        return block(hidden, text, temb, rotary)

    # Gradients reach a main block through its input (the blocks before it train); a VACE block only has a backward
    # pass when it carries LoRA layers itself (its inputs come from frozen embeddings and frozen VACE blocks).
    trains = not vace or bool(lora_regex)
    saved = backward_peak = 0
    with flash_attention_memory():
        if trains:
            (control if vace else hidden).requires_grad_(True)
            mode = LiveBytes()
            with mode:
                out = run()
                saved = mode.live - out.untyped_storage().nbytes()
                out.backward(torch.empty_like(out))
                del out
            backward_peak = mode.peak
            (control if vace else hidden).requires_grad_(False)
        mode = LiveBytes()
        with torch.no_grad(), mode:
            out = run()
            del out
        forward_peak = mode.peak
    return BlockMemory(saved=saved, backward_peak=backward_peak, forward_peak=forward_peak)
