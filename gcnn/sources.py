"""Where a model comes from: one resolver for ``gcnn check``, ``gcnn exactness`` and Python.

A *model source* is a string:

* a gcnn registry name (``vgg11``, ``resnet50_flip``, … — :func:`gcnn.list_models`);
* a torchvision model name (``resnet50``, ``efficientnet_b0``, …), built with ``weights=None``;
* ``timm:<name>`` (``timm:tf_efficientnet_b0``), built with ``pretrained=False`` (needs the
  optional extra: ``pip install "gcnn[timm]"``);
* ``package.module:callable`` — any importable function or class that returns an
  ``nn.Module`` (``mypkg.nets:build_net``).

Keyword arguments (``--model-kwargs``) go to the builder. Weights are never downloaded: load a
checkpoint with ``weights=`` (a ``.safetensors`` file or a plain torch state dict). Every way
this can fail raises :class:`ModelSourceError` (a ``ValueError``; the CLI's exit-2 usage error)
with a one-line message that names the fix.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gcnn.errors import UsageError

__all__ = [
    "ModelSource",
    "ModelSourceError",
    "build_model",
    "parse_model_kwargs",
    "resolve_model",
]

KINDS = ("gcnn", "torchvision", "timm", "callable")


class ModelSourceError(UsageError):
    """A model source that cannot be resolved or built (one line, names the fix; exit 2)."""


@dataclass
class ModelSource:
    """A resolved model source: its kind, name and builder."""

    spec: str  # the string as given
    kind: str  # one of KINDS
    name: str  # registry / torchvision / timm name, or "module:callable"
    builder: Callable[..., nn.Module] = field(repr=False)

    # keyword names this kind of builder uses for the class count and input channels
    @property
    def class_kwarg(self) -> str:
        return "num_classes"

    @property
    def channels_kwarg(self) -> str | None:
        return {"gcnn": "in_channels", "timm": "in_chans"}.get(self.kind)

    def build(self, **kwargs: Any) -> nn.Module:
        """Call the builder; a bad keyword argument or a non-module result is a one-line error."""
        try:
            model = self.builder(**kwargs)
        except TypeError as err:
            raise ModelSourceError(
                f"model {self.spec!r} does not take the keyword arguments {kwargs}: {err}"
            ) from err
        if not isinstance(model, nn.Module):
            raise ModelSourceError(
                f"model {self.spec!r}: the builder returned {type(model).__name__}, not a "
                "torch.nn.Module"
            )
        return model

    def accepts(self, kwarg: str) -> bool:
        """Whether the builder takes ``kwarg`` (timm and torchvision builders take **kwargs)."""
        if self.kind in ("timm", "torchvision"):
            return True
        try:
            params = inspect.signature(self.builder).parameters
        except (TypeError, ValueError):
            return False
        return kwarg in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise ModelSourceError(
            'timm: models need the optional extra: pip install "gcnn[timm]" (or pip install timm)'
        ) from err
    return timm


def _resolve_timm(spec: str, name: str) -> ModelSource:
    timm = _timm()
    if not name:
        raise ModelSourceError("timm: needs a model name, e.g. timm:resnet50")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = (
            f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
        )
        raise ModelSourceError(f"unknown timm model {name!r}{hint}")

    def build(**kwargs: Any) -> nn.Module:
        return timm.create_model(name, pretrained=False, **kwargs)

    return ModelSource(spec, "timm", name, build)


def _resolve_callable(spec: str) -> ModelSource:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelSourceError(f"model {spec!r}: write package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelSourceError(
            f"model {spec!r}: cannot import {module_name!r} ({err}); is it installed or on "
            "PYTHONPATH?"
        ) from err
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelSourceError(f"model {spec!r}: {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelSourceError(f"model {spec!r}: {attr} is a {type(target).__name__}, not callable")
    return ModelSource(spec, "callable", spec, target)


def resolve_model(spec: str) -> ModelSource:
    """The :class:`ModelSource` for ``spec`` (see the module docstring for the four forms)."""
    import torchvision

    from gcnn.models import get_builder, list_models

    spec = spec.strip()
    if spec.startswith("timm:"):
        return _resolve_timm(spec, spec.removeprefix("timm:"))
    if ":" in spec:
        return _resolve_callable(spec)
    if spec in list_models():
        return ModelSource(spec, "gcnn", spec, get_builder(spec))
    if spec in torchvision.models.list_models():

        def build(**kwargs: Any) -> nn.Module:
            return torchvision.models.get_model(spec, weights=None, **kwargs)

        return ModelSource(spec, "torchvision", spec, build)
    names = [*list_models(), *torchvision.models.list_models()]
    close = difflib.get_close_matches(spec, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelSourceError(
        f"unknown --arch (model) {spec!r}: use a gcnn name ({', '.join(list_models())}), a "
        f"torchvision name, timm:<name>, or package.module:callable.{hint}"
    )


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """``--model-kwargs``: a JSON object (``'{"width": 0.25}'``)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelSourceError(f"--model-kwargs is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise ModelSourceError(
            f"--model-kwargs must be a JSON object like '{{\"num_classes\": 10}}', got {text!r}"
        )
    return value


