"""vgg11 and vgg11_flip (every registered backend): invariance, the rule, export, drop-in."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gcnn
from gcnn.exactness import FlipExactnessWarning, flip_exactness
from gcnn.models import VGG
from gcnn.testing import assert_flip_equivariant, flip_equivariance_error

VGG_FLIP = sorted(n for n in gcnn.list_models() if n.startswith("vgg11_flip"))
BROKEN = 1e-4


def build(name: str, **kwargs) -> nn.Module:
    return gcnn.create_model(name, **kwargs).double()


def with_random_bn_state(model: nn.Module) -> nn.Module:
    """Random BN affine parameters and running statistics (pair-shaped for flip models)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name", VGG_FLIP)
@pytest.mark.parametrize("train", [False, True])
def test_vgg11_flip_is_invariant_on_real_images(name: str, train: bool, cifar_images) -> None:
    torch.manual_seed(0)
    model = with_random_bn_state(build(name)).train(train)
    assert_flip_equivariant(model, cifar_images, "trivial", "trivial", rtol=1e-10)


def test_plain_vgg11_is_not_invariant_on_real_images(cifar_images) -> None:
    """Negative control for the test above: same check, plain model."""
    torch.manual_seed(0)
    model = with_random_bn_state(build("vgg11")).eval()
    assert flip_equivariance_error(model, cifar_images) > BROKEN


vgg_kwargs = st.fixed_dictionaries(
    {
        "num_classes": st.integers(1, 12),
        "in_channels": st.integers(1, 4),
        "width": st.sampled_from([0.0625, 0.125]),
        "batch_norm": st.booleans(),
    }
)


def examples(name: str) -> settings:
    """The profile's example count, a third of it for the escnn backend (slower to build and
    to trace; its layers are property-tested one by one in tests/escnn)."""
    count = settings().max_examples
    return settings(max_examples=max(3, count // 3) if "escnn" in name else count)


@pytest.mark.parametrize("name", VGG_FLIP)
def test_rule_predicts_vgg11_flip_exactness(name) -> None:
    @examples(name)
    @given(
        kwargs=vgg_kwargs, batch=st.integers(1, 3), size=st.integers(32, 80), train=st.booleans()
    )
    def check(kwargs, batch, size, train) -> None:
        rule_predicts_exactness(name, kwargs, batch, size, train)

    check()


def rule_predicts_exactness(name, kwargs, batch, size, train) -> None:
    """Predicted exact ⇔ measured exact at every drawn width; exact ⇒ invariant to 1e-10."""
    torch.manual_seed(size)
    model = with_random_bn_state(build(name, **kwargs)).train(train)
    predicted = flip_exactness(model, (32, size), search=0).exact
    assert predicted == (size % 32 == 0)  # five 2×2 max-pools need W divisible by 32
    x = torch.rand(batch, kwargs["in_channels"], 32, size, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlipExactnessWarning)
        err = flip_equivariance_error(model, x)
    assert err <= 1e-10 if predicted else err > BROKEN


@pytest.mark.parametrize("name", VGG_FLIP)
def test_export_is_a_plain_vgg11_with_identical_outputs(name) -> None:
    @examples(name)
    @given(kwargs=vgg_kwargs, train=st.booleans())
    def check(kwargs, train) -> None:
        export_is_plain_with_identical_outputs(name, kwargs, train)

    check()


def export_is_plain_with_identical_outputs(name, kwargs, train) -> None:
    torch.manual_seed(1)
    flip = with_random_bn_state(build(name, **kwargs)).train(train)
    x = torch.rand(2, kwargs["in_channels"], 32, 32, dtype=torch.float64)
    x = torch.cat([x, x.flip(-1)])  # flip-closed batch: train-mode BN agrees too
    plain = flip.export()
    assert type(plain) is VGG and plain.training == train and flip.training == train
    assert not any("Flip" in type(m).__name__ for m in plain.modules())
    reference = gcnn.vgg11(**kwargs).double()
    reference.load_state_dict(plain.state_dict())
    reference.train(train)
    expected = flip(x)
    torch.testing.assert_close(plain(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reference(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", VGG_FLIP)
def test_vgg11_flip_is_a_drop_in_for_vgg11(name) -> None:
    kwargs = {"num_classes": 7, "in_channels": 1, "width": 0.5}
    flip, plain = gcnn.create_model(name, **kwargs), gcnn.vgg11(**kwargs)
    x = torch.rand(3, 1, 32, 32)
    assert flip(x).shape == plain(x).shape == (3, 7)
    assert flip.export().state_dict().keys() == plain.state_dict().keys()
    assert _channel_counts(flip.export()) == _channel_counts(plain)
    n_flip = sum(p.numel() for p in flip.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_flip < 0.51 * n_plain  # the free parameters are half


def _channel_counts(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_vgg11_channels_and_state_dict_names() -> None:
    model = gcnn.vgg11()
    assert _channel_counts(model) == [64, 128, 256, 256, 512, 512, 512, 512]
    assert "features.0.weight" in model.state_dict()
    assert model.classifier.in_features == 512
    assert gcnn.vgg11(batch_norm=False).features[0].bias is not None


@pytest.mark.parametrize("name", VGG_FLIP)
def test_training_steps_keep_the_flip_model_invariant(name, cifar_images) -> None:
    torch.manual_seed(0)
    model = build(name, width=0.25).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    _, labels = gcnn.data.load_samples("cifar10")
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(cifar_images), labels).backward()
        opt.step()
    assert_flip_equivariant(model.eval(), cifar_images, rtol=1e-10)
    assert_flip_equivariant(model.train(), cifar_images, rtol=1e-10)


@pytest.mark.parametrize("name", VGG_FLIP)
def test_warns_once_at_an_inexact_size_and_never_at_an_exact_one(name) -> None:
    model = gcnn.create_model(name, width=0.125)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlipExactnessWarning)
        model(torch.rand(1, 3, 32, 32))
    with pytest.warns(
        FlipExactnessWarning, match="features.*max_pool.*Nearest exact widths: 32, 64"
    ):
        model(torch.rand(1, 3, 32, 48))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlipExactnessWarning)
        model(torch.rand(1, 3, 32, 48))  # once per size
        model.export()(torch.rand(1, 3, 32, 40))  # plain models never warn
