"""Turn a plain CNN built from convs, BatchNorms and a final Linear into a flip GCNN."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from torch import nn

from gcnn.exactness import warn_on_inexact_sizes
from gcnn.models.registry import class_twin
from gcnn.nn import (
    Fields,
    FieldSpec,
    FlipBatchNorm2d,
    FlipConv2d,
    FlipLinear,
    FlipModule,
    InvariantLinear,
    export_modules,
)

M = TypeVar("M", bound=nn.Module)


class FlipModelMixin(FlipModule):
    """Mixin for flip models (hand-written or escnn) of a registered model family, whose plain
    class (:func:`gcnn.models.registry.class_twin`) has the same modules and names.

    ``in_fields`` / ``out_fields`` are those of the first and the last flip layer that fixes
    them (a trivial image in, invariant logits out).
    """

    def _typed_layers(self) -> list[FlipModule]:
        return [
            m
            for m in self.modules()
            if isinstance(m, FlipModule) and m is not self and m.in_fields is not None
        ]

    @property
    def in_fields(self) -> Fields | None:
        layers = self._typed_layers()
        return layers[0].in_fields if layers else None

    @property
    def out_fields(self) -> Fields | None:
        layers = self._typed_layers()
        return layers[-1].out_fields if layers else None

    def export(self) -> nn.Module:
        """The plain model (the family's plain class) with every flip layer exported: identical
        outputs.

        BatchNorm in train mode is identical on batches closed under the flip (see
        :meth:`gcnn.nn.FlipBatchNorm2d.export`). The caller's model and mode are untouched.
        """
        plain_class = class_twin(type(self), "plain")
        if plain_class is None:
            raise TypeError(f"{type(self).__name__} belongs to no registered model family")
        plain = export_modules(self)
        plain.__class__ = plain_class
        return plain


#: Module name → (input layout, output layout) of a conv, BatchNorm (both the same) or Linear.
Layouts = Mapping[str, tuple[Fields, Fields]]


def flipify(
    model: nn.Module,
    flip_class: type[M],
    stem: str | None = None,
    layouts: Layouts | None = None,
    spatial: Mapping[str, tuple[int, int]] | None = None,
) -> M:
    """Replace, in place, every layer of ``model`` by its flip version; return it as ``flip_class``.

    Without ``layouts``: the first conv in module order (or the one named ``stem``) maps the
    trivial input image to a regular field; every other ``Conv2d`` is regular→regular, every
    ``BatchNorm2d`` shares its statistics in pairs, every ``Linear`` becomes an
    :class:`InvariantLinear` (only valid as the last layer). With ``layouts``, every conv,
    BatchNorm and Linear takes its (mixed) field layouts from it; a Linear becomes an
    :class:`InvariantLinear` when its output is trivial and it reads a vector, else a
    :class:`FlipLinear` (``spatial`` maps the name of a Linear that reads a flattened
    ``C×H×W`` map to ``(H, W)``; the layout then describes its ``C`` channels). Free weights
    are read off the plain layers (exactly, when they are equivariant),
    so the init scale is kept. The result warns once per input size that breaks the exactness
    rule.
    """
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("flipify needs a model with at least one Conv2d")
    stem = convs[0] if stem is None else stem
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Conv2d | nn.BatchNorm2d | nn.Linear):
            continue
        if layouts is not None:
            if name not in layouts:
                raise ValueError(f"no field layouts given for {name!r}")
            in_fields, out_fields = layouts[name]
        elif isinstance(module, nn.Conv2d):
            in_fields, out_fields = ("trivial" if name == stem else "regular"), "regular"
        elif isinstance(module, nn.BatchNorm2d):
            in_fields, out_fields = "regular", "regular"
        else:
            in_fields, out_fields = "regular", "trivial"
        hw = (spatial or {}).get(name, (1, 1))
        _replace(model, name, _flip_layer(module, in_fields, out_fields, hw))
    model.__class__ = flip_class
    return warn_on_inexact_sizes(model)  # type: ignore[return-value]


def _flip_layer(
    module: nn.Module, in_fields: FieldSpec, out_fields: FieldSpec, spatial: tuple[int, int]
) -> FlipModule:
    """The flip version of a conv, BatchNorm or Linear."""
    if isinstance(module, nn.Conv2d):
        return FlipConv2d.from_conv(module, in_type=in_fields, out_type=out_fields)
    if isinstance(module, nn.BatchNorm2d):
        return FlipBatchNorm2d.from_batchnorm(module, fields=out_fields)
    trivial_out = out_fields == "trivial" or (
        isinstance(out_fields, Fields) and out_fields.is_trivial
    )
    if trivial_out and spatial == (1, 1):
        return InvariantLinear.from_linear(module, in_type=in_fields)
    return FlipLinear.from_linear(module, in_fields, out_fields, spatial)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
