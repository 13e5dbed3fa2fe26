"""DDP set-up from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from gcnn.devices import resolve_device
from gcnn.errors import GcnnError, RankEcho

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """``requested`` or, if ``None``, ``cuda:{local_rank}`` when CUDA is available, else CPU
    (see :func:`gcnn.devices.resolve_device`, which raises a one-line error for a bad device)."""
    return resolve_device(requested, local_rank)


def init_distributed(requested_device: str | None = None) -> DistContext:
    """Join the process group if launched by ``torchrun`` (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world <= 1:
        return DistContext(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few numbers over all ranks (identity when not distributed)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def ranks_agree(module: torch.nn.Module, ctx: DistContext) -> bool:
    """Whether every rank holds exactly rank 0's state dict (parameters and buffers).

    Each rank compares its flattened float64 state with rank 0's broadcast copy; the verdict is
    the minimum over ranks. Always ``True`` when not distributed.
    """
    if not ctx.distributed:
        return True
    flat = torch.cat([v.detach().double().flatten() for v in module.state_dict().values()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    same = torch.tensor(
        [float(torch.equal(flat, reference))], dtype=torch.float64, device=flat.device
    )
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item() == 1.0)


def average_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Replace every floating buffer (BatchNorm running statistics) by its mean over ranks.

    DDP keeps parameters in sync, but each rank's last forward updates its running statistics
    with its own shard; averaging makes evaluation and the saved checkpoint rank-independent.
    """
    if not ctx.distributed:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(ctx.world_size)


def on_main(fn: Callable[[], T], ctx: DistContext) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result.

    A :class:`~gcnn.errors.GcnnError` raised by ``fn`` is re-raised on rank 0 and, as the
    same message, on every other rank, so that no rank waits in a collective for a rank that
    gave up.
    """
    if not ctx.distributed:
        return fn()
    box: list[object] = [None]
    error: GcnnError | None = None
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except GcnnError as err:
            error = err
            box[0] = ("error", str(err))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]  # type: ignore[misc]
    if error is not None:
        raise error
    if kind == "error":
        raise RankEcho(f"rank 0 refused: {value}")
    return value  # type: ignore[return-value]
