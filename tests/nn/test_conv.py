"""Property-based tests of FlipConv2d: equivariance, the rule, export, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gcnn.exactness import flip_exactness
from gcnn.nn import Fields, FlipConv2d, expansion, swap_pairs
from gcnn.testing import TOLERANCES, assert_flip_equivariant, flip_equivariance_error
from tests.strategies import ConvCase, conv_cases

BROKEN = 1e-4  # a rule-breaking conv is off by far more than this (random weights and input)


def make_conv(case: ConvCase) -> FlipConv2d:
    conv = FlipConv2d(
        case.in_channels, case.out_channels, case.kernel, stride=case.stride,
        padding=case.padding, dilation=case.dilation, groups=case.groups, bias=case.bias,
        padding_mode=case.padding_mode, in_type=case.in_type, out_type=case.out_type,
        dtype=case.dtype,
    )  # fmt: skip
    if case.bias:
        nn.init.normal_(conv.bias)  # zero-init biases would hide a bias-sharing bug
    return conv


def make_input(case: ConvCase) -> torch.Tensor:
    return torch.randn(case.batch, case.in_channels, case.height, case.width, dtype=case.dtype)


@given(conv_cases(exact=True))
def test_flip_conv_is_equivariant_where_the_rule_holds(case: ConvCase) -> None:
    conv = make_conv(case)
    assert_flip_equivariant(conv, make_input(case), case.in_type, case.out_type)


@given(conv_cases(exact=None, any_padding_mode=False))
def test_rule_predicts_measured_exactness(case: ConvCase) -> None:
    """Predicted exact ⇔ measured exact, on both sides of the rule."""
    conv = make_conv(case)
    predicted = flip_exactness(conv, (case.height, case.width), search=0).exact
    assert predicted == case.rule_holds
    err = flip_equivariance_error(conv, make_input(case), case.in_type, case.out_type)
    if predicted:
        assert err <= TOLERANCES[case.dtype]
    else:
        assert err > BROKEN


@given(conv_cases(exact=True))
def test_plain_conv_of_same_shape_is_not_equivariant(case: ConvCase) -> None:
    """Negative control: an unconstrained conv with random weights fails the same check."""
    plain = make_conv(case).export()
    nn.init.normal_(plain.weight)
    err = flip_equivariance_error(plain, make_input(case), case.in_type, case.out_type)
    assert err > BROKEN


@given(conv_cases(exact=None), st.booleans())
def test_export_gives_identical_outputs(case: ConvCase, train: bool) -> None:
    """Bit for bit on the regular path (the isotypic path agrees to float tolerance:
    tests/nn/test_isotypic.py)."""
    conv = make_conv(case).train(train)
    conv.set_path("regular")
    x = make_input(case)
    plain = conv.export()
    assert type(plain) is nn.Conv2d and plain.training == train
    torch.testing.assert_close(plain(x), conv(x), rtol=0, atol=0)


@given(conv_cases(exact=True))
def test_full_weight_satisfies_the_constraint(case: ConvCase) -> None:
    """``W = P_out F(W) P_inᵀ``: the dense-equivalent weight commutes with the flip."""
    conv = make_conv(case)
    w = conv.full_weight()
    if case.groups == 1:  # W[o, i] = F W[s(o), s(i)], s swapping pairs of regular fields
        mirrored = w.flip(-1)
        if case.out_type == "regular":
            mirrored = swap_pairs(mirrored, 0)
        if case.in_type == "regular":
            mirrored = swap_pairs(mirrored, 1)
        torch.testing.assert_close(mirrored, w, rtol=0, atol=0)
    assert w.shape == (case.out_channels, case.in_channels // case.groups, case.kernel, case.kernel)


def test_regular_weight_interleaves_mirrors() -> None:
    conv = FlipConv2d(4, 6, 3, in_type="regular", out_type="regular")
    w, full = conv.weight, conv.full_weight()
    assert w.shape == (3, 4, 3, 3)
    torch.testing.assert_close(full[0::2], w)
    torch.testing.assert_close(full[1::2], w[:, [1, 0, 3, 2]].flip(-1))


@pytest.mark.parametrize("max_numel", [0, 1 << 30], ids=["gather", "index_select"])
def test_full_weight_can_be_modified_in_place_with_gradients(
    monkeypatch: pytest.MonkeyPatch, max_numel: int
) -> None:
    """``full_weight()`` of an all-pair conv is not a view made inside a custom Function, so
    in-place ops on it keep the autograd graph (``∂/∂w`` of ``Σ 2·W`` is twice that of
    ``Σ W``); on both of :func:`~gcnn.nn.expansion.pair_rows`' implementations."""
    monkeypatch.setattr(expansion, "INDEX_SELECT_MAX_NUMEL", max_numel)
    conv = FlipConv2d(4, 6, 3)
    (grad_once,) = torch.autograd.grad(conv.full_weight().sum(), conv.weight)
    doubled = conv.full_weight()
    doubled.mul_(2)
    (grad_twice,) = torch.autograd.grad(doubled.sum(), conv.weight)
    torch.testing.assert_close(grad_twice, 2 * grad_once)


