"""escnn layers: the complete kernel basis, exact conversion to and from the hand-written layers."""

from __future__ import annotations

import pytest
import torch
from escnn import nn as enn
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gcnn.escnn import EscnnBatchNorm2d, EscnnConv2d, EscnnInvariantLinear, flip_to_escnn
from gcnn.escnn.layers import field_type, free_dimension, independent_basis, set_conv_filter
from gcnn.nn import Fields, FlipBatchNorm2d, FlipConv2d, InvariantLinear
from gcnn.testing import assert_flip_equivariant, assert_same_outputs, flip_equivariance_error

FIELDS = [("regular", "regular"), ("trivial", "regular"), ("regular", "trivial")]


@pytest.mark.parametrize(
    ("kernel_size", "fields"),
    [(k, f) for k in (1, 3, 5) for f in FIELDS] + [(7, ("trivial", "regular"))],
)
def test_basis_spans_every_equivariant_kernel(kernel_size, fields) -> None:
    assert len(independent_basis(kernel_size, 1, *fields)) == free_dimension(kernel_size, *fields)


def test_escnn_default_3x3_basis_is_band_limited() -> None:
    """Why gcnn builds its own basis: escnn's default spans 12 of 18 dimensions."""
    reg = field_type(2, "regular")
    default = enn.R2Conv(reg, reg, 3, padding=1, initialize=False)
    assert default.basisexpansion.dimension() == 12
    ours = EscnnConv2d(2, 2, 3, padding=1)
    assert ours.conv.basisexpansion.dimension() == free_dimension(3, "regular", "regular") == 18


conv_args = st.fixed_dictionaries(
    {
        "in_type": st.sampled_from(["trivial", "regular"]),
        "out_type": st.sampled_from(["regular", "trivial"]),
        "pairs_in": st.integers(1, 3),
        "pairs_out": st.integers(1, 3),
        "kernel_size": st.sampled_from([1, 3, 7]),
        "stride": st.integers(1, 2),
        "padding": st.integers(0, 3),
        "bias": st.booleans(),
    }
).filter(lambda a: not (a["in_type"] == a["out_type"] == "trivial"))


def _flip_conv(a: dict) -> FlipConv2d:
    cin = 2 * a["pairs_in"] if a["in_type"] == "regular" else a["pairs_in"]
    cout = 2 * a["pairs_out"] if a["out_type"] == "regular" else a["pairs_out"]
    conv = FlipConv2d(cin, cout, a["kernel_size"], a["stride"], a["padding"], bias=a["bias"],
                      in_type=a["in_type"], out_type=a["out_type"])  # fmt: skip
    if conv.bias is not None:
        nn.init.normal_(conv.bias)
    return conv.double()


def exact_width(k: int, s: int, p: int) -> int:
    """The smallest width ≥ k + 4 at which a (k, s, p) window op commutes with the flip."""
    return next(w for w in range(k + 4, k + 4 + s) if (w + 2 * p - k) % s == 0)


@given(a=conv_args, seed=st.integers(0, 2**16))
def test_conv_round_trip_is_exact(a, seed) -> None:
    """hand-written → escnn → hand-written: identical outputs, identical free weights."""
    torch.manual_seed(seed)
    flip = _flip_conv(a)
    escnn_conv = EscnnConv2d.from_flip(flip)
    assert escnn_conv.projection_error < 1e-12
    x = torch.randn(2, flip.in_channels, 9, 11, dtype=torch.float64)
    assert_same_outputs(flip, escnn_conv, x, rtol=1e-12)
    assert_same_outputs(flip, escnn_conv.export(), x, rtol=1e-12)
    back = escnn_conv.to_flip()
    torch.testing.assert_close(back.weight, flip.weight, rtol=1e-12, atol=1e-13)
    assert_same_outputs(flip, back, x, rtol=1e-12)


