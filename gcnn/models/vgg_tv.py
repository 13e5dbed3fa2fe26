"""VGG11 in torchvision's layout (ImageNet head), plain and flip-equivariant.

``tv_vgg11`` / ``tv_vgg11_bn`` are :class:`torchvision.models.VGG` instances with torchvision's
module names and init: ``features`` (3×3 convs, optional BatchNorm, ReLU, 2×2 max-pools),
``avgpool`` (adaptive to 7×7), ``classifier`` (the flattened ``C×7×7`` map → ``hidden`` →
``hidden`` → classes, ReLU and Dropout between). With ``width=1`` and ``hidden=4096`` they are
torchvision's ``vgg11`` / ``vgg11_bn`` and torchvision checkpoints load unchanged.

The flip builders give the same modules with flip layers: the stem conv trivial→regular, every
other conv regular→regular, pair-shared BatchNorms, and a :class:`~gcnn.nn.FlipLinear` head —
the spatial Linear on the flattened 7×7 map (columns mirrored along the width, pairs swapped),
a regular→regular hidden Linear and a regular→trivial last Linear (invariant logits). Exact at
widths divisible by 32 (224 included). ``export()`` is a ``torchvision.models.VGG``; in train
mode the logits are invariant only without dropout (its random mask is not mirror-symmetric).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import VGG as TorchvisionVGG

from gcnn.models.flipify import FlipModelMixin, flipify
from gcnn.models.vgg import VGG11_CFG, _even_width
from gcnn.nn import Fields


class FlipTorchvisionVGG(FlipModelMixin, TorchvisionVGG):
    """A :class:`torchvision.models.VGG` built from flip layers; ``export()`` is the plain one."""


def _features(in_channels: int, width: float, batch_norm: bool) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG11_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = _even_width(int(item), width)
        layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*layers), channels


def _classifier(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    head = nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(True),
        nn.Dropout(p=dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(True),
        nn.Dropout(p=dropout),
        nn.Linear(hidden, num_classes),
    )
    for m in head:
        if isinstance(m, nn.Linear):  # torchvision's VGG init
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)
    return head


def _build(
    num_classes: int, in_channels: int, width: float, hidden: int, dropout: float, batch_norm: bool
) -> TorchvisionVGG:
    if num_classes < 1 or in_channels < 1 or width <= 0 or hidden < 2 or hidden % 2:
        raise ValueError(
            "need num_classes ≥ 1, in_channels ≥ 1, width > 0 and an even hidden ≥ 2; got "
            f"{num_classes}, {in_channels}, {width}, {hidden}"
        )
    features, channels = _features(in_channels, width, batch_norm)
    # torchvision's VGG.__init__ always builds the 25088 × 4096 Linear: set the modules directly
    model = TorchvisionVGG.__new__(TorchvisionVGG)
    nn.Module.__init__(model)
    model.features = features
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    model.classifier = _classifier(channels * 7 * 7, hidden, num_classes, dropout)
    for m in features.modules():  # torchvision's VGG init
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return model


def tv_vgg11(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    width: float = 1.0,
    hidden: int = 4096,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> TorchvisionVGG:
    """torchvision's VGG11 (random init); ``width`` scales the convs, ``hidden`` the head."""
    return _build(num_classes, in_channels, width, hidden, dropout, batch_norm)


def tv_vgg11_bn(**kwargs: object) -> TorchvisionVGG:
    """torchvision's VGG11 with BatchNorm (``vgg11_bn``); arguments as :func:`tv_vgg11`."""
    return tv_vgg11(batch_norm=True, **kwargs)  # type: ignore[arg-type]


def tv_vgg11_flip(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    width: float = 1.0,
    hidden: int = 4096,
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> FlipTorchvisionVGG:
    """Flip-equivariant :func:`tv_vgg11` (same arguments, modules, names and shapes)."""
    model = _build(num_classes, in_channels, width, hidden, dropout, batch_norm)
    layouts: dict[str, tuple[Fields, Fields]] = {}
    stem = True
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            in_f = Fields.of("trivial" if stem else "regular", m.in_channels)
            layouts[name] = (in_f, Fields.of("regular", m.out_channels))
            stem = False
        elif isinstance(m, nn.BatchNorm2d):
            layouts[name] = (Fields.of("regular", m.num_features),) * 2
    channels = model.classifier[0].in_features // 49
    layouts["classifier.0"] = (Fields.of("regular", channels), Fields.of("regular", hidden))
    layouts["classifier.3"] = (Fields.of("regular", hidden), Fields.of("regular", hidden))
    layouts["classifier.6"] = (Fields.of("regular", hidden), Fields(trivial=num_classes))
    return flipify(model, FlipTorchvisionVGG, layouts=layouts, spatial={"classifier.0": (7, 7)})


def tv_vgg11_bn_flip(**kwargs: object) -> FlipTorchvisionVGG:
    """Flip-equivariant :func:`tv_vgg11_bn`; arguments as :func:`tv_vgg11`."""
    return tv_vgg11_flip(batch_norm=True, **kwargs)  # type: ignore[arg-type]
