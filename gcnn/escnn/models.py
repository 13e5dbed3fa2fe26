"""VGG11 and ResNet50 GCNNs built from escnn layers: drop-ins for the hand-written flip models.

The escnn models are the hand-written ones (:func:`gcnn.vgg11_flip`, :func:`gcnn.resnet50_flip`)
with every layer replaced by its escnn twin (:func:`~gcnn.escnn.flip_to_escnn`): same arguments,
module names, channel counts and pair layout; ``(B, C, H, W)`` tensors in, ``(B, classes)``
logits out. The escnn layers are built with ``initialize=False`` and take the hand-written
model's He-normal init through an exact change of basis, so every filter has the same std as in
the hand-written model (``std = sqrt(2 / fan_out)``, torchvision's ResNet / VGG init), and for
one seed the escnn model and the hand-written model compute the same function.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import ResNet

from gcnn.escnn.convert import escnn_to_flip, flip_to_escnn
from gcnn.models.flipify import FlipModelMixin
from gcnn.models.registry import with_weights
from gcnn.models.resnet import resnet50_flip
from gcnn.models.vgg import VGG, vgg11_flip


class EscnnModelMixin(FlipModelMixin):
    """escnn model: ``export()`` to plain (from the mixin), ``to_flip()`` to hand-written; the
    classes are the registered family's (``gcnn.models``)."""

    def to_flip(self) -> nn.Module:
        """The hand-written flip model (the family's flip class) with identical outputs."""
        return escnn_to_flip(self)  # type: ignore[arg-type]


class EscnnVGG(EscnnModelMixin, VGG):
    """A :class:`~gcnn.models.vgg.VGG` of escnn layers; ``export()`` gives a plain ``VGG``."""


class EscnnResNet(EscnnModelMixin, ResNet):
    """A torchvision ``ResNet`` of escnn layers; ``export()`` gives a torchvision ``ResNet``."""


def _vgg11_flip_escnn(
    *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, batch_norm: bool = True
) -> EscnnVGG:
    """Flip-equivariant VGG11 built from escnn, a drop-in for :func:`gcnn.vgg11_flip`.

    ``features``: escnn ``R2Conv`` (trivial→regular, then regular→regular, 3×3, padding 1),
    ``InnerBatchNorm``, ``ReLU``, ``PointwiseMaxPool2D(2)``; then ``PointwiseAdaptiveAvgPool2D``
    and an invariant 1×1 ``R2Conv`` head (regular→trivial). Logits are invariant to
    ``x.flip(-1)`` at 32×32; ``export()`` loads into :func:`gcnn.vgg11`.
    """
    flip = vgg11_flip(
        num_classes=num_classes, in_channels=in_channels, width=width, batch_norm=batch_norm
    )
    return flip_to_escnn(flip, inplace=True, check=False)  # type: ignore[return-value]


def _resnet50_flip_escnn(*, num_classes: int = 1000, **kwargs: Any) -> EscnnResNet:
    """Flip-equivariant ResNet50 built from escnn, a drop-in for :func:`gcnn.resnet50_flip`.

    ``kwargs`` go to torchvision's ``resnet50`` (``zero_init_residual``, ``width_per_group``,
    ``replace_stride_with_dilation``; not ``groups > 1``). Exact at widths ``32k + 1``
    (33, 65, 225); ``export()`` is a torchvision ``ResNet``.
    """
    flip = resnet50_flip(num_classes=num_classes, **kwargs)
    return flip_to_escnn(flip, inplace=True, check=False)  # type: ignore[return-value]


vgg11_flip_escnn = with_weights(_vgg11_flip_escnn)
resnet50_flip_escnn = with_weights(_resnet50_flip_escnn)
