"""escnn layers on any field layout: the complete kernel basis, exact conversion to and from
the hand-written layers, equivariance (each check with a negative control)."""

from __future__ import annotations

import copy

import pytest
import torch
from escnn import nn as enn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gcnn.escnn import EscnnBatchNorm2d, EscnnConv2d, EscnnInvariantLinear, flip_to_escnn
from gcnn.escnn.layers import (
    escnn_type,
    field_type,
    flip_gspace,
    free_dimension,
    independent_basis,
    set_conv_filter,
)
from gcnn.nn import Fields, FlipBatchNorm2d, InvariantLinear, flip_action
from gcnn.testing import assert_flip_equivariant, assert_same_outputs, flip_equivariance_error
from tests.nn.field_cases import MixedConv, layouts

KINDS = [(i, o) for i in ("trivial", "regular") for o in ("trivial", "regular")]
#: Small layouts (the escnn constructors dominate the run time).
LAYOUTS = layouts(max_trivial=3, max_pairs=2)
WITH_PAIRS = LAYOUTS.filter(lambda f: f.regular > 0)
#: Few examples per property: each builds escnn modules (tens of ms to a second).
FEW = settings(max_examples=10, deadline=None)


@pytest.mark.parametrize(
    ("kernel_size", "kinds"), [(k, f) for k in (1, 3, 5) for f in KINDS] + [(7, KINDS[1])]
)
def test_basis_spans_every_equivariant_kernel(kernel_size, kinds) -> None:
    assert len(independent_basis(kernel_size, 1, *kinds)) == free_dimension(kernel_size, *kinds)


def test_free_dimension_counts_mirror_symmetric_kernels() -> None:
    """Trivial→trivial kernels are mirror-symmetric: ``k·⌈k/2⌉``, not ``k²/2``."""
    assert [free_dimension(k, "trivial", "trivial") for k in (1, 2, 3, 5)] == [1, 2, 6, 15]
    assert free_dimension(3, "regular", "regular") == 18
    assert free_dimension(3, "trivial", "regular") == free_dimension(3, "regular", "trivial") == 9


def test_escnn_default_3x3_basis_is_band_limited() -> None:
    """Why gcnn builds its own basis: escnn's default spans 12 of 18 dimensions."""
    reg = field_type(2, "regular")
    default = enn.R2Conv(reg, reg, 3, padding=1, initialize=False)
    assert default.basisexpansion.dimension() == 12
    ours = EscnnConv2d(2, 2, 3, padding=1)
    assert ours.conv.basisexpansion.dimension() == free_dimension(3, "regular", "regular") == 18


@FEW
@given(fields=LAYOUTS)
def test_escnn_field_type_acts_as_the_gcnn_layout(fields) -> None:
    """escnn's direct sum (trivial fields, then regular ones) transforms a tensor exactly as
    :func:`gcnn.nn.flip_action`. Negative control: a layout of as many channels with one pair
    more or less acts differently."""
    group = flip_gspace().fibergroup
    flip = next(g for g in group.elements if g != group.identity)
    x = torch.randn(2, fields.channels, 3, 4, dtype=torch.float64)
    escnn_action = enn.GeometricTensor(x, escnn_type(fields)).transform(flip).tensor
    torch.testing.assert_close(escnn_action, flip_action(x, fields), rtol=0, atol=1e-15)
    t, r = fields.trivial, fields.regular
    other = Fields(t + 2, r - 1) if r else Fields(t - 2, 1) if t >= 2 else None
    if other is not None:
        assert not torch.allclose(escnn_action, flip_action(x, other))


@st.composite
def escnn_convs(draw: st.DrawFn) -> MixedConv:
    """Dense square convs between any two layouts, kernels 1/3/5, strides 1/2, at an exact
    width; not the 1×1 trivial→trivial conv (every filter is equivariant there, so a negative
    control cannot fail)."""
    in_f, out_f = draw(LAYOUTS), draw(LAYOUTS)
    k = draw(st.sampled_from([1, 3, 5]))
    if k == 1 and in_f.is_trivial and out_f.is_trivial:
        out_f = Fields(trivial=out_f.trivial, regular=1)
    stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, k // 2))
    width = next(w for w in range(k, k + stride) if (w + 2 * padding - k) % stride == 0)
    width += stride * draw(st.integers(0, 2))
    height = k + draw(st.integers(0, 2))
    return MixedConv(
        in_f, out_f, (k, k), stride, (padding, padding), 1, 1, draw(st.booleans()), height, width
    )


