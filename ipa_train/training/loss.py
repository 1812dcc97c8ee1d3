"""Flow-matching objectives: Flow-IPA (the paper's), Flow-DPO and plain SFT, sharing one weighted error.

Conventions (rectified flow as Wan trains): ``x_t = (1 - t) * x0 + t * noise``, ``t`` in [0, 1] with 1 being
pure noise, and the model predicts the velocity ``v = noise - x0``. Latents are ``[B, C, F, H, W]``.

HALO weighting: every element of the first ``ref_frames`` latent frames (VACE's reference image) has weight 1;
on the remaining frames an element has weight ``1 + (hand_weight - 1) * M`` with ``M`` the latent hand mask in
[0, 1], so hand elements count ``hand_weight`` times. The error of a prediction is the per-sample mean of
``W * (pred - v)^2`` over all elements, computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..choices import Objective

Tensor = torch.Tensor


def _check_prediction(name: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{name} has shape {tuple(pred.shape)} but the flow target has shape {tuple(target.shape)}; "
            "predictions and target must be latents of the same [B, C, F, H, W] shape."
        )


def _check_common(target: Tensor, t: Optional[Tensor], hand_mask: Optional[Tensor], hand_weight: float, ref_frames: int) -> None:
    if target.dim() != 5:
        raise ValueError(f"expected video latents [B, C, F, H, W], got a target of shape {tuple(target.shape)}")
    batch, channels, frames, height, width = target.shape
    if not 0 <= ref_frames <= frames:
        raise ValueError(f"ref_frames={ref_frames} must lie between 0 and the latent frame count {frames}")
    if hand_weight < 1:
        raise ValueError(f"hand_weight={hand_weight} is below 1; it is the multiplier on hand elements (1 = no hand emphasis, paper: 10)")
    if t is not None:
        if t.numel() != batch or (t.dim() > 1 and t.shape[0] != batch):
            raise ValueError(f"t must hold one value per sample (batch {batch}), got shape {tuple(t.shape)}")
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(
                f"t must lie in [0, 1] (1 = pure noise); got values from {float(t.min()):.4g} to {float(t.max()):.4g}. "
                "Divide model timesteps (0..1000) by 1000."
            )
    if hand_mask is not None:
        expected = frames - ref_frames
        if hand_mask.dim() != 5:
            raise ValueError(f"hand_mask must be [B, 1 or C, F - ref_frames, H, W], got shape {tuple(hand_mask.shape)}")
        mb, mc, mf, mh, mw = hand_mask.shape
        if mf != expected:
            raise ValueError(
                f"hand_mask has {mf} latent frames but the latent has {frames} frames of which {ref_frames} are "
                f"reference frames, so the mask needs {expected} frames"
            )
        if mb not in (1, batch) or mc not in (1, channels) or (mh, mw) != (height, width):
            raise ValueError(
                f"hand_mask of shape {tuple(hand_mask.shape)} does not fit latents of shape {tuple(target.shape)} "
                f"(expected [{batch} or 1, 1 or {channels}, {expected}, {height}, {width}])"
            )


def weighted_error(
    pred: Tensor,
    target: Tensor,
    hand_mask: Optional[Tensor] = None,
    hand_weight: float = 10.0,
    ref_frames: int = 1,
) -> Tensor:
    """Per-sample HALO-weighted mean squared error ``[B]`` in float32.

    The weight map is never materialised: ``mean(W * sq) = mean(sq) + (hand_weight - 1) * sum(M * sq[ref:]) / N``.
    """
    _check_prediction("prediction", pred, target)
    _check_common(target, None, hand_mask, hand_weight, ref_frames)
    sq = (pred.float() - target.float()).square()
    dims = tuple(range(1, sq.dim()))
    err = sq.mean(dim=dims)
    if hand_mask is not None and hand_weight != 1:
        per_sample = sq[0].numel()
        hand_sum = (sq[:, :, ref_frames:] * hand_mask.float()).sum(dim=dims)
        err = err + (hand_weight - 1.0) * hand_sum / per_sample
    return err


def _time_weight(t: Tensor) -> Tensor:
    return (1.0 - t.reshape(-1).float()).square()


def flow_ipa_loss(
    model_pred: Tensor,
    ref_pred: Tensor,
    target: Tensor,
    t: Tensor,
    hand_mask: Optional[Tensor] = None,
    beta: float = 600.0,
    hand_weight: float = 10.0,
    ref_frames: int = 1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Flow-IPA: ``mean_b(-logsigmoid(beta / 2 * (1 - t_b)^2 * (err_ref_b - err_model_b)))``.

    Trains on good samples only: the policy is rewarded for predicting their flow better than the frozen
    reference, and the logistic keeps it close to the reference. No gradient reaches ``ref_pred``.
    """
    _check_prediction("model_pred", model_pred, target)
    _check_prediction("ref_pred", ref_pred, target)
    _check_common(target, t, hand_mask, hand_weight, ref_frames)
    if beta < 0:
        raise ValueError(f"beta={beta} is negative; it must be >= 0 (paper: 600)")
    err_model = weighted_error(model_pred, target, hand_mask, hand_weight, ref_frames)
    err_ref = weighted_error(ref_pred.detach(), target, hand_mask, hand_weight, ref_frames)
    gap = err_ref - err_model
    loss = -F.logsigmoid(0.5 * beta * _time_weight(t) * gap).mean()
    metrics = {
        "ipa_gap": gap.detach().mean(),
        "model_error": err_model.detach().mean(),
        "reference_error": err_ref.detach().mean(),
    }
    return loss, metrics


