"""Batch sources for training: device-resident tensors, or a streaming ``DataLoader``.

Randomness is counter-based: the order of epoch ``e`` and the augmentation of global step ``t``
come from generators seeded by ``(seed, e)`` and ``(seed, t)``, so a run resumed at any step
sees exactly the batches an uninterrupted run sees, and every DDP rank agrees on the global
batch (rank ``r`` of ``R`` takes images ``r, r + R, …`` of it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from gcnn.data.datasets import to_float
from gcnn.data.imagefolder import ImageFolderData
from gcnn.data.tensor_dataset import ImageTensors

_ORDER, _AUGMENT = 1, 2


def counter_generator(seed: int, stream: int, counter: int) -> torch.Generator:
    """A CPU generator seeded by a hash of ``(seed, stream, counter)`` (numpy SeedSequence)."""
    state = np.random.SeedSequence([seed, stream, counter]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def random_crop_flip(x: Tensor, shifts: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Random crops with zero padding ``pad`` and horizontal flips, for a whole batch at once.

    ``x``: ``(B, C, H, W)``; ``shifts``: int ``(B, 2)`` in ``[0, 2·pad]`` (row, column offset
    into the padded image); ``flips``: bool ``(B,)``. Output ``(B, C, H, W)``, same dtype:
    ``out[b] = flip^{flips[b]}(pad(x[b])[:, sy:sy+H, sx:sx+W])``.
    """
    b, _, h, w = x.shape
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = shifts[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
        cols = shifts[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)
    return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)


def model_input(
    x: Tensor, mean: tuple[float, ...], std: tuple[float, ...], memory_format: torch.memory_format
) -> Tensor:
    """uint8 ``(B, C, H, W)`` → normalised float32 with the standard strides of ``memory_format``.

    A clone, not ``.contiguous()``: the crop's gather leaves channels-last strides, and for a
    1-channel batch those count as contiguous in *both* formats, so ``.contiguous()`` keeps them
    — and a conv given them answers channels-last all the way up the net.
    """
    return to_float(x, mean, std).clone(memory_format=memory_format)


class DeviceLoader:
    """Training batches from uint8 images that live on ``device``; augmentation on the device.

    Each step draws the global batch (``batch_size`` images, the last incomplete batch is
    dropped; a set smaller than one batch is one batch), applies random crop (``crop_pad``) and
    flip (``flip``) and returns this rank's shard as normalised float32.
    """

    def __init__(
        self,
        data: ImageTensors,
        batch_size: int,
        device: torch.device,
        seed: int,
        *,
        crop_pad: int = 4,
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.x = data.train_x.to(device)
        self.y = data.train_y.to(device)
        self.mean, self.std = data.mean, data.std
        self.n = len(self.x)
        self.batch_size = min(batch_size, self.n)
        if self.batch_size < world_size:
            raise ValueError(
                f"batch of {self.batch_size} images cannot be split over {world_size} ranks"
            )
        self.device, self.seed = device, seed
        self.crop_pad, self.flip = crop_pad, flip
        self.rank, self.world_size = rank, world_size
        self.memory_format = memory_format

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches ``start, start+1, …`` of ``epoch``: ``(x (b, C, H, W) float, y (b,))``."""
        order = torch.randperm(self.n, generator=counter_generator(self.seed, _ORDER, epoch))
        bs = self.batch_size
        for i in range(start, self.steps_per_epoch):
            step = epoch * self.steps_per_epoch + i
            g = counter_generator(self.seed, _AUGMENT, step)
            shifts = torch.randint(0, 2 * self.crop_pad + 1, (bs, 2), generator=g)
            flips = (
                torch.rand(bs, generator=g) < 0.5
                if self.flip
                else torch.zeros(bs, dtype=torch.bool)
            )
            idx = order[i * bs : (i + 1) * bs][self.rank :: self.world_size]
            shard = slice(self.rank, None, self.world_size)
            idx_d = idx.to(self.device)
            x = random_crop_flip(
                self.x[idx_d],
                shifts[shard].to(self.device),
                flips[shard].to(self.device),
                self.crop_pad,
            )
            x = model_input(x, self.mean, self.std, self.memory_format)
            yield x, self.y[idx_d]


class StreamLoader:
    """Training batches of an :class:`ImageFolderData` through a ``DataLoader`` with workers.

    The order is deterministic per ``(seed, epoch)`` (a ``DistributedSampler``); crops and flips
    happen in the workers (not bit-reproducible). Resuming mid-epoch skips the done batches.
    """

    def __init__(
        self,
        data: ImageFolderData,
        batch_size: int,
        device: torch.device,
        seed: int,
        *,
        workers: int = 8,
        rank: int = 0,
        world_size: int = 1,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} ranks")
        self.sampler = DistributedSampler(
            data.train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.loader = DataLoader(
            data.train,
            batch_size=batch_size // world_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
        )
        self.mean, self.std = data.mean, data.std
        self.device, self.memory_format = device, memory_format

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        self.sampler.set_epoch(epoch)
        for x, y in itertools.islice(self.loader, start, None):
            x = x.to(self.device, non_blocking=True)
            x = model_input(x, self.mean, self.std, self.memory_format)
            yield x, y.to(self.device, non_blocking=True)


def eval_batches(
    data: ImageTensors | ImageFolderData,
    batch_size: int,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's shard (images ``rank, rank + R, …``) of the test split, in order."""
    if isinstance(data, ImageTensors):
        x_all, y_all = data.test_x[rank::world_size], data.test_y[rank::world_size]
        for i in range(0, len(x_all), batch_size):
            x = x_all[i : i + batch_size].to(device)
            x = to_float(x, data.mean, data.std).contiguous(memory_format=memory_format)
            yield x, y_all[i : i + batch_size].to(device)
        return
    subset = torch.utils.data.Subset(data.test, range(rank, len(data.test), world_size))
    for x, y in DataLoader(subset, batch_size=batch_size, num_workers=workers):
        x = to_float(x.to(device), data.mean, data.std).contiguous(memory_format=memory_format)
        yield x, y.to(device)
