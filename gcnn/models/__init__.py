"""Model builders (plain and flip VGG11 and ResNet50) and the registry."""

from gcnn.models import resnet as _resnet
from gcnn.models import vgg as _vgg
from gcnn.models.registry import (
    create_model,
    get_builder,
    list_models,
    register_model,
    with_weights,
)
from gcnn.models.resnet import FlipResNet
from gcnn.models.vgg import VGG, FlipVGG

vgg11 = with_weights(_vgg.vgg11)
vgg11_flip = with_weights(_vgg.vgg11_flip)
resnet50 = with_weights(_resnet.resnet50)
resnet50_flip = with_weights(_resnet.resnet50_flip)

for _name, _builder in {
    "vgg11": vgg11,
    "vgg11_flip": vgg11_flip,
    "resnet50": resnet50,
    "resnet50_flip": resnet50_flip,
}.items():
    register_model(_name, _builder)

# escnn backend (optional extra): imported only when one of these is created.
register_model("vgg11_flip_escnn", "gcnn.escnn:vgg11_flip_escnn")
register_model("resnet50_flip_escnn", "gcnn.escnn:resnet50_flip_escnn")

__all__ = [
    "VGG",
    "FlipResNet",
    "FlipVGG",
    "create_model",
    "get_builder",
    "list_models",
    "register_model",
    "resnet50",
    "resnet50_flip",
    "vgg11",
    "vgg11_flip",
    "with_weights",
]