def flow_dpo_loss(
    model_pred_win: Tensor,
    ref_pred_win: Tensor,
    target_win: Tensor,
    model_pred_lose: Tensor,
    ref_pred_lose: Tensor,
    target_lose: Tensor,
    t: Tensor,
    hand_mask_win: Optional[Tensor] = None,
    hand_mask_lose: Optional[Tensor] = None,
    beta: float = 600.0,
    hand_weight: float = 10.0,
    ref_frames: int = 1,
    time_weighting: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Flow-DPO baseline (Liu et al. 2025): winner and loser share noise and ``t``.

    ``-logsigmoid(-beta / 2 * w(t) * ((errw_model - errw_ref) - (errl_model - errl_ref)))`` with ``w(t) = 1``,
    or ``(1 - t)^2`` when ``time_weighting`` is set (the weighting Flow-IPA uses).
    """
    for name, pred, target in (
        ("model_pred_win", model_pred_win, target_win),
        ("ref_pred_win", ref_pred_win, target_win),
        ("model_pred_lose", model_pred_lose, target_lose),
        ("ref_pred_lose", ref_pred_lose, target_lose),
    ):
        _check_prediction(name, pred, target)
    if target_win.shape != target_lose.shape:
        raise ValueError(f"winner target {tuple(target_win.shape)} and loser target {tuple(target_lose.shape)} differ in shape")
    _check_common(target_win, t, hand_mask_win, hand_weight, ref_frames)
    _check_common(target_lose, t, hand_mask_lose, hand_weight, ref_frames)
    if beta < 0:
        raise ValueError(f"beta={beta} is negative; it must be >= 0")
    errw_model = weighted_error(model_pred_win, target_win, hand_mask_win, hand_weight, ref_frames)
    errw_ref = weighted_error(ref_pred_win.detach(), target_win, hand_mask_win, hand_weight, ref_frames)
    errl_model = weighted_error(model_pred_lose, target_lose, hand_mask_lose, hand_weight, ref_frames)
    errl_ref = weighted_error(ref_pred_lose.detach(), target_lose, hand_mask_lose, hand_weight, ref_frames)
    weight = _time_weight(t) if time_weighting else torch.ones_like(errw_model)
    inside = (errw_model - errw_ref) - (errl_model - errl_ref)
    logits = -0.5 * beta * weight * inside
    loss = -F.logsigmoid(logits).mean()
    metrics = {
        "dpo_margin": (-inside).detach().mean(),
        "implicit_accuracy": (logits > 0).float().mean().detach(),
        "model_error": errw_model.detach().mean(),
        "reference_error": errw_ref.detach().mean(),
        "ipa_gap": (errw_ref - errw_model).detach().mean(),
        "loser_model_error": errl_model.detach().mean(),
        "loser_reference_error": errl_ref.detach().mean(),
    }
    return loss, metrics


def flow_sft_loss(
    model_pred: Tensor,
    target: Tensor,
    t: Optional[Tensor] = None,
    hand_mask: Optional[Tensor] = None,
    hand_weight: float = 10.0,
    ref_frames: int = 1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain flow-matching fine-tuning on the good samples: the weighted error alone."""
    _check_prediction("model_pred", model_pred, target)
    _check_common(target, t, hand_mask, hand_weight, ref_frames)
    err = weighted_error(model_pred, target, hand_mask, hand_weight, ref_frames)
    loss = err.mean()
    return loss, {"model_error": loss.detach()}


OBJECTIVES = Objective.values()
