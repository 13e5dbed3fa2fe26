"""Mixed field layouts: the flip action, and every layer on trivial + regular fields.

The completeness test computes the equivariance constraint numerically, independently of the
layer's own algebra: the null space of ``W ↦ conv(g·x; W) − g·conv(x; W)`` over *all* plain
weights ``W`` is the space of equivariant filters; a complete parametrisation is injective,
lands in that null space and has exactly as many free parameters as its dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from gcnn.nn import (
    Fields,
    FlipBatchNorm2d,
    FlipConv2d,
    InvariantLinear,
    PairPool,
    flip_action,
    swap_pairs,
)
from gcnn.testing import assert_flip_equivariant, flip_equivariance_error
from tests.nn.field_cases import MixedConv, layouts, mixed_convs

BROKEN = 1e-4


@given(layouts())
def test_permutation_is_the_documented_involution(fields: Fields) -> None:
    sigma = fields.permutation()
    assert torch.equal(sigma[sigma], torch.arange(fields.channels))
    assert torch.equal(sigma[: fields.trivial], torch.arange(fields.trivial))  # trivial: fixed
    moved = (sigma != torch.arange(fields.channels)).sum()
    assert moved == 2 * fields.regular
    x = torch.randn(2, fields.channels, 3)
    torch.testing.assert_close(fields.act(x), x[:, sigma], rtol=0, atol=0)
    torch.testing.assert_close(flip_action(x, fields), x[:, sigma].flip(-1), rtol=0, atol=0)


def test_shorthands_are_pure_layouts() -> None:
    x = torch.randn(2, 6, 4, 5)
    assert Fields.of("regular", 6) == Fields(regular=3) and Fields.of("trivial", 6) == Fields(6)
    torch.testing.assert_close(flip_action(x, "regular"), flip_action(x, Fields(regular=3)))
    torch.testing.assert_close(flip_action(x, "trivial"), x.flip(-1))
    torch.testing.assert_close(swap_pairs(x), x[:, [1, 0, 3, 2, 5, 4]])
    with pytest.raises(ValueError, match="has 5 channels, expected 6"):
        flip_action(x, Fields(trivial=1, regular=2))
    with pytest.raises(ValueError, match="≥ 0"):
        Fields(trivial=-1)


# --- completeness of the conv parametrisation ---------------------------------------------


@dataclass(frozen=True)
class Parametrisation:
    """Free parameters → full weight, as a matrix: columns are the expanded unit vectors."""

    case: MixedConv
    expansion: Tensor  # (numel(W), n_free)


def expansion_matrix(conv: FlipConv2d) -> Tensor:
    """``∂W/∂θ`` of ``conv.full_weight()`` w.r.t. all free weights, float64 ``(numel W, n)``."""
    params = [p for name, p in conv.named_parameters() if name != "bias"]
    n = sum(p.numel() for p in params)
    columns = []
    with torch.no_grad():
        for j in range(n):
            unit = torch.zeros(n, dtype=torch.float64)
            unit[j] = 1
            for p, chunk in zip(params, unit.split([p.numel() for p in params]), strict=True):
                p.copy_(chunk.view_as(p))
            columns.append(conv.full_weight().flatten())
    return torch.stack(columns, dim=1)


def constraint_matrix(case: MixedConv) -> Tensor:
    """``∂/∂W [conv(g·x; W) − g·conv(x; W)]`` over all plain grouped weights, float64.

    Stride 1 and "full" padding, on a random input: every kernel entry meets every pixel, so
    the null space is exactly the equivariant filters (of any stride, which the constraint
    does not depend on)."""
    in_g = case.in_fields.channels // case.groups
    kh, kw = case.kernel
    shape = (case.out_fields.channels, in_g, kh, kw)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, case.in_fields.channels, kh + 2, kw + 3, generator=gen, dtype=torch.float64)
    gx = flip_action(x, case.in_fields)

    def defect(w: Tensor) -> Tensor:
        def conv(t: Tensor) -> Tensor:
            return F.conv2d(t, w.view(shape), padding=(kh - 1, kw - 1), groups=case.groups)

        return (conv(gx) - flip_action(conv(x), case.out_fields)).flatten()

    numel = int(torch.Size(shape).numel())
    return torch.func.jacfwd(defect)(torch.zeros(numel, dtype=torch.float64))


def completeness(case: MixedConv, expansion: Tensor) -> tuple[int, int, int, float]:
    """(free parameters, rank of the expansion, null-space dimension, max constraint defect)."""
    m = constraint_matrix(case)
    sv = torch.linalg.svdvals(m)
    rank_m = int((sv > 1e-9 * sv.max().clamp_min(1)).sum()) if sv.numel() else 0
    null_dim = m.shape[1] - rank_m
    rank_e = int(torch.linalg.matrix_rank(expansion)) if expansion.numel() else 0
    defect = float((m @ expansion).abs().max()) if expansion.numel() else 0.0
    return expansion.shape[1], rank_e, null_dim, defect


def assert_complete(case: MixedConv, expansion: Tensor) -> None:
    n, rank, null_dim, defect = completeness(case, expansion)
    assert defect < 1e-10, f"a free direction is not equivariant (defect {defect:.2g})"
    assert rank == n, f"redundant free parameters: rank {rank} < {n}"
    assert n == null_dim, f"{n} free parameters, {null_dim} equivariant dimensions"


@given(mixed_convs(stride_one=True))
def test_free_parameters_span_exactly_the_equivariant_filters(case: MixedConv) -> None:
    conv = case.build()
    expansion = expansion_matrix(conv)
    assert expansion.shape[1] == conv.free_parameter_count()
    assert_complete(case, expansion)


@given(mixed_convs(stride_one=True), st.data())
def test_completeness_check_rejects_broken_parametrisations(case: MixedConv, data) -> None:
    """Negative controls: the same check fails for the plain conv's parameters (too many,
    not equivariant), for a dropped free parameter (too few) and for a duplicated one."""
    expansion = expansion_matrix(case.build())
    numel, n = expansion.shape
    if n < numel:  # (trivial→trivial 1-wide kernels: every plain filter is equivariant)
        with pytest.raises(AssertionError, match="not equivariant"):
            assert_complete(case, torch.eye(numel, dtype=torch.float64))
    drop = data.draw(st.integers(0, n - 1))
    with pytest.raises(AssertionError, match="equivariant dimensions"):
        assert_complete(case, torch.cat((expansion[:, :drop], expansion[:, drop + 1 :]), 1))
    with pytest.raises(AssertionError, match="redundant"):
        assert_complete(case, torch.cat((expansion, expansion[:, drop : drop + 1]), 1))


def test_symmetric_kernels_have_half_width_free_parameters() -> None:
    conv = FlipConv2d(2, 3, (3, 5), in_type="trivial", out_type="trivial")
    assert dict((n, p.shape) for n, p in conv.named_parameters()) == {
        "weight": (3, 2, 3, 3),
        "bias": (3,),
    }
    w = conv.full_weight()
    torch.testing.assert_close(w, w.flip(-1), rtol=0, atol=0)


def test_mixed_conv_parameter_names_and_shapes() -> None:
    conv = FlipConv2d(7, 5, 3, in_type=Fields(3, 2), out_type=Fields(1, 2))
    shapes = {n: tuple(p.shape) for n, p in conv.named_parameters()}
    assert shapes == {
        "weight": (2, 7, 3, 3),  # first row of each output pair
        "trivial_weight": (1, 2, 3, 3),  # trivial row, first column of each input pair
        "symmetric_weight": (1, 3, 3, 2),  # trivial row, trivial columns: left halves
        "bias": (3,),
    }
    assert conv.in_fields == Fields(3, 2) and conv.out_fields == Fields(1, 2)


# --- equivariance and export of every layer on mixed layouts ------------------------------


@given(mixed_convs(), st.sampled_from([torch.float32, torch.float64]))
def test_mixed_conv_is_equivariant_and_a_plain_conv_is_not(case: MixedConv, dtype) -> None:
    conv = case.build(dtype)
    x = torch.randn(2, case.in_fields.channels, case.height, case.width, dtype=dtype)
    assert_flip_equivariant(conv, x, case.in_fields, case.out_fields)
    conv.set_path("regular")  # bit for bit; the isotypic path to float tolerance
    plain = conv.export()
    torch.testing.assert_close(plain(x), conv(x), rtol=0, atol=0)
    assert type(plain) is nn.Conv2d
    nn.init.normal_(plain.weight)  # negative control: same shapes, unconstrained weights
    if case.in_fields.regular or case.out_fields.regular or case.kernel[1] > 1:
        assert flip_equivariance_error(plain, x, case.in_fields, case.out_fields) > BROKEN


@given(mixed_convs())
def test_from_conv_recovers_an_equivariant_filter(case: MixedConv) -> None:
    conv = case.build()
    again = FlipConv2d.from_conv(conv.export(), case.in_fields, case.out_fields)
    theirs = dict(again.named_parameters())
    assert theirs.keys() == dict(conv.named_parameters()).keys()
    for name, p in conv.named_parameters():
        torch.testing.assert_close(theirs[name], p, rtol=0, atol=0)


def randomised_bn(bn: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            getattr(bn, name).normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn


@given(layouts(), st.booleans(), st.integers(1, 3), st.integers(1, 4))
def test_mixed_batchnorm(fields: Fields, train: bool, h: int, w: int) -> None:
    bn = randomised_bn(FlipBatchNorm2d(fields.channels, fields=fields, dtype=torch.float64))
    bn.train(train)
    assert bn.weight.shape == (fields.trivial + fields.regular,)
    x = torch.randn(3, fields.channels, h, w, dtype=torch.float64)
    assert_flip_equivariant(bn, x, fields, fields)
    closed = torch.cat([x, flip_action(x, fields)])  # train mode agrees on flip-closed batches
    plain = bn.export()
    expected = bn(closed)
    torch.testing.assert_close(plain(closed), expected)
    # negative control: per-channel affine parameters inside a pair break equivariance
    if fields.regular:
        ref = randomised_bn(nn.BatchNorm2d(fields.channels, dtype=torch.float64)).train(train)
        assert flip_equivariance_error(ref, x, fields, fields) > BROKEN


def test_mixed_batchnorm_trivial_part_is_plain_batchnorm() -> None:
    fields = Fields(trivial=2, regular=1)
    bn = randomised_bn(FlipBatchNorm2d(4, fields=fields, dtype=torch.float64)).train()
    ref = nn.BatchNorm2d(2, dtype=torch.float64).train()
    ref.load_state_dict({k: v[:2] if v.dim() else v for k, v in bn.state_dict().items()})
    x = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(bn(x)[:, :2], ref(x[:, :2]))
    torch.testing.assert_close(bn.running_mean[:2], ref.running_mean)  # updated in place


@given(layouts(), st.sampled_from(["mean", "max"]), st.integers(1, 5))
def test_mixed_pair_pool(fields: Fields, mode: str, w: int) -> None:
    pool = PairPool(mode, fields=fields)
    x = torch.randn(2, fields.channels, 3, w, dtype=torch.float64)
    assert pool(x).shape == (2, fields.trivial + fields.regular, 3, w)
    assert pool.out_fields == Fields(trivial=fields.trivial + fields.regular)
    assert_flip_equivariant(pool, x, fields, pool.out_fields)
    if fields.regular:  # negative control: the first pair copied as if it were two trivials
        wrong = PairPool(mode, fields=Fields(fields.trivial + 2, fields.regular - 1))
        assert flip_equivariance_error(wrong, x, fields, wrong.out_fields) > BROKEN


@given(layouts(), st.integers(1, 4), st.booleans())
def test_mixed_invariant_linear(fields: Fields, out: int, bias: bool) -> None:
    lin = InvariantLinear(fields.channels, out, bias=bias, in_type=fields, dtype=torch.float64)
    x = torch.randn(5, fields.channels, dtype=torch.float64)
    assert_flip_equivariant(lin, x, fields, "trivial")
    plain = lin.export()
    torch.testing.assert_close(plain(x), lin(x), rtol=0, atol=0)
    again = InvariantLinear.from_linear(plain, in_type=fields)
    torch.testing.assert_close(again.full_weight(), lin.full_weight())
    n_free = sum(p.numel() for n, p in lin.named_parameters() if n != "bias")
    assert n_free == out * (fields.trivial + fields.regular)  # all invariant maps
    if fields.regular:  # negative control
        nn.init.normal_(plain.weight)
        assert flip_equivariance_error(plain, x, fields, "trivial") > BROKEN
