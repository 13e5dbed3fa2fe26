"""export_modules: flip layers exported, containers and modes kept, flip hooks dropped."""

from __future__ import annotations

import torch
from torch import nn

from gcnn.nn import FlipConv2d, FlipHook, FlipModule, export_modules


class Counter(FlipHook):
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1


def test_exports_flip_layers_and_drops_only_flip_hooks() -> None:
    model = nn.Sequential(FlipConv2d(2, 4, 3, in_type="trivial"), nn.ReLU()).train()
    flip_hook, other_hook = Counter(), Counter()
    model.register_forward_pre_hook(flip_hook)
    model.register_forward_pre_hook(lambda m, a: other_hook(m, a))  # not a FlipHook: kept
    plain = export_modules(model)
    assert type(plain) is nn.Sequential and type(plain[0]) is nn.Conv2d and plain.training
    assert isinstance(model[0], FlipModule) and model.training  # the caller's model is untouched
    x = torch.rand(1, 2, 5, 5)
    plain(x)
    assert flip_hook.calls == 0 and other_hook.calls == 1
    model(x)
    assert flip_hook.calls == 1 and other_hook.calls == 2
    torch.testing.assert_close(plain(x), model(x))