def _input(case: MixedConv) -> torch.Tensor:
    return torch.randn(2, case.in_fields.channels, case.height, case.width, dtype=torch.float64)


@FEW
@given(case=escnn_convs(), seed=st.integers(0, 2**16))
def test_conv_round_trip_is_exact_and_complete(case, seed) -> None:
    """hand-written → escnn → hand-written: identical outputs, identical free weights, and
    as many escnn coefficients as free parameters (both parametrisations are complete)."""
    torch.manual_seed(seed)
    flip = case.build()
    escnn_conv = EscnnConv2d.from_flip(flip)
    assert escnn_conv.in_fields == case.in_fields and escnn_conv.out_fields == case.out_fields
    assert escnn_conv.free_parameter_count() == flip.free_parameter_count()
    assert escnn_conv.projection_error < 1e-12
    x = _input(case)
    assert_same_outputs(flip, escnn_conv, x, rtol=1e-12)
    assert_same_outputs(flip, escnn_conv.export(), x, rtol=1e-12)
    back = escnn_conv.to_flip()
    assert dict(back.named_parameters()).keys() == dict(flip.named_parameters()).keys()
    for (name, p), q in zip(back.named_parameters(), flip.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13, msg=name)
    assert_same_outputs(flip, back, x, rtol=1e-12)


@FEW
@given(case=escnn_convs(), seed=st.integers(0, 2**16))
def test_escnn_conv_is_equivariant_and_a_plain_conv_is_not(case, seed) -> None:
    """Equivariance at an exact size, layouts inferred. Negative controls: a plain conv of the
    same shape holding the anti-equivariant part ``(W − g·W)/2`` of a random filter fails the
    same check, and its least-squares projection onto the basis leaves all of it."""
    torch.manual_seed(seed)
    escnn_conv = EscnnConv2d.from_flip(case.build())
    x = _input(case)
    assert_flip_equivariant(escnn_conv, x)
    in_f, out_f = case.in_fields, case.out_fields
    plain = nn.Conv2d(in_f.channels, out_f.channels, case.kernel, case.stride, case.padding)
    plain = plain.double()
    with torch.no_grad():
        w = plain.weight
        plain.weight.copy_((w - out_f.act(in_f.act(w.flip(-1), 1), 0)) / 2)
    assert flip_equivariance_error(plain, x, in_f, out_f) > 1e-4
    scale = plain.weight.abs().max().item()
    assert scale > 0
    assert set_conv_filter(escnn_conv.conv, plain.weight.detach()) > 0.5 * scale


def _random_batchnorm(fields: Fields, train: bool) -> FlipBatchNorm2d:
    bn = FlipBatchNorm2d(fields.channels, fields=fields).double()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.normal_()
        bn.running_var.uniform_(0.5, 2)
    return bn.train(train)


@FEW
@given(fields=LAYOUTS, train=st.booleans(), seed=st.integers(0, 2**16))
def test_batchnorm_equals_the_hand_written_one(fields, train, seed) -> None:
    """Same outputs and running statistics as :class:`FlipBatchNorm2d` (trivial channels on
    their own, pairs shared) in train and eval mode; exact conversion both ways."""
    torch.manual_seed(seed)
    bn = _random_batchnorm(fields, train)
    ebn = EscnnBatchNorm2d.from_flip(bn)
    assert ebn.training == train and ebn.in_fields == fields
    x = torch.randn(4, fields.channels, 3, 5, dtype=torch.float64)
    assert_same_outputs(bn, ebn, x, rtol=1e-12)  # train mode: both update their statistics
    back = ebn.to_flip()
    assert back.fields == fields and back.training == train
    for name, value in bn.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value, rtol=1e-12, atol=0, msg=name)
    assert_same_outputs(bn.eval(), ebn.eval().export(), x, rtol=1e-12)


@FEW
@given(fields=WITH_PAIRS, train=st.booleans(), seed=st.integers(0, 2**16))
def test_batchnorm_is_equivariant_and_plain_batchnorm_is_not(fields, train, seed) -> None:
    """Negative control: ``nn.BatchNorm2d`` with its own weight per channel of a pair."""
    torch.manual_seed(seed)
    ebn = EscnnBatchNorm2d.from_flip(_random_batchnorm(fields, train))
    x = torch.randn(4, fields.channels, 3, 5, dtype=torch.float64)
    assert_flip_equivariant(ebn, x)
    plain = nn.BatchNorm2d(fields.channels).double().train(train)
    with torch.no_grad():
        plain.weight.normal_()
    assert flip_equivariance_error(plain, x, fields, fields) > 1e-3