@pytest.mark.parametrize("max_numel", [0, 1 << 30], ids=["gather", "index_select"])
@pytest.mark.parametrize("shape", [(3, 4, 3, 3), (2, 6, 1, 1), (1, 2, 2, 4), (2, 4, 3, 2)])
def test_both_pair_row_expansions_follow_the_definition(
    monkeypatch: pytest.MonkeyPatch, max_numel: int, shape: tuple[int, int, int, int]
) -> None:
    """``W[2k] = w[k]``, ``W[2k+1] = F S·w[k]`` (kernel width mirrored, input pairs swapped)
    and its adjoint, on both of :func:`pair_rows`' implementations (float64 gradcheck)."""
    monkeypatch.setattr(expansion, "INDEX_SELECT_MAX_NUMEL", max_numel)
    rows, cols, kh, kw = shape
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    mirrored = swap_pairs(w, 1).flip(-1)
    expected = torch.stack((w, mirrored), 1).view(2 * rows, cols, kh, kw)
    torch.testing.assert_close(expansion.pair_rows(w), expected, rtol=0, atol=0)
    assert torch.autograd.gradcheck(expansion.pair_rows, (w,))


def test_pair_rows_uses_index_select_on_small_weights_and_gather_on_large() -> None:
    small, large = FlipConv2d(64, 128, 3), FlipConv2d(256, 512, 3)
    assert small.weight.numel() <= expansion.INDEX_SELECT_MAX_NUMEL < large.weight.numel()
    assert type(small.full_weight().grad_fn).__name__ == "ViewBackward0"
    assert type(large.full_weight().grad_fn).__name__ == "_PairRowsBackward"


def test_free_parameters_are_half_of_a_plain_conv() -> None:
    flip, plain = FlipConv2d(64, 128, 3), nn.Conv2d(64, 128, 3)
    assert flip.weight.numel() * 2 == plain.weight.numel()


def test_from_conv_keeps_hyper_parameters_and_even_filters() -> None:
    plain = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=True)
    flip = FlipConv2d.from_conv(plain)
    torch.testing.assert_close(flip.full_weight()[0::2], plain.weight[0::2])
    assert (flip.stride, flip.padding) == (plain.stride, plain.padding)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 3, "out_channels": 4}, "even in_channels"),
        ({"in_channels": 4, "out_channels": 5}, "even out_channels"),
        (
            {"in_channels": 5, "out_channels": 4, "groups": 2,
             "in_type": Fields(trivial=1, regular=2)},
            "divisible by groups",
        ),
        (
            {"in_channels": 6, "out_channels": 4, "groups": 2,
             "in_type": Fields(trivial=2, regular=2)},
            "mixes field kinds",
        ),
        ({"in_channels": 4, "out_channels": 4, "in_type": Fields(trivial=1)}, "has 1 channels"),
        ({"in_channels": 4, "out_channels": 6, "groups": 3}, "divisible by groups"),
        ({"in_channels": 8, "out_channels": 4, "groups": 4}, "splits output pairs"),
        ({"in_channels": 4, "out_channels": 4, "in_type": "vector"}, "in_type must be one of"),
    ],
)  # fmt: skip
def test_invalid_configurations_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlipConv2d(kernel_size=3, **kwargs)