@given(a=conv_args, seed=st.integers(0, 2**16))
def test_escnn_conv_is_equivariant_and_a_plain_conv_is_not(a, seed) -> None:
    """Equivariance at an exact size. Negative controls: the same check fails for a plain conv,
    and the least-squares projection of a plain filter onto the basis leaves a large residual."""
    torch.manual_seed(seed)
    flip = _flip_conv(a)
    escnn_conv = EscnnConv2d.from_flip(flip)
    k, s, p = a["kernel_size"], a["stride"], a["padding"]
    x = torch.randn(2, flip.in_channels, 8, exact_width(k, s, p), dtype=torch.float64)
    assert_flip_equivariant(escnn_conv, x, a["in_type"], a["out_type"])
    plain = nn.Conv2d(flip.in_channels, flip.out_channels, k, s, p).double()
    with torch.no_grad():  # its anti-equivariant part (W − g·W)/2: no equivariant component
        w = plain.weight
        out_f, in_f = Fields.of(a["out_type"], w.shape[0]), Fields.of(a["in_type"], w.shape[1])
        plain.weight.copy_((w - out_f.act(in_f.act(w.flip(-1), 1), 0)) / 2)
    assert flip_equivariance_error(plain, x, a["in_type"], a["out_type"]) > 1e-4
    scale = plain.weight.abs().max().item()
    assert scale > 0
    assert set_conv_filter(escnn_conv.conv, plain.weight.detach()) > 0.5 * scale


@pytest.mark.parametrize("train", [False, True])
def test_batchnorm_and_head_convert_exactly(train) -> None:
    torch.manual_seed(0)
    bn = FlipBatchNorm2d(6).double()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.normal_()
        bn.running_var.uniform_(0.5, 2)
    bn.train(train)
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    ebn = EscnnBatchNorm2d.from_flip(bn)
    assert ebn.training == train
    assert_same_outputs(bn.eval() if not train else bn, ebn, x, rtol=1e-12)
    assert_same_outputs(ebn, ebn.to_flip(), x, rtol=1e-12)
    assert_same_outputs(ebn.eval(), ebn.export().eval(), x, rtol=1e-12)
    head = InvariantLinear(6, 3).double()
    ehead = flip_to_escnn(head)
    assert isinstance(ehead, EscnnInvariantLinear)
    v = torch.randn(5, 6, dtype=torch.float64)
    assert_same_outputs(head, ehead, v, rtol=1e-12)
    assert_same_outputs(head, ehead.export(), v, rtol=1e-12)
    assert_same_outputs(head, ehead.to_flip(), v, rtol=1e-12)
    torch.testing.assert_close(ehead(v[:, [1, 0, 3, 2, 5, 4]]), ehead(v))  # pair swap: invariant


def test_batchnorm_accepts_channels_last() -> None:
    """gcnn train uses channels_last on CUDA; escnn's InnerBatchNorm needs a view."""
    bn = EscnnBatchNorm2d(4)
    x = torch.randn(2, 4, 3, 3)
    y = bn(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, bn(x))


@pytest.mark.parametrize("train", [False, True])
def test_fast_paths_match_escnn(train) -> None:
    """FullBasisR2Conv.expand_parameters and EscnnBatchNorm2d.forward skip escnn's transpose
    and copy; they must compute exactly what escnn's own code computes."""
    torch.manual_seed(0)
    for conv in (EscnnConv2d(4, 6, 3), EscnnConv2d(3, 6, 7, in_type="trivial"),
                 EscnnConv2d(6, 5, 3, out_type="trivial")):  # fmt: skip
        nn.init.normal_(conv.conv.weights)
        ours, theirs = conv.conv.expand_parameters(), enn.R2Conv.expand_parameters(conv.conv)
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)  # float32 sums
        torch.testing.assert_close(ours[1], theirs[1])
    bn = EscnnBatchNorm2d(6).train(train)
    with torch.no_grad():
        bn.inner.weight.normal_(), bn.inner.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 6, 4, 4)
    expected = bn.bn(enn.GeometricTensor(x, bn.bn.in_type)).tensor
    torch.testing.assert_close(bn(x), expected)


def test_deep_copies_share_escnn_constants_without_changing_escnn() -> None:
    """gcnn's escnn layers deep-copy escnn's immutable objects by reference; escnn's own
    classes are left alone (a plain deep copy of a field type is a new object)."""
    import copy

    from gcnn.escnn.sharing import IMMUTABLE_ESCNN_TYPES

    conv = EscnnConv2d(4, 6, 3)
    twin = copy.deepcopy(conv)
    assert twin.conv.in_type is conv.conv.in_type  # shared
    assert twin.conv.weights is not conv.conv.weights
    with torch.no_grad():
        twin.conv.weights.add_(1)
    assert not torch.equal(twin.conv.weights, conv.conv.weights)  # parameters are copies
    assert not any("__deepcopy__" in vars(cls) for cls in IMMUTABLE_ESCNN_TYPES)
    assert copy.deepcopy(conv.conv.in_type) is not conv.conv.in_type  # escnn unchanged
