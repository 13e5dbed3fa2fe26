"""The third-party architectures of issue 10, with random weights, shared by the tests.

Each entry builds a float64 eval-mode model with random BatchNorm statistics and affine
parameters (so no BatchNorm is the identity); models are built once per session.
``ROW_HEIGHT`` is the smallest input height each runs at: exactness along the width does not
depend on the height, so the width tests use that height to stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vgg import VGG, cfgs, make_layers


def tv_vgg11_bn() -> nn.Module:
    """torchvision's VGG11-BN (class and forward) with 64 hidden units instead of 4096."""
    features = make_layers(cfgs["A"], batch_norm=True)
    with torch.device("meta"):
        model = VGG(nn.Sequential(), num_classes=10, init_weights=False)
    model.features = features
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
        nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10),
    )  # fmt: skip
    return model


def _tv(name: str) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None, num_classes=10)


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return build


def _custom() -> nn.Module:
    from tests.analysis.custom_net import build

    return build()


#: name -> (builder, smallest input height it runs at)
ARCHS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "tv_vgg11_bn": (tv_vgg11_bn, 32),
    "tv_resnet18": (_tv("resnet18"), 1),
    "tv_resnet50": (_tv("resnet50"), 1),
    "tv_mobilenet_v3_small": (_tv("mobilenet_v3_small"), 1),
    "tv_efficientnet_b0": (_tv("efficientnet_b0"), 1),
    "tv_densenet121": (_tv("densenet121"), 32),
    "timm_resnet50": (_timm("resnet50"), 1),
    "timm_efficientnet_b0": (_timm("efficientnet_b0"), 1),
    "timm_tf_efficientnet_b0": (_timm("tf_efficientnet_b0"), 1),
    "timm_mobilenetv3_large_100": (_timm("mobilenetv3_large_100"), 1),
    "timm_vgg11_bn": (_timm("vgg11_bn", mlp_ratio=1 / 64), 32),  # 64-wide pre-logits conv
    "custom": (_custom, 8),
}
IMAGENET = [name for name in ARCHS if name != "custom"]


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random affine parameters and running statistics for every BatchNorm; random conv
    biases (torchvision zero-inits them). In place; returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
            elif isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
    return model


@cache
def build(name: str) -> nn.Module:
    """The float64 eval-mode model ``name`` with random weights (built once)."""
    torch.manual_seed(0)
    return randomise_batchnorms(ARCHS[name][0]()).double().eval()
