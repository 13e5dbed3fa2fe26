"""Export a model built from flip layers to plain torch modules."""

from __future__ import annotations

import copy

from torch import nn

from gcnn.nn.module import FlipHook, FlipModule


def export_modules(module: nn.Module) -> nn.Module:
    """A copy of ``module`` where every :class:`FlipModule` below the root is exported.

    The copy keeps the class of ``module`` and of every container; the caller's module and its
    train/eval mode are left untouched. Forward hooks and pre-hooks that flip models use to
    warn about inexact input sizes (instances of :class:`FlipHook`) are dropped: plain models
    do not warn.
    """
    out = copy.deepcopy(module)
    _export_children(out)
    _drop_flip_hooks(out)
    return out


def _export_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, FlipModule):
            setattr(module, name, child.export())
        else:
            _export_children(child)


def _drop_flip_hooks(module: nn.Module) -> None:
    for sub in module.modules():
        for hooks in (sub._forward_pre_hooks, sub._forward_hooks):
            for key in [k for k, h in hooks.items() if isinstance(h, FlipHook)]:
                del hooks[key]
