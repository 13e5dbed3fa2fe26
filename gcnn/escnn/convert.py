"""Conversion between escnn-built and hand-written flip models (both directions, exact).

Both walk the module tree of a copy of the model and swap each layer for its counterpart, so the
containers (gcnn's ``VGG``, torchvision's ``ResNet`` and ``Bottleneck``) and every module name
stay the same; the model's class is swapped for its twin in the registered model family
(:func:`gcnn.models.registry.class_twin`).

* hand-written → escnn (:func:`flip_to_escnn`): ``FlipConv2d`` → :class:`EscnnConv2d`,
  ``FlipBatchNorm2d`` → :class:`EscnnBatchNorm2d`, ``InvariantLinear`` →
  :class:`EscnnInvariantLinear`, ``ReLU`` / ``MaxPool2d`` / ``AdaptiveAvgPool2d`` →
  :class:`EscnnPointwise`. Each layer keeps its :class:`~gcnn.nn.Fields` layouts (mixed ones
  too: escnn direct sums of trivial and regular fields), so any flip model converts, e.g. the
  nearest GCNN of a trained CNN (:func:`gcnn.analysis.as_flip_model`). Filters are solved for
  in escnn's complete basis: exact up to float32 round-off (``max_projection_error`` reports
  it).
* escnn → hand-written (:func:`escnn_to_flip`): the free weights are read off the expanded
  filters.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

from torch import nn

from gcnn.escnn.layers import EscnnBatchNorm2d, EscnnConv2d, EscnnInvariantLinear, EscnnPointwise
from gcnn.escnn.sharing import deepcopy_sharing
from gcnn.models.registry import class_twin
from gcnn.nn import FlipBatchNorm2d, FlipConv2d, InvariantLinear

_ESCNN_LAYERS = (EscnnConv2d, EscnnBatchNorm2d, EscnnInvariantLinear, EscnnPointwise)


def _to_escnn(module: nn.Module, check: bool = True) -> nn.Module | None:
    if isinstance(module, FlipConv2d):
        return EscnnConv2d.from_flip(module, check=check)
    if isinstance(module, FlipBatchNorm2d):
        return EscnnBatchNorm2d.from_flip(module)
    if isinstance(module, InvariantLinear):
        return EscnnInvariantLinear.from_flip(module, check=check)
    if isinstance(module, nn.ReLU | nn.MaxPool2d | nn.AdaptiveAvgPool2d):
        return EscnnPointwise.from_module(module)
    if isinstance(module, nn.Conv2d | nn.BatchNorm2d | nn.Linear):
        raise TypeError(
            f"{type(module).__name__} is not a flip layer; convert a hand-written flip model "
            "(e.g. gcnn.vgg11_flip()), not a plain one"
        )
    return None


def _to_flip(module: nn.Module) -> nn.Module | None:
    return module.to_flip() if isinstance(module, _ESCNN_LAYERS) else None


def _swap_children(module: nn.Module, convert: Callable[[nn.Module], nn.Module | None]) -> None:
    for name, child in module.named_children():
        new = convert(child)
        if new is None:
            _swap_children(child, convert)
        else:
            setattr(module, name, new)


def flip_to_escnn(model: nn.Module, *, inplace: bool = False, check: bool = True) -> nn.Module:
    """The escnn-built twin of a hand-written flip model: same names, identical outputs.

    ``gcnn.vgg11_flip(...)`` gives an :class:`~gcnn.escnn.EscnnVGG`, ``gcnn.resnet50_flip(...)``
    an :class:`~gcnn.escnn.EscnnResNet`; a single flip layer or any other container is converted
    layer by layer. The caller's model and its train/eval mode are untouched, unless
    ``inplace`` (which converts ``model`` itself, saving a copy). With ``check``, every layer
    records the residual of its change of basis (see :func:`max_projection_error`).
    """
    convert = functools.partial(_to_escnn, check=check)
    converted = convert(model)
    if converted is not None:
        return converted
    out = model if inplace else copy.deepcopy(model)
    _swap_children(out, convert)
    escnn_class = class_twin(type(model), "escnn")
    if escnn_class is not None:
        out.__class__ = escnn_class
    return out


def escnn_to_flip(model: nn.Module) -> nn.Module:
    """The hand-written flip twin of an escnn-built model: same names, identical outputs."""
    if isinstance(model, _ESCNN_LAYERS):
        return model.to_flip()
    out = deepcopy_sharing(model)
    _swap_children(out, _to_flip)
    flip_class = class_twin(type(model), "flip")
    if flip_class is not None:
        out.__class__ = flip_class
    return out


def max_projection_error(model: nn.Module) -> float:
    """Largest absolute filter/bias residual of the hand-written → escnn solves in ``model``."""
    errors = [
        m.projection_error
        for m in model.modules()
        if isinstance(m, EscnnConv2d | EscnnInvariantLinear)
    ]
    return max(errors, default=0.0)
