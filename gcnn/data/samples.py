"""The real sample images shipped inside the package (see ``gcnn/data/samples/README.md``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

SAMPLES_DIR = Path(__file__).with_name("samples")
SAMPLE_SETS = ("cifar10", "fashion-mnist")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def sample_files(name: str = "cifar10") -> list[Path]:
    """The sample PNG files of set ``name``, in index order."""
    if name not in SAMPLE_SETS:
        raise ValueError(f"unknown sample set {name!r}; choose one of {SAMPLE_SETS}")
    return sorted((SAMPLES_DIR / name).glob("*.png"))


def load_samples(name: str = "cifar10") -> tuple[Tensor, Tensor]:
    """The shipped real images as ``uint8`` ``(N, C, H, W)`` and their labels ``int64`` ``(N,)``.

    ``cifar10``: ``(20, 3, 32, 32)``; ``fashion-mnist``: ``(20, 1, 28, 28)``. Labels come from
    the file names ``{set}_{index}_{label}.png``.
    """
    files = sample_files(name)
    images = [np.asarray(Image.open(f)) for f in files]
    x = torch.from_numpy(np.stack(images))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    labels = torch.tensor([int(f.stem.rsplit("_", 1)[1]) for f in files])
    return x.contiguous(), labels
