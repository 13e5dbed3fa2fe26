"""CIFAR-style VGG11, plain and flip-equivariant.

Both take ``(B, in_channels, 32, 32)`` images (any size ≥ 32 works: a global average pool sits
before the classifier; 1×1 at 32) and return ``(B, num_classes)`` logits. The flip model has the
same modules, names and channel counts; its convs and BatchNorms are the flip layers of
:mod:`gcnn.nn`, so ``vgg11_flip(**kw).export()`` loads into ``vgg11(**kw)``.
"""

from __future__ import annotations

from torch import Tensor, nn

from gcnn.models.flipify import FlipModelMixin, flipify

VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _even_width(channels: int, width: float) -> int:
    """Scale ``channels`` by ``width`` and round to an even count ≥ 2 (pairs must fit)."""
    return max(2, 2 * round(channels * width / 2))


class VGG(nn.Module):
    """VGG: ``features`` (conv-BN-ReLU blocks and 2×2 max-pools) → global average → ``classifier``.

    State-dict names: ``features.{i}.weight`` etc., ``classifier.weight``, ``classifier.bias``.
    """

    def __init__(self, features: nn.Sequential, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class FlipVGG(FlipModelMixin, VGG):
    """A :class:`VGG` built from flip layers; ``export()`` gives a plain :class:`VGG`."""


def _make_features(
    cfg: tuple[int | str, ...], in_channels: int, width: float, batch_norm: bool
) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = _even_width(int(item), width)
        layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*layers), channels


def _init_vgg(model: VGG) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _build_vgg11(num_classes: int, in_channels: int, width: float, batch_norm: bool) -> VGG:
    if num_classes < 1 or in_channels < 1 or width <= 0:
        raise ValueError(
            f"need num_classes ≥ 1, in_channels ≥ 1, width > 0; got {num_classes}, "
            f"{in_channels}, {width}"
        )
    features, channels = _make_features(VGG11_CFG, in_channels, width, batch_norm)
    model = VGG(features, channels, num_classes)
    _init_vgg(model)
    return model


def vgg11(
    *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, batch_norm: bool = True
) -> VGG:
    """Plain CIFAR VGG11 (cfg 64,M,128,M,256,256,M,512,512,M,512,512,M; Linear head).

    ``width`` scales every conv's channels (rounded to even counts, as in :func:`vgg11_flip`).
    Without ``batch_norm`` the convs carry biases (REPAIR's VGG11).
    """
    return _build_vgg11(num_classes, in_channels, width, batch_norm)


def vgg11_flip(
    *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, batch_norm: bool = True
) -> FlipVGG:
    """Flip-equivariant VGG11, a drop-in for :func:`vgg11` with the same arguments.

    Hidden layers are regular fields (interleaved channel pairs); the classifier is an
    :class:`~gcnn.nn.InvariantLinear`, so the logits are invariant:
    ``model(x.flip(-1)) == model(x)`` exactly at 32×32 (and any width whose max-pools all see
    even widths). ``export()`` returns a plain :class:`VGG` that loads into ``vgg11``.
    """
    return flipify(_build_vgg11(num_classes, in_channels, width, batch_norm), FlipVGG)
