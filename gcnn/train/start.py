"""The set-up of one seed's training: the model (seeded), its loader, the optimizer, and the
:class:`Run` that holds them between steps, restored from a saved state when resuming."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gcnn.data.datasets import Dataset
from gcnn.data.imagefolder import ImageFolderData
from gcnn.data.loaders import DeviceLoader, StreamLoader
from gcnn.errors import UsageError
from gcnn.models import create_model
from gcnn.nn import FlipConv2d, set_conv_path
from gcnn.runs import RunPaths, data_identity
from gcnn.train.config import TrainConfig
from gcnn.train.distributed import DistContext
from gcnn.train.guard import Claim
from gcnn.train.regimes import PenultimateFeatures, check_regime
from gcnn.train.state import load_train_state

__all__ = ["Run", "build_model", "make_loader", "model_kwargs", "start_run"]


def model_kwargs(cfg: TrainConfig, data: Dataset) -> dict[str, Any]:
    """Builder keyword arguments: ``num_classes`` (and ``in_channels`` ≠ 3) plus ``arch_kwargs``."""
    kwargs: dict[str, Any] = {"num_classes": data.num_classes}
    if data.in_channels != 3:
        kwargs["in_channels"] = data.in_channels
    kwargs.update(cfg.arch_kwargs)
    return kwargs


def build_model(cfg: TrainConfig, data: Dataset, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """Seed the global RNG with ``seed`` and build ``cfg.arch``; check it fits ``cfg.regime``."""
    kwargs = model_kwargs(cfg, data)
    torch.manual_seed(seed)
    try:
        model = create_model(cfg.arch, **kwargs)
    except TypeError as err:
        raise UsageError(
            f"{cfg.arch} does not accept {kwargs}: {err} (check --arch-kwarg / --width)"
        ) from err
    check_regime(cfg.regime, cfg.arch, model)
    apply_conv_path(model, cfg.conv_path, cfg.arch)
    return model, kwargs


def apply_conv_path(model: nn.Module, path: str, arch: str) -> None:
    """Put every :class:`~gcnn.nn.FlipConv2d` of ``model`` on ``path`` (``"auto"``: leave
    the per-layer default). A forced path on a model without flip convs is a usage error."""
    if path == "auto":
        return
    if not any(isinstance(m, FlipConv2d) for m in model.modules()):
        raise UsageError(
            f"--conv-path {path} chooses how flip convs compute, and {arch} has none "
            "(use a flip architecture, e.g. vgg11_flip)"
        )
    try:
        set_conv_path(model, path)  # type: ignore[arg-type]
    except ValueError as err:
        raise UsageError(f"--conv-path {path}: {err}") from err


def make_loader(
    cfg: TrainConfig,
    data: Dataset,
    seed: int,
    ctx: DistContext,
    memory_format: torch.memory_format,
) -> DeviceLoader | StreamLoader:
    """Device-resident batches for tensor datasets, a worker ``DataLoader`` for ImageFolder."""
    if isinstance(data, ImageFolderData):
        return StreamLoader(
            data, cfg.batch_size, ctx.device, seed, workers=cfg.workers, rank=ctx.rank,
            world_size=ctx.world_size, memory_format=memory_format,
        )  # fmt: skip
    return DeviceLoader(
        data, cfg.batch_size, ctx.device, seed, crop_pad=cfg.crop_pad, flip=cfg.flip_augment,
        rank=ctx.rank, world_size=ctx.world_size, memory_format=memory_format,
    )  # fmt: skip


@dataclass
class Run:
    """Everything one seed's training holds between steps."""

    cfg: TrainConfig
    data: Dataset
    seed: int
    ctx: DistContext
    claim: Claim
    identity: dict[str, Any]
    model: nn.Module
    kwargs: dict[str, Any]
    optimizer: torch.optim.Optimizer
    net: nn.Module
    loader: DeviceLoader | StreamLoader
    features: PenultimateFeatures | None
    memory_format: torch.memory_format
    autocast: Any
    total_steps: int
    warmup_steps: int
    inv_start_step: int
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time: float = 0.0
    saved_step: int | None = None

    @property
    def paths(self) -> RunPaths:
        return self.claim.work

    @property
    def steps_per_epoch(self) -> int:
        return self.loader.steps_per_epoch


def start_run(
    cfg: TrainConfig, data: Dataset, seed: int, ctx: DistContext, claim: Claim
) -> tuple[Run, list[float] | None]:
    """Build the model (right after ``torch.manual_seed(seed)``), optimizer and loader; load
    the claimed state when resuming. Returns the run and the resumed epoch's meter sums."""
    device = ctx.device
    on_cuda = device.type == "cuda"
    memory_format = (
        torch.channels_last if cfg.channels_last and on_cuda else torch.contiguous_format
    )
    model, kwargs = build_model(cfg, data, seed)
    model = model.to(device=device, memory_format=memory_format).train()
    loader = make_loader(cfg, data, seed, ctx, memory_format)
    total_steps = cfg.epochs * loader.steps_per_epoch
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )  # fmt: skip
    features = PenultimateFeatures(model) if cfg.inv_target == "features" else None
    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if on_cuda else None
        )
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and on_cuda else nullcontext()
    )
    run = Run(
        cfg=cfg, data=data, seed=seed, ctx=ctx, claim=claim, identity=data_identity(data),
        model=model, kwargs=kwargs, optimizer=optimizer, net=net, loader=loader,
        features=features, memory_format=memory_format, autocast=autocast,
        total_steps=total_steps, warmup_steps=round(cfg.warmup * total_steps),
        inv_start_step=round(cfg.inv_start * total_steps),
    )  # fmt: skip
    if not claim.resume:
        return run, None
    model_state, optim_state, scalars = load_train_state(claim.work.state)
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)
    if scalars.get("threads", torch.get_num_threads()) != torch.get_num_threads():
        warnings.warn(
            f"resuming with {torch.get_num_threads()} torch threads, the run used "
            f"{scalars['threads']}: CPU results will not match an uninterrupted run bit for "
            "bit (set OMP_NUM_THREADS as before)",
            stacklevel=2,
        )
    run.step, run.history = scalars["step"], scalars["history"]
    run.train_time, run.saved_step = scalars["train_time"], scalars["step"]
    return run, scalars["meter"]
