"""The invariance loss and the regime/architecture check."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gcnn import vgg11, vgg11_flip
from gcnn.train import PenultimateFeatures, check_regime, invariance_loss, is_flip_model


def test_invariance_loss_is_zero_for_a_flip_model_and_positive_for_a_plain_one(
    cifar_images: torch.Tensor,
) -> None:
    torch.manual_seed(0)
    flip, plain = vgg11_flip(width=0.25).double().eval(), vgg11(width=0.25).double().eval()
    with torch.no_grad():
        for model, zero in ((flip, True), (plain, False)):
            logits, flipped = model(cifar_images), model(cifar_images.flip(-1))
            scale = float(logits.pow(2).sum(1).mean())
            loss = float(invariance_loss(logits, flipped))
            assert (loss < 1e-24 * scale) if zero else (loss > 1e-4 * scale)


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


@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_invariance_loss_is_the_mean_squared_distance(b: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, k, generator=g), torch.randn(b, k, generator=g)
    expected = sum(float(((x[i] - y[i]) ** 2).sum()) for i in range(b)) / b
    assert float(invariance_loss(x, y)) == pytest.approx(expected, rel=1e-5)
    assert float(invariance_loss(x, y)) == pytest.approx(float(invariance_loss(y, x)))
    assert float(invariance_loss(x, x)) == 0


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
