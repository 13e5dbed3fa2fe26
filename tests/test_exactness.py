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
from gcnn.exactness_check import numerical_flip_check
from gcnn.testing import flip_equivariance_error
from tests.analysis.archs import ARCHS, build


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
    # a ramp along the width plus small noise: windows at other columns have other maxima (with
    # noise alone, two overlapping max-pool windows often share their maximum)
    ramp = torch.arange(width, dtype=torch.float64)
    x = ramp + 0.1 * torch.rand(2, 2, height, width, dtype=torch.float64)
    err = flip_equivariance_error(layer, x)
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


# --------------------------------------------------------------------------- verdict = numerics

#: widths tested per architecture: 20 around the ImageNet size (both sides of 224/225), and
#: 24–43 for the 32-px custom net
WIDTHS = {"custom": range(24, 44)}


@pytest.mark.parametrize("name", list(ARCHS))
def test_verdict_equals_the_numerical_check_at_every_width(name: str) -> None:
    """For 20 consecutive widths: ``flip_exactness(...).exact`` equals the float64 op-by-op
    check of the flipped twin against the model on mirrored inputs (random weights and
    images). Both verdicts occur in every range, so the test fails for a verdict that always
    says "exact" or always "not exact"."""
    from gcnn.analysis import flipped_twin

    model = build(name)
    height = ARCHS[name][1]
    twin = flipped_twin(model, example_input=torch.zeros(1, 3, height, 64, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    verdicts = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for width in WIDTHS.get(name, range(206, 226)):
            predicted = flip_exactness(model, (height, width), search=0)
            x = torch.randn(1, 3, height, width, dtype=torch.float64, generator=generator)
            measured = numerical_flip_check(model, x, twin)
            assert predicted.exact == measured.exact, (width, str(predicted), measured.breaking[:1])
            verdicts[width] = predicted.exact
    finally:
        torch.set_num_threads(threads)
    assert any(verdicts.values()) and not all(verdicts.values()), verdicts


def _lite0_skeleton(channels: int = 4) -> nn.Module:
    """EfficientNet-Lite0's window ops with its static TF-"same" pads, fixed for 224 (a
    ``ZeroPad2d`` before every conv: stride-2 3×3 convs get ``(0, 1)``, stride-2 5×5 ``(1, 2)``)."""
    layers: list[nn.Module] = []
    c_in = 3
    for k, s, (left, right) in [
        (3, 2, (0, 1)), (3, 1, (1, 1)), (3, 2, (0, 1)), (5, 2, (1, 2)),
        (3, 2, (0, 1)), (5, 1, (2, 2)), (5, 2, (1, 2)), (3, 1, (1, 1)),
    ]:  # fmt: skip
        layers += [nn.ZeroPad2d((left, right, left, right)), nn.Conv2d(c_in, channels, k, s)]
        layers.append(nn.ReLU())
        c_in = channels
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3))


def test_static_same_padding_is_exact_where_the_unread_column_never_matters() -> None:
    """The EfficientNet-Lite0 case of issue 10: exact at 191, 223, 255 and 287 (and nowhere
    else in 180–299), as the float64 check confirms, although every width has asymmetric pads
    (which the op-by-op rule rejects); 224 and 225 are not exact, naming the stem."""
    torch.manual_seed(0)
    model = _lite0_skeleton().double().eval()
    exact = [w for w in range(180, 300) if flip_exactness(model, (64, w), search=0).exact]
    assert exact == [191, 223, 255, 287]
    for width in (191, 223, 224, 225):
        report = flip_exactness(model, (64, width), search=0)
        assert any(o.op == "pad" and o.remainder for o in report.ops)  # the old rule: never
        x = torch.randn(2, 3, 64, width, dtype=torch.float64)
        assert numerical_flip_check(model, x).exact == report.exact
    at_224 = flip_exactness(model, (64, 224))
    assert at_224.breaking_ops[0].module == "1" and at_224.nearest_exact == (223, 255)
