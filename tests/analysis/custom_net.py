"""A small user-written CNN in the style of TF ports, loaded as ``tests.analysis.custom_net:build``.

Its convs are ``Conv2d`` subclasses whose ``forward`` pads asymmetrically with ``F.pad`` and
calls ``F.conv2d`` on the module's own parameters (TF "same" padding, computed from the input
size like timm's ``Conv2dSame``), one conv has a static ``ZeroPad2d((0, 1, 0, 1))`` as in
EfficientNet-Lite ports, and its BatchNorms call ``F.batch_norm`` in a ``BatchNorm2d`` subclass
with a fused activation (like timm's ``BatchNormAct2d``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class SameConv2d(nn.Conv2d):
    """TF "same" conv: ``ceil(W / s)`` outputs, the odd padding column on the right/bottom."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(
            reversed(x.shape[-2:]),
            reversed(self.kernel_size),
            reversed(self.stride),
            reversed(self.dilation),
            strict=True,
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StaticPadConv2d(nn.Conv2d):
    """A stride-2 conv after a fixed ``ZeroPad2d((0, 1, 0, 1))`` (TF "same" for even sizes)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            self.static_padding(x), self.weight, self.bias, self.stride, 0, self.dilation
        )


class BatchNormReLU(nn.BatchNorm2d):
    """BatchNorm with a fused ReLU, written with ``F.batch_norm``."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
            0.0 if self.momentum is None else self.momentum, self.eps,
        )  # fmt: skip
        return F.relu(x)


class CustomNet(nn.Module):
    """stem (same, stride 2) → depthwise block with a residual → static-pad stride-2 conv →
    squeeze-excitation gate → global pool → Linear."""

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.stem = SameConv2d(in_channels, w, 3, stride=2, bias=False)
        self.bn0 = BatchNormReLU(w)
        self.dw = SameConv2d(w, w, 3, groups=w, bias=False)
        self.bn1 = BatchNormReLU(w)
        self.pw = SameConv2d(w, w, 1)
        self.down = StaticPadConv2d(w, 2 * w, 3, stride=2, bias=False)
        self.bn2 = BatchNormReLU(2 * w)
        self.se_reduce = nn.Conv2d(2 * w, w, 1)
        self.se_expand = nn.Conv2d(w, 2 * w, 1)
        self.conv = SameConv2d(2 * w, 2 * w, 3, stride=2)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn0(self.stem(x))
        x = x + self.pw(self.bn1(self.dw(x)))
        x = self.bn2(self.down(x))
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = F.relu(self.conv(x * gate))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(num_classes: int = 10, width: int = 8, in_channels: int = 3) -> CustomNet:
    """The builder given to ``gcnn check --arch tests.analysis.custom_net:build``."""
    return CustomNet(num_classes, width, in_channels)
