"""Model builders (plain and flip VGG11 and ResNet50) and the registry."""

from torchvision.models import VGG as TorchvisionVGG
from torchvision.models import ResNet

from gcnn.models import resnet as _resnet
from gcnn.models import vgg as _vgg
from gcnn.models import vgg_tv as _vgg_tv
from gcnn.models.registry import (
    ModelFamily,
    class_twin,
    create_model,
    family_of_class,
    get_builder,
    is_flip_arch,
    list_models,
    model_entry,
    register_family,
    register_model,
    twin_name,
    with_weights,
)
from gcnn.models.resnet import FlipResNet
from gcnn.models.vgg import VGG, FlipVGG
from gcnn.models.vgg_tv import FlipTorchvisionVGG

vgg11 = with_weights(_vgg.vgg11)
vgg11_flip = with_weights(_vgg.vgg11_flip)
resnet50 = with_weights(_resnet.resnet50)
resnet50_flip = with_weights(_resnet.resnet50_flip)

# escnn classes and builders (optional extra) are imported only when used.
register_family(
    ModelFamily("vgg", {"plain": VGG, "flip": FlipVGG, "escnn": "gcnn.escnn.models:EscnnVGG"})
)
register_family(
    ModelFamily(
        "resnet",
        {"plain": ResNet, "flip": FlipResNet, "escnn": "gcnn.escnn.models:EscnnResNet"},
        stem="conv1",
    )
)
register_family(ModelFamily("tv_vgg", {"plain": TorchvisionVGG, "flip": FlipTorchvisionVGG}))
for _variant in ("tv_vgg11", "tv_vgg11_bn"):
    for _kind, _name in (("plain", _variant), ("flip", f"{_variant}_flip")):
        _builder = with_weights(getattr(_vgg_tv, _name))
        register_model(_name, _builder, variant=_variant, kind=_kind, family="tv_vgg")
for _variant, _family, _builders in [
    ("vgg11", "vgg", {"plain": vgg11, "flip": vgg11_flip}),
    ("resnet50", "resnet", {"plain": resnet50, "flip": resnet50_flip}),
]:
    _builders["escnn"] = f"gcnn.escnn:{_variant}_flip_escnn"
    for _kind, _builder in _builders.items():
        _name = {"plain": _variant, "flip": f"{_variant}_flip"}.get(_kind, f"{_variant}_flip_escnn")
        register_model(_name, _builder, variant=_variant, kind=_kind, family=_family)

__all__ = [
    "VGG",
    "FlipResNet",
    "FlipTorchvisionVGG",
    "FlipVGG",
    "ModelFamily",
    "class_twin",
    "create_model",
    "family_of_class",
    "get_builder",
    "is_flip_arch",
    "list_models",
    "model_entry",
    "register_family",
    "register_model",
    "twin_name",
    "resnet50",
    "resnet50_flip",
    "vgg11",
    "vgg11_flip",
    "with_weights",
]
