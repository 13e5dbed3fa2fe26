"""Shared fixtures of the analysis tests: models with non-trivial BatchNorms, real images."""

from __future__ import annotations

import torch
from torch import nn


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics (in place).

    Pair-sharing flip BatchNorms get pair-shared values, so flip models stay flip models.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def batches_of(x: torch.Tensor, y: torch.Tensor | None = None, size: int = 10) -> list:
    """``x`` (and labels ``y``) split into ``(x, y)`` batches."""
    return [
        (x[i : i + size], None if y is None else y[i : i + size]) for i in range(0, len(x), size)
    ]