def read_sidecar(weights: str | Path | None) -> dict[str, Any]:
    """The ``gcnn train`` sidecar next to a checkpoint (``<name>.json`` or ``model.json``)."""
    if weights is None:
        return {}
    for path in (Path(weights).with_suffix(".json"), Path(weights).with_name("model.json")):
        if path.is_file():
            try:
                value = json.loads(path.read_text())
            except json.JSONDecodeError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def infer_kwargs(
    source: ModelSource, state: Mapping[str, torch.Tensor], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The class count and input channels read off a checkpoint, as builder keyword arguments.

    The default model's last Linear (or last conv, for conv-headed nets) and first conv are
    compared with the checkpoint's tensors of the same keys; only differing values are returned.
    """
    model = source.build(**kwargs)
    out: dict[str, Any] = {}
    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if heads and f"{heads[-1]}.weight" in state and source.accepts(source.class_kwarg):
        classes = int(state[f"{heads[-1]}.weight"].shape[0])
        if classes != model.get_submodule(heads[-1]).weight.shape[0]:
            out[source.class_kwarg] = classes
    channels_kwarg = source.channels_kwarg
    if (
        convs
        and f"{convs[0]}.weight" in state
        and channels_kwarg
        and source.accepts(channels_kwarg)
    ):
        conv = model.get_submodule(convs[0])
        channels = int(state[f"{convs[0]}.weight"].shape[1]) * conv.groups
        if channels != conv.in_channels:
            out[channels_kwarg] = channels
    return {k: v for k, v in out.items() if k not in kwargs}


def build_model(
    spec: str | None,
    weights: str | Path | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    export: bool = True,
) -> tuple[nn.Module, ModelSource]:
    """Build the model of ``spec``, load ``weights``, return ``(model in eval mode, source)``.

    ``spec`` may be ``None`` when a ``gcnn train`` sidecar (``model.json``) sits next to
    ``weights`` (or ``weights`` is a run folder holding both): its architecture and keyword
    arguments are used. Without a sidecar the class
    count and input channels are read off the checkpoint. gcnn flip models are ``export()``-ed
    to plain torch when ``export`` (the analysis runs on plain weights).
    """
    from gcnn.checkpoint import load_weights, read_state_dict

    kwargs = dict(kwargs or {})
    if weights is not None and (Path(weights) / "model.safetensors").is_file():
        weights = Path(weights) / "model.safetensors"  # a gcnn train run folder
    sidecar = read_sidecar(weights)
    spec = spec or sidecar.get("arch")
    if spec is None:
        raise ModelSourceError(
            "a model is required (--arch NAME, timm:NAME or module:callable): no model.json "
            "sidecar next to the weights"
        )
    source = resolve_model(spec)
    if sidecar.get("arch") == spec:
        kwargs = {**sidecar.get("arch_kwargs", {}), **kwargs}
    elif weights is not None:
        kwargs = {**kwargs, **infer_kwargs(source, read_state_dict(weights), kwargs)}
    model = source.build(**kwargs)
    if weights is not None:
        load_weights(model, weights)
    to_plain = getattr(model, "export", None)
    if export and callable(to_plain):
        model = to_plain()
    return model.eval(), source
