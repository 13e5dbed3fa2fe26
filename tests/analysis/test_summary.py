"""``gcnn.analysis.summary``: estimates and the paired flip-vs-two-net differences."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy import stats

from gcnn.analysis.summary import Estimate, Report, paired_rows


def _report(
    kind: str, a: str, barriers: dict[str, float], b: str | None = None, width: float = 0.25
) -> Report:
    data = {
        "kind": kind,
        "barrier": {"by_method": {m: {"accuracy": v} for m, v in barriers.items()}},
        "model_source": {"weights": a},
        "layers": [],
    }
    if b is not None:
        data["partner_source"] = {"weights": b}
    return Report(Path(a), kind, "cnn", width, data)


def test_estimate_is_the_student_t_interval() -> None:
    values = [1.0, 2.0, 4.0]
    e = Estimate.of(values)
    sd = math.sqrt(sum((v - 7 / 3) ** 2 for v in values) / 2)
    assert e.mean == pytest.approx(7 / 3)
    assert e.half_width == pytest.approx(stats.t.ppf(0.975, 2) * sd / math.sqrt(3))
    assert Estimate.of([5.0]).half_width is None and Estimate.of([]) is None


def test_paired_difference_subtracts_the_mean_flip_barrier_of_the_same_two_nets() -> None:
    reports = [
        _report("flip", "a", {"bn_reset": 2.0, "repair": 1.0}),
        _report("flip", "b", {"bn_reset": 4.0, "repair": 3.0}),
        _report("flip", "c", {"bn_reset": 6.0, "repair": 1.0}),
        _report("flip", "d", {"bn_reset": 8.0, "repair": 1.0}),
        _report("compare", "a", {"bn_reset": 5.0, "repair": 1.0}, b="b"),  # Δ = 2, −1
        _report("compare", "c", {"bn_reset": 7.5, "repair": 2.0}, b="d"),  # Δ = 0.5, 1
        _report("compare", "a", {"bn_reset": 100.0}, b="unchecked"),  # no flip check: skipped
    ]
    rows = {r["method"]: r for r in paired_rows(reports)}
    assert list(rows) == ["bn_reset", "repair"]  # METHOD_ORDER
    bn = rows["bn_reset"]
    assert bn["pairs"] == 2 and bn["compare_larger"] == 2
    assert bn["two_net_minus_flip"] == Estimate.of([2.0, 0.5])
    assert rows["repair"]["two_net_minus_flip"].mean == pytest.approx(0.0)
    assert rows["repair"]["compare_larger"] == 1
    assert all(r["width"] == 0.25 for r in paired_rows(reports))  # one width: nothing pooled


def test_pairs_of_several_widths_are_also_pooled_per_regime_and_method() -> None:
    reports = [
        _report("flip", "a", {"bn_reset": 2.0}),
        _report("flip", "b", {"bn_reset": 4.0}),
        _report("compare", "a", {"bn_reset": 5.0}, b="b"),  # Δ = 2 at width 0.25
        _report("flip", "c", {"bn_reset": 6.0}, width=0.5),
        _report("flip", "d", {"bn_reset": 8.0}, width=0.5),
        _report("compare", "c", {"bn_reset": 6.0}, b="d", width=0.5),  # Δ = −1 at width 0.5
        _report("flip", "e", {"bn_reset": 1.0}, width=0.5),
        _report("flip", "f", {"bn_reset": 1.0}, width=0.5),
        _report("compare", "e", {"bn_reset": 4.0}, b="f", width=0.5),  # Δ = 3 at width 0.5
    ]
    rows = paired_rows(reports)
    assert [(r["width"], r["pairs"]) for r in rows] == [(0.25, 1), (0.5, 2), ("all", 3)]
    assert rows[-1]["two_net_minus_flip"] == Estimate.of([2.0, -1.0, 3.0])
    assert rows[-1]["compare_larger"] == 2
