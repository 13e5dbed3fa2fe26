"""VGG11 in torchvision's layout: flip builders that export into ``torchvision.models.VGG``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import gcnn
from gcnn.exactness import FlipExactnessWarning
from gcnn.models import FlipTorchvisionVGG
from gcnn.nn import FlipLinear
from gcnn.testing import assert_flip_equivariant, assert_same_outputs, flip_equivariance_error
from tests.models.test_vgg import with_random_bn_state

small = st.fixed_dictionaries(
    {
        "num_classes": st.integers(1, 6),
        "in_channels": st.integers(1, 3),
        "width": st.sampled_from([1 / 16, 1 / 8]),  # ≥ 4 channels: no dead net at random init
        "hidden": st.sampled_from([10, 16]),
    }
)


@settings(max_examples=3)
@given(kwargs=small, bn=st.booleans(), train=st.booleans(), size=st.sampled_from([32, 64]))
def test_flip_vgg_is_invariant_exports_and_loads_into_the_plain_builder(kwargs, bn, train, size):
    name = "tv_vgg11_bn" if bn else "tv_vgg11"
    torch.manual_seed(size)
    flip = with_random_bn_state(gcnn.create_model(f"{name}_flip", dropout=0.0, **kwargs))
    flip = flip.double().train(train)
    assert type(flip) is FlipTorchvisionVGG
    assert isinstance(flip.classifier[0], FlipLinear) and flip.classifier[0].spatial == (7, 7)
    x = torch.rand(2, kwargs["in_channels"], size, size, dtype=torch.float64)
    x = torch.cat([x, x.flip(-1)])  # flip-closed: train-mode BatchNorm exports exactly
    assert_flip_equivariant(flip, x)
    plain = flip.export()
    assert type(plain) is torchvision.models.VGG and plain.training == train
    reference = gcnn.create_model(name, dropout=0.0, **kwargs).double().train(train)
    reference.load_state_dict(plain.state_dict())
    assert_same_outputs(flip, reference, x, rtol=1e-10)
    # negative controls: a plain model, and the flip model at a width that breaks the rule
    fresh = with_random_bn_state(gcnn.create_model(name, dropout=0.0, **kwargs)).double()
    assert flip_equivariance_error(fresh.eval(), x) > 1e-4
    wide = torch.rand(1, kwargs["in_channels"], 32, 48, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlipExactnessWarning)
        assert flip_equivariance_error(flip.eval(), wide) > 1e-4


@pytest.mark.parametrize("bn", [False, True])
def test_full_size_state_dicts_are_torchvisions(bn) -> None:
    """At width 1 and hidden 4096 (built on the meta device: no memory, no compute) the plain
    builder and the exported flip model have torchvision's vgg11 / vgg11_bn state dict."""
    name = "tv_vgg11_bn" if bn else "tv_vgg11"
    with torch.device("meta"):
        reference = (torchvision.models.vgg11_bn if bn else torchvision.models.vgg11)()
        plain = gcnn.create_model(name)
        exported = gcnn.create_model(f"{name}_flip").export()
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in plain.state_dict().items()} == shapes
    assert {k: v.shape for k, v in exported.state_dict().items()} == shapes
    assert type(exported) is torchvision.models.VGG


def test_dropout_breaks_train_mode_invariance_and_eval_mode_restores_it() -> None:
    torch.manual_seed(0)
    flip = gcnn.create_model("tv_vgg11_flip", width=1 / 32, hidden=8, dropout=0.5).double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    assert flip_equivariance_error(flip.train(), x) > 1e-4
    assert_flip_equivariant(flip.eval(), x)
