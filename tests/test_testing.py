"""The public equivariance assertion catches what it should."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gcnn.nn import Fields, FlipConv2d
from gcnn.testing import TOLERANCES, assert_flip_equivariant, assert_same_outputs, field_types


def test_passes_on_a_flip_conv_and_returns_the_error() -> None:
    conv = FlipConv2d(3, 4, 3, padding=1, in_type="trivial", dtype=torch.float64)
    err = assert_flip_equivariant(
        conv, torch.randn(2, 3, 5, 5, dtype=torch.float64), "trivial", "regular"
    )
    assert 0 <= err <= TOLERANCES[torch.float64]


def test_fails_on_a_plain_conv_with_a_useful_message() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with pytest.raises(AssertionError, match=r"Conv2d is not flip-equivariant \(trivial→regular\)"):
        assert_flip_equivariant(conv, torch.randn(2, 3, 5, 5), "trivial", "regular")


def test_wrong_field_type_is_caught() -> None:
    """A regular→regular conv checked as trivial→trivial fails: the pair swap matters."""
    conv = FlipConv2d(4, 4, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    assert_flip_equivariant(conv, x, "regular", "regular")
    with pytest.raises(AssertionError):
        assert_flip_equivariant(conv, x, "trivial", "trivial")
    with pytest.raises(ValueError, match="in_type|field type"):
        assert_flip_equivariant(conv, x, "vector", "regular")  # type: ignore[arg-type]


def test_assert_same_outputs() -> None:
    a = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    assert assert_same_outputs(a, a, x) == 0
    with pytest.raises(AssertionError, match="outputs differ"):
        assert_same_outputs(a, nn.Linear(3, 2), x)


def test_field_types_are_inferred_from_a_flip_module() -> None:
    """A default FlipConv2d (regular→regular) and a mixed one pass without field types;
    a plain conv (no layouts to infer: trivial) fails the same call."""
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    assert_flip_equivariant(FlipConv2d(4, 6, 3, padding=1, dtype=torch.float64), x)
    mixed = FlipConv2d(4, 5, 3, in_type=Fields(2, 1), out_type=Fields(3, 1), dtype=torch.float64)
    assert field_types(mixed) == (Fields(2, 1), Fields(3, 1))
    assert_flip_equivariant(mixed, x)
    assert field_types(nn.ReLU()) == ("trivial", "trivial")
    with pytest.raises(AssertionError, match="Conv2d is not flip-equivariant"):
        assert_flip_equivariant(nn.Conv2d(4, 6, 3, padding=1).double(), x)


def test_a_failure_hides_the_helpers_frame() -> None:
    with pytest.raises(AssertionError) as excinfo:
        assert_flip_equivariant(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 5, 5))
    everything = [Path(str(e.path)).name for e in excinfo.traceback]
    shown = [Path(str(e.path)).name for e in excinfo.traceback.filter(excinfo)]
    assert "testing.py" in everything  # negative control: the frame exists
    assert "testing.py" not in shown
