"""Test accuracy with and without flip test-time augmentation."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from gcnn.data.datasets import Dataset
from gcnn.data.loaders import eval_batches
from gcnn.train.distributed import DistContext, all_reduce_sum


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    ctx: DistContext,
    *,
    batch_size: int = 1000,
    amp: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
    workers: int = 0,
) -> dict[str, float]:
    """Top-1 accuracy (%) of ``model`` on the test split, sharded over ranks.

    ``acc``: argmax of ``f(x)``; ``acc_tta``: argmax of ``f(x) + f(flip x)``; ``loss``: mean
    cross-entropy of ``f(x)``. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if amp and ctx.device.type == "cuda"
        else nullcontext()
    )
    correct = correct_tta = loss_sum = count = 0.0
    for x, y in eval_batches(
        data, batch_size, ctx.device, rank=ctx.rank, world_size=ctx.world_size,
        workers=workers, memory_format=memory_format,
    ):  # fmt: skip
        with autocast:
            logits = model(x).float()
            logits_flipped = model(x.flip(-1)).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        correct_tta += float(((logits + logits_flipped).argmax(1) == y).sum())
        count += len(y)
    correct, correct_tta, loss_sum, count = all_reduce_sum(
        [correct, correct_tta, loss_sum, count], ctx
    )
    model.train(was_training)
    return {
        "acc": 100 * correct / count,
        "acc_tta": 100 * correct_tta / count,
        "loss": loss_sum / count,
    }
