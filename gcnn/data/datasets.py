"""``load_dataset(name, ...)``: every dataset the trainer accepts, by name."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.nn import functional as F

from gcnn.data.cifar import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from gcnn.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_fashion_mnist,
)
from gcnn.data.imagefolder import ImageFolderData, load_imagefolder
from gcnn.data.samples import CIFAR10_CLASSES, load_samples
from gcnn.data.tensor_dataset import ImageTensors
from gcnn.errors import DataError, DataNotFoundError, UsageError

DATASETS: tuple[str, ...] = (
    "cifar10",
    "fashion-mnist",
    "imagefolder",
    "cifar10-samples",
    "fashion-mnist-samples",
)
Dataset = ImageTensors | ImageFolderData


def load_sample_dataset(name: str) -> ImageTensors:
    """The 20 shipped real test images as both train and test split (smoke runs only).

    Fashion-MNIST images are zero-padded to 32×32 like the full set.
    """
    images, labels = load_samples(name)
    if name == "fashion-mnist":
        images = F.pad(images, (2, 2, 2, 2))
        mean, std, classes = FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES
    else:
        mean, std, classes = CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES
    return ImageTensors(
        name=f"{name}-samples",
        train_x=images,
        train_y=labels,
        test_x=images.clone(),
        test_y=labels.clone(),
        num_classes=10,
        mean=mean,
        std=std,
        classes=classes,
    )


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    download: bool = False,
    image_size: int = 224,
    resize: int | None = None,
    random_resized_crop: bool = False,
    flip: bool = True,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`).

    Small sets (CIFAR-10, Fashion-MNIST, the samples) come back as :class:`ImageTensors`
    (uint8, to be put on the device whole); ``imagefolder`` as :class:`ImageFolderData`
    (streamed). Missing data raises :class:`~gcnn.errors.DataNotFoundError` (a
    ``FileNotFoundError``) saying how to get it; broken files raise
    :class:`~gcnn.errors.DataError` naming them.
    """
    if name == "cifar10":
        return load_cifar10(root if root is not None else ".data", download=download)
    if name == "fashion-mnist":
        return load_fashion_mnist(root, download=download)
    if name in ("cifar10-samples", "fashion-mnist-samples"):
        return load_sample_dataset(name.removesuffix("-samples"))
    if name == "imagefolder":
        if root is None:
            raise UsageError("--data imagefolder needs --data-root (the tree's root)")
        return _checked_imagefolder(root, image_size, resize, random_resized_crop, flip)
    raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def read_image(path: str) -> Image.Image:
    """An RGB image file, read like torchvision's ``ImageFolder`` does; a truncated or corrupt
    file raises :class:`~gcnn.errors.DataError` naming it (PIL's own errors do not)."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for broken files
        raise DataError(
            f"{path} is not a readable image ({type(err).__name__}: {err}): replace or delete it"
        ) from err


def _checked_imagefolder(
    root: str | Path, image_size: int, resize: int | None, random_resized_crop: bool, flip: bool
) -> ImageFolderData:
    """:func:`load_imagefolder` with one-line errors and image reads that name a broken file."""
    try:
        data = load_imagefolder(root, image_size, resize, random_resized_crop, flip)
    except FileNotFoundError as err:  # a missing tree or split, or torchvision's "no class folder"
        raise DataNotFoundError(str(err).strip().splitlines()[0]) from err
    except ValueError as err:
        raise DataError(str(err)) from err
    data.train.loader = data.test.loader = read_image
    return data


def to_float(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` → float32 ``(x/255 − mean) / std`` on ``x``'s device."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s
