"""Device-side augmentation and the counter-based, shardable batch order."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from gcnn.data import DeviceLoader, load_sample_dataset, random_crop_flip
from gcnn.data.datasets import to_float


def reference_crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int):
    out = []
    for img, (sy, sx), f in zip(x, shifts.tolist(), flips.tolist(), strict=True):
        p = torch.nn.functional.pad(img, (pad, pad, pad, pad))
        crop = p[:, sy : sy + img.shape[1], sx : sx + img.shape[2]]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


@given(st.integers(1, 5), st.integers(0, 4), st.integers(0, 2**31 - 1))
def test_batched_crop_flip_equals_per_image_reference(b: int, pad: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, 6, 7), generator=g, dtype=torch.uint8)
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=g)
    flips = torch.rand(b, generator=g) < 0.5
    assert torch.equal(
        random_crop_flip(x, shifts, flips, pad), reference_crop_flip(x, shifts, flips, pad)
    )


def test_centred_crop_without_flip_is_identity() -> None:
    x = load_sample_dataset("cifar10").train_x
    shifts = torch.full((len(x), 2), 4)
    assert torch.equal(random_crop_flip(x, shifts, torch.zeros(len(x), dtype=torch.bool), 4), x)
    flipped = random_crop_flip(x, shifts, torch.ones(len(x), dtype=torch.bool), 4)
    assert torch.equal(flipped, x.flip(-1)) and not torch.equal(flipped, x)


def _batches(
    loader: DeviceLoader, epoch: int, start: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.epoch(epoch, start))


def test_order_and_augmentation_depend_only_on_seed_epoch_and_step() -> None:
    data = load_sample_dataset("cifar10")
    cpu = torch.device("cpu")
    a, b = DeviceLoader(data, 4, cpu, seed=3), DeviceLoader(data, 4, cpu, seed=3)
    assert a.steps_per_epoch == 5
    full = _batches(a, 1)
    again = _batches(b, 1)
    tail = _batches(b, 1, start=2)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(full, again, strict=True))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(full[2:], tail, strict=True))
    other_seed = _batches(DeviceLoader(data, 4, cpu, seed=4), 1)
    other_epoch = _batches(a, 2)
    assert not torch.equal(full[0][0], other_seed[0][0])
    assert not torch.equal(full[0][0], other_epoch[0][0])


def test_ranks_shard_the_global_batch() -> None:
    data = load_sample_dataset("cifar10")
    cpu = torch.device("cpu")
    whole = _batches(DeviceLoader(data, 10, cpu, seed=0), 0)
    ranks = [_batches(DeviceLoader(data, 10, cpu, seed=0, rank=r, world_size=2), 0) for r in (0, 1)]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(ranks[0][step][0], x[0::2]) and torch.equal(ranks[1][step][0], x[1::2])
        assert torch.equal(
            torch.cat([ranks[0][step][1], ranks[1][step][1]]).sort().values, y.sort().values
        )


def test_flip_augmentation_flips_about_half_and_can_be_switched_off() -> None:
    data = load_sample_dataset("cifar10")
    cpu = torch.device("cpu")
    norm = to_float(data.train_x, data.mean, data.std)
    for flip, lo, hi in ((True, 0.2, 0.8), (False, 0.0, 0.0)):
        loader = DeviceLoader(data, 20, cpu, seed=0, crop_pad=0, flip=flip)
        flipped = total = 0
        for epoch in range(5):
            x, y = next(loader.epoch(epoch))
            for img in x:
                match = [
                    i
                    for i in range(20)
                    if torch.equal(img, norm[i]) or torch.equal(img, norm[i].flip(-1))
                ]
                assert match
                flipped += int(not torch.equal(img, norm[match[0]]))
                total += 1
        assert lo <= flipped / total <= hi


def _standard_strides(shape: torch.Size, memory_format: torch.memory_format) -> tuple[int, ...]:
    return torch.empty(shape, memory_format=memory_format).stride()


def test_batches_have_the_requested_layout_even_with_one_channel() -> None:
    """A 1-channel batch is 'contiguous' in both formats, so only its strides tell them apart:
    the first conv follows the strides (channels-last in → channels-last activations)."""
    data = load_sample_dataset("fashion-mnist")
    cpu = torch.device("cpu")
    for fmt in (torch.contiguous_format, torch.channels_last):
        x, _ = next(DeviceLoader(data, 8, cpu, seed=0, memory_format=fmt).epoch(0))
        assert x.shape[1] == 1 and x.stride() == _standard_strides(x.shape, fmt), fmt
        conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        channels_last_out = conv(x).is_contiguous(memory_format=torch.channels_last)
        assert channels_last_out == (fmt == torch.channels_last)
    # negative control: the crop's own output is channels-last strided, which .contiguous() keeps
    shifts, flips = torch.zeros(8, 2, dtype=torch.long), torch.zeros(8, dtype=torch.bool)
    gathered = random_crop_flip(data.train_x[:8], shifts, flips, 4).contiguous()
    assert gathered.stride() != _standard_strides(gathered.shape, torch.contiguous_format)
