"""Block swap: the weights of N transformer blocks (VACE blocks count) stay in host memory (pinned on CUDA) and
are copied to the GPU just before each block runs, in the forward passes (the reference's and the policy's) and
in the gradient-checkpointing recompute of the backward pass; the next swapped block is copied ahead on a side
CUDA stream while the current one computes, and a block's GPU copy is released when the next swapped block
starts (so at most the current and the prefetched block are on the GPU).

What moves: the block's linear weights (>99.9 % of its bytes; their biases, the norms and the modulation table
stay on the GPU). Each becomes a ``FrozenLinear`` with ``host_stored`` set; the swapper hands it a device copy
(``device_weight``) from a forward pre-hook. The copy is an ordinary tensor: autograd keeps what it saved for
the backward pass alive by reference, and under checkpointing the forward saves nothing, so releasing the
swapper's reference is all "release" needs.

Why not diffusers' group offloading (``apply_group_offloading``): it swaps ``param.data`` back to host memory
after each forward, which leaves the tensors autograd saved for the backward pass pointing at host memory, and
in a checkpoint recompute that stops early its post-forward hook never runs; it is written for inference.

The schedule (which block is where, the prefetch order, the release) is plain Python over an injectable
``move`` function, so tests run and observe it on CPU; ``log`` records every fetch, hit, miss and release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..wan.frozen_linear import FrozenLinear, to_frozen_linear


def in_backward() -> bool:
    """True inside a backward pass (a checkpoint recompute runs there): the autograd engine's graph task id, the
    signal torch's own checkpointing reads."""
    return torch._C._current_graph_task_id() != -1


def block_order(model) -> list[str]:
    """Module names of the blocks in the order the forward pass runs them: VACE blocks first (they make the
    hints), then the transformer blocks."""
    vace = getattr(model, "vace_blocks", None) or []  # Wan2.2-Animate has none
    return [f"vace_blocks.{i}" for i in range(len(vace))] + [f"blocks.{i}" for i in range(len(model.blocks))]


def backward_blocks(model) -> set[str]:
    """The blocks a checkpointed backward pass recomputes: those whose output needs a gradient, because they or a
    block before them in forward order hold a trainable parameter (parameters outside the blocks count as before
    all of them). Frozen VACE blocks never run in the backward pass: prefetching one there only wastes a copy."""
    order = block_order(model)
    inside = {id(p) for name in order for p in model.get_submodule(name).parameters()}
    needs_grad = any(p.requires_grad for p in model.parameters() if id(p) not in inside)
    out = set()
    for name in order:
        needs_grad = needs_grad or any(p.requires_grad for p in model.get_submodule(name).parameters())
        if needs_grad:
            out.add(name)
    return out


def swapped_blocks(model, count: int) -> list[str]:
    """The ``count`` blocks to swap: the first ones in forward order. The backward pass ends on the lowest of them,
    which the next forward pass then finds still on the GPU."""
    order = block_order(model)
    if count > len(order):
        raise ValueError(f"blocks_to_swap={count} but the model has {len(order)} blocks "
                         f"({len(model.blocks)} transformer + {len(order) - len(model.blocks)} VACE); use at most {len(order)}")
    return order[:count]


def prepare_swap_layers(model, count: int, compute_dtype: Optional[torch.dtype] = None) -> list[str]:
    """Turns the linear layers of the blocks to swap into ``FrozenLinear`` (same numbers). Call before the LoRA
    adapters are added, so peft wraps the new layers. Returns the swapped block names."""
    names = swapped_blocks(model, count)
    for block in names:
        for name, module in list(model.get_submodule(block).named_modules()):
            if isinstance(module, nn.Linear) and not isinstance(module, FrozenLinear) and not _is_adapter(name):
                to_frozen_linear(model, f"{block}.{name}", compute_dtype)
    return names


def _is_adapter(name: str) -> bool:
    return ".lora_" in name or name.startswith("lora_")


@dataclass
class _Pending:
    copies: dict  # FrozenLinear -> device tensor
    event: Optional["torch.cuda.Event"] = None


@dataclass
class SwapStats:
    fetched: int = 0
    hits: int = 0
    misses: int = 0
    bytes_moved: int = 0
    log: list = field(default_factory=list)  # (what, block name): fetch / hit / miss / release


