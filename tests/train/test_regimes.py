"""The invariance loss and the regime/architecture check."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gcnn import vgg11, vgg11_flip
from gcnn.train import PenultimateFeatures, check_regime, invariance_loss, is_flip_model
from gcnn.train.regimes import collapse


def test_invariance_loss_is_zero_for_a_flip_model_and_positive_for_a_plain_one(
    cifar_images: torch.Tensor,
) -> None:
    torch.manual_seed(0)
    flip, plain = vgg11_flip(width=0.25).double().eval(), vgg11(width=0.25).double().eval()
    with torch.no_grad():
        for model, zero in ((flip, True), (plain, False)):
            logits, flipped = model(cifar_images), model(cifar_images.flip(-1))
            loss = float(invariance_loss(logits, flipped))
            assert (loss < 1e-14) if zero else (loss > 1e-6)


def test_penultimate_features_of_the_plain_model_are_not_invariant(cifar_images) -> None:
    torch.manual_seed(0)
    model = vgg11(width=0.25).double().eval()
    hook = PenultimateFeatures(model)
    with torch.no_grad():
        model(cifar_images)
        a = hook.value
        model(cifar_images.flip(-1))
        b = hook.value
    hook.remove()
    assert a is not None and b is not None and a.shape == (20, model.classifier.in_features)
    assert float(invariance_loss(a, b)) > 0


def _js(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen–Shannon divergence of two probability vectors, written out in float64."""
    m = (p + q) / 2

    def kl(u: list[float], v: list[float]) -> float:
        return sum(ui * math.log(ui / vi) for ui, vi in zip(u, v, strict=True) if ui > 0)

    return 0.5 * kl(p.tolist(), m.tolist()) + 0.5 * kl(q.tolist(), m.tolist())


@given(st.integers(1, 6), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_logit_invariance_loss_is_the_jensen_shannon_divergence(b: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = 3 * torch.randn(b, k, generator=g), 3 * torch.randn(b, k, generator=g)
    expected = sum(_js(x[i].double().softmax(0), y[i].double().softmax(0)) for i in range(b)) / b
    loss = float(invariance_loss(x, y))
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert loss == pytest.approx(float(invariance_loss(y, x)), rel=1e-5, abs=1e-7)
    assert 0 <= loss <= math.log(2) + 1e-6
    # scale-free: a constant added to every logit changes nothing; identical outputs give 0
    assert float(invariance_loss(x + 7.0, y - 3.0)) == pytest.approx(loss, rel=1e-4, abs=1e-6)
    assert float(invariance_loss(x, x)) == pytest.approx(0, abs=1e-7)


@given(st.integers(1, 6), st.integers(1, 16), st.floats(1e-3, 1e3), st.integers(0, 2**31 - 1))
def test_feature_invariance_loss_is_relative_and_scale_free(
    b: int, f: int, scale: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, f, generator=g).double(), torch.randn(b, f, generator=g).double()
    expected = float((x - y).pow(2).sum() / (0.5 * (x.pow(2).sum() + y.pow(2).sum())))
    loss = float(invariance_loss(x, y, "features"))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert float(invariance_loss(scale * x, scale * y, "features")) == pytest.approx(loss, rel=1e-4)
    assert 0 <= loss <= 4 + 1e-6 and float(invariance_loss(x, x, "features")) == 0


def _history(accuracies: list[float], losses: list[float]) -> list[dict]:
    return [
        {"epoch": i + 1, "train_acc": a, "train_loss": loss, "test_acc": a}
        for i, (a, loss) in enumerate(zip(accuracies, losses, strict=True))
    ]


def test_collapse_is_a_learned_net_falling_to_chance_after_switch_on() -> None:
    uniform = math.log(10)
    learned_then_uniform = _history([60, 80, 10.5], [1.0, 0.5, uniform])
    assert "sits at ln(10)" in collapse(learned_then_uniform, 10, inv_start_epoch=3)
    learned_then_chance = _history([60, 80, 11.0], [1.0, 0.5, 1.9])
    assert "at chance" in collapse(learned_then_chance, 10, inv_start_epoch=3)
    # negative controls: a healthy run, a run that never learned, and chance *before* switch-on
    assert collapse(_history([60, 80, 85], [1.0, 0.5, 0.4]), 10, inv_start_epoch=3) is None
    assert collapse(_history([10, 11, 10], [uniform] * 3), 10, inv_start_epoch=3) is None
    assert collapse(_history([60, 10, 80], [1.0, uniform, 0.5]), 10, inv_start_epoch=3) is None


def test_regime_must_fit_the_architecture() -> None:
    flip, plain = vgg11_flip(width=0.125), vgg11(width=0.125)
    assert is_flip_model("vgg11_flip", flip) and not is_flip_model("vgg11", plain)
    check_regime("gcnn", "vgg11_flip", flip)
    check_regime("cnn+inv", "vgg11", plain)
    with pytest.raises(ValueError, match="needs a flip architecture"):
        check_regime("gcnn", "vgg11", plain)
    for regime in ("cnn", "cnn+inv"):
        with pytest.raises(ValueError, match="flip model"):
            check_regime(regime, "vgg11_flip", flip)
