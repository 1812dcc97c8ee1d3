import math

import pytest
import torch

from ipa_train.training.loss import flow_dpo_loss, flow_ipa_loss, flow_sft_loss, weighted_error


def reference_error_f64(pred, target, mask, hand_weight, ref_frames):
    """Independent float64 computation with an explicit weight map."""
    pred, target = pred.double(), target.double()
    weight = torch.ones_like(target)
    if mask is not None:
        weight[:, :, ref_frames:] = 1.0 + (hand_weight - 1.0) * mask.double().expand_as(weight[:, :, ref_frames:])
    return (weight * (pred - target) ** 2).flatten(1).mean(dim=1)


def reference_ipa_f64(model_pred, ref_pred, target, t, mask, beta, hand_weight, ref_frames):
    err_model = reference_error_f64(model_pred, target, mask, hand_weight, ref_frames)
    err_ref = reference_error_f64(ref_pred, target, mask, hand_weight, ref_frames)
    x = beta / 2 * (1 - t.double()) ** 2 * (err_ref - err_model)
    return torch.log1p(torch.exp(-x)).mean()  # -logsigmoid(x)


def make(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


@pytest.mark.parametrize("shape", [(1, 16, 3, 4, 6), (2, 16, 5, 2, 2), (3, 4, 2, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("mask_channels", [1, "C"])
def test_ipa_matches_float64_reference(shape, dtype, with_mask, mask_channels):
    B, C, Fr, H, W = shape
    target = make(shape, dtype, 1)
    model_pred = (target.double() + 0.3 * make(shape, torch.float64, 2)).to(dtype)
    ref_pred = (target.double() + 0.35 * make(shape, torch.float64, 3)).to(dtype)
    t = torch.rand(B, generator=torch.Generator().manual_seed(4))
    mask = None
    if with_mask:
        mc = 1 if mask_channels == 1 else C
        mask = torch.rand(B, mc, Fr - 1, H, W, generator=torch.Generator().manual_seed(5)).to(dtype)
    loss, metrics = flow_ipa_loss(model_pred, ref_pred, target, t, mask, beta=600.0, hand_weight=10.0, ref_frames=1)
    expected = reference_ipa_f64(model_pred, ref_pred, target, t, mask, 600.0, 10.0, 1)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss.double(), expected, rtol=1e-4, atol=1e-5)
    err_m = reference_error_f64(model_pred, target, mask, 10.0, 1)
    err_r = reference_error_f64(ref_pred, target, mask, 10.0, 1)
    assert torch.allclose(metrics["model_error"].double(), err_m.mean(), rtol=1e-5)
    assert torch.allclose(metrics["reference_error"].double(), err_r.mean(), rtol=1e-5)
    assert torch.allclose(metrics["ipa_gap"].double(), (err_r - err_m).mean(), rtol=1e-4, atol=1e-6)


def test_policy_equal_reference_gives_log2_and_zero_gap():
    target = make((2, 16, 3, 4, 4))
    pred = make((2, 16, 3, 4, 4), seed=7)
    mask = torch.ones(2, 1, 2, 4, 4)
    loss, metrics = flow_ipa_loss(pred, pred.clone(), target, torch.tensor([0.2, 0.9]), mask)
    assert loss.item() == torch.tensor(math.log(2), dtype=torch.float32).item()  # exactly log 2 in float32
    assert float(metrics["ipa_gap"]) == 0.0


def test_gradient_reaches_model_pred_only():
    target = make((2, 16, 3, 2, 2))
    model_pred = make((2, 16, 3, 2, 2), seed=1).requires_grad_(True)
    ref_pred = make((2, 16, 3, 2, 2), seed=2).requires_grad_(True)
    loss, _ = flow_ipa_loss(model_pred, ref_pred, target, torch.tensor([0.5, 0.5]))
    loss.backward()
    assert model_pred.grad is not None and model_pred.grad.abs().sum() > 0
    assert ref_pred.grad is None


def test_larger_beta_lowers_loss_when_policy_is_better_and_raises_it_when_worse():
    target = make((1, 16, 3, 2, 2))
    good = target + 0.1 * make((1, 16, 3, 2, 2), seed=1)
    bad = target + 0.5 * make((1, 16, 3, 2, 2), seed=2)
    t = torch.tensor([0.3])
    better_small, _ = flow_ipa_loss(good, bad, target, t, beta=10.0)
    better_large, _ = flow_ipa_loss(good, bad, target, t, beta=100.0)
    worse_small, _ = flow_ipa_loss(bad, good, target, t, beta=10.0)
    worse_large, _ = flow_ipa_loss(bad, good, target, t, beta=100.0)
    assert better_large < better_small < math.log(2) < worse_small < worse_large


def test_larger_hand_weight_emphasises_hand_elements():
    target = torch.zeros(1, 16, 3, 2, 2)
    ref_pred = torch.zeros_like(target)
    model_pred = torch.zeros_like(target)
    model_pred[:, :, 1:, 0, 0] = 0.1  # the policy errs only on hand elements
    mask = torch.zeros(1, 1, 2, 2, 2)
    mask[..., 0, 0] = 1.0
    t = torch.tensor([0.0])
    low, m_low = flow_ipa_loss(model_pred, ref_pred, target, t, mask, beta=50.0, hand_weight=1.0)
    high, m_high = flow_ipa_loss(model_pred, ref_pred, target, t, mask, beta=50.0, hand_weight=10.0)
    assert high > low > math.log(2)
    assert float(m_high["model_error"]) == pytest.approx(10 * float(m_low["model_error"]), rel=1e-6)


def test_reference_frames_are_never_hand_weighted():
    target = torch.zeros(1, 16, 3, 2, 2)
    pred = torch.zeros_like(target)
    pred[:, :, 0] = 1.0  # errors only in the reference frame
    mask = torch.ones(1, 1, 2, 2, 2)
    assert torch.equal(weighted_error(pred, target, mask, 10.0, 1), weighted_error(pred, target, None, 10.0, 1))
    pred2 = torch.zeros_like(target)
    pred2[:, :, 1] = 1.0  # errors in a hand frame count 10x
    assert weighted_error(pred2, target, mask, 10.0, 1).item() == pytest.approx(10 * weighted_error(pred2, target, None).item())
    # two reference frames: frame 1 is reference now and is not weighted
    mask2 = torch.ones(1, 1, 1, 2, 2)
    assert weighted_error(pred2, target, mask2, 10.0, 2).item() == pytest.approx(weighted_error(pred2, target, None).item())


def test_reference_frame_has_weight_one():
    """The VACE reference frame counts in the error with weight 1 (the authors' snippet), not 0 and not hand-weighted."""
    target = torch.zeros(1, 16, 3, 2, 2)
    pred = torch.zeros_like(target)
    pred[:, :, 0] = 1.0  # squared error 1 in every element of the reference frame, 0 elsewhere
    mask = torch.ones(1, 1, 2, 2, 2)
    assert weighted_error(pred, target, mask, 10.0, 1).item() == pytest.approx(1 / 3)  # 1 of 3 frames, weight 1
    model, ref = pred.clone(), torch.zeros_like(target)
    _, metrics = flow_ipa_loss(model, ref, target, torch.tensor([0.5]), mask, hand_weight=10.0, ref_frames=1)
    assert metrics["model_error"] == pytest.approx(1 / 3) and metrics["reference_error"] == 0.0


def test_documents_state_the_reference_frame_weight_the_loss_uses():
    """One statement everywhere: no document or docstring claims the reference frame has zero loss weight."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [root / "README.md", *sorted((root / "ipa_train").rglob("*.py")), *sorted((root / "nodes").rglob("*.py"))]
    claim = re.compile(r"(zero|no|0)[ -](loss )?weight", re.IGNORECASE)
    offenders = [f"{path.relative_to(root)}: {line.strip()}" for path in files for line in path.read_text(encoding="utf-8").splitlines()
                 if claim.search(line) and re.search(r"ref(erence)?[ _]frame", line, re.IGNORECASE)]
    assert not offenders, offenders
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "weight 1" in readme and "no hand weighting" in readme


def test_time_weighting_vanishes_at_pure_noise():
    target = make((1, 16, 2, 2, 2))
    loss, _ = flow_ipa_loss(target + 1, target, target, torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model_pred=torch.zeros(1, 16, 3, 2, 3)), "model_pred has shape"),
        (dict(ref_pred=torch.zeros(2, 16, 3, 2, 2)), "ref_pred has shape"),
        (dict(t=torch.tensor([0.5, 0.5])), "one value per sample"),
        (dict(t=torch.tensor([1.5])), "must lie in \\[0, 1\\]"),
        (dict(t=torch.tensor([-0.1])), "must lie in \\[0, 1\\]"),
        (dict(hand_mask=torch.zeros(1, 1, 3, 2, 2)), "needs 2 frames"),
        (dict(hand_mask=torch.zeros(1, 1, 2, 4, 4)), "does not fit"),
        (dict(beta=-1.0), "beta=-1.0 is negative"),
        (dict(hand_weight=0.5), "hand_weight=0.5 is below 1"),
    ],
)
def test_bad_input_names_the_problem(kwargs, message):
    args = dict(
        model_pred=torch.zeros(1, 16, 3, 2, 2),
        ref_pred=torch.zeros(1, 16, 3, 2, 2),
        target=torch.zeros(1, 16, 3, 2, 2),
        t=torch.tensor([0.5]),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        flow_ipa_loss(**args)


def test_dpo_matches_float64_reference_and_prefers_winner():
    shape = (2, 16, 3, 2, 2)
    tw, tl = make(shape, seed=1), make(shape, seed=2)
    mw, rw = tw + 0.1 * make(shape, seed=3), tw + 0.2 * make(shape, seed=4)
    ml, rl = tl + 0.3 * make(shape, seed=5), tl + 0.2 * make(shape, seed=6)
    t = torch.tensor([0.1, 0.7])
    mask = torch.rand(2, 1, 2, 2, 2, generator=torch.Generator().manual_seed(8))
    for time_weighting in (False, True):
        loss, metrics = flow_dpo_loss(mw, rw, tw, ml, rl, tl, t, mask, mask, beta=50.0, time_weighting=time_weighting)
        e = lambda p, x: reference_error_f64(p, x, mask, 10.0, 1)
        inside = (e(mw, tw) - e(rw, tw)) - (e(ml, tl) - e(rl, tl))
        weight = (1 - t.double()) ** 2 if time_weighting else 1.0
        expected = torch.log1p(torch.exp(0.5 * 50.0 * weight * inside)).mean()
        assert torch.allclose(loss.double(), expected, rtol=1e-4)
        assert float(metrics["implicit_accuracy"]) == 1.0  # winner improved, loser got worse


def test_sft_is_the_weighted_error():
    target = make((2, 16, 3, 2, 2))
    pred = make((2, 16, 3, 2, 2), seed=3)
    mask = torch.rand(2, 1, 2, 2, 2)
    loss, metrics = flow_sft_loss(pred, target, None, mask, 10.0, 1)
    assert torch.allclose(loss.double(), reference_error_f64(pred, target, mask, 10.0, 1).mean(), rtol=1e-5)
