"""The learning-rate schedule and seed lists."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gcnn.train import lr_factor, parse_seeds


@given(st.integers(2, 500), st.floats(0, 0.5))
def test_warmup_then_linear_decay(total: int, frac: float) -> None:
    warm = round(frac * total)
    f = [lr_factor(s, total, warm) for s in range(total)]
    assert all(0 < v <= 1 for v in f)
    assert max(f) == pytest.approx(1.0)
    peak = f.index(max(f))
    assert peak == max(warm - 1, 0) or (warm == 0 and peak == 0)
    assert all(a <= b for a, b in zip(f[:peak], f[1 : peak + 1], strict=True))  # rising
    assert all(a >= b for a, b in zip(f[peak:], f[peak + 1 :], strict=False))  # falling
    assert f[-1] == pytest.approx(1 / (total - warm))  # one step from zero
    if total - warm > 2:  # linear: constant decrement after the warm-up
        steps = [f[i] - f[i + 1] for i in range(max(warm, 0), total - 1)]
        assert max(steps) - min(steps) < 1e-9


@given(st.lists(st.integers(0, 50), min_size=1, max_size=5, unique=True))
def test_seed_lists_round_trip(seeds: list[int]) -> None:
    assert parse_seeds(",".join(map(str, seeds))) == seeds
    assert parse_seeds(f"{min(seeds)}-{max(seeds)}") == list(range(min(seeds), max(seeds) + 1))


@pytest.mark.parametrize("bad", ["3-1", "", "a", "1,1", "-2", "0-3,2"])
def test_bad_seed_lists_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_seeds(bad)
