"""Checks that run before any file is written: data a classifier can learn from, and a model
that runs on it. Each failure is one :class:`~gcnn.errors.UsageError` naming the fix."""

from __future__ import annotations

import torch

from gcnn.data.datasets import Dataset, to_float
from gcnn.data.imagefolder import ImageFolderData
from gcnn.errors import UsageError
from gcnn.train.config import TrainConfig
from gcnn.train.loop import build_model

__all__ = ["check_classes", "check_model_runs", "preflight"]


def check_classes(cfg: TrainConfig, data: Dataset) -> None:
    """Refuse training data with fewer than two classes (it would train to "100 %")."""
    if isinstance(data, ImageFolderData):
        present = list(data.train.classes)
        if len(present) < 2:
            raise UsageError(
                f"{data.train.root} has {len(present)} class folder(s) ({', '.join(present)}): "
                "a classifier needs at least two"
            )
        return
    labels = torch.unique(data.train_y).tolist()
    if len(labels) < 2:
        subset = f" (--train-subset {cfg.train_subset})" if cfg.train_subset else ""
        raise UsageError(
            f"the {len(data.train_y)} training images of {data.name}{subset} all have label "
            f"{labels[0] if labels else '?'}: a classifier needs at least two classes; use more "
            "images"
        )


def check_model_runs(cfg: TrainConfig, data: Dataset, seed: int) -> None:
    """Build the model (regime and builder arguments checked) and run it on one input of the
    data's size on the CPU; a model that cannot take it is a one-line error."""
    model, _ = build_model(cfg, data, seed)
    if isinstance(data, ImageFolderData):
        x = torch.zeros(1, data.in_channels, data.image_size, data.image_size)
        hint = "use a larger --image-size (the ImageNet models want 224)"
    else:
        x = to_float(data.train_x[:1], data.mean, data.std)
        hint = f"{cfg.arch} does not fit {data.name}'s images; choose another --arch"
    c, h, w = x.shape[1:]
    try:
        with torch.no_grad():
            model.eval()(x)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        what = "channels" if "channels" in first else "size"
        if what == "channels":
            hint = f"the data has {c} channel(s): drop --arch-kwarg in_channels or fix it"
        raise UsageError(
            f"{cfg.arch} cannot run on {c}-channel {h}×{w} images ({first}): {hint}"
        ) from err


def preflight(cfg: TrainConfig, data: Dataset, seed: int) -> None:
    """All checks above, in order."""
    check_classes(cfg, data)
    check_model_runs(cfg, data, seed)
