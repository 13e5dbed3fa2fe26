"""ResNet50: torchvision's, and the same architecture with flip layers."""

from __future__ import annotations

from typing import Any

from torchvision.models import ResNet
from torchvision.models import resnet50 as _tv_resnet50

from gcnn.models.flipify import FlipModelMixin, flipify


class FlipResNet(FlipModelMixin, ResNet):
    """A torchvision :class:`~torchvision.models.ResNet` built from flip layers.

    ``export()`` returns a plain ``torchvision.models.ResNet`` with identical outputs.
    """


def resnet50(*, num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """torchvision's ResNet50 (random init); torchvision checkpoints load unchanged.

    ``kwargs`` go to :func:`torchvision.models.resnet50` (e.g. ``zero_init_residual``).
    """
    return _tv_resnet50(weights=None, num_classes=num_classes, **kwargs)


def resnet50_flip(*, num_classes: int = 1000, **kwargs: Any) -> FlipResNet:
    """Flip-equivariant ResNet50, a drop-in for :func:`resnet50` with the same arguments.

    Every conv is a :class:`~gcnn.nn.FlipConv2d` (``conv1`` trivial→regular), every BatchNorm
    shares statistics in pairs, and ``fc`` is an :class:`~gcnn.nn.InvariantLinear`. Exact at
    widths ``32k + 1`` (33, 65, …, 225); *not* at 224, where ``conv1`` (7×7/2, p3) and the
    max-pool (3×3/2, p1) see even widths — the model warns once at such sizes.
    """
    return flipify(resnet50(num_classes=num_classes, **kwargs), FlipResNet, stem="conv1")
