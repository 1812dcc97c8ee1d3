"""The objective step: the policy's and the reference's velocity predictions for a micro-batch and the loss call.

Per micro-batch: ``t`` from the configured schedule, ``x_t = (1 - t) x0 + t noise``, model timestep ``1000 t``
(float), target ``v = noise - x0``. The reference prediction comes from the same module with the trained adapter
switched off (``lora.reference_mode``), under ``no_grad``. The losses themselves live in ``loss.py``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch

from ..choices import Distributed
from ..choices import Objective as ObjectiveName  # this module's Objective is the training step
from ..jobs.config import RunConfig
from ..wan.animate import animate_velocity
from . import lora as lora_setup
from .batching import Batch, Sampler, TrainingData, collate, sample_t
from .distributed import Dist
from .experts import map_t
from .loss import flow_dpo_loss, flow_ipa_loss, flow_sft_loss


class Objective:
    """Forward, loss and backward of one optimizer step's micro-batches (gradients accumulate in the LoRA)."""

    def __init__(self, config: RunConfig, data: TrainingData, sampler: Sampler, dist_info: Dist, bare, forward_module,
                 autocast_dtype: Optional[torch.dtype], ddp=None):
        self.config = config
        self.data = data
        self.sampler = sampler
        self.dist = dist_info
        self.bare = bare  # the transformer with its adapters (the reference runs it with the adapter off)
        self.forward_module = forward_module  # the same, or its DDP wrapper (what the policy runs through)
        self.autocast_dtype = autocast_dtype
        self.ddp = ddp
        self.n_vace_layers = len(bare.config.get("vace_layers") or [])  # none on Wan2.2-Animate

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.autocast_dtype)

    def predict(self, module, batch: Batch, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        animate = getattr(batch, "animate", None)  # Wan2.2-Animate samples: their AnimateInputs
        if animate is not None:
            with self.autocast():
                return animate_velocity(module, x_t, t, batch.text, animate)
        with self.autocast():
            return module(
                hidden_states=x_t,
                timestep=1000.0 * t,
                encoder_hidden_states=batch.text,
                control_hidden_states=batch.context,
                control_hidden_states_scale=batch.scale,
                return_dict=False,
            )[0]

    def reference(self, batch: Batch, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), lora_setup.reference_mode(self.bare):
            return self.predict(self.bare, batch, x_t, t)

    def micro_step(self, step: int, micro: int) -> dict[str, float]:
        c = self.config
        device = self.dist.device
        generator = self.sampler.generator(step, micro)
        indices = self.sampler.indices(step, micro)
        winners = [self.data.preferred[i][1] for i in indices]
        t = map_t(sample_t(c, len(winners), generator), self.data.t_range)  # two experts: the trained one's range
        dtype = self.autocast_dtype if device.type == "cuda" and self.autocast_dtype else torch.float32
        if c.objective == ObjectiveName.DPO:
            losers = []
            for i in indices:
                options = self.data.loser_candidates[i]
                losers.append(self.data.rejected[options[int(torch.randint(len(options), (1,), generator=generator))]][1])
            batch = collate(winners + losers, self.n_vace_layers, device, dtype)
            noise_half = torch.randn(batch.x0[: len(winners)].shape, generator=generator)
            noise = torch.cat([noise_half, noise_half]).to(device)  # winner and loser share noise and t
            t_full = torch.cat([t, t]).to(device)
        else:
            batch = collate(winners, self.n_vace_layers, device, dtype)
            noise = torch.randn(batch.x0.shape, generator=generator).to(device)
            t_full = t.to(device)
        tb = t_full.view(-1, 1, 1, 1, 1)
        x_t = (1.0 - tb) * batch.x0 + tb * noise
        target = noise - batch.x0
        common = dict(hand_weight=c.hand_weight, ref_frames=batch.ref_frames)
        if c.objective == ObjectiveName.SFT:
            pred = self.predict(self.forward_module, batch, x_t, t_full)
            loss, metrics = flow_sft_loss(pred, target, t_full, batch.hand_mask, **common)
        else:
            ref = self.reference(batch, x_t, t_full)
            pred = self.predict(self.forward_module, batch, x_t, t_full)
            if c.objective == ObjectiveName.IPA:
                loss, metrics = flow_ipa_loss(pred, ref, target, t_full, batch.hand_mask, beta=c.beta, **common)
            else:
                n = len(winners)
                loss, metrics = flow_dpo_loss(
                    pred[:n], ref[:n], target[:n], pred[n:], ref[n:], target[n:], t_full[:n],
                    batch.hand_mask[:n], batch.hand_mask[n:], beta=c.beta, time_weighting=c.dpo_time_weighting, **common,
                )
        (loss / c.grad_accum).backward()
        out = {"loss": float(loss.detach())}
        out.update({key: float(value) for key, value in metrics.items()})
        return out

    def accumulate(self, step: int) -> dict[str, float]:
        """All micro-batches of optimizer step ``step``; gradients are synchronised over ranks on the last one.
        Returns the metrics averaged over the micro-batches."""
        c = self.config
        totals: dict[str, float] = {}
        for micro in range(c.grad_accum):
            last = micro == c.grad_accum - 1
            if self.ddp is not None and not last:
                sync = self.ddp.no_sync()
            else:
                sync = nullcontext()
                if c.distributed == Distributed.FSDP2 and self.dist.active:
                    self.bare.set_requires_gradient_sync(last)
            with sync:
                for key, value in self.micro_step(step, micro).items():
                    totals[key] = totals.get(key, 0.0) + value / c.grad_accum
        return totals