class BlockSwapper:
    """Keeps the linear weights of ``names`` (blocks, forward order) in host memory and fetches them per call.

    ``move(tensor, device) -> tensor``: the copy to the compute device (default: a non-blocking copy; on CUDA on
    the side stream). Tests pass their own to observe or alter it."""

    def __init__(self, model, names: list[str], device: torch.device,
                 move: Optional[Callable[[torch.Tensor, torch.device], torch.Tensor]] = None):
        self.device = torch.device(device)
        self.order = block_order(model)
        self.names = [n for n in self.order if n in set(names)]  # forward order
        recomputed = backward_blocks(model)  # with the adapters in place: which blocks the backward pass runs
        self.backward_names = [n for n in self.names if n in recomputed]
        self.layers = {name: [m for m in model.get_submodule(name).modules() if isinstance(m, FrozenLinear)] for name in self.names}
        self.move = move or _default_move
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.resident: dict[str, dict] = {}  # block -> {layer: device tensor}, in use or ready
        self.pending: dict[str, _Pending] = {}  # block -> copies in flight
        self.stats = SwapStats()
        self.handles = []
        pin = self.device.type == "cuda"
        for name in self.names:
            for layer in self.layers[name]:
                if pin and not layer.weight.is_pinned():
                    layer.weight = nn.Parameter(layer.weight.detach().to("cpu").pin_memory(), requires_grad=False)
                elif layer.weight.device.type != "cpu":
                    layer.weight = nn.Parameter(layer.weight.detach().to("cpu"), requires_grad=False)
                layer.host_stored = True
                layer.fetch = self._fetch_layer_now
            block = model.get_submodule(name)
            self.handles.append(block.register_forward_pre_hook(self._make_hook(name)))

    # --------------------------------------------------------------------------------------------- schedule

    def _make_hook(self, name: str):
        def hook(module, args):
            self.enter(name)
        return hook

    def next_after(self, name: str, backward: bool) -> Optional[str]:
        """The swapped block that runs after ``name``: the next in forward order, or the previous one that the
        backward pass recomputes (``backward_blocks``) while it runs blocks in reverse. None at the end (no
        wrap-around)."""
        order = self.backward_names if backward else self.names
        if name not in order:
            return None
        i = order.index(name) + (-1 if backward else 1)
        return order[i] if 0 <= i < len(order) else None

    def enter(self, name: str) -> None:
        """``name`` is about to run: make its weights resident, release every other block's copy except the one
        prefetched next, and start the prefetch of the next block."""
        backward = in_backward()
        upcoming = self.next_after(name, backward)
        self._ensure(name)
        for other in list(self.resident):
            if other not in (name, upcoming):
                self._release(other)
        if upcoming is not None and upcoming not in self.resident and upcoming not in self.pending:
            self._start(upcoming)

    def _start(self, name: str) -> None:
        copies = {}
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                for layer in self.layers[name]:
                    copies[layer] = self.move(layer.weight, self.device)
                event = torch.cuda.Event()
                event.record(self.stream)
        else:
            for layer in self.layers[name]:
                copies[layer] = self.move(layer.weight, self.device)
            event = None
        self.stats.fetched += 1
        self.stats.bytes_moved += sum(t.numel() * t.element_size() for t in copies.values())
        self.stats.log.append(("fetch", name))
        self.pending[name] = _Pending(copies, event)

    def _ensure(self, name: str) -> None:
        if name in self.resident:
            self.stats.hits += 1
            self.stats.log.append(("hit", name))
        else:
            if name not in self.pending:
                self.stats.misses += 1
                self.stats.log.append(("miss", name))
                self._start(name)
            else:
                self.stats.hits += 1
                self.stats.log.append(("hit", name))
            pending = self.pending.pop(name)
            if pending.event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(pending.event)
                for tensor in pending.copies.values():
                    tensor.record_stream(current)  # made on the side stream, used (and freed) on this one
            self.resident[name] = pending.copies
        for layer, tensor in self.resident[name].items():
            layer.device_weight = tensor

    def _release(self, name: str) -> None:
        for layer in self.layers[name]:
            layer.device_weight = None
        del self.resident[name]
        self.stats.log.append(("release", name))

    def release_all(self) -> None:
        for name in list(self.resident):
            self._release(name)
        self.pending.clear()

    def _fetch_layer_now(self, layer: FrozenLinear, device: torch.device) -> torch.Tensor:
        """A layer of a swapped block called outside the schedule (no hook fired): a synchronous copy."""
        self.stats.misses += 1
        return self.move(layer.weight, device)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.release_all()


def _default_move(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if tensor.device == device:
        return tensor.clone()  # CPU runs: a copy, so the schedule (and its memory) behaves as it does on a GPU
    return tensor.to(device, non_blocking=True)
