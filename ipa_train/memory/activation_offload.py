"""Activation offload: with gradient checkpointing, the block inputs each checkpoint keeps for its recompute live
in host memory (pinned on CUDA) between the forward and the backward pass, instead of on the GPU.

Built from torch's own pieces: diffusers calls a checkpointing function per block
(``enable_gradient_checkpointing(gradient_checkpointing_func=...)``); ours runs torch's non-reentrant
``torch.utils.checkpoint.checkpoint`` inside ``torch.autograd.graph.saved_tensors_hooks``. Non-reentrant
checkpointing stores its inputs as saved tensors before it installs its own hooks, so the outer hooks receive
exactly those inputs (the block's hidden states, and the VACE blocks' control states) and nothing computed
inside the block. Pack copies a tensor to host memory (on a side CUDA stream, overlapping compute); unpack, when
the backward pass recomputes the block, copies it back. A tensor that several blocks take (the text embedding,
the VACE blocks' shared input) is copied once per step: packs are keyed by the tensor object itself.

``move(tensor, device) -> tensor`` is injectable, and ``log`` records every pack and unpack, so tests run and
observe the policy on CPU, where the "host copy" is a plain copy and every number stays the same.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils.checkpoint import checkpoint

# Smaller tensors (timestep projections, scales) stay where they are: copying them buys nothing.
MIN_OFFLOAD_BYTES = 1 << 20


@dataclass
class OffloadStats:
    packed: int = 0  # tensors copied to host memory
    packed_bytes: int = 0
    shared: int = 0  # packs answered by an earlier copy of the same tensor
    unpacked: int = 0
    log: list = field(default_factory=list)  # ("pack" | "unpack", shape)


class _Packed:
    __slots__ = ("host", "device", "event", "__weakref__")

    def __init__(self, host, device, event):
        self.host, self.device, self.event = host, device, event


def needs_grad(block, args) -> bool:
    """Whether the backward pass will recompute ``block``: an input or a parameter of it needs a gradient."""
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args) or any(p.requires_grad for p in block.parameters())


class ActivationOffload:
    """The checkpointing function diffusers calls per block, with the checkpoint inputs kept in host memory.

    ``min_bytes`` (default ``MIN_OFFLOAD_BYTES``): smaller tensors stay where they are."""

    def __init__(self, device: torch.device, move: Optional[Callable[[torch.Tensor, torch.device], torch.Tensor]] = None,
                 min_bytes: Optional[int] = None):
        self.device = torch.device(device)
        self.min_bytes = MIN_OFFLOAD_BYTES if min_bytes is None else int(min_bytes)
        self.move = move
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._by_tensor: dict[int, tuple[weakref.ref, weakref.ref]] = {}  # id(tensor) -> (tensor ref, packed ref)
        self.stats = OffloadStats()

    def __call__(self, block, *args):
        if not needs_grad(block, args):  # a frozen VACE block: the backward never recomputes it, nothing to keep
            return block(*args)
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            return checkpoint(block.__call__, *args, use_reentrant=False)

    # --------------------------------------------------------------------------------------------- hooks

    def pack(self, tensor: torch.Tensor):
        if tensor.numel() * tensor.element_size() < self.min_bytes:
            return tensor
        known = self._by_tensor.get(id(tensor))
        if known is not None and known[0]() is tensor and known[1]() is not None:
            self.stats.shared += 1
            return known[1]()
        packed = self._to_host(tensor)
        self._by_tensor = {k: v for k, v in self._by_tensor.items() if v[0]() is not None and v[1]() is not None}
        self._by_tensor[id(tensor)] = (weakref.ref(tensor), weakref.ref(packed))
        self.stats.packed += 1
        self.stats.packed_bytes += tensor.numel() * tensor.element_size()
        self.stats.log.append(("pack", tuple(tensor.shape)))
        return packed

    def unpack(self, packed):
        if not isinstance(packed, _Packed):
            return packed
        self.stats.unpacked += 1
        self.stats.log.append(("unpack", tuple(packed.host.shape)))
        return self._to_device(packed)

    # --------------------------------------------------------------------------------------------- copies

    def _to_host(self, tensor: torch.Tensor) -> _Packed:
        if self.move is not None:
            return _Packed(self.move(tensor, torch.device("cpu")), tensor.device, None)
        if tensor.device.type != "cuda":
            return _Packed(tensor.detach().clone(), tensor.device, None)
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)  # torch's caching host allocator reuses these
        current = torch.cuda.current_stream(tensor.device)
        self.stream.wait_stream(current)  # the tensor is complete on the compute stream
        with torch.cuda.stream(self.stream):
            host.copy_(tensor.detach(), non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        tensor.record_stream(self.stream)  # freed on the compute stream only after the copy has read it
        return _Packed(host, tensor.device, event)

    def _to_device(self, packed: _Packed) -> torch.Tensor:
        if self.move is not None:
            return self.move(packed.host, packed.device)
        if packed.device.type != "cuda":
            return packed.host.clone()
        if packed.event is not None:
            packed.event.synchronize()  # the copy to host has landed
        return packed.host.to(packed.device, non_blocking=True)
