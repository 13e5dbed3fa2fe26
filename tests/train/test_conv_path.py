"""``gcnn train --conv-path``: the isotypic and regular paths train the same net."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from gcnn.errors import UsageError
from gcnn.nn import FlipConv2d, set_conv_path
from gcnn.nn import isotypic as isotypic_module
from gcnn.train import DistContext, TrainConfig
from gcnn.train.start import build_model, make_loader


def _config(path: str) -> TrainConfig:
    return TrainConfig(arch="vgg11_flip", regime="gcnn", data="fashion-mnist",
                       arch_kwargs={"width": 0.125}, epochs=1, batch_size=50, lr=0.05,
                       conv_path=path)  # fmt: skip


def _sgd_steps(model: torch.nn.Module, batches, dtype: torch.dtype) -> torch.Tensor:
    """The recipe's SGD steps on ``batches``; returns all parameters as one float64 vector."""
    model = model.to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)  # fmt: skip
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x.to(dtype)), y).backward()
        opt.step()
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def test_every_flip_conv_takes_the_forced_path(fmnist_small) -> None:
    for path in ("static", "isotypic", "regular"):
        model, _ = build_model(_config(path), fmnist_small, seed=0)
        convs = [m for m in model.modules() if isinstance(m, FlipConv2d)]
        assert convs and all(conv.path == path for conv in convs)


@pytest.mark.parametrize("kernel", ["kh x 1 conv", "gemm"])
def test_isotypic_training_drifts_from_float64_no_more_than_regular(
    fmnist_small, monkeypatch, kernel: str
) -> None:
    """Training is chaotic: float32 rounding alone moves a net ≈ 2e-4 away from its float64
    twin in two steps (the first conv's weight gradient cancels heavily on F-MNIST's flat
    background, ≈ 1e-4 relative error on either path). So the isotypic path is held to the
    regular path's own drift from float64 on the same real batches, not to bit equality.
    Each eager kernel in turn (the GEMM threshold moved so that it runs every pair conv).
    Negative control: the other seed's net is ≫ that far away."""
    monkeypatch.setattr(isotypic_module, "GEMM_MIN_MACS", 0 if kernel == "gemm" else 2**62)
    data = fmnist_small.subset(200, 50)
    cfg = _config("regular")
    loader = make_loader(cfg, data, 0, DistContext(), torch.contiguous_format)
    batches = list(loader.epoch(0))[:2]
    init, _ = build_model(cfg, data, seed=0)
    reference = _sgd_steps(copy.deepcopy(init).train(), batches, torch.float64)
    regular = _sgd_steps(copy.deepcopy(init).train(), batches, torch.float32)
    isotypic = _sgd_steps(set_conv_path(copy.deepcopy(init), "isotypic").train(), batches,
                          torch.float32)  # fmt: skip
    other, _ = build_model(cfg, data, seed=1)
    other_seed = _sgd_steps(other.train(), batches, torch.float32)

    def drift(v: torch.Tensor) -> float:
        return ((v - reference).norm() / reference.norm()).item()

    assert drift(isotypic) <= 5 * drift(regular) + 1e-6
    assert drift(other_seed) > 1000 * drift(isotypic)


def test_forcing_a_path_on_a_plain_model_is_a_usage_error(fmnist_small) -> None:
    cfg = TrainConfig(arch="vgg11", data="fashion-mnist", arch_kwargs={"width": 0.125},
                      conv_path="isotypic")  # fmt: skip
    with pytest.raises(UsageError, match="has none"):
        build_model(cfg, fmnist_small, seed=0)
    with pytest.raises(UsageError, match="--conv-path must be one of") as unknown:
        TrainConfig(conv_path="fast")
    assert "now 'auto'" not in str(unknown.value)
    # a run configured with the former measured path is told its new name
    with pytest.raises(UsageError, match="the measured 'tuned' path is now 'auto'"):
        TrainConfig(conv_path="tuned")
