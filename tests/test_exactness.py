"""The exactness rule on any model: window ops, functional calls, padding, nearest sizes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import gcnn
from gcnn.exactness import flip_exactness
from gcnn.testing import flip_equivariance_error


@st.composite
def pools(draw: st.DrawFn):
    kind = draw(st.sampled_from(["max", "avg"]))
    kernel = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, kernel // 2))
    width = draw(st.integers(max(kernel, 2), 20))
    layer = (
        nn.MaxPool2d(kernel, stride, padding)
        if kind == "max"
        else nn.AvgPool2d(kernel, stride, padding, count_include_pad=False)
    )
    return layer, kernel, stride, padding, width


@given(pools())
def test_rule_predicts_pooling_exactness(case) -> None:
    layer, kernel, stride, padding, width = case
    height = kernel + 1
    predicted = flip_exactness(layer, (height, width), in_channels=2, search=0).exact
    assert predicted == ((width + 2 * padding - kernel) % stride == 0)
    torch.manual_seed(width)
    err = flip_equivariance_error(layer, torch.randn(2, 2, height, width, dtype=torch.float64))
    assert err <= 1e-12 if predicted else err > 1e-4


class Functional(nn.Module):
    """Window ops called through torch.nn.functional, not as modules."""

    def __init__(self, pad: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (*self.pad, 0, 0))
        return F.avg_pool2d(F.max_pool2d(self.conv(x), 2), 3, stride=2)


def test_functional_ops_and_asymmetric_padding_are_seen() -> None:
    symmetric = flip_exactness(Functional((1, 1)), 16)  # 18 → conv 16 → pool 8 → avg (8-3)%2
    assert [o.op for o in symmetric.ops] == ["pad", "conv", "max_pool", "avg_pool"]
    assert [o.module for o in symmetric.breaking_ops] == [""]  # the root calls avg_pool2d
    assert symmetric.breaking_ops[0].op == "avg_pool"
    assert flip_exactness(Functional((1, 1)), 14).exact  # 16 → 14 → 7 → (7-3)%2 == 0
    lopsided = flip_exactness(Functional((0, 2)), 14)  # the conv reads both padded columns
    assert [(o.module, o.op) for o in lopsided.breaking_ops] == [("conv", "conv")]
    assert "padding added on one side only" in str(lopsided)


def test_any_torchvision_model() -> None:
    model = torchvision.models.resnet18()
    report = flip_exactness(model, 224)
    assert not report.exact and report.nearest_exact == (193, 225)
    assert "conv1" in str(report) and "Nearest exact widths: 193, 225" in str(report)
    assert flip_exactness(model, 225).exact


def test_too_small_a_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cannot run at input size 8×8"):
        flip_exactness(torchvision.models.vgg11(), 8)


def test_train_mode_with_cumulative_batchnorm_traces_and_keeps_modes() -> None:
    """momentum=None BatchNorm in train mode reads its counter as a number, which a meta trace
    cannot do: the rule is traced in eval mode, and every module's mode is restored."""
    model = gcnn.vgg11_flip(width=0.25).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    model.features[1].eval()  # a mixed-mode model keeps its modes
    assert gcnn.flip_exactness(model, 32).exact
    assert model.training and not model.features[1].training and model.features[5].training
    model(torch.rand(2, 3, 32, 32))  # the inexact-size hook traces on the first call
