"""The model registry: builders, and the families that say which models belong together.

* ``register_model(name, builder, variant=, kind=)``, ``list_models()``,
  ``create_model(name, **kwargs)``, ``get_builder(name)``.
* A **family** (:class:`ModelFamily`, e.g. ``"vgg"``) records its model classes per *kind*:
  ``"plain"`` (a CNN), ``"flip"`` (hand-written GCNN) and ``"escnn"`` (escnn-built GCNN), and
  the name of the conv that reads the image. A registered model belongs to a *variant*
  (e.g. ``"vgg11"``: ``vgg11``, ``vgg11_flip``, ``vgg11_flip_escnn``) of one kind.
* Every "is this a flip model / what is its plain / flip / escnn twin" question is answered
  here (:func:`is_flip_arch`, :func:`twin_name`, :func:`class_twin`, :func:`family_of_class`),
  never by testing names or classes elsewhere.

Builders and classes may be given as ``"module:attr"`` strings, imported on first use (the
escnn backend is optional).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from gcnn.checkpoint import load_weights

Builder = Callable[..., nn.Module]
Kind = Literal["plain", "flip", "escnn"]
KINDS: tuple[Kind, ...] = ("plain", "flip", "escnn")
FLIP_KINDS: tuple[Kind, ...] = ("flip", "escnn")

_REGISTRY: dict[str, Builder | str] = {}


@dataclass(frozen=True)
class ModelEntry:
    """Metadata of one registered model."""

    name: str
    variant: str  # models of one variant are the same architecture in different kinds
    kind: Kind
    family: str | None = None


@dataclass(frozen=True)
class ModelFamily:
    """One architecture family: its model class per kind and the conv that reads the image.

    ``classes`` maps each kind to a class or a ``"module:attr"`` string; ``stem`` is the name of
    the conv whose input is the (trivial) image (``None``: the first conv in module order).
    """

    name: str
    classes: Mapping[Kind, type[nn.Module] | str] = field(default_factory=dict)
    stem: str | None = None

    def model_class(self, kind: Kind) -> type[nn.Module] | None:
        """The family's class of ``kind`` (imported when given as a string), or ``None``."""
        cls = self.classes.get(kind)
        return _resolve(cls) if isinstance(cls, str) else cls


_ENTRIES: dict[str, ModelEntry] = {}
_FAMILIES: dict[str, ModelFamily] = {}


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def with_weights(builder: Builder) -> Builder:
    """Give ``builder`` a ``weights=`` keyword: a checkpoint path loaded after building."""

    @functools.wraps(builder)
    def build(*, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
        model = builder(**kwargs)
        return model if weights is None else load_weights(model, weights)

    return build


def register_family(family: ModelFamily) -> ModelFamily:
    """Register ``family`` (its name must be new); returns it."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    unknown = set(family.classes) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; kinds are {KINDS}")
    _FAMILIES[family.name] = family
    return family


def register_model(
    name: str,
    builder: Builder | str,
    *,
    variant: str | None = None,
    kind: Kind = "plain",
    family: str | None = None,
) -> None:
    """Register ``builder`` under ``name``; a ``"module:function"`` string is imported lazily.

    ``variant`` (default: ``name``) groups the plain, flip and escnn builds of one
    architecture; ``kind`` says which this is; ``family`` names its :class:`ModelFamily`.
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if family is not None and family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; register it first")
    _REGISTRY[name] = builder
    _ENTRIES[name] = ModelEntry(name, variant or name, kind, family)


def list_models() -> list[str]:
    """The names :func:`create_model` accepts, sorted."""
    return sorted(_REGISTRY)


def get_builder(name: str) -> Builder:
    """The builder registered as ``name`` (raises ``ValueError`` listing the known names)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    builder = _REGISTRY[name]
    return _resolve(builder) if isinstance(builder, str) else builder


def create_model(name: str, *, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``weights`` is a checkpoint path to load."""
    model = get_builder(name)(**kwargs)
    return model if weights is None else load_weights(model, weights)


def model_entry(name: str) -> ModelEntry | None:
    """The metadata of the registered model ``name`` (``None`` for an unknown name, or one
    added to the registry without :func:`register_model`)."""
    return _ENTRIES.get(name)


def is_flip_arch(name: str) -> bool:
    """Whether the registered model ``name`` is a flip GCNN (hand-written or escnn)."""
    entry = model_entry(name)
    return entry is not None and entry.kind in FLIP_KINDS


def twin_name(name: str, kind: Kind) -> str | None:
    """The registered model of ``name``'s variant with ``kind`` (e.g. ``twin_name("vgg11",
    "flip") == "vgg11_flip"``), or ``None``."""
    entry = model_entry(name)
    if entry is None:
        return None
    return next(
        (e.name for e in _ENTRIES.values() if e.variant == entry.variant and e.kind == kind), None
    )


def model_families() -> list[ModelFamily]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())


def model_family(name: str) -> ModelFamily | None:
    """The registered family called ``name``, or ``None``."""
    return _FAMILIES.get(name)


def family_of_class(cls: type[nn.Module]) -> tuple[ModelFamily, Kind] | None:
    """The family and kind whose class is ``cls`` exactly (not a subclass), or ``None``.

    Classes given as strings are only imported when their module already is (an unloaded
    module cannot have built ``cls``)."""
    import sys

    for family in _FAMILIES.values():
        for kind, target in family.classes.items():
            if isinstance(target, str):
                module = target.partition(":")[0]
                if module not in sys.modules:
                    continue
                target = _resolve(target)
            if target is cls:
                return family, kind
    return None


def class_twin(cls: type[nn.Module], kind: Kind) -> type[nn.Module] | None:
    """The class of ``kind`` in the family of ``cls`` (e.g. ``FlipVGG`` → ``VGG`` for
    ``"plain"``), or ``None`` when ``cls`` belongs to no family or the family has no such kind."""
    found = family_of_class(cls)
    return None if found is None else found[0].model_class(kind)