@FEW
@given(fields=LAYOUTS, out=st.integers(1, 3), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_head_converts_exactly(fields, out, bias, seed) -> None:
    torch.manual_seed(seed)
    head = InvariantLinear(fields.channels, out, bias=bias, in_type=fields).double()
    ehead = flip_to_escnn(head)
    assert isinstance(ehead, EscnnInvariantLinear) and ehead.projection_error < 1e-12
    v = torch.randn(5, fields.channels, dtype=torch.float64)
    assert_same_outputs(head, ehead, v, rtol=1e-12)
    assert_same_outputs(head, ehead.export(), v, rtol=1e-12)
    back = ehead.to_flip()
    assert back.in_fields == fields
    torch.testing.assert_close(back.full_weight(), head.full_weight(), rtol=1e-12, atol=1e-14)
    assert_same_outputs(head, back, v, rtol=1e-12)


@FEW
@given(fields=WITH_PAIRS, seed=st.integers(0, 2**16))
def test_head_is_invariant_and_a_plain_linear_is_not(fields, seed) -> None:
    """On an all-trivial input every linear map is invariant: layouts with a pair only."""
    torch.manual_seed(seed)
    ehead = EscnnInvariantLinear.from_flip(InvariantLinear(fields.channels, 3, in_type=fields))
    v = torch.randn(5, fields.channels)
    assert_flip_equivariant(ehead, v)
    plain = nn.Linear(fields.channels, 3)
    assert flip_equivariance_error(plain, v, fields, "trivial") > 1e-3


MIXED = [
    (Fields(2, 1), Fields(1, 2)),  # all four blocks
    (Fields(0, 2), Fields(3, 0)),
    (Fields(3, 0), Fields(2, 0)),
]


@pytest.mark.parametrize("train", [False, True])
def test_fast_paths_match_escnn(train) -> None:
    """FullBasisR2Conv.expand_parameters and EscnnBatchNorm2d.forward skip escnn's transpose,
    scatter and copy; they must compute exactly what escnn's own code computes."""
    torch.manual_seed(0)
    convs = [EscnnConv2d(4, 6, 3), EscnnConv2d(3, 6, 7, in_type="trivial")]
    convs += [EscnnConv2d(a.channels, b.channels, 3, in_type=a, out_type=b) for a, b in MIXED]
    for conv in convs:
        nn.init.normal_(conv.conv.weights)
        if conv.conv.bias is not None:
            nn.init.normal_(conv.conv.bias)
        ours, theirs = conv.conv.expand_parameters(), enn.R2Conv.expand_parameters(conv.conv)
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)  # float32 sums
        torch.testing.assert_close(ours[1], theirs[1])
    for fields in (Fields(0, 3), Fields(2, 2), Fields(3, 0)):
        bn = EscnnBatchNorm2d(fields.channels, fields=fields).train(train)
        with torch.no_grad():
            for _, _, inner in bn.parts():
                inner.weight.normal_(), inner.running_var.uniform_(0.5, 2)
        x = torch.randn(3, fields.channels, 4, 4)
        twin = copy.deepcopy(bn)
        expected = twin.bn(enn.GeometricTensor(x, twin.bn.in_type)).tensor
        torch.testing.assert_close(bn(x), expected)
        torch.testing.assert_close(bn.to_flip().running_var, twin.to_flip().running_var)


@pytest.mark.parametrize("fields", [Fields(0, 2), Fields(1, 2)])
def test_batchnorm_accepts_channels_last(fields) -> None:
    """gcnn train uses channels_last on CUDA; escnn's InnerBatchNorm needs a view."""
    bn = EscnnBatchNorm2d(fields.channels, fields=fields)
    x = torch.randn(2, fields.channels, 3, 3)
    y = bn(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, bn(x))


def test_deep_copies_share_escnn_constants_without_changing_escnn() -> None:
    """gcnn's escnn layers deep-copy escnn's immutable objects by reference; escnn's own
    classes are left alone (a plain deep copy of a field type is a new object)."""
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


def test_mixed_fields_example_in_the_docs_runs() -> None:
    """The python block of docs/escnn.md's *Mixed fields* section runs as written."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "escnn.md").read_text()
    section = doc.split("## Mixed fields", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(block, "docs/escnn.md", "exec"), {})
