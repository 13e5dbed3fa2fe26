"""The model registry: ``list_models()``, ``create_model(name, **kwargs)``, ``register_model``."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from gcnn.checkpoint import load_weights

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder | str] = {}


def with_weights(builder: Builder) -> Builder:
    """Give ``builder`` a ``weights=`` keyword: a checkpoint path loaded after building."""

    @functools.wraps(builder)
    def build(*, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
        model = builder(**kwargs)
        return model if weights is None else load_weights(model, weights)

    return build


def register_model(name: str, builder: Builder | str) -> None:
    """Register ``builder`` under ``name``; a ``"module:function"`` string is imported lazily."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = builder


def list_models() -> list[str]:
    """The names :func:`create_model` accepts, sorted."""
    return sorted(_REGISTRY)


def get_builder(name: str) -> Builder:
    """The builder registered as ``name`` (raises ``ValueError`` listing the known names)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    builder = _REGISTRY[name]
    if isinstance(builder, str):
        module, _, attr = builder.partition(":")
        builder = getattr(importlib.import_module(module), attr)
    return builder


def create_model(name: str, *, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``weights`` is a checkpoint path to load."""
    model = get_builder(name)(**kwargs)
    return model if weights is None else load_weights(model, weights)
