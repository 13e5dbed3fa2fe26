"""FlipLinear: the spatial Linear on a flattened field is complete, equivariant and exports."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gcnn.nn import Fields, FlipLinear
from gcnn.testing import assert_flip_equivariant, flip_equivariance_error
from tests.nn.field_cases import MixedConv, layouts
from tests.nn.test_fields import assert_complete

spatial_sizes = st.tuples(st.integers(1, 2), st.integers(1, 3))


def make(in_f: Fields, out_f: Fields, hw: tuple[int, int]) -> FlipLinear:
    lin = FlipLinear(in_f.channels * hw[0] * hw[1], out_f.channels, in_type=in_f, out_type=out_f,
                     spatial=hw, dtype=torch.float64)  # fmt: skip
    nn.init.normal_(lin.bias)
    return lin


def expansion_matrix(lin: FlipLinear) -> torch.Tensor:
    params = [p for name, p in lin.named_parameters() if name != "bias"]
    sizes = [p.numel() for p in params]
    columns = []
    with torch.no_grad():
        for j in range(sum(sizes)):
            unit = torch.zeros(sum(sizes), dtype=torch.float64)
            unit[j] = 1
            for p, chunk in zip(params, unit.split(sizes), strict=True):
                p.copy_(chunk.view_as(p))
            columns.append(lin.full_weight().flatten())
    return torch.stack(columns, dim=1)


@given(layouts(2, 2), layouts(2, 2), spatial_sizes)
def test_spatial_linear_parametrisation_is_complete(in_f, out_f, hw) -> None:
    """A Linear on a flattened C×H×W map is the conv with kernel (H, W): the same numerical
    null-space check (tests/nn/test_fields.py, with its negative controls) applies."""
    lin = make(in_f, out_f, hw)
    case = MixedConv(in_f, out_f, hw, 1, (0, 0), 1, 1, False, hw[0], hw[1])
    expansion = expansion_matrix(lin)
    assert expansion.shape[1] == lin.free_parameter_count()
    assert_complete(case, expansion)


@given(layouts(), layouts(), spatial_sizes, st.integers(1, 3))
def test_spatial_linear_is_equivariant_and_exports(in_f, out_f, hw, batch) -> None:
    lin = make(in_f, out_f, hw)
    head = nn.Sequential(nn.Flatten(), lin)
    x = torch.randn(batch, in_f.channels, *hw, dtype=torch.float64)
    assert_flip_equivariant(head, x, in_f, out_f)
    plain = lin.export()
    assert type(plain) is nn.Linear
    torch.testing.assert_close(plain(x.flatten(1)), lin(x.flatten(1)), rtol=0, atol=0)
    again = FlipLinear.from_linear(plain, in_f, out_f, hw)
    torch.testing.assert_close(again.full_weight(), lin.full_weight(), rtol=0, atol=0)
    if in_f.regular or out_f.regular or hw[1] > 1:  # negative control: unconstrained weights
        nn.init.normal_(plain.weight)
        assert flip_equivariance_error(nn.Sequential(nn.Flatten(), plain), x, in_f, out_f) > 1e-4


def test_vector_linear_infers_its_layouts() -> None:
    lin = FlipLinear(6, 4, in_type=Fields(2, 2), out_type="regular", dtype=torch.float64)
    assert lin.in_fields == Fields(2, 2) and lin.out_fields == Fields(0, 2)
    assert_flip_equivariant(lin, torch.randn(3, 6, dtype=torch.float64))
