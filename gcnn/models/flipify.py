"""Turn a plain CNN built from convs, BatchNorms and a final Linear into a flip GCNN."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from gcnn.exactness import warn_on_inexact_sizes
from gcnn.nn import FlipBatchNorm2d, FlipConv2d, InvariantLinear, export_modules

M = TypeVar("M", bound=nn.Module)


class FlipModelMixin:
    """Mixin for flip models whose plain twin is ``plain_class`` (same modules and names)."""

    plain_class: type[nn.Module]

    def export(self) -> nn.Module:
        """The plain model (``plain_class``) with every flip layer exported: identical outputs.

        BatchNorm in train mode is identical on batches closed under the flip (see
        :meth:`gcnn.nn.FlipBatchNorm2d.export`). The caller's model and mode are untouched.
        """
        plain = export_modules(self)  # type: ignore[arg-type]
        plain.__class__ = self.plain_class
        return plain


def flipify(model: nn.Module, flip_class: type[M], stem: str | None = None) -> M:
    """Replace, in place, every layer of ``model`` by its flip version; return it as ``flip_class``.

    The first conv in module order (or the one named ``stem``) maps the trivial input image to a
    regular field; every other ``Conv2d`` is regular→regular, every ``BatchNorm2d`` shares its
    statistics in pairs, every ``Linear`` becomes an :class:`InvariantLinear` (only valid as the
    last layer). Free weights are taken from the plain layers, so the init scale is kept.
    The result warns once per input size that breaks the exactness rule.
    """
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("flipify needs a model with at least one Conv2d")
    stem = convs[0] if stem is None else stem
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d):
            in_type = "trivial" if name == stem else "regular"
            _replace(model, name, FlipConv2d.from_conv(module, in_type=in_type))
        elif isinstance(module, nn.BatchNorm2d):
            _replace(model, name, FlipBatchNorm2d.from_batchnorm(module))
        elif isinstance(module, nn.Linear):
            _replace(model, name, InvariantLinear.from_linear(module))
    model.__class__ = flip_class
    return warn_on_inexact_sizes(model)  # type: ignore[return-value]


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
