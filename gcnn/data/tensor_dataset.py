"""A small image dataset held as ``uint8`` tensors (train and test splits)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ImageTensors:
    """Images ``uint8`` ``(N, C, H, W)`` and labels ``int64`` ``(N,)`` of both splits.

    ``mean`` / ``std`` (one value per channel, on the 0–1 scale) normalise the images;
    ``name`` is recorded in checkpoints; ``root`` is the absolute folder the files were read
    from (``None`` for the shipped samples), part of a run's data identity.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = field(default=())
    root: str | None = None

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def subset(self, train: int | None = None, test: int | None = None) -> ImageTensors:
        """The first ``train`` / ``test`` images of each split (``None``: all)."""
        return ImageTensors(
            name=self.name,
            train_x=self.train_x[:train],
            train_y=self.train_y[:train],
            test_x=self.test_x[:test],
            test_y=self.test_y[:test],
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            classes=self.classes,
            root=self.root,
        )
