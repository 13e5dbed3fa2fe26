"""``path="tuned"``: the conv times its kernels once per input key and runs the fastest.

The choice logic is tested with injected timings (never with real ones: a unit test must not
depend on the machine's speed); the tuned path's outputs and gradients equal the regular
path's whatever it chose.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings

from gcnn.nn import FlipConv2d, set_conv_path
from gcnn.nn import isotypic_tuning as tuning
from tests.nn.test_isotypic import assert_matches_regular_path, pair_cases


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    tuning.clear_tuned_choices()
    yield
    tuning.clear_tuned_choices()


def _tuned_forward(conv: FlipConv2d, x: torch.Tensor) -> torch.Tensor:
    conv.set_path("tuned")
    return conv(x)


@settings(max_examples=25, deadline=None)
@given(pair_cases())
def test_tuned_path_equals_regular_path_with_gradients(case) -> None:  # noqa: ANN001
    assert_matches_regular_path(case, _tuned_forward)
    assert set(tuning.tuned_choices().values()) <= set(tuning.KERNELS)


def _fake_timings(
    monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float]
) -> list[tuple[str, ...]]:
    """Make :func:`tuning.measure` return ``seconds``; returns the log of its calls."""
    calls: list[tuple[str, ...]] = []

    def measure(candidates, backward):  # noqa: ANN001, ANN202
        calls.append(tuple(candidates))
        return {name: seconds[name] for name in candidates}

    monkeypatch.setattr(tuning, "measure", measure)
    return calls


@pytest.mark.parametrize("fastest", tuning.KERNELS)
def test_the_fastest_measured_kernel_is_chosen_and_cached(
    monkeypatch: pytest.MonkeyPatch, fastest: str
) -> None:
    """Each kernel wins when its timing is lowest (so the choice follows the measurement, not
    a fixed rule); the second forward of the same key measures nothing."""
    calls = _fake_timings(monkeypatch, {k: 0.5 if k == fastest else 1.0 for k in tuning.KERNELS})
    conv = FlipConv2d(16, 16, 3, padding=1, path="tuned")
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    assert conv.kernel_for(x) == fastest
    conv(x).sum().backward()
    assert calls == [tuning.KERNELS]
    assert list(tuning.tuned_choices().values()) == [fastest]
    # Another batch size is another key (measured again); inference is another key too.
    conv(torch.randn(3, 16, 8, 8))
    with torch.no_grad():
        conv(x)
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        ({"regular": 1.0, "kh_x_1": 0.97, "gemm": 1.2}, "regular"),  # 3 % faster: noise
        ({"regular": 1.0, "kh_x_1": 0.90, "gemm": 1.2}, "kh_x_1"),  # 10 % faster: taken
    ],
)
def test_the_auto_rules_pick_stays_within_the_margin(
    monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float], expected: str
) -> None:
    """A small conv (the ``"auto"`` rule picks the regular path) keeps the regular path when
    another kernel is less than :data:`TUNING_MARGIN` faster, and switches when it is more."""
    assert tuning.TUNING_MARGIN == pytest.approx(0.05)
    _fake_timings(monkeypatch, seconds)
    conv = FlipConv2d(16, 16, 3, padding=1, path="tuned")
    assert not conv._auto_isotypic()
    assert conv.kernel_for(torch.randn(2, 16, 8, 8)) == expected


@pytest.mark.parametrize("fastest", tuning.KERNELS)
def test_negative_control_a_plain_filter_is_not_what_any_tuned_kernel_computes(
    monkeypatch: pytest.MonkeyPatch, fastest: str
) -> None:
    """The equality check above can fail: a random plain conv read into free weights is not
    what the tuned conv computes, whichever kernel wins; its equivariant export is."""
    _fake_timings(monkeypatch, {k: 0.5 if k == fastest else 1.0 for k in tuning.KERNELS})
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False).double()
    forced = FlipConv2d.from_conv(plain, "regular", "regular").double()
    forced.set_path("tuned")
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert forced.kernel_for(x) == fastest
        assert (forced(x) - plain(x)).abs().max() > 1e-3
        torch.testing.assert_close(forced(x), forced.export()(x), rtol=1e-11, atol=1e-11)


def test_tuning_leaves_no_gradient_on_the_parameters() -> None:
    """The timed candidates run on detached copies: after a tuned forward (which timed three
    forward + backward passes) the real parameters still have no gradient."""
    conv = FlipConv2d(8, 8, 3, padding=1, bias=True, path="tuned")
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    conv(x)
    assert tuning.tuned_choices()  # timing did happen
    assert conv.weight.grad is None and conv.bias.grad is None and x.grad is None


def test_tuned_runs_the_regular_path_where_no_isotypic_kernel_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trivial → regular conv (a net's first layer) has no eager pair kernel: nothing is
    timed. Negative control: a regular → regular conv beside it is timed."""
    calls = _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 0.1, "gemm": 1.0})
    first = FlipConv2d(3, 8, 3, in_type="trivial", path="tuned")
    assert first.kernel_for(torch.zeros(1, 3, 6, 6)) == "regular"
    assert calls == []
    model = set_conv_path(torch.nn.Sequential(first, FlipConv2d(8, 8, 3)), "tuned")
    model(torch.zeros(1, 3, 8, 8))
    assert len(calls) == 1
