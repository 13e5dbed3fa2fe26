"""Interpolation, BN reset, evaluation and barrier formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gcnn.analysis.merge import (
    Evaluation,
    barrier,
    evaluate,
    interpolate,
    interpolate_state,
    reset_batchnorm,
)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(6, 4),
    ).double()  # fmt: skip


def test_interpolation_endpoints_and_midpoint() -> None:
    a, b = _net(0), _net(1)
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(interpolate(a, b, 0.0)(x), a.eval()(x))
        torch.testing.assert_close(interpolate(a, b, 1.0)(x), b.eval()(x))
    mid = interpolate_state(a.state_dict(), b.state_dict(), 0.5)
    torch.testing.assert_close(mid["0.weight"], (a[0].weight + b[0].weight) / 2)
    assert mid["1.num_batches_tracked"] is not b.state_dict()["1.num_batches_tracked"]
    with pytest.raises(ValueError, match="different keys"):
        interpolate_state(a.state_dict(), nn.Linear(2, 2).state_dict(), 0.5)


def test_bn_reset_gives_the_data_statistics() -> None:
    net = _net(0)
    batches = [(torch.randn(10, 3, 8, 8, dtype=torch.float64) * 2 + 1, None) for _ in range(3)]
    reset_batchnorm(net, batches)
    assert not net.training
    with torch.no_grad():
        pre = [net[0](x) for x, _ in batches]
    # momentum=None: the cumulative average of the per-batch (unbiased) statistics
    torch.testing.assert_close(net[1].running_mean, torch.cat(pre).mean(dim=(0, 2, 3)))
    per_batch_var = torch.stack([p.var(dim=(0, 2, 3), unbiased=True) for p in pre])
    torch.testing.assert_close(net[1].running_var, per_batch_var.mean(0))
    assert net[1].momentum == 0.1  # restored


def test_evaluate_and_barriers() -> None:
    net = _net(0).eval()
    x = torch.randn(12, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    result = evaluate(net, [(x[:6], y[:6]), (x[6:], y[6:])])
    assert result.accuracy == 100.0 and result.images == 12 and result.loss > 0
    assert evaluate(net, [(x, None)]).accuracy is None
    curve = [Evaluation(1.0, 90.0, 1), Evaluation(3.0, 40.0, 1), Evaluation(2.0, 80.0, 1)]
    b = barrier([0.0, 0.5, 1.0], curve)
    assert b.loss == pytest.approx(3.0 - 1.5) and b.accuracy == pytest.approx(85.0 - 40.0)
    with pytest.raises(ValueError, match="must contain 0.5"):
        barrier([0.0, 0.25, 1.0], curve)
